"""`prism bench llm`: the fusion deployment's LLM engine in each precision, on the same answer prompts.

    prism bench llm --json                          # writes docs/reports/llm-engines.{json,md}
    python -m ray_app.benchmarks.llm --engines torch-fp32,torch-bf16 --json

Every engine (:mod:`ray_app.llm.engines`: torch with continuous batching, CTranslate2, llama.cpp) runs
greedy decoding behind the fusion deployment's interface in its own process with the same threads, on the
same prompts: the serving prompt (system prompt, five numbered wiki passages, a question) at about the load
mix's length, with the load mix's ``max_new_tokens``, and the served model (``--adapter``: the LoRA/DPO
adapter merged; llama.cpp runs the base GGUF only). Per engine: time to first token at batch 1 (one
prefill), with and without the shared-prefix reuse; then, for each of ``--batches`` (1, 4, 16), the same
prompts (as many as the largest batch) answered in a closed loop with at most that many in flight, so
answers/s and tokens/s compare across batch sizes; resident memory; and how often its greedy tokens agree
with the first engine's. The machine's matmul rate in each precision is measured too. With ``--quality DIR``
(``prism eval answers`` reports per engine) the winner is the fastest engine at its best batch whose
grounding and ROUGE-L are within 2 points of torch-fp32's; otherwise the report says it is by speed only.
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
        quality: folder of `prism eval answers` reports named ``<engine>.json`` (the adapter's answers on the
            held-out set with ``PRISM_LLM_ENGINE=<engine>``); their grounding and ROUGE-L decide who may win.
        out: folder for ``llm-engines.{json,md}``.
        write: write the report files.
    """

    engines: list[str] = field(default_factory=default_engines)
    adapter: str = ""
    batches: list[int] = field(default_factory=lambda: [1, 4, 16])
    max_new_tokens: int = 48
    prompt_passages: int = 5
    threads: int | None = None
    quality: Path | None = None
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


def run_closed_loop(engine, prompts: list[str], in_flight: int, max_new_tokens: int) -> dict:
    """Answer every prompt with at most ``in_flight`` of them streaming at once: a closed loop, in which the
    next prompt is submitted as soon as one ends, so any ``in_flight`` does the same work.

    Returns:
        ``wall_s`` for all prompts, ``ttft_s`` (each answer's first text piece, from its own submit; answers
        without text left out), ``tokens`` generated and ``token_ids`` (in prompt order).

    Raises:
        ValueError: ``in_flight`` below 1.
    """
    import threading

    if in_flight < 1:
        raise ValueError(f"in_flight must be at least 1, got {in_flight}")
    answers: list[tuple[float | None, list[int]]] = [(None, [])] * len(prompts)
    errors: list[BaseException] = []
    order, lock = iter(range(len(prompts))), threading.Lock()
    clients = min(in_flight, len(prompts))
    ready = threading.Barrier(clients + 1)  # every client starts with the clock

    def client() -> None:
        ready.wait()
        while not errors:
            with lock:
                i = next(order, None)
            if i is None:
                return
            try:
                answers[i] = answer(prompts[i])
            except BaseException as exc:  # re-raised below, once every client has stopped
                errors.append(exc)

    def answer(prompt: str) -> tuple[float | None, list[int]]:
        submitted = time.perf_counter()
        stream = engine.submit(prompt, max_new_tokens)
        first = None
        for _ in stream:
            if first is None:
                first = time.perf_counter() - submitted
        return first, list(stream.tokens)

    threads = [threading.Thread(target=client, name=f"bench-client-{k}") for k in range(clients)]
    for t in threads:
        t.start()
    before = engine.generated_tokens
    ready.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return {"wall_s": wall, "ttft_s": [first for first, _ in answers if first is not None],
            "tokens": engine.generated_tokens - before, "token_ids": [ids for _, ids in answers]}


def run_batch(engine, prompts: list[str], max_new_tokens: int) -> dict:
    """Submit ``prompts`` at once (:func:`run_closed_loop` with all of them in flight)."""
    return run_closed_loop(engine, prompts, len(prompts), max_new_tokens)


