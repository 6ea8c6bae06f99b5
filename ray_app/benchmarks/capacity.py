"""`prism bench serve --capacity`: the Locust mix at several user counts and the engine's bare throughput, in one run.

    prism serve up --detach                       # the app under test (127.0.0.1:8000 by default)
    prism bench serve --capacity --steps 10,25,50,100,150 --step-duration 60 --json --out docs/reports/serve-capacity
    python -m ray_app.benchmarks.serve --capacity --json --out docs/reports/serve-capacity

Run from the project root (the Locust file is ``loadtests/locustfile.py``), in an environment that
reaches the app's database (``DATABASE_URL`` or the embedded server): the bare measurement renders the
load mix's questions with passages retrieved from it.

0. Warm-up: ``--warmup`` seconds (30) of the first step's load, not recorded: the app's first requests
   (lazy imports, first queries of each index) are not what a step measures.
1. Steps: for each user count, Locust runs as its own process for ``--step-duration`` seconds (the
   locustfile's mix and think time; users ramp up within about 5 s). Per step: asks offered and
   answered per second, the share refused with 503 + Retry-After (shed), time to first token of the
   asks let in, total answer time, search latency, 4xx, 5xx (other than sheds) and client timeouts.
2. Bare engine: after the load, this process loads the fusion deployment's model the way a replica
   does (``PRISM_LLM_*`` settings, ``PRISM_FUSION_THREADS``) and runs the same prompts through the
   serving decoder with at most 1, 4, 8, 16 answers in flight, each size answering the same 16 prompts in
   a closed loop (no Serve, no HTTP): ``bare_answers_per_s`` is the best. ``serve_efficiency`` = the most answers/s the service gave in a step ÷ that.
3. Compute bound: the matmul rate in the serving precision ÷ the FLOPs of one answer,
   2 × parameters × (prompt tokens + new tokens): what the arithmetic alone would allow.
4. ``answers_per_s_at_slo``: the most answers/s of a step whose admitted asks' TTFT p95 is under 2 s
   and that had no 5xx. The report says per step what bounded it, and why a missed target was missed.
"""

from __future__ import annotations

import os
import statistics
import sys
from typing import TYPE_CHECKING

from ray_app.benchmarks.serve import (
    ASK_NAMES,
    app_health,
    fmt_number,
    fusion_profile,
    load_max_new_tokens,
    load_mix,
    named_entries,
    outcome_counts,
    outcome_entries,
    percentile,
    run_locust,
    serving_prompts,
    shed_share,
    stage_percentiles,
)
from ray_app.reports import load_average, write_report

if TYPE_CHECKING:
    from ray_app.benchmarks.serve import ServeBenchConfig

SLO_TTFT_MS = 2000.0
BASELINE_ANSWERS_PER_S = 0.56  # docs/reports/serve-100users.md before issue 15 (no admission, fp32 torch)
TARGETS = {"users": 100, "errors_5xx": 0, "client_timeouts": 0, "ask_ttft_p95_ms_admitted": SLO_TTFT_MS,
           "search_p95_ms": 300.0, "answers_per_s_at_slo": round(3 * BASELINE_ANSWERS_PER_S, 2),
           "serve_efficiency": 0.8}
RAMP_S = 5.0  # every step's users are started within about this many seconds


