"""`prism bench serve` and `--capacity` summaries on synthetic Locust stats (no Ray, no models), and the
locustfile's outcomes measured for real: Locust in its own process against a stub HTTP server that
answers with every kind of refusal."""

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ray_app.benchmarks.capacity import (
    compute_bound,
    explain_capacity,
    render_markdown,
    step_bound,
    summarise_capacity,
    summarise_step,
)
from ray_app.benchmarks.serve import ServeBenchConfig, build_parser, named_entries, run_locust, summarise
from ray_app.errors import InputError

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "loadtests" / "locustfile.py"


def entry(name: str, method: str, times: dict[int, int], failures: int = 0) -> dict:
    """One Locust stats entry as ``--json-file`` writes it (response times: ms -> count)."""
    return {"name": name, "method": method, "num_requests": sum(times.values()), "num_failures": failures,
            "response_times": {str(ms): n for ms, n in times.items()}}


# 10 s of load: 10 asks sent (4 answered, 5 shed, 1 5xx), 12 searches (8 answered, 1 shed, 1 4xx, 2 timeouts).
STATS = [
    entry("search", "POST", {100: 8, 400: 1, 30000: 2}, failures=3),
    entry("search:shed", "POST", {5: 1}),
    entry("ask", "POST", {300: 4}, failures=1),
    entry("ask_image", "POST", {500: 1}),
    entry("ask:shed", "POST", {10: 5}),
    entry("ask:ttft", "TTFT", {900: 3}),
    entry("ask_image:ttft", "TTFT", {2500: 1}),
    entry("ask:total_ms", "STAGE", {3900: 3}),
    entry("ask:ok", "OUTCOME", {4000: 3}),
    entry("ask_image:ok", "OUTCOME", {6000: 1}),
    entry("ask:shed", "OUTCOME", {10: 5}),
    entry("ask:5xx", "OUTCOME", {300: 1}),
    entry("search:ok", "OUTCOME", {100: 8}),
    entry("search:shed", "OUTCOME", {5: 1}),
    entry("search:4xx", "OUTCOME", {400: 1}),
    entry("search:timeout", "OUTCOME", {30000: 2}),
]


def test_a_step_counts_sheds_as_sheds_and_times_only_the_asks_let_in():
    step = summarise_step(STATS, users=50, duration=10)
    assert step["users"] == 50
    assert step["offered_asks_per_s"] == 1.0 and step["admitted_asks_per_s"] == 0.4
    assert step["shed_share"] == 0.5
    assert step["ask_ttft_p50_ms_admitted"] == 900 and step["ask_ttft_p95_ms_admitted"] == 2500
    assert step["ask_total_p95_ms"] == 6000 and step["shed_p95_ms"] == 10
    assert step["search_p95_ms"] == 30000  # the shed search is not among them
    assert (step["errors_4xx"], step["errors_5xx"], step["client_timeouts"]) == (1, 1, 2)
    assert step["outcomes"]["ask"] == {"ok": 4, "shed": 5, "4xx": 0, "5xx": 1, "timeout": 0, "error": 0}
    assert step["bound"].startswith("server errors: 1 5xx")
    assert step["llm_answers_per_s"] is None  # no ANSWER entries: an older locustfile
    written = summarise_step(STATS + [entry("ask:llm", "ANSWER", {4000: 2}), entry("ask:no_sources", "ANSWER",
                                                                                   {100: 2})], users=50, duration=10)
    assert written["llm_answers_per_s"] == 0.2


def test_what_bounded_a_step_is_read_from_its_numbers():
    base = {"users": 10, "offered_asks_per_s": 2.0, "admitted_asks_per_s": 1.0, "shed_share": 0.5,
            "ask_ttft_p95_ms_admitted": 1500.0, "search_p95_ms": 120.0, "errors_5xx": 0, "client_timeouts": 0}
    assert step_bound(base).startswith("LLM capacity: admission shed 50% of asks")
    assert "still waited 2,500 ms" in step_bound(base | {"ask_ttft_p95_ms_admitted": 2500.0})
    assert step_bound(base | {"shed_share": 0.0, "ask_ttft_p95_ms_admitted": 2500.0}).startswith("queueing")
    assert step_bound(base | {"shed_share": 0.0, "search_p95_ms": 400.0}).startswith("search latency")
    assert step_bound(base | {"shed_share": 0.0}).startswith("offered load")
    assert step_bound(base | {"client_timeouts": 3}).startswith("client timeouts: 3")


