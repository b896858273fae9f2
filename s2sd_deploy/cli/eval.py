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
    out: Annotated[Optional[Path], typer.Option(help="Also write the results as JSON.", show_default=False)] = None,
) -> None:
    from ..atomic_files import check_output_file, write_json_atomic
    from ..serving.evaluate import evaluate as run_evaluation
    from ..tables import print_table

    if out is not None:
        check_output_file(out, "--out")
    ks = int_list(recall_ks, "--recall-ks")
    results = run_evaluation(
        model, data_root, query_root, gallery_root, ks, int_list(rerank, "--rerank"), skip_bad_images
    )
    keys = sorted({key for metrics in results["heads"].values() for key in metrics})
    rows = [
        [name, *[f"{metrics[key]:.4f}" if key in metrics else "" for key in keys]]
        for name, metrics in results["heads"].items()
    ]
    print_table(f"{results['images']} images, model {results['run_id']}", ["head", *keys], rows)
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
