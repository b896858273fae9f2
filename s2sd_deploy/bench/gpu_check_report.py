"""What the GPU check's figures say (its verdicts against the recorded CPU reference) and gpu_check.md."""

from __future__ import annotations

import json
from collections import Counter

from ..tables import markdown_table

# A CUDA run of the same configuration and seed is not bit-identical to a CPU run (other kernels and summation
# orders, cuDNN's TF32 convolutions), so its figures are compared within bounds. Measured on the CPU
# (bench/results/gpu_check_cpu_reference.json): torch 2.11 on Python 3.12 and torch 2.14.1 on Python 3.11 train
# bit-identically with one thread, while one thread against two moves the second epoch's Recall@1 by 0.048 and its
# loss by 0.2%. The bounds leave a GPU's kernels a little more than that; outside them it trains differently.
RECALL_TOLERANCE = 0.06  # Recall@1, absolute
LOSS_TOLERANCE = 0.03  # loss of the last epoch, relative


def verdicts(results: dict, reference: dict) -> dict:
    """Step counts, training against the CPU reference, and torchrun's epoch against the single process's."""
    steps = {s["name"]: s for s in results.get("steps", [])}
    environment = figures_of(steps, "environment")
    return {
        "counts": dict(Counter(s["status"] for s in steps.values())),
        "training": training_rows(steps, reference, environment, results.get("config", {}).get("quick", False)),
        "ddp_vs_single_process": ddp_against_single(steps),
    }


def figures_of(steps: dict, prefix: str) -> dict:
    return next((s.get("figures", {}) for name, s in steps.items() if name.startswith(prefix)), {})


def pick_reference(reference: dict, environment: dict) -> dict | None:
    """The CPU reference recorded under the same Python and torch, else the first recorded."""
    entries = reference.get("references", [])
    same = [
        e
        for e in entries
        if e["environment"].get("torch") == environment.get("torch", {}).get("version", "").split("+")[0]
        and e["environment"].get("python", "").rsplit(".", 1)[0] == environment.get("python", "").rsplit(".", 1)[0]
    ]
    return (same or entries or [None])[0]


def training_rows(steps: dict, reference: dict, environment: dict, quick: bool) -> list[dict]:
    """Each training step's Recall@1 and loss beside the reference's at the same epoch."""
    entry = None if quick else pick_reference(reference, environment)
    rows = []
    for name, step in steps.items():
        figures = step.get("figures", {})
        if "loss_by_epoch" not in figures or not figures["loss_by_epoch"]:
            continue
        epoch = len(figures["loss_by_epoch"])
        row = {
            "step": name,
            "device": figures.get("device"),
            "epochs": epoch,
            "recall@1": figures["recall@1"],
            "loss": figures["loss_by_epoch"][-1],
        }
        if entry and len(entry["figures"]["loss_by_epoch"]) >= epoch:
            row.update(compare(figures, entry, epoch))
        rows.append(row)
    return rows


def compare(figures: dict, entry: dict, epoch: int) -> dict:
    reference = entry["figures"]
    recall, loss = reference["recall@1_by_epoch"][epoch - 1], reference["loss_by_epoch"][epoch - 1]
    recall_delta = figures["recall@1"] - recall
    loss_delta = figures["loss_by_epoch"][-1] / loss - 1
    same_data = figures.get("dataset_fingerprint") == reference.get("dataset_fingerprint")
    return {
        "reference": f"CPU, Python {entry['environment']['python']}, torch {entry['environment']['torch']}",
        "reference_recall@1": recall,
        "reference_loss": loss,
        "recall_delta": recall_delta,
        "loss_delta_relative": loss_delta,
        "same_dataset": same_data,
        "consistent": same_data and abs(recall_delta) <= RECALL_TOLERANCE and abs(loss_delta) <= LOSS_TOLERANCE,
    }


def ddp_against_single(steps: dict) -> dict | None:
    """torchrun with one process trains the same batches as the plain run's first epoch: on a CPU the losses are
    equal to the last bit; on a GPU they differ by its kernels' nondeterminism."""
    ddp, single = figures_of(steps, "torchrun"), figures_of(steps, "train fp32")
    if not ddp.get("loss_by_epoch") or not single.get("loss_by_epoch"):
        return None
    return {
        "backend": ddp.get("distributed_backend"),
        "world_size": ddp.get("world_size"),
        "epoch_1_loss": ddp["loss_by_epoch"][0],
        "single_process_epoch_1_loss": single["loss_by_epoch"][0],
        "identical": ddp["loss_by_epoch"][0] == single["loss_by_epoch"][0],
    }