def bench_capacity(config: ServeBenchConfig) -> dict:
    """Run every step, then the bare engine and the compute bound; write the report when ``config.out`` is set.

    Raises:
        Unavailable: no healthy app at ``config.url``, or Locust failed.
    """
    from ray_app.settings import get_settings

    mix = load_mix(config.locustfile)
    max_new_tokens = load_max_new_tokens(mix)
    health = app_health(config.url)
    steps = []
    if config.warmup:
        print(f"capacity: warm-up, {config.steps[0]} users for {config.warmup} s (not recorded)", file=sys.stderr,
              flush=True)
        run_locust(config.url, config.steps[0], config.warmup, max(config.spawn_rate, config.steps[0] / RAMP_S),
                   config.locustfile, max_new_tokens, config.client_timeout)
    for users in config.steps:
        spawn_rate = max(config.spawn_rate, users / RAMP_S)
        print(f"capacity: {users} users for {config.step_duration} s", file=sys.stderr, flush=True)
        stats = run_locust(config.url, users, config.step_duration, spawn_rate, config.locustfile, max_new_tokens,
                           config.client_timeout)
        step = summarise_step(stats, users, config.step_duration)
        # the gate's adaptive limit at the step's end (one ingress replica's: /healthz answers from one)
        step["admission_limit"] = (app_health(config.url).get("admission") or {}).get("limit")
        steps.append(step)
    print("capacity: the engine's bare throughput", file=sys.stderr, flush=True)
    # The replicas cap every answer at PRISM_MAX_NEW_TOKENS: the bare engine writes answers as long.
    engine = measure_bare_engine(mix["questions"], min(max_new_tokens, get_settings().max_new_tokens),
                                 config.bare_batches, config.profile)
    report = summarise_capacity(steps, engine["bare"], engine["compute_bound"])
    think = [float(x) for x in (os.environ.get("PRISM_LOAD_THINK_S") or "1,5").split(",")]  # the locustfile's
    report |= {"url": config.url, "step_duration_s": config.step_duration, "warmup_s": config.warmup,
               "client_timeout_s": config.client_timeout,
               "think_time_s": think,
               "load_max_new_tokens": max_new_tokens, "admission": health.get("admission"),
               "fusion_profile": engine["profile"], "cpus": os.cpu_count(), "load_average": load_average()}
    report["notes"] = explain_capacity(report)
    command = (f"prism bench serve --capacity --steps {','.join(map(str, config.steps))} --step-duration "
               f"{config.step_duration} --client-timeout {config.client_timeout:g} --bare-batches "
               f"{','.join(map(str, config.bare_batches))} --warmup {config.warmup}"
               f"{'' if config.profile else ' --no-profile'} --json"
               + (f" --out {config.out}" if config.out is not None else ""))
    report["command"] = command
    if config.out is not None:
        write_report(config.out.parent, config.out.name, report, render_markdown)
    return report


# ------------------------------------------------------------------------------------------ steps


def summarise_step(stats: list[dict], users: int, duration: float) -> dict:
    """One step's numbers from the locustfile's stats (its OUTCOME, TTFT and STAGE entries)."""
    asks = outcome_counts(stats, ASK_NAMES)
    search = outcome_counts(stats, ("search",))
    errors = {k: asks[k] + search[k] for k in ("4xx", "5xx", "timeout", "error")}
    ttft = named_entries(stats, {f"{n}:ttft" for n in ASK_NAMES}, "TTFT")
    written = named_entries(stats, {f"{n}:llm" for n in ASK_NAMES}, "ANSWER")
    recorded = written or named_entries(stats, {f"{n}:no_sources" for n in ASK_NAMES}, "ANSWER")
    step = {
        "users": users,
        "offered_asks_per_s": round(sum(asks.values()) / duration, 3),
        "admitted_asks_per_s": round(asks["ok"] / duration, 3),
        "shed_share": shed_share(asks),
        # answers the LLM wrote (the rest said "the sources do not say" without it); None: not recorded
        "llm_answers_per_s": round(sum(e["num_requests"] for e in written) / duration, 3) if recorded else None,
        "ask_ttft_p50_ms_admitted": percentile(ttft, 50),
        "ask_ttft_p95_ms_admitted": percentile(ttft, 95),
        "ask_total_p95_ms": percentile(outcome_entries(stats, ASK_NAMES, ("ok",)), 95),
        "search_p95_ms": percentile(named_entries(stats, {"search"}, "POST"), 95),
        "errors_4xx": errors["4xx"],
        "errors_5xx": errors["5xx"],
        "client_timeouts": errors["timeout"],
        "other_errors": errors["error"],
        "shed_p95_ms": percentile(outcome_entries(stats, ASK_NAMES, ("shed",)), 95),
        "searches_per_s": round(search["ok"] / duration, 3),
        "outcomes": {"ask": asks, "search": search},
        "ask_stages": stage_percentiles(stats, set(ASK_NAMES)),
        "duration_s": duration,
    }
    step["bound"] = step_bound(step)
    return step


