"""``bench/gpu_check.sh``: every GPU path of the product, proven (or found wanting) in one command.

The check installs the project beside the machine's own torch (``pip install --no-deps --no-index`` of the
checkout and of the wheels in ``bench/gpu-wheels/``), then runs each path as its real command in a subprocess,
timed and independent (a failing step is recorded with its error and the next still runs), and writes
``gpu_check.json`` and ``gpu_check.md`` into the output folder after every step:

- ``s2sd train`` on CUDA in fp32 and with ``--amp``, its Recall@1 and loss next to the same configuration's CPU
  figures recorded in ``bench/results/gpu_check_cpu_reference.json``;
- ``torchrun --nproc_per_node 1``: DistributedDataParallel over NCCL (gloo on a CPU);
- ``s2sd export`` of the CUDA-trained run and its parity proof;
- ``s2sd bench-latency --device gpu``: the torch CUDA kernels (faiss-gpu when present), 2048-d against the student
  at 1e5 and 1e6 vectors, batch 1 and 64, beside the GPU's read bandwidth and GEMM limits measured in the run;
- ``Embedder`` on every onnxruntime execution provider, and ``s2sd export --engine trt``: each run, or absent
  with the reason.

Without a GPU (``--device cpu``, or ``auto`` when torch sees none) the same steps run on the CPU and the GPU-only
ones are reported absent, so CI runs it (``--quick``) and it cannot rot. The sizes keep a GPU run within 8
minutes (``--budget-s``), so a second try fits a 15-minute lease.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..atomic_files import write_json_atomic, write_text_atomic
from ..errors import S2SDError
from ..gpu import GPU_EXTRA
from ..output_folders import claim_output_folder

FORMAT = "s2sd-gpu-check/1"
RESULTS, SUMMARY = "gpu_check.json", "gpu_check.md"
ROOT = Path(__file__).resolve().parents[2]  # the checkout the check was started from
WHEELS = ROOT / "bench" / "gpu-wheels"
REFERENCE = ROOT / "bench" / "results" / "gpu_check_cpu_reference.json"
EXIT_MISSING = 3  # a command's exit code for a missing GPU or package: the step is absent, not failed

# The training configuration the check runs, on CUDA and (for the reference) on a CPU: 2 epochs of glyphs, with
# the feature distillation starting in the second epoch so the whole MSDFA objective runs; --quick: the smallest
# run that still trains (digits at 8 px), so CI's smoke test stays short.
TRAIN_FLAGS = {
    "full": ["--dataset", "glyphs", "--epochs", "2", "--feature-delay", "40", "--seed", "0"],
    "quick": [
        *("--dataset", "digits", "--epochs", "1", "--image-size", "8", "--resize-size", "8"),
        *("--target-dims", "32", "--embed-dim", "8", "--no-eval-untrained", "--seed", "0"),
    ],
}
# bench-latency: the headline (largest gallery) is 2048-d against the student; the second size comes from the grid.
LATENCY_FLAGS = {
    "gpu": ["--dims", "2048", "--gallery-sizes", "100000,1000000", "--max-seconds", "180"],
    "cpu": ["--dims", "2048", "--gallery-sizes", "10000,100000", "--max-seconds", "90"],
    "quick": ["--dims", "64", "--gallery-sizes", "2000", "--query-batch", "1,8", "--max-seconds", "5"],
}


@dataclass
class GpuCheckConfig:
    """Options of ``bench/gpu_check.sh``; saved in gpu_check.json."""

    out: str
    device: str = "auto"  # gpu, cpu, or auto (gpu when torch sees CUDA)
    quick: bool = False  # CI's smoke-test sizes
    install: bool = True  # pip install --no-deps the checkout and bench/gpu-wheels/ into OUT/site first
    force: bool = False  # replace an earlier check's output folder
    budget_s: float = 450.0  # all steps; a GPU machine's 15 minutes then allow a second try
    python: str = field(default_factory=lambda: sys.executable)

    def validate(self) -> None:
        if self.device not in ("auto", "cpu", "gpu"):
            raise S2SDError(f"invalid --device {self.device!r}; choose one of: auto, cpu, gpu")
        if not self.budget_s > 0:
            raise S2SDError(f"--budget-s must be a positive number of seconds, got {self.budget_s}")
        claim_output_folder(self.out, "OUT_DIR", what="a GPU check's output", owner_files=[RESULTS], force=self.force)


@dataclass
class Step:
    """One path of the product: its command, whether it needs the GPU, and what to read from what it wrote."""

    name: str
    proves: str
    command: list[str]
    timeout_s: float
    collect: Callable[[Path], dict] | None = None  # figures from the step's files, given the output folder
    absent: str | None = None  # why it cannot run here; then it is not started
    needs: str | None = None  # an output path it needs that an earlier step writes
    requires: str | None = None  # a Python package it needs; without it the step is absent, not started


# --- the steps ----------------------------------------------------------------------------------
def s2sd(cfg: GpuCheckConfig, *args: str) -> list[str]:
    return [cfg.python, "-m", "s2sd_deploy.cli", *args]


def plan(cfg: GpuCheckConfig, gpu: bool, out: Path) -> list[Step]:
    """The steps, in order, for a GPU (``gpu``) or a CPU run."""
    size = "quick" if cfg.quick else "full"
    train = TRAIN_FLAGS[size]
    device = "cuda" if gpu else "cpu"
    runs = str(out / "runs")
    no_gpu = "needs a CUDA GPU; this check runs on the CPU (torch sees no CUDA GPU, or --device cpu)"
    main_run = out / "runs" / "fp32"
    steps = [
        Step(
            "environment",
            "the machine, the versions, and the torch APIs the product calls",
            [cfg.python, "-m", "s2sd_deploy.bench.gpu_check", "probe-environment", str(out / "environment.json")],
            60,
            lambda o: read(o / "environment.json"),
        ),
        Step(
            f"train fp32 ({device})",
            f"s2sd train on {device} in fp32",
            s2sd(cfg, "train", *train, "--device", device, "--out-dir", runs, "--run-name", "fp32"),
            150,
            lambda o: run_figures(o / "runs" / "fp32"),
        ),
        Step(
            "train --amp (cuda)",
            "mixed precision on the GPU (fp16 network, fp32 similarities and KL terms)",
            s2sd(cfg, "train", *train, "--device", "cuda", "--amp", "--out-dir", runs, "--run-name", "amp"),
            150,
            lambda o: run_figures(o / "runs" / "amp"),
            absent=None if gpu else no_gpu,
        ),
        Step(
            f"torchrun DDP ({'nccl' if gpu else 'gloo'})",
            f"torchrun --nproc_per_node 1: DistributedDataParallel over {'NCCL' if gpu else 'gloo'}, 1 epoch",
            [
                *(cfg.python, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29531"),
                *("-m", "s2sd_deploy.cli", "train", *replace_flag(train, "--epochs", "1")),
                *("--device", "auto", "--out-dir", runs, "--run-name", "ddp"),
            ],
            120,
            lambda o: run_figures(o / "runs" / "ddp"),
        ),
        Step(
            "export + parity",
            f"s2sd export of the {device}-trained run: ONNX, checker, parity with PyTorch on the test split",
            s2sd(cfg, "export", str(main_run), "--out", str(out / "export"), "--with-teacher")
            + (["--verify-limit", "16"] if cfg.quick else []),
            120,
            lambda o: export_figures(o / "export"),
            needs=str(main_run / "summary.json"),
        ),
        Step(
            f"bench-latency --device {'gpu' if gpu else 'cpu'}",
            "exact search, 2048-d against the student, beside the device's own read bandwidth and GEMM limits",
            s2sd(
                cfg,
                *("bench-latency", "--device", "gpu" if gpu else "cpu", "--run", str(main_run)),
                *("--index", "flat", "--no-encoder", "--out", str(out / "bench-latency")),
                *LATENCY_FLAGS["quick" if cfg.quick else "gpu" if gpu else "cpu"],
            ),
            270,
            lambda o: latency_figures(o / "bench-latency"),
            needs=str(main_run / "summary.json"),
        ),
        Step(
            "Embedder providers",
            "Embedder on each onnxruntime execution provider, against the PyTorch model on the device",
            [
                *(cfg.python, "-m", "s2sd_deploy.bench.gpu_check", "probe-embedder", str(out / "embedder.json")),
                *(str(out / "export" / "model.onnx"), str(main_run), device, "16" if cfg.quick else "512"),
            ],
            90,
            lambda o: read(o / "embedder.json"),
            needs=str(out / "export" / "model.onnx"),
        ),
        Step(
            "export --engine trt",
            "a TensorRT engine built from the export and checked against onnxruntime",
            s2sd(cfg, "export", str(main_run), "--engine", "trt", "--out", str(out / "export-trt"))
            + ["--verify-limit", "16" if cfg.quick else "256"],
            180,
            lambda o: tensorrt_figures(o / "export-trt"),
            needs=str(main_run / "summary.json"),
            requires="tensorrt",
        ),
    ]
    if not gpu and not cfg.quick:  # the limits are a GPU's; a full-size run on a CPU is bounded by --budget-s alone
        for step in steps:
            step.timeout_s = cfg.budget_s
    return steps


def replace_flag(flags: list[str], name: str, value: str) -> list[str]:
    flags = list(flags)
    flags[flags.index(name) + 1] = value
    return flags


def install_step(cfg: GpuCheckConfig, out: Path) -> Step:
    """pip install --no-deps --no-index of the wheels in bench/gpu-wheels/ and of the checkout, into OUT/site:
    the machine's torch and everything else it has stay as they are."""
    wheels = sorted(str(w) for w in WHEELS.glob("*.whl"))
    quoted = lambda path: shlex.quote(str(path))  # noqa: E731
    sources = " ".join(quoted(ROOT / name) for name in ("pyproject.toml", "README.md", "s2sd_deploy"))
    script = "; ".join(
        [
            "set -e",
            "src=$(mktemp -d); trap 'rm -rf \"$src\"' EXIT",  # a copy: the build leaves the checkout as it was
            f'cp -r {sources} "$src"',
            'find "$src" -name __pycache__ -prune -exec rm -r {} +',
            f"{quoted(cfg.python)} -m pip install --quiet --no-deps --no-index --no-build-isolation "
            f'--target {quoted(out / "site")} "$src" ' + " ".join(map(quoted, wheels)),
        ]
    )
    return Step(
        "install",
        "pip install --no-deps --no-index of the checkout"
        + (f" and {', '.join(Path(w).name for w in wheels)}" if wheels else " (bench/gpu-wheels/ is empty)"),
        ["bash", "-c", script],
        180,
        lambda o: {"site": str(o / "site"), "wheels": [Path(w).name for w in wheels]},
    )


