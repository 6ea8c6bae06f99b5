"""The ask pipeline as plain functions: vision -> retrieval -> numbered passages -> LLM -> audit.

The Serve graph (``serving/``) runs each step in its own deployment; ``prism ask`` and the
evaluation jobs run the same functions in one process through :class:`AskPipeline`.

    prism ask "What is this animal and where does it live?" --image frog.png --json

Retrieval searches with the question plus what vision saw (top labels, OCR text, the caption
of a near-duplicate stored image), keeps passages whose MiniLM cosine to that query reaches
``min_relevance``, and when none does the answer is :data:`ray_app.prompting.NOT_IN_SOURCES`
without calling the LLM. Generation is greedy, bounded by ``max_new_tokens``, and batched:
:func:`stream_tokens` decodes several prompts in one forward pass per step and yields each
prompt's new text as it appears.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ray_app.audit import AuditEntry, append_record, audit_answer, canonical_json, sha256_hex
from ray_app.prompting import NOT_IN_SOURCES, Passage, build_messages
from ray_app.settings import Settings, get_settings
from ray_app.store import SearchHit, Store

NEAR_DUPLICATE = 0.9  # a stored image this similar is taken to show the same thing
MAX_K = 20
RELEVANCE_MARGIN = 0.15
LABEL_MIN_SCORE = 0.35  # zero-shot labels below this softmax score are too unsure to search with


class AskInputError(ValueError):
    """A question or option a user can fix (empty question, k out of range)."""


@dataclass
class AskOptions:
    """Per-request knobs; ``max_new_tokens`` is capped by ``settings.max_new_tokens``."""

    k: int = 5
    max_new_tokens: int | None = None
    min_relevance: float = 0.25

    def check(self, settings: Settings) -> AskOptions:
        if not 1 <= self.k <= MAX_K:
            raise AskInputError(f"k must be between 1 and {MAX_K}, got {self.k}")
        limit = settings.max_new_tokens
        wanted = self.max_new_tokens or limit
        if wanted < 1:
            raise AskInputError(f"max_new_tokens must be at least 1, got {wanted}")
        return AskOptions(self.k, min(wanted, limit), self.min_relevance)


@dataclass
class Retrieved:
    """Retrieval output: the passages the LLM will see and the query that found them."""

    query: str
    passages: list[Passage]
    hits: list[SearchHit] = field(default_factory=list)


def check_question(question: str | None) -> str:
    """Return the stripped question or raise :class:`AskInputError`."""
    question = (question or "").strip()
    if not question:
        raise AskInputError("the question is empty")
    if len(question) > 2000:
        raise AskInputError(f"the question has {len(question)} characters; the limit is 2000")
    return question


def request_hash(question: str, image_sha256: str | None, k: int) -> str:
    """Hash of what was asked (question, image digest, k), for the audit record."""
    return sha256_hex(canonical_json({"question": question, "image_sha256": image_sha256, "k": k}))


def build_query(question: str, vision: dict | None) -> str:
    """The retrieval query: the question plus top labels, OCR text and a near-duplicate's caption."""
    parts = [question]
    if vision:
        parts += confident_labels(vision)
        if vision.get("ocr_text"):
            parts.append(vision["ocr_text"][:200])
        similar = vision.get("similar_images") or []
        if similar and similar[0].get("score", 0) >= NEAR_DUPLICATE and similar[0].get("caption"):
            parts.append(similar[0]["caption"])
    return " ".join(p for p in parts if p)


def confident_labels(vision: dict) -> list[str]:
    """Up to three labels the zero-shot classifier is reasonably sure of."""
    return [item["label"] for item in vision.get("labels", [])[:3] if item.get("score", 0) >= LABEL_MIN_SCORE]


def image_context(vision: dict | None) -> str | None:
    """One line describing the image for the prompt (labels, text in it, what it resembles)."""
    if not vision:
        return None
    bits = []
    if confident_labels(vision):
        bits.append("it shows: " + ", ".join(confident_labels(vision)))
    if vision.get("ocr_text"):
        bits.append(f"text in the image: {vision['ocr_text'][:200]}")
    similar = vision.get("similar_images") or []
    if similar and similar[0].get("score", 0) >= NEAR_DUPLICATE and similar[0].get("caption"):
        bits.append(f"it looks like: {similar[0]['caption']}")
    return "; ".join(bits) or "an image with no recognised content"


def retrieve_passages(
    question: str, vision: dict | None, k: int, store: Store, embedder, min_relevance: float = 0.25
) -> Retrieved:
    """Hybrid search (vector + full text, RRF) with the vision-expanded query; keep relevant passages.

    A passage is relevant when the MiniLM cosine between the query and its chunk reaches
    ``min_relevance``; passages are numbered 1..n in rank order.
    """
    query = build_query(question, vision)
    vector = embedder.embed([query])[0]
    depth = max(4 * k, 40)
    vector_hits = store.search_vector(vector, depth, "chunk")
    text_hits = store.search_text(query, depth)
    cosine = {h.id: h.score for h in vector_hits}
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
    return Retrieved(query, passages, relevant)


