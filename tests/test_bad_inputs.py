"""Bad input, as a new user or a hostile tester gives it: every case through the real console script.

Each case must end with a non-zero exit code (2 for a usage or user error, 3 for a missing GPU or package),
one line that names the problem (``error: ...``, or Typer's usage message), no traceback, and no partial
output left behind. Most are refused before torch is imported, so the battery stays cheap.
"""

from __future__ import annotations

import json
import os
import re
import shlex
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
    kept: list[str] = field(default_factory=list)  # the user's files that must still hold "mine" afterwards


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


def users_file(name: str):
    """A file of the user's: the command must refuse to overwrite or delete it."""
    return lambda tmp, fixtures: write(tmp / name, "mine")


def earlier_embeddings(tmp, fixtures):
    np.savez(tmp / "x.npz", format=np.array("s2sd-embeddings/1"), embeddings=np.zeros((1, 4), np.float32))


def earlier_bench_results(tmp, fixtures):
    write(tmp / "b" / "results.json", "{}")


def singleton_classes(tmp, fixtures):
    for c in range(3):
        image(tmp / "single" / f"class{c}" / "only.png", seed=c)


def few_images(tmp, fixtures):
    for c in range(2):
        for i in range(2):
            image(tmp / "few" / f"kind{c}" / f"{i}.png", seed=10 * c + i)


