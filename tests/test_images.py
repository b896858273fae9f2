"""The one decode path (serving/images.py): every mode becomes the 8-bit RGB its pixels mean, never clipped white."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from s2sd_deploy.serving.images import open_image, to_rgb

RNG = np.random.default_rng(0)
EIGHT = RNG.integers(0, 256, (24, 20, 3), dtype=np.uint8)  # the 8-bit original every copy below is made from
GREY = EIGHT[..., 0]


def png(width: int, height: int, samples: np.ndarray, colour_type: int, depth: int = 16) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB): big-endian samples, filter 0 on every row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + samples[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def save(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def grey_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def test_16_bit_grey_png_decodes_like_its_8_bit_copy(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(GREY.astype(np.uint16) * 257).save(buffer, "PNG")  # v * 257: exactly v on 8 bits
    path = save(tmp_path, "grey16.png", buffer.getvalue())
    assert Image.open(path).mode == "I;16"
    np.testing.assert_array_equal(np.asarray(open_image(path)), grey_rgb(GREY))


def test_16_bit_rgb_png_decodes_like_its_8_bit_copy(tmp_path):
    path = save(tmp_path, "rgb16.png", png(20, 24, EIGHT.astype(np.uint16) * 257, colour_type=2))
    np.testing.assert_array_equal(np.asarray(open_image(path)), EIGHT)


@pytest.mark.parametrize(
    "mode,samples",
    [
        ("I;16", GREY.astype(np.uint16) * 257),
        ("I;16B", (GREY.astype(np.uint16) * 257).astype(">u2")),
        ("I", GREY.astype(np.int32) * 257),  # what convert("I") of a 16-bit file gives
        ("F", GREY.astype(np.float32) / 255),  # float intensities in [0, 1]
    ],
)
def test_high_bit_depth_modes_scale_to_8_bits(mode, samples):
    image = (
        Image.fromarray(samples) if mode != "I;16B" else Image.frombytes("I;16B", GREY.shape[::-1], samples.tobytes())
    )
    assert image.mode == mode
    np.testing.assert_array_equal(np.asarray(to_rgb(image)), grey_rgb(GREY))


def test_16_bit_values_round_to_the_nearest_8_bit_level():
    samples = np.array([[0, 128, 129, 32767, 65535, 65406]], dtype=np.uint16)  # 65406 / 257 = 254.498
    got = np.asarray(to_rgb(Image.fromarray(samples)))[0, :, 0]
    assert got.tolist() == [round(v * 255 / 65535) for v in samples[0].tolist()] == [0, 0, 1, 127, 255, 254]


def test_transparency_is_composited_over_white():
    rgba = np.dstack([EIGHT, np.full(GREY.shape, 255, np.uint8)])
    rgba[:5, :, 3] = 0  # fully transparent rows: whatever colour they hide, they are white
    rgba[5:8, :, 3] = 128
    got = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA"))).astype(int)
    assert (got[:5] == 255).all()
    np.testing.assert_array_equal(got[8:], EIGHT[8:])
    half = EIGHT[5:8].astype(int) * 128 / 255 + 255 * 127 / 255
    assert np.abs(got[5:8] - half).max() <= 1
    la = Image.fromarray(np.dstack([GREY, np.zeros_like(GREY)]), "LA")
    assert (np.asarray(to_rgb(la)) == 255).all()


def test_palette_with_a_transparent_colour_needs_no_warning(recwarn):
    palette = Image.fromarray(GREY, "L").convert("P")
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    got = np.asarray(to_rgb(palette))
    index = np.asarray(palette)
    assert (got[index == index[0, 0]] == 255).all() and not recwarn.list


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "1", "L", "P", "RGBX", "LAB", "HSV"])
def test_other_modes_take_pillows_conversion(mode):
    image = Image.fromarray(EIGHT).convert(mode)
    assert to_rgb(image).mode == "RGB"
    np.testing.assert_array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB")))


def test_a_16_bit_image_embeds_like_its_8_bit_copy_not_like_white(exported_model, tmp_path):
    """On the trained model: 16-bit files with noise below the 8-bit step embed (cosine >= 0.999) like their 8-bit
    copies; before, they decoded as nearly white."""
    from s2sd_deploy.serving.embedder import Embedder

    embedder = Embedder(exported_model, threads=1)
    noise = RNG.integers(-128, 128, EIGHT.shape)
    sixteen = np.clip(EIGHT.astype(np.int64) * 257 + noise, 0, 65535)
    buffer = io.BytesIO()
    Image.fromarray((sixteen[..., 0]).astype(np.uint16)).save(buffer, "PNG")
    files = [save(tmp_path, "rgb16.png", png(20, 24, sixteen, 2)), save(tmp_path, "grey16.png", buffer.getvalue())]
    copies = [EIGHT, grey_rgb(GREY)]
    got = embedder.embed(files)
    expected = embedder.embed(np.stack(copies))
    white = embedder.embed(np.full((1, 24, 20, 3), 255, np.uint8))[0]
    cosines = (got * expected).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    assert (got @ white).max() < cosines.min()
    np.testing.assert_allclose(embedder.embed(sixteen.astype(np.uint16)[None]), expected[:1], atol=1e-6)
