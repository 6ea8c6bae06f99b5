"""`prism bench serve`: Locust against the running Serve app, plus Serve's own overhead in the same run.

    prism serve up --detach                       # the app under test (127.0.0.1:8000 by default)
    prism bench serve --users 100 --duration 60 --json --out docs/reports/serve-100users
    python -m ray_app.benchmarks.serve --users 100 --duration 60 --json --out docs/reports/serve-100users
    prism bench serve --capacity --json --out docs/reports/serve-capacity    # steps of users: see capacity.py

Run from the project root: the load test is ``loadtests/locustfile.py`` (``--locustfile``) and its
request mix ``load_mix.json`` next to it; neither imports Prism.

1. Locust runs as its own process (``locust -f loadtests/locustfile.py --headless``; gevent's
   monkey-patching must not meet the libraries this process has loaded) with the realistic mix
   of that file, and writes its stats as JSON.
2. Serve overhead: the same no-op FastAPI route served by a one-deployment Serve app
   (``python -m serving.noop``) and by bare uvicorn, each measured with the same client
   (sequential latency and concurrent throughput), one after the other.
3. The report: RPS, p50/p95/p99 per endpoint, time to first token for asks, failures, the
   server-side per-stage timings of asks (where the time goes), targets met or missed, and what
   happened to every request (``outcomes``: answered, shed with 503 + Retry-After, 4xx, 5xx, client
   timeout, other error; ``shed_share`` of asks, ``ask_ttft_p95_ms_admitted``).

With ``--capacity`` the same Locust mix runs at several user counts, one after the other, and the
engine's bare throughput is measured in the same run (:mod:`ray_app.benchmarks.capacity`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from ray_app.entrypoints import int_at_least, job_parser, positive_float, run_job
from ray_app.errors import InputError, NotFound, Unavailable
from ray_app.reports import read_report, write_report

PROG = "python -m ray_app.benchmarks.serve"
TARGETS = {"failures": 0, "search_p95_ms": 500.0, "ask_ttft_p95_ms": 2000.0}
ASK_NAMES = ("ask", "ask_image")
# What the locustfile reports for every request, as OUTCOME entries named "<request>:<outcome>".
OUTCOMES = ("ok", "shed", "4xx", "5xx", "timeout", "error")
EXTRA_TYPES = {"TTFT", "STAGE", "OUTCOME", "ANSWER"}  # the locustfile's extra entries, not requests of their own


@dataclass
class ServeBenchConfig:
    """What `prism bench serve` runs and where it writes.

    Attributes:
        users: concurrent simulated users (1-5000).
        duration: seconds of load (5-3600).
        url: the Prism app under test.
        spawn_rate: users started per second.
        overhead_requests: requests per no-op server for the Serve-overhead comparison (0: skip).
        profile: after the load, time the fusion LLM's prefill and decode in-process on the mix's
            prompts (needs the app's database).
        out: write ``OUT.json`` and ``OUT.md`` (e.g. ``docs/reports/serve-100users``); None: only print.
        locustfile: the Locust file (relative to the current directory); its mix is ``load_mix.json`` beside it.
        client_timeout: seconds the load's client waits for response headers or a stream's next event.
        capacity: run the capacity benchmark instead (``steps``, ``step_duration``, ``bare_batches``).
        steps: users of each capacity step, in order.
        step_duration: seconds of load per capacity step.
        bare_batches: answers in flight for the engine's bare throughput (capacity run).
        warmup: seconds of unrecorded load at the first step's users before the capacity steps (0: none),
            so the first step does not measure the app's first requests.
    """

    users: int = 100
    duration: int = 60
    url: str = "http://127.0.0.1:8000"
    spawn_rate: float = 10.0
    overhead_requests: int = 400
    profile: bool = True
    out: Path | None = None
    locustfile: Path = Path("loadtests/locustfile.py")
    client_timeout: float = 30.0
    capacity: bool = False
    steps: list[int] = field(default_factory=lambda: [10, 25, 50, 100, 150])
    step_duration: int = 60
    bare_batches: list[int] = field(default_factory=lambda: [1, 4, 8, 16])
    warmup: int = 30

    def __post_init__(self) -> None:
        if not 1 <= self.users <= 5000 or not 5 <= self.duration <= 3600:
            raise InputError(f"users must be in 1..5000 and duration in 5..3600 s, got {self.users} and {self.duration}")
        if self.spawn_rate <= 0 or self.overhead_requests < 0 or self.client_timeout <= 0:
            raise InputError("spawn_rate and client_timeout must be positive and overhead_requests at least 0")
        if not self.steps or not all(1 <= u <= 5000 for u in self.steps) or not 5 <= self.step_duration <= 3600:
            raise InputError(f"steps must be users in 1..5000 and step_duration in 5..3600 s, got {self.steps} "
                             f"and {self.step_duration}")
        if not 0 <= self.warmup <= 600:
            raise InputError(f"warmup must be 0..600 s, got {self.warmup}")
        if not self.bare_batches or min(self.bare_batches) < 1:
            raise InputError(f"bare_batches must be positive batch sizes, got {self.bare_batches}")


def load_mix(locustfile: Path) -> dict:
    """The request mix beside the Locust file (``load_mix.json``: searches, questions, max_new_tokens).

    Raises:
        NotFound: no Locust file or mix there (run from the project root, or pass ``--locustfile``).
    """
    mix = Path(locustfile).with_name("load_mix.json")
    if not Path(locustfile).exists() or not mix.exists():
        raise NotFound(f"no Locust file and load_mix.json at {locustfile}: run from the project root or pass --locustfile")
    return json.loads(mix.read_text())


def bench_serve(config: ServeBenchConfig) -> dict:
    """Load-test the app with Locust, measure Serve's overhead and the fusion step; write the report
    when ``config.out`` is set. Returns the report.

    Raises:
        Unavailable: no healthy app at ``config.url``, or Locust failed.
    """
    if config.capacity:
        from ray_app.benchmarks.capacity import bench_capacity

        return bench_capacity(config)
    mix = load_mix(config.locustfile)
    max_new_tokens = load_max_new_tokens(mix)
    health = app_health(config.url)
    stats = run_locust(config.url, config.users, config.duration, config.spawn_rate, config.locustfile, max_new_tokens,
                       config.client_timeout)
    report = summarise(stats, config.users, config.duration, config.url)
    report["app"] = health
    if config.overhead_requests:
        report["serve_overhead"] = measure_overhead(config.overhead_requests)
    if config.profile:
        report["fusion_profile"] = fusion_profile(mix["questions"], max_new_tokens)
    report["machine"] = {"cpus": os.cpu_count(), "load_avg_1m_after": round(os.getloadavg()[0], 2)}
    report["notes"] = explain(report)
    if config.out is not None:
        write_report(config.out.parent, config.out.name, report, render_markdown)
    return report


def load_max_new_tokens(mix: dict) -> int:
    """The asks' answer length: ``PRISM_LOAD_MAX_NEW_TOKENS``, else the mix's."""
    from ray_app.settings import get_settings

    return get_settings().load_max_new_tokens or mix["max_new_tokens"]


def app_health(url: str) -> dict:
    try:
        r = httpx.get(f"{url}/healthz", timeout=30)
    except httpx.HTTPError as exc:
        raise Unavailable(f"no Prism app at {url} ({type(exc).__name__}); start one with `prism serve up --detach`") from exc
    if r.status_code != 200:
        raise Unavailable(f"{url}/healthz answered {r.status_code}")
    return r.json()


def run_locust(url: str, users: int, duration: int, spawn_rate: float, locustfile: Path,
               max_new_tokens: int, client_timeout: float = 30.0) -> list[dict]:
    """Run Locust headless in its own process; return its per-entry stats (``--json-file``).

    When the time is up, users finish the request in hand (up to ``client_timeout`` + 30 s), so every
    request sent is counted, answered or timed out.
    """
    locust = shutil.which("locust") or str(Path(sys.executable).with_name("locust"))
    env = {**os.environ, "PRISM_LOAD_MAX_NEW_TOKENS": str(max_new_tokens), "PRISM_LOAD_TIMEOUT_S": f"{client_timeout:g}"}
    stop_timeout = int(client_timeout) + 30
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = Path(tmp) / "stats"
        cmd = [locust, "-f", str(locustfile), "--headless", "-u", str(users), "-r", f"{spawn_rate:g}",
               "-t", f"{duration}s", "--host", url, "--json-file", str(stats_path), "--stop-timeout",
               str(stop_timeout), "--only-summary", "--loglevel", "WARNING"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + stop_timeout + 300, env=env)
        path = stats_path.with_suffix(".json") if stats_path.with_suffix(".json").exists() else stats_path
        if not path.exists():
            raise Unavailable(f"locust wrote no stats (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
        return json.loads(path.read_text())


def _histogram(entries: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Merged response-time histogram (values ms, counts) of several Locust entries."""
    merged: dict[float, int] = {}
    for e in entries:
        for ms, count in (e.get("response_times") or {}).items():
            merged[float(ms)] = merged.get(float(ms), 0) + int(count)
    if not merged:
        return np.zeros(0), np.zeros(0)
    keys = np.array(sorted(merged))
    return keys, np.array([merged[k] for k in keys])


def percentile(entries: list[dict], q: float) -> float | None:
    """The ``q``-th percentile (ms) of the merged response times of Locust entries; None without any."""
    values, counts = _histogram(entries)
    if not counts.sum():
        return None
    cum = np.cumsum(counts)
    return float(values[np.searchsorted(cum, q / 100 * cum[-1])])


def named_entries(stats: list[dict], names: set[str], request_type: str | None = None) -> list[dict]:
    return [e for e in stats if e["name"] in names and (request_type is None or e["method"] == request_type)]


def outcome_entries(stats: list[dict], names, outcomes=OUTCOMES) -> list[dict]:
    """The locustfile's OUTCOME entries (``<name>:<outcome>``) of the requests ``names``."""
    wanted = {f"{n}:{o}" for n in names for o in outcomes}
    return [e for e in stats if e["method"] == "OUTCOME" and e["name"] in wanted]


def outcome_counts(stats: list[dict], names) -> dict[str, int]:
    """How many of the requests ``names`` ended in each outcome (``ok``, ``shed``, ``4xx``, ...)."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for e in outcome_entries(stats, names):
        counts[e["name"].rsplit(":", 1)[1]] += e["num_requests"]
    return counts


def shed_share(counts: dict[str, int]) -> float | None:
    """The share of requests refused for overload (503 + Retry-After); None when none was sent."""
    sent = sum(counts.values())
    return round(counts["shed"] / sent, 4) if sent else None


def _endpoint(stats: list[dict], names: set[str], duration: float, ttft: bool = False) -> dict:
    entries = [e for e in named_entries(stats, names) if e["method"] not in EXTRA_TYPES]
    requests = sum(e["num_requests"] for e in entries)
    out = {
        "requests": requests,
        "failures": sum(e["num_failures"] for e in entries),
        "rps": round(requests / duration, 2),
        **{f"p{q}_ms": percentile(entries, q) for q in (50, 95, 99)},
    }
    if ttft:
        ttft_entries = named_entries(stats, {f"{n}:ttft" for n in names}, "TTFT")
        out |= {f"ttft_p{q}_ms": percentile(ttft_entries, q) for q in (50, 95, 99)}
    return out


def stage_percentiles(stats: list[dict], names: set[str]) -> dict:
    stage_names = sorted({e["name"].split(":", 1)[1] for e in stats
                          if e["method"] == "STAGE" and e["name"].split(":", 1)[0] in names})
    return {s: {f"p{q}_ms": percentile(named_entries(stats, {f"{n}:{s}" for n in names}, "STAGE"), q) for q in (50, 95)}
            for s in stage_names}


def summarise(stats: list[dict], users: int, duration: int, url: str) -> dict:
    """The report's numbers from Locust's stats."""
    ask_names = set(ASK_NAMES)
    real = [e for e in stats if e["method"] not in EXTRA_TYPES]
    requests = sum(e["num_requests"] for e in real)
    endpoints = {
        "search": _endpoint(stats, {"search"}, duration),
        "ask": _endpoint(stats, ask_names, duration, ttft=True),
        "ask_text": _endpoint(stats, {"ask"}, duration, ttft=True),
        "ask_image": _endpoint(stats, {"ask_image"}, duration, ttft=True),
    }
    failures = sum(e["num_failures"] for e in real)
    met = {
        "failures": failures <= TARGETS["failures"],
        "search_p95_ms": (endpoints["search"]["p95_ms"] or 0) < TARGETS["search_p95_ms"],
        "ask_ttft_p95_ms": (endpoints["ask"]["ttft_p95_ms"] or float("inf")) < TARGETS["ask_ttft_p95_ms"],
    }
    return {
        "users": users, "duration_s": duration, "url": url, "requests": requests, "failures": failures,
        "rps": round(requests / duration, 2), "endpoints": endpoints,
        "ask_ttft_p95_ms_admitted": endpoints["ask"]["ttft_p95_ms"],
        "shed_share": shed_share(outcome_counts(stats, ask_names)),
        "outcomes": {"search": outcome_counts(stats, {"search"}), "ask": outcome_counts(stats, ask_names)},
        "ask_stages": stage_percentiles(stats, ask_names), "targets": TARGETS, "targets_met": met,
        "failure_examples": _failure_examples(stats),
    }


def _failure_examples(stats: list[dict]) -> list[str]:
    return [f"{e['name']}: {e['num_failures']} failures" for e in stats if e.get("num_failures")][:10]


def explain(report: dict) -> list[str]:
    """Data-driven notes on where the time goes when a target is missed."""
    notes = []
    stages = report.get("ask_stages") or {}
    p50 = {k: v.get("p50_ms") or 0 for k, v in stages.items()}
    asks = (report.get("outcomes") or {}).get("ask") or {}
    if not report["endpoints"]["ask"]["requests"]:
        notes.append(
            f"No ask was let in: all {asks['shed']} were refused with 503 + Retry-After (overload)." if asks.get("shed")
            else "No ask completed inside the run window plus the client's timeout, so the ask rows are empty. "
            "Asks queue at the fusion replica for a slot in its continuous batch; see the stage table for where "
            "their time went.")
    elif asks.get("shed"):
        notes.append(
            f"{asks['shed']} of {sum(asks.values())} asks ({report['shed_share']:.0%}) were refused at once with 503 + "
            "Retry-After (admission control: the fusion deployment was at capacity); they are not failures, and "
            "the ask rows and TTFT columns are those of the asks let in.")
    if asks.get("timeout"):
        notes.append(f"{asks['timeout']} asks timed out at the client (no next byte within its timeout).")
    if not report["targets_met"]["ask_ttft_p95_ms"] and p50:
        before = p50.get("vision_ms", 0) + p50.get("retrieval_ms", 0)
        waiting = max(p50.get("ttft_ms", 0) - before, 0)
        notes.append(
            f"Ask time to first token misses the target: of a median {p50.get('ttft_ms', 0):,.0f} ms, vision + retrieval "
            f"take {before:,.0f} ms and {waiting:,.0f} ms is spent in the fusion deployment: waiting for a slot in the "
            "continuous batch, then the prefill of the prompt, while the same CPUs decode every running answer.")
    prof = report.get("fusion_profile")
    if prof and not report["targets_met"]["ask_ttft_p95_ms"]:
        offered = report["users"] * 0.4 / 3.0  # 40 % asks, mean think time 3 s, if answers took no time
        big = max(prof["decode_step_ms_by_batch"], key=int)
        notes.append(
            f"Measured cost of one ask in the fusion step (same model, adapter and threads, in-process after the load): "
            f"a median prompt of {prof['prompt_tokens_p50']} tokens (up to {prof.get('k', 5)} numbered passages) takes "
            f"{prof['prefill_ms_p50']:,.0f} ms to prefill; a decode step takes "
            f"{prof['decode_step_ms_by_batch'].get('1', 0):,.0f} ms for one row and {prof['decode_step_ms_by_batch'][big]:,.0f} ms "
            f"for {big} rows. With {prof['max_new_tokens']} new tokens that is about {prof['cpu_seconds_per_answer']:.2f} s of "
            f"the machine per answer even at full batch, a capacity of about {prof['answers_per_s_capacity']:.2f} answers/s. "
            f"{report['users']} users at this mix would ask about {offered:.0f} questions/s if answers were instant, "
            f"so asks queue for a batch slot and TTFT grows with the queue; continuous batching cuts the wait to one "
            f"step once a slot is free, but no batching removes a {offered / max(prof['answers_per_s_capacity'], 1e-9):.0f}x "
            "shortfall of compute. Meeting the 2 s target at 100 users needs that much more LLM compute (more or larger "
            "fusion replicas on more cores, a GPU, a smaller or quantised model, or shorter prompts).")
    if report["endpoints"]["ask"]["requests"]:
        notes.append("Ask rows: p50/p95/p99 are Locust's time to the response headers (the stream opening); time to "
                     "first token is the TTFT columns, and the full answer time is total_ms in the stage table.")
    if not report["targets_met"]["search_p95_ms"]:
        notes.append("Search p95 misses the target: search shares the CPUs with LLM decoding in the same Ray node; "
                     "see the per-endpoint table (search has no model call besides one MiniLM embedding).")
    if report["failures"]:
        notes.append(f"Failures: {', '.join(report['failure_examples'])}.")
    load = report.get("machine", {}).get("load_avg_1m_after")
    if load and report.get("machine", {}).get("cpus") and load > 2 * report["machine"]["cpus"]:
        notes.append(f"1-minute load average {load} on {report['machine']['cpus']} CPUs after the run: the app under "
                     "test and Locust share these CPUs; anything else running beside them inflates every latency here.")
    return notes


# ---------------------------------------------------------------------------------------- overhead


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], url: str, timeout_s: float = 300) -> subprocess.Popen:
    # From the current directory (the project root, or anywhere Prism's `serving` package is installed).
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise Unavailable(f"{' '.join(cmd[:4])} exited with {proc.returncode}")
        time.sleep(0.5)
    _stop(proc)
    raise Unavailable(f"{' '.join(cmd[:4])} did not answer at {url}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _measure(url: str, n: int, concurrency: int = 8) -> dict:
    """Sequential latency (one keep-alive client) and concurrent throughput for ``n`` requests each."""
    with httpx.Client(timeout=30) as client:
        for _ in range(20):
            client.get(url)
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            client.get(url).raise_for_status()
            lat.append((time.perf_counter() - t) * 1000)

    def worker(count: int) -> int:
        with httpx.Client(timeout=30) as c:
            return sum(c.get(url).status_code == 200 for _ in range(count))

    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        ok = sum(pool.map(worker, [n // concurrency] * concurrency))
    elapsed = time.perf_counter() - t
    return {"p50_ms": round(float(np.percentile(lat, 50)), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "rps_concurrent": round(ok / elapsed, 1),
            "concurrency": concurrency, "requests": n}


def measure_overhead(n: int) -> dict:
    """The no-op route under Serve (proxy -> replica) vs bare uvicorn, measured one after the other."""
    results = {}
    port = _free_port()
    proc = _start([sys.executable, "-m", "uvicorn", "serving.noop:fastapi_app", "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "warning"], f"http://127.0.0.1:{port}/noop")
    try:
        results["uvicorn"] = _measure(f"http://127.0.0.1:{port}/noop", n)
    finally:
        _stop(proc)
    port = _free_port()
    proc = _start([sys.executable, "-m", "serving.noop", "--port", str(port)], f"http://127.0.0.1:{port}/noop")
    try:
        results["serve"] = _measure(f"http://127.0.0.1:{port}/noop", n)
    finally:
        _stop(proc)
    results["overhead_p50_ms"] = round(results["serve"]["p50_ms"] - results["uvicorn"]["p50_ms"], 2)
    results["overhead_p95_ms"] = round(results["serve"]["p95_ms"] - results["uvicorn"]["p95_ms"], 2)
    return results


# ------------------------------------------------------------------------------------- fusion cost


def decode_step_ms(llm, prompt: str, rows: int, steps: int) -> float:
    """Milliseconds per greedy decode step with ``rows`` copies of ``prompt`` in the batch (stop tokens ignored)."""
    import torch

    from ray_app.llm.generate import encode_left_padded

    input_ids, mask, positions = encode_left_padded(llm.tokenizer, [prompt] * rows)
    with torch.inference_mode():
        out = llm.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache, positions = out.cache, positions[:, -1:]
        started = time.perf_counter()
        for _ in range(steps):
            next_ids = out.logits[:, -1, :].argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(next_ids)], dim=1)
            positions = positions + 1
            out = llm.model(input_ids=next_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    return (time.perf_counter() - started) / steps * 1000


def serving_prompts(tokenizer, questions: list[str]) -> list[str]:
    """The load mix's ``questions`` as the fusion deployment gets them: the asks' passages retrieved
    against the app's database, rendered and cut to ``PRISM_PROMPT_TOKEN_BUDGET``.

    A question without a relevant passage is answered without the LLM, so it is left out (unless
    none has one: then every question is rendered, to have something to measure).
    """
    from ray_app.ask.retrieval import retrieve_passages
    from ray_app.ask.service import AskOptions
    from ray_app.llm.generate import render_prompt
    from ray_app.models.text import get_text_embedder
    from ray_app.settings import get_settings
    from ray_app.store import get_store

    store, embedder, settings = get_store(), get_text_embedder(), get_settings()
    k = AskOptions().k  # what the load's asks use
    retrieved = [(q, retrieve_passages(q, None, k, store, embedder).passages) for q in questions]
    with_passages = [(q, p) for q, p in retrieved if p] or retrieved
    return [render_prompt(tokenizer, q, p, None, settings.prompt_token_budget) for q, p in with_passages]


def fusion_profile(questions: list[str], max_new_tokens: int, batch_sizes: tuple[int, ...] = (1, 16),
                   steps: int = 8, llm=None) -> dict:
    """What one ask costs the fusion step on this machine, measured in-process after the load.

    The load mix's ``questions`` are rendered into the serving prompt (:func:`serving_prompts`); then:
    prompt tokens, the prefill of each prompt alone, and the time of one decode step with ``B`` rows of
    the median prompt, with the replicas' model and adapter (``PRISM_LLM_ADAPTER``; or ``llm``, already
    loaded) and threads (``PRISM_FUSION_THREADS``, else all CPUs).
    """
    import torch

    from ray_app.ask.service import AskOptions
    from ray_app.llm.generate import stream_tokens
    from ray_app.models.llm import load_llm
    from ray_app.settings import get_settings

    torch.set_num_threads(get_settings().fusion_threads)
    llm = llm or load_llm()
    k = AskOptions().k
    prompts = serving_prompts(llm.tokenizer, questions)
    tokens = [len(llm.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    typical = prompts[int(np.argsort(tokens)[len(tokens) // 2])]  # the median-length prompt
    next(stream_tokens(llm, [typical], 2))  # warm-up
    prefill = []
    for prompt in prompts:
        started = time.perf_counter()
        next(stream_tokens(llm, [prompt], 2))  # the first yield comes right after the prefill pass
        prefill.append(time.perf_counter() - started)
    decode = {str(b): round(decode_step_ms(llm, typical, b, steps), 1) for b in batch_sizes}
    prefill_ms = float(np.median(prefill) * 1000)
    biggest = str(max(batch_sizes))
    per_answer_s = (prefill_ms + max_new_tokens * decode[biggest] / int(biggest)) / 1000
    return {
        "k": k, "prompt_tokens_p50": int(np.median(tokens)), "prompt_tokens_max": int(max(tokens)),
        "prefill_ms_p50": round(prefill_ms, 1), "decode_step_ms_by_batch": decode,
        "max_new_tokens": max_new_tokens, "threads": torch.get_num_threads(),
        "cpu_seconds_per_answer": round(per_answer_s, 2),
        "answers_per_s_capacity": round(1 / per_answer_s, 2),
    }


# ------------------------------------------------------------------------------------------ report


def fmt_number(v) -> str:
    return "–" if v is None else f"{v:,.0f}" if isinstance(v, float | int) and abs(v) >= 10 else f"{v}"


def render_markdown(r: dict) -> str:
    """The Markdown report (generated; the JSON next to it holds the same numbers)."""
    e = r["endpoints"]
    lines = [
        f"# Serve load test: {r['users']} users, {r['duration_s']} s",
        "",
        f"Generated by `prism bench serve --users {r['users']} --duration {r['duration_s']} --json` against {r['url']} "
        f"(mix from `loadtests/locustfile.py`: search 60 %, text ask 30 %, image ask 10 %, think time 1-5 s). "
        f"Machine: {r.get('machine', {}).get('cpus')} CPUs, load average after the run "
        f"{r.get('machine', {}).get('load_avg_1m_after')}.",
        "",
        f"Requests {r['requests']:,}, failures {r['failures']:,}, throughput {r['rps']} req/s.",
        "",
        *_outcome_lines(r),
        "| endpoint | requests | failures | req/s | p50 ms | p95 ms | p99 ms | TTFT p50 ms | TTFT p95 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in e.items():
        lines.append(f"| {name} | {s['requests']} | {s['failures']} | {s['rps']} | {fmt_number(s['p50_ms'])} | "
                     f"{fmt_number(s['p95_ms'])} | {fmt_number(s['p99_ms'])} | {fmt_number(s.get('ttft_p50_ms'))} | "
                     f"{fmt_number(s.get('ttft_p95_ms'))} |")
    lines += ["", "## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    measured = {"failures": r["failures"], "search_p95_ms": e["search"]["p95_ms"], "ask_ttft_p95_ms": e["ask"]["ttft_p95_ms"]}
    for key, goal in r["targets"].items():
        lines.append(f"| {key} | {'= 0' if key == 'failures' else f'< {goal:,.0f}'} | {fmt_number(measured[key])} | "
                     f"{'yes' if r['targets_met'][key] else '**no**'} |")
    if r.get("ask_stages"):
        lines += ["", "## Where an ask's time goes (server-side timings_ms, all asks)", "",
                  "| stage | p50 ms | p95 ms |", "|---|---:|---:|"]
        lines += [f"| {k} | {fmt_number(v['p50_ms'])} | {fmt_number(v['p95_ms'])} |" for k, v in r["ask_stages"].items()]
    if r.get("serve_overhead"):
        o = r["serve_overhead"]
        lines += ["", "## Serve overhead (no-op route, same run, after the load)", "",
                  "| server | p50 ms | p95 ms | p99 ms | req/s (8 clients) |", "|---|---:|---:|---:|---:|"]
        for name in ("uvicorn", "serve"):
            s = o[name]
            lines.append(f"| {name} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | {s['rps_concurrent']} |")
        lines.append(f"\nServe adds {o['overhead_p50_ms']} ms at p50 and {o['overhead_p95_ms']} ms at p95 per request.")
    if r.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in r["notes"]]]
    return "\n".join(lines) + "\n"


def _outcome_lines(r: dict) -> list[str]:
    """What happened to the requests (reports written before outcomes were recorded have none)."""
    if "outcomes" not in r:
        return []
    asks, search = r["outcomes"]["ask"], r["outcomes"]["search"]
    share = "–" if r["shed_share"] is None else f"{r['shed_share']:.1%}"
    return [
        f"Asks: {sum(asks.values())} sent, {asks['ok']} answered, {asks['shed']} shed with 503 + Retry-After "
        f"(shed share {share}), {asks['4xx']} 4xx, {asks['5xx']} other 5xx, {asks['timeout']} client timeouts, "
        f"{asks['error']} other errors; time to first token of the asks let in: p95 "
        f"{fmt_number(r['ask_ttft_p95_ms_admitted'])} ms. Searches: {sum(search.values())} sent, {search['ok']} answered, "
        f"{search['shed']} shed, {search['4xx'] + search['5xx']} 4xx/5xx, {search['timeout']} client timeouts.",
        "",
    ]


def rerender(out: Path) -> Path:
    """Render ``OUT.md`` again from the existing ``OUT.json`` (after changing :func:`render_markdown`, or the
    capacity report's).

    The JSON, its notes included, is left as the run wrote it: new notes need a new run.
    """
    md_path = out.with_suffix(".md")
    md_path.write_text(render_any(read_report(out.parent, out.name)))
    return md_path


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The job's arguments; every default is :class:`ServeBenchConfig`'s."""
    d = ServeBenchConfig()
    p = job_parser(prog, __doc__)
    p.add_argument("--users", type=int_at_least(1, 5000), default=d.users, metavar="1..5000",
                   help="Concurrent simulated users.")
    p.add_argument("--duration", type=int_at_least(5, 3600), default=d.duration, metavar="5..3600",
                   help="Seconds of load.")
    p.add_argument("--url", default=d.url, help="The Prism app under test.")
    p.add_argument("--spawn-rate", type=positive_float, default=d.spawn_rate, metavar="RATE",
                   help="Users started per second.")
    p.add_argument("--overhead-requests", type=int_at_least(0), default=d.overhead_requests, metavar="N",
                   help="Requests per no-op server for the Serve-overhead comparison (0: skip).")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=d.profile,
                   help="After the load, time the fusion LLM's prefill and decode steps in-process on the load mix's "
                   "prompts (needs the app's database).")
    p.add_argument("--out", type=Path, default=d.out,
                   help="Write OUT.json and OUT.md, e.g. docs/reports/serve-100users (default: only print).")
    p.add_argument("--locustfile", type=Path, default=d.locustfile,
                   help="The Locust file; its request mix is load_mix.json beside it.")
    p.add_argument("--client-timeout", type=positive_float, default=d.client_timeout, metavar="SECONDS",
                   help="The load's client gives up when response headers or a stream's next event take longer.")
    capacity = p.add_argument_group("capacity", "--capacity: the load at several user counts in one run, and the "
                                    "engine's bare throughput (writes e.g. docs/reports/serve-capacity with --out)")
    capacity.add_argument("--capacity", action="store_true",
                          help="Run the capacity benchmark (--users and --duration are then unused).")
    capacity.add_argument("--steps", type=int_list(1, 5000), default=d.steps, metavar="U1,U2,...",
                          help="Users of each step, in order.")
    capacity.add_argument("--step-duration", type=int_at_least(5, 3600), default=d.step_duration, metavar="5..3600",
                          help="Seconds of load per step.")
    capacity.add_argument("--bare-batches", type=int_list(1, 256), default=d.bare_batches, metavar="B1,B2,...",
                          help="Answers in flight for the engine's bare throughput (its best is bare_answers_per_s).")
    capacity.add_argument("--warmup", type=int_at_least(0, 600), default=d.warmup, metavar="0..600",
                          help="Seconds of unrecorded load at the first step's users before the steps, so the first "
                          "step does not measure the app's first requests (0: none).")
    return p


def int_list(low: int, high: int):
    """An argparse ``type=``: comma-separated integers, each in ``low..high``."""
    one = int_at_least(low, high)

    def parse(text: str) -> list[int]:
        values = [one(x.strip()) for x in text.split(",") if x.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"no numbers in {text!r}")
        return values

    return parse


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``prism bench serve`` / ``python -m ray_app.benchmarks.serve``: run the load test, print the report."""
    return run_job(build_parser(prog or PROG), argv, lambda args: bench_serve(ServeBenchConfig(**args)), render_any)


def render_any(report: dict) -> str:
    """The Markdown of either report: the capacity run's (it has ``steps``) or the load test's."""
    if "steps" in report:
        from ray_app.benchmarks.capacity import render_markdown as render_capacity

        return render_capacity(report)
    return render_markdown(report)


if __name__ == "__main__":
    main()
