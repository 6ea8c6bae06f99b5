"""`prism bench llm`: the fusion deployment's LLM engine in each precision, on the same answer prompts.

    prism bench llm --json                          # writes docs/reports/llm-engines.{json,md}
    python -m ray_app.benchmarks.llm --engines torch-fp32,torch-bf16 --json

Every engine (:mod:`ray_app.llm.engines`: torch with continuous batching, CTranslate2, llama.cpp) runs
greedy decoding behind the fusion deployment's interface in this process with the same threads, on the
same prompts: the serving
prompt (system prompt, five numbered wiki passages, a question) at about the load mix's length,
with the load mix's ``max_new_tokens``. Per engine: time to first token at batch 1 (one prefill),
decode tokens/s and answers/s with 1, 4 and 16 answers in flight, resident memory, and how often
its greedy tokens agree with the first engine's (top-1 agreement over the tokens both produced up
to the first difference, and the share of answers identical in full). The machine's matmul rate in
each precision is measured too, so a ratio can be read against what the hardware gives.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from ray_app.entrypoints import int_at_least, job_parser, run_job
from ray_app.llm.generate import count_tokens
from ray_app.reports import load_average, write_report

REPORT_NAME = "llm-engines"
PROG = "python -m ray_app.benchmarks.llm"
ENGINES = ["torch-fp32", "torch-bf16", "ct2-int8", "ct2-fp32", "llamacpp-q4_1"]


def default_engines() -> list[str]:
    """Every engine whose package is installed (llama.cpp is an optional extra: ``pip install -e '.[llamacpp]'``)."""
    import importlib.util

    return [e for e in ENGINES if not e.startswith("llamacpp") or importlib.util.find_spec("llama_cpp") is not None]
QUESTIONS = ("Where do frogs live?", "What is a tiger?", "How does a rocket fly in space?", "What is coffee made from?",
             "Why is the sky blue?", "Who painted the Mona Lisa?", "What causes earthquakes?", "How do bees make honey?")


@dataclass
class LLMBenchConfig:
    """What `prism bench llm` measures and where it writes.

    Attributes:
        engines: engine names (:func:`ray_app.llm.engines.known_engines`); the first is the reference for agreement.
        batches: answers in flight for the throughput runs.
        max_new_tokens: tokens per answer (the load mix's 48).
        prompt_passages: wiki passages per prompt (five: about the load mix's prompt length).
        adapter: a PEFT adapter merged into the model (``""``: the base model, which every engine can serve).
        threads: CPU threads per engine (default: all CPUs).
        out: folder for ``llm-engines.{json,md}``.
        write: write the report files.
    """

    engines: list[str] = field(default_factory=default_engines)
    adapter: str = ""
    batches: list[int] = field(default_factory=lambda: [1, 4, 16])
    max_new_tokens: int = 48
    prompt_passages: int = 5
    threads: int | None = None
    out: Path = Path("docs/reports")
    write: bool = True


def build_prompts(tokenizer, n: int, passages_per_prompt: int, budget: int | None) -> list[str]:
    """``n`` serving prompts: a question and wiki lead passages (deterministic: sorted articles), cut to
    ``budget`` tokens as the fusion deployment cuts them (``PRISM_PROMPT_TOKEN_BUDGET``)."""
    from ray_app.corpus.wiki import load_wiki_records
    from ray_app.llm.generate import render_prompt
    from ray_app.llm.prompting import Passage

    articles = [a for a in load_wiki_records() if len(a["text"]) > 400][: n * passages_per_prompt]
    prompts = []
    for i in range(n):
        chosen = articles[i * passages_per_prompt:(i + 1) * passages_per_prompt]
        passages = [Passage(j + 1, a["title"], a["text"][:600]) for j, a in enumerate(chosen)]
        prompts.append(render_prompt(tokenizer, QUESTIONS[i % len(QUESTIONS)], passages, None, budget))
    return prompts


def matmul_gflops(dtype_name: str, threads: int, size: int = 1024, repeats: int = 20) -> float:
    """GFLOP/s of a square matmul in ``dtype_name`` on ``threads`` threads (the compute bound's rate)."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def run_batch(batcher, prompts: list[str], max_new_tokens: int) -> dict:
    """Submit ``prompts`` at once; wall time, each one's time to first piece, and the tokens generated."""
    import threading

    before = batcher.generated_tokens
    started = time.perf_counter()
    streams = [batcher.submit(p, max_new_tokens) for p in prompts]
    first: list[float | None] = [None] * len(streams)

    def drain(i: int) -> None:
        for _ in streams[i]:
            if first[i] is None:
                first[i] = time.perf_counter() - started

    workers = [threading.Thread(target=drain, args=(i,)) for i in range(len(streams))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    return {"wall_s": wall, "ttft_s": [f for f in first if f is not None], "tokens": batcher.generated_tokens - before,
            "token_ids": [list(s.tokens) for s in streams]}


def measure_engine(name: str, config: LLMBenchConfig, threads: int) -> dict:
    """Load the model into the engine and run the single-prompt and batched measurements."""
    import psutil
    import torch

    from ray_app.llm.engines import build_engine
    from ray_app.settings import get_settings

    torch.set_num_threads(threads)
    engine = build_engine(name, max_batch_size=max(config.batches), threads=threads, adapter=config.adapter)
    try:
        budget = get_settings().prompt_token_budget
        prompts = build_prompts(engine.tokenizer, max(config.batches), config.prompt_passages, budget)
        uncut = build_prompts(engine.tokenizer, 4, config.prompt_passages, None)
        prompt_tokens = [count_tokens(engine.tokenizer, p) for p in prompts]
        run_batch(engine, prompts[:1], 4)  # warm-up
        single = [run_batch(engine, [p], 1)["ttft_s"][0] for p in prompts[:4]]
        single_uncut = [run_batch(engine, [p], 1)["ttft_s"][0] for p in uncut]
        shared_prefix = measure_without_prefix(engine, prompts[:4])
        batches = {}
        for size in config.batches:
            run = run_batch(engine, prompts[:size], config.max_new_tokens)
            batches[str(size)] = {"answers_per_s": round(size / run["wall_s"], 3),
                                  "tokens_per_s": round(run["tokens"] / run["wall_s"], 1),
                                  "ttft_p50_ms": round(1000 * statistics.median(run["ttft_s"]), 1),
                                  "wall_s": round(run["wall_s"], 2)}
            if size == max(config.batches):
                token_ids = run["token_ids"]
        rss = psutil.Process().memory_info().rss
        version = engine.versions()["model"]
    finally:
        engine.close()
    return {
        "engine": name, "model": version, "precision": engine.precision, "threads": threads,
        "prompt_tokens_mean": round(statistics.mean(prompt_tokens), 1),
        "ttft_ms_batch1": round(1000 * statistics.median(single), 1),
        "prompt_budget": {"budget_tokens": budget,
                          "uncut_prompt_tokens_mean": round(statistics.mean(count_tokens(engine.tokenizer, p) for p in uncut), 1),
                          "uncut_ttft_ms_batch1": round(1000 * statistics.median(single_uncut), 1)},
        "shared_prefix": shared_prefix,
        "batches": batches,
        "answers_per_s_best": max(b["answers_per_s"] for b in batches.values()),
        "rss_mb": round(rss / 2**20, 1),
        # torch's matmul rate in the engine's precision (integer kernels: none measured)
        "matmul_gflops": (round(matmul_gflops(engine.precision, threads), 1)
                          if engine.precision in ("bfloat16", "float32") else None),
        "token_ids": token_ids,
    }


def measure_without_prefix(engine, prompts: list[str]) -> dict | None:
    """For an engine that reuses the system turn's KV cache (``engine.prefix``): its length in tokens and the
    batch-1 TTFT of the same prompts with reuse switched off (prefilled whole), or None for other engines."""
    prefix = getattr(engine, "prefix", None)
    if prefix is None:
        return None
    engine.prefix = None  # read by the decode thread only between requests; none is running now
    try:
        ttft = [run_batch(engine, [p], 1)["ttft_s"][0] for p in prompts]
    finally:
        engine.prefix = prefix
    return {"prefix_tokens": len(prefix.ids), "ttft_ms_batch1_without_reuse": round(1000 * statistics.median(ttft), 1)}


def measure_in_child(name: str, config: LLMBenchConfig, threads: int) -> dict:
    """:func:`measure_engine` in a fresh process: each engine's RSS is its own, and no engine's threads linger."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure_engine, name, config, threads).result()


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict:
    """Top-1 agreement up to the first difference of each answer, and the share of identical answers."""
    agree = total = 0
    for a, b in zip(reference, other, strict=True):
        n = min(len(a), len(b))
        first_diff = next((i for i in range(n) if a[i] != b[i]), n)
        agree += first_diff
        total += max(len(a), 1)
    identical = sum(a == b for a, b in zip(reference, other, strict=True)) / max(len(reference), 1)
    return {"prefix_agreement": round(agree / max(total, 1), 4), "identical_answers": round(identical, 4)}


def bench_llm(config: LLMBenchConfig) -> dict:
    """Measure every engine, one after the other in this process; (with ``config.write``) write the report."""
    from ray_app.llm.engines import parse_engine

    config.engines = [parse_engine(e).name for e in config.engines]  # an unknown one is an InputError up front
    threads = config.threads or os.cpu_count() or 1
    engines = [measure_in_child(name, config, threads) for name in config.engines]
    reference = engines[0]["token_ids"]
    for e in engines:
        e["agreement_with_" + config.engines[0]] = agreement(reference, e.pop("token_ids"))
    base = engines[0]
    for e in engines:
        e["speedup_vs_" + config.engines[0]] = round(e["answers_per_s_best"] / base["answers_per_s_best"], 3)
    best = max(engines, key=lambda e: e["answers_per_s_best"])
    result = {"engines": engines, "winner": best["engine"], "max_new_tokens": config.max_new_tokens,
              "batches": config.batches, "cpu_count": os.cpu_count(), "load_average": load_average(),
              "cpu_flags": _bf16_flags()}
    command = (f"prism bench llm --engines {','.join(config.engines)} --threads {threads} "
               f"--max-new-tokens {config.max_new_tokens} --json")
    if config.write:
        write_report(config.out, REPORT_NAME, result, render_markdown, command=command)
    return result


def _bf16_flags() -> list[str]:
    """The CPU's matrix-math flags that decide what bf16 costs here."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(flags & {"amx_bf16", "amx_int8", "avx512_bf16", "avx512f", "avx2"})


def render_markdown(r: dict) -> str:
    """The Markdown page for ``llm-engines.md``."""
    first = r["engines"][0]["engine"]
    lines = [
        "# LLM engines for the fusion deployment",
        "",
        f"Generated by `{r['command']}` ({r['cpu_count']} CPUs, flags {', '.join(r['cpu_flags']) or 'none'}; "
        f"1-minute load average at the end {r['load_average'][0]}). SmolLM2-135M-Instruct, the serving decoder "
        f"(continuous batching, greedy), serving prompts of five wiki passages, {r['max_new_tokens']} new tokens.",
        "",
        "| engine | prompt tokens | TTFT batch 1 (ms) | " + " | ".join(f"answers/s @{b}" for b in r["batches"])
        + f" | tokens/s @{max(r['batches'])} | RSS (MB) | matmul GFLOP/s | agreement with {first} |",
        "|---|---|---|" + "---|" * len(r["batches"]) + "---|---|---|---|",
    ]
    for e in r["engines"]:
        agree = e[f"agreement_with_{first}"]
        lines.append(
            f"| {e['engine']} | {e['prompt_tokens_mean']:.0f} | {e['ttft_ms_batch1']:.0f} | "
            + " | ".join(f"{e['batches'][str(b)]['answers_per_s']:.2f}" for b in r["batches"])
            + f" | {e['batches'][str(max(r['batches']))]['tokens_per_s']:.0f} | {e['rss_mb']:.0f} | "
            f"{e['matmul_gflops'] or '–'} | {agree['prefix_agreement']:.3f} (identical {agree['identical_answers']:.2f}) |")
    budget = r["engines"][0]["prompt_budget"]
    lines += [
        "",
        f"Prompt budget ({budget['budget_tokens']} tokens, `PRISM_PROMPT_TOKEN_BUDGET`): the same prompts uncut average "
        f"{budget['uncut_prompt_tokens_mean']:.0f} tokens; " + "; ".join(
            f"{e['engine']} TTFT at batch 1 {e['prompt_budget']['uncut_ttft_ms_batch1']:.0f} ms uncut, "
            f"{e['ttft_ms_batch1']:.0f} ms cut" for e in r["engines"]) + ".",
    ]
    reusing = [e for e in r["engines"] if e.get("shared_prefix")]
    if reusing:
        lines += ["", "Shared prefix (the system turn's KV cache computed once per replica, "
                  "`ray_app.llm.batching.SharedPrefix`): " + "; ".join(
                      f"{e['engine']} reuses {e['shared_prefix']['prefix_tokens']} of {e['prompt_tokens_mean']:.0f} "
                      f"prompt tokens, TTFT at batch 1 {e['ttft_ms_batch1']:.0f} ms with reuse, "
                      f"{e['shared_prefix']['ttft_ms_batch1_without_reuse']:.0f} ms without" for e in reusing) + "."]
    lines += [
        "",
        f"Winner by answers/s at its best batch: **{r['winner']}**. Agreement is top-1 greedy agreement with "
        f"{first} up to each answer's first differing token, over the largest batch's answers.",
        "",
        "The numbers are in `llm-engines.json` next to this file.",
        "",
    ]
    return "\n".join(lines)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The job's arguments; every default is :class:`LLMBenchConfig`'s."""
    d = LLMBenchConfig()
    p = job_parser(prog, __doc__)
    p.add_argument("--engines", type=lambda s: [e.strip() for e in s.split(",") if e.strip()], default=d.engines,
                   help=f"Comma-separated engines, the first is the reference ({', '.join(ENGINES)}).")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=d.batches,
                   help="Comma-separated answers in flight for the throughput runs.")
    p.add_argument("--max-new-tokens", type=int_at_least(1, 512), default=d.max_new_tokens, metavar="N",
                   help="Tokens per answer.")
    p.add_argument("--prompt-passages", type=int_at_least(1, 20), default=d.prompt_passages, metavar="N",
                   help="Wiki passages per prompt.")
    p.add_argument("--threads", type=int_at_least(1), default=d.threads, metavar="N",
                   help="CPU threads per engine (default: all CPUs).")
    p.add_argument("--adapter", default=d.adapter, metavar="DIR",
                   help="A PEFT adapter merged into the model (default: the base model; llamacpp serves the base only).")
    p.add_argument("--out", type=Path, default=d.out, help="Where llm-engines.{json,md} are written.")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=d.write, help="Write the report files.")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``prism bench llm`` / ``python -m ray_app.benchmarks.llm``: measure, write the report, print the result."""
    return run_job(build_parser(prog or PROG), argv, lambda args: bench_llm(LLMBenchConfig(**args)))


if __name__ == "__main__":
    main()