def _strip_title(text: str, title: str | None) -> str:
    """Chunks are stored title-prefixed ("Frog: ..."); the prompt adds the title itself."""
    prefix = f"{title}: " if title else None
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def render_prompt(tokenizer, question: str, passages: list[Passage], context: str | None) -> str:
    """The chat-templated prompt for the shared answer format (``ray_app.prompting``)."""
    messages = build_messages(question, passages, context)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_token_ids(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return {i for i in ids if i is not None}


def encode_left_padded(tokenizer, prompts: list[str]):
    """Tokenize prompts into one left-padded batch: ``(input_ids, attention_mask, position_ids)``.

    Left padding puts every prompt's last token in the last column, so one decode step appends
    one column for all rows; positions count real tokens only, so padding does not shift RoPE.
    """
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    mask = enc["attention_mask"]
    return enc["input_ids"], mask, (mask.cumsum(-1) - 1).clamp(min=0)


def text_delta(tokenizer, tokens: list[int], shown: str) -> tuple[str, str]:
    """The text that the newest of ``tokens`` adds to ``shown``, and the text now shown.

    A token that ends inside a multi-byte UTF-8 character decodes to a trailing "\ufffd"; its text
    is held back (delta ``""``) until a later token completes the character.
    """
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if text.endswith("\ufffd"):
        return "", shown
    return text[len(shown):], text


def stream_tokens(llm, prompts: list[str], max_new_tokens: list[int] | int) -> Iterator[list[str | None]]:
    """Greedy decoding of several prompts at once, one shared forward pass per step.

    Prompts are left-padded into one batch and decoded with a KV cache. Each step yields one
    item per prompt: the text it added this step (maybe ``""``), or ``None`` once it has
    finished (stop token or its own ``max_new_tokens``). Ends when every prompt has finished.
    The batch is static; :class:`ray_app.batching.ContinuousBatcher` lets prompts join and
    leave between steps.
    """
    import torch

    tok, model = llm.tokenizer, llm.model
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    input_ids, mask, positions = encode_left_padded(tok, prompts)
    stops, pad = stop_token_ids(tok), tok.pad_token_id
    tokens: list[list[int]] = [[] for _ in prompts]
    texts = [""] * len(prompts)
    done = [False] * len(prompts)
    past = None
    for step in range(max(limits)):
        with torch.inference_mode():
            out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=past, use_cache=True)
        past = out.cache
        next_ids = out.logits[:, -1, :].argmax(-1)
        deltas: list[str | None] = []
        for i, tid in enumerate(next_ids.tolist()):
            if done[i] or tid in stops:
                done[i] = True
                deltas.append(None)
                continue
            tokens[i].append(tid)
            delta, texts[i] = text_delta(tok, tokens[i], texts[i])
            deltas.append(delta)
            done[i] = step + 1 >= limits[i]
        yield deltas
        if all(done):
            return
        input_ids = torch.where(torch.tensor(done), torch.tensor(pad), next_ids).unsqueeze(1)
        mask = torch.cat([mask, torch.ones_like(input_ids)], dim=1)
        positions = positions[:, -1:] + 1


def folder_version(folder: str | Path | None, files: tuple[str, ...]) -> str | None:
    """``<name>@<sha256 of the small config files + weight sizes>`` for a model or adapter folder."""
    if not folder:
        return None
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in files:
        path = folder / name
        if path.exists():
            digest.update(path.read_bytes() if path.stat().st_size < 1_000_000 else str(path.stat().st_size).encode())
    return f"{folder.name}@{digest.hexdigest()[:12]}"


def model_versions(llm, settings: Settings | None = None) -> dict:
    """The LLM and adapter versions recorded in every audit record."""
    from ray_app.models.llm import resolve_llm

    settings = settings or get_settings()
    files = ("config.json", "generation_config.json", "model.safetensors")
    return {
        "model": folder_version(resolve_llm(llm.name, settings), files) or llm.name,
        "adapter": folder_version(llm.adapter, ("adapter_config.json", "adapter_model.safetensors")),
    }


def build_citations(passages: list[Passage], report) -> list[dict]:
    """Citations for the response: passages the answer cites, then those attributed post hoc."""
    by_n = {p.n: p for p in passages}
    explicit = [n for n in report.cited if n in by_n]
    attributed = [n for n in report.attributed if n not in explicit]
    return [
        {
            "n": n,
            "doc_id": by_n[n].doc_id,
            "chunk_id": by_n[n].chunk_id,
            "title": by_n[n].title,
            "snippet": by_n[n].text[:300],
            "score": by_n[n].score,
            "attributed": n in attributed,
        }
        for n in explicit + attributed
    ]