def step_bound(step: dict) -> str:
    """What limited a step, read from its numbers (the first that applies)."""
    ttft, share = step["ask_ttft_p95_ms_admitted"], step["shed_share"] or 0
    rates = f"{step['admitted_asks_per_s']:.2f} of {step['offered_asks_per_s']:.2f} asks/s answered"
    if step["errors_5xx"]:
        return f"server errors: {step['errors_5xx']} 5xx other than sheds ({rates})"
    if step["client_timeouts"]:
        return f"client timeouts: {step['client_timeouts']} requests got no next byte in time ({rates})"
    if share:
        late = (f"; the asks let in still waited {fmt_number(ttft)} ms p95 for a first token" if ttft is not None
                and ttft >= SLO_TTFT_MS else "")
        return f"LLM capacity: admission shed {share:.0%} of asks ({rates}){late}"
    if ttft is not None and ttft >= SLO_TTFT_MS:
        return f"queueing for the LLM: nothing shed, but asks waited {fmt_number(ttft)} ms p95 for a first token ({rates})"
    if step["search_p95_ms"] is not None and step["search_p95_ms"] >= TARGETS["search_p95_ms"]:
        return f"search latency: p95 {fmt_number(step['search_p95_ms'])} ms with decoding on the same CPUs ({rates})"
    return f"offered load: every ask answered within the SLO ({rates}), headroom left"


def summarise_capacity(steps: list[dict], bare: dict, bound: dict) -> dict:
    """The overall numbers: answers/s at the SLO, serve efficiency, the compute bound, targets met."""
    within = [s for s in steps if not s["errors_5xx"] and s["ask_ttft_p95_ms_admitted"] is not None
              and s["ask_ttft_p95_ms_admitted"] < SLO_TTFT_MS]
    # Served answers the engine wrote: answers without a passage cost no LLM work.
    served = max((s["admitted_asks_per_s"] if s.get("llm_answers_per_s") is None else s["llm_answers_per_s"]
                  for s in steps), default=0.0)
    best = bare["answers_per_s_best"]
    report = {
        "steps": steps,
        "answers_per_s_at_slo": max((s["admitted_asks_per_s"] for s in within), default=0.0),
        "served_answers_per_s_max": served,
        "saturated": any(s["shed_share"] for s in steps),
        "bare_answers_per_s": best,
        "serve_efficiency": round(served / best, 3) if best else None,
        "compute_bound_answers_per_s": bound["answers_per_s"],
        "bare_share_of_compute_bound": round(best / bound["answers_per_s"], 3) if bound["answers_per_s"] else None,
        "bare": bare,
        "compute_bound": bound,
        "targets": TARGETS,
    }
    report["targets_met"] = targets_met(report)
    return report


def targets_met(report: dict) -> dict[str, bool | None]:
    """Each target of issue 15: met, missed, or None when not measured (no step at 100 users)."""
    step = next((s for s in report["steps"] if s["users"] == TARGETS["users"]), None)

    def below(key: str, strict: bool) -> bool | None:
        if step is None or step[key] is None:
            return None
        return step[key] < TARGETS[key] if strict else step[key] <= TARGETS[key]

    efficiency = report["serve_efficiency"]
    return {
        "errors_5xx": below("errors_5xx", False),
        "client_timeouts": below("client_timeouts", False),
        "ask_ttft_p95_ms_admitted": below("ask_ttft_p95_ms_admitted", True),
        "search_p95_ms": below("search_p95_ms", True),
        "answers_per_s_at_slo": report["answers_per_s_at_slo"] >= TARGETS["answers_per_s_at_slo"],
        "serve_efficiency": None if efficiency is None else efficiency >= TARGETS["serve_efficiency"],
    }


# ------------------------------------------------------------------------------------ bare engine


