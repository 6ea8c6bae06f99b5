"""Prism's own metrics, recorded through Ray's metrics API and exported by Ray beside Ray Serve's built-in ones.

Every metric Prism exports is declared once, in :data:`METRICS` (the Grafana dashboard test checks its
queries against this table). Ray exports application metrics on each node's metrics port in Prometheus
text format with a ``ray_`` prefix: ``prism_asks`` becomes ``ray_prism_asks_total`` (:func:`series_names`).
Metrics are recorded once per request, never per token: the ingress records an ask when its last event
passes (:func:`record_answer`), a refusal when its error is answered (:func:`record_refusal`), a key's
request when it is admitted (:func:`record_request`); each fusion replica sets its decode queue when Serve
asks it for autoscaling stats (:func:`set_decode_queue`). Outside Ray (``prism ask``) nothing is recorded.

Inside a Serve replica the metrics carry ``deployment``, ``replica`` and ``application`` tags
(``ray.serve.metrics``).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

PREFIX = "ray_"  # what Ray puts in front of application metrics
TTFT_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
TOKENS_PER_S_BOUNDARIES = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its kind (``counter``, ``gauge``, ``histogram``), help text, tag keys and histogram buckets."""

    kind: str
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


METRICS: dict[str, MetricSpec] = {
    "prism_asks": MetricSpec(
        "counter", "Asks that ended with an answer event, by outcome (answered, withheld, blocked).", ("outcome",)),
    "prism_ask_ttft_seconds": MetricSpec(
        "histogram", "Time to the first answer token of an ask (vision, retrieval, screening, prefill).",
        boundaries=tuple(TTFT_BOUNDARIES)),
    "prism_ask_decode_tokens_per_second": MetricSpec(
        "histogram", "One ask's generated tokens divided by its generation time.",
        boundaries=tuple(TOKENS_PER_S_BOUNDARIES)),
    "prism_generated_tokens": MetricSpec(
        "counter", "LLM tokens generated (completion tokens of every answer)."),
    "prism_answers": MetricSpec(
        "counter", "Answers given, by whether the audit found them grounded in their sources.", ("grounded",)),
    "prism_injection_flags": MetricSpec(
        "counter", "Prompt-injection flags raised on asks (screening, quarantine, output checks), by flag.",
        ("flag",)),
    "prism_refused_requests": MetricSpec(
        "counter", "Requests refused before any work, by reason (auth, rate_limit, quota, overload, unavailable).",
        ("reason", "status")),
    "prism_key_requests": MetricSpec(
        "counter", "Admitted /v1 requests by API key id (never the key; 'none' with PRISM_AUTH=off).", ("key_id",)),
    "prism_key_tokens": MetricSpec(
        "counter", "LLM tokens charged to each API key id, by kind (prompt, completion).", ("key_id", "kind")),
    "prism_decode_queue_depth": MetricSpec(
        "gauge", "Rows in a fusion replica's LLM engine: decoding plus waiting for a batch slot."),
    "prism_decode_waiting": MetricSpec(
        "gauge", "Requests waiting in a fusion replica for a batch slot."),
}

# Flags that say the injection defences acted (their passage numbers dropped, so the label set stays small).
INJECTION_FLAG = re.compile(r"^(prompt_injection|quarantined|output):")


def series_names(name: str) -> list[str]:
    """The Prometheus series Ray exports for one metric of :data:`METRICS`."""
    spec = METRICS[name]
    if spec.kind == "counter":
        return [f"{PREFIX}{name}_total"]
    if spec.kind == "histogram":
        return [f"{PREFIX}{name}_{suffix}" for suffix in ("bucket", "count", "sum")]
    return [f"{PREFIX}{name}"]


def all_series_names() -> set[str]:
    """Every Prometheus series name Prism's metrics can appear under."""
    return {series for name in METRICS for series in series_names(name)}


