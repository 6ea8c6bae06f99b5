"""`prism bench chaos`: faults under load, one at a time, and what a client lost (issue 19).

    prism bench chaos [--users 2] [--phase 30] [--faults fusion,rag,ingress,postgres,redeploy] [--json] [--out docs/reports]
    python -m serving.chaos --users 2 --phase 30 --json

Starts the Serve app on loopback (a free port, a private local Ray) over the embedded Postgres of
``PRISM_HOME`` (which it will restart), with an API key of its own. ``--users`` clients ask in a loop (streamed
``/v1/ask``, each logical request with its own ``Idempotency-Key``) and retry once on a 503, a dropped connection
or an in-band error, as a real client would; admission refusals (503 ``overloaded``) are counted apart. After a
baseline phase a scheduler injects each fault in turn: ``ray.kill`` on the replica actor of ``fusion``, ``rag`` or
``ingress``; ``pg_ctl stop`` then start of Postgres (down ``--pg-down`` seconds); ``redeploy``: the same config
with a changed environment for ``ingress`` and ``rag`` (new replicas; the old ones drain). Per fault: requests
lost after the retry, 5xx responses (500s apart), time to recover (``/readyz`` ok and three answers in a row
within 2x the baseline p95) and answered asks without a completed audit record; then whether the audit chain
verifies. Writes ``chaos.json`` and ``chaos.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ray_app.entrypoints import int_at_least, job_parser, positive_float, run_job
from ray_app.errors import InputError
from ray_app.reports import load_average, write_report
from ray_app.settings import get_settings

FAULTS = ("fusion", "rag", "ingress", "postgres", "redeploy")
QUESTIONS = ["Where do frogs live?", "What is the Moon?", "What do tigers look like?", "How is coffee made?",
             "Where do lions live?", "What is a parrot?", "Where do fish live?", "What is a tadpole?"]


@dataclass
class Outcome:
    """One logical request of a user: its attempts' statuses and how it ended."""

    start: float
    end: float = 0.0
    statuses: list = field(default_factory=list)  # HTTP status, "dropped" or "in_band_error" per attempt
    errors: list = field(default_factory=list)  # "status:code" of each failed attempt (what to look into)
    answered: bool = False
    shed: bool = False  # refused by admission control on both attempts: not a fault
    ask_id: str | None = None
    latency_ms: float | None = None


class Load:
    """``users`` threads asking in a loop until :meth:`stop`; every outcome kept in order."""

    def __init__(self, url: str, key: str, users: int, max_new_tokens: int):
        self.url, self.users, self.max_new_tokens = url, users, max_new_tokens
        self.headers = {"Authorization": f"Bearer {key}"}
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._user, args=(i,), daemon=True) for i in range(users)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=200)

    def _user(self, i: int) -> None:
        n = i
        with httpx.Client(timeout=httpx.Timeout(150, connect=10)) as client:
            while not self._stop.is_set():
                outcome = self.ask(client, QUESTIONS[n % len(QUESTIONS)])
                with self._lock:
                    self.outcomes.append(outcome)
                n += self.users
                if outcome.shed:
                    time.sleep(1.0)

    def ask(self, client: httpx.Client, question: str) -> Outcome:
        """One logical ask, retried once on a 503, a dropped connection or an in-band error (same key)."""
        outcome = Outcome(time.monotonic())
        headers = self.headers | {"Idempotency-Key": uuid.uuid4().hex}
        body = {"question": question, "k": 3, "max_new_tokens": self.max_new_tokens, "stream": True}
        for attempt in (1, 2):
            status, code, ask_id = self._attempt(client, body, headers)
            outcome.statuses.append(status)
            if not (status == 200 and ask_id):
                outcome.errors.append(f"{status}:{code}")
            if status == 200 and ask_id:
                outcome.answered, outcome.ask_id = True, ask_id
                break
            retryable = status in (503, "dropped", "in_band_error")
            if not retryable:
                break
            if attempt == 1:
                time.sleep(1.0)
            outcome.shed = code == "overloaded" and status == 503
        outcome.end = time.monotonic()
        outcome.latency_ms = round((outcome.end - outcome.start) * 1000, 1) if outcome.answered else None
        return outcome

    def _attempt(self, client: httpx.Client, body: dict, headers: dict) -> tuple:
        """``(status, error code, ask id)``: the ask id only when a ``done`` event came."""
        try:
            with client.stream("POST", f"{self.url}/v1/ask", json=body, headers=headers) as r:
                if r.status_code != 200:
                    r.read()
                    code = _json(r.text).get("error", {}).get("code")
                    return r.status_code, code, None
                event = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event in ("done", "error", "flagged"):
                        data = _json(line[6:])
                        if event == "error":
                            return "in_band_error", data.get("error", {}).get("code"), None
                        return 200, None, data.get("id")
                return "dropped", None, None  # the stream ended without done or error
        except httpx.TransportError:
            return "dropped", None, None