def compute_bound(parameters: int, prompt_tokens: float, new_tokens: float, matmul_gflops: float) -> dict:
    """Answers/s the arithmetic alone allows: ``matmul_gflops`` ÷ (2 × ``parameters`` × tokens per answer)."""
    flops = 2 * parameters * (prompt_tokens + new_tokens)
    return {"parameters": parameters, "prompt_tokens_mean": round(prompt_tokens, 1),
            "new_tokens_mean": round(new_tokens, 1), "flops_per_answer": flops,
            "matmul_gflops": round(matmul_gflops, 1), "answers_per_s": round(matmul_gflops * 1e9 / flops, 2)}


def measure_bare_engine(questions: list[str], max_new_tokens: int, batches: list[int], profile: bool) -> dict:
    """The fusion deployment's engine in this process on the load mix's prompts: no Serve, no HTTP.

    Loads the engine as a replica does (:func:`ray_app.llm.engines.build_engine` with the settings:
    ``PRISM_LLM_ENGINE``, the adapter, the replicas' threads), runs it with each of ``batches``
    answers in flight, every size on the same ``max(batches)`` prompts in a closed loop
    (:func:`ray_app.benchmarks.llm.run_closed_loop`: batch 1 does the work batch 16 does), and measures
    the matmul rate in the engine's precision (float32 stands in for integer kernels). With ``profile`` (torch engines),
    also the prefill and decode-step profile of :func:`ray_app.benchmarks.serve.fusion_profile` on the
    same loaded model.

    Returns:
        ``bare`` (per batch and the best), ``compute_bound`` and ``profile`` (None without ``profile``).
    """
    import torch

    from ray_app.benchmarks.llm import matmul_gflops, run_batch, run_closed_loop
    from ray_app.llm.engines import build_engine
    from ray_app.llm.generate import count_tokens
    from ray_app.settings import get_settings

    settings = get_settings()
    threads = settings.fusion_threads
    torch.set_num_threads(threads)
    engine = build_engine(settings=settings, max_batch_size=max(batches), threads=threads)
    prompts = serving_prompts(engine.tokenizer, questions)
    prompt_tokens = statistics.mean(count_tokens(engine.tokenizer, p) for p in prompts)
    runs = {}
    try:
        run_batch(engine, prompts[:1], 4)  # warm-up
        work = [prompts[i % len(prompts)] for i in range(max(batches))]
        for size in batches:
            run = run_closed_loop(engine, work, size, max_new_tokens)
            runs[str(size)] = {"answers_per_s": round(len(work) / run["wall_s"], 3),
                               "tokens_per_s": round(run["tokens"] / run["wall_s"], 1),
                               "new_tokens_mean": round(run["tokens"] / len(work), 1),
                               "ttft_p50_ms": round(1000 * statistics.median(run["ttft_s"]), 1) if run["ttft_s"] else None,
                               "wall_s": round(run["wall_s"], 2)}
    finally:
        engine.close()
    best = max(runs, key=lambda b: runs[b]["answers_per_s"])
    dtype = engine.precision if engine.precision in ("bfloat16", "float32") else "float32"
    bare = {"engine": engine.name, "dtype": engine.precision, "threads": threads, "prompts": len(prompts),
            "prompt_tokens_mean": round(prompt_tokens, 1), "max_new_tokens": max_new_tokens, "batches": runs,
            "best_batch": int(best), "answers_per_s_best": runs[best]["answers_per_s"]}
    bound = compute_bound(engine.parameters, prompt_tokens, runs[best]["new_tokens_mean"],
                          matmul_gflops(dtype, threads, size=2048, repeats=10))
    llm = getattr(engine, "llm", None)
    prof = fusion_profile(questions, max_new_tokens, llm=llm) if profile and llm is not None else None
    return {"bare": bare, "compute_bound": bound, "profile": prof}


# ------------------------------------------------------------------------------------------ notes