# --- gpu_check.md -------------------------------------------------------------------------------
def markdown(results: dict) -> str:
    checks = results.get("checks", {})
    steps = {s["name"]: s for s in results["steps"]}
    counts = ", ".join(f"{n} {status}" for status, n in sorted(checks.get("counts", {}).items()))
    lines = [
        f"# s2sd GPU check on {results['device'].upper()}",
        "",
        f"`bench/gpu_check.sh {results['config']['out']} --device {results['config']['device']}"
        + (" --quick" if results["config"]["quick"] else "")
        + ("" if results["config"]["install"] else " --no-install")
        + f"` on {results.get('host')}, {results['started']}: {counts or 'no step run'}; "
        f"{results.get('wall_s', 0):.0f} s of the {results['config']['budget_s']:.0f} s budget "
        f"({results['device_reason']})." + (" **Interrupted.**" if results.get("interrupted") else ""),
        "",
    ]
    lines += machine_lines(figures_of(steps, "environment"))
    lines += ["## Steps", "", markdown_table(["#", "step", "status", "s", "result"], step_rows(results)), ""]
    lines += training_lines(checks)
    lines += latency_lines(figures_of(steps, "bench-latency"))
    lines += provider_lines(figures_of(steps, "Embedder"))
    lines += ["## Commands", ""]
    lines += [
        f"{i}. `{s['command']}`" + (f" (log: {s['log']})" if s.get("log") else "")
        for i, s in enumerate(steps.values(), 1)
    ]
    return "\n".join(lines) + "\n"


def machine_lines(environment: dict) -> list[str]:
    if not environment:
        return ["The environment step did not report.", ""]
    torch, gpu, versions = environment["torch"], environment.get("gpu"), environment["versions"]
    described = [
        f"GPU: {gpu['name']}, {gpu['memory_gib']} GiB, compute capability {gpu['capability']}"
        + (f" (nvidia-smi: {gpu['nvidia_smi']})" if gpu.get("nvidia_smi") else "")
        if gpu
        else "GPU: none that torch sees",
        f"CPU: {environment['cpu']}, {environment['cores']} cores; {environment['platform']}",
        f"Python {environment['python']}, torch {torch['version']} (CUDA {torch['cuda']}, cuDNN {torch['cudnn']}, "
        f"NCCL {torch.get('nccl')}; float32 matmul precision {torch['float32_matmul_precision']}, cuDNN TF32 "
        f"{torch['cudnn_allow_tf32']})",
        "versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if k != "torch"),
        "absent: " + (", ".join(environment["absent_packages"]) or "none"),
        f"onnxruntime providers: {environment['onnxruntime_providers']}; GPUs faiss sees: {environment['faiss_gpus']}",
        "differs from the pinned versions: " + ("; ".join(environment["differs_from_pinned"]) or "nothing"),
        "torch APIs the product calls: "
        + (
            "; ".join(f"{name}: {state}" for name, state in environment["torch_api"].items() if state != "ok")
            or f"all {len(environment['torch_api'])} present"
        ),
    ]
    return [f"- {line}" for line in described] + [""]


def step_rows(results: dict) -> list[list[str]]:
    rows = []
    for number, step in enumerate(results["steps"], 1):
        status = step["status"] if step["status"] == "ok" else f"**{step['status']}**"
        seconds = f"{step['seconds']:.1f}" if "seconds" in step else "-"
        rows.append([str(number), step["name"], status, seconds, step_result(step)])
    return rows


def step_result(step: dict) -> str:
    """One cell: the step's headline figure, or why it did not run."""
    figures = step.get("figures")
    if step["status"] != "ok" or not figures:
        return step.get("reason", "").replace("|", "/")
    if "loss_by_epoch" in figures:
        extra = (
            f", {figures['distributed_backend']} x{figures['world_size']}" if figures.get("distributed_backend") else ""
        )
        untrained = figures.get("recall@1_untrained")
        return (
            f"Recall@1 {figures['recall@1']:.4f}"
            + (f" (untrained {untrained:.4f})" if untrained is not None else "")
            + f", last loss {figures['loss_by_epoch'][-1]:.4f}, on {figures['device']}{extra}, "
            f"{figures['train_wall_time_s']:.0f} s"
        )
    if "parity" in figures:
        return "; ".join(
            f"{name}: max abs diff {p['max_abs_diff']:.1e}, min cosine {p['min_cosine']:.7f}, Recall@1 "
            f"{p['recall@1_torch']:.4f} = {p['recall@1_onnxruntime']:.4f} on {p['images']} images"
            for name, p in figures["parity"].items()
        )
    if "contrast" in figures:
        limits = figures["machine_limits"]
        return (
            f"{len(figures['contrast'])} exact regimes; limits {limits.get('memory_bandwidth_gbs', 0):.0f} GB/s, "
            f"{limits.get('gemm_gflops', 0):.0f} GFLOP/s fp32; " + " ".join(figures["notes"][:1])
        )
    if "providers" in figures:
        return ", ".join(
            f"{name.replace('ExecutionProvider', '')} {p['status']}" for name, p in figures["providers"].items()
        )
    if "site" in figures:
        return f"into {figures['site']}: the checkout" + "".join(f", {wheel}" for wheel in figures["wheels"])
    if "torch" in figures:
        return f"torch {figures['torch']['version']}, GPU {(figures.get('gpu') or {}).get('name', 'none')}"
    return json.dumps(figures)[:200]


