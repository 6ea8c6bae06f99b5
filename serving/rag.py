"""The ``rag`` deployment: hybrid search over chunks, numbered passages, documents and images by id."""

from __future__ import annotations

from ray import serve

from ray_app.answer import retrieve_passages
from ray_app.store import Filters


@serve.deployment(name="rag")
class RagDeployment:
    """Holds the MiniLM embedder and a store connection pool per replica."""

    def __init__(self):
        from ray_app.models.text import get_text_embedder
        from ray_app.retrieval import get_store

        self.store = get_store()
        self.embedder = get_text_embedder()

    def retrieve(self, question: str, vision: dict | None, k: int) -> dict:
        """Passages for the LLM: ``{"query", "passages": [Passage fields...]}``."""
        found = retrieve_passages(question, vision, k, self.store, self.embedder)
        return {"query": found.query, "passages": [p.__dict__ for p in found.passages]}

    def search(self, query: str, k: int, mode: str, sources: list[str] | None) -> list[dict]:
        """Chunk search by mode (hybrid RRF, vector or full text)."""
        filters = Filters(sources=sources)
        if mode == "text":
            hits = self.store.search_text(query, k, filters)
        else:
            vector = self.embedder.embed([query])[0]
            hits = (self.store.search_vector(vector, k, "chunk", filters) if mode == "vector"
                    else self.store.search_hybrid(query, vector, k, filters))
        return [{"kind": h.kind, "id": h.id, "doc_id": h.doc_id, "title": h.title, "text": h.text,
                 "score": h.score, "source": h.source, "category": h.category} for h in hits]

    def get_document(self, doc_id: str) -> dict | None:
        return self.store.get_document(doc_id)

    def get_image(self, image_id: str) -> dict | None:
        return self.store.get_image(image_id)