def explain_capacity(r: dict) -> list[str]:
    """Why a target was missed, from the run's own numbers."""
    notes = []
    bare, bound, best = r["bare"], r["compute_bound"], r["bare_answers_per_s"]
    served = r["served_answers_per_s_max"]
    if not r["saturated"]:
        notes.append(f"No step shed an ask: the service was not saturated, so {served:.2f} answers/s (and "
                     "serve_efficiency) is what the offered load asked for, a lower bound of capacity.")
    if not r["targets_met"]["answers_per_s_at_slo"]:
        notes.append(_slo_note(r))
    if r["serve_efficiency"] is not None and not r["targets_met"]["serve_efficiency"]:
        notes.append(_efficiency_note(r))
    notes.append(
        f"The engine's {best:.2f} answers/s bare is {r['bare_share_of_compute_bound'] or 0:.0%} of the compute bound "
        f"({bound['answers_per_s']:.1f} answers/s: {bound['matmul_gflops']:,.0f} GFLOP/s of {bare['dtype']} matmuls ÷ "
        f"{bound['flops_per_answer'] / 1e9:.1f} GFLOP per answer of {bound['prompt_tokens_mean']:.0f} + "
        f"{bound['new_tokens_mean']:.0f} tokens); the rest is per-step overhead the arithmetic does not count "
        "(attention over the cache, small-batch kernels, Python between decode steps).")
    step = next((s for s in r["steps"] if s["users"] == TARGETS["users"]), None)
    if step is not None:
        notes += _step_target_notes(step, r["targets_met"])
    load = r["load_average"][0]
    if r["cpus"] and load > 2 * r["cpus"]:
        notes.append(f"1-minute load average {load} on {r['cpus']} CPUs at the end: the app under test, Locust and "
                     "the bare engine share these CPUs; anything else running beside them lowers every rate here.")
    return notes


def _slo_note(r: dict) -> str:
    bare, best, target = r["bare"], r["bare_answers_per_s"], TARGETS["answers_per_s_at_slo"]
    head = (f"answers_per_s_at_slo is {r['answers_per_s_at_slo']:.2f}, below the target {target:.2f} "
            f"(3 × the {BASELINE_ANSWERS_PER_S} before admission control)"
            + ("" if r["answers_per_s_at_slo"] else f": no step kept admitted TTFT p95 under {SLO_TTFT_MS:,.0f} ms "
               "without a 5xx") + ". ")
    if best < target:
        why = (f"It is bound by the engine: alone, with no Serve and no HTTP, it writes {best:.2f} answers/s at its best "
               f"batch ({bare['best_batch']} in flight, {bare['engine']}, {bare['threads']} threads) on these prompts.")
        prof = r.get("fusion_profile")
        if prof:
            big = max(prof["decode_step_ms_by_batch"], key=int)
            why += (f" Profile: a {prof['prompt_tokens_p50']}-token prompt takes {prof['prefill_ms_p50']:,.0f} ms to "
                    f"prefill and a decode step {prof['decode_step_ms_by_batch'][big]:,.0f} ms for {big} rows, about "
                    f"{prof['cpu_seconds_per_answer']:.2f} s of the machine per answer.")
        return head + why
    return head + (f"The engine alone writes {best:.2f} answers/s, so the loss is in serving: see serve_efficiency "
                   "and the per-step bounds.")


def _efficiency_note(r: dict) -> str:
    served, best, bare = r["served_answers_per_s_max"], r["bare_answers_per_s"], r["bare"]
    parts = [f"Serving delivers {served:.2f} of the engine's {best:.2f} answers/s ({r['serve_efficiency']:.0%}, "
             f"target {TARGETS['serve_efficiency']:.0%})."]
    admission = r.get("admission") or {}
    if admission.get("max_active") and admission["max_active"] < bare["best_batch"]:
        parts.append(f"The admission gate lets at most {admission['max_active']} asks in per ingress replica while the engine "
                     f"is fastest with {bare['best_batch']} in flight.")
    top = max(r["steps"], key=lambda s: s["admitted_asks_per_s"])
    stages = {k: (v.get("p50_ms") or 0) for k, v in top["ask_stages"].items()}
    side = sum(stages.get(k, 0) for k in ("vision_ms", "retrieval_ms", "audit_ms"))
    if side:
        parts.append(f"At {top['users']} users each ask also spent {side:,.0f} ms (p50) in vision, retrieval and audit, "
                     f"and {top['searches_per_s']:.1f} searches/s ran, on the same CPUs as the decoder.")
    return " ".join(parts)