def training_lines(checks: dict) -> list[str]:
    rows = checks.get("training", [])
    if not rows:
        return []
    lines = [
        "## Training against the CPU reference",
        "",
        f"Same configuration and seed (bench/results/gpu_check_cpu_reference.json); consistent means the same glyph "
        f"dataset, Recall@1 within {RECALL_TOLERANCE} and last-epoch loss within {LOSS_TOLERANCE:.0%}.",
        "",
    ]
    table = []
    for r in rows:
        if "reference_recall@1" in r:
            compared = [
                f"{r['reference_recall@1']:.4f}",
                f"{r['recall_delta']:+.4f}",
                f"{r['reference_loss']:.4f}",
                f"{r['loss_delta_relative']:+.1%}",
                "yes" if r["same_dataset"] else "**no**",
                "yes" if r["consistent"] else "**no**",
            ]
        else:
            compared = ["no reference for this configuration"] + [""] * 5
        table.append(
            [r["step"], r["device"], str(r["epochs"]), f"{r['recall@1']:.4f}", *compared[:2]]
            + [
                f"{r['loss']:.4f}",
                *compared[2:],
            ]
        )
    header = [
        "step",
        "device",
        "epochs",
        "Recall@1",
        "CPU ref",
        "delta",
        "loss",
        "CPU ref",
        "delta",
        "same data",
        "consistent",
    ]
    lines += [markdown_table(header, table), ""]
    ddp = checks.get("ddp_vs_single_process")
    if ddp:
        lines += [
            f"torchrun ({ddp['backend']}, {ddp['world_size']} process): epoch-1 loss {ddp['epoch_1_loss']!r} against "
            f"the single process's {ddp['single_process_epoch_1_loss']!r}: "
            + (
                "identical."
                if ddp["identical"]
                else "different (expected on a GPU, whose kernels are not deterministic)."
            ),
            "",
        ]
    return lines


def latency_lines(figures: dict) -> list[str]:
    if not figures:
        return []
    header = ["gallery", "batch", "dim", "kernel", "p50 ms", "cost vs student", "of read speed", "of GEMM peak"]
    rows = [
        [
            f"{c['gallery']:,}",
            str(c["batch"]),
            str(c["dim"]),
            c["kernel"],
            f"{c['p50_ms']:.3f}",
            f"{c['measured_ratio']:.1f}x" if c["measured_ratio"] else "-",
            f"{c['bandwidth_share']:.0%}" if c["bandwidth_share"] is not None else "-",
            f"{c['gemm_share']:.0%}",
        ]
        for c in figures["contrast"]
    ]
    limits = figures["machine_limits"]
    return (
        [
            "## bench-latency: exact search",
            "",
            markdown_table(header, rows),
            "",
            f"Limits measured in the same run: {json.dumps(limits.get('bandwidth_by_library_gbs', {}))} GB/s read, "
            f"{json.dumps(limits.get('gemm_by_library_and_shape_gflops', {}))} GFLOP/s ({limits.get('how', '')}).",
            "",
        ]
        + [f"- note: {note}" for note in figures["notes"]]
        + [""]
    )


def provider_lines(figures: dict) -> list[str]:
    if not figures:
        return []
    rows = []
    for name, p in figures["providers"].items():
        strict = p.get("parity_vs_torch", {}).get("fp32", {})
        tf32 = p.get("parity_vs_torch", {}).get("tf32", {})
        rows.append(
            [
                name,
                p["status"],
                p.get("ran_on", "-"),
                f"{strict['max_abs_diff']:.1e} / {strict['min_cosine']:.7f}" if strict else "-",
                f"{tf32['max_abs_diff']:.1e} / {tf32['min_cosine']:.7f}" if tf32 else "-",
                f"{p['images_per_s']:.0f}" if "images_per_s" in p else "-",
                p.get("reason", "").replace("|", "/"),
            ]
        )
    header = [
        "provider",
        "status",
        "ran on",
        "vs torch fp32: max diff / min cos",
        "vs torch TF32",
        "images/s",
        "reason",
    ]
    return [
        "## Embedder and TensorRT",
        "",
        markdown_table(header, rows),
        "",
        f"Embedder's own choice: {figures['automatic_choice']}; the tensorrt package: {figures['tensorrt_package']}; "
        f"reference: {figures['torch_reference']}.",
        "",
    ]
