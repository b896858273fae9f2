"""Bad input on the index, search and Milvus surfaces, as a hostile tester gives it, through the console script.

The battery of :mod:`tests.test_bad_inputs` (one ``error:`` line naming the problem, the documented exit code, no
traceback), plus: what a case must leave alone (``kept``: the user's files, the previous index, which must still
open and pass a full verify), faults injected into the real process (``tests/faults/sitecustomize.py``: a full
disk, a read-only filesystem, Ctrl-C, a pause to SIGKILL it in), and readers racing a writer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from s2sd_deploy.errors import Interrupted, S2SDError
from s2sd_deploy.locks import ExclusiveLock
from s2sd_deploy.serving.index_config import IndexConfig
from s2sd_deploy.serving.index_dir import IndexDir

from .test_bad_inputs import ENV, S2SD, Case, fill, image, write

FAULTS = Path(__file__).with_name("faults")
HELD_LOCKS: list[ExclusiveLock] = []  # locks this process holds while a case runs, as another writer would


@dataclass
class IndexCase(Case):
    env: dict = field(default_factory=dict)  # S2SD_TEST_FAULT / S2SD_TEST_FREE_BYTES for faults/sitecustomize.py
    cwd: str = "{tmp}"
    kept: list[str] = field(default_factory=list)  # files that must be there afterwards, as they were
    intact: str | None = None  # an index that must still open and verify whole afterwards


def copy_index(tmp: Path, fixtures: dict, name: str = "index") -> Path:
    shutil.copytree(fixtures["index"], tmp / name)
    return tmp / name


def poke(path: Path, offset: int, data: bytes = b"\x00\x00\xc0\x7f") -> None:
    """Overwrite bytes in place: the file keeps its size (0x7fc00000 is a float32 NaN)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def damaged(*names_and_offsets):
    def setup(tmp, fixtures):
        index = copy_index(tmp, fixtures)
        for name, offset in names_and_offsets:
            poke(index / name, offset if offset >= 0 else (index / name).stat().st_size + offset)

    return setup


def user_folder(tmp, fixtures):
    write(tmp / "notes" / "todo.txt", "mine")


def index_with_a_stray_file(tmp, fixtures):
    write(copy_index(tmp, fixtures) / "notes.txt", "mine")


def copied_images(tmp, fixtures):
    shutil.copytree(fixtures["images"], tmp / "imgs")
    (tmp / "empty").mkdir()


def index_being_written(tmp, fixtures):
    index = copy_index(tmp, fixtures)
    HELD_LOCKS.append(ExclusiveLock(tmp / f".{index.name}.lock").acquire("held by the test"))


def npz(tweak=None, **changes):
    """An .npz as `s2sd embed` writes it, of the fixture's images, with ``changes``."""

    def setup(tmp, fixtures):
        from s2sd_deploy.serving.embedder import Embedder

        paths = sorted(fixtures["images"].glob("*.png"))
        arrays = {
            "embeddings": Embedder(fixtures["model"]).embed(paths),
            "paths": np.array([str(p) for p in paths]),
            "skipped": np.array([], dtype=str),
            "run_id": np.array("tiny"),
        }
        arrays.update(changes)
        if tweak:
            arrays = tweak(arrays)
        np.savez(tmp / "e.npz", **arrays)

    return setup


def fault(spec: str, after: int = 0) -> dict:
    return {"S2SD_TEST_FAULT": spec, "S2SD_TEST_FAULT_AFTER": str(after)}


BUILD = ["index", "build", "{images}", "--model", "{model}"]
INDEX_DIR = "s2sd_deploy.serving.index_dir"

