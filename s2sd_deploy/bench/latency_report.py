"""Writing what ``s2sd bench-latency`` measured: results.json, results.md, PNG plots, a console table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic_files import write_text_atomic
from ..plots import pyplot, save_figure
from ..tables import markdown_table, print_table
from ..timing import NOISE_LIMIT

MARK = "*"  # after a figure that cannot be trusted: its repeats spread too far (another process competed)
LEGEND = (
    f"{MARK} not to be trusted: the repeats of this figure (or of one it is a ratio of) spread by more than "
    f"{NOISE_LIMIT:.0%} ((p90 - p10) / median), or too few were taken; another process probably competed for the "
    f"cores. Rerun on a quiet machine."
)


def marked(text: str, row: dict) -> str:
    """``text`` with :data:`MARK` when the measurement behind it was noisy."""
    return f"{text}{MARK}" if row.get("noisy") else text


def untrusted_count(results: dict) -> tuple[int, int]:
    """(noisy, all) timed rows of the results."""
    rows = [*results.get("retrieval", []), *results.get("cascade_latency", []), *results.get("encoder", [])]
    return sum(bool(r.get("noisy")) for r in rows), len(rows)


def _plain(value):
    """numpy scalars -> Python numbers, for JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def headline_rows(results: dict) -> list[list[str]]:
    """Exact search at the largest gallery: cost ratio against the student, measured vs theory."""
    contrast = results.get("contrast", [])
    largest = max((c["gallery"] for c in contrast), default=None)
    rows = []
    for c in contrast:
        if c["gallery"] == largest:
            ratio = f"{c['measured_ratio']:.1f}x" if c["measured_ratio"] else "-"
            rows.append(
                [
                    f"{c['gallery']:,}",
                    str(c["batch"]),
                    str(c["dim"]),
                    c["kernel"],
                    marked(f"{c['p50_ms']:.2f}", c),
                    marked(ratio, c),
                    f"{c['theoretical_ratio']:.0f}x",
                    f"{c['bandwidth_share']:.0%}" if c["bandwidth_share"] is not None else "-",
                    f"{c['gemm_share']:.0%}",
                ]
            )
    return rows


HEADLINE = ["gallery", "batch", "dim", "kernel", "p50 ms", "cost vs student", "theory", "of read speed", "of GEMM peak"]


