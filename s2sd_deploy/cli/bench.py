"""``s2sd bench-latency``: flags -> BenchConfig -> :func:`s2sd_deploy.bench.latency.run_benchmark`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..bench.config import BenchConfig
from .options import int_list

DEFAULTS = BenchConfig()  # the one source of the defaults below


def joined(values: list) -> str:
    return ",".join(map(str, values))


def bench_latency(
    run: Annotated[
        Optional[Path],
        typer.Option(
            help="Run directory for the accuracy and encoder parts.",
            show_default="the newest finished run under runs/ with teachers",
        ),
    ] = None,
    model: Annotated[
        Optional[Path],
        typer.Option(
            help="Exported model.onnx (its run is used for accuracy when --run is not given).", show_default=False
        ),
    ] = None,
    dims: Annotated[
        Optional[str],
        typer.Option(help="Embedding dimensions, comma-separated.", show_default="the student's d, 512, 1024, 2048"),
    ] = None,
    gallery_sizes: Annotated[str, typer.Option(help="Gallery sizes, comma-separated.")] = joined(
        DEFAULTS.gallery_sizes
    ),
    large: Annotated[bool, typer.Option("--large", help="Add a gallery of 1e6 vectors.")] = DEFAULTS.large,
    query_batch: Annotated[str, typer.Option(help="Query batch sizes, comma-separated.")] = joined(
        DEFAULTS.query_batches
    ),
    index: Annotated[str, typer.Option(help="flat (exact) and approximate indexes: hnsw, ivfpq.")] = joined(
        DEFAULTS.indexes
    ),
    device: Annotated[str, typer.Option(help="cpu, or gpu (faiss-gpu and CUDA).")] = DEFAULTS.device,
    out: Annotated[
        Path,
        typer.Option(
            help="Folder for results.json, results.md and the plots: new, empty, or earlier results (with --force)."
        ),
    ] = Path(DEFAULTS.out),
    force: Annotated[
        bool, typer.Option("--force", help="Replace earlier results in --out (never a folder of other files).")
    ] = DEFAULTS.force,
    max_seconds: Annotated[
        float, typer.Option(help="Time budget; later measurements are skipped and noted.")
    ] = DEFAULTS.max_seconds,
    no_encoder: Annotated[bool, typer.Option("--no-encoder", help="Skip the encoder-cost part.")] = False,
) -> None:
    cfg = BenchConfig(
        run=str(run) if run else _run_of_model(model),
        dims=int_list(dims, "--dims"),
        gallery_sizes=int_list(gallery_sizes, "--gallery-sizes"),
        large=large,
        query_batches=int_list(query_batch, "--query-batch"),
        indexes=[i for i in index.split(",") if i],
        device=device,
        out=str(out),
        max_seconds=max_seconds,
        encoder=not no_encoder,
        force=force,
    )
    cfg.validate()  # before the heavy imports
    from ..bench.latency import run_benchmark
    from ..bench.latency_report import print_headline, write_results
    from ..errors import Interrupted

    try:
        results = run_benchmark(cfg, progress=lambda message: typer.echo(message, err=True))
        results["command"] = "s2sd " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        paths = write_results(results, out)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted before anything was measured or written; rerun the same command (add --force if {out} "
            f"already holds results)"
        ) from None
    print_headline(results)
    for note in results["notes"]:
        typer.echo(f"note: {note}")
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))
    if results["interrupted"]:
        raise Interrupted(
            f"interrupted: what was measured before Ctrl-C is in {out} (marked interrupted); rerun the same "
            f"command with --force for every figure"
        )


def _run_of_model(model: Path | None) -> str | None:
    """The run an exported model came from, when it sits in RUN/export/."""
    if model and (model.parent.parent / "config.json").is_file():
        return str(model.parent.parent)
    return None


def register(app: typer.Typer) -> None:
    app.command(
        "bench-latency",
        help="Measure what retrieval costs with low- vs high-dimensional embeddings, what each dimension buys, "
        "and what the encoder costs per backend.\n\n"
        "The cost part runs on synthetic unit-norm vectors; the accuracy part on --run (default: the newest finished "
        "run under runs/ with teacher heads, said at the start). With no arguments it finishes within about 3 minutes "
        "on 2 cores. Every timing carries its own noise (the spread between its repeats, and the load average before "
        "and after); figures too noisy to trust are marked * in the table, results.json and results.md.\n\n"
        "Examples:\n\n"
        "  s2sd bench-latency\n\n"
        "  s2sd bench-latency --run runs/RUN --out bench/results/latency-RUN\n\n"
        "  s2sd bench-latency --dims 128,2048 --gallery-sizes 100000 --query-batch 1,64 --index "
        "flat,hnsw,ivfpq --large",
    )(bench_latency)