CASES = [
    # --- never delete what the tool did not write ------------------------------------------------------------
    IndexCase(
        "build: out is the user's folder, even with --force",
        [*BUILD, "--out", "{tmp}/notes", "--force"],
        "--out {tmp}/notes is a folder that is not an s2sd index and is not empty",
        setup=user_folder,
        kept=["{tmp}/notes/todo.txt"],
    ),
    IndexCase(
        "build: out is the gallery",
        ["index", "build", "{tmp}/imgs", "--model", "{model}", "--out", "{tmp}/imgs", "--force"],
        "--out {tmp}/imgs is the input {tmp}/imgs",
        setup=copied_images,
        kept=["{tmp}/imgs/0.png"],
    ),
    IndexCase(
        "build: out . holds the gallery",
        ["index", "build", "imgs", "--model", "{model}", "--out", "."],
        "--out . contains the input imgs",
        setup=copied_images,
        kept=["{tmp}/imgs/0.png"],
    ),
    IndexCase(
        "build: out . is the current folder",
        [*BUILD, "--out", "."],
        "--out . is the current folder, which the command would replace whole",
        setup=copied_images,
        cwd="{tmp}/empty",
        kept=["{tmp}/empty"],
    ),
    IndexCase(
        "build: an index needs --force",
        [*BUILD, "--out", "{tmp}/index"],
        "--out {tmp}/index already holds an s2sd index; pass --force to replace it",
        setup=lambda tmp, fixtures: copy_index(tmp, fixtures),
        intact="{tmp}/index",
    ),
    IndexCase(
        "build: an index holding the user's file, with --force",
        [*BUILD, "--out", "{tmp}/index", "--force"],
        "also notes.txt, which s2sd did not write",
        setup=index_with_a_stray_file,
        kept=["{tmp}/index/notes.txt"],
        intact="{tmp}/index",
    ),
    IndexCase(
        "merge: out is a shard",
        ["index", "merge", "{tmp}/index", "{tmp}/index"],
        "OUT {tmp}/index is the input {tmp}/index",
        setup=lambda tmp, fixtures: copy_index(tmp, fixtures),
        intact="{tmp}/index",
    ),
    IndexCase(
        "merge: out is the user's folder",
        ["index", "merge", "{tmp}/notes", "{index}", "--force"],
        "OUT {tmp}/notes is a folder that is not an s2sd index",
        setup=user_folder,
        kept=["{tmp}/notes/todo.txt"],
    ),
    IndexCase(
        "add: an input inside the index",
        ["index", "add", "{tmp}/index", "{tmp}/index/inside"],
        "the input {tmp}/index/inside is inside the index",
        setup=lambda tmp, fixtures: image(copy_index(tmp, fixtures) / "inside" / "x.png"),
    ),
    # --- one writer --------------------------------------------------------------------------------------------
    IndexCase(
        "add: the index is being written",
        ["index", "add", "{tmp}/index", "{tmp}/more"],
        "{tmp}/index is being written by another s2sd process (pid {pid}); wait for it to finish",
        setup=lambda tmp, fixtures: (index_being_written(tmp, fixtures), image(tmp / "more" / "m.png", seed=99)),
        intact="{tmp}/index",
    ),
    IndexCase(
        "build --force: the index is being written",
        [*BUILD, "--out", "{tmp}/index", "--force"],
        "{tmp}/index is being written by another s2sd process",
        setup=index_being_written,
        intact="{tmp}/index",
    ),
    # --- content integrity: damaged files of the right size --------------------------------------------------
    IndexCase(
        "search: NaN in the student vectors",
        ["search", "{tmp}/index", "{images}"],
        "is damaged: student.npy (its content differs from its checksum)",
        setup=damaged(("student.npy", 200)),
    ),
    IndexCase(
        "search: another neighbour in the faiss index",
        ["search", "{tmp}/index", "{images}"],
        "student.faiss (its content differs from its checksum)",
        setup=damaged(("student.faiss", -40)),
    ),
    IndexCase(
        "search: a path replaced",
        ["search", "{tmp}/index", "{images}"],
        "paths.jsonl (its content differs from its checksum)",
        setup=damaged(("paths.jsonl", 3)),
    ),
    IndexCase(
        "search: teacher vectors changed",
        ["search", "{tmp}/index", "{images}", "--rerank", "5"],
        "teacher.npy (its content differs from its checksum)",
        setup=damaged(("teacher.npy", -4)),
    ),
    IndexCase(
        "search: a weight of the model changed (past the sampled blocks)",
        ["search", "{tmp}/index", "{images}"],
        "model.onnx (its content differs from its checksum)",
        setup=damaged(("model.onnx", 20_000_003)),
    ),
    IndexCase(
        "verify: every damaged file named",
        ["index", "verify", "{tmp}/index"],
        "model.onnx (its content differs from its checksum), paths.jsonl (its content differs from its checksum), "
        "student.npy (its content differs from its checksum)",
        setup=damaged(("model.onnx", 20_000_003), ("paths.jsonl", 3), ("student.npy", 200)),
    ),
    IndexCase(
        "search: a file cut short",
        ["search", "{tmp}/index", "{images}"],
        "paths.jsonl (",
        setup=lambda tmp, fixtures: (copy_index(tmp, fixtures) / "paths.jsonl").write_text('"x.png"\n'),
    ),
    IndexCase(
        "search: manifest not JSON",
        ["search", "{tmp}/index", "{images}"],
        "manifest.json is not valid JSON",
        setup=lambda tmp, fixtures: (copy_index(tmp, fixtures) / "manifest.json").write_text("{"),
    ),
    IndexCase(
        "search: index is a file",
        ["search", "{tmp}/afile", "{images}"],
        "is a file, not an index directory",
        setup=lambda tmp, fixtures: write(tmp / "afile", "x"),
    ),
    # --- values past what memory holds -------------------------------------------------------------------------
    IndexCase("search: k 10^12", ["search", "{index}", "{images}", "--k", "1000000000000"], "--k 1000000000000 is out"),
    IndexCase(
        "search: rerank 10^12",
        ["search", "{index}", "{images}", "--k", "5", "--rerank", "1000000000000"],
        "--rerank 1000000000000 is out of range",
    ),
    IndexCase(
        "build: shard 1/10^12",
        [*BUILD, "--out", "{tmp}/i", "--shard", "1/1000000000000"],
        "--shard 1/1000000000000: N is more than the 12 images",
        no_output=["{tmp}/i"],
    ),
    IndexCase("build: unknown dedupe", [*BUILD, "--out", "{tmp}/i", "--dedupe", "bogus"], "invalid --dedupe 'bogus'"),
    IndexCase(
        "build: bad collection name",
        [*BUILD, "--out", "{tmp}/i", "--backend", "milvus", "--uri", "{tmp}/g.db", "--collection", "my-photos"],
        "invalid --collection 'my-photos'",
        no_output=["{tmp}/i", "{tmp}/g.db"],
    ),
    # --- the .npz of s2sd embed ---------------------------------------------------------------------------------
    IndexCase(
        "build npz: made by another run",
        ["index", "build", "{tmp}/e.npz", "--model", "{model}", "--out", "{tmp}/i"],
        "was embedded by another model (run_id 'other'",
        setup=npz(run_id=np.array("other")),
        no_output=["{tmp}/i"],
    ),
    IndexCase(
        "build npz: vectors the model does not give",
        ["index", "build", "{tmp}/e.npz", "--model", "{model}", "--out", "{tmp}/i"],
        "was not embedded by --model",
        setup=npz(tweak=lambda a: {**a, "embeddings": np.roll(a["embeddings"], 1, axis=0)}),
        no_output=["{tmp}/i"],
    ),
    IndexCase(
        "build npz: wrong dimension",
        ["index", "build", "{tmp}/e.npz", "--model", "{model}", "--out", "{tmp}/i"],
        "embeddings must be float32 (N, 16)",
        setup=npz(tweak=lambda a: {**a, "embeddings": a["embeddings"][:, :8].copy()}),
    ),
    IndexCase(
        "build npz: with images",
        ["index", "build", "{tmp}/e.npz", "{images}", "--model", "{model}", "--out", "{tmp}/i"],
        "not both",
        setup=npz(),
    ),
    IndexCase(
        "build npz: with a shard",
        ["index", "build", "{tmp}/e.npz", "--model", "{model}", "--out", "{tmp}/i", "--shard", "1/2"],
        "--shard slices images",
        setup=npz(),
    ),
    IndexCase(
        "build npz: not an npz",
        ["index", "build", "{tmp}/e.npz", "--model", "{model}", "--out", "{tmp}/i"],
        "is not a readable .npz",
        setup=lambda tmp, fixtures: write(tmp / "e.npz", "not a zip"),
    ),
    # --- a full disk, a read-only filesystem -------------------------------------------------------------------
    IndexCase(
        "build: not enough free space (checked before writing)",
        [*BUILD, "--out", "{tmp}/i"],
        "--out {tmp}/i needs about ",
        env={"S2SD_TEST_FREE_BYTES": "4096"},
        no_output=["{tmp}/i"],
    ),
    IndexCase(
        "add: not enough free space",
        ["index", "add", "{tmp}/index", "{tmp}/more"],
        "which has 4.0 KiB free",
        setup=lambda tmp, fixtures: (copy_index(tmp, fixtures), image(tmp / "more" / "m.png", seed=99)),
        env={"S2SD_TEST_FREE_BYTES": "4096"},
        intact="{tmp}/index",
    ),
    IndexCase(
        "build --force: the disk fills up while writing",
        [*BUILD, "--out", "{tmp}/index", "--force"],
        "student.npy: no space left on its disk (the write needs about ",
        setup=lambda tmp, fixtures: copy_index(tmp, fixtures),
        env=fault(f"{INDEX_DIR}:IndexDir.save_npy:ENOSPC"),
        no_output=["{tmp}/.index.writing"],
        intact="{tmp}/index",
    ),
    IndexCase(
        "add: a read-only filesystem",
        ["index", "add", "{tmp}/index", "{tmp}/more"],
        "its filesystem is read-only; {tmp}/index is unchanged (nothing was added)",
        setup=lambda tmp, fixtures: (copy_index(tmp, fixtures), image(tmp / "more" / "m.png", seed=99)),
        env=fault(f"{INDEX_DIR}:IndexDir.write_jsonl:EROFS"),
        intact="{tmp}/index",
    ),
    IndexCase(
        "merge: permission denied",
        ["index", "merge", "{tmp}/m", "{index}"],
        "permission denied; {tmp}/m is unchanged",
        env=fault(f"{INDEX_DIR}:IndexDir.copy_model:EACCES"),
        no_output=["{tmp}/m", "{tmp}/.m.writing"],
    ),
    IndexCase(
        "build: the lock cannot be written",
        [*BUILD, "--out", "{tmp}/i"],
        "cannot write {tmp}/.i.lock: its filesystem is read-only",
        env=fault("s2sd_deploy.locks:ExclusiveLock.acquire:EROFS"),
        no_output=["{tmp}/i"],
    ),
]