def _json(text: str) -> dict:
    with contextlib.suppress(ValueError):
        out = json.loads(text)
        return out if isinstance(out, dict) else {}
    return {}


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def readyz_ok(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/readyz", timeout=15).status_code == 200
    return False


def kill_replica(deployment: str, app_name: str = "prism") -> str:
    """``ray.kill`` one replica actor of ``deployment`` (no restart: Serve's controller replaces it)."""
    import ray

    prefix = f"SERVE_REPLICA::{app_name}#{deployment}#"
    actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    if not actors:
        raise RuntimeError(f"no replica of {deployment} to kill")
    ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=True)
    return actors[0]["name"]


def restart_postgres(pg_dir: Path, down_s: float) -> None:
    from ray_app.store.embedded import start_embedded, stop_embedded

    stop_embedded(pg_dir)
    time.sleep(down_s)
    start_embedded(pg_dir)


def redeploy(config, generation: int) -> None:
    """``serve run`` of the same config with a new environment for ingress and rag: new replicas, the old drain."""
    from ray import serve

    from serving.app import build_app

    config = config.model_copy(deep=True)
    for dep in config.applications[0].deployments:
        if dep.name in ("ingress", "rag"):
            options = dep.ray_actor_options.model_copy(deep=True) if dep.ray_actor_options else None
            env = {"PRISM_CHAOS_GENERATION": str(generation)}
            dep.ray_actor_options = options.model_copy(update={"runtime_env": {"env_vars": env}})
    application = config.applications[0]
    serve.run(build_app(config), name=application.name, route_prefix=application.route_prefix)


def recovery_seconds(load: Load, url: str, since: float, baseline_p95_ms: float, limit_s: float) -> float | None:
    """Seconds from ``since`` until /readyz is ok and three answers in a row that started after it are within
    2x the baseline p95; None when that does not happen within ``limit_s``."""
    deadline = since + limit_s
    ready_at = None
    while time.monotonic() < deadline:
        if ready_at is None and readyz_ok(url):
            ready_at = time.monotonic()
        if ready_at is not None:
            after = [o for o in list(load.outcomes) if o.start >= ready_at and not o.shed]
            if len(after) >= 3 and all(o.answered and o.latency_ms <= 2 * baseline_p95_ms for o in after[-3:]):
                return round(after[-1].end - since, 1)
        time.sleep(1.0)
    return None


