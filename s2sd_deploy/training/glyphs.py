"""Glyphs: a bundled, zero-download, zero-shot image-retrieval dataset of characters drawn in matplotlib's fonts.

matplotlib ships TrueType fonts inside its wheel (DejaVu Sans / Sans Mono / Serif in four styles each, STIX
General, Computer Modern, ...). A **class is a character** and a **sample is one font's rendering** of it, so
every installation builds the same set offline in a few seconds. Like Omniglot's split by alphabet, the split is
by script: the training classes are Latin (digits and the letters of Basic Latin, Latin-1 Supplement and Latin
Extended-A), the test classes are other scripts (Greek, Cyrillic, Armenian, Georgian; Hebrew is a candidate but
only the four DejaVu Sans fonts draw it), so every test class is a shape never seen in training. Test classes
are base letters only: a precomposed letter (a Unicode decomposition, e.g. Cyrillic Ё = Е + ¨, or a
compatibility form such as ϐ) would be its base letter plus a mark.

Images are square uint8 arrays, ink 255 on a black 0 background, drawn at ``SUPERSAMPLE`` times the size and
box-averaged down. Every font is drawn at the same em size with the baseline on the same row and the ink box
centred horizontally, so 'o' stays smaller than 'O'. The same fonts, matplotlib, Pillow and FreeType give
byte-identical arrays. The set is cached as an .npz (no pickles) whose name carries a fingerprint of all of them
and of the settings below (:func:`cache_path`).

Which (font, character) pairs are kept, in order (each threshold is a module constant, with what it was read
from; :func:`dataset_report` lists what each rule removed):

1. **cmap**: a font draws only what its cmap maps, so no .notdef box is ever rendered, and only when the mapped
   glyph's name does not name another character (Computer Modern puts Æ, Œ, Ø, ¨ at À-Ä, cmmi10 old-style
   digits at 0-9, cmsy10 and cmex10 symbols at letters and digits).
2. **blank / clipped**: renderings with almost no ink, or whose glyph box leaves the image.
3. **font agreement**: each rendering is correlated with the per-pixel median of its character over the fonts
   (both blurred, so stroke weight and small shifts matter less). A font failing rules 1-3 for a large share of
   what its cmap maps draws symbols at letter code points (Last Resort's boxes, cmex10, cmsy10) and is dropped
   whole; then the medians are recomputed without it and single renderings below the threshold are dropped.
4. **look-alikes**: two characters are one shape when their renderings correlate almost perfectly in the median
   font (A / Greek Α / Cyrillic А) or, when one is a test character, differ nowhere by more than a small amount
   after blurring (Ͷ / И; a looser limit across splits: 3 / Cyrillic З). A test character shaped like a training
   one leaves the test split; within a split, characters of one shape become one class (``characters`` "ΓГ").
5. **minimum fonts**: classes drawn by fewer than ``MIN_FONTS`` fonts are dropped.

The rules always run on ``RULE_SIZE`` px renderings, so every output size has the same classes and fonts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import PIL
from fontTools.agl import toUnicode
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageDraw, ImageFont, features

from ..atomic_files import atomic_path

log = logging.getLogger(__name__)

RENDER_VERSION = 1  # bump when the rendering or selection code changes: cached sets are then re-rendered
DEFAULT_SIZE = 32
SUPERSAMPLE = 4  # drawn at 4x and box-averaged down: smooth edges in exact integer arithmetic
# Glyph extents in the kept fonts reach 1.004 em above the baseline (STIX bold Å), 0.378 em below (STIX bold Ķ)
# and 1.386 em wide (DejaVu Serif bold Ж): an em of 0.7 side with the baseline at 0.72 side fits them all.
EM_FRACTION = 0.7  # em size / image side
BASELINE_FRACTION = 0.72  # baseline row / image side, from the top
RULE_SIZE = 32  # the rules' thresholds were measured on 32 px renderings; every output size uses them

# Candidate characters per script: (first, last) code points; only letters and decimal digits are kept.
SCRIPT_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "latin": ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x17F)),  # digits, A-Z, a-z, Latin-1 + Extended-A
    "greek": ((0x370, 0x3FF),),
    "cyrillic": ((0x400, 0x45F),),  # the letters of Russian, Ukrainian, Belarusian, Serbian, Macedonian, Bulgarian
    "armenian": ((0x531, 0x587),),
    "hebrew": ((0x5D0, 0x5EA),),
    "georgian": ((0x10D0, 0x10FF),),
}
TRAIN_SCRIPTS = frozenset({"latin"})
CHARACTER_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lo", "Nd"})

# Rule 2. The faintest correct renderings, Hebrew yod י in DejaVu Sans and STIX italic ι, have 15 and 20 pixels of
# ink; the marks Computer Modern maps at Ã and Ä (an ł stroke, a tie accent: names the glyph list lacks) have 4-8.
MIN_INK = 12.0  # ink in full-white pixels (sum / 255) at RULE_SIZE

# Rule 3. Correlation of a rendering with the per-pixel median rendering of its character over the fonts, both
# blurred by AGREEMENT_BLUR px. Unblurred, correct narrow or italic forms (cmtt10 W 0.22, STIX italic ß 0.31)
# score as low as wrong glyphs (cmtt10's ł stroke at Ã, 0.20). Blurred, once the symbol fonts are gone, that
# stroke scores 0.27 and the lowest correct rendering 0.50 (DejaVu Sans Mono's narrow Щ): nothing in between.
AGREEMENT_BLUR = 1.0  # Gaussian sigma in pixels at RULE_SIZE
AGREEMENT_THRESHOLD = 0.43
# Share of the candidates a font's cmap maps that fail rules 1-3 (agreement with the medians over all fonts):
# text fonts at most 22% (cmmi10: old-style digits and Greek at À-Ã), symbol fonts at least 49% (cmsy10 49%,
# Last Resort 99%, cmex10 100%).
FONT_FAILURE_FRACTION = 0.35

# Rule 4, first statistic: median over the fonts drawing both characters of the Pearson correlation of their
# renderings. The top of its distribution over all pairs: 66 pairs in 0.995-1 (one outline reused: A/Α/А, p/р,
# Γ/Г, F/Ϝ, h/Armenian հ), 1 in 0.99-0.995, 11 in 0.98-0.99 (distinct letters a small mark apart: Õ/Ō 0.988,
# Ĕ/Ě 0.986, Ć/Ċ 0.981), 44 in 0.97-0.98. Any two characters at or above it are one shape.
DUPLICATE_THRESHOLD = 0.99
# Rule 4, second statistic, for pairs with a test character (test letters carry no marks, so such pairs never
# differ by a mark alone): median over the fonts of the largest pixel difference (0-1) between the two renderings
# blurred by LOOKALIKE_BLUR px. Correlation ranks Ш/Щ (0.967, a descender apart) with κ/к (0.969, one design);
# this does not. Between test characters it is <= 0.07 for shared outlines, 0.13-0.15 for κ/к, ͷ/и, Ф/Armenian
# Փ, Ͷ/И, then nothing up to 0.25 (Hebrew ͻ/כ; 0.27 for Cyrillic ш / Armenian ա), 0.5+ for Յ/Ց and Ш/Щ.
LOOKALIKE_BLUR = 1.0  # Gaussian sigma in pixels at RULE_SIZE
LOOKALIKE_MAX_DIFFERENCE = 0.22  # two test characters within it merge
# A test character this close to a training one leaves the test split: a dropped test class costs little, a
# leaked shape inflates the zero-shot score. Across splits: g/Armenian ց 0.11, 3/Cyrillic З 0.20, n/п 0.235 (the
# italics agree), kra ĸ/κ,к 0.26-0.28, L/Armenian Լ 0.295; then related but distinct shapes, denser from 0.35:
# q/Armenian զ 0.35, K/К 0.37, ı/ι 0.38, r/г 0.395, 0/θ 0.41, p/ρ 0.41.
LEAK_MAX_DIFFERENCE = 0.33
# Only pairs correlating at least this much are compared: comparing all pairs above 0.5, every pair within 0.35
# difference correlates at least 0.88.
LOOKALIKE_MIN_CORRELATION = 0.8

# Rule 5. Fewer fonts than this makes a class too small for retrieval (Hebrew: only the four DejaVu Sans).
MIN_FONTS = 5


@dataclass
class Glyphs:
    """Rendered characters: one image per (class, font); ``report`` records how they were selected."""

    images: np.ndarray  # (N, S, S) uint8, ink 255 on 0
    labels: np.ndarray  # (N,) int64, 0..C-1
    characters: list[str]  # per class: its character(s), e.g. "O" or "ΓГ" for a merged class
    scripts: list[str]  # per class: "latin", "greek", ... ("greek+cyrillic" for a class merged across them)
    fonts: list[str]  # font file names, no directories
    font_index: np.ndarray  # (N,) int64 into fonts
    report: dict = field(default_factory=dict, repr=False)  # what dataset_report() starts from

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.characters)

    def select_classes(self, keep: np.ndarray) -> Glyphs:
        """The classes where ``keep`` (per class) is true, relabelled 0..C-1 in their current order."""
        keep = np.asarray(keep, dtype=bool)
        new_label = np.cumsum(keep) - 1
        rows = keep[self.labels]
        return Glyphs(
            images=self.images[rows],
            labels=new_label[self.labels[rows]].astype(np.int64),
            characters=[c for c, k in zip(self.characters, keep) if k],
            scripts=[s for s, k in zip(self.scripts, keep) if k],
            fonts=list(self.fonts),
            font_index=self.font_index[rows],
            report=self.report,
        )


# --- public API ----------------------------------------------------------------------------------
def load_glyphs(size: int = DEFAULT_SIZE, cache_dir: str | Path | None = None) -> Glyphs:
    """The rendered set at ``size`` px, from the cache when its fingerprint matches, else rendered and cached."""
    path = cache_path(size, cache_dir)
    glyphs = read_cache(path)
    if glyphs is not None:
        return glyphs
    log.info("rendering the glyphs dataset at %d px into %s", size, path)
    glyphs = build_glyphs(size)
    try:
        write_cache(path, glyphs)
    except OSError as error:  # a read-only cache still leaves a usable dataset
        log.warning("could not cache the glyphs dataset at %s: %s", path, error)
    return glyphs


def glyph_splits(size: int = DEFAULT_SIZE, cache_dir: str | Path | None = None) -> tuple[Glyphs, Glyphs]:
    """(train, test): Latin classes and the other scripts' classes, each relabelled 0..C-1 by code point."""
    return split_by_script(load_glyphs(size, cache_dir))


