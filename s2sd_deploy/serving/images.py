"""Reading images and collections of image files, the same way for training, embedding and serving."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import S2SDError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


SKIP_HINT = "pass --skip-bad-images to skip such files"


def open_image(source, hint: str = SKIP_HINT) -> Image.Image:
    """An RGB PIL image from a path or an image. An undecodable file, or one larger than Pillow's
    decompression-bomb limit, raises S2SDError naming it (``hint`` says what the caller can do)."""
    if isinstance(source, Image.Image):
        return source if source.mode == "RGB" else source.convert("RGB")
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise S2SDError(f"image {source} is too large to decode safely ({error}); {hint}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise S2SDError(f"cannot decode image {source}: {error} ({hint})") from None


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found under folders, sorted, so every machine sees one order."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += [p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        elif item.is_file():
            paths.append(item)
        else:
            raise S2SDError(f"input not found: {item}")
    if not paths:
        names = ", ".join(map(str, inputs))
        raise S2SDError(f"no image files in {names} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return sorted(set(paths))


def shard_of(paths: list, shard: tuple[int, int] | None) -> list:
    """The K-th (1-based) of N contiguous slices; the slices in order concatenate to ``paths``."""
    if shard is None:
        return paths
    k, n = shard
    if not 1 <= k <= n:
        raise S2SDError(f"--shard {k}/{n}: K must be between 1 and N")
    bounds = np.linspace(0, len(paths), n + 1).round().astype(int)
    return paths[bounds[k - 1] : bounds[k]]