def summarise(outcomes: list[Outcome], store) -> dict:
    """Counts over a window's outcomes, and answered asks whose completed audit record is missing."""
    from ray_app.audit.chain import ask_records

    faults_seen = [o for o in outcomes if not o.shed]
    statuses = [s for o in outcomes for s in o.statuses]
    missing = 0
    for o in outcomes:
        if o.answered:
            records = ask_records(store, o.ask_id)
            if not any(r["record"].get("event") == "completed" for r in records):
                missing += 1
    return {"requests": len(outcomes), "answered": sum(o.answered for o in outcomes),
            "shed": sum(o.shed for o in outcomes),
            "lost_after_retry": sum(1 for o in faults_seen if not o.answered),
            "retried": sum(1 for o in outcomes if len(o.statuses) > 1),
            "errors_5xx": sum(1 for s in statuses if isinstance(s, int) and s >= 500),
            "errors_500": sum(1 for s in statuses if isinstance(s, int) and s >= 500 and s != 503),
            "dropped": statuses.count("dropped"), "in_band_errors": statuses.count("in_band_error"),
            "answers_without_audit": missing,
            "error_codes": dict(Counter(e for o in outcomes for e in o.errors)),
            "p95_ms": p95([o.latency_ms for o in outcomes if o.answered])}


def run(users: int, phase_s: float, faults: list[str], pg_down_s: float, max_new_tokens: int,
        recovery_limit_s: float, num_cpus: int) -> dict:
    """Start the app, run the load through a baseline and each fault, and return the report."""
    import ray
    from ray import serve

    from ray_app.audit.chain import verify_chain
    from ray_app.auth.keys import create_key
    from ray_app.store import Store
    from ray_app.store.embedded import start_embedded
    from serving.app import deploy_config, load_config
    from serving.cli import start_ray

    settings = get_settings()
    if settings.database_url:
        raise InputError("prism bench chaos restarts Postgres: it needs the embedded server (unset DATABASE_URL)")
    pg_dir = settings.pg_dir
    url_db = start_embedded(pg_dir)
    os.environ["DATABASE_URL"] = url_db
    get_settings.cache_clear()
    with Store(url_db) as store:
        corpus = store.counts()
        if corpus["chunks"] == 0:
            raise InputError(f"the database under {settings.home} has no corpus: build and ingest one first "
                             "(prism corpus build wiki --docs 300 && prism ingest DIR)")
        _, key = create_key(store, f"chaos-{uuid.uuid4().hex[:6]}", rpm=10**9, tokens_per_day=10**12)
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    start_ray(num_cpus, log_to_driver=False)
    port = _free_port()
    config = load_config(host="127.0.0.1", port=port)
    report: dict = {}
    try:
        deploy_config(config)
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: readyz_ok(url), 600, "the app did not get ready")
        load = Load(url, key, users, max_new_tokens)
        started = time.monotonic()
        load.start()
        time.sleep(phase_s)
        baseline = list(load.outcomes)
        base = p95([o.latency_ms for o in baseline if o.answered]) or 10_000.0
        windows = []
        for i, fault in enumerate(faults):
            at = time.monotonic()
            if fault in ("fusion", "rag", "ingress"):
                target = kill_replica(fault)
            elif fault == "postgres":
                restart_postgres(pg_dir, pg_down_s)
                target = f"postgres (down {pg_down_s:g} s)"
            else:
                redeploy(config, i + 1)
                target = "ingress, rag (new runtime env)"
            recovered = recovery_seconds(load, url, at, base, recovery_limit_s)
            time.sleep(phase_s)
            windows.append((fault, target, at, recovered))
        load.stop()
        ended = time.monotonic()
        with Store(url_db, migrate=False) as store:
            report = build_report(load.outcomes, windows, base, store, users, ended - started, phase_s)
            report["chain"] = verify_chain(store)
            report["chain_verifies"] = bool(report["chain"].get("ok"))
            report["corpus"] = corpus
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
    return report