def _step_target_notes(step: dict, met: dict) -> list[str]:
    notes, users = [], step["users"]
    if met["ask_ttft_p95_ms_admitted"] is False:
        stages = {k: (v.get("p50_ms") or 0) for k, v in step["ask_stages"].items()}
        before = stages.get("vision_ms", 0) + stages.get("retrieval_ms", 0)
        notes.append(f"At {users} users the asks let in waited {fmt_number(step['ask_ttft_p95_ms_admitted'])} ms p95 for a "
                     f"first token (target < {SLO_TTFT_MS:,.0f}): of a median {stages.get('ttft_ms', 0):,.0f} ms, vision "
                     f"and retrieval took {before:,.0f} ms and the rest was the wait for a batch slot and the prefill, "
                     + (f"with the gate down to {step['admission_limit']:g} asks in flight (its floor is 1): the wait "
                        "was for CPU that searches, vision and the load generator took, not for the LLM's batch."
                        if (step.get("admission_limit") or 99) < 2 else
                        "so the gate admits more asks than the fusion replica starts within the SLO."))
    if met["search_p95_ms"] is False:
        notes.append(f"At {users} users search p95 was {fmt_number(step['search_p95_ms'])} ms (target < "
                     f"{TARGETS['search_p95_ms']:,.0f}): one MiniLM embedding and two index scans, waiting for CPU "
                     "that decoding holds.")
    if met["errors_5xx"] is False:
        notes.append(f"At {users} users {step['errors_5xx']} requests got a 5xx other than a shed.")
    if met["client_timeouts"] is False:
        notes.append(f"At {users} users {step['client_timeouts']} requests timed out at the client.")
    return notes


# ----------------------------------------------------------------------------------------- report