def finish_answer(
    *,
    ask_id: str,
    question: str,
    answer: str,
    retrieved: Retrieved,
    vision: dict | None,
    options: AskOptions,
    versions: dict,
    timings_ms: dict,
    store: Store,
    embedder=None,
) -> dict:
    """Audit the answer, append it to the log and build the ``/v1/ask`` response."""
    start = time.perf_counter()
    verdict = audit_answer(question, answer, retrieved.passages, embedder)
    entry = AuditEntry(
        request_hash=request_hash(question, (vision or {}).get("image_sha256"), options.k),
        retrieved_ids=[p.chunk_id for p in retrieved.passages] + [s["id"] for s in (vision or {}).get("similar_images", [])],
        model=versions.get("model", ""),
        adapter=versions.get("adapter"),
        image_encoder=versions.get("image_encoder"),
        answer_hash=sha256_hex(answer),
        flags=verdict.flags,
        grounded=verdict.grounded,
        timings_ms=timings_ms,
        audit_id=ask_id,
    )
    append_record(store, entry)
    timings = dict(timings_ms, audit_ms=round((time.perf_counter() - start) * 1000, 1))
    return {
        "id": ask_id,
        "answer": answer,
        "citations": build_citations(retrieved.passages, verdict.grounding),
        "vision": vision,
        "audit": {"audit_id": ask_id, "grounded": verdict.grounded, "flags": verdict.flags},
        "timings_ms": timings,
    }


def new_ask_id() -> str:
    return uuid.uuid4().hex


class AskPipeline:
    """The whole pipeline in one process (``prism ask``, evaluation); models load once.

    Args:
        store: the corpus store (defaults to the process-wide one).
        settings: settings (limits, models).
    """

    def __init__(self, store: Store | None = None, settings: Settings | None = None):
        from ray_app.models.llm import load_llm
        from ray_app.models.text import get_text_embedder
        from ray_app.retrieval import get_store

        self.settings = settings or get_settings()
        self.store = store or get_store()
        self.embedder = get_text_embedder()
        self.llm = load_llm(settings=self.settings)
        self.versions = model_versions(self.llm, self.settings)
        self._vision = None

    def vision(self):
        from ray_app.vision import VisionAnalyzer

        if self._vision is None:
            self._vision = VisionAnalyzer(self.store, self.embedder, settings=self.settings)
            self.versions["image_encoder"] = self._vision.encoder_version
        return self._vision

    def ask_stream(self, question: str, image: bytes | None = None, options: AskOptions | None = None) -> Iterator[dict]:
        """Yield ``{"event": "meta"|"token"|"done", ...}`` events; ``done`` carries the response."""
        question = check_question(question)
        options = (options or AskOptions()).check(self.settings)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        vision = self.vision().analyze(image).public() if image is not None else None
        timings["vision_ms"] = _ms(t0)
        t1 = time.perf_counter()
        retrieved = retrieve_passages(question, vision, options.k, self.store, self.embedder, options.min_relevance)
        timings["retrieval_ms"] = _ms(t1)
        yield {"event": "meta", "vision": vision, "passages": [p.__dict__ for p in retrieved.passages]}
        t2 = time.perf_counter()
        answer = ""
        for delta in generate_answer(self.llm, question, retrieved.passages, vision, options.max_new_tokens):
            if not answer and delta:
                timings["ttft_ms"] = _ms(t0)
            answer += delta
            yield {"event": "token", "text": delta}
        timings["generation_ms"] = _ms(t2)
        timings["total_ms"] = _ms(t0)
        yield {"event": "done", "response": finish_answer(
            ask_id=new_ask_id(), question=question, answer=answer.strip(), retrieved=retrieved, vision=vision,
            options=options, versions=self.versions, timings_ms=timings, store=self.store, embedder=self.embedder,
        )}

    def ask(self, question: str, image: bytes | None = None, options: AskOptions | None = None) -> dict:
        """Run the pipeline to completion and return the ``/v1/ask`` response dict."""
        for event in self.ask_stream(question, image, options):
            if event["event"] == "done":
                return event["response"]
        raise RuntimeError("the pipeline ended without an answer")


def generate_answer(llm, question: str, passages: list[Passage], vision: dict | None, max_new_tokens: int) -> Iterator[str]:
    """Stream one answer's text; :data:`NOT_IN_SOURCES` (no LLM call) when there are no passages."""
    if not passages:
        yield NOT_IN_SOURCES
        return
    prompt = render_prompt(llm.tokenizer, question, passages, image_context(vision))
    for deltas in stream_tokens(llm, [prompt], max_new_tokens):
        if deltas[0] is None:
            return
        yield deltas[0]


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)

