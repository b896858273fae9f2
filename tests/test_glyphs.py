"""The glyphs dataset (training.glyphs): its rules, its cache and its split, on one rendering per session."""

from __future__ import annotations

import ast
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fontTools.ttLib import TTFont

from s2sd_deploy.training import glyphs


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path) -> Path:
    """Every test caches under its own folder, never in the user's cache."""
    monkeypatch.setenv("S2SD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("glyphs-cache")


@pytest.fixture(scope="session")
def rendered(session_cache) -> glyphs.Glyphs:
    """The dataset at the default size, rendered once (cold) into the session's cache folder."""
    assert not list(session_cache.iterdir())
    return glyphs.load_glyphs(cache_dir=session_cache)


def tiny_glyphs() -> glyphs.Glyphs:
    """A stand-in for a rendered set where only the cache's behaviour is under test."""
    return glyphs.Glyphs(
        images=np.full((2, 4, 4), 7, dtype=np.uint8),
        labels=np.array([0, 1]),
        characters=["a", "β"],
        scripts=["latin", "greek"],
        fonts=["x.ttf"],
        font_index=np.array([0, 0]),
        report={"tiny": True},
    )


def counting_builder(calls: list):
    def build(size: int = glyphs.DEFAULT_SIZE) -> glyphs.Glyphs:
        calls.append(size)
        return tiny_glyphs()

    return build


def assert_same(a: glyphs.Glyphs, b: glyphs.Glyphs) -> None:
    assert a.images.dtype == b.images.dtype and a.images.shape == b.images.shape
    assert a.images.tobytes() == b.images.tobytes()
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.font_index, b.font_index)
    assert (a.characters, a.scripts, a.fonts) == (b.characters, b.scripts, b.fonts)


# --- rendering -----------------------------------------------------------------------------------
def test_two_renders_are_byte_identical(rendered):
    assert_same(glyphs.build_glyphs(), rendered)


def test_images_are_square_uint8_ink_on_black(rendered):
    n = len(rendered)
    assert rendered.images.shape == (n, glyphs.DEFAULT_SIZE, glyphs.DEFAULT_SIZE)
    assert rendered.images.dtype == np.uint8
    assert rendered.labels.dtype == np.int64 and rendered.font_index.dtype == np.int64
    assert np.all(np.median(rendered.images.reshape(n, -1), axis=1) == 0), "background must be black"
    assert np.all(rendered.images.max(axis=(1, 2)) >= 200), "ink must be bright"


def test_other_sizes_keep_the_same_classes_and_fonts(rendered):
    small = glyphs.load_glyphs(size=20)
    assert small.images.shape == (len(rendered), 20, 20) and small.images.dtype == np.uint8
    assert np.array_equal(small.labels, rendered.labels) and np.array_equal(small.font_index, rendered.font_index)
    assert (small.characters, small.fonts) == (rendered.characters, rendered.fonts)
    assert np.all(np.median(small.images.reshape(len(small), -1), axis=1) == 0)
    assert np.all(small.images.max(axis=(1, 2)) >= 128)


def test_no_blank_images(rendered):
    ink = rendered.images.reshape(len(rendered), -1).sum(axis=1) / 255.0
    assert ink.min() >= glyphs.MIN_INK


def test_lowercase_stays_smaller_than_uppercase(rendered):
    def ink_height(char: str) -> float:
        rows = rendered.images[rendered.labels == rendered.characters.index(char)].max(axis=2) > 64
        return float(np.mean(rows.sum(axis=1)))

    assert ink_height("o") < 0.85 * ink_height("O")
    assert ink_height("x") < 0.85 * ink_height("X")


def test_glyphs_share_a_baseline(rendered):
    bottom = {}
    for char in "HEx":
        images = rendered.images[rendered.labels == rendered.characters.index(char)]
        bottom[char] = np.array([np.flatnonzero(image.max(axis=1) > 128).max() for image in images])
    assert np.ptp(np.concatenate(list(bottom.values()))) <= 1