def make_step(users: int, admitted: float, ttft: float | None, errors_5xx: int = 0, shed: float = 0.0) -> dict:
    return {"users": users, "offered_asks_per_s": admitted / (1 - shed) if shed < 1 else 3.0,
            "admitted_asks_per_s": admitted,
            "shed_share": shed, "ask_ttft_p50_ms_admitted": ttft and ttft / 2, "ask_ttft_p95_ms_admitted": ttft,
            "ask_total_p95_ms": 5000.0, "search_p95_ms": 200.0, "errors_4xx": 0, "errors_5xx": errors_5xx,
            "client_timeouts": 0, "other_errors": 0, "shed_p95_ms": 20.0, "searches_per_s": 3.0,
            "ask_stages": {"vision_ms": {"p50_ms": 100.0}, "retrieval_ms": {"p50_ms": 50.0}},
            "bound": "offered load", "duration_s": 60}


BARE = {"engine": "torch-bf16", "dtype": "bfloat16", "threads": 2, "prompts": 10, "prompt_tokens_mean": 330.0,
        "max_new_tokens": 48, "best_batch": 16, "answers_per_s_best": 3.0,
        "batches": {"1": {"answers_per_s": 0.9, "tokens_per_s": 40.0, "new_tokens_mean": 48.0, "ttft_p50_ms": 210.0,
                          "wall_s": 1.1},
                    "16": {"answers_per_s": 3.0, "tokens_per_s": 144.0, "new_tokens_mean": 48.0, "ttft_p50_ms": 900.0,
                           "wall_s": 5.3}}}


def capacity_report(steps: list[dict]) -> dict:
    report = summarise_capacity(steps, BARE, compute_bound(135_000_000, 330.0, 48.0, 1800.0))
    report |= {"url": "http://127.0.0.1:8000", "step_duration_s": 60, "client_timeout_s": 30.0, "cpus": 2,
               "load_average": [1.5, 1.2, 1.0], "admission": {"max_active": 8, "max_waiting": 16},
               "fusion_profile": None, "command": "prism bench serve --capacity --json"}
    report["notes"] = explain_capacity(report)
    return report


def test_answers_at_the_slo_are_the_best_step_within_ttft_and_without_5xx():
    steps = [make_step(10, 1.0, 800.0), make_step(25, 2.0, 1500.0, shed=0.1), make_step(50, 2.5, 2500.0, shed=0.3),
             make_step(100, 2.4, 1800.0, errors_5xx=1, shed=0.5), make_step(150, 0.0, None, shed=1.0)]
    report = capacity_report(steps)
    assert report["answers_per_s_at_slo"] == 2.0  # 50 users: TTFT too slow; 100: a 5xx
    assert report["served_answers_per_s_max"] == 2.5 and report["saturated"]
    assert report["bare_answers_per_s"] == 3.0 and report["serve_efficiency"] == round(2.5 / 3.0, 3)
    assert report["targets_met"] == {"errors_5xx": False, "client_timeouts": True, "ask_ttft_p95_ms_admitted": True,
                                     "search_p95_ms": True, "answers_per_s_at_slo": True, "serve_efficiency": True}
    assert any("100 users 1 requests got a 5xx" in n for n in report["notes"])
    md = render_markdown(report)
    assert md.startswith("# Serve capacity: 10, 25, 50, 100, 150 users, 60 s each")
    assert "| 150 | 3.00 | 0.00 | 100% | – | – |" in md
    assert "`answers_per_s_at_slo`: **2.00**" in md and "| errors_5xx | = 0 | 1 | **no** |" in md


def test_serve_efficiency_counts_the_answers_the_llm_wrote():
    steps = [make_step(10, 1.0, 800.0) | {"llm_answers_per_s": 0.6}, make_step(25, 2.0, 1500.0, shed=0.2)
             | {"llm_answers_per_s": 1.5}]
    report = capacity_report(steps)
    assert report["served_answers_per_s_max"] == 1.5 and report["serve_efficiency"] == 0.5
    assert report["answers_per_s_at_slo"] == 2.0  # admitted asks, as issue 15 defines it