def markdown(results: dict) -> str:
    lines = [
        f"# bench-latency results ({results['retrieval'][0]['data'] if results.get('retrieval') else 'no data'})",
        "",
    ]
    lines += [f"Command: `{results.get('command', 's2sd bench-latency')}`", ""]
    load = results.get("load_average") or {}
    if load:
        before, after = load.get("before"), load.get("after")
        lines += [
            f"Load average (1 minute) before / after the run: {before if before is None else f'{before:.2f}'} / "
            f"{after if after is None else f'{after:.2f}'} on {load.get('cores')} cores"
            + (
                " — **the machine was busy before the run: these timings are not this machine's**"
                if load.get("busy")
                else ""
            )
            + ".",
            "",
        ]
    noisy_rows, all_rows = untrusted_count(results)
    if noisy_rows:
        lines += [f"**{noisy_rows} of {all_rows} timed rows are marked {MARK}.** {LEGEND}", ""]
    machine, limits = results["machine"], results.get("machine_limits", {})
    lines += [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB; measured "
        f"{limits.get('memory_bandwidth_gbs', float('nan')):.1f} GB/s read bandwidth, "
        f"{limits.get('gemm_gflops', float('nan')):.0f} GFLOP/s fp32 GEMM ({limits.get('how', '')}; by library: "
        f"{json.dumps(limits.get('bandwidth_by_library_gbs', {}))} GB/s, "
        f"{json.dumps(limits.get('gemm_by_library_and_shape_gflops', {}))} GFLOP/s). 'Of read speed': the "
        "search's bytes per second against the fastest plain matrix-vector product (numpy, torch; all threads) over "
        "the same gallery, measured in the same run, so a gallery that sits partly in the caches is held to the "
        "speed it is actually read at.",
        "",
    ]
    if results.get("config", {}).get("device") == "gpu":
        lines += [
            f"Device: GPU {machine.get('cuda')}: the limits above, each gallery's read speed and the exact searches "
            "were measured on it with torch's CUDA kernels (synchronised); the galleries are generated on the CPU.",
            "",
        ]

    lines += [
        "## Exact search, largest gallery (synthetic unit-norm vectors)",
        "",
        markdown_table(HEADLINE, headline_rows(results)),
        "",
    ]
    retrieval = results.get("retrieval", [])
    if retrieval:
        header = [
            "gallery",
            "dim",
            "batch",
            "index",
            "kernel",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "QPS",
            "build s",
            "MiB",
            "recall@10 vs exact",
        ]
        rows = [
            [
                f"{r['gallery']:,}",
                str(r["dim"]),
                str(r["batch"]),
                r["index"],
                r["kernel"],
                marked(f"{r['p50_ms']:.2f}", r),
                f"{r['p95_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['qps']:.0f}",
                f"{r['build_s']:.1f}",
                f"{r['index_bytes'] / 2**20:.1f}",
                f"{r['recall@10_vs_exact']:.3f}",
            ]
            for r in retrieval
        ]
        lines += ["## Every regime (synthetic unit-norm vectors)", "", markdown_table(header, rows), ""]
    cascade = results.get("cascade_latency", [])
    if cascade:
        rows = [
            [
                f"{r['gallery']:,}",
                str(r["batch"]),
                r["method"],
                r.get("kernel", ""),
                marked(f"{r['p50_ms']:.2f}", r),
                marked(f"{r['vs_student']:.2f}x", r),
            ]
            for r in cascade
        ]
        lines += [
            f"## Cascade latency: {results['student_dim']}-d shortlist re-ranked at {max(results['dims'])}-d "
            "(synthetic)",
            "",
            "Each search uses the fastest exact kernel of its regime; the cascade's shortlist uses the student's "
            "and re-ranks with faiss in one thread. Student and cascades were timed in turn, round after round.",
            "",
            markdown_table(["gallery", "batch", "method", "kernel", "p50 ms", "vs student"], rows),
            "",
        ]
    accuracy = results.get("accuracy")
    if accuracy:
        keys = sorted({k for v in accuracy["heads"].values() for k in v})
        rows = [
            [name] + [f"{values[k]:.4f}" if k in values else "" for k in keys]
            for name, values in accuracy["heads"].items()
        ]
        lines += [
            f"## What each dimension buys: {accuracy['dataset']} test split ({accuracy['test_images']} images, "
            f"run `{accuracy['run']}`)",
            "",
            markdown_table(["head"] + keys, rows),
            "",
        ]
    encoder = results.get("encoder", [])
    if encoder:
        rows = [
            [
                r["model"],
                str(r["image_size"]),
                str(r["batch"]),
                r["backend"],
                marked(f"{r['torch_ms_per_batch']:.2f}", r),
                marked(f"{r['onnx_ms_per_batch']:.2f}", r),
                f"{r['onnx_images_per_s']:.0f}",
                marked(f"{r['speedup']:.2f}x", r),
                f"{r['max_abs_diff']:.1e}",
            ]
            for r in encoder
        ]
        lines += [
            "## Encoder cost (random input)",
            "",
            markdown_table(
                [
                    "model",
                    "px",
                    "batch",
                    "onnxruntime provider",
                    "torch ms",
                    "onnxruntime ms",
                    "onnxruntime img/s",
                    "speedup",
                    "max abs diff",
                ],
                rows,
            ),
            "",
        ]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in results["notes"]] + [""]
    return "\n".join(lines)


