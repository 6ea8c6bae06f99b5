"""Per-ask tracing with OpenTelemetry: one trace per request, a span per stage, in every process it crosses.

    PRISM_TRACE_FILE=/tmp/prism-traces.jsonl prism serve up --detach        # spans as JSON lines
    OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 prism serve up ...   # spans to an OTLP/HTTP collector

The ingress opens the request's root span (continuing a W3C ``traceparent`` header when the client sends
one) and answers with its trace id in ``X-Trace-Id``. The stages hand the root's ``traceparent`` string to
the deployments they call, explicitly, as an argument of the call; each deployment opens its stage's span
(``vision``, ``rag``, ``audit.screen``, ``audit.start``, ``fusion``, ``audit.record``) as a child of it, and
the audit record keeps the trace id. Inside the ingress the root's ``traceparent`` travels from the route to
the stage wrappers in a context variable (asyncio copies it into the tasks a streamed response runs in).

Spans are always made (a trace id is cheap: a few microseconds a span, a handful of spans an ask); they are
exported only where ``PRISM_TRACE_FILE`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` says. Every process appends to the
same file (one ``write`` per span on a file opened for appending).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

SERVICE_NAME = "prism"
TRACE_HEADER = "x-trace-id"
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
_propagator = TraceContextTextMapPropagator()
# The traceparent of the request being served (set by the ingress route, read by the stage wrappers).
current_traceparent: contextvars.ContextVar[str | None] = contextvars.ContextVar("prism_traceparent", default=None)


class JsonlSpanExporter(SpanExporter):
    """Appends each finished span to a file as one JSON object per line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(s), default=str) + "\n" for s in spans)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, lines.encode())
            finally:
                os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_record(span: ReadableSpan) -> dict:
    """One span as a flat JSON object: ids in hex, times in nanoseconds since the epoch, its attributes."""
    context, parent = span.get_span_context(), span.parent
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "duration_ms": round((span.end_time - span.start_time) / 1e6, 3) if span.end_time else None,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "service": (span.resource.attributes or {}).get("service.name"),
        "pid": os.getpid(),
    }


_provider: dict[str, TracerProvider] = {}
_provider_lock = threading.Lock()


def build_provider(trace_file: Path | None = None, otlp_endpoint: str | None = None) -> TracerProvider:
    """A tracer provider exporting to ``trace_file`` (JSONL) and/or ``otlp_endpoint`` (OTLP over HTTP)."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    if trace_file is not None:
        provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(trace_file)))
    if otlp_endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("%s is set but opentelemetry-exporter-otlp-proto-http is not installed: no OTLP export",
                        OTLP_ENDPOINT_ENV)
        else:  # the exporter reads the endpoint (+ /v1/traces), headers and timeout from OTEL_* variables
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=1000))
    return provider


def tracer() -> trace.Tracer:
    """This process's tracer, configured from ``PRISM_TRACE_FILE`` and ``OTEL_EXPORTER_OTLP_ENDPOINT`` once."""
    provider = _provider.get("p")
    if provider is None:
        from ray_app.settings import get_settings

        with _provider_lock:
            provider = _provider.get("p") or build_provider(get_settings().trace_file,
                                                            os.environ.get(OTLP_ENDPOINT_ENV))
            _provider["p"] = provider
    return provider.get_tracer("prism")


def flush(timeout_ms: int = 5000) -> None:
    """Export what this process's batch exporters still hold (the file exporter writes as spans end)."""
    if "p" in _provider:
        _provider["p"].force_flush(timeout_ms)


def traceparent_of(span: Span) -> str:
    """The W3C ``traceparent`` string that makes a span the parent of spans elsewhere."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id in a ``traceparent`` string (None when there is none or it does not parse)."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def start_span(name: str, traceparent: str | None = None, kind: SpanKind = SpanKind.INTERNAL,
               attributes: dict | None = None) -> Span:
    """A started span, the child of ``traceparent`` when given (a new trace otherwise); the caller ends it."""
    parent = _propagator.extract({"traceparent": traceparent}) if traceparent else None
    return tracer().start_span(name, context=parent, kind=kind, attributes=attributes)


@contextmanager
def stage_span(name: str, traceparent: str | None, **attributes) -> Iterator[Span]:
    """A deployment's span for one stage of an ask, ended (with an error status if it raised) on exit."""
    span = start_span(name, traceparent, SpanKind.SERVER, {"prism.stage": name, **attributes})
    try:
        yield span
    except BaseException as exc:
        _failed(span, exc)
        raise
    finally:
        span.end()


def _failed(span: Span, exc: BaseException) -> None:
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.record_exception(exc)


def start_request(name: str, incoming: str | None = None) -> Span:
    """The ingress's root span of a request (continuing the client's ``traceparent``), made current for the
    stage wrappers of this request (:data:`current_traceparent`)."""
    span = start_span(name, incoming, SpanKind.SERVER)
    current_traceparent.set(traceparent_of(span))
    return span


def response_headers(span: Span) -> dict[str, str]:
    """``X-Trace-Id`` for the response of a request whose root span this is."""
    return {TRACE_HEADER: f"{span.get_span_context().trace_id:032x}"}


async def traced(events: AsyncIterator, span: Span) -> AsyncIterator:
    """An ask's events, unchanged; the root span takes the ask id and ends before the final event (``done`` or
    ``flagged``: audited by then), or with the stream when it ends otherwise (an error status when it raised)."""
    ended = False
    try:
        async for event in events:
            if event.kind == "meta":
                span.set_attribute("prism.ask_id", str(event.data.get("id")))
            elif event.kind in ("done", "flagged") and not ended:
                ended = True
                span.end()
            yield event
    except (GeneratorExit, asyncio.CancelledError):
        span.set_attribute("prism.cancelled", True)  # the client went away
        raise
    except BaseException as exc:
        if not ended:
            _failed(span, exc)
        raise
    finally:
        if not ended:
            span.end()
