"""Datasets and their zero-shot splits (no torch: options are checked before the slow imports).

Every dataset is read into two :class:`ImageSet` splits whose classes never overlap:
``digits`` (scikit-learn's bundled 8x8 digits; classes 0-4 train, 5-9 test), ``cub200``,
``cars196``, ``sop`` (the paper's splits, from their official on-disk layouts) and
``imagefolder`` (class sub-folders, the first half of the sorted classes train).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import S2SDError
from ..serving.images import IMAGE_SUFFIXES, open_image

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """One split: image sources (file paths, or in-memory PIL images) and integer labels."""

    sources: list  # list[Path] or list[PIL.Image.Image]
    labels: np.ndarray  # (N,) int64, contiguous 0..C-1 within the split
    root: Path | None = None  # paths are reported relative to it
    skipped: int = 0  # undecodable files dropped with --skip-bad-images

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


# --- datasets -----------------------------------------------------------------------------------
def _relabel(sources: list, class_ids: list) -> ImageSet:
    """Map arbitrary class ids to 0..C-1 in sorted order."""
    order = {c: i for i, c in enumerate(sorted(set(class_ids)))}
    return ImageSet(list(sources), np.array([order[c] for c in class_ids], dtype=np.int64))


def _split_by_class(paths: list[Path], class_ids: list, train_classes: set, root: Path) -> tuple[ImageSet, ImageSet]:
    train = [(p, c) for p, c in zip(paths, class_ids) if c in train_classes]
    test = [(p, c) for p, c in zip(paths, class_ids) if c not in train_classes]
    splits = []
    for part in (train, test):
        image_set = _relabel([p for p, _ in part], [c for _, c in part])
        image_set.root = root
        splits.append(image_set)
    return splits[0], splits[1]


def load_glyphs_splits() -> tuple[ImageSet, ImageSet]:
    """Characters rendered from matplotlib's fonts (see :mod:`.glyphs`): Latin train, other scripts test."""
    from .glyphs import glyph_splits

    def image_set(glyphs) -> ImageSet:
        return ImageSet([Image.fromarray(pixels).convert("RGB") for pixels in glyphs.images], glyphs.labels.copy())

    train, test = glyph_splits()
    return image_set(train), image_set(test)


