"""``s2sd export``: flags -> ExportConfig -> :func:`s2sd_deploy.deploy.export.export_run`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..deploy.config import ExportConfig

DEFAULTS = ExportConfig(run="")  # the one source of the defaults below


def export(
    run: Annotated[Path, typer.Argument(help="Run directory written by `s2sd train`.", show_default=False)],
    engine: Annotated[
        str, typer.Option(help="onnx, or trt to also build a TensorRT engine (NVIDIA GPU + tensorrt).")
    ] = DEFAULTS.engine,
    out: Annotated[
        Optional[Path],
        typer.Option(
            help="Output folder: new, empty, or an earlier export (replaced only with --force).",
            show_default="RUN/export",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the earlier export in --out (never a folder of other files).")
    ] = DEFAULTS.force,
    checkpoint: Annotated[
        str,
        typer.Option(
            help="shipped (chosen by training without the test classes: the best validation epoch with "
            "--validation-classes, else the last), best, last, or a checkpoint file of the run."
        ),
    ] = DEFAULTS.checkpoint,
    opset: Annotated[int, typer.Option(help="ONNX opset (17 or newer).")] = DEFAULTS.opset,
    batch_min: Annotated[int, typer.Option(help="TensorRT profile: smallest batch.", min=1)] = DEFAULTS.batch_min,
    batch_opt: Annotated[
        int, typer.Option(help="TensorRT profile: batch the engine is tuned for.", min=1)
    ] = DEFAULTS.batch_opt,
    batch_max: Annotated[
        int, typer.Option(help="TensorRT profile: largest batch (also Triton's max_batch_size).", min=1)
    ] = DEFAULTS.batch_max,
    precision: Annotated[
        str, typer.Option(help="fp32 or fp16 (TensorRT engine; the ONNX stays fp32).")
    ] = DEFAULTS.precision,
    workspace_mb: Annotated[
        int, typer.Option(help="TensorRT builder workspace limit in MiB.", min=1)
    ] = DEFAULTS.workspace_mb,
    with_teacher: Annotated[
        bool,
        typer.Option(
            "--with-teacher", help="Also export the largest teacher as output `teacher_embeddings`, for re-ranking."
        ),
    ] = DEFAULTS.with_teacher,
    triton: Annotated[
        bool, typer.Option("--triton", help="Also write a Triton Inference Server model repository (OUT/triton).")
    ] = DEFAULTS.triton,
    verify_limit: Annotated[
        Optional[int],
        typer.Option(help="Verify on the first N test images only.", min=2, show_default="the whole test split"),
    ] = DEFAULTS.verify_limit,
) -> None:
    cfg = ExportConfig(
        run=str(run),
        engine=engine,
        out=str(out) if out else None,
        checkpoint=checkpoint,
        opset=opset,
        batch_min=batch_min,
        batch_opt=batch_opt,
        batch_max=batch_max,
        precision=precision,
        with_teacher=with_teacher,
        triton=triton,
        workspace_mb=workspace_mb,
        verify_limit=verify_limit,
        force=force,
    )
    cfg.validate()  # before the heavy imports
    from ..deploy.export import export_run
    from ..errors import Interrupted

    try:
        report = export_run(cfg)
    except KeyboardInterrupt:
        where = cfg.out or f"{run}/export"
        raise Interrupted(
            f"interrupted: {where} is unchanged (the previous export, if any, is whole); rerun the same "
            f"s2sd export to export again"
        ) from None
    selection = report["checkpoint"]
    typer.echo(f"exported {selection['checkpoint']} (epoch {selection.get('epoch')}): {selection['rule']}")
    for name, figures in report["parity"].items():
        typer.echo(
            f"{name}: max |diff| {figures['max_abs_diff']:.2e}, min cosine {figures['min_cosine']:.7f}, "
            f"Recall@1 torch {figures['recall@1_torch']:.4f} = onnxruntime {figures['recall@1_onnxruntime']:.4f} "
            f"on {figures['images']} test images"
        )
    typer.echo(f"wrote {report['onnx']} ({report['onnx_bytes'] / 2**20:.1f} MiB)")
    for key in ("triton", "tensorrt"):
        if key in report:
            typer.echo(f"wrote {report[key] if key == 'triton' else report[key]['engine']}")


def register(app: typer.Typer) -> None:
    app.command(
        help="Export a run's student (no teachers) to ONNX, verify it against PyTorch, optionally build a "
        "TensorRT engine.\n\n"
        "Writes model.onnx, export_report.json (parity figures) and, with --engine trt on an NVIDIA GPU, model.engine "
        "with a JSON sidecar. Without TensorRT or a GPU the verified ONNX is still written and the command exits 3. "
        "Everything is written and verified beside --out and swapped in whole, so an interrupted export leaves the "
        "previous export intact; an earlier export is replaced only with --force.\n\n"
        "Examples:\n\n"
        "  s2sd export runs/glyphs-msdfa-20261125-101500\n\n"
        "  s2sd export runs/glyphs-msdfa-20261125-101500 --force      # export it again, replacing RUN/export\n\n"
        "  s2sd export RUN --engine trt --precision fp16 --batch-opt 64 --batch-max 256\n\n"
        "  s2sd export RUN --with-teacher --triton --out deploy/",
    )(export)