# --- rules ---------------------------------------------------------------------------------------
def test_nothing_is_drawn_outside_the_fonts_cmap(rendered):
    """Checked with fontTools, independently of the FreeType lookup the module uses."""
    paths = {p.name: p for p in glyphs.font_files()}
    cmaps = {name: set(TTFont(paths[name], lazy=True).getBestCmap()) for name in rendered.fonts}
    for label, font in zip(rendered.labels, rendered.font_index):
        chars = rendered.characters[label]
        assert any(ord(c) in cmaps[rendered.fonts[font]] for c in chars), (chars, rendered.fonts[font])


def test_a_character_missing_from_a_cmap_is_never_rendered():
    cmr10 = glyphs.font_directory() / "cmr10.ttf"
    covered, misnamed = glyphs.font_coverage(cmr10, ["A", "Ж", "À"])
    assert covered == [0]  # Ж is not in its cmap
    assert misnamed == ["À->AE"]  # À is mapped, to the glyph named AE: never rendered either


def test_fonts_drawing_symbols_at_letters_are_dropped(rendered):
    dropped = glyphs.dataset_report(rendered)["fonts_dropped"]
    for name in ("LastResortHE-Regular.ttf", "cmex10.ttf", "cmsy10.ttf", "STIXNonUni.ttf", "STIXSizOneSymReg.ttf"):
        assert name not in rendered.fonts and name in dropped
    assert {"DejaVuSans.ttf", "STIXGeneral.ttf", "cmr10.ttf"} <= set(rendered.fonts)


def test_every_class_has_one_image_per_font_and_enough_fonts(rendered):
    counts = np.bincount(rendered.labels, minlength=rendered.num_classes)
    fonts_per_class = np.array([len(np.unique(rendered.font_index[rendered.labels == c])) for c in range(len(counts))])
    assert np.array_equal(counts, fonts_per_class)
    assert counts.min() >= glyphs.MIN_FONTS


def test_no_two_classes_are_one_shape(rendered):
    test = ~np.array([glyphs.is_train_script(s) for s in rendered.scripts])
    shapes = glyphs.compare_shapes(rendered.images, rendered.labels, rendered.font_index, test)
    same = np.argwhere(np.triu(shapes.same, k=1))
    assert not len(same), [rendered.characters[i] + "/" + rendered.characters[j] for i, j in same[:10]]


def test_lookalikes_are_merged_or_leave_the_test_split(rendered):
    classes = set(rendered.characters)
    assert {"A", "O", "p", "3"} <= classes
    drawn = "".join(rendered.characters)
    for lookalike in "ΑАΟОрЗ":  # Greek Alpha, Cyrillic A, Omicron, Cyrillic O, Cyrillic er, Cyrillic Ze
        assert lookalike not in drawn
    assert "ΓГ" in classes  # Greek Gamma and Cyrillic Ge: one shape, one test class


def test_splits_are_disjoint_by_script(session_cache, rendered):
    train, test = glyphs.glyph_splits(cache_dir=session_cache)
    assert set(train.scripts) == {"latin"}
    assert all("latin" not in s.split("+") for s in test.scripts)
    assert test.num_classes >= 100 and train.num_classes >= 100
    assert not set("".join(train.characters)) & set("".join(test.characters))
    assert len(train) + len(test) == len(rendered)
    for split in (train, test):
        assert np.array_equal(np.unique(split.labels), np.arange(split.num_classes))
        firsts = [ord(c[0]) for c in split.characters]
        assert firsts == sorted(firsts)


def test_report_is_json_and_records_the_rules(rendered):
    report = glyphs.dataset_report(rendered)
    json.dumps(report)
    assert report["thresholds"]["duplicate_threshold"] == glyphs.DUPLICATE_THRESHOLD
    assert report["splits"]["test"]["classes"] >= 100
    assert sum(s["images"] for s in report["splits"].values()) == len(rendered)
    assert report["lookalikes_dropped_from_test"] and report["merges"]


# --- cache ---------------------------------------------------------------------------------------
def test_second_load_reads_the_cache(session_cache, rendered, monkeypatch):
    def no_rendering(size=glyphs.DEFAULT_SIZE):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(glyphs, "build_glyphs", no_rendering)
    cached = glyphs.load_glyphs(cache_dir=session_cache)
    assert_same(cached, rendered)
    assert cached.report == rendered.report


