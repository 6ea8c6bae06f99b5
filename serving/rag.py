"""The ``rag`` deployment: corpus search, the ask's numbered passages, documents and images by id."""

from __future__ import annotations

from ray import serve

from ray_app.ask.retrieval import Retrieved, retrieve_passages, search_corpus
from ray_app.ask.service import AskOptions
from ray_app.telemetry.logs import attach_to_serve
from ray_app.telemetry.tracing import stage_span
from serving.health import check_loaded, check_store, ready_store


@serve.deployment(name="rag", graceful_shutdown_timeout_s=40, graceful_shutdown_wait_loop_s=2)
class RagDeployment:
    """Holds the MiniLM embedder and a store connection pool per replica."""

    def __init__(self):
        from ray_app.models.text import get_text_embedder
        from ray_app.store import get_store

        attach_to_serve()  # Prism's loggers write through Serve's (JSON, with the request id)
        self.store = get_store()
        self.store.lexical_index()  # the BM25 index: built at start, not by the first text query
        self.embedder = get_text_embedder()

    def check_health(self) -> None:
        """Serve's probe (``serving/health.py``): the embedder is loaded and the pool open."""
        check_loaded(embedder=getattr(self, "embedder", None))
        check_store(self.store)

    def ready(self) -> dict:
        """``/readyz``: loaded, and the database answers."""
        self.check_health()
        return ready_store(self.store)

    def retrieve(self, question: str, vision: dict | None, options: AskOptions,
                 traceparent: str | None = None) -> Retrieved:
        """The passages the LLM will see (the ask service's retrieve stage)."""
        with stage_span("rag", traceparent, **{"prism.k": options.k}):
            return retrieve_passages(question, vision, options.k, self.store, self.embedder, options.min_relevance,
                                     options.fair_exposure)

    def search(self, query: str, k: int, mode: str, sources: list[str] | None,
               fair_exposure: str | None = None) -> list[dict]:
        """Chunk search by mode (hybrid, vector or BM25 text), in the public hit shape; ``fair_exposure``
        re-ranks the people among the hits (the bias audit's mitigation)."""
        hits = search_corpus(query, k, mode, sources, store=self.store, embedder=self.embedder,
                             fair_exposure=fair_exposure)
        return [h.to_dict() for h in hits]

    def get_document(self, doc_id: str) -> dict | None:
        return self.store.get_document(doc_id)

    def get_image(self, image_id: str) -> dict | None:
        return self.store.get_image(image_id)
