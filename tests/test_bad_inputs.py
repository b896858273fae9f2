"""Bad input, as a new user or a hostile tester gives it: every case through the real console script.

Each case must end with a non-zero exit code (2 for a usage or user error, 3 for a missing GPU or package),
one line that names the problem (``error: ...``, or Typer's usage message), no traceback, and no partial
output left behind. Most are refused before torch is imported, so the battery stays cheap.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

S2SD = str(Path(sys.executable).with_name("s2sd"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"}


@dataclass
class Case:
    name: str
    args: list[str]  # {run}, {model}, {tmp}, {images} are filled in
    needle: str  # what the one error line must say
    code: int = 2
    setup: Callable[[Path, dict], None] | None = None  # builds broken inputs in tmp
    no_output: list[str] = field(default_factory=list)  # paths that must not exist afterwards


def write(path: Path, content: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def image(path: Path, size=(20, 24), seed=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def decompression_bomb(path: Path, side: int = 40_000) -> None:
    """A PNG header declaring side x side pixels (1.6e9, far past Pillow's limit); no pixel data needed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    write(path, b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def copy_run(tmp: Path, fixtures: dict) -> Path:
    run = tmp / "run"
    shutil.copytree(fixtures["run"], run)
    return run


def broken_config_key(tmp, fixtures):
    run = copy_run(tmp, fixtures)
    meta = json.loads((run / "config.json").read_text())
    del meta["config"]
    (run / "config.json").write_text(json.dumps(meta))


def config_not_json(tmp, fixtures):
    write(copy_run(tmp, fixtures) / "config.json", "{not json")


def truncated_checkpoint(tmp, fixtures):
    run = copy_run(tmp, fixtures)
    data = (run / "last.safetensors").read_bytes()
    (run / "last.safetensors").write_bytes(data[: len(data) // 3])


def foreign_checkpoint(tmp, fixtures):
    """A checkpoint of the same format from a run with other shapes (a 32-d student instead of 16-d)."""
    import torch

    from s2sd_deploy.training.run_dir import load_checkpoint, save_checkpoint

    run = copy_run(tmp, fixtures)
    checkpoint = load_checkpoint(run / "last.safetensors")
    model = {
        k: (torch.zeros(32, *v.shape[1:]) if k.startswith("student.") else v) for k, v in checkpoint["model"].items()
    }
    save_checkpoint(run / "last.safetensors", model, training_state=checkpoint["training_state"])


def unfinished_run(tmp, fixtures):
    (copy_run(tmp, fixtures) / "summary.json").unlink()


def toml(text: str | bytes):
    return lambda tmp, fixtures: write(tmp / "c.toml", text)


def imagefolder_with_empty_test_classes(tmp, fixtures):
    for c in range(3):
        for i in range(2):
            image(tmp / "data" / f"a{c}" / f"{i}.png", seed=c * 10 + i)
    for c in range(3):
        (tmp / "data" / f"z{c}").mkdir(parents=True)  # the test half: folders without images


def sop_with_absolute_paths(tmp, fixtures):
    for name in ("Ebay_train.txt", "Ebay_test.txt"):
        write(tmp / "sop" / name, "image_id class_id super_class_id path\n1 1 1 /etc/passwd\n2 2 1 /etc/hosts\n")


def bad_images(tmp, fixtures):
    image(tmp / "images" / "good.png")
    write(tmp / "images" / "broken.jpg", b"not a jpeg")


def bomb_image(tmp, fixtures):
    image(tmp / "images" / "good.png")
    decompression_bomb(tmp / "images" / "bomb.png")


def a_file(name: str):
    return lambda tmp, fixtures: write(tmp / name, "x")


CASES = [
    # --- usage errors, printed by Typer with the usage line ------------------------------------------
    Case("no command", [], "Usage: s2sd [OPTIONS] COMMAND"),
    Case("unknown command", ["nosuchcmd"], "No such command"),
    Case("misspelt option", ["train", "--epoch", "1"], "No such option"),
    Case("not a number", ["train", "--epochs", "two"], "Invalid value for '--epochs'"),
    Case("option without its value", ["train", "--lr"], "requires an argument"),
    Case("export without a run", ["export"], "Missing argument"),
    Case("embed without inputs", ["embed"], "Missing argument"),
    Case("embed without --model", ["embed", "{images}", "--out", "{tmp}/x.npz"], "Missing option"),
    Case("report without runs", ["report"], "Missing argument"),
    Case(
        "bench max-seconds not a number", ["bench-latency", "--max-seconds", "abc"], "Invalid value for '--max-seconds'"
    ),
    Case(
        "embed batch size 0",
        ["embed", "{images}", "--model", "{model}", "--out", "{tmp}/x.npz", "--batch-size", "0"],
        "Invalid value for '--batch-size'",
    ),
    Case(
        "embed threads -1",
        ["embed", "{images}", "--model", "{model}", "--out", "{tmp}/x.npz", "--threads", "-1"],
        "Invalid value for '--threads'",
    ),
    Case(
        "embed workers 0",
        ["embed", "{images}", "--model", "{model}", "--out", "{tmp}/x.npz", "--workers", "0"],
        "Invalid value for '--workers'",
    ),
    # --- train options, refused before torch is imported ------------------------------------------------
    Case("samples per class 0", ["train", "--samples-per-class", "0"], "--samples-per-class must be at least 2"),
    Case("samples per class 1", ["train", "--samples-per-class", "1"], "--samples-per-class must be at least 2"),
    Case("target dims 0", ["train", "--target-dims", "0"], "--target-dims must be at least 1, got 0"),
    Case("negative target dims", ["train", "--target-dims", "-5,64"], "--target-dims must be at least 1, got -5"),
    Case("target dims not numbers", ["train", "--target-dims", "64,abc"], "--target-dims takes comma-separated"),
    Case("lr nan", ["train", "--lr", "nan"], "--lr must be a finite number, got nan"),
    Case("lr inf", ["train", "--lr", "inf"], "--lr must be a finite number, got inf"),
    Case("negative lr", ["train", "--lr", "-1"], "--lr must be above 0, got -1.0"),
    Case("eval every 0", ["train", "--eval-every", "0"], "--eval-every must be at least 1"),
    Case("negative workers", ["train", "--num-workers", "-1"], "--num-workers must be at least 0"),
    Case("recall ks without 1", ["train", "--recall-ks", "2,4"], "--recall-ks 2,4 must include 1"),
    Case("recall k 0", ["train", "--recall-ks", "0,1"], "--recall-ks must be at least 1, got 0"),
    Case("temperature nan", ["train", "--temperature", "nan"], "--temperature must be a finite number"),
    Case("temperature 0", ["train", "--temperature", "0"], "--temperature must be above 0"),
    Case("epochs 0", ["train", "--epochs", "0"], "--epochs must be at least 1"),
    Case("batch size 0", ["train", "--batch-size", "0"], "--batch-size must be at least 2"),
    Case("batch not a multiple", ["train", "--batch-size", "81"], "must be a multiple of --samples-per-class"),
    Case("image size 0", ["train", "--image-size", "0"], "--image-size must be at least 8"),
    Case("resize below crop", ["train", "--image-size", "64", "--resize-size", "32"], "is smaller than --image-size"),
    Case("crop scale 0", ["train", "--crop-scale-min", "0"], "--crop-scale-min must be above 0"),
    Case("crop scale above 1", ["train", "--crop-scale-min", "1.5"], "--crop-scale-min must be at most 1"),
    Case("negative weight decay", ["train", "--weight-decay", "-1"], "--weight-decay must be at least 0"),
    Case("negative distill weight", ["train", "--distill-weight", "-1"], "--distill-weight must be at least 0"),
    Case("negative feature delay", ["train", "--feature-delay", "-1"], "--feature-delay must be at least 0"),
    Case(
        "negative validation classes",
        ["train", "--validation-classes", "-1"],
        "--validation-classes must be at least 0",
    ),
    Case("momentum 1.5", ["train", "--momentum", "1.5"], "--momentum must be below 1"),
    Case("lr gamma 0", ["train", "--lr-gamma", "0"], "--lr-gamma must be above 0"),
    Case("negative seed", ["train", "--seed", "-1"], "--seed must be at least 0"),
    Case("upper cutoff below lower", ["train", "--dw-upper-cutoff", "0.3"], "--dw-upper-cutoff 0.3 must be above"),
    Case(
        "run name ../x",
        ["train", "--run-name", "../x", "--out-dir", "{tmp}/runs"],
        "must be one folder name",
        no_output=["{tmp}/x", "{tmp}/runs"],
    ),
    Case("absolute run name", ["train", "--run-name", "{tmp}/abs"], "must be one folder name", no_output=["{tmp}/abs"]),
    Case("empty run name", ["train", "--run-name", ""], "must be one folder name"),
    Case(
        "out dir is a file",
        ["train", "--out-dir", "{tmp}/afile"],
        "--out-dir {tmp}/afile is a file",
        setup=a_file("afile"),
    ),
    Case("dataset without data root", ["train", "--dataset", "cub200"], "--data-root is required"),
    Case("unknown dataset", ["train", "--dataset", "imagenet"], "invalid --dataset 'imagenet'; choose one of"),
    Case("unknown criterion", ["train", "--criterion", "arcface"], "invalid --criterion 'arcface'; choose one of"),
    Case("unknown sampler", ["train", "--sampler", "random"], "invalid --sampler 'random'; choose one of"),
    Case("unknown device", ["train", "--device", "tpu"], "invalid --device 'tpu'"),
    Case("missing config", ["train", "--config", "{tmp}/none.toml"], "config file not found"),
    Case("config not TOML", ["train", "--config", "{tmp}/c.toml"], "is not valid TOML", setup=toml("epochs = = 3")),
    Case(
        "config wrong type",
        ["train", "--config", "{tmp}/c.toml"],
        "epochs must be a whole number, got 'three'",
        setup=toml('epochs = "three"'),
    ),
    Case(
        "config list expected",
        ["train", "--config", "{tmp}/c.toml"],
        "target_dims must be a list of whole numbers",
        setup=toml("target_dims = 64"),
    ),
    Case(
        "config not UTF-8", ["train", "--config", "{tmp}/c.toml"], "is not UTF-8 text", setup=toml(b'run_name = "\xff"')
    ),
    Case(
        "config unknown key",
        ["train", "--config", "{tmp}/c.toml"],
        "unknown option(s) learning_rate",
        setup=toml("learning_rate = 1"),
    ),
    Case(
        "config pretrained true",
        ["train", "--config", "{tmp}/c.toml"],
        "a torchvision weights name",
        setup=toml("pretrained = true"),
    ),
    Case(
        "config escapes out dir",
        ["train", "--config", "{tmp}/c.toml", "--out-dir", "{tmp}/runs"],
        "must be one folder name",
        setup=toml('run_name = "../../escaped"'),
        no_output=["{tmp}/escaped"],
    ),
    # --- train: machines and data ---------------------------------------------------------------------
    Case(
        "cuda without a GPU",
        ["train", "--device", "cuda", "--out-dir", "{tmp}/runs"],
        "no CUDA GPU",
        code=3,
        no_output=["{tmp}/runs"],
    ),
    Case(
        "amp on the CPU",
        ["train", "--amp", "--device", "cpu", "--out-dir", "{tmp}/runs"],
        "--amp needs a CUDA GPU",
        code=3,
        no_output=["{tmp}/runs"],
    ),
    Case(
        "data root missing",
        ["train", "--dataset", "imagefolder", "--data-root", "{tmp}/nope", "--out-dir", "{tmp}/runs"],
        "expected layout",
        no_output=["{tmp}/runs"],
    ),
    Case(
        "test classes all empty",
        ["train", "--dataset", "imagefolder", "--data-root", "{tmp}/data", "--out-dir", "{tmp}/runs"],
        "has 1 class(es) with images",
        setup=imagefolder_with_empty_test_classes,
        no_output=["{tmp}/runs"],
    ),
    Case(
        "SOP listing with absolute paths",
        ["train", "--dataset", "sop", "--data-root", "{tmp}/sop", "--out-dir", "{tmp}/runs"],
        "image paths must be relative",
        setup=sop_with_absolute_paths,
        no_output=["{tmp}/runs"],
    ),
    Case("resume a missing run", ["train", "--resume", "{tmp}/nope"], "run directory not found"),
    Case(
        "resume to fewer epochs",
        ["train", "--resume", "{tmp}/run", "--epochs", "0"],
        "--epochs 0 is below the 1 epochs",
        setup=lambda tmp, fixtures: copy_run(tmp, fixtures),
    ),
    Case("resume a foreign checkpoint", ["train", "--resume", "{tmp}/run"], "does not match", setup=foreign_checkpoint),
    # --- export ---------------------------------------------------------------------------------------------
    Case("export a missing run", ["export", "{tmp}/nope"], "run directory not found"),
    Case("export a folder without config", ["export", "{tmp}"], "config.json not found"),
    Case(
        "export: config without its config", ["export", "{tmp}/run"], "has no 'config' object", setup=broken_config_key
    ),
    Case("export: config not JSON", ["export", "{tmp}/run"], "is not valid JSON", setup=config_not_json),
    Case(
        "export: truncated checkpoint",
        ["export", "{tmp}/run", "--out", "{tmp}/out"],
        "last.safetensors is not a readable safetensors checkpoint",
        setup=truncated_checkpoint,
        no_output=["{tmp}/out/model.onnx"],
    ),
    Case(
        "export: foreign checkpoint",
        ["export", "{tmp}/run", "--out", "{tmp}/out"],
        "does not match",
        setup=foreign_checkpoint,
        no_output=["{tmp}/out/model.onnx"],
    ),
    Case(
        "export: unfinished run",
        ["export", "{tmp}/run"],
        "has not finished, so it has no shipped checkpoint",
        setup=unfinished_run,
    ),
    Case(
        "export: out is a file",
        ["export", "{run}", "--out", "{tmp}/afile"],
        "--out {tmp}/afile is a file",
        setup=a_file("afile"),
    ),
    Case(
        "export: out under a file",
        ["export", "{run}", "--out", "{tmp}/afile/sub"],
        "is a file, so nothing can be",
        setup=a_file("afile"),
    ),
    Case("export: old opset", ["export", "{run}", "--opset", "10"], "--opset 10 is too old"),
    Case(
        "export: batch profile",
        ["export", "{run}", "--batch-min", "8", "--batch-opt", "4"],
        "--batch-min <= --batch-opt",
    ),
    Case("export: unknown engine", ["export", "{run}", "--engine", "tflite"], "choose one of: onnx, trt"),
    Case("export: unknown precision", ["export", "{run}", "--precision", "int8"], "choose one of: fp32, fp16"),
    Case("export: missing checkpoint file", ["export", "{run}", "--checkpoint", "{tmp}/none.safetensors"], "not found"),
    Case(
        "export: teacher of a baseline",
        ["export", "{baseline}", "--with-teacher", "--out", "{tmp}/out"],
        "this run has no teacher heads",
        no_output=["{tmp}/out/model.onnx"],
    ),
    # --- embed -------------------------------------------------------------------------------------------------
    Case(
        "embed: missing model",
        ["embed", "{images}", "--model", "{tmp}/none.onnx", "--out", "{tmp}/x.npz"],
        "model file not found",
        no_output=["{tmp}/x.npz"],
    ),
    Case("embed: model is a folder", ["embed", "{images}", "--model", "{tmp}", "--out", "{tmp}/x.npz"], "is a folder"),
    Case(
        "embed: model is not ONNX",
        ["embed", "{images}", "--model", "{tmp}/afile", "--out", "{tmp}/x.npz"],
        "is not a loadable ONNX model",
        setup=a_file("afile"),
        no_output=["{tmp}/x.npz"],
    ),
    Case(
        "embed: missing input",
        ["embed", "{tmp}/none", "--model", "{model}", "--out", "{tmp}/x.npz"],
        "input not found",
        no_output=["{tmp}/x.npz"],
    ),
    Case(
        "embed: no images",
        ["embed", "{tmp}/empty", "--model", "{model}", "--out", "{tmp}/x.npz"],
        "no image files in",
        setup=lambda tmp, fixtures: (tmp / "empty").mkdir(),
        no_output=["{tmp}/x.npz"],
    ),
    Case(
        "embed: bad shard",
        ["embed", "{images}", "--model", "{model}", "--out", "{tmp}/x.npz", "--shard", "4/3"],
        "K must be between 1 and N",
        no_output=["{tmp}/x.npz"],
    ),
    Case(
        "embed: shard not K/N",
        ["embed", "{images}", "--model", "{model}", "--out", "{tmp}/x.npz", "--shard", "half"],
        "--shard takes K/N",
        no_output=["{tmp}/x.npz"],
    ),
    Case("embed: out is a folder", ["embed", "{images}", "--model", "{model}", "--out", "{tmp}"], "is a folder"),
    Case(
        "embed: out under a file",
        ["embed", "{images}", "--model", "{model}", "--out", "{tmp}/afile/x.npz"],
        "is a file, so nothing can be written",
        setup=a_file("afile"),
    ),
    Case(
        "embed: undecodable image",
        ["embed", "{tmp}/images", "--model", "{model}", "--out", "{tmp}/x.npz"],
        "broken.jpg",
        setup=bad_images,
        no_output=["{tmp}/x.npz"],
    ),
    Case(
        "embed: decompression bomb",
        ["embed", "{tmp}/images", "--model", "{model}", "--out", "{tmp}/x.npz"],
        "bomb.png is too large to decode safely",
        setup=bomb_image,
        no_output=["{tmp}/x.npz"],
    ),
    Case(
        "embed: unknown provider",
        ["embed", "{images}", "--model", "{model}", "--out", "{tmp}/x.npz", "--provider", "NoSuchExecutionProvider"],
        "not available",
        no_output=["{tmp}/x.npz"],
    ),
    # --- bench-latency -----------------------------------------------------------------------------------------
    Case("bench: empty gallery sizes", ["bench-latency", "--gallery-sizes", ""], "--gallery-sizes takes one or more"),
    Case("bench: gallery 0", ["bench-latency", "--gallery-sizes", "0"], "--gallery-sizes takes one or more"),
    Case("bench: dims not numbers", ["bench-latency", "--dims", "abc"], "--dims takes comma-separated"),
    Case("bench: unknown index", ["bench-latency", "--index", "flat,annoy"], "choose from: flat, hnsw, ivfpq"),
    Case(
        "bench: gallery too small for IVF-PQ",
        ["bench-latency", "--gallery-sizes", "100", "--index", "ivfpq"],
        "too small for ivfpq",
    ),
    Case("bench: max-seconds 0", ["bench-latency", "--max-seconds", "0"], "--max-seconds must be a positive"),
    Case("bench: negative max-seconds", ["bench-latency", "--max-seconds", "-5"], "--max-seconds must be a positive"),
    Case("bench: batch 0", ["bench-latency", "--query-batch", "0"], "--query-batch takes one or more"),
    Case("bench: unknown device", ["bench-latency", "--device", "tpu"], "choose one of: cpu, gpu"),
    Case(
        "bench: out is a file",
        ["bench-latency", "--out", "{tmp}/afile"],
        "--out {tmp}/afile is a file",
        setup=a_file("afile"),
    ),
    Case(
        "bench: GPU without one",
        ["bench-latency", "--device", "gpu", "--out", "{tmp}/b"],
        "torch sees no CUDA GPU",
        code=3,
        no_output=["{tmp}/b/results.json"],
    ),
    Case(
        "bench: missing run",
        ["bench-latency", "--run", "{tmp}/nope", "--out", "{tmp}/b"],
        "run directory not found",
        no_output=["{tmp}/b/results.json"],
    ),
    # --- index, search, eval -----------------------------------------------------------------------------------
    Case(
        "index: unknown kind",
        ["index", "build", "{images}", "--model", "{model}", "--out", "{tmp}/i", "--index", "annoy"],
        "invalid --index 'annoy'; choose one of",
        no_output=["{tmp}/i"],
    ),
    Case(
        "index: recall above 1",
        ["index", "build", "{images}", "--model", "{model}", "--out", "{tmp}/i", "--min-recall", "2"],
        "--min-recall must be above 0 and at most 1",
    ),
    Case(
        "index: milvus without uri",
        ["index", "build", "{images}", "--model", "{model}", "--out", "{tmp}/i", "--backend", "milvus"],
        "--backend milvus needs --uri",
    ),
    Case(
        "index: shard with milvus",
        "index build {images} --model {model} --out {tmp}/i --backend milvus --uri g.db --shard 1/2".split(),
        "--shard works with the faiss backend only",
        no_output=["{tmp}/i", "{tmp}/g.db"],
    ),
    Case(
        "index: out is a file",
        ["index", "build", "{images}", "--model", "{model}", "--out", "{tmp}/afile"],
        "--out {tmp}/afile is a file",
        setup=a_file("afile"),
    ),
    Case(
        "index: model is not ONNX",
        ["index", "build", "{images}", "--model", "{tmp}/afile", "--out", "{tmp}/i"],
        "is not a loadable ONNX model",
        setup=a_file("afile"),
        no_output=["{tmp}/i/manifest.json"],
    ),
    Case(
        "index: too small for IVF-PQ",
        ["index", "build", "{images}", "--model", "{model}", "--out", "{tmp}/i", "--index", "ivf-pq"],
        "ivf-pq needs at least 1000 vectors",
        no_output=["{tmp}/i/manifest.json"],
    ),
    Case("index: add to a missing index", ["index", "add", "{tmp}/none", "{images}"], "index not found"),
    Case("index: merge nothing", ["index", "merge", "{tmp}/m"], "Missing argument"),
    Case("search: missing index", ["search", "{tmp}/none", "{images}"], "index not found"),
    Case("search: a folder that is not an index", ["search", "{tmp}", "{images}"], "it is not an s2sd index"),
    Case("search: k 0", ["search", "{index}", "{images}", "--k", "0"], "Invalid value for '--k'"),
    Case(
        "search: rerank below k",
        ["search", "{index}", "{images}", "--k", "5", "--rerank", "3"],
        "--rerank 3 must be at least --k 5",
    ),
    Case(
        "search: rerank without a teacher",
        ["search", "{student_index}", "{images}", "--rerank", "10"],
        "has no teacher vectors",
    ),
    Case("eval: no data", ["eval", "{model}"], "pass either --data-root, or both --query-root and --gallery-root"),
    Case(
        "eval: one class",
        ["eval", "{model}", "--data-root", "{tmp}/one"],
        "has 1 class folder(s) with images",
        setup=lambda tmp, fixtures: image(tmp / "one" / "only" / "a.png"),
    ),
    Case("eval: out is a folder", ["eval", "{model}", "--data-root", "{tmp}", "--out", "{tmp}"], "is a folder"),
    Case("eval: empty recall ks", ["eval", "{model}", "--data-root", "{tmp}", "--recall-ks", ""], "--recall-ks takes"),
    Case("eval: recall k 0", ["eval", "{model}", "--data-root", "{tmp}", "--recall-ks", "0"], "--recall-ks takes"),
    Case("eval: rerank 0", ["eval", "{model}", "--data-root", "{tmp}", "--rerank", "0"], "--rerank takes one or more"),
    Case("eval: negative rerank", ["eval", "{model}", "--data-root", "{tmp}", "--rerank", "-5"], "--rerank takes"),
    Case(
        "eval: rerank below the largest k",
        ["eval", "{model}", "--data-root", "{tmp}", "--recall-ks", "1,100", "--rerank", "50"],
        "--rerank 50 must be at least the largest --recall-ks 100",
    ),
    # --- report ------------------------------------------------------------------------------------------------
    Case("report: missing run", ["report", "{tmp}/nope"], "run directory not found"),
    Case("report: unfinished run", ["report", "{tmp}/run"], "has not finished", setup=unfinished_run),
    Case("report: markdown to a folder", ["report", "{run}", "--markdown", "{tmp}"], "is a folder"),
]


@pytest.fixture(scope="module")
def fixtures(trained_run, exported_model, tmp_path_factory):
    from s2sd_deploy.deploy.config import ExportConfig
    from s2sd_deploy.deploy.export import export_run
    from s2sd_deploy.serving.index_config import IndexConfig
    from s2sd_deploy.serving.indexing import build_index
    from s2sd_deploy.training.config import build_train_config
    from s2sd_deploy.training.trainer import train

    from .conftest import TINY

    out = tmp_path_factory.mktemp("baseline")
    train(build_train_config({**TINY, "s2sd": False, "out_dir": str(out), "run_name": "baseline"}))
    images = tmp_path_factory.mktemp("images")
    for i in range(3):
        image(images / f"{i}.png", seed=i)
    indexes = tmp_path_factory.mktemp("indexes")
    build_index([images], exported_model, indexes / "index", IndexConfig(index="flat"))
    student_only = indexes / "student.onnx"
    export_run(ExportConfig(run=str(trained_run), out=str(indexes / "student-export"), verify_limit=8))
    shutil.copy(indexes / "student-export" / "model.onnx", student_only)
    build_index([images], student_only, indexes / "student-index", IndexConfig(index="flat"))
    return {
        "run": trained_run,
        "model": exported_model,
        "images": images,
        "baseline": out / "baseline",
        "index": indexes / "index",
        "student_index": indexes / "student-index",
    }


def fill(text: str, values: dict) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def test_the_battery_is_large():
    assert len(CASES) >= 60 and len({case.name for case in CASES}) == len(CASES)


@dataclass
class Outcome:
    tmp: Path
    values: dict
    before: list[Path]
    result: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def outcomes(fixtures, tmp_path_factory) -> dict[str, Outcome]:
    """Every case run through the console script, several at a time: each is its own process, and most spend
    their time importing, so running them side by side keeps the battery cheap on 2 cores."""
    prepared = {}
    for case in CASES:
        tmp = tmp_path_factory.mktemp("case")
        if case.setup:
            case.setup(tmp, fixtures)
        values = {**fixtures, "tmp": tmp}
        prepared[case.name] = (tmp, values, sorted(tmp.rglob("*")), [fill(arg, values) for arg in case.args])

    def run(name):
        tmp, values, before, args = prepared[name]
        result = subprocess.run([S2SD, *args], capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp)
        return name, Outcome(tmp, values, before, result)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, prepared))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_bad_input_is_one_clear_line(case, outcomes):
    outcome = outcomes[case.name]
    result, values = outcome.result, outcome.values
    output = result.stdout + result.stderr
    assert result.returncode == case.code, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    needle = fill(case.needle, values)
    if needle.startswith("Usage:"):  # no command: the usage and the commands
        assert needle in output, output
    elif case.code == 2 and "Error ─" in output:  # Typer's usage errors: usage line (where Click has it), problem
        assert needle in " ".join(output.split()), output
        assert "Usage: s2sd" in output or "requires an argument" in output, output
    else:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0], result.stderr[-2000:]
    for path in case.no_output:
        assert not Path(fill(path, values)).exists(), f"{path} was written"
    leftovers = [p for p in outcome.tmp.rglob("*.tmp") if p not in outcome.before]
    assert not leftovers, leftovers


