"""Production embedding through onnxruntime: :class:`Embedder`.

The ONNX file says how to preprocess (its metadata, see :mod:`s2sd_deploy.export`); this module
reproduces evaluation's torchvision pipeline with PIL and numpy only:
``Resize(resize_size, bilinear)`` on the shorter side, ``CenterCrop(image_size)``, ``/255``,
``(x - mean) / std``, HWC -> CHW.

>>> embedder = Embedder("model.onnx")                     # doctest: +SKIP
>>> embedder.embed(["cat.jpg", pil_image]).shape          # doctest: +SKIP
(2, 128)
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .data import open_image
from .errors import S2SDError

log = logging.getLogger(__name__)

ONNX_FORMAT = "s2sd-onnx/1"
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation's preprocessing, as the model's metadata describes it."""

    image_size: int
    resize_size: int
    mean: np.ndarray  # (3,) float32
    std: np.ndarray  # (3,) float32

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> Preprocessing:
        if metadata.get("interpolation", "bilinear") != "bilinear" or metadata.get("channel_order", "RGB") != "RGB":
            raise S2SDError(f"unsupported preprocessing in model metadata: {metadata.get('interpolation')}, {metadata.get('channel_order')}")
        return cls(int(metadata["image_size"]), int(metadata["resize_size"]),
                   np.array(json.loads(metadata["mean"]), dtype=np.float32),
                   np.array(json.loads(metadata["std"]), dtype=np.float32))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One RGB PIL image -> float32 (3, image_size, image_size)."""
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize_size * long / short)  # torchvision's rounding
        size = (self.resize_size, new_long) if width <= height else (new_long, self.resize_size)
        if size != image.size:
            image = image.resize(size, Image.BILINEAR)
        top = int(round((size[1] - self.image_size) / 2.0))  # torchvision's CenterCrop offsets
        left = int(round((size[0] - self.image_size) / 2.0))
        image = image.crop((left, top, left + self.image_size, top + self.image_size))
        pixels = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
        return ((pixels - self.mean) / self.std).transpose(2, 0, 1)


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """TensorRT, then CUDA, then CPU, among those this onnxruntime build offers."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise S2SDError(f"execution provider(s) {', '.join(missing)} not available; this onnxruntime has: {', '.join(available)}")
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available]


def _gpu_visible() -> bool:
    return shutil.which("nvidia-smi") is not None