# --- reading what a step wrote ------------------------------------------------------------------
def read(path: Path) -> dict:
    return json.loads(path.read_text())


def run_figures(run: Path) -> dict:
    """What a training run measured: final Recall@1, loss per epoch, device, backend, dataset fingerprint."""
    summary, config = read(run / "summary.json"), read(run / "config.json")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trained = [r for r in rows if r["epoch"] > 0]
    return {
        "recall@1": summary["final"].get("recall@1"),
        "recall@1_untrained": summary.get("untrained", {}).get("recall@1"),
        "recall@1_by_epoch": [r.get("recall@1") for r in trained],
        "loss_by_epoch": [r.get("loss") for r in trained],
        "device": summary.get("device"),
        "world_size": summary.get("world_size"),
        "distributed_backend": summary.get("distributed_backend"),
        "train_wall_time_s": summary.get("wall_time_s"),
        "dataset_fingerprint": config.get("dataset_fingerprint"),
        "test_images": config.get("num_test_images"),
        "torch_version": config.get("torch_version"),
    }


def export_figures(folder: Path) -> dict:
    report = read(folder / "export_report.json")
    return {"status": report.get("status"), "onnx_bytes": report.get("onnx_bytes"), "parity": report["parity"]}


def latency_figures(folder: Path) -> dict:
    results = read(folder / "results.json")
    keep = ("gallery", "batch", "dim", "kernel", "p50_ms", "measured_ratio", "bandwidth_share", "gemm_share")
    return {
        "contrast": [{k: c[k] for k in keep} for c in results.get("contrast", [])],
        "kernels": {
            f"{r['gallery']}x{r['dim']}@{r['batch']}": sorted(r["kernels"]) for r in results.get("retrieval", [])
        },
        "machine_limits": results.get("machine_limits", {}),
        "notes": results.get("notes", []),
        "cascade": [
            {k: r[k] for k in ("gallery", "batch", "method", "p50_ms", "vs_student")}
            for r in results.get("cascade_latency", [])
        ],
    }