def test_missed_targets_say_what_bounds_them():
    report = capacity_report([make_step(10, 0.5, 900.0), make_step(100, 1.0, 3000.0, shed=0.6)])
    met = report["targets_met"]
    assert met["answers_per_s_at_slo"] is False and met["ask_ttft_p95_ms_admitted"] is False
    assert met["serve_efficiency"] is False  # 1.0 of 3.0 answers/s
    notes = " ".join(report["notes"])
    assert "loss is in serving" in notes  # the engine alone makes more than the target
    assert "admission gate lets at most 8 asks in" in notes and "engine is fastest with 16 in flight" in notes
    assert "waited 3,000 ms p95" in notes and "gate admits more asks than the fusion replica starts" in notes
    at_floor = capacity_report([make_step(10, 0.5, 900.0), make_step(100, 1.0, 3000.0, shed=0.6)
                                | {"admission_limit": 1.0}])
    assert "gate down to 1 asks in flight (its floor is 1)" in " ".join(at_floor["notes"])
    unsaturated = capacity_report([make_step(10, 0.5, 900.0)])
    assert unsaturated["targets_met"]["search_p95_ms"] is None  # no step at 100 users
    assert "not saturated" in " ".join(unsaturated["notes"])
    assert "| search_p95_ms | < 300 ms | – | – |" in render_markdown(unsaturated)


def test_the_compute_bound_is_matmul_rate_over_flops_per_answer():
    bound = compute_bound(parameters=100_000_000, prompt_tokens=300, new_tokens=50, matmul_gflops=1000.0)
    assert bound["flops_per_answer"] == 2 * 100_000_000 * 350
    assert bound["answers_per_s"] == round(1000e9 / (2 * 100_000_000 * 350), 2)


def test_the_plain_report_adds_admitted_ttft_and_shed_share_and_keeps_sheds_out_of_failures():
    report = summarise(STATS, users=50, duration=10, url="http://x")
    assert report["shed_share"] == 0.5 and report["ask_ttft_p95_ms_admitted"] == 2500
    assert report["endpoints"]["ask"]["requests"] == 5  # the 5 shed asks are "ask:shed"
    assert report["failures"] == 4 and report["requests"] == 11 + 1 + 4 + 1 + 5
    assert report["outcomes"]["search"]["timeout"] == 2
    assert set(report) >= {"users", "requests", "failures", "rps", "endpoints", "ask_stages", "targets", "targets_met"}


def test_capacity_options_parse_into_the_config():
    args = vars(build_parser().parse_args(["--capacity", "--steps", "2,4", "--step-duration", "8", "--no-profile",
                                           "--bare-batches", "1,2", "--client-timeout", "5", "--warmup", "0"]))
    args.pop("json")
    config = ServeBenchConfig(**args)
    assert config.capacity and config.steps == [2, 4] and config.step_duration == 8 and not config.profile
    assert config.bare_batches == [1, 2] and config.client_timeout == 5.0 and config.warmup == 0
    assert ServeBenchConfig().steps == [10, 25, 50, 100, 150] and ServeBenchConfig().step_duration == 60
    assert ServeBenchConfig().warmup == 30
    with pytest.raises(InputError, match="warmup"):
        ServeBenchConfig(warmup=601)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--steps", "0,4"])


def test_capacity_without_an_app_is_a_one_line_error():
    from ray_app.cli import app
    from tests.serving.harness import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["bench", "serve", "--capacity", "--url", url, "--locustfile", str(LOCUSTFILE)])
    assert result.exit_code == 2 and result.output.startswith(f"error: no Prism app at {url}")


# ------------------------------------------------------------- the locustfile against a stub server

ASK_PLAN = ["ok", "shed", "proxy_shed", "unavailable", "no_retry_after", "server_error", "bad_request", "stall"]
SEARCH_PLAN = ["ok", "shed", "slow"]