def test_cache_file_is_a_pickle_free_npz_named_by_its_fingerprint(session_cache, rendered):
    path = glyphs.cache_path(cache_dir=session_cache)
    assert path.parent == session_cache and glyphs.fingerprint(glyphs.DEFAULT_SIZE) in path.name
    with np.load(path, allow_pickle=False) as data:
        assert all(data[key].dtype.kind in "uifU" for key in data.files)
    with zipfile.ZipFile(path) as archive:
        assert all(name.endswith(".npy") for name in archive.namelist())
    assert not list(session_cache.glob(".*.tmp")), "the atomic write left a temporary file"


def test_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    assert glyphs.cache_directory() == tmp_path / "cache"
    assert glyphs.cache_directory(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("S2SD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert glyphs.cache_directory() == tmp_path / "xdg" / "s2sd-deploy"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert glyphs.cache_directory() == tmp_path / "home" / ".cache" / "s2sd-deploy"


def test_fingerprint_changes_with_each_input(monkeypatch, tmp_path):
    base = glyphs.fingerprint(32)
    assert glyphs.fingerprint(64) != base
    with monkeypatch.context() as patch:
        patch.setattr(glyphs, "RENDER_VERSION", glyphs.RENDER_VERSION + 1)
        assert glyphs.fingerprint(32) != base
    with monkeypatch.context() as patch:
        patch.setattr(glyphs.matplotlib, "__version__", "0.0.0")
        assert glyphs.fingerprint(32) != base
    with monkeypatch.context() as patch:
        patch.setattr(glyphs, "DUPLICATE_THRESHOLD", 0.5)
        assert glyphs.fingerprint(32) != base
    fonts = tmp_path / "fonts"
    shutil.copytree(glyphs.font_directory(), fonts)
    monkeypatch.setattr(glyphs, "font_directory", lambda: fonts)
    assert glyphs.fingerprint(32) == base, "the same font bytes elsewhere"
    font = fonts / "cmr10.ttf"
    changed = bytearray(font.read_bytes())
    changed[-1] ^= 0xFF
    font.write_bytes(bytes(changed))
    assert glyphs.fingerprint(32) != base


def test_a_changed_fingerprint_renders_again(monkeypatch, private_cache):
    calls = []
    monkeypatch.setattr(glyphs, "build_glyphs", counting_builder(calls))
    glyphs.load_glyphs()
    glyphs.load_glyphs()
    assert len(calls) == 1
    monkeypatch.setattr(glyphs, "RENDER_VERSION", glyphs.RENDER_VERSION + 1)
    assert_same(glyphs.load_glyphs(), tiny_glyphs())
    assert len(calls) == 2
    assert len(list(private_cache.glob("glyphs-32px-*.npz"))) == 2


def damage_cache(path: Path, damage: str) -> None:
    glyphs.write_cache(path, tiny_glyphs())
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    if damage == "garbage":
        path.write_bytes(b"not a zip file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        if damage == "missing_array":
            del arrays["characters"]
        else:
            arrays["labels"] = np.array([0, 5])  # a label past the classes
        with open(path, "wb") as file:
            np.savez(file, **arrays)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing_array", "inconsistent"])
def test_a_corrupt_cache_is_rendered_again(monkeypatch, damage):
    path = glyphs.cache_path()
    damage_cache(path, damage)
    calls = []
    monkeypatch.setattr(glyphs, "build_glyphs", counting_builder(calls))
    assert_same(glyphs.load_glyphs(), tiny_glyphs())
    assert len(calls) == 1
    assert glyphs.read_cache(path) is not None, "the re-rendered set replaced the corrupt file"


def test_an_unwritable_cache_still_returns_the_dataset(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(glyphs, "build_glyphs", counting_builder([]))
    assert_same(glyphs.load_glyphs(cache_dir=blocker / "cache"), tiny_glyphs())


# --- dependencies --------------------------------------------------------------------------------
def test_module_needs_neither_torch_nor_sklearn():
    tree = ast.parse(Path(glyphs.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "torchvision", "sklearn", "scipy"}
    assert imported <= {"__future__", "hashlib", "json", "logging", "os", "time", "unicodedata", "warnings"} | {
        "zipfile",
        "dataclasses",
        "pathlib",
        "matplotlib",
        "numpy",
        "PIL",
        "fontTools",
    }