@pytest.fixture(scope="module")
def fixtures(exported_model, tmp_path_factory):
    """12 small images and a flat index of them (built with the shared tiny model)."""
    from s2sd_deploy.serving.indexing import build_index

    root = tmp_path_factory.mktemp("bad-index")
    for i in range(12):
        image(root / "images" / f"{i}.png", seed=i)
    build_index([root / "images"], exported_model, root / "index", IndexConfig(index="flat"))
    return {"model": exported_model, "images": root / "images", "index": root / "index"}


def run_s2sd(args, cwd, env=None, **kwargs) -> subprocess.CompletedProcess:
    environment = {**ENV, **(env or {})}
    if env:  # the fault injector goes first on the path
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTS), ENV.get("PYTHONPATH")]))
    return subprocess.run([S2SD, *args], capture_output=True, text=True, env=environment, cwd=cwd, **kwargs)


@pytest.fixture(scope="module")
def outcomes(fixtures, tmp_path_factory):
    prepared = {}
    for case in CASES:
        tmp = tmp_path_factory.mktemp("case")
        if case.setup:
            case.setup(tmp, fixtures)
        values = {**fixtures, "tmp": tmp, "pid": os.getpid()}
        kept = {fill(p, values): Path(fill(p, values)).stat().st_mtime_ns for p in case.kept}
        prepared[case.name] = (tmp, values, kept, [fill(a, values) for a in case.args])

    def run(case):
        tmp, values, kept, args = prepared[case.name]
        return case.name, (values, kept, run_s2sd(args, fill(case.cwd, values), case.env, timeout=300))

    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            return dict(pool.map(run, CASES))
    finally:
        while HELD_LOCKS:
            HELD_LOCKS.pop().release(remove=True)


