#!/usr/bin/env bash
# Run on a connected machine before going to an offline GPU machine: downloads the wheels bench/gpu_check.sh
# installs there beyond what that machine already has, for its Python and platform, into bench/gpu-wheels/
# (ignored by git; the device tool carries it with `carry: ["bench/gpu-wheels"]`).
#
#   bench/gpu_wheels.sh [PYTHON_VERSION]        # default 3.12 (the lent H200 image: Python 3.12, torch 2.11)
#
# Only faiss-cpu is missing there: torch, torchvision, onnx, onnxscript, onnxruntime, safetensors, numpy, Pillow,
# typer, rich, tqdm, matplotlib (and fontTools), scikit-learn and scipy are part of the image, and faiss-cpu's own
# needs (numpy, packaging) too. pytorch-metric-learning and Milvus are for the tests and the Milvus backend, not
# for the check. A wheel for another Python or platform: PYTHON_VERSION and PLATFORM.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python_version=${1:-3.12}
platform=${PLATFORM:-manylinux_2_28_x86_64}
dest="$root/bench/gpu-wheels"
limit_mib=64  # what the device tool carries: the checkout and the carried folders together
mkdir -p "$dest"
"${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "$python_version" --platform "$platform" --platform manylinux_2_27_x86_64 \
    --platform manylinux2014_x86_64 -d "$dest" "faiss-cpu==1.15.1"
checkout_kib=$(cd "$root" && git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- | tail -1 | cut -f1)
wheels_kib=$(du -sk "$dest" | cut -f1)
total_mib=$(( (checkout_kib + wheels_kib) / 1024 ))
echo "bench/gpu-wheels: $(( wheels_kib / 1024 )) MiB ($(ls "$dest" | tr '\n' ' ')); checkout $(( checkout_kib / 1024 )) MiB; together ${total_mib} of ${limit_mib} MiB"
if (( total_mib > limit_mib )); then
    echo "error: the checkout and bench/gpu-wheels exceed the ${limit_mib} MiB the device tool carries" >&2
    exit 1
fi