def plot_latency(results: dict, path: Path) -> None:
    """Exact-search p50 latency against gallery size, one line per dimension, per batch (log-log)."""
    plt = pyplot()
    batches = sorted({r["batch"] for r in results.get("retrieval", [])})
    figure, axes = plt.subplots(1, max(1, len(batches)), figsize=(5 * max(1, len(batches)), 4), squeeze=False)
    for axis, batch in zip(axes[0], batches):
        for dim in results["dims"]:
            points = sorted(
                (r["gallery"], r["p50_ms"])
                for r in results["retrieval"]
                if r["index"] == "flat" and r["batch"] == batch and r["dim"] == dim
            )
            if points:
                axis.loglog(*zip(*points), marker="o", label=f"{dim}-d")
        axis.set(
            xlabel="gallery size (synthetic)", ylabel="p50 latency per batch, ms", title=f"exact search, batch {batch}"
        )
        axis.legend()
    save_figure(figure, path)


def plot_recall_vs_latency(results: dict, path: Path) -> None:
    """Recall@1 of each head on the run against its exact-search latency at batch 1 (largest synthetic gallery)."""
    accuracy = results.get("accuracy")
    if not accuracy:
        return
    plt = pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    largest = max(r["gallery"] for r in results["retrieval"])
    latency = {
        r["dim"]: r["p50_ms"]
        for r in results["retrieval"]
        if r["index"] == "flat" and r["batch"] == 1 and r["gallery"] == largest
    }
    # The cascade is placed at the student's latency times its measured ratio to the student: both were
    # timed in turn, so the ratio is the robust figure; its own p50 comes from another moment of the run.
    student_ms = latency.get(results["student_dim"])
    cascade = {
        r["method"]: student_ms * r["vs_student"]
        for r in results.get("cascade_latency", [])
        if r["batch"] == 1 and r["gallery"] == largest and student_ms is not None
    }
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, values in accuracy["heads"].items():
        dim = int(name.split("-")[1].split(">")[0].split("@")[0]) if not name.startswith("cascade") else None
        ms = latency.get(dim) if dim else cascade.get(f"cascade@{name.rsplit('@', 1)[1]}")
        if ms is not None:
            axis.scatter(ms, values["recall@1"], marker="*" if dim is None else "o", s=80)
            below = dim is None and name.endswith("@100")  # the two cascades often share a point
            axis.annotate(
                name, (ms, values["recall@1"]), xytext=(5, -10 if below else 3), textcoords="offset points", fontsize=8
            )
    axis.set(
        xscale="log",
        xlabel=f"p50 latency at batch 1, ms (N={largest:,}, synthetic)",
        ylabel=f"Recall@1 ({accuracy['dataset']})",
        title="what each dimension buys, and the cascade",
    )
    low, high = axis.get_xlim()  # a log axis spanning one decade gets overlapping minor labels: label 1-2-5
    axis.set_xticks([t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if low <= t <= high])
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.xaxis.set_major_formatter(ScalarFormatter())
    save_figure(figure, path)


def write_results(results: dict, out: Path) -> dict[str, Path]:
    """results.json, results.md and the plots in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    plain = _plain(results)
    paths = {
        "json": out / "results.json",
        "md": out / "results.md",
        "latency_png": out / "latency_vs_gallery.png",
        "recall_png": out / "recall_vs_latency.png",
    }
    write_text_atomic(paths["json"], json.dumps(plain, indent=1) + "\n")
    write_text_atomic(paths["md"], markdown(plain))
    for stale in (paths["latency_png"], paths["recall_png"]):  # an earlier run's plots (--force) must not remain
        stale.unlink(missing_ok=True)
    if plain.get("retrieval"):
        plot_latency(plain, paths["latency_png"])
        plot_recall_vs_latency(plain, paths["recall_png"])
    return {k: p for k, p in paths.items() if p.exists()}


CONSOLE_HEADLINE = ["N", "batch", "d", "p50 ms", "vs student", "theory", "% read", "% of GEMM"]


def print_headline(results: dict) -> None:
    """The headline on the console, narrow enough for 80 columns (the kernel is in results.md), with the figures
    that cannot be trusted marked and said so."""
    rows = [row[:3] + row[4:] for row in headline_rows(_plain(results))]
    print_table("exact search, largest gallery (synthetic unit-norm vectors)", CONSOLE_HEADLINE, rows)
    noisy_rows, all_rows = untrusted_count(results)
    if noisy_rows:
        print(f"{noisy_rows} of {all_rows} timed rows marked {MARK} (see results.md). {LEGEND}")
