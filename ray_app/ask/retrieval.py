"""Retrieval: corpus search by mode (hybrid, vector, text; images by image) and the ask's passages.

One search dispatch serves `prism search`, the ``rag`` deployment and the ask pipeline. For an
ask, the query is the question plus what vision saw (top labels, OCR text, the caption of a
near-duplicate stored image); passages whose MiniLM cosine to that query reaches
``min_relevance`` are kept and numbered. Text read from the image (OCR) is untrusted like any
passage, so it is one: numbered after the corpus passages, cited, and checked by the audit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ray_app.errors import InputError, NotFound
from ray_app.llm.prompting import PASSAGE_CHARS, Passage
from ray_app.store.rows import SearchHit

if TYPE_CHECKING:  # the store (psycopg) loads only where it is used: the edge runtime has none
    from ray_app.store import Store

SEARCH_MODES = ("hybrid", "vector", "text")
NEAR_DUPLICATE = 0.9  # a stored image this similar is taken to show the same thing
RELEVANCE_MARGIN = 0.15
LABEL_MIN_SCORE = 0.35  # zero-shot labels below this softmax score are too unsure to search with
OCR_TITLE = "Text in the uploaded image (OCR)"
OCR_MIN_WORD_CHARS = 3  # less is Tesseract's noise on a photo, not text
REFERS_TO_IMAGE = re.compile(r"\b(this|that|these|those|it|its|picture|image|photo|here)\b", re.IGNORECASE)


@dataclass
class Retrieved:
    """Retrieval output: the passages the LLM will see and the query that found them."""

    query: str
    passages: list[Passage]
    hits: list[SearchHit] = field(default_factory=list)


def build_query(question: str, vision: dict | None) -> str:
    """The retrieval query: the question plus top labels, OCR text and a near-duplicate's caption."""
    parts = [question]
    if vision:
        parts += confident_labels(vision)
        if vision.get("ocr_text"):
            parts.append(vision["ocr_text"][:200])
        parts.append(near_duplicate_caption(vision))
    return " ".join(p for p in parts if p)


def confident_labels(vision: dict) -> list[str]:
    """The names of a stored exact copy of the upload when there is one; otherwise up to three labels the
    zero-shot classifier is reasonably sure of (none when vision says it is not sure).

    An exact copy says what the picture is: a zero-shot guess beside it would only pull passages about
    something else into the prompt.
    """
    labels = vision.get("labels", [])
    copies = [item["label"] for item in labels if item.get("source") == "same_image"]
    if copies:
        return copies[:3]
    if vision.get("sure") is False:
        return []
    return [item["label"] for item in labels[:3] if item.get("score", 0) >= LABEL_MIN_SCORE]


def identified_picture(vision: dict | None) -> str | None:
    """What the picture shows, for the grounding check: the first confident label (None: no picture, or unsure)."""
    names = confident_labels(vision) if vision else []
    return names[0] if names else None


def unidentified(vision: dict | None) -> bool:
    """Vision says it is not sure what the picture shows (its calibrated labels already weigh the nearest stored images)."""
    return bool(vision) and vision.get("sure") is False


def near_duplicate_caption(vision: dict) -> str | None:
    """The caption of a stored image nearly the same as the upload, unless vision says it is not sure."""
    similar = vision.get("similar_images") or []
    if unidentified(vision) or not similar or similar[0].get("score", 0) < NEAR_DUPLICATE:
        return None
    return similar[0].get("caption") or None


def unidentified_image_reply(question: str, vision: dict | None) -> str | None:
    """The answer to a question about a picture vision could not identify (None: answer as usual).

    Only a question that points at the picture ("what is this?", "where does it live?") gets it:
    the LLM would otherwise name whatever the passages happen to be about.
    """
    if not unidentified(vision) or not REFERS_TO_IMAGE.search(question):
        return None
    candidates = [c for c in vision.get("candidates") or [] if c]
    reply = "I could not identify the picture."
    if candidates:
        listed = candidates[0] if len(candidates) == 1 else ", ".join(candidates[:-1]) + " or " + candidates[-1]
        reply += f" It might be {listed}, but I am not sure; ask again naming what it shows."
    return reply


def image_context(vision: dict | None) -> str | None:
    """One line describing the image for the prompt (labels, what it resembles); its text is a passage."""
    if not vision:
        return None
    bits = []
    if confident_labels(vision):
        bits.append("it shows: " + ", ".join(confident_labels(vision)))
    elif unidentified(vision):
        bits.append("the picture could not be identified")
    if ocr_passage(vision, 0) is not None:
        bits.append("it contains text (see the passage titled 'Text in the uploaded image')")
    if near_duplicate_caption(vision):
        bits.append(f"it looks like: {near_duplicate_caption(vision)}")
    return "; ".join(bits) or "an image with no recognised content"