class StubPrism(BaseHTTPRequestHandler):
    """Answers /v1/ask and /v1/search in turn with each kind of response of the plans above."""

    asks, searches = itertools.cycle(ASK_PLAN), itertools.cycle(SEARCH_PLAN)
    sent: dict[str, int] = {}
    lock = threading.Lock()

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        plan = StubPrism.asks if self.path == "/v1/ask" else StubPrism.searches
        with StubPrism.lock:
            kind = next(plan)
            key = f"{self.path.rsplit('/', 1)[1]}:{kind}"
            StubPrism.sent[key] = StubPrism.sent.get(key, 0) + 1
        try:
            self.answer(kind)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout)

    def answer(self, kind: str) -> None:
        overloaded = {"error": {"code": "overloaded", "message": "at capacity"}}
        if kind == "ok" and self.path == "/v1/search":
            return self.send(200, {"results": []})
        if kind == "ok":
            body = ('event: meta\ndata: {"passages": [{"n": 1}]}\n\nevent: token\ndata: {"text": "Hi"}\n\n'
                    'event: done\ndata: {"timings_ms": {"total_ms": 5}}\n\n')
            return self.send(200, body, content_type="text/event-stream")
        if kind == "shed":
            return self.send(503, overloaded, retry_after=True)
        if kind == "proxy_shed":  # Serve's own refusal when a deployment's queue is full: not Prism's JSON
            return self.send(503, "Request dropped due to backpressure", retry_after=True)
        if kind == "unavailable":
            return self.send(503, {"error": {"code": "unavailable", "message": "a replica failed"}}, retry_after=True)
        if kind == "no_retry_after":
            return self.send(503, overloaded)
        if kind == "server_error":
            return self.send(500, "Internal Server Error")
        if kind == "bad_request":
            return self.send(422, {"error": {"code": "invalid_request", "message": "no"}})
        if kind == "slow":
            time.sleep(3)
            return self.send(200, {"results": []})
        self.send_response(200)  # "stall": the stream opens, then nothing comes
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b"event: meta\ndata: {}\n\n")
        self.wfile.flush()
        time.sleep(3)

    def send(self, status: int, body, retry_after: bool = False, content_type: str | None = None) -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type or ("application/json" if isinstance(body, dict) else "text/plain"))
        self.send_header("Content-Length", str(len(data)))
        if retry_after:
            self.send_header("Retry-After", "2")
        self.end_headers()
        self.wfile.write(data)


def test_the_locustfile_counts_sheds_timeouts_and_errors_each_as_what_they_are(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubPrism)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PRISM_LOAD_THINK_S", "0,0.05")
    try:
        stats = run_locust(f"http://127.0.0.1:{server.server_port}", users=4, duration=5, spawn_rate=4,
                           locustfile=LOCUSTFILE, max_new_tokens=8, client_timeout=1)
    finally:
        server.shutdown()
    sent = StubPrism.sent
    step = summarise_step(stats, users=4, duration=5)
    asks, search = step["outcomes"]["ask"], step["outcomes"]["search"]
    assert sent.get("ask:stall") and sent.get("search:slow")  # every kind came up
    assert asks["ok"] == sent["ask:ok"]
    assert asks["shed"] == sent["ask:shed"] + sent["ask:proxy_shed"]
    assert asks["5xx"] == sent["ask:unavailable"] + sent["ask:no_retry_after"] + sent["ask:server_error"]
    assert asks["4xx"] == sent["ask:bad_request"] and asks["timeout"] == sent["ask:stall"]
    assert search == {"ok": sent["search:ok"], "shed": sent["search:shed"], "4xx": 0, "5xx": 0,
                      "timeout": sent["search:slow"], "error": 0}
    assert step["errors_5xx"] == asks["5xx"] and step["client_timeouts"] == asks["timeout"] + search["timeout"]
    assert step["shed_share"] == round(asks["shed"] / sum(asks.values()), 4)
    assert step["llm_answers_per_s"] == round(asks["ok"] / 5, 3)  # the answers' meta listed passages
    # Sheds are successes under their own name; the other refusals and timeouts are failures.
    sheds = named_entries(stats, {"ask:shed", "ask_image:shed"}, "POST")
    assert sum(e["num_requests"] for e in sheds) == asks["shed"] and not any(e["num_failures"] for e in sheds)
    failed = sum(e["num_failures"] for e in named_entries(stats, {"ask", "ask_image"}, "POST"))
    assert failed == asks["5xx"] + asks["4xx"] + asks["timeout"]
    # An admitted ask that timed out before its first token counts its wait as a lower bound of its TTFT.
    ttft = named_entries(stats, {"ask:ttft", "ask_image:ttft"}, "TTFT")
    assert sum(e["num_requests"] for e in ttft) == asks["ok"] + asks["timeout"]


def test_the_capacity_report_is_written_and_rerenders_from_its_json(tmp_path):
    from ray_app.benchmarks.serve import rerender
    from ray_app.reports import write_report

    report = capacity_report([make_step(10, 0.5, 900.0), make_step(100, 1.0, 3000.0, shed=0.6)])
    json_path, md_path = write_report(tmp_path, "serve-capacity", report, render_markdown)
    written = md_path.read_text()
    md_path.unlink()
    assert rerender(tmp_path / "serve-capacity").read_text() == written
    saved = json.loads(json_path.read_text())
    assert {"steps", "answers_per_s_at_slo", "bare_answers_per_s", "serve_efficiency", "load_average",
            "compute_bound_answers_per_s"} <= set(saved)