def split_by_script(glyphs: Glyphs) -> tuple[Glyphs, Glyphs]:
    train = np.array([is_train_script(s) for s in glyphs.scripts], dtype=bool)
    return glyphs.select_classes(train), glyphs.select_classes(~train)


def dataset_report(glyphs_or_none: Glyphs | None = None) -> dict:
    """Counts per split, the rules' thresholds and what each rule removed (JSON-able)."""
    glyphs = load_glyphs() if glyphs_or_none is None else glyphs_or_none
    report = json.loads(json.dumps(glyphs.report))
    train, test = split_by_script(glyphs)
    report["splits"] = {"train": split_summary(train), "test": split_summary(test)}
    report["fonts_used"] = sorted({glyphs.fonts[i] for i in np.unique(glyphs.font_index)})
    return report


def split_summary(glyphs: Glyphs) -> dict:
    per_class = np.bincount(glyphs.labels, minlength=glyphs.num_classes)
    scripts: dict[str, int] = {}
    for script in glyphs.scripts:
        scripts[script] = scripts.get(script, 0) + 1
    return {
        "classes": glyphs.num_classes,
        "images": len(glyphs),
        "images_per_class": {
            "min": int(per_class.min()) if len(per_class) else 0,
            "median": float(np.median(per_class)) if len(per_class) else 0.0,
            "max": int(per_class.max()) if len(per_class) else 0,
        },
        "classes_per_script": scripts,
    }


