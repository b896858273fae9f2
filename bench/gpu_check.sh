#!/usr/bin/env bash
# One command for every GPU path of s2sd-deploy; see README.md, "Checking the GPU paths".
#
#   bench/gpu_check.sh OUT_DIR [--device cpu|gpu|auto] [--quick] [--no-install] [--force] [--budget-s 450]
#
# Installs the checkout and the wheels in bench/gpu-wheels/ (bench/gpu_wheels.sh fetches them on a connected
# machine) into OUT_DIR/site with pip --no-deps --no-index, so the machine's own torch stays; then runs each step
# (CUDA training fp32 and --amp, torchrun over NCCL, export and its parity proof, bench-latency --device gpu,
# Embedder on every onnxruntime provider, --engine trt), timed and independent, writing OUT_DIR/gpu_check.json
# and OUT_DIR/gpu_check.md. Without a GPU the CPU steps run and the GPU-only ones are reported absent.
# PYTHON selects the interpreter (default: python3). Exit 0 when no step failed, 1 when one did.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # the runner comes from this checkout; the steps from OUT_DIR/site
exec "${PYTHON:-python3}" -m s2sd_deploy.bench.gpu_check "$@"
