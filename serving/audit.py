"""The ``audit`` deployment: grounding + injection checks, then a record appended to the audit chain."""

from __future__ import annotations

from ray import serve

from ray_app.ask.service import AnswerDraft
from ray_app.ask.stages import LoggedAudit
from ray_app.audit.chain import verify_chain


@serve.deployment(name="audit")
class AuditDeployment:
    """Holds a store connection and the MiniLM embedder (sentence-passage cosine)."""

    def __init__(self):
        from ray_app.models.text import get_text_embedder
        from ray_app.store import get_store

        self.store = get_store()
        self.auditor = LoggedAudit(self.store, get_text_embedder())

    async def start(self, draft: AnswerDraft) -> None:
        """Log the ``started`` record of an ask about to be generated."""
        await self.auditor.start(draft)

    async def record(self, draft: AnswerDraft) -> dict:
        """Audit and log one answer (however it ended): ``{"grounded", "flags", "citations"}``."""
        return await self.auditor.record(draft)

    def verify(self) -> dict:
        return verify_chain(self.store)
