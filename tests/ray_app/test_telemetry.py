"""Prism's telemetry without Ray: the metric table and the dashboard's queries, span export to a JSONL file and
to a real OTLP/HTTP endpoint, W3C context propagation, and audit records that carry a trace id."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from ray_app.ask.service import AskEvent
from ray_app.telemetry import metrics, tracing

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "prism.json"
METRIC_NAME = re.compile(r"\bray_[a-zA-Z0-9_]+")


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert panels and all(p["targets"] for p in panels), "every panel has a query"
    return [t["expr"] for p in panels for t in p["targets"]]


def dashboard_metric_names() -> set[str]:
    """Every metric name the dashboard's PromQL queries read (Ray exports them all with a ray_ prefix)."""
    return {name for expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)}


def test_dashboard_queries_name_prism_metrics_that_exist():
    names = dashboard_metric_names()
    prism = {n for n in names if n.startswith("ray_prism_")}
    assert prism <= metrics.all_series_names(), prism - metrics.all_series_names()
    # every Prism metric is on the dashboard, and Ray Serve's built-ins beside them (checked live in
    # tests/serving/test_observability.py against a real Prometheus)
    assert {metrics.series_names(m)[0].removesuffix("_bucket") for m in metrics.METRICS} <= \
        {n.removesuffix("_bucket") for n in prism}
    assert {n for n in names - prism if n.startswith("ray_serve_")}
    assert names - prism <= {n for n in names if n.startswith("ray_serve_")}, "only Prism's and Serve's metrics"


def test_metric_names_and_what_counts_as_a_refusal():
    assert all(name.startswith("prism_") for name in metrics.METRICS)
    assert metrics.series_names("prism_refused_requests") == ["ray_prism_refused_requests_total"]
    assert metrics.series_names("prism_decode_queue_depth") == ["ray_prism_decode_queue_depth"]
    assert "ray_prism_ask_ttft_seconds_bucket" in metrics.series_names("prism_ask_ttft_seconds")
    assert [metrics.refusal_reason(s, c, k) for s, c, k in [
        (401, "invalid_api_key", None), (403, "revoked_api_key", None), (429, "rate_limit_exceeded", "requests"),
        (429, "rate_limit_exceeded", "tokens"), (503, "overloaded", None), (503, "database_unavailable", None),
        (422, "invalid_request", None), (500, "internal_error", None)]] == \
        ["auth", "auth", "rate_limit", "quota", "overload", "unavailable", None, None]
    flags = ["prompt_injection:passage:2", "quarantined:passage:2", "prompt_injection:passage:3",
             "output:url", "not_in_sources", "pii_redacted:email"]
    assert metrics.injection_flags(flags) == ["prompt_injection:passage", "quarantined:passage", "output:url"]


def test_recording_outside_ray_is_a_no_op():
    """``prism ask`` runs the service without Ray: recording must neither fail nor need Ray."""
    metrics.record_answer({"usage": {"completion_tokens": 3}, "timings_ms": {"ttft_ms": 5.0}}, None)
    metrics.record_refusal(401, "invalid_api_key")
    metrics.set_decode_queue(1, 0)


@pytest.fixture
def provider(tmp_path, monkeypatch):
    """This process's tracer provider replaced by one that writes ``spans.jsonl`` (restored afterwards)."""
    path = tmp_path / "spans.jsonl"
    monkeypatch.setitem(tracing._provider, "p", tracing.build_provider(path))
    yield path


def read_spans(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_spans_of_one_ask_share_the_trace_and_reach_the_file(provider):
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    root = tracing.start_request("POST /v1/ask", incoming)
    passed = tracing.current_traceparent.get()  # what a stage wrapper hands to its deployment
    assert tracing.trace_id_of(passed) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tracing.response_headers(root) == {"x-trace-id": "4bf92f3577b34da6a3ce929d0e0e4736"}
    with tracing.stage_span("rag", passed, **{"prism.k": 5}):
        pass
    with pytest.raises(ValueError), tracing.stage_span("fusion", passed):
        raise ValueError("boom")

    async def events():
        yield AskEvent("meta", {"id": "ask-1"})
        yield AskEvent("token", {"text": "Frogs"})
        yield AskEvent("done", {"id": "ask-1"})

    async def consume():
        return [e.kind async for e in tracing.traced(events(), root)]

    assert asyncio.run(consume()) == ["meta", "token", "done"]
    spans = {s["name"]: s for s in read_spans(provider)}
    assert set(spans) == {"POST /v1/ask", "rag", "fusion"}
    assert {s["trace_id"] for s in spans.values()} == {"4bf92f3577b34da6a3ce929d0e0e4736"}
    assert spans["POST /v1/ask"]["parent_span_id"] == "00f067aa0ba902b7"  # the client's span
    assert spans["rag"]["parent_span_id"] == spans["fusion"]["parent_span_id"] == spans["POST /v1/ask"]["span_id"]
    assert spans["POST /v1/ask"]["attributes"]["prism.ask_id"] == "ask-1"
    assert spans["rag"]["attributes"] == {"prism.stage": "rag", "prism.k": 5} and spans["rag"]["status"] == "UNSET"
    assert spans["fusion"]["status"] == "ERROR"


def test_a_request_without_traceparent_starts_a_new_trace(provider):
    a = tracing.start_request("a")
    b = tracing.start_request("b")
    a.end()
    b.end()
    first, second = read_spans(provider)
    assert first["trace_id"] != second["trace_id"] and first["parent_span_id"] is None
    assert tracing.trace_id_of("garbage") is None and tracing.trace_id_of(None) is None


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.received.append((self.path, self.headers.get("content-type", ""), body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        return None


def test_spans_go_to_an_otlp_http_endpoint_when_configured(monkeypatch):
    """The real OTLP/HTTP exporter posts protobuf spans to ``$OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces``."""
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv(tracing.OTLP_ENDPOINT_ENV, endpoint)
    try:
        provider = tracing.build_provider(otlp_endpoint=endpoint)
        span = provider.get_tracer("test").start_span("audit.record")
        span.end()
        assert provider.force_flush(10_000)
        provider.shutdown()
    finally:
        server.shutdown()
    assert [(p, t) for p, t, _ in _Collector.received] == [("/v1/traces", "application/x-protobuf")]
    assert b"audit.record" in _Collector.received[0][2] and b"prism" in _Collector.received[0][2]


def test_audit_records_carry_the_trace_id_and_older_ones_still_verify(store):
    from ray_app.audit.chain import ask_records, record_answer, record_started, verify_chain
    from ray_app.llm.prompting import Passage

    passages = [Passage(1, "Frog", "Frogs live in ponds.", "frog", "frog:0")]
    common = dict(question="Where do frogs live?", passages=passages, vision=None, k=5, versions={"model": "m"})
    record_started(store, ask_id="untraced", **common)  # as written before traces: no trace_id key at all
    record_answer(store, ask_id="untraced", answer="In ponds [1].", timings_ms={}, **common)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    record_started(store, ask_id="traced", trace_id=trace_id, **common)
    record_answer(store, ask_id="traced", answer="In ponds [1].", timings_ms={}, trace_id=trace_id, **common)
    assert all("trace_id" not in r["record"] for r in ask_records(store, "untraced"))
    assert [r["record"]["trace_id"] for r in ask_records(store, "traced")] == [trace_id, trace_id]
    assert verify_chain(store)["ok"] and verify_chain(store)["records"] == 4