def test_the_battery_covers_the_surfaces():
    assert len(CASES) >= 35 and len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_bad_index_input_is_one_clear_line(case, outcomes):
    values, kept, result = outcomes[case.name]
    assert result.returncode == case.code, (result.stdout + result.stderr)[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fill(case.needle, values) in errors[0], result.stderr[-2000:]
    for path in case.no_output:
        assert not Path(fill(path, values)).exists(), f"{path} was written"
    for path, modified in kept.items():
        assert Path(path).stat().st_mtime_ns == modified, f"{path} was changed"
    if case.intact:
        with IndexDir.open(fill(case.intact, values), full_check=True) as index:
            assert len(index.paths()) == 12
    leftovers = [p for p in values["tmp"].rglob("*") if p.name.endswith((".tmp", ".writing", ".previous", ".lock"))]
    assert not leftovers, leftovers


# --- Ctrl-C: exit 130 and how to continue ----------------------------------------------------------------------
def test_ctrl_c_during_a_build_says_a_rerun_resumes(fixtures, tmp_path):
    out = tmp_path / "i"
    args = [*[fill(a, fixtures) for a in BUILD], "--out", str(out), "--chunk-size", "4", "--workers", "1"]
    stopped = run_s2sd(args, tmp_path, fault("s2sd_deploy.serving.indexing:embed_files:sigint", after=1), timeout=300)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"error: interrupted: {out} is unchanged and the images embedded so far are kept in {out / '.build'}; "
        f"run the same command again to resume"
    )
    resumed = run_s2sd(args, tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["build"]["images_resumed"] == 4 and manifest["build"]["images_embedded"] == 8


@pytest.mark.parametrize("command", ["add", "merge"])
def test_ctrl_c_during_add_or_merge_leaves_the_index_as_it_was(fixtures, tmp_path, command):
    index = copy_index(tmp_path, fixtures)
    image(tmp_path / "more" / "m.png", seed=99)
    before = (index / "manifest.json").read_text()
    args = ["index", "add", str(index), str(tmp_path / "more")]
    if command == "merge":
        args = ["index", "merge", str(index), str(fixtures["index"]), "--force"]
    stopped = run_s2sd(args, tmp_path, fault(f"{INDEX_DIR}:IndexDir.write_manifest:sigint"), timeout=300)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    unchanged = f"{index} is unchanged" + (" (nothing was added)" if command == "add" else "")
    assert stopped.stderr.strip().splitlines()[-1] == f"error: interrupted: {unchanged}; run the same command again"
    assert (index / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "more"]


# --- SIGKILL in the middle of a write: the previous index is whole and searchable ----------------------------
def killed_while(args, tmp_path, spec: str) -> None:
    """Run ``s2sd ARGS`` with ``spec``'s pause (a marker file once it is reached), then SIGKILL it there."""
    marker = tmp_path / "reached"
    env = {**ENV, **fault(f"{spec}:{marker}")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTS), ENV.get("PYTHONPATH")]))
    process = subprocess.Popen([S2SD, *args], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), process.stderr.read() if process.poll() is not None else "timed out"
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    marker.unlink()