# --- Embedder, in Python ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedder(exported_model):
    from s2sd_deploy.serving.embedder import Embedder

    return Embedder(exported_model, threads=1)


def test_embedder_empty_uint8_batch_gives_no_rows(embedder):
    assert embedder.embed(np.zeros((0, 20, 20, 3), np.uint8)).shape == (0, embedder.dim)


def test_embedder_rejects_batch_size_0_and_bad_threads(exported_model):
    from s2sd_deploy.errors import S2SDError
    from s2sd_deploy.serving.embedder import Embedder

    with pytest.raises(S2SDError, match="batch_size must be at least 1, got 0"):
        Embedder(exported_model, batch_size=0)
    with pytest.raises(S2SDError, match="threads must be at least 1"):
        Embedder(exported_model, threads=-1)


def test_embedder_names_the_rows_with_nan_pixels(embedder):
    from s2sd_deploy.errors import S2SDError

    size = embedder.preprocess.image_size
    batch = np.zeros((4, 3, size, size), np.float32)
    batch[1, 0, 0, 0], batch[3, 2, 1, 1] = np.nan, np.inf
    with pytest.raises(S2SDError, match=r"rows \[1, 3\] contain NaN or infinite values"):
        embedder.embed(batch)


def test_embedder_names_missing_metadata(exported_model, tmp_path):
    import onnx

    from s2sd_deploy.errors import S2SDError
    from s2sd_deploy.serving.embedder import Embedder

    model = onnx.load(str(exported_model))
    kept = [p for p in model.metadata_props if p.key not in ("image_size", "mean")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "partial.onnx"))
    with pytest.raises(S2SDError, match="has the s2sd format tag but its metadata is incomplete"):
        Embedder(tmp_path / "partial.onnx")


def test_embedder_blames_the_provider_not_the_file(exported_model, monkeypatch):
    import onnxruntime as ort

    from s2sd_deploy.errors import S2SDError
    from s2sd_deploy.serving.embedder import Embedder

    real = ort.InferenceSession

    def broken_provider(path, options=None, providers=None):
        if providers != ["CPUExecutionProvider"]:
            raise RuntimeError("CUDA failure 35: driver version is insufficient")
        return real(path, options, providers=providers)

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", broken_provider)
    with pytest.raises(S2SDError, match="provider.*CUDAExecutionProvider could not run .*driver version.*the CPU can"):
        Embedder(exported_model, providers=["CUDAExecutionProvider"])
    assert Embedder(exported_model).provider == "CPUExecutionProvider"  # chosen automatically: falls back, warns


def test_embedder_names_a_decompression_bomb(embedder, tmp_path):
    from s2sd_deploy.errors import S2SDError

    decompression_bomb(tmp_path / "bomb.png")
    with pytest.raises(S2SDError, match="bomb.png is too large to decode safely.*skip or replace the file"):
        embedder.embed([tmp_path / "bomb.png"])