class Embedder:
    """Embed images with an exported s2sd model through onnxruntime.

    ``embed`` accepts a list of PIL images, file paths, uint8 arrays (H, W, 3) or (N, H, W, 3)
    of raw RGB pixels, or float32 arrays (N, 3, S, S) / (3, S, S) that are already preprocessed;
    it returns float32 embeddings (N, d). Safe to call from several threads at once.
    """

    def __init__(self, model_path: str | Path, providers: Sequence[str] | None = None,
                 threads: int | None = None, batch_size: int = 32):
        import onnxruntime as ort

        self.path = Path(model_path)
        if not self.path.is_file():
            raise S2SDError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=choose_providers(providers))
        except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise S2SDError(f"{self.path} is not a loadable ONNX model: {str(error).splitlines()[0]}") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.metadata.get("s2sd_format") != ONNX_FORMAT:
            raise S2SDError(f"{self.path} is not an s2sd model (its metadata has no s2sd_format {ONNX_FORMAT!r}); export one with `s2sd export RUN`")
        self.preprocess = Preprocessing.from_metadata(self.metadata)
        self.dim = int(self.metadata["embedding_dim"])
        self.batch_size = batch_size
        self.input_name = self.metadata.get("input_name", "images")
        self.output_name = self.metadata.get("output_name", "embeddings")
        self.provider = self.session.get_providers()[0]  # what runs, not what was asked for
        if self.provider == "CPUExecutionProvider" and _gpu_visible():
            log.warning("an NVIDIA GPU is visible but onnxruntime runs on the CPU; install onnxruntime-gpu "
                        "(pip install 's2sd-deploy[gpu]') instead of onnxruntime")

    def embed(self, inputs) -> np.ndarray:
        """Embeddings (N, d) float32 of ``inputs`` (see the class docstring)."""
        batch = self.to_network_input(inputs)
        outputs = [self.run(batch[i:i + self.batch_size]) for i in range(0, len(batch), self.batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0, self.dim), np.float32)

    def run(self, images: np.ndarray) -> np.ndarray:
        """Run the network on preprocessed float32 (N, 3, S, S) images."""
        return self.session.run([self.output_name], {self.input_name: images})[0]

    def to_network_input(self, inputs) -> np.ndarray:
        """Preprocess whatever ``embed`` accepts into one float32 (N, 3, S, S) array."""
        if isinstance(inputs, np.ndarray):
            return self._from_array(inputs)
        if isinstance(inputs, (str, Path, Image.Image)):
            inputs = [inputs]
        items = [self._one(item) for item in inputs]
        return np.stack(items) if items else np.zeros((0, 3, self.preprocess.image_size, self.preprocess.image_size), np.float32)

    def _one(self, item) -> np.ndarray:
        if isinstance(item, np.ndarray):
            array = self._from_array(item)
            if len(array) != 1:
                raise S2SDError(f"a list item must be one image; got an array of shape {item.shape}")
            return array[0]
        if isinstance(item, (str, Path, Image.Image)):
            return self.preprocess(open_image(item))
        raise S2SDError(f"cannot embed an object of type {type(item).__name__}; pass PIL images, paths or arrays")

    def _from_array(self, array: np.ndarray) -> np.ndarray:
        size = self.preprocess.image_size
        if array.dtype == np.uint8 and array.ndim in (3, 4) and array.shape[-1] == 3:
            images = array[None] if array.ndim == 3 else array
            return np.stack([self.preprocess(Image.fromarray(image)) for image in images])
        if array.dtype == np.float32 and array.ndim in (3, 4) and array.shape[-3:] == (3, size, size):
            return np.ascontiguousarray(array[None] if array.ndim == 3 else array)
        raise S2SDError(
            f"cannot embed an array of shape {array.shape} and dtype {array.dtype}: expected uint8 RGB images "
            f"(H, W, 3) or (N, H, W, 3), or preprocessed float32 (N, 3, {size}, {size})"
        )


def iter_chunks(items: Iterable, size: int):
    """Consecutive lists of at most ``size`` items."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- embedding a collection of files -------------------------------------------------------------
def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found under folders, sorted, so every machine sees one order."""
    from .data import IMAGE_SUFFIXES

    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += [p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        elif item.is_file():
            paths.append(item)
        else:
            raise S2SDError(f"input not found: {item}")
    return sorted(set(paths))


def shard_of(paths: list, shard: tuple[int, int] | None) -> list:
    """The K-th (1-based) of N contiguous slices; the slices in order concatenate to ``paths``."""
    if shard is None:
        return paths
    k, n = shard
    if not 1 <= k <= n:
        raise S2SDError(f"--shard {k}/{n}: K must be between 1 and N")
    bounds = np.linspace(0, len(paths), n + 1).round().astype(int)
    return paths[bounds[k - 1]:bounds[k]]


def embed_files(embedder: Embedder, paths: list[Path], workers: int = 4, progress=None) -> np.ndarray:
    """Embeddings (N, d) of image files; ``workers`` threads decode ahead while the model runs."""
    from concurrent.futures import ThreadPoolExecutor

    load = lambda path: embedder.preprocess(open_image(path))  # noqa: E731
    outputs = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        decoded = _prefetch(pool, load, paths, window=2 * embedder.batch_size)
        for chunk in iter_chunks(decoded, embedder.batch_size):
            outputs.append(embedder.run(np.stack(chunk)))
            if progress:
                progress(len(chunk))
    return np.concatenate(outputs) if outputs else np.zeros((0, embedder.dim), np.float32)


def _prefetch(pool, function, items, window: int):
    """``map(function, items)`` in ``pool``, in order, with at most ``window`` items in flight."""
    from collections import deque

    pending = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def save_embeddings(path: Path, embeddings: np.ndarray, paths: list[Path], metadata: dict[str, str]) -> None:
    """An .npz with ``embeddings`` (N, d), ``paths`` (N,) and the model's ``run_id`` (no pickles)."""
    from .checkpoint import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, embeddings=embeddings, paths=np.array([str(p) for p in paths]),
                 run_id=np.array(metadata.get("run_id", "")))
