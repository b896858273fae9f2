"""Reading images and collections of image files, the same way for training, embedding and serving.

Every image becomes 8-bit RGB the same way (:func:`to_rgb`), whatever its mode:

- 16-bit grey (``I;16``, ``I;16B``, ...; 16-bit grey PNG and TIFF files) and ``I`` (32-bit integers, what
  ``convert("I")`` of such a file gives) are read as 16-bit samples, 0-65535, and rounded to 8 bits
  (``round(v * 255 / 65535)``). Pillow's own ``convert("RGB")`` clips them at 255, which makes a 16-bit image
  all but white. Values outside 0-65535 are clipped.
- ``F`` (32-bit floats) is read as intensities in [0, 1], as torchvision reads float images; clipped to it.
- 16-bit RGB(A) PNG files are decoded by Pillow to 8 bits per channel (their high byte).
- Transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, and ``P`` or ``RGB``/``L`` images with a
  transparent colour) is composited over white, as an image viewer shows it: what a transparent pixel hides does
  not change the embedding.
- ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``1``, ``P``, ``L``: Pillow's conversion to RGB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import S2SDError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


SKIP_HINT = "pass --skip-bad-images to skip such files"


WHITE = (255, 255, 255)


def open_image(source, hint: str = SKIP_HINT) -> Image.Image:
    """An 8-bit RGB PIL image from a path or an image (see the module docstring for how each mode converts). An
    undecodable file, or one larger than Pillow's decompression-bomb limit, raises S2SDError naming it (``hint``
    says what the caller can do)."""
    if isinstance(source, Image.Image):
        try:
            return to_rgb(source)
        except ValueError as error:
            raise S2SDError(f"cannot convert a {source.mode} image to RGB: {error} ({hint})") from None
    try:
        with Image.open(source) as image:
            converted = to_rgb(image)
            return converted.copy() if converted is image else converted  # copy: reads the pixels before close
    except Image.DecompressionBombError as error:
        raise S2SDError(f"image {source} is too large to decode safely ({error}); {hint}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise S2SDError(f"cannot decode image {source}: {error} ({hint})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB: high bit depths scaled (not clipped), transparency composited over white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "I" or mode.startswith("I;16"):
        samples = np.asarray(image).astype(np.int64)
        return _grey((np.clip(samples, 0, 65535) * 255 + 32767) // 65535)
    if mode == "F":
        return _grey(np.rint(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255))
    if mode in ("La", "RGBa"):  # premultiplied alpha: Pillow converts these to their straight-alpha modes only
        image, mode = image.convert("LA" if mode == "La" else "RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA") or image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*WHITE, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _grey(levels: np.ndarray) -> Image.Image:
    return Image.fromarray(levels.astype(np.uint8), "L").convert("RGB")


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