def search_ids(index: Path, query: Path) -> list[int]:
    result = run_s2sd(["search", str(index), str(query), "--k", "5", "--json"], index.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return [hit["id"] for hit in json.loads(result.stdout)[0]["results"]]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["add", "merge"])
def test_an_add_or_merge_killed_mid_write_leaves_the_previous_index(fixtures, tmp_path, command):
    index = copy_index(tmp_path, fixtures)
    query = sorted(fixtures["images"].glob("*.png"))[3]
    before = search_ids(index, query)
    image(tmp_path / "more" / "m.png", seed=99)
    args = ["index", "add", str(index), str(tmp_path / "more")]
    if command == "merge":
        args = ["index", "merge", str(index), str(fixtures["index"]), "--force"]
    killed_while(args, tmp_path, f"{INDEX_DIR}:IndexDir.write_manifest:pause")  # every other file written
    assert (tmp_path / ".index.writing" / "student.npy").is_file()  # the new version, not swapped in
    assert search_ids(index, query) == before
    with IndexDir.open(index, full_check=True) as reopened:
        assert len(reopened.paths()) == 12
    again = run_s2sd(args, tmp_path, timeout=300)  # the same command, run again, completes
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(IndexDir.open(index).paths()) == (13 if command == "add" else 12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "more"]


