"""The ``audit`` deployment: grounding + injection checks, then a record appended to the audit chain."""

from __future__ import annotations

from ray import serve

from ray_app.answer import AskOptions, Retrieved, finish_answer
from ray_app.audit import verify_chain
from ray_app.prompting import Passage


@serve.deployment(name="audit")
class AuditDeployment:
    """Holds a store connection and the MiniLM embedder (sentence-passage cosine)."""

    def __init__(self):
        from ray_app.models.text import get_text_embedder
        from ray_app.retrieval import get_store

        self.store = get_store()
        self.embedder = get_text_embedder()

    def record(self, *, ask_id: str, question: str, answer: str, query: str, passages: list[dict],
               vision: dict | None, k: int, versions: dict, timings_ms: dict) -> dict:
        """Audit and log one answer; returns the ``/v1/ask`` response dict."""
        retrieved = Retrieved(query, [Passage(**p) for p in passages])
        return finish_answer(
            ask_id=ask_id, question=question, answer=answer, retrieved=retrieved, vision=vision,
            options=AskOptions(k=k), versions=versions, timings_ms=timings_ms, store=self.store,
            embedder=self.embedder,
        )

    def verify(self) -> dict:
        return verify_chain(self.store)
