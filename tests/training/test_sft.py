"""SFT job on a tiny random Llama (2 layers x 64 wide) with 2 Ray Train workers on the CPU."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_LORA = REPO / "training/configs/tiny-llama/lora.yaml"
TINY_FULL = REPO / "training/configs/tiny-llama/full.yaml"
FACTS = [
    ("Paris", "Paris is the capital and largest city of France.", "What is Paris?"),
    ("Mercury", "Mercury is the smallest planet in the Solar System.", "What is Mercury?"),
    ("Nile", "The Nile is a major river in northeastern Africa.", "Where is the Nile?"),
    ("Tiger", "The tiger is the largest living cat species.", "What is the tiger?"),
]


def write_records(path: Path) -> Path:
    """Four hand-made SFT/DPO records (each also carries a rejected answer for DPO)."""
    rows = []
    for i, (title, text, question) in enumerate(FACTS):
        other = FACTS[(i + 1) % len(FACTS)]
        passages = [{"n": 1, "title": other[0], "text": other[1]}, {"n": 2, "title": title, "text": text}]
        answer = text[:-1] + " [2]."
        rows.append({"id": str(i), "kind": "what_is", "question": question, "passages": passages, "answer": answer,
                     "chosen": answer, "rejected": other[1][:-1] + " [1].", "injected": None})  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default 15 starves tests on a busy machine
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sft")


@pytest.fixture(scope="module")
def data_path(workdir) -> Path:
    return write_records(workdir / "sft.jsonl")


@pytest.fixture(scope="module")
def lora_run(ray_local, workdir, data_path) -> dict:
    from training.sft import main

    return main(["--config", str(TINY_LORA), f"data.train_path={data_path}", f"run.storage_path={workdir / 'runs'}",
                 "train.max_steps=6", "train.save_every=3"])  # fmt: skip


def test_lora_loss_is_finite_and_falls_on_a_fixed_batch(lora_run):
    losses = lora_run["losses"]
    assert len(losses) == 6
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]


def test_checkpoints_are_step_and_final_folders_with_adapter_only_weights(lora_run):
    from safetensors.torch import load_file

    run = Path(lora_run["run_dir"])
    assert (run / "step-000003" / "adapter_model.safetensors").exists()
    assert (run / "final" / "adapter_model.safetensors").exists()
    keys = load_file(run / "final" / "adapter_model.safetensors").keys()
    assert keys and all("lora_" in k for k in keys)
    assert not (run / "final" / "model.safetensors").exists()


def test_adapter_changed_while_base_weights_stayed_frozen(lora_run):
    from ray_app.llm.checkpoints import build_base_model, load_lm_from_checkpoint, read_model_spec

    final = Path(lora_run["run_dir"]) / "final"
    spec = read_model_spec(final)
    trained, _ = load_lm_from_checkpoint(final)
    fresh, _ = build_base_model(spec["base_model"], spec["random_init"], spec["init_seed"])
    base_state = fresh.state_dict()
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().max()) > 0 for p in lora_b)  # LoRA B starts at zero
    for name, tensor in trained.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert key in base_state, key
        assert (tensor == base_state[key]).all(), f"base weight {name} changed"


def test_checkpoint_reloads_to_the_same_outputs(lora_run, data_path):
    import torch

    from ray_app.llm.checkpoints import load_lm_from_checkpoint
    from ray_app.llm.collate import SFTCollator, render_sft_example
    from training.common import micro_batch_indices, read_records

    model, tokenizer = load_lm_from_checkpoint(Path(lora_run["run_dir"]) / "final")
    records = read_records(data_path, None, "test")[0::2]  # rank 0's shard
    examples = [render_sft_example(tokenizer, r, 256) for r in records]
    batch = SFTCollator(tokenizer.pad_token_id)([examples[i] for i in micro_batch_indices(len(examples), 0, 2, 0)])
    with torch.no_grad():
        loss = float(model.eval()(**batch).loss)
    assert loss == pytest.approx(lora_run["probe_loss"], abs=1e-5)


def test_resume_continues_from_the_newest_step_checkpoint(lora_run, workdir, data_path):
    from training.sft import main

    run = Path(lora_run["run_dir"])
    copy = workdir / "runs" / "resumed"
    shutil.copytree(run / "step-000003", copy / "step-000003")
    resumed = main(["--config", str(TINY_LORA), f"data.train_path={data_path}", f"run.storage_path={workdir / 'runs'}",
                    "run.name=resumed", "train.max_steps=6", "train.save_every=3"])  # fmt: skip
    assert resumed["resumed_from"].endswith("step-000003")
    assert len(resumed["losses"]) == 3  # steps 4..6 only
    assert (copy / "final" / "adapter_model.safetensors").exists()
    again = main(["--config", str(TINY_LORA), f"data.train_path={data_path}", f"run.storage_path={workdir / 'runs'}",
                  "run.name=resumed"])  # fmt: skip
    assert again["already_finished"] is True


def test_merge_writes_full_weights_with_the_same_outputs(lora_run, workdir):
    import torch
    from typer.testing import CliRunner

    from ray_app.cli import app
    from ray_app.llm.checkpoints import load_lm_from_checkpoint

    final = Path(lora_run["run_dir"]) / "final"
    out = workdir / "merged"
    result = CliRunner().invoke(app, ["train", "merge", "--adapter", str(final), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").exists()
    adapter_model, tokenizer = load_lm_from_checkpoint(final)
    merged, _ = load_lm_from_checkpoint(out)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = adapter_model.eval()(ids).logits, merged.eval()(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    again = CliRunner().invoke(app, ["train", "merge", "--adapter", str(final), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_deepspeed_zero2_smoke_step_on_the_cpu(ray_local, workdir, data_path):
    from training.sft import main

    out = main(["--config", str(TINY_FULL), "strategy=deepspeed", "deepspeed_config=training/configs/deepspeed/zero2.json",
                f"data.train_path={data_path}", f"run.storage_path={workdir / 'runs'}", "run.name=ds", "train.max_steps=2"])  # fmt: skip
    assert out["strategy"] == "deepspeed" and out["step"] == 2
    assert all(math.isfinite(x) for x in out["losses"])
    assert (Path(out["run_dir"]) / "final" / "model.safetensors").exists()


def test_qlora_is_refused_on_a_cpu_machine_with_one_line():
    import torch
    from typer.testing import CliRunner

    from ray_app.cli import app

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for CPU-only machines")
    result = CliRunner().invoke(app, ["train", "sft", "--config", str(REPO / "training/configs/smollm2/qlora.yaml")])
    assert result.exit_code == 2
    assert "qlora needs a CUDA GPU" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_config_value_is_a_one_line_error(tmp_path):
    from typer.testing import CliRunner

    from ray_app.cli import app

    result = CliRunner().invoke(app, ["train", "sft", "--config", str(TINY_LORA), "method=adapterz"])
    assert result.exit_code == 2
    assert result.output.startswith("error: config method")


def test_tune_sweep_reports_the_best_trial(ray_local, workdir, data_path):
    from typer.testing import CliRunner

    from ray_app.cli import app

    args = ["tune", "sft", "--config", str(TINY_LORA), "--trials", "2", "--max-steps", "4", "--report-every", "2",
            "--ranks", "2,4", "--json", f"data.train_path={data_path}", f"run.storage_path={workdir / 'runs'}",
            "train.save_every=2", "train.warmup_steps=1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n_trials"] == 2 and summary["scheduler"] == "ASHA"
    losses = [t["eval_loss"] for t in summary["trials"]]
    assert summary["best"]["eval_loss"] == min(losses) and math.isfinite(min(losses))
    assert summary["best"]["rank"] in (2, 4)
    assert json.loads(Path(summary["report"]).read_text())["best"] == summary["best"]
    # train.save_every was ignored by the trials before: now each keeps its adapter, loadable like an SFT one
    best = Path(summary["best"]["checkpoint"])
    assert (best / "adapter_model.safetensors").exists() and (best / "optimizer.pt").exists()
    from ray_app.llm.checkpoints import read_model_spec

    assert read_model_spec(best)["method"] == "lora"
    # run.resume: a rerun with the same run.name reports the finished sweep instead of sweeping again
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.strip().splitlines()[-1])["already_finished"] is True


def test_bf16_autocast_trains_and_says_so(ray_local, workdir, data_path):
    """``train.precision=bf16``: forward passes under bfloat16 autocast, the loss still falls, float32 adapter saved."""
    from safetensors.torch import load_file

    from training.sft import main

    summary = main(["--config", str(TINY_LORA), f"data.train_path={data_path}", f"run.storage_path={workdir / 'runs'}",
                    "run.name=bf16", "train.max_steps=4", "train.precision=bf16"])  # fmt: skip
    assert summary["precision"] == "bfloat16"
    assert all(math.isfinite(x) for x in summary["losses"]) and summary["losses"][-1] < summary["losses"][0]
    weights = load_file(str(Path(summary["checkpoint"]) / "adapter_model.safetensors"))
    assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}


def test_auto_precision_follows_the_cpus_bf16_kernels():
    import torch

    from ray_app.models.llm import cpu_has_bf16_kernels
    from training.common import autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_bf16_kernels() else None)
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16
