"""``s2sd eval``: Recall@k, mAP@R and NMI of an exported model on a user's own labelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import int_list


def evaluate(
    model: Annotated[Path, typer.Argument(help="Exported model.onnx.")],
    data_root: Annotated[
        Optional[Path],
        typer.Option(help="One folder per class; every image queries all the others.", show_default=False),
    ] = None,
    query_root: Annotated[
        Optional[Path], typer.Option(help="Query images, one folder per class.", show_default=False)
    ] = None,
    gallery_root: Annotated[
        Optional[Path], typer.Option(help="Gallery images, class folders named as the queries'.", show_default=False)
    ] = None,
    recall_ks: Annotated[str, typer.Option(help="k of Recall@k, comma-separated.")] = "1,2,4,8",
    rerank: Annotated[str, typer.Option(help="Cascade shortlists K to evaluate, comma-separated.")] = "50",
    skip_bad_images: Annotated[bool, typer.Option("--skip-bad-images", help="Skip files that do not decode.")] = False,
    out: Annotated[
        Optional[Path],
        typer.Option(
            help="Also write the results as JSON (a file s2sd eval wrote is replaced only with --force).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a results file s2sd eval wrote before.")] = False,
) -> None:
    from ..atomic_files import write_json_atomic
    from ..errors import Interrupted
    from ..output_folders import claim_output_file
    from ..serving.evaluate import evaluate as run_evaluation
    from ..serving.evaluate import is_results_file
    from ..tables import print_table

    if out is not None:
        claim_output_file(out, "--out", what="results written by s2sd eval", is_ours=is_results_file, force=force)
    ks = int_list(recall_ks, "--recall-ks")
    try:
        results = run_evaluation(
            model, data_root, query_root, gallery_root, ks, int_list(rerank, "--rerank"), skip_bad_images
        )
    except KeyboardInterrupt:
        raise Interrupted("interrupted: nothing was written; rerun the same s2sd eval to evaluate again") from None
    keys = sorted({key for metrics in results["heads"].values() for key in metrics})
    rows = [
        [name, *[f"{metrics[key]:.4f}" if key in metrics else "" for key in keys]]
        for name, metrics in results["heads"].items()
    ]
    title = f"{results['images']} images ({results['queries']} queries), model {results['run_id']}"
    print_table(title, ["head", *keys], rows)
    for note in results["notes"]:
        typer.echo(f"note: {note}")
    if out is not None:
        write_json_atomic(out, results)
        typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command(
        "eval",
        help="Evaluate an exported model on your own labelled images: Recall@k, mAP@R and NMI of the "
        "student, the teacher output and the cascade.\n\nExamples:\n\n"
        "  s2sd eval model.onnx --data-root my-labelled-photos/\n\n"
        "  s2sd eval model.onnx --query-root queries/ --gallery-root gallery/ --rerank 20,50",
    )(evaluate)