def measure_engine(name: str, config: LLMBenchConfig, threads: int) -> dict:
    """Load the model into the engine and run the single-prompt and batched measurements."""
    import psutil
    import torch

    from ray_app.llm.engines import build_engine
    from ray_app.settings import get_settings

    torch.set_num_threads(threads)
    engine = build_engine(name, max_batch_size=max(config.batches), threads=threads,
                          adapter=adapter_for(name, config.adapter))
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
        for size in config.batches:  # the same prompts each time, ``size`` in flight
            run = run_closed_loop(engine, prompts, size, config.max_new_tokens)
            batches[str(size)] = batch_figures(run, len(prompts))
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
        "best_batch": int(max(batches, key=lambda b: batches[b]["answers_per_s"])),
        "batching": engine.batching,
        "rss_mb": round(rss / 2**20, 1),
        # torch's matmul rate in the engine's precision (integer kernels: none measured)
        "matmul_gflops": (round(matmul_gflops(engine.precision, threads), 1)
                          if engine.precision in ("bfloat16", "float32") else None),
        "token_ids": token_ids,
    }


def batch_figures(run: dict, prompts: int) -> dict:
    """One throughput run's figures: answers/s and tokens/s over all ``prompts``, TTFT percentiles, wall time."""
    import numpy as np

    ttft_ms = [1000 * t for t in run["ttft_s"]]
    return {"answers_per_s": round(prompts / run["wall_s"], 3),
            "tokens_per_s": round(run["tokens"] / run["wall_s"], 1),
            "ttft_p50_ms": round(float(np.percentile(ttft_ms, 50)), 1) if ttft_ms else None,
            "ttft_p95_ms": round(float(np.percentile(ttft_ms, 95)), 1) if ttft_ms else None,
            "new_tokens_mean": round(run["tokens"] / prompts, 1),
            "prompts": prompts, "wall_s": round(run["wall_s"], 2)}


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
    quality = {name: read_quality(config.quality, name, adapter_for(name, config.adapter))
               for name in config.engines} if config.quality else {}
    threads = config.threads or os.cpu_count() or 1
    engines = [measure_in_child(name, config, threads) for name in config.engines]
    reference = engines[0]["token_ids"]
    for e in engines:
        e["agreement_with_" + config.engines[0]] = agreement(reference, e.pop("token_ids"))
        e["adapter"] = adapter_for(e["engine"], config.adapter) or None
        e["quality"] = quality.get(e["engine"])
    base = engines[0]
    for e in engines:
        e["speedup_vs_" + config.engines[0]] = round(e["answers_per_s_best"] / base["answers_per_s_best"], 3)
    result = {"engines": engines, **pick_winner(engines), "max_new_tokens": config.max_new_tokens,
              "batches": config.batches, "prompts_per_run": max(config.batches), "cpu_count": os.cpu_count(),
              "load_average": load_average(), "cpu_flags": _bf16_flags(),
              "quality_source": str(config.quality) if config.quality else None}
    if config.write:
        write_report(config.out, REPORT_NAME, result, render_markdown, command=bench_command(config, threads))
    return result


def bench_command(config: LLMBenchConfig, threads: int) -> str:
    """The `prism bench llm` line that reruns ``config``."""
    command = (f"prism bench llm --engines {','.join(config.engines)} --threads {threads} "
               f"--batches {','.join(map(str, config.batches))} --max-new-tokens {config.max_new_tokens}")
    if config.adapter:
        command += f" --adapter {config.adapter}"
    if config.quality:
        command += f" --quality {config.quality}"
    return command + " --json"


def adapter_for(engine: str, adapter: str) -> str:
    """The adapter ``engine`` runs: ``adapter``, except for llama.cpp, which serves the base GGUF only."""
    return "" if engine.startswith("llamacpp") else adapter


def read_quality(folder: Path, engine: str, adapter: str) -> dict | None:
    """``engine``'s answer quality from ``folder/<engine>.json``, a `prism eval answers` report of one method
    run with ``PRISM_LLM_ENGINE=<engine>``; None when there is no such file.

    Raises:
        InputError: the report is of another engine or checkpoint, or evaluates more or less than one method.
    """
    import json

    from ray_app.errors import InputError
    from ray_app.llm.engines import parse_engine

    path = Path(folder) / f"{engine}.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    evaluated = {m: r for m, r in report.get("methods", {}).items() if "grounding_rate" in r}
    ran = report.get("eval", {}).get("engine")
    if not ran or parse_engine(ran).name != engine:
        raise InputError(f"{path} was evaluated with PRISM_LLM_ENGINE={ran!r}, not {engine!r}")
    if len(evaluated) != 1:
        raise InputError(f"{path} should evaluate one method (the adapter's); it has {sorted(evaluated) or 'none'}")
    ((method, r),) = evaluated.items()
    checkpoint = r.get("checkpoint") or ""
    if (Path(checkpoint).resolve() if checkpoint else None) != (Path(adapter).resolve() if adapter else None):
        raise InputError(f"{path} evaluated checkpoint {checkpoint or 'none'!r}; the bench runs {adapter or 'none'!r}")
    return {"grounding_rate": r["grounding_rate"], "rouge_l": r["rouge_l"], "n_questions": r["n_questions"],
            "method": method, "report": str(path), "command": report.get("command"),
            "load_average": report.get("load_average")}