def render_markdown(r: dict) -> str:
    """The Markdown page for ``serve-capacity.md`` (the JSON beside it holds the same numbers)."""
    bare, bound = r["bare"], r["compute_bound"]
    lines = [
        f"# Serve capacity: {', '.join(str(s['users']) for s in r['steps'])} users, {r['step_duration_s']} s each",
        "",
        f"Generated by `{r['command']}` against {r['url']} (mix from `loadtests/locustfile.py`: search 60 %, text ask "
        f"30 %, image ask 10 %, think time {'-'.join(f'{t:g}' for t in r.get('think_time_s', [1, 5]))} s; client "
        f"timeout {r['client_timeout_s']:g} s; {r.get('warmup_s', 0)} s of unrecorded warm-up load before the first "
        f"step). {r['cpus']} CPUs, "
        f"load average at the end {' / '.join(map(str, r['load_average']))}. Admission: "
        f"{_admission(r.get('admission'))}.",
        "",
        "| users | offered asks/s | answered asks/s | shed | gate limit | TTFT p50 ms (admitted) | "
        "TTFT p95 ms (admitted) | ask total p95 ms | search p95 ms | 4xx | 5xx | client timeouts | bounded by |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in r["steps"]:
        share = "–" if s["shed_share"] is None else f"{s['shed_share']:.0%}"
        limit = "–" if s.get("admission_limit") is None else f"{s['admission_limit']:g}"
        lines.append(f"| {s['users']} | {s['offered_asks_per_s']:.2f} | {s['admitted_asks_per_s']:.2f} | {share} | "
                     f"{limit} | "
                     f"{fmt_number(s['ask_ttft_p50_ms_admitted'])} | {fmt_number(s['ask_ttft_p95_ms_admitted'])} | "
                     f"{fmt_number(s['ask_total_p95_ms'])} | {fmt_number(s['search_p95_ms'])} | {s['errors_4xx']} | "
                     f"{s['errors_5xx']} | {s['client_timeouts']} | {s['bound']} |")
    lines += [
        "",
        "Gate limit: the asks one ingress replica let in at once when the step ended (it adapts to the admitted "
        "asks' time to first token).",
        "Shed: asks refused with 503 + `Retry-After` (not failures); 5xx counts every other 5xx. TTFT and answered "
        "asks count only the asks let in.",
        "",
        "## Capacity",
        "",
        f"- `answers_per_s_at_slo`: **{r['answers_per_s_at_slo']:.2f}** answers/s, the most of a step whose admitted "
        f"TTFT p95 was under {SLO_TTFT_MS:,.0f} ms with no 5xx.",
        f"- `bare_answers_per_s`: **{r['bare_answers_per_s']:.2f}**, the engine alone ({bare['engine']}, "
        f"{bare['threads']} threads, no Serve, no HTTP) on the same prompts ({bare['prompts']} load-mix questions with "
        f"their retrieved passages, {bare['prompt_tokens_mean']:.0f} tokens on average, up to {bare['max_new_tokens']} "
        f"new tokens) at its best batch, {bare['best_batch']} in flight.",
        f"- `serve_efficiency`: **{_ratio(r['serve_efficiency'])}** = {r['served_answers_per_s_max']:.2f} answers/s "
        f"written by the LLM and served, at best{'' if r['saturated'] else ' (not saturated: a lower bound)'} ÷ bare.",
        f"- `compute_bound_answers_per_s`: **{r['compute_bound_answers_per_s']:.1f}** = {bound['matmul_gflops']:,.0f} "
        f"GFLOP/s ({bare['dtype']} matmul, measured) ÷ 2 × {bound['parameters'] / 1e6:.0f} M parameters × "
        f"({bound['prompt_tokens_mean']:.0f} + {bound['new_tokens_mean']:.0f}) tokens; the engine reaches "
        f"{_ratio(r['bare_share_of_compute_bound'])} of it.",
        "",
        "| answers in flight (bare) | answers/s | tokens/s | TTFT p50 ms | new tokens / answer |",
        "|---:|---:|---:|---:|---:|",
        *[f"| {b} | {v['answers_per_s']:.2f} | {v['tokens_per_s']:.0f} | {fmt_number(v['ttft_p50_ms'])} | "
          f"{v['new_tokens_mean']:.0f} |" for b, v in bare["batches"].items()],
        "",
        f"## Targets (issue 15; per-step ones at {TARGETS['users']} users)",
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
        *_target_rows(r),
    ]
    if r.get("notes"):
        lines += ["", "## What bounds it", "", *[f"- {n}" for n in r["notes"]]]
    return "\n".join(lines) + "\n"


def _target_rows(r: dict) -> list[str]:
    step = next((s for s in r["steps"] if s["users"] == TARGETS["users"]), {})
    goals = {"errors_5xx": "= 0", "client_timeouts": "= 0", "ask_ttft_p95_ms_admitted": f"< {SLO_TTFT_MS:,.0f} ms",
             "search_p95_ms": f"< {TARGETS['search_p95_ms']:,.0f} ms",
             "answers_per_s_at_slo": f">= {TARGETS['answers_per_s_at_slo']:.2f}",
             "serve_efficiency": f">= {TARGETS['serve_efficiency']}"}
    rows = []
    for key, goal in goals.items():
        value = r[key] if key in ("answers_per_s_at_slo", "serve_efficiency") else step.get(key)
        met = r["targets_met"][key]
        rows.append(f"| {key} | {goal} | {fmt_number(value)} | {'–' if met is None else 'yes' if met else '**no**'} |")
    return rows


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _admission(a: dict | None) -> str:
    if not a:
        return "not reported by /healthz"
    target = a.get("ttft_target_s")
    adaptive = (f" (fewer while admitted asks' first tokens come later than {target:g} s)"
                if target is not None and target < 60 else "")
    return f"at most {a.get('max_active')} asks in flight{adaptive} and {a.get('max_waiting')} waiting per ingress replica"