def load_digits_splits() -> tuple[ImageSet, ImageSet]:
    """scikit-learn's digits (shipped with the package): classes 0-4 train, 5-9 test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # (N, 8, 8), 0..16 -> 0..255
    images = [Image.fromarray(p).convert("RGB") for p in pixels]
    targets = digits.target.tolist()
    train = [i for i, t in enumerate(targets) if t < 5]
    test = [i for i, t in enumerate(targets) if t >= 5]
    return (
        _relabel([images[i] for i in train], [targets[i] for i in train]),
        _relabel([images[i] for i in test], [targets[i] for i in test]),
    )


def _require_dir(path: Path, layout: str) -> None:
    if not path.is_dir():
        raise S2SDError(f"{path} not found; expected layout: {layout}")


def load_cub200_splits(root: Path) -> tuple[ImageSet, ImageSet]:
    """CUB200-2011: ``images/NNN.Name/*.jpg``; classes 1-100 train, 101-200 test."""
    layout = "<data-root>/[CUB_200_2011/]images/001.Black_footed_Albatross/*.jpg ... 200.*"
    images_dir = next((d for d in (root / "images", root / "CUB_200_2011" / "images") if d.is_dir()), root / "images")
    _require_dir(images_dir, layout)
    paths, classes = [], []
    for class_dir in sorted(d for d in images_dir.iterdir() if d.is_dir()):
        number = class_dir.name.split(".", 1)[0]
        if not number.isdigit():
            raise S2SDError(f"class folder {class_dir} is not named NNN.Name; expected layout: {layout}")
        files = _image_files(class_dir)
        paths += files
        classes += [int(number)] * len(files)
    if not paths:
        raise S2SDError(f"no images under {images_dir}; expected layout: {layout}")
    return _split_by_class(paths, classes, set(range(1, 101)), images_dir)


def load_cars196_splits(root: Path) -> tuple[ImageSet, ImageSet]:
    """CARS196 from ``cars_annos.mat`` (+ ``car_ims/``) or from class folders; classes 1-98 train."""
    layout = "<data-root>/cars_annos.mat with car_ims/*.jpg, or <data-root>/<class name>/*.jpg (196 folders)"
    _require_dir(root, layout)
    annotations = root / "cars_annos.mat"
    if annotations.is_file():
        from scipy.io import loadmat

        try:
            records = loadmat(str(annotations))["annotations"][0]
            paths = [root / str(r["relative_im_path"][0]) for r in records]
            classes = [int(r["class"][0][0]) for r in records]
        except (KeyError, IndexError, ValueError) as error:
            raise S2SDError(f"{annotations} has no annotations/relative_im_path/class fields ({error})") from None
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise S2SDError(
                f"{len(missing)} images listed in {annotations} are missing, e.g. {missing[0]}; expected "
                f"layout: {layout}"
            )
        return _split_by_class(paths, classes, set(range(1, 99)), root)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    return _folder_splits(root, class_dirs, (len(class_dirs) + 1) // 2, layout)


def load_sop_splits(root: Path) -> tuple[ImageSet, ImageSet]:
    """Stanford Online Products: ``Ebay_train.txt`` / ``Ebay_test.txt`` (image_id class_id super_class_id path)."""
    layout = "<data-root>/[Stanford_Online_Products/]Ebay_train.txt, Ebay_test.txt and the image folders they list"
    base = next((d for d in (root, root / "Stanford_Online_Products") if (d / "Ebay_train.txt").is_file()), root)
    splits = []
    for name in ("Ebay_train.txt", "Ebay_test.txt"):
        listing = base / name
        if not listing.is_file():
            raise S2SDError(f"{listing} not found; expected layout: {layout}")
        rows = [line.split() for line in listing.read_text().splitlines()[1:] if line.strip()]
        if any(len(row) != 4 for row in rows):
            raise S2SDError(f"{listing}: expected 4 columns per line (image_id class_id super_class_id path)")
        absolute = next((row[3] for row in rows if Path(row[3]).is_absolute() or ".." in Path(row[3]).parts), None)
        if absolute:
            raise S2SDError(f"{listing}: image paths must be relative to {base}, got {absolute}")
        paths = [base / row[3] for row in rows]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise S2SDError(f"{len(missing)} images listed in {listing} are missing, e.g. {missing[0]}")
        image_set = _relabel(paths, [int(row[1]) for row in rows])
        image_set.root = base
        splits.append(image_set)
    return splits[0], splits[1]


def load_imagefolder_splits(root: Path) -> tuple[ImageSet, ImageSet]:
    """Any ``<root>/<class>/*.jpg`` tree: the first half of the sorted classes train."""
    layout = "<data-root>/<class name>/<image files>, at least 2 class folders"
    _require_dir(root, layout)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    return _folder_splits(root, class_dirs, (len(class_dirs) + 1) // 2, layout)


def _folder_splits(root: Path, class_dirs: list[Path], num_train: int, layout: str) -> tuple[ImageSet, ImageSet]:
    """Classes are the folders with images: empty ones are ignored (and said so), so they cannot shift the split."""
    empty = [d for d in class_dirs if not _image_files(d)]
    if empty:
        log.warning("ignoring %d class folder(s) without images under %s, e.g. %s", len(empty), root, empty[0].name)
        class_dirs = [d for d in class_dirs if d not in empty]
        num_train = (len(class_dirs) + 1) // 2
    if len(class_dirs) < 2:
        raise S2SDError(f"{root} has {len(class_dirs)} class folder(s); expected layout: {layout}")
    paths, classes = [], []
    for index, class_dir in enumerate(class_dirs):
        files = _image_files(class_dir)
        paths += files
        classes += [index] * len(files)
    if not paths:
        raise S2SDError(f"no images under {root}; expected layout: {layout}")
    return _split_by_class(paths, classes, set(range(num_train)), root)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


BUNDLED = {"glyphs": load_glyphs_splits, "digits": load_digits_splits}  # no --data-root, nothing downloaded
LOADERS = {
    "cub200": load_cub200_splits,
    "cars196": load_cars196_splits,
    "sop": load_sop_splits,
    "imagefolder": load_imagefolder_splits,
}


def load_splits(dataset: str, data_root: str | None = None, skip_bad_images: bool = False) -> tuple[ImageSet, ImageSet]:
    """The (train, test) splits of a dataset; with ``skip_bad_images`` undecodable files are dropped."""
    if dataset in BUNDLED:
        return BUNDLED[dataset]()

    if dataset not in LOADERS:
        raise S2SDError(f"unknown --dataset {dataset!r}; choose one of: {', '.join([*BUNDLED, *LOADERS])}")

    splits = LOADERS[dataset](Path(data_root).expanduser())
    if skip_bad_images:
        splits = tuple(drop_bad_images(s) for s in splits)
    for name, split in zip(("training", "test"), splits):
        if split.num_classes < 2:
            raise S2SDError(
                f"the {name} split of {data_root} has {split.num_classes} class(es) with images; "
                f"retrieval needs at least 2: check the dataset's folders"
            )
    return splits


def splits_for(cfg) -> tuple[ImageSet, ImageSet]:
    """The (train, evaluation) splits a run uses: with ``cfg.validation_classes`` the evaluation split is
    the last training classes, held out, so choices like the learning rate never see the test classes."""
    train, test = load_splits(cfg.dataset, cfg.data_root, cfg.skip_bad_images)
    return hold_out_classes(train, cfg.validation_classes) if cfg.validation_classes else (train, test)


def hold_out_classes(train: ImageSet, count: int) -> tuple[ImageSet, ImageSet]:
    """Split off the last ``count`` classes of a training split as a validation split."""
    if not 0 < count < train.num_classes - 1:
        raise S2SDError(
            f"--validation-classes {count}: the training split has {train.num_classes} classes; "
            f"hold out at least 1 and leave at least 2 to train on"
        )
    first_held = train.num_classes - count
    keep, held = np.flatnonzero(train.labels < first_held), np.flatnonzero(train.labels >= first_held)
    parts = [
        ImageSet([train.sources[i] for i in rows], train.labels[rows] - offset, train.root, skipped)
        for rows, offset, skipped in ((keep, 0, train.skipped), (held, first_held, 0))
    ]
    return parts[0], parts[1]


def drop_bad_images(images: ImageSet) -> ImageSet:
    """Decode every file once; keep the good ones and report how many were skipped."""
    good = []
    for index, source in enumerate(images.sources):
        try:
            open_image(source)
            good.append(index)
        except S2SDError as error:
            log.warning("skipping %s", error)
    skipped = len(images) - len(good)
    if skipped:
        log.warning("skipped %d undecodable image(s) of %d", skipped, len(images))
    kept = _relabel([images.sources[i] for i in good], images.labels[good].tolist())
    kept.root, kept.skipped = images.root, skipped
    return kept


def fingerprint(train: ImageSet, test: ImageSet) -> str:
    """A short hash of both splits' file names (or pixels) and labels."""
    digest = hashlib.sha256()
    for split in (train, test):
        for source, label in zip(split.sources, split.labels.tolist()):
            if isinstance(source, Image.Image):
                digest.update(source.tobytes())
            else:
                # File names need not be valid UTF-8: hash their bytes as the file system holds them.
                digest.update(os.fsencode(Path(source).relative_to(split.root) if split.root else source))
            digest.update(str(label).encode())
    return digest.hexdigest()[:16]