QUALITY_REFERENCE = "torch-fp32"
QUALITY_TOLERANCE_POINTS = 2.0


def pick_winner(engines: list[dict]) -> dict:
    """The winner: the highest answers/s at its best batch among engines whose grounding rate and ROUGE-L are no
    more than 2 points below torch-fp32's (by speed alone when torch-fp32's quality was not measured); the
    default: the same among engines that batch continuously (what a serving replica needs). Adds each engine's
    quality deltas."""
    by_name = {e["engine"]: e for e in engines}
    ref = (by_name.get(QUALITY_REFERENCE) or {}).get("quality")
    for e in engines:
        q = e.get("quality")
        if ref and q:
            q["grounding_delta_points"] = round(100 * (q["grounding_rate"] - ref["grounding_rate"]), 2)
            q["rouge_l_delta_points"] = round(100 * (q["rouge_l"] - ref["rouge_l"]), 2)
            q["within_tolerance"] = min(q["grounding_delta_points"], q["rouge_l_delta_points"]) >= -QUALITY_TOLERANCE_POINTS
    eligible = [e for e in engines if not ref or (e.get("quality") or {}).get("within_tolerance")]
    fastest = max(engines, key=lambda e: e["answers_per_s_best"])
    winner = max(eligible, key=lambda e: e["answers_per_s_best"])
    continuous = [e for e in eligible if e.get("batching") == "continuous"]
    default = max(continuous, key=lambda e: e["answers_per_s_best"]) if continuous else None
    basis = (f"answers/s at the best batch among engines within {QUALITY_TOLERANCE_POINTS:g} points of "
             f"{QUALITY_REFERENCE} on grounding and ROUGE-L" if ref else
             "answers/s at the best batch (speed only: no quality measured for " + QUALITY_REFERENCE + ")")
    return {"winner": winner["engine"], "winner_basis": basis, "fastest": fastest["engine"],
            "eligible": [e["engine"] for e in eligible],
            "default_engine": default["engine"] if default else None}