# --- a damaged resume chunk is embedded again ----------------------------------------------------------------
def test_a_damaged_resume_chunk_is_embedded_again_with_a_notice(fixtures, tmp_path, caplog):
    from s2sd_deploy.serving import indexing

    cfg = IndexConfig(index="flat", chunk_size=4, workers=1)
    out = tmp_path / "i"
    killed = []
    real = indexing.embed_files

    def dies_in_the_third_chunk(*args, **kwargs):
        if len(killed) == 2:
            raise KeyboardInterrupt
        killed.append(1)
        return real(*args, **kwargs)

    indexing.embed_files = dies_in_the_third_chunk
    try:
        with pytest.raises(S2SDError, match="interrupted"):
            indexing.build_index([fixtures["images"]], fixtures["model"], out, cfg)
    finally:
        indexing.embed_files = real
    chunk = out / ".build" / "chunk-000001.npz"
    poke(chunk, chunk.stat().st_size // 2, b"\xde\xad\xbe\xef")
    with caplog.at_level("WARNING"):
        manifest = indexing.build_index([fixtures["images"]], fixtures["model"], out, cfg)
    assert manifest["build"]["images_resumed"] == 4 and manifest["build"]["images_embedded"] == 8
    assert [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()] == [
        f"chunk 1 of the interrupted build ({chunk}) is damaged: embedding its images again"
    ]
    with IndexDir.open(out) as built, IndexDir.open(fixtures["index"]) as whole:
        np.testing.assert_allclose(built.gallery().student, whole.gallery().student, atol=1e-6)


# --- readers never see half a version ------------------------------------------------------------------------
def test_readers_never_see_a_half_swapped_version(tmp_path):
    """A writer replaces the index version after version (each of another size) while readers open it in
    threads; every open must succeed and every file it reads must belong to one version."""
    from s2sd_deploy.serving.ann import build, tune
    from s2sd_deploy.serving.index_dir import Gallery
    from s2sd_deploy.serving.search import FaissStore

    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(1000))
    index = IndexDir(tmp_path / "index")
    rng = np.random.default_rng(0)

    def version(rows: int) -> None:
        vectors = rng.standard_normal((rows, 8)).astype(np.float32)
        gallery = Gallery(vectors, vectors[:, :4].astype(np.float16), [f"/g/{rows}/{i}.png" for i in range(rows)], [])
        built, factory = build(vectors, "flat")
        manifest = {"model": {"embedding_dim": 8, "teacher_dim": 4}, "counts": {"images": rows, "skipped": 0}}
        index.write(gallery, model, tune(built, "flat", factory, vectors, 0.9), manifest)

    version(10)
    errors, opened, done = [], [], threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                with IndexDir.open(index.path) as current:
                    rows = current.manifest["counts"]["images"]
                    store = FaissStore(current)  # checks that vectors, faiss index, teacher and paths agree
                    assert store.count() == rows and store.paths(np.array([rows - 1]))[0].startswith(f"/g/{rows}/")
                    opened.append(rows)
            except Exception as error:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(error))

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    try:
        for rows in range(11, 151):
            version(rows)
    finally:
        done.set()
        for reader in readers:
            reader.join()
    assert errors == []
    assert len(opened) > 100 and len(set(opened)) > 20, (len(opened), len(set(opened)))


def test_a_version_left_beside_the_index_by_a_killed_swap_is_restored(fixtures, tmp_path):
    """Where the filesystem cannot exchange two folders, a swap is two renames; killed between them, the index's
    name is free and its previous version lies beside it: readers say so, the next writer puts it back."""
    index = copy_index(tmp_path, fixtures)
    os.rename(index, tmp_path / ".index.previous")
    with pytest.raises(Exception, match=r"its previous version is in .*\.index\.previous: rename it back"):
        IndexDir.open(index)
    with IndexDir(index).lock():
        assert (index / "manifest.json").is_file() and not (tmp_path / ".index.previous").exists()
    assert IndexDir.open(index, full_check=True).paths()


