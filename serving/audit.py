"""The ``audit`` deployment: injection screening before generation (rules + the learned detector on its MiniLM);
grounding + injection checks after it, then a record appended to the audit chain."""

from __future__ import annotations

from dataclasses import replace

from ray import serve

from ray_app.ask.service import AnswerDraft
from ray_app.ask.stages import LoggedAudit
from ray_app.audit.chain import verify_chain
from ray_app.audit.injection import Defences, Screening
from ray_app.llm.prompting import Passage
from ray_app.telemetry.logs import attach_to_serve
from ray_app.telemetry.tracing import stage_span, trace_id_of
from serving.health import check_loaded, check_store, ready_store


@serve.deployment(name="audit", graceful_shutdown_timeout_s=40, graceful_shutdown_wait_loop_s=2)
class AuditDeployment:
    """Holds a store connection and the MiniLM embedder (sentence-passage cosine)."""

    def __init__(self):
        from ray_app.models.text import get_text_embedder
        from ray_app.store import get_store

        attach_to_serve()  # Prism's loggers write through Serve's (JSON, with the request id)
        self.store = get_store()
        self.auditor = LoggedAudit(self.store, get_text_embedder())

    def check_health(self) -> None:
        """Serve's probe (``serving/health.py``): the embedder is loaded and the pool open."""
        check_loaded(auditor=getattr(self, "auditor", None), embedder=getattr(self.auditor, "embedder", None))
        check_store(self.store)

    def ready(self) -> dict:
        """``/readyz``: loaded, and the database answers."""
        self.check_health()
        return ready_store(self.store)

    async def screen(self, question: str, passages: list[Passage], defences: Defences,
                     traceparent: str | None = None) -> Screening:
        """Screen the question and passages before generation (quarantine, flags)."""
        with stage_span("audit.screen", traceparent):
            return await self.auditor.screen(question, passages, defences)

    async def start(self, draft: AnswerDraft, traceparent: str | None = None) -> None:
        """Log the ``started`` record of an ask about to be generated (with the request's trace id)."""
        with stage_span("audit.start", traceparent, **{"prism.ask_id": draft.ask_id}):
            await self.auditor.start(replace(draft, trace_id=trace_id_of(traceparent) or draft.trace_id))

    async def record(self, draft: AnswerDraft, traceparent: str | None = None) -> dict:
        """Audit and log one answer (however it ended): ``{"grounded", "flags", "citations"}``."""
        with stage_span("audit.record", traceparent, **{"prism.ask_id": draft.ask_id, "prism.status": draft.status}):
            return await self.auditor.record(replace(draft, trace_id=trace_id_of(traceparent) or draft.trace_id))

    def verify(self) -> dict:
        return verify_chain(self.store)