def _bf16_flags() -> list[str]:
    """The CPU's matrix-math flags that decide what bf16 costs here."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(flags & {"amx_bf16", "amx_int8", "avx512_bf16", "avx512f", "avx2"})


def render_markdown(r: dict) -> str:
    """The Markdown page for ``llm-engines.md``."""
    first, top = r["engines"][0]["engine"], str(max(r["batches"]))
    lines = [
        "# LLM engines for the fusion deployment",
        "",
        f"Generated by `{r['command']}` ({r['cpu_count']} CPUs, flags {', '.join(r['cpu_flags']) or 'none'}; "
        f"1-minute load average at the end {r['load_average'][0]}). SmolLM2-135M-Instruct"
        + (f" with the adapter `{_adapter(r)}` merged" if _adapter(r) else "")
        + f", greedy, serving prompts of five wiki passages, {r['max_new_tokens']} new tokens at most. Every "
        f"throughput run answers the same {r.get('prompts_per_run', top)} prompts in a closed loop with at most "
        "@N in flight (the next prompt starts when an answer ends), so answers/s compare across N; TTFT is "
        "each answer's own, from its submit.",
        "",
        "| engine | batching | prompt tokens | TTFT batch 1 (ms) | " + " | ".join(f"answers/s @{b}" for b in r["batches"])
        + f" | tokens/s @{top} | TTFT p50 @{top} (ms) | RSS (MB) | matmul GFLOP/s | agreement with {first} "
        "| grounding | ROUGE-L |",
        "|---|---|---|---|" + "---|" * len(r["batches"]) + "---|---|---|---|---|---|---|",
    ]
    for e in r["engines"]:
        agree, q, big = e[f"agreement_with_{first}"], e.get("quality"), e["batches"][top]
        lines.append(
            f"| {e['engine']} | {e.get('batching', '?')} | {e['prompt_tokens_mean']:.0f} | {e['ttft_ms_batch1']:.0f} | "
            + " | ".join(f"{e['batches'][str(b)]['answers_per_s']:.2f}" for b in r["batches"])
            + f" | {big['tokens_per_s']:.0f} | {big['ttft_p50_ms'] or 0:.0f} | {e['rss_mb']:.0f} | "
            f"{e['matmul_gflops'] or '–'} | {agree['prefix_agreement']:.3f} (identical {agree['identical_answers']:.2f}) | "
            + (f"{q['grounding_rate']:.3f} | {q['rouge_l']:.3f} |" if q else "– | – |"))
    lines += ["", *_budget_lines(r), *_quality_lines(r), "",
              f"Winner ({r.get('winner_basis', 'answers/s at the best batch')}): **{r['winner']}**"
              + (f"; fastest overall: {r['fastest']}" if r.get("fastest") not in (None, r["winner"]) else "")
              + (f"; fastest that batches continuously (a serving replica's need): **{r['default_engine']}**"
                 if r.get("default_engine") else "") + ".",
              "",
              f"Agreement is top-1 greedy agreement with {first} up to each answer's first differing token, over the "
              f"@{top} run's answers. The numbers are in `llm-engines.json` next to this file.", ""]
    return "\n".join(lines)


def _adapter(r: dict) -> str | None:
    return next((e["adapter"] for e in r["engines"] if e.get("adapter")), None)


def _budget_lines(r: dict) -> list[str]:
    budget = r["engines"][0]["prompt_budget"]
    lines = [f"Prompt budget ({budget['budget_tokens']} tokens, `PRISM_PROMPT_TOKEN_BUDGET`): the same prompts uncut "
             f"average {budget['uncut_prompt_tokens_mean']:.0f} tokens; " + "; ".join(
                 f"{e['engine']} TTFT at batch 1 {e['prompt_budget']['uncut_ttft_ms_batch1']:.0f} ms uncut, "
                 f"{e['ttft_ms_batch1']:.0f} ms cut" for e in r["engines"]) + "."]
    reusing = [e for e in r["engines"] if e.get("shared_prefix")]
    if reusing:
        lines += ["", "Shared prefix (the system turn's KV cache computed once per replica, "
                  "`ray_app.llm.batching.SharedPrefix`; the other engines prefill every prompt whole): " + "; ".join(
                      f"{e['engine']} reuses {e['shared_prefix']['prefix_tokens']} of {e['prompt_tokens_mean']:.0f} "
                      f"prompt tokens, TTFT at batch 1 {e['ttft_ms_batch1']:.0f} ms with reuse, "
                      f"{e['shared_prefix']['ttft_ms_batch1_without_reuse']:.0f} ms without" for e in reusing) + "."]
    base_only = [e["engine"] for e in r["engines"] if _adapter(r) and not e.get("adapter")]
    if base_only:
        lines += ["", f"{', '.join(base_only)} ran the base model (the bundled GGUF; it cannot merge the adapter), so "
                  "its agreement and quality are not comparable with the others'."]
    return lines


def _quality_lines(r: dict) -> list[str]:
    measured = [e for e in r["engines"] if e.get("quality")]
    if not measured:
        return ["", "Answer quality was not measured in this run (`--quality DIR`): the winner is by speed only."]
    q0 = measured[0]["quality"]
    return ["", f"Answer quality: `prism eval answers` on {q0['n_questions']} held-out questions per engine "
            f"(method {q0['method']}), reports in `{r['quality_source']}/ENGINE.json`; " + "; ".join(
                f"{e['engine']} grounding {e['quality']['grounding_rate']:.3f}, ROUGE-L {e['quality']['rouge_l']:.3f}"
                + (f" ({e['quality']['grounding_delta_points']:+.1f} / {e['quality']['rouge_l_delta_points']:+.1f} "
                   f"points vs {QUALITY_REFERENCE})" if "grounding_delta_points" in e["quality"] else "")
                for e in measured) + ". "
            + ("Not measured: " + ", ".join(e["engine"] for e in r["engines"] if not e.get("quality")) + "."
               if len(measured) < len(r["engines"]) else "")]


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
    p.add_argument("--quality", type=Path, default=d.quality, metavar="DIR",
                   help="Folder of `prism eval answers` reports named ENGINE.json (one method, run with "
                        "PRISM_LLM_ENGINE=ENGINE): the winner must be within 2 points of torch-fp32 on grounding and "
                        "ROUGE-L (default: none, the winner by speed only).")
    p.add_argument("--out", type=Path, default=d.out, help="Where llm-engines.{json,md} are written.")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=d.write, help="Write the report files.")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``prism bench llm`` / ``python -m ray_app.benchmarks.llm``: measure, write the report, print the result."""
    return run_job(build_parser(prog or PROG), argv, lambda args: bench_llm(LLMBenchConfig(**args)))


if __name__ == "__main__":
    main()