def retrieve_passages(
    question: str, vision: dict | None, k: int, store: Store, embedder, min_relevance: float = 0.25,
    fair_exposure: str | None = None,
) -> Retrieved:
    """Hybrid search (vector + BM25, the frozen fusion) with the vision-expanded query; keep relevant passages.

    A passage is relevant when the MiniLM cosine between the query and its chunk reaches
    ``min_relevance``; passages are numbered 1..n in rank order. With ``fair_exposure`` (gender, region or
    era) the people among the fused candidates are re-ranked for that attribute first (the bias audit's
    mitigation, :func:`ray_app.bias.exposure.rerank_hits`; off by default).
    """
    query = build_query(question, vision)
    vector = embedder.embed([query])[0]
    depth = max(4 * k, 40)
    vector_hits = store.search_vector(vector, depth, "chunk")
    text_hits = store.search_text(query, depth)
    cosine = {h.id: h.score for h in vector_hits}
    if fair_exposure:
        from ray_app.bias.exposure import rerank_hits

        fused = rerank_hits(store, store.fuse_hybrid(vector_hits, text_hits, depth), fair_exposure, k)[:k * 2]
    else:
        fused = store.fuse_hybrid(vector_hits, text_hits, k * 2)
    best = max(cosine.values(), default=0.0)
    # Absolute floor (is it on topic at all?) plus a margin below the best match, so that a
    # clearly better passage is not diluted by loosely related ones in a small model's context.
    floor = max(min_relevance, best - RELEVANCE_MARGIN)
    relevant = [h for h in fused if cosine.get(h.id, 0.0) >= floor][:k]
    passages = [
        Passage(n, h.title or "", _strip_title(h.text or "", h.title), h.doc_id, h.id, round(cosine[h.id], 4))
        for n, h in enumerate(relevant, 1)
    ]
    ocr = ocr_passage(vision, len(passages) + 1)
    return Retrieved(query, passages + ([ocr] if ocr else []), relevant)


def ocr_passage(vision: dict | None, n: int) -> Passage | None:
    """The image's OCR text as passage ``n`` (chunk id ``ocr:<image sha256 prefix>``), or None without text."""
    text = " ".join(((vision or {}).get("ocr_text") or "").split())
    if len(re.findall(r"\w", text)) < OCR_MIN_WORD_CHARS:
        return None
    return Passage(n, OCR_TITLE, text[:PASSAGE_CHARS], None, f"ocr:{(vision.get('image_sha256') or '')[:16]}", 1.0)


def _strip_title(text: str, title: str | None) -> str:
    """Chunks are stored title-prefixed ("Frog: ..."); the prompt adds the title itself."""
    prefix = f"{title}: " if title else None
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def search_corpus(
    text: str,
    k: int = 5,
    mode: str = "hybrid",
    sources: list[str] | None = None,
    *,
    image_path: Path | None = None,
    store: Store | None = None,
    embedder=None,
    fair_exposure: str | None = None,
) -> list[SearchHit]:
    """Search chunks by ``mode`` and, with ``image_path``, images by the image encoder.

    ``fair_exposure`` (gender, region or era): re-rank the people among ``4 k`` candidates for that attribute
    (:func:`ray_app.bias.exposure.rerank_hits`, the bias audit's mitigation); off by default.

    Raises:
        InputError: empty text or an unknown mode.
        NotFound: ``image_path`` does not exist.
        ModelNotAvailable: an image query without a trained image encoder.
    """
    if mode not in SEARCH_MODES:
        raise InputError(f"mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
    if not text.strip():
        raise InputError("the search text is empty")
    from ray_app.store import Filters, get_store

    store = store or get_store()
    filters = Filters(sources=sources)
    fetch = 4 * k if fair_exposure else k
    if mode == "text":
        hits = store.search_text(text, fetch, filters)
    else:
        from ray_app.models.text import get_text_embedder

        vector = (embedder or get_text_embedder()).embed([text])[0]
        hits = (store.search_vector(vector, fetch, "chunk", filters) if mode == "vector"
                else store.search_hybrid(text, vector, fetch, filters, depth=max(4 * k, store.fusion.depth)))
    if fair_exposure:
        from ray_app.bias.exposure import rerank_hits

        try:
            hits = rerank_hits(store, hits, fair_exposure, k)[:k]
        except ValueError as exc:
            raise InputError(str(exc)) from None
    if image_path is not None:
        hits += search_images_by_image(Path(image_path), k, store)
    return hits


def search_images_by_image(path: Path, k: int, store: Store) -> list[SearchHit]:
    """Nearest stored images to the image at ``path`` (needs a trained image encoder)."""
    from PIL import Image

    from ray_app.models.image_default import get_image_encoder

    if not path.exists():
        raise NotFound(f"image not found: {path}")
    with Image.open(path) as im:
        vector = get_image_encoder().embed([im])[0]
    return store.search_vector(vector, k, "image")