def tensorrt_figures(folder: Path) -> dict:
    report = read(folder / "export_report.json")
    return {"status": report.get("status"), "tensorrt": report.get("tensorrt")}


# --- running ------------------------------------------------------------------------------------
def run(cfg: GpuCheckConfig, progress=print) -> dict:
    """Run every step within ``cfg.budget_s``; write the results after each. Returns them."""
    cfg.validate()
    gpu, why = choose_device(cfg)  # before anything is written: --device gpu without CUDA leaves nothing behind
    out = Path(cfg.out)
    if cfg.force:
        for child in out.iterdir() if out.is_dir() else []:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "format": FORMAT,
        "config": asdict(cfg),
        "device": "gpu" if gpu else "cpu",
        "device_reason": why,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "steps": [],
        "interrupted": False,
    }
    env = dict(os.environ)
    steps = plan(cfg, gpu, out)
    if cfg.install:
        steps.insert(0, install_step(cfg, out))
        env["PYTHONPATH"] = str(out / "site")  # every later step runs the installed copy, not the checkout
    env.setdefault("PYTHONUNBUFFERED", "1")
    deadline = time.monotonic() + cfg.budget_s
    started = time.monotonic()
    progress(f"GPU check on {results['device']} ({why}); writing {out}")
    try:
        for number, step in enumerate(steps, 1):
            record = run_step(step, number, out, env, deadline, progress)
            progress(f"[{number}] {step.name}: {record['status']}" + outcome(record))
            results["steps"].append(record)
            results["wall_s"] = round(time.monotonic() - started, 1)
            write(results, out)
    except KeyboardInterrupt:
        results["interrupted"] = True
    results["wall_s"] = round(time.monotonic() - started, 1)
    write(results, out)
    return results