def is_train_script(script: str) -> bool:
    return all(part in TRAIN_SCRIPTS for part in script.split("+"))


# --- cache ---------------------------------------------------------------------------------------
def cache_directory(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else $S2SD_CACHE_DIR, else $XDG_CACHE_HOME/s2sd-deploy, else ~/.cache/s2sd-deploy."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("S2SD_CACHE_DIR"):
        return Path(os.environ["S2SD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "s2sd-deploy"


def cache_path(size: int = DEFAULT_SIZE, cache_dir: str | Path | None = None) -> Path:
    return cache_directory(cache_dir) / f"glyphs-{size}px-{fingerprint(size)}.npz"


def fingerprint(size: int) -> str:
    """Hash of everything the arrays depend on: font bytes, library versions, render and rule settings."""
    fonts = [[path.name, path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()] for path in font_files()]
    inputs = {
        "fonts": fonts,
        "matplotlib": matplotlib.__version__,
        "pillow": PIL.__version__,
        "freetype": features.version("freetype2"),
        "unicode": unicodedata.unidata_version,  # which code points are letters, and their decompositions
        "size": size,
        "render_version": RENDER_VERSION,
        "settings": rule_settings(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def rule_settings() -> dict:
    return {
        "supersample": SUPERSAMPLE,
        "em_fraction": EM_FRACTION,
        "baseline_fraction": BASELINE_FRACTION,
        "rule_size": RULE_SIZE,
        "script_ranges": {k: [list(r) for r in v] for k, v in SCRIPT_RANGES.items()},
        "train_scripts": sorted(TRAIN_SCRIPTS),
        "character_categories": sorted(CHARACTER_CATEGORIES),
        "min_ink": MIN_INK,
        "agreement_blur": AGREEMENT_BLUR,
        "agreement_threshold": AGREEMENT_THRESHOLD,
        "font_failure_fraction": FONT_FAILURE_FRACTION,
        "duplicate_threshold": DUPLICATE_THRESHOLD,
        "lookalike_blur": LOOKALIKE_BLUR,
        "lookalike_max_difference": LOOKALIKE_MAX_DIFFERENCE,
        "leak_max_difference": LEAK_MAX_DIFFERENCE,
        "lookalike_min_correlation": LOOKALIKE_MIN_CORRELATION,
        "min_fonts": MIN_FONTS,
    }


def write_cache(path: Path, glyphs: Glyphs) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as file:  # a file object: np.savez adds no .npz suffix
        np.savez_compressed(
            file,
            images=glyphs.images,
            labels=glyphs.labels,
            characters=np.array(glyphs.characters, dtype=str),
            scripts=np.array(glyphs.scripts, dtype=str),
            fonts=np.array(glyphs.fonts, dtype=str),
            font_index=glyphs.font_index,
            report=np.array(json.dumps(glyphs.report, ensure_ascii=False)),
        )


def read_cache(path: Path) -> Glyphs | None:
    """The cached set, or None when it is missing or unreadable (then it is rendered again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            glyphs = Glyphs(
                images=data["images"],
                labels=data["labels"],
                characters=data["characters"].tolist(),
                scripts=data["scripts"].tolist(),
                fonts=data["fonts"].tolist(),
                font_index=data["font_index"],
                report=json.loads(data["report"].item()),
            )
        check_consistent(glyphs)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # JSONDecodeError is a ValueError
        log.warning("re-rendering the glyphs dataset: unreadable cache %s (%s)", path, error)
        return None
    return glyphs


def check_consistent(glyphs: Glyphs) -> None:
    n = len(glyphs.labels)
    if glyphs.images.dtype != np.uint8 or glyphs.images.ndim != 3 or len(glyphs.images) != n:
        raise ValueError("images do not match the labels")
    if len(glyphs.font_index) != n or len(glyphs.scripts) != len(glyphs.characters):
        raise ValueError("per-image or per-class arrays disagree in length")
    if n and (glyphs.labels.max() >= len(glyphs.characters) or glyphs.font_index.max() >= len(glyphs.fonts)):
        raise ValueError("an index points past its list")


# --- candidates and coverage ---------------------------------------------------------------------
def font_directory() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font_files() -> list[Path]:
    return sorted(font_directory().glob("*.ttf"))


def candidate_characters() -> tuple[list[str], list[str], dict]:
    """Letters and digits of SCRIPT_RANGES in code-point order, their scripts, and how many were left out."""
    characters, scripts, decomposed = [], [], {}
    for script, ranges in SCRIPT_RANGES.items():
        for first, last in ranges:
            for code in range(first, last + 1):
                char = chr(code)
                if unicodedata.category(char) not in CHARACTER_CATEGORIES:
                    continue
                if script not in TRAIN_SCRIPTS and unicodedata.decomposition(char):
                    decomposed[script] = decomposed.get(script, 0) + 1
                    continue
                characters.append(char)
                scripts.append(script)
    order = np.argsort([ord(c) for c in characters], kind="stable")
    return [characters[i] for i in order], [scripts[i] for i in order], decomposed


def glyph_name_agrees(char: str, glyph_name: str) -> bool:
    """False when the glyph's name (Adobe Glyph List) names another character; unknown names pass."""
    # Needed beside rule 3: Computer Modern's Æ at À and Œ at Á correlate with the median À about as well as
    # correct italic and monospaced letters do with theirs.
    named = toUnicode(glyph_name)
    return not named or unicodedata.normalize("NFKC", named) == unicodedata.normalize("NFKC", char)


def font_coverage(path: Path, characters: list[str]) -> tuple[list[int], list[str]]:
    """Indices of ``characters`` the font's cmap maps to a glyph of that name, and the misnamed ones.

    FreeType's lookup in the Unicode cmap (through matplotlib) answers as fontTools' ``getBestCmap()`` does on
    every bundled font, 25 times faster (Last Resort's cmap maps all 1.1 million code points).
    """
    font = FT2Font(str(path))
    covered, misnamed = [], []
    for i, char in enumerate(characters):
        glyph = font.get_char_index(ord(char))
        if glyph == 0:  # glyph 0 is .notdef: not in the cmap
            continue
        name = font.get_glyph_name(glyph)
        if glyph_name_agrees(char, name):
            covered.append(i)
        else:
            misnamed.append(f"{char}->{name}")
    return covered, misnamed


# --- rendering -----------------------------------------------------------------------------------
def load_font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    em = round(EM_FRACTION * size * SUPERSAMPLE)
    return ImageFont.truetype(str(path), size=em, layout_engine=ImageFont.Layout.BASIC)  # no raqm: reproducible


def render_character(font: ImageFont.FreeTypeFont, char: str, size: int, overflow: int = 0) -> np.ndarray | None:
    """``char`` on the common baseline, ink box centred; None when the glyph box leaves the drawing (at
    SUPERSAMPLE times the size) by more than ``overflow`` pixels."""
    side = size * SUPERSAMPLE
    left, top, right, bottom = font.getbbox(char, anchor="ls")
    x, y = (side - left - right) // 2, round(BASELINE_FRACTION * side)
    if min(x + left, side - x - right, y + top, side - y - bottom) < -overflow:
        return None
    canvas = Image.new("L", (side, side), 0)
    ImageDraw.Draw(canvas).text((x, y), char, fill=255, font=font, anchor="ls")
    return np.asarray(canvas.reduce(SUPERSAMPLE))  # box average of each SUPERSAMPLE x SUPERSAMPLE block


def render_pairs(
    paths: list[Path],
    characters: list[str],
    char_index: np.ndarray,
    font_index: np.ndarray,
    size: int,
    overflow: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images of (font_index[i], characters[char_index[i]]) and whether each fitted (see render_character)."""
    images = np.zeros((len(char_index), size, size), dtype=np.uint8)
    fits = np.zeros(len(char_index), dtype=bool)
    for font_id in np.unique(font_index):
        font = load_font(paths[font_id], size)
        for row in np.flatnonzero(font_index == font_id):
            image = render_character(font, characters[char_index[row]], size, overflow)
            if image is not None:
                images[row], fits[row] = image, True
    return images, fits


# --- measurements the rules use ------------------------------------------------------------------
def standardized(images: np.ndarray) -> np.ndarray:
    """Flattened, mean-centred, unit-length rows: their dot products are Pearson correlations."""
    vectors = images.reshape(len(images), -1).astype(np.float64)
    vectors -= vectors.mean(axis=1, keepdims=True)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (edges renormalised) as two matrix products per image."""
    offsets = np.arange(images.shape[-1])
    kernel = np.exp(-((offsets[:, None] - offsets[None]) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum(axis=1, keepdims=True)
    return np.matmul(kernel, images.astype(np.float64) @ kernel.T)


def agreement_with_median(smooth: np.ndarray, char_index: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per kept rendering: correlation with its character's per-pixel median over the kept fonts (NaN elsewhere).

    ``smooth`` are the renderings blurred by :func:`gaussian_blur` with AGREEMENT_BLUR.
    """
    vectors = standardized(smooth)
    agreement = np.full(len(smooth), np.nan)
    for char in np.unique(char_index[keep]):
        rows = np.flatnonzero(keep & (char_index == char))
        median = standardized(np.median(smooth[rows], axis=0)[None])[0]
        agreement[rows] = vectors[rows] @ median
    return agreement


def class_similarity(images: np.ndarray, labels: np.ndarray, font_index: np.ndarray) -> np.ndarray:
    """(C, C): median over the fonts that draw both classes of their renderings' correlation; NaN if none does."""
    n_classes = int(labels.max()) + 1
    vectors = standardized(images).astype(np.float32)
    fonts = np.unique(font_index)
    table = np.full((len(fonts), n_classes, n_classes), np.nan, dtype=np.float32)
    for slot, font in enumerate(fonts):
        rows = np.flatnonzero(font_index == font)
        table[slot][np.ix_(labels[rows], labels[rows])] = vectors[rows] @ vectors[rows].T
    return np.minimum(median_ignoring_nan(table), 1.0)  # identical renderings can round to 1 + 1e-7


def median_ignoring_nan(table: np.ndarray) -> np.ndarray:
    """Median along axis 0 without NaNs (np.nanmedian is far slower on a short axis); NaN where all are NaN."""
    ordered = np.sort(table, axis=0)  # NaNs sort last
    count = np.sum(~np.isnan(table), axis=0)
    low = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[None], axis=0)[0]
    high = np.take_along_axis(ordered, np.minimum(count // 2, len(table) - 1)[None], axis=0)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.where(count > 0, (low + high) / 2, np.nan)


@dataclass
class ShapeComparison:
    """Rule 4 between classes: both statistics, and which pairs are one shape."""

    correlation: np.ndarray  # (C, C) median correlation over the shared fonts
    difference: np.ndarray  # (C, C) median largest blurred difference; NaN where not compared
    same: np.ndarray  # (C, C) bool, False on the diagonal


def compare_shapes(images: np.ndarray, labels: np.ndarray, font_index: np.ndarray, test: np.ndarray) -> ShapeComparison:
    """Rule 4 on one rendering per (class, font); ``test`` (per class) marks the classes of the test split."""
    correlation = class_similarity(images, labels, font_index)
    near = np.nan_to_num(correlation, nan=-1.0) >= LOOKALIKE_MIN_CORRELATION
    first, second = np.nonzero(np.triu(near & (test[:, None] | test[None, :]), k=1))
    difference = np.full(correlation.shape, np.nan)
    difference[first, second] = pair_max_difference(images, labels, font_index, first, second)
    difference[second, first] = difference[first, second]
    limit = np.where(test[:, None] & test[None, :], LOOKALIKE_MAX_DIFFERENCE, LEAK_MAX_DIFFERENCE)
    same = (np.nan_to_num(correlation, nan=-1.0) >= DUPLICATE_THRESHOLD) | (
        np.nan_to_num(difference, nan=np.inf) <= limit
    )
    np.fill_diagonal(same, False)
    return ShapeComparison(correlation, difference, same)


def pair_max_difference(
    images: np.ndarray, labels: np.ndarray, font_index: np.ndarray, first: np.ndarray, second: np.ndarray
) -> np.ndarray:
    """Per class pair: median over the fonts drawing both of the largest difference of the blurred renderings."""
    smooth = gaussian_blur(images, LOOKALIKE_BLUR).reshape(len(images), -1) / 255.0
    fonts = np.unique(font_index)
    row_of = np.full((int(labels.max()) + 1, len(fonts)), -1)
    row_of[labels, np.searchsorted(fonts, font_index)] = np.arange(len(labels))
    table = np.full((len(fonts), len(first)), np.nan)
    for slot in range(len(fonts)):
        a, b = row_of[first, slot], row_of[second, slot]
        both = (a >= 0) & (b >= 0)
        if both.any():
            table[slot, both] = np.abs(smooth[a[both]] - smooth[b[both]]).max(axis=1)
    return median_ignoring_nan(table)


def connected_groups(n: int, pairs: np.ndarray) -> list[list[int]]:
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[root(int(a))] = root(int(b))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values())


# --- selection -----------------------------------------------------------------------------------
@dataclass
class _Renderings:
    """Every covered (font, character) pair rendered at RULE_SIZE, and which the rules keep so far."""

    characters: list[str]
    scripts: list[str]
    paths: list[Path]
    char_index: np.ndarray
    font_index: np.ndarray
    images: np.ndarray
    keep: np.ndarray
    misnamed: np.ndarray  # per font: candidates its cmap maps to a glyph named as another character

    def label(self, rows: np.ndarray) -> list[str]:
        return [f"{self.paths[self.font_index[r]].name}:{self.characters[self.char_index[r]]}" for r in rows]

    def characters_per_script(self, char_ids) -> dict[str, int]:
        counts = {script: 0 for script in SCRIPT_RANGES}
        for char in np.unique(np.asarray(char_ids, dtype=np.int64)):
            counts[self.scripts[char]] += 1
        return counts


def build_glyphs(size: int = DEFAULT_SIZE) -> Glyphs:
    """Render and select the whole set (no cache): what :func:`load_glyphs` caches."""
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be a whole number of pixels, at least 8; got {size!r}")
    started = time.perf_counter()
    report: dict = {"thresholds": rule_settings(), "stages": {}}
    renderings = render_candidates(report)
    drop_blank(renderings, report)
    drop_disagreeing(renderings, report)
    groups = merge_lookalikes(renderings, report)
    groups = drop_small_groups(renderings, groups, report)
    glyphs = assemble(renderings, groups, size)
    report["render_seconds"] = round(time.perf_counter() - started, 2)
    report["versions"] = {
        "matplotlib": matplotlib.__version__,
        "pillow": PIL.__version__,
        "freetype": features.version("freetype2"),
        "unicode": unicodedata.unidata_version,
        "render_version": RENDER_VERSION,
    }
    report["size"] = size
    glyphs.report = report
    return glyphs


def render_candidates(report: dict) -> _Renderings:
    """Rule 1, and every mapped candidate drawn at RULE_SIZE; those whose glyph box leaves the image start dropped."""
    characters, scripts, decomposed = candidate_characters()
    paths = font_files()
    char_ids, font_ids, misnamed, uncovered = [], [], {}, []
    for font_id, path in enumerate(paths):
        covered, wrong_names = font_coverage(path, characters)
        char_ids += covered
        font_ids += [font_id] * len(covered)
        if wrong_names:
            misnamed[path.name] = wrong_names
        if not covered:
            uncovered.append(path.name)
    char_index, font_index = np.array(char_ids, dtype=np.int64), np.array(font_ids, dtype=np.int64)
    images, fits = render_pairs(paths, characters, char_index, font_index, RULE_SIZE)
    misnamed_per_font = np.array([len(misnamed.get(path.name, ())) for path in paths])
    renderings = _Renderings(characters, scripts, paths, char_index, font_index, images, fits, misnamed_per_font)
    report["fonts_dropped"] = {name: "its cmap maps no candidate character" for name in uncovered}
    report["stages"]["candidates"] = renderings.characters_per_script(range(len(characters)))
    report["stages"]["in_a_cmap"] = renderings.characters_per_script(char_index)
    report["test_letters_left_out_as_precomposed"] = decomposed
    report["renderings"] = {
        "in_cmaps": len(char_index),
        "glyph_named_as_another_character": sum(len(v) for v in misnamed.values()),
    }
    report["glyph_named_as_another_character"] = misnamed
    report["clipped"] = renderings.label(np.flatnonzero(~fits))
    report["renderings"]["clipped"] = int((~fits).sum())
    return renderings


def drop_blank(renderings: _Renderings, report: dict) -> None:
    """Rule 2 (clipped renderings were never kept: see render_candidates)."""
    ink = renderings.images.reshape(len(renderings.images), -1).sum(axis=1) / 255.0
    blank = renderings.keep & (ink < MIN_INK)
    renderings.keep &= ~blank
    report["blank"] = renderings.label(np.flatnonzero(blank))
    report["renderings"]["blank"] = int(blank.sum())


def drop_disagreeing(renderings: _Renderings, report: dict) -> None:
    """Rule 3: whole fonts that mostly fail, then single renderings that disagree with the other fonts."""
    smooth = gaussian_blur(renderings.images, AGREEMENT_BLUR)
    first = agreement_with_median(smooth, renderings.char_index, renderings.keep)
    failure = font_failure_fractions(renderings, first)
    symbol_fonts = [name for name, fraction in failure.items() if fraction > FONT_FAILURE_FRACTION]
    in_symbol_font = np.isin([p.name for p in renderings.paths], symbol_fonts)[renderings.font_index]
    report["renderings"]["in_dropped_fonts"] = int((renderings.keep & in_symbol_font).sum())
    renderings.keep &= ~in_symbol_font
    for name in symbol_fonts:
        report["fonts_dropped"][name] = f"{failure[name]:.0%} of the candidates its cmap maps fail rules 1-3"
    report["font_failure_fraction"] = failure

    second = agreement_with_median(smooth, renderings.char_index, renderings.keep)
    disagree = renderings.keep & (second < AGREEMENT_THRESHOLD)
    renderings.keep &= ~disagree
    record_agreement(renderings, second, disagree, report)


def record_agreement(renderings: _Renderings, agreement: np.ndarray, disagree: np.ndarray, report: dict) -> None:
    """What rule 3 dropped, the distribution its threshold was read from, and what rules 1-3 kept."""
    rows = np.flatnonzero(disagree)
    rows = rows[np.argsort(agreement[rows], kind="stable")]
    report["disagreeing_renderings"] = [
        [name, round(float(agreement[r]), 3)] for name, r in zip(renderings.label(rows), rows)
    ]
    report["renderings"]["disagree"] = int(disagree.sum())
    counts, edges = np.histogram(agreement[~np.isnan(agreement)], bins=24, range=(-0.2, 1.0))
    report["agreement_histogram"] = {"edges": edges.round(3).tolist(), "counts": counts.tolist()}
    report["lowest_kept_agreement"] = np.sort(agreement[renderings.keep])[:10].round(3).tolist()
    for font_id, path in enumerate(renderings.paths):
        unused = not (renderings.keep & (renderings.font_index == font_id)).any()
        if unused and path.name not in report["fonts_dropped"]:
            report["fonts_dropped"][path.name] = "no rendering kept"
    report["stages"]["after_rendering_rules"] = renderings.characters_per_script(renderings.char_index[renderings.keep])
    report["renderings"]["kept"] = int(renderings.keep.sum())
    ink = renderings.images[renderings.keep].reshape(int(renderings.keep.sum()), -1).sum(axis=1) / 255.0
    report["ink_of_kept_renderings"] = {"min": round(float(ink.min()), 1), "median": round(float(np.median(ink)), 1)}


def font_failure_fractions(renderings: _Renderings, agreement: np.ndarray) -> dict[str, float]:
    """Per font mapping any candidate: the fraction misnamed, clipped, blank or below AGREEMENT_THRESHOLD."""
    failure = {}
    for font_id, path in enumerate(renderings.paths):
        rows = renderings.font_index == font_id
        total = rows.sum() + renderings.misnamed[font_id]
        if total:
            failed = renderings.misnamed[font_id] + np.sum(
                rows & ~(renderings.keep & (agreement >= AGREEMENT_THRESHOLD))
            )
            failure[path.name] = round(float(failed / total), 3)
    return failure


def representatives(renderings: _Renderings, groups: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows drawing each group once per font (its lowest code point the font draws), and their group ids."""
    row_of = {}
    for row in np.flatnonzero(renderings.keep):
        row_of[(int(renderings.char_index[row]), int(renderings.font_index[row]))] = row
    rows, group_ids = [], []
    for group_id, members in enumerate(groups):
        for font_id in range(len(renderings.paths)):
            row = next((row_of[(m, font_id)] for m in members if (m, font_id) in row_of), None)
            if row is not None:
                rows.append(row)
                group_ids.append(group_id)
    return np.array(rows, dtype=np.int64), np.array(group_ids, dtype=np.int64)


def merge_lookalikes(renderings: _Renderings, report: dict) -> list[list[int]]:
    """Rule 4: test characters shaped like a training one leave; characters of one shape within a split merge.

    Repeated on the merged classes until no pair is one shape. Merging only follows pairs within a split, so a
    test character never bridges two training characters into one class.
    """
    groups = [[int(c)] for c in np.unique(renderings.char_index[renderings.keep])]
    comparison = compare_groups(renderings, groups)
    record_shape_distributions(renderings, comparison, np.array([g[0] for g in groups]), report)
    leaks, merges = [], []
    while True:
        test = group_is_test(renderings, groups)
        leaked = test & (comparison.same & ~test[None, :]).any(axis=1)
        leaks += [leak_record(renderings, groups, comparison, k, ~test) for k in np.flatnonzero(leaked)]
        kept = np.flatnonzero(~leaked)
        groups, test = [groups[k] for k in kept], test[kept]
        same = comparison.same[np.ix_(kept, kept)] & (test[:, None] == test[None, :])
        pairs = np.argwhere(np.triu(same, k=1))
        if not len(pairs):
            break
        merges += [pair_record(renderings, groups, comparison, kept[i], kept[j], i, j) for i, j in pairs]
        groups = [sorted(sum((groups[i] for i in part), [])) for part in connected_groups(len(groups), pairs)]
        comparison = compare_groups(renderings, groups)
    report["lookalikes_dropped_from_test"] = leaks
    report["merges"] = merges
    report["merged_classes"] = [chars_of(renderings, g) for g in groups if len(g) > 1]
    report["stages"]["after_lookalikes"] = renderings.characters_per_script(sorted(sum(groups, [])))
    return groups


def group_is_test(renderings: _Renderings, groups: list[list[int]]) -> np.ndarray:
    return np.array([not any(renderings.scripts[c] in TRAIN_SCRIPTS for c in g) for g in groups], dtype=bool)


def compare_groups(renderings: _Renderings, groups: list[list[int]]) -> ShapeComparison:
    rows, group_ids = representatives(renderings, groups)
    test = group_is_test(renderings, groups)
    return compare_shapes(renderings.images[rows], group_ids, renderings.font_index[rows], test)


def leak_record(
    renderings: _Renderings, groups: list[list[int]], comparison: ShapeComparison, k: int, train: np.ndarray
) -> dict:
    """A dropped test class and the training class it is closest to."""
    candidates = np.flatnonzero(comparison.same[k] & train)
    match = candidates[np.argmax(np.nan_to_num(comparison.correlation[k, candidates], nan=-1.0))]
    return {
        "test": chars_of(renderings, groups[k]),
        "script": script_of(renderings, groups[k]),
        "train": chars_of(renderings, groups[match]),
        "correlation": rounded(comparison.correlation[k, match]),
        "difference": rounded(comparison.difference[k, match]),
    }


def pair_record(
    renderings: _Renderings, groups: list[list[int]], comparison: ShapeComparison, a: int, b: int, i: int, j: int
) -> dict:
    """A merged pair: groups[i] and groups[j], rows a and b of ``comparison``."""
    return {
        "characters": [chars_of(renderings, groups[i]), chars_of(renderings, groups[j])],
        "correlation": rounded(comparison.correlation[a, b]),
        "difference": rounded(comparison.difference[a, b]),
    }


def rounded(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 3)


def record_shape_distributions(
    renderings: _Renderings, comparison: ShapeComparison, chars: np.ndarray, report: dict
) -> None:
    """The measured distributions rule 4's thresholds were read from, and the closest pairs kept apart."""
    upper = np.triu_indices(len(chars), k=1)
    correlation, difference = comparison.correlation[upper], comparison.difference[upper]
    counts, edges = np.histogram(correlation[~np.isnan(correlation)], bins=20, range=(0.9, 1.0))
    report["pair_correlation_histogram"] = {"edges": edges.round(3).tolist(), "counts": counts.tolist()}
    counts, edges = np.histogram(difference[~np.isnan(difference)], bins=20, range=(0.0, 0.5))
    report["pair_difference_histogram_with_a_test_character"] = {
        "edges": edges.round(3).tolist(),
        "counts": counts.tolist(),
    }
    apart = ~comparison.same[upper]
    name = [renderings.characters[c] for c in chars]

    def closest(values: np.ndarray, descending: bool) -> list:
        order = np.argsort(-values if descending else values, kind="stable")
        picked = order[(apart & ~np.isnan(values))[order]][:15]
        return [[name[upper[0][k]] + name[upper[1][k]], round(float(values[k]), 3)] for k in picked]

    report["closest_pairs_kept_apart"] = {
        "by_correlation": closest(correlation, descending=True),
        "by_difference_with_a_test_character": closest(difference, descending=False),
    }


def drop_small_groups(renderings: _Renderings, groups: list[list[int]], report: dict) -> list[list[int]]:
    """Rule 5: classes with fewer than MIN_FONTS fonts."""
    rows, group_ids = representatives(renderings, groups)
    fonts_per_group = np.bincount(group_ids, minlength=len(groups))
    small: dict[str, dict[str, int]] = {}
    for group, count in zip(groups, fonts_per_group):
        if count < MIN_FONTS:
            small.setdefault(script_of(renderings, group), {})[chars_of(renderings, group)] = int(count)
    report["too_few_fonts"] = small
    kept = [g for g, count in zip(groups, fonts_per_group) if count >= MIN_FONTS]
    report["stages"]["final"] = renderings.characters_per_script(sorted(sum(kept, [])))
    return kept


def chars_of(renderings: _Renderings, group: list[int]) -> str:
    return "".join(renderings.characters[c] for c in sorted(group))


def script_of(renderings: _Renderings, group: list[int]) -> str:
    return "+".join(dict.fromkeys(renderings.scripts[c] for c in sorted(group)))


def assemble(renderings: _Renderings, groups: list[list[int]], size: int) -> Glyphs:
    """Classes in code-point order of their first character, images in font order within a class."""
    groups = sorted(groups, key=lambda g: min(g))
    rows, labels = representatives(renderings, groups)
    used_fonts = np.unique(renderings.font_index[rows])
    font_index = np.searchsorted(used_fonts, renderings.font_index[rows])
    if size == RULE_SIZE:
        images = renderings.images[rows]
    else:
        # Hinting at another size can move a glyph box that fitted at RULE_SIZE a drawing pixel out of the image:
        # up to one output pixel of it is cut off rather than the rendering dropped (the selection is made).
        chars, fonts = renderings.char_index[rows], renderings.font_index[rows]
        images, fits = render_pairs(renderings.paths, renderings.characters, chars, fonts, size, SUPERSAMPLE)
        if not fits.all():
            raise RuntimeError(f"glyphs that fit at {RULE_SIZE} px leave the image by over a pixel at {size} px")
    return Glyphs(
        images=images,
        labels=labels.astype(np.int64),
        characters=[chars_of(renderings, g) for g in groups],
        scripts=[script_of(renderings, g) for g in groups],
        fonts=[renderings.paths[i].name for i in used_fonts],
        font_index=font_index.astype(np.int64),
    )