def build_report(outcomes: list[Outcome], windows: list, base_p95: float, store, users: int, duration_s: float,
                 phase_s: float) -> dict:
    baseline_end = windows[0][2] if windows else float("inf")
    faults = []
    for j, (fault, target, at, recovered) in enumerate(windows):
        until = windows[j + 1][2] if j + 1 < len(windows) else float("inf")
        inside = [o for o in outcomes if at <= o.start < until]
        faults.append({"fault": fault, "target": target, "recovery_s": recovered, **summarise(inside, store)})
    baseline = summarise([o for o in outcomes if o.start < baseline_end], store)
    return {"users": users, "duration_s": round(duration_s, 1), "phase_s": phase_s, "baseline": baseline,
            "baseline_p95_ms": base_p95, "faults": faults,
            "totals": {"requests": len(outcomes), "answered": sum(o.answered for o in outcomes),
                       "lost_after_retry": sum(f["lost_after_retry"] for f in faults) + baseline["lost_after_retry"]},
            "load_average": load_average(), "cpus": os.cpu_count()}


def render(r: dict) -> str:
    lines = ["# Chaos under load", "", f"Generated by `{r.get('command', 'prism bench chaos')}`: {r['users']} users "
             f"asking in a loop (streamed, retry once on 503 / dropped connection / in-band error) for "
             f"{r['duration_s']:.0f} s on {r['cpus']} CPUs (load average {r['load_average']}) over "
             f"{r['corpus']['chunks']} chunks; baseline p95 "
             f"{r['baseline_p95_ms']:.0f} ms over {r['baseline']['answered']} answers, "
             f"{r['baseline']['lost_after_retry']} lost, {r['baseline']['shed']} shed by admission control.", "",
             "| fault | requests | answered | lost after retry | 5xx (of which 500) | dropped | in-band errors | "
             "shed | recovery s | answers without audit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for f in r["faults"]:
        rec = "not within the limit" if f["recovery_s"] is None else f"{f['recovery_s']:.1f}"
        lines.append(f"| {f['fault']} | {f['requests']} | {f['answered']} | {f['lost_after_retry']} | "
                     f"{f['errors_5xx']} ({f['errors_500']}) | {f['dropped']} | {f['in_band_errors']} | {f['shed']} | "
                     f"{rec} | {f['answers_without_audit']} |")
    lines += ["", f"Audit chain verifies: **{r['chain_verifies']}** ({r['chain'].get('records')} records).", ""]
    return "\n".join(lines)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(2)
    raise RuntimeError(message)


def _faults(text: str) -> list[str]:
    names = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in names if f not in FAULTS]
    if unknown or not names:
        import argparse

        raise argparse.ArgumentTypeError(f"faults are a comma-separated subset of {','.join(FAULTS)}; got {text!r}")
    return names


def main(argv: list[str] | None = None, prog: str = "prism bench chaos") -> dict:
    parser = job_parser(prog, __doc__)
    parser.add_argument("--users", type=int_at_least(1, 64), default=2,
                        help="Clients asking in a loop (a load the healthy app admits without shedding).")
    parser.add_argument("--phase", type=positive_float, default=30.0,
                        help="Seconds of load before the first fault and after each recovery.")
    parser.add_argument("--faults", type=_faults, default=list(FAULTS), help="Which faults, in order.")
    parser.add_argument("--pg-down", type=positive_float, default=10.0, help="Seconds Postgres stays down.")
    parser.add_argument("--max-new-tokens", type=int_at_least(1, 512), default=24, help="Tokens per answer.")
    parser.add_argument("--recovery-limit", type=positive_float, default=180.0,
                        help="Longest wait for a recovery before the next fault.")
    parser.add_argument("--num-cpus", type=int_at_least(1), default=max(os.cpu_count() or 2, 2),
                        help="Logical CPUs of the private Ray.")
    parser.add_argument("--out", type=Path, default=None, help="Write chaos.json and chaos.md into this folder.")

    def execute(args: dict) -> dict:
        result = run(args["users"], args["phase"], args["faults"], args["pg_down"], args["max_new_tokens"],
                     args["recovery_limit"], args["num_cpus"])
        if args["out"] is not None:
            command = " ".join(["prism bench chaos", *(argv if argv is not None else [])])
            write_report(args["out"], "chaos", result, render, command=command)
        return result

    return run_job(parser, argv, execute, render)


if __name__ == "__main__":
    main()