def mismatched_model(tmp, fixtures):
    """The exported model with its embedding_dim changed in the metadata (16 -> 32)."""
    import onnx

    model = onnx.load(str(fixtures["model"]))
    for prop in model.metadata_props:
        if prop.key == "embedding_dim":
            prop.value = "32"
    onnx.save(model, str(tmp / "mismatched.onnx"))


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
    # --- nothing of the user's is overwritten or deleted (issue 18) ------------------------------------------
    Case(
        "export: out is a folder of the user's",
        ["export", "{run}", "--out", "{tmp}", "--force"],
        "--out {tmp} is a folder that is not an s2sd export and is not empty",
        setup=users_file("notes.txt"),
        kept=["{tmp}/notes.txt"],
    ),
    Case(
        "export: out holds an earlier export",
        ["export", "{run}", "--out", "{tmp}/e"],
        "already holds an s2sd export; pass --force to replace it",
        setup=lambda tmp, fixtures: write(tmp / "e" / "export_report.json", "{}"),
    ),
    Case(
        "export: out is the run",
        ["export", "{tmp}/run", "--out", "{tmp}/run", "--force"],
        "holds the input",
        setup=lambda tmp, fixtures: copy_run(tmp, fixtures),
        kept=[],
    ),
    Case(
        "embed: out is a file of the user's",
        ["embed", "{images}", "--model", "{model}", "--out", "{tmp}/notes.txt", "--force"],
        "--out {tmp}/notes.txt exists and is not embeddings written by s2sd embed",
        setup=users_file("notes.txt"),
        kept=["{tmp}/notes.txt"],
    ),
    Case(
        "embed: out is an image being embedded",
        ["embed", "{tmp}/images", "--model", "{model}", "--out", "{tmp}/images/mine.png", "--force"],
        "exists and is not embeddings written by s2sd embed",
        setup=users_file("images/mine.png"),
        kept=["{tmp}/images/mine.png"],
    ),
    Case(
        "embed: earlier embeddings without --force",
        ["embed", "{images}", "--model", "{model}", "--out", "{tmp}/x.npz"],
        "--out {tmp}/x.npz already holds embeddings written by s2sd embed; pass --force",
        setup=earlier_embeddings,
    ),
    Case(
        "embed: model metadata disagrees with its graph",
        ["embed", "{images}", "--model", "{tmp}/mismatched.onnx", "--out", "{tmp}/x.npz"],
        "its metadata says embedding_dim 32 but its graph gives output 'embeddings' 16 dimensions",
        setup=mismatched_model,
        no_output=["{tmp}/x.npz"],
    ),
    Case(
        "eval: out is a file of the user's",
        ["eval", "{model}", "--data-root", "{tmp}/few", "--out", "{tmp}/notes.txt", "--force"],
        "exists and is not results written by s2sd eval",
        setup=lambda tmp, fixtures: (few_images(tmp, fixtures), users_file("notes.txt")(tmp, fixtures)),
        kept=["{tmp}/notes.txt"],
    ),
    Case(
        "eval: every class has one image",
        ["eval", "{model}", "--data-root", "{tmp}/single"],
        "every one of the 3 images in {tmp}/single is alone in its class: no query has another image",
        setup=singleton_classes,
    ),
    Case(
        "eval: k beyond the images compared",
        ["eval", "{model}", "--data-root", "{tmp}/few", "--recall-ks", "1,4", "--rerank", "4"],
        "--recall-ks 4 is more than the 3 images each query is compared with",
        setup=few_images,
    ),
    Case(
        "eval: no query class in the gallery",
        ["eval", "{model}", "--query-root", "{tmp}/single", "--gallery-root", "{tmp}/few"],
        "has a class that the gallery lacks",
        setup=lambda tmp, fixtures: (few_images(tmp, fixtures), singleton_classes(tmp, fixtures)),
    ),
    Case(
        "bench: out is a folder of the user's",
        ["bench-latency", "--out", "{tmp}", "--force"],
        "--out {tmp} is a folder that is not bench-latency results",
        setup=users_file("notes.txt"),
        kept=["{tmp}/notes.txt"],
    ),
    Case(
        "bench: earlier results without --force",
        ["bench-latency", "--out", "{tmp}/b"],
        "--out {tmp}/b already holds bench-latency results; pass --force",
        setup=earlier_bench_results,
    ),
    Case(
        "train: run directory is a folder of the user's",
        ["train", "--out-dir", "{tmp}", "--run-name", "mine", "--epochs", "1"],
        "run directory {tmp}/mine is a folder that is not an s2sd run directory",
        setup=users_file("mine/summary.json"),
        kept=["{tmp}/mine/summary.json"],
    ),
    Case(
        "train: flips under the affine augmentation",
        ["train", "--augmentation", "affine", "--hflip"],
        "--hflip works with --augmentation crop only",
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
    for path in case.kept:
        assert Path(fill(path, values)).read_text() == "mine", f"{path} was changed"
    leftovers = [p for p in outcome.tmp.rglob("*.tmp") if p not in outcome.before]
    assert not leftovers, leftovers


# --- interrupted and failed writes, through the console script -------------------------------------------------
def test_export_killed_during_verification_leaves_the_previous_verified_pair(trained_run, exported_model, tmp_path):
    """SIGKILL after the new model.onnx is written and while it is being verified: the previous (model.onnx,
    export_report.json) pair is byte for byte what it was, and the next export clears what the killed one left."""
    out = tmp_path / "export"
    shutil.copytree(exported_model.parent, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    args = [S2SD, "export", str(trained_run), "--out", str(out), "--force", "--verify-limit", "8"]
    env = {**ENV, "S2SD_TEST_INTERRUPT": "export-verify:SIGKILL"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "export"]
    assert leftovers and all(name.startswith(".export.staging-") for name in leftovers)  # the killed attempt
    from s2sd_deploy.output_folders import staging_folder

    staging_folder(out)  # what the next export does first: the dead process's staging folder goes
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(f".export.staging-{os.getpid()}")) == [
        "export"
    ]


def test_ctrl_c_during_embed_exits_130_saying_how_to_continue(exported_model, tmp_path):
    for i in range(40):
        image(tmp_path / "images" / f"{i}.png", seed=i)
    args = [S2SD, "embed", str(tmp_path / "images"), "--model", str(exported_model), "--out", str(tmp_path / "x.npz")]
    env = {**ENV, "S2SD_TEST_INTERRUPT": "embed-batch:SIGINT"}
    result = subprocess.run([*args, "--batch-size", "8"], capture_output=True, text=True, env=env, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and "interrupted: nothing was written to" in errors[0] and "rerun" in errors[0]
    assert not (tmp_path / "x.npz").exists()


def test_a_storage_error_is_one_line_naming_the_file(monkeypatch, capsys, tmp_path):
    """An OSError of a full disk, a quota or a read-only target becomes one line and exit 2; others stay errors."""
    import errno

    import s2sd_deploy.cli as cli

    path = tmp_path / "model.onnx"
    expected = {
        errno.ENOSPC: f"error: cannot write {path}: No space left on device (",
        errno.EDQUOT: f"error: cannot write {path}: Disk quota exceeded (",
        errno.EROFS: f"error: cannot write {path}: Read-only file system; choose an output location you can write to",
        errno.EACCES: f"error: {path}: Permission denied; check its permissions, or choose another location",
    }
    for code, start in expected.items():

        def failing(args=None, prog_name=None, code=code):
            raise OSError(code, os.strerror(code), str(path))

        monkeypatch.setattr(cli, "app", failing)
        with pytest.raises(SystemExit) as exit_:
            cli.main(["export", "run"])
        lines = capsys.readouterr().err.splitlines()
        assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith(start), lines
        if code in (errno.ENOSPC, errno.EDQUOT):
            assert lines[0].endswith("MiB free there); free some space or choose another output location")

    def refused(args=None, prog_name=None):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    monkeypatch.setattr(cli, "app", refused)
    with pytest.raises(ConnectionRefusedError):  # not the user's disk: a bug or an outage, shown as such
        cli.main(["export", "run"])


def test_safetensors_full_disk_is_an_os_error_naming_the_checkpoint(tmp_path, monkeypatch):
    import errno

    import torch
    from safetensors import SafetensorError

    import s2sd_deploy.training.run_dir as run_dir

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    with pytest.raises(OSError) as error:
        run_dir.save_checkpoint(tmp_path / "last.safetensors", {"w": torch.zeros(2)})
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(tmp_path / "last.safetensors")
    assert not list(tmp_path.iterdir())  # no temporary file left


def small_disk(tmp_path: Path, size: str = "1m", read_only: bool = False) -> Callable[[list[str]], list[str]]:
    """A command line that runs inside a private mount namespace with ``tmp_path/disk`` a tmpfs of ``size``
    (``read_only``: mounted read-only), so the kernel itself reports ENOSPC or EROFS. Skips where unprivileged
    user namespaces are not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o {options} tmpfs {disk}"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a small file system here (unshare -rm: {probe.stderr.strip()[:200]})")

    def command(args: list[str], fill: bool = False) -> list[str]:
        filler = f" && (head -c 100000000 /dev/zero > {disk}/filler 2>/dev/null || true)" if fill else ""
        line = f"mount -t tmpfs -o {options} tmpfs {disk}{filler} && exec " + " ".join(map(shlex.quote, args))
        return ["unshare", "-rm", "sh", "-c", line]

    return command


def run_line(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)


def one_error(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def test_full_disk_during_eval_names_the_file(exported_model, tmp_path):
    few_images(tmp_path, {})
    command = small_disk(tmp_path, "64k")
    out = tmp_path / "disk" / "results.json"
    args = [S2SD, "eval", str(exported_model), "--data-root", str(tmp_path / "few"), "--recall-ks", "1,2"]
    line = one_error(run_line(command([*args, "--rerank", "2", "--out", str(out)], fill=True)))
    assert f"cannot write {out}: No space left on device (0.0 MiB free there)" in line


def test_export_and_train_refuse_a_disk_too_small_before_working(trained_run, tmp_path):
    command = small_disk(tmp_path, "1m")
    out = tmp_path / "disk" / "export"
    line = one_error(run_line(command([S2SD, "export", str(trained_run), "--out", str(out)])))
    assert f"--out {out}: the exported model needs about" in line and "MiB but 1.0 MiB is free there" in line
    args = [
        S2SD,
        "train",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--out-dir",
        str(tmp_path / "disk"),
        "--run-name",
        "r",
    ]
    line = one_error(run_line(command(args)))
    assert f"run directory {tmp_path / 'disk' / 'r'}: training (last and best checkpoints" in line
    assert "MiB but 1.0 MiB is free there" in line


def test_read_only_targets_are_named(exported_model, tmp_path):
    few_images(tmp_path, {})
    command = small_disk(tmp_path, "1m", read_only=True)
    target = tmp_path / "disk"
    embed = [S2SD, "embed", str(tmp_path / "few"), "--model", str(exported_model), "--out", str(target / "x.npz")]
    assert f"--out {target / 'x.npz'}: {target} is not writable" in one_error(run_line(command(embed)))
    evaluate = [
        S2SD,
        "eval",
        str(exported_model),
        "--data-root",
        str(tmp_path / "few"),
        "--out",
        str(target / "r.json"),
    ]
    assert f"--out {target / 'r.json'}: {target} is not writable" in one_error(run_line(command(evaluate)))


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


# --- model metadata that disagrees with the graph -------------------------------------------------------------------
def tiny_model(path: Path, channels=3, side=8, dim=4, teacher=6, symbolic_dim=False, nan=False, **metadata) -> Path:
    """A small s2sd-format ONNX model (global average pool, then a linear map per output) whose metadata can be
    made to disagree with its graph: keyword arguments replace metadata values (None removes a key)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((channels, d)).astype(np.float32) for d in (dim, teacher)]
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w_student"], ["raw" if nan else "embeddings"]),
        helper.make_node("MatMul", ["flat", "w_teacher"], ["teacher_embeddings"]),
    ]
    if nan:  # 0 / 0 in every row
        nodes.append(helper.make_node("Sub", ["raw", "raw"], ["zero"]))
        nodes.append(helper.make_node("Div", ["zero", "zero"], ["embeddings"]))
    out_dim = "d" if symbolic_dim else dim
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", channels, side, side])],
        [
            helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", out_dim]),
            helper.make_tensor_value_info("teacher_embeddings", TensorProto.FLOAT, ["batch", teacher]),
        ],
        [onnx.numpy_helper.from_array(w, name) for w, name in zip(weights, ("w_student", "w_teacher"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    values = {
        "s2sd_format": "s2sd-onnx/1",
        "embedding_dim": str(dim),
        "teacher_dim": str(teacher),
        "image_size": str(side),
        "resize_size": str(side),
        "interpolation": "bilinear",
        "mean": "[0.485, 0.456, 0.406]",
        "std": "[0.229, 0.224, 0.225]",
        "channel_order": "RGB",
        "layout": "NCHW",
        "input_name": "images",
        "output_name": "embeddings",
        "teacher_output_name": "teacher_embeddings",
        "run_id": "tiny-graph",
        **metadata,
    }
    for key, value in values.items():
        if value is not None:
            model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_a_consistent_tiny_model_embeds(tmp_path):
    from s2sd_deploy.serving.embedder import Embedder

    embedder = Embedder(tiny_model(tmp_path / "ok.onnx"))
    student, teacher = embedder.embed(np.zeros((2, 10, 12, 3), np.uint8), with_teacher=True)
    assert student.shape == (2, 4) and teacher.shape == (2, 6) and np.isfinite(student).all()


METADATA_MISMATCHES = [
    ("input name", {"input_name": "pixels"}, "says input_name 'pixels' but its graph takes input(s) 'images'"),
    ("output name", {"output_name": "vectors"}, "says output_name 'vectors' but its graph has output(s)"),
    ("teacher output", {"teacher_output_name": "t"}, "says teacher_output_name 't' but its graph has output(s)"),
    ("image size", {"image_size": "16", "resize_size": "16"}, "says image_size 16 but its graph takes images of"),
    ("channels", {"channels": 1}, "says channel_order RGB (3 channels) but its graph takes 1 channels"),
    ("embedding dim", {"embedding_dim": "8"}, "says embedding_dim 8 but its graph gives output 'embeddings' 4"),
    ("teacher dim", {"teacher_dim": "9"}, "says teacher_dim 9 but its graph gives output 'teacher_embeddings' 6"),
    ("mean of 4", {"mean": "[0.5, 0.5, 0.5, 0.5]"}, "mean has 4 values [0.5, 0.5, 0.5, 0.5] for the 3 RGB"),
    ("std of 2", {"std": "[0.2, 0.2]"}, "std has 2 values [0.2, 0.2] for the 3 RGB channels"),
    ("mean NaN", {"mean": "[NaN, 0.4, 0.4]"}, "mean [nan, 0.4, 0.4] must be 3 finite numbers"),
    ("std infinite", {"std": "[0.2, Infinity, 0.2]"}, "std [0.2, inf, 0.2] must be 3 finite numbers"),
    ("std 0", {"std": "[0.2, 0.0, 0.2]"}, "std [0.2, 0.0, 0.2] must be above 0"),
    ("mean not a list", {"mean": "0.5"}, "must be JSON lists of 3 numbers"),
    ("crop above resize", {"resize_size": "4"}, "image_size 8 must be at least 1 and at most resize_size 4"),
    ("dimension not a number", {"embedding_dim": "four"}, "metadata is incomplete or malformed"),
    ("no image size", {"image_size": None}, "metadata is incomplete or malformed"),
    ("dimension 0", {"embedding_dim": "0"}, "dimensions must be at least 1: embedding_dim 0"),
]


@pytest.mark.parametrize("name,change,message", METADATA_MISMATCHES, ids=[m[0] for m in METADATA_MISMATCHES])
def test_metadata_that_disagrees_with_the_graph_is_refused_when_opened(tmp_path, name, change, message):
    from s2sd_deploy.errors import S2SDError
    from s2sd_deploy.serving.embedder import Embedder

    channels = change.pop("channels", 3)
    path = tiny_model(tmp_path / "m.onnx", channels=channels, **change)
    with pytest.raises(S2SDError, match=re.escape(message)) as error:
        Embedder(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_dimensions_the_graph_leaves_open_are_checked_when_it_runs(tmp_path):
    """A graph whose output size depends on the input's (Flatten of [batch, 3, h, w]) promises no dimension: the
    metadata's is checked on what it returns."""
    import onnx
    from onnx import TensorProto, helper

    from s2sd_deploy.errors import S2SDError
    from s2sd_deploy.serving.embedder import Embedder

    reference = onnx.load(str(tiny_model(tmp_path / "ok.onnx")))
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["embeddings"])],
        "flat",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", "d"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.extend(p for p in reference.metadata_props if not p.key.startswith("teacher"))
    onnx.save(model, str(tmp_path / "flat.onnx"))
    embedder = Embedder(tmp_path / "flat.onnx")  # embedding_dim 4; the graph gives 3 x 8 x 8
    with pytest.raises(
        S2SDError, match=re.escape("output 'embeddings' has shape [2, 192] but its metadata promises (2, 4)")
    ):
        embedder.embed(np.zeros((2, 8, 8, 3), np.uint8))


def test_a_graph_that_returns_nan_never_yields_nan_embeddings(tmp_path):
    from s2sd_deploy.errors import S2SDError
    from s2sd_deploy.serving.embedder import Embedder

    embedder = Embedder(tiny_model(tmp_path / "m.onnx", nan=True))
    with pytest.raises(S2SDError, match="output 'embeddings' is NaN or infinite for 3 of 3 images"):
        embedder.embed(np.zeros((3, 8, 8, 3), np.uint8))
