"""``s2sd embed``: image files/folders -> embeddings .npz through onnxruntime."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from tqdm.auto import tqdm

from ..errors import S2SDError


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        k, n = (int(part) for part in value.split("/"))
    except ValueError:
        raise S2SDError(f"--shard takes K/N with whole numbers, e.g. 3/8; got {value!r}") from None
    return k, n


def embed(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders.", show_default=False)],
    model: Annotated[Path, typer.Option(help="Exported model.onnx (from `s2sd export`).", show_default=False)],
    out: Annotated[
        Path,
        typer.Option(
            help="Output .npz: `embeddings` (N, d) float32, `paths` (N,), `skipped`, `run_id`, `format`. A file "
            "`s2sd embed` wrote is replaced only with --force; any other file never.",
            show_default=False,
        ),
    ],
    shard: Annotated[
        Optional[str], typer.Option(help="K/N: embed only the K-th of N slices.", show_default="all")
    ] = None,
    skip_bad_images: Annotated[
        bool,
        typer.Option(
            "--skip-bad-images", help="Skip files that do not decode (listed in the output) instead of stopping."
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Images per model call.", min=1)] = 32,
    workers: Annotated[int, typer.Option(help="Threads decoding images ahead of the model.", min=1)] = 4,
    threads: Annotated[
        Optional[int], typer.Option(help="onnxruntime intra-op threads.", min=1, show_default="onnxruntime's choice")
    ] = None,
    provider: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Execution provider(s) in order, e.g. CPUExecutionProvider.",
            show_default="TensorRT, CUDA, CPU as available",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an .npz that s2sd embed wrote before.")] = False,
) -> None:
    from ..atomic_files import check_free_space
    from ..errors import Interrupted
    from ..output_folders import claim_output_file
    from ..serving.embedder import Embedder, embed_files, embeddings_bytes, is_embeddings_file, save_embeddings
    from ..serving.images import list_images, shard_of

    claim_output_file(out, "--out", what="embeddings written by s2sd embed", is_ours=is_embeddings_file, force=force)
    embedder = Embedder(model, providers=provider, threads=threads, batch_size=batch_size)
    paths = shard_of(list_images(inputs), parse_shard(shard))
    check_free_space(out.parent, embeddings_bytes(len(paths), embedder.dim, paths), "--out", "the embeddings")
    started = time.perf_counter()
    try:
        with tqdm(total=len(paths), unit="img", desc="embedding") as bar:
            result = embed_files(embedder, paths, workers, skip_bad_images, progress=bar.update)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted: nothing was written to {out}; rerun the same command to embed the {len(paths)} images "
            f"(use --shard K/N to split a long job)"
        ) from None
    seconds = time.perf_counter() - started
    save_embeddings(out, result, embedder.metadata)
    for path, why in result.skipped:
        typer.echo(f"skipped {path}: {why}", err=True)
    rate = len(paths) / seconds if seconds > 0 else float("nan")
    skipped = f", skipped {len(result.skipped)} that did not decode" if result.skipped else ""
    typer.echo(
        f"embedded {len(result.paths)} images ({embedder.dim}-d){skipped} on {embedder.provider} at {rate:.1f} "
        f"images/s -> {out}"
    )


def register(app: typer.Typer) -> None:
    app.command(
        help="Embed image files and folders with an exported model; write the embeddings with their paths (.npz).\n\n"
        "Folders are searched recursively; files are sorted so every machine sees the same order. --shard K/N embeds "
        "the K-th of N contiguous slices (K from 1), so N cluster jobs split a collection and their outputs, "
        "concatenated in K order, equal the single-machine result.\n\n"
        "Examples:\n\n"
        "  s2sd embed photos/ --model runs/RUN/export/model.onnx --out "
        "photos.npz\n\n"
        "  s2sd embed photos/ --model model.onnx --out photos.npz --force      # replace the earlier photos.npz\n\n"
        "  s2sd embed /data/catalog --model model.onnx --out part-$SLURM_ARRAY_TASK_ID.npz --shard "
        "$SLURM_ARRAY_TASK_ID/64",
    )(embed)