class _Recorder:
    """The Ray metric objects of this process, made on first use (only where Ray is connected)."""

    def __init__(self):
        self._metrics: dict[str, object] = {}
        self._lock = threading.Lock()
        self._warned = False

    def get(self, name: str):
        metric = self._metrics.get(name)
        if metric is None:
            with self._lock:
                metric = self._metrics.get(name) or self._make(name)
                self._metrics[name] = metric
        return metric

    @staticmethod
    def _make(name: str):
        from ray.serve import metrics  # adds the replica's deployment/replica/application tags inside Serve

        spec = METRICS[name]
        if spec.kind == "counter":
            return metrics.Counter(name, description=spec.description, tag_keys=spec.tag_keys)
        if spec.kind == "gauge":
            return metrics.Gauge(name, description=spec.description, tag_keys=spec.tag_keys)
        return metrics.Histogram(name, description=spec.description, boundaries=list(spec.boundaries),
                                 tag_keys=spec.tag_keys)

    def run(self, record) -> None:
        """Run ``record()`` when Ray is up; a metric failure is logged once and never reaches a request."""
        try:
            import ray

            if ray.is_initialized():
                record()
        except Exception:  # noqa: BLE001 - metrics must never fail a request
            if not self._warned:
                self._warned = True
                log.exception("could not record a Prism metric (further failures are not logged)")


_recorder = _Recorder()


def _inc(name: str, value: float = 1.0, **tags: str) -> None:
    if value > 0:
        _recorder.get(name).inc(value, tags=tags or None)


def record_answer(response: dict, caller: str | None) -> None:
    """Record one ask from its final response (the ``done`` or ``flagged`` event's data)."""

    def record():
        withheld = bool(response.get("withheld"))
        usage = response.get("usage") or {}
        timings = response.get("timings_ms") or {}
        audit = response.get("audit") or {}
        completion = int(usage.get("completion_tokens") or 0)
        outcome = ("blocked" if "ttft_ms" not in timings else "withheld") if withheld else "answered"
        _inc("prism_asks", outcome=outcome)
        if not withheld:
            _inc("prism_answers", grounded=str(bool(audit.get("grounded"))).lower())
        if "ttft_ms" in timings:
            _recorder.get("prism_ask_ttft_seconds").observe(float(timings["ttft_ms"]) / 1000.0)
        generation_s = float(timings.get("generation_ms") or 0.0) / 1000.0
        if completion and generation_s > 0:
            _recorder.get("prism_ask_decode_tokens_per_second").observe(completion / generation_s)
        _inc("prism_generated_tokens", completion)
        for flag in injection_flags(audit.get("flags") or []):
            _inc("prism_injection_flags", flag=flag)
        key_id = caller or "none"
        _inc("prism_key_tokens", int(usage.get("prompt_tokens") or 0), key_id=key_id, kind="prompt")
        _inc("prism_key_tokens", completion, key_id=key_id, kind="completion")

    _recorder.run(record)


def injection_flags(flags: list[str]) -> list[str]:
    """The injection defences' flags of one ask, without passage numbers, each once."""
    kinds = (re.sub(r":\d+$", "", f) for f in flags if INJECTION_FLAG.match(f))
    return list(dict.fromkeys(kinds))


def refusal_reason(status: int, code: str, kind: str | None = None) -> str | None:
    """Why a request was refused before any work (None: not a refusal, e.g. bad input or a bug)."""
    if status in (401, 403):
        return "auth"
    if status == 429:
        return "quota" if kind == "tokens" else "rate_limit"
    if status == 503:
        return "overload" if code == "overloaded" else "unavailable"
    return None


def record_refusal(status: int, code: str, kind: str | None = None) -> None:
    """Count a refused request (auth, rate limit, quota, overload, unavailable); other errors are not counted."""
    reason = refusal_reason(status, code, kind)
    if reason is not None:
        _recorder.run(lambda: _inc("prism_refused_requests", reason=reason, status=str(status)))


def record_request(caller: str | None) -> None:
    """Count one admitted ``/v1/*`` request for its API key id."""
    _recorder.run(lambda: _inc("prism_key_requests", key_id=caller or "none"))


def set_decode_queue(rows: float, waiting: float) -> None:
    """A fusion replica's decode queue: rows decoding plus waiting, and the waiting ones alone."""

    def record():
        _recorder.get("prism_decode_queue_depth").set(float(rows))
        _recorder.get("prism_decode_waiting").set(float(waiting))

    _recorder.run(record)