def choose_device(cfg: GpuCheckConfig) -> tuple[bool, str]:
    """(gpu, why): ``auto`` asks torch in a subprocess, so the check itself never initialises CUDA."""
    if cfg.device == "cpu":
        return False, "--device cpu"
    probe = subprocess.run(
        [cfg.python, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True, text=True
    )
    visible = probe.stdout.strip() == "True"
    if cfg.device == "gpu" and not visible:
        from ..errors import MissingDependencyError

        raise MissingDependencyError(
            "--device gpu: torch sees no CUDA GPU (torch.cuda.is_available() is not True"
            + (f": {last_line(probe.stderr)}" if probe.returncode else "")
            + "); use --device cpu or auto"
        )
    if cfg.device == "gpu":
        return True, "--device gpu"
    return visible, "auto: torch sees a CUDA GPU" if visible else "auto: torch sees no CUDA GPU"


def run_step(step: Step, number: int, out: Path, env: dict, deadline: float, progress) -> dict:
    """Run one step in its own process group, its output to logs/NN-name.log; never raises (but Ctrl-C)."""
    record = {"name": step.name, "proves": step.proves, "command": shown(step.command)}
    left = deadline - time.monotonic()
    if step.absent:
        return {**record, "status": "absent", "reason": step.absent, "seconds": 0.0}
    if step.needs and not Path(step.needs).exists():
        return {**record, "status": "skipped", "reason": f"needs {step.needs}, which an earlier step did not write"}
    if left < 5:
        return {**record, "status": "skipped", "reason": "the check's --budget-s was used up"}
    if step.requires and not importable(step.command[0], step.requires, env):
        reason = f"the {step.requires} package is not installed (`import {step.requires}` fails here); {GPU_EXTRA}"
        return {**record, "status": "absent", "reason": reason, "seconds": 0.0}
    log = out / "logs" / f"{number:02d}-{slug(step.name)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    timeout = min(step.timeout_s, left)
    progress(f"[{number}] {step.name}: {record['command']}")
    started = time.monotonic()
    with open(log, "w") as handle:
        process = subprocess.Popen(
            step.command, cwd=out, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(process)
            code = None
        except KeyboardInterrupt:
            stop(process)
            raise
    record.update(seconds=round(time.monotonic() - started, 1), returncode=code, log=str(log.relative_to(out)))
    record.update(judge(step, code, log, out, timeout))
    return record


def stop(process: subprocess.Popen) -> None:
    """End a step: SIGTERM to its process group first (torchrun then ends the workers it started in their own
    sessions), SIGKILL to what is left after 10 s."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def importable(python: str, module: str, env: dict) -> bool:
    """Whether ``python`` (with ``env``) finds ``module``, without importing it."""
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([python, "-c", code], env=env, capture_output=True).returncode == 0


def judge(step: Step, code: int | None, log: Path, out: Path, timeout: float) -> dict:
    """ok / failed / absent (exit 3: a missing GPU or package) / timeout, with the figures or the reason."""
    if code is None:
        return {"status": "timeout", "reason": f"killed after {timeout:.0f} s; see the log"}
    if code == EXIT_MISSING:
        return {"status": "absent", "reason": last_line(log.read_text())}
    if code != 0:
        return {"status": "failed", "reason": f"exit {code}: {last_line(log.read_text())}"}
    if step.collect is None:
        return {"status": "ok"}
    try:
        figures = step.collect(out)
    except (OSError, KeyError, ValueError) as error:
        return {"status": "failed", "reason": f"exit 0 but its results could not be read: {error!r}"}
    return {"status": "ok", "figures": figures}


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "(no output)"


def outcome(record: dict) -> str:
    seconds = f" in {record['seconds']} s" if record.get("seconds") else ""
    return seconds + (f": {record['reason']}" if record.get("reason") else "")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def shown(command: list[str]) -> str:
    """The command as a person would type it: ``s2sd ...`` for the CLI, ``torchrun ...`` for its launcher."""
    for module, name in (("s2sd_deploy.cli", "s2sd"), ("torch.distributed.run", "torchrun")):
        if command[1:3] == ["-m", module]:
            return shlex.join([name, *command[3:]])
    return shlex.join([Path(command[0]).name, *command[1:]])


# --- the results files --------------------------------------------------------------------------
def write(results: dict, out: Path) -> None:
    """gpu_check.json and gpu_check.md, atomically."""
    from .gpu_check_report import markdown

    try:
        results = {**results, "checks": checks(results)}
        summary = markdown(results)
    except Exception as error:  # a figure the report did not expect must not cost the results themselves
        results["report_error"] = repr(error)
        summary = f"# s2sd GPU check\n\nThe summary could not be written ({error!r}); {RESULTS} holds the results.\n"
    write_json_atomic(out / RESULTS, results)
    write_text_atomic(out / SUMMARY, summary)


def checks(results: dict) -> dict:
    """The verdicts the figures support, next to the CPU reference."""
    from .gpu_check_report import verdicts

    return verdicts(results, load_reference())


def load_reference() -> dict:
    return read(REFERENCE) if REFERENCE.is_file() else {}


# --- probes, each run as a step in its own process ----------------------------------------------
def probe_environment(path: str) -> None:
    """The machine, the library versions, and whether each torch API the product calls exists here."""
    from .gpu_check_probes import environment

    write_json_atomic(path, environment())


def probe_embedder(path: str, model: str, run_dir: str, device: str, limit: str) -> None:
    from .gpu_check_probes import embedder_providers

    write_json_atomic(path, embedder_providers(model, run_dir, device, int(limit)))


# --- the command line ---------------------------------------------------------------------------
def parse(argv: list[str]) -> GpuCheckConfig:
    parser = argparse.ArgumentParser(
        prog="bench/gpu_check.sh",
        description="Run every GPU path of s2sd-deploy, each timed and independent; write gpu_check.json and "
        "gpu_check.md into OUT_DIR. Without a GPU the CPU steps run and the GPU-only ones are reported absent.",
        epilog="Examples: bench/gpu_check.sh /tmp/gpu-check | bench/gpu_check.sh /tmp/c --device cpu --quick "
        "--no-install",
    )
    parser.add_argument("out", metavar="OUT_DIR", help="new or empty folder (or an earlier check's, with --force)")
    parser.add_argument("--device", default="auto", help="gpu, cpu, or auto (gpu when torch sees CUDA)")
    parser.add_argument("--quick", action="store_true", help="CI's smoke-test sizes (tiny digits run)")
    parser.add_argument("--no-install", dest="install", action="store_false", help="use this environment as is")
    parser.add_argument("--force", action="store_true", help="replace an earlier check's OUT_DIR")
    parser.add_argument("--budget-s", type=float, default=GpuCheckConfig.budget_s, help="seconds for all steps")
    args = parser.parse_args(argv)
    return GpuCheckConfig(args.out, args.device, args.quick, args.install, args.force, args.budget_s)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    probes = {"probe-environment": probe_environment, "probe-embedder": probe_embedder}
    if argv and argv[0] in probes:
        probes[argv[0]](*argv[1:])
        return 0
    if argv and argv[0] == "reference":
        from .gpu_check_reference import record_reference

        record_reference(argv[1:])
        return 0
    try:
        results = run(parse(argv))
    except S2SDError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    failed = [s["name"] for s in results["steps"] if s["status"] in ("failed", "timeout")]
    print(f"wrote {Path(results['config']['out']) / SUMMARY}")
    if results["interrupted"]:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