def test_old_indexes_without_checksums_still_open(fixtures, tmp_path):
    index = copy_index(tmp_path, fixtures)
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["format"] = "s2sd-index/1"
    manifest["files"] = {name: entry["bytes"] for name, entry in manifest["files"].items()}
    (index / "manifest.json").write_text(json.dumps(manifest))
    result = run_s2sd(["index", "verify", str(index)], tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "sizes only for 6 (written before indexes recorded checksums)" in result.stdout


# --- Milvus: a collection per index, rebuilt beside the old one, counted on open, quiet ------------------------
@pytest.mark.slow
def test_milvus_indexes_keep_their_collections_and_survive_a_killed_rebuild(fixtures, tmp_path):
    pytest.importorskip("pymilvus")
    uri, a, b = tmp_path / "g.db", tmp_path / "a", tmp_path / "b"
    for i in range(3):
        image(tmp_path / "b-images" / f"{i}.png", seed=50 + i)

    def build(out: Path, images: Path, *extra: str) -> subprocess.CompletedProcess:
        args = ["index", "build", str(images), "--model", str(fixtures["model"]), "--out", str(out)]
        return run_s2sd([*args, "--backend", "milvus", "--uri", str(uri), *extra], tmp_path, timeout=300)

    first = build(a, fixtures["images"], "--collection", "photos")
    assert first.returncode == 0 and first.stderr.count("Traceback") == 0, first.stderr[-3000:]
    assert "Exception calling application" not in first.stderr  # Milvus Lite's noise stays off the screen
    query = sorted(fixtures["images"].glob("*.png"))[3]
    before = search_ids(a, query)
    assert before[0] == 3
    refused = build(b, tmp_path / "b-images", "--collection", "photos")
    assert refused.returncode == 2 and "belongs to another index" in refused.stderr.splitlines()[-1], refused.stderr
    assert build(b, tmp_path / "b-images").returncode == 0  # same URI, its own collection

    rebuild = ["index", "build", str(fixtures["images"]), "--model", str(fixtures["model"]), "--out", str(a)]
    rebuild += ["--backend", "milvus", "--uri", str(uri), "--collection", "photos", "--force"]
    killed_while(rebuild, tmp_path, "s2sd_deploy.serving.milvus:MilvusGallery.add:pause-after")  # rows in, no swap
    assert search_ids(a, query) == before  # the previous collection is whole, b's untouched
    again = run_s2sd(rebuild, tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]

    manifest = json.loads((a / "manifest.json").read_text())
    collection, index_id = manifest["backend"]["collection"], manifest["index_id"]
    listing = subprocess.run(
        [sys.executable, "-c", LIST_AND_EMPTY, str(uri), collection],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert listing.returncode == 0, listing.stderr[-3000:]
    collections, alias_target = json.loads(listing.stdout)
    assert [c for c in collections if index_id[:16] in c] == [collection]  # the killed rebuild's was dropped
    assert alias_target == collection and len(collections) == 2  # a's and b's

    emptied = run_s2sd(["search", str(a), str(query)], tmp_path, timeout=300)
    assert emptied.returncode == 2, emptied.stderr[-3000:]
    assert (
        emptied.stderr.strip()
        .splitlines()[-1]
        .endswith(
            f"holds 0 rows but {a}/manifest.json records 12 images: it was changed outside s2sd; rebuild the index "
            f"with `s2sd index build ... --force`"
        )
    )


LIST_AND_EMPTY = """
import json, sys
from pymilvus import MilvusClient
client = MilvusClient(uri=sys.argv[1])
print(json.dumps([sorted(client.list_collections()), client.describe_alias("photos")["collection_name"]]))
client.delete(sys.argv[2], filter="id >= 0")  # emptied behind the index's back
client.flush(sys.argv[2])
client.close()
"""


def test_the_writer_lock_names_its_holder_and_is_removed_safely(tmp_path):
    first = ExclusiveLock(tmp_path / ".index.lock").acquire("busy (pid {pid})")
    with pytest.raises(S2SDError, match=rf"^busy \(pid {os.getpid()}\)$"):
        ExclusiveLock(tmp_path / ".index.lock").acquire("busy (pid {pid})")
    first.release(remove=True)
    assert not (tmp_path / ".index.lock").exists()
    with ExclusiveLock(tmp_path / ".index.lock").acquire("busy (pid {pid})") as second:
        assert second.held and (tmp_path / ".index.lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".index.lock").exists()


@pytest.mark.parametrize("can_exchange", [True, False])
def test_ctrl_c_during_a_swap_lets_it_finish_first(fixtures, tmp_path, monkeypatch, can_exchange):
    """Ctrl-C between the renames of a swap (where the filesystem cannot exchange) would leave no index at its
    name: it is held back until the swap is done, then reported as such."""
    from s2sd_deploy.serving import ann, index_dir

    index = copy_index(tmp_path, fixtures)

    def interrupted_exchange(a, b):
        os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler at once: mid-swap
        return can_exchange and real(a, b)

    real = index_dir.exchange
    monkeypatch.setattr(index_dir, "exchange", interrupted_exchange)
    with IndexDir.open(index) as current:
        half = current.gallery().select(np.arange(6))
        built, factory = ann.build(np.ascontiguousarray(half.student), "flat")
        manifest = {k: current.manifest[k] for k in ("model", "index_id")} | {"counts": {"images": 6, "skipped": 0}}
        with pytest.raises(Interrupted, match=f"interrupted: {index} was replaced by its new version, complete"):
            IndexDir(index).write(
                half, current.model_file(), ann.tune(built, "flat", factory, half.student, 0.9), manifest
            )
    with IndexDir.open(index, full_check=True) as replaced:
        assert len(replaced.paths()) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
