"""Production embedding through onnxruntime: :class:`Embedder`.

The ONNX file says how to preprocess (its metadata, see :mod:`.interface`); :mod:`.preprocessing`
runs it with PIL and numpy.

>>> embedder = Embedder("model.onnx")                     # doctest: +SKIP
>>> embedder.embed(["cat.jpg", pil_image]).shape          # doctest: +SKIP
(2, 128)
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from ..atomic_files import atomic_path, interruption_point
from ..errors import S2SDError
from ..gpu import nvidia_gpu_visible
from .images import open_image
from .interface import INPUT, ONNX_FORMAT, OUTPUT, TEACHER_OUTPUT, check_export_report
from .preprocessing import CHANNELS, Preprocessing

log = logging.getLogger(__name__)

API_HINT = "skip or replace the file"
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """TensorRT, then CUDA, then CPU, among those this onnxruntime build offers."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise S2SDError(
                f"execution provider(s) {', '.join(missing)} not available; this onnxruntime has: "
                f"{', '.join(available)}"
            )
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available]


def open_session(path: Path, providers: Sequence[str] | None, threads: int | None):
    """An onnxruntime session on the chosen providers. When they cannot run the model but the CPU can, the
    error blames the provider (or, with automatic choice, falls back to the CPU with a warning), not the file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    chosen = choose_providers(providers)
    try:
        return ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/EP types
        failure = str(error).splitlines()[0] if str(error) else type(error).__name__
    if chosen != ["CPUExecutionProvider"]:
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception:  # the file itself is the problem
            session = None
        if session is not None and providers:
            raise S2SDError(
                f"execution provider(s) {', '.join(chosen)} could not run {path} ({failure}); "
                f"the CPU can: pass --provider CPUExecutionProvider or repair the provider's install"
            )
        if session is not None:
            log.warning("%s could not run %s (%s); running on the CPU", chosen[0], path, failure)
            return session
    raise S2SDError(f"{path} is not a loadable ONNX model: {failure}")


class Embedder:
    """Embed images with an exported s2sd model through onnxruntime.

    ``embed`` accepts a list of PIL images (any mode, see :mod:`.images`), file paths, uint8 (or 16-bit uint16)
    arrays (H, W, 3) or (N, H, W, 3) of raw RGB pixels, or float32 arrays (N, 3, S, S) / (3, S, S) that are
    already preprocessed; it returns float32 embeddings (N, d). Safe to call from several threads at once.
    """

    def __init__(
        self,
        model_path: str | Path,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        batch_size: int = 32,
    ):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise S2SDError(
                f"model file not found: {self.path}"
                if not self.path.exists()
                else f"model {self.path} is a folder; give the model.onnx file"
            )
        if batch_size < 1:
            raise S2SDError(f"batch_size must be at least 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise S2SDError(f"threads must be at least 1 (or None for onnxruntime's choice), got {threads}")
        check_export_report(self.path)
        self.session = open_session(self.path, providers, threads)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.metadata.get("s2sd_format") != ONNX_FORMAT:
            raise S2SDError(
                f"{self.path} is not an s2sd model (its metadata has no s2sd_format {ONNX_FORMAT!r}); export "
                "one with `s2sd export RUN`"
            )
        try:
            self.preprocess = Preprocessing.from_metadata(self.metadata)
            self.dim = int(self.metadata["embedding_dim"])
            self.teacher_dim = int(self.metadata["teacher_dim"]) if "teacher_dim" in self.metadata else None
            if min(self.dim, self.teacher_dim or 1) < 1:
                raise ValueError(
                    f"dimensions must be at least 1: embedding_dim {self.dim}, teacher_dim {self.teacher_dim}"
                )
        except (KeyError, ValueError) as error:
            raise S2SDError(
                f"{self.path} has the s2sd format tag but its metadata is incomplete or malformed "
                f"({error!r}); export the model again with `s2sd export RUN`"
            ) from None
        except S2SDError as error:
            raise S2SDError(f"{self.path}: its metadata is unusable: {error}; export the model again") from None
        self.batch_size = batch_size
        self.input_name = self.metadata.get("input_name", INPUT)
        self.output_name = self.metadata.get("output_name", OUTPUT)
        self.teacher_output_name = self.metadata.get("teacher_output_name", TEACHER_OUTPUT)
        check_graph(self)
        self.provider = self.session.get_providers()[0]  # what runs, not what was asked for
        if self.provider == "CPUExecutionProvider" and nvidia_gpu_visible():
            log.warning(
                "an NVIDIA GPU is visible but onnxruntime runs on the CPU; install onnxruntime-gpu "
                "(pip install 's2sd-deploy[gpu]') instead of onnxruntime"
            )

    def embed(self, inputs, with_teacher: bool = False):
        """Embeddings (N, d) float32 of ``inputs`` (see the class docstring); with ``with_teacher``, the pair
        (student (N, d), teacher (N, d_t)) of a model exported with its teacher."""
        batch = self.to_network_input(inputs)
        outputs = [
            self.run(batch[i : i + self.batch_size], with_teacher) for i in range(0, len(batch), self.batch_size)
        ]
        if with_teacher:
            if not outputs:
                return np.zeros((0, self.dim), np.float32), np.zeros((0, self.teacher_dim), np.float32)
            return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])
        return np.concatenate(outputs) if outputs else np.zeros((0, self.dim), np.float32)

    def run(self, images: np.ndarray, with_teacher: bool = False):
        """Run the network on preprocessed float32 (N, 3, S, S) images: the student's embeddings, or with
        ``with_teacher`` the pair (student, teacher)."""
        if with_teacher:
            self.require_teacher()
        names = [self.output_name, self.teacher_output_name] if with_teacher else [self.output_name]
        outputs = self.session.run(names, {self.input_name: images})
        for name, array, dim in zip(names, outputs, (self.dim, self.teacher_dim)):
            check_output(self.path, name, array, dim, len(images))
        return tuple(outputs) if with_teacher else outputs[0]

    def require_teacher(self) -> None:
        if self.teacher_dim is None:
            raise S2SDError(
                f"{self.path} has no teacher output; export the run with `s2sd export RUN --with-teacher` "
                f"to re-rank with it"
            )

    def to_network_input(self, inputs) -> np.ndarray:
        """Preprocess whatever ``embed`` accepts into one float32 (N, 3, S, S) array."""
        if isinstance(inputs, np.ndarray):
            return self._from_array(inputs)
        if isinstance(inputs, (str, Path, Image.Image)):
            inputs = [inputs]
        items = [self._one(item) for item in inputs]
        return (
            np.stack(items)
            if items
            else np.zeros((0, 3, self.preprocess.image_size, self.preprocess.image_size), np.float32)
        )

    def _one(self, item) -> np.ndarray:
        if isinstance(item, np.ndarray):
            array = self._from_array(item)
            if len(array) != 1:
                raise S2SDError(f"a list item must be one image; got an array of shape {item.shape}")
            return array[0]
        if isinstance(item, (str, Path, Image.Image)):
            return self.preprocess(open_image(item, hint=API_HINT))
        raise S2SDError(f"cannot embed an object of type {type(item).__name__}; pass PIL images, paths or arrays")

    def _from_array(self, array: np.ndarray) -> np.ndarray:
        size = self.preprocess.image_size
        if array.dtype == np.uint16 and array.ndim in (3, 4) and array.shape[-1] == 3:  # 16-bit RGB: to 8 bits
            array = ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        if array.dtype == np.uint8 and array.ndim in (3, 4) and array.shape[-1] == 3:
            images = array[None] if array.ndim == 3 else array
            if not len(images):
                return np.zeros((0, 3, size, size), np.float32)
            return np.stack([self.preprocess(Image.fromarray(image)) for image in images])
        if array.dtype == np.float32 and array.ndim in (3, 4) and array.shape[-3:] == (3, size, size):
            batch = np.ascontiguousarray(array[None] if array.ndim == 3 else array)
            bad = np.flatnonzero(~np.isfinite(batch.reshape(len(batch), -1)).all(axis=1))
            if len(bad):
                raise S2SDError(
                    f"preprocessed images at rows {bad[:10].tolist()} contain NaN or infinite values; "
                    f"they would give NaN embeddings"
                )
            return batch
        raise S2SDError(
            f"cannot embed an array of shape {array.shape} and dtype {array.dtype}: expected uint8 RGB images "
            f"(H, W, 3) or (N, H, W, 3) (uint16 for 16 bits), or preprocessed float32 (N, 3, {size}, {size})"
        )


# --- the model's metadata against its graph ------------------------------------------------------------------
def check_graph(embedder: Embedder) -> None:
    """Refuse a model whose s2sd metadata disagrees with its graph (names, input size and channels, output
    dimensions, input type): one line naming the metadata key, its value and the graph's. Dimensions the graph
    leaves symbolic are checked on every run instead (:func:`check_output`)."""
    path = embedder.path
    inputs = {i.name: i for i in embedder.session.get_inputs()}
    outputs = {o.name: o for o in embedder.session.get_outputs()}

    def refuse(key: str, value, graph: str) -> S2SDError:
        return S2SDError(
            f"{path}: its metadata says {key} {value} but its graph {graph}; the file was edited or assembled by "
            f"hand: export the model again with `s2sd export RUN`"
        )

    if embedder.input_name not in inputs:
        raise refuse("input_name", repr(embedder.input_name), f"takes input(s) {', '.join(map(repr, inputs))}")
    expected_outputs = [("output_name", embedder.output_name, "embedding_dim", embedder.dim)]
    if embedder.teacher_dim is not None:
        expected_outputs.append(
            ("teacher_output_name", embedder.teacher_output_name, "teacher_dim", embedder.teacher_dim)
        )
    for key, name, _, _ in expected_outputs:
        if name not in outputs:
            raise refuse(key, repr(name), f"has output(s) {', '.join(map(repr, outputs))}")
    graph_input = inputs[embedder.input_name]
    if graph_input.type != "tensor(float)":
        raise refuse("input_name", repr(embedder.input_name), f"types it {graph_input.type}, not tensor(float)")
    shape = list(graph_input.shape)
    if len(shape) != 4:
        raise refuse("layout", "NCHW", f"gives input {embedder.input_name!r} the shape {shape}")
    size = embedder.preprocess.image_size
    if isinstance(shape[1], int) and shape[1] != CHANNELS:
        raise refuse("channel_order", f"RGB ({CHANNELS} channels)", f"takes {shape[1]} channels")
    for axis, side in zip(("height", "width"), shape[2:]):
        if isinstance(side, int) and side != size:
            raise refuse("image_size", size, f"takes images of {axis} {side}")
    for key, name, dim_key, dim in expected_outputs:
        out_shape = list(outputs[name].shape)
        if len(out_shape) != 2:
            raise refuse(key, repr(name), f"gives it the shape {out_shape}, not [batch, {dim_key}]")
        if isinstance(out_shape[1], int) and out_shape[1] != dim:
            raise refuse(dim_key, dim, f"gives output {name!r} {out_shape[1]} dimensions")


def check_output(path: Path, name: str, array: np.ndarray, dim: int, rows: int) -> None:
    """What the network returned has the dimensions its metadata promises, and no NaN or infinity."""
    if array.shape != (rows, dim):
        raise S2SDError(
            f"{path}: output {name!r} has shape {list(array.shape)} but its metadata promises ({rows}, {dim}); "
            f"export the model again with `s2sd export RUN`"
        )
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array).all(axis=1)).sum())
        raise S2SDError(
            f"{path}: output {name!r} is NaN or infinite for {bad} of {rows} images; the model is broken, "
            f"export it again with `s2sd export RUN`"
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
@dataclass
class EmbeddedFiles:
    """What :func:`embed_files` returns: the embeddings of the files that decoded, and those that did not."""

    embeddings: np.ndarray  # (N, d) float32, in the order of ``paths``
    paths: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why), with skip_bad_images
    teacher: np.ndarray | None = None  # (N, d_t) float32, with with_teacher


def embed_files(
    embedder: Embedder,
    paths: list[Path],
    workers: int = 4,
    skip_bad_images: bool = False,
    progress=None,
    with_teacher: bool = False,
) -> EmbeddedFiles:
    """Embeddings of image files; ``workers`` threads decode ahead while the model runs, so decoding overlaps
    the network. Without ``skip_bad_images`` the first file that does not decode stops it with an error naming
    the file. ``with_teacher`` also returns the teacher output of a model exported with it."""
    if with_teacher:
        embedder.require_teacher()
    from concurrent.futures import ThreadPoolExecutor

    def load(path):
        try:
            return path, embedder.preprocess(open_image(path)), None
        except S2SDError as error:
            if not skip_bad_images:
                raise
            return path, None, str(error)

    outputs, teachers, kept, skipped = [], [], [], []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        decoded = _prefetch(pool, load, paths, window=2 * embedder.batch_size)
        for chunk in iter_chunks(decoded, embedder.batch_size):
            good = [(path, pixels) for path, pixels, _ in chunk if pixels is not None]
            skipped += [(path, why) for path, pixels, why in chunk if pixels is None]
            if good:
                result = embedder.run(np.stack([pixels for _, pixels in good]), with_teacher)
                outputs.append(result[0] if with_teacher else result)
                teachers += [result[1]] if with_teacher else []
                kept += [path for path, _ in good]
            if progress:
                progress(len(chunk))
            interruption_point("embed-batch")
    embeddings = np.concatenate(outputs) if outputs else np.zeros((0, embedder.dim), np.float32)
    teacher = None
    if with_teacher:
        teacher = np.concatenate(teachers) if teachers else np.zeros((0, embedder.teacher_dim), np.float32)
    return EmbeddedFiles(embeddings, kept, skipped, teacher)


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


EMBEDDINGS_FORMAT = "s2sd-embeddings/1"
EMBEDDINGS_KEYS = {"embeddings", "paths", "skipped", "run_id"}  # what every s2sd embed .npz holds


def save_embeddings(path: Path, result: EmbeddedFiles, metadata: dict[str, str]) -> None:
    """An .npz with ``format`` (``s2sd-embeddings/1``), ``embeddings`` (N, d), ``paths`` (N,), ``skipped`` (files
    that did not decode) and the model's ``run_id`` (no pickles)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            format=np.array(EMBEDDINGS_FORMAT),
            embeddings=result.embeddings,
            paths=np.array([str(p) for p in result.paths], dtype=str),
            skipped=np.array([str(p) for p, _ in result.skipped], dtype=str),
            run_id=np.array(metadata.get("run_id", "")),
        )


def is_embeddings_file(path: Path) -> bool:
    """Whether ``path`` is an .npz that ``s2sd embed`` wrote (its ``format`` key, or the keys of the files written
    before it had one)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            if "format" in saved.files:
                return str(saved["format"]) == EMBEDDINGS_FORMAT
            return set(saved.files) == EMBEDDINGS_KEYS
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # not an .npz, or not one numpy can read
        return False


def embeddings_bytes(count: int, dim: int, paths: list[Path]) -> int:
    """About the size of the .npz of ``count`` embeddings of ``dim`` and their paths (numpy stores UCS-4 text)."""
    longest = max((len(str(p)) for p in paths), default=0)
    return count * dim * 4 + count * longest * 4 + 4096
