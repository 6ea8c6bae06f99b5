#!/usr/bin/env bash
# QLoRA + DeepSpeed ZeRO-3 on CUDA, a few steps each, on the tiny wiki SFT data; prints one JSON line per job.
#   bash training/gpu_check.sh            (on a machine with a CUDA GPU and bitsandbytes installed)
# Needs: the converted SmolLM2 under $PRISM_HOME/models (carry .prism/models) and $PRISM_HOME/data/sft/train.jsonl
# (`prism data sft`). Writes runs under $PRISM_HOME/checkpoints/gpu-check-*.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STAMP=$(date +%s)
python_info=$($PY - <<'PY'
import json, torch
try:
    import bitsandbytes as bnb
    bnb_version = bnb.__version__
except Exception as exc:  # report, do not fail: the QLoRA job refuses with its own message
    bnb_version = f"missing ({type(exc).__name__})"
print(json.dumps({"cuda": torch.cuda.is_available(), "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "torch": torch.__version__, "bitsandbytes": bnb_version}))
PY
)
echo "{\"env\": $python_info}"

run_job() {  # name, then the job's arguments
  local name=$1; shift
  local started=$(date +%s)
  local out
  out=$($PY -m training.sft "$@" run.name=gpu-check-$name-$STAMP data.limit=64 2>/tmp/gpu-check-$name.err | tail -1)
  local rc=$?
  if [[ $rc -ne 0 || -z "$out" ]]; then
    local err=$(tail -3 /tmp/gpu-check-$name.err | tr '"\n' "' " | cut -c1-600)
    echo "{\"job\": \"$name\", \"ok\": false, \"seconds\": $(( $(date +%s) - started )), \"error\": \"$err\"}"
  else
    echo "{\"job\": \"$name\", \"ok\": true, \"seconds\": $(( $(date +%s) - started )), \"result\": $out}"
  fi
}

run_job qlora --config training/configs/smollm2/qlora.yaml train.max_steps=10 train.save_every=5 scaling.num_workers=1 scaling.use_gpu=true
run_job zero3 --config training/configs/smollm2/full.yaml strategy=deepspeed deepspeed_config=training/configs/deepspeed/zero3.json \
  train.max_steps=10 train.save_every=5 scaling.num_workers=1 scaling.use_gpu=true
