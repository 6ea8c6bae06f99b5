"""In-process stages for :class:`ray_app.ask.service.AskService` (``prism ask``, the evaluation).

The Serve graph has its own stages that call the deployments (``serving/stages.py``); the
deployments themselves hold the models these classes hold here. Blocking work (model forward
passes, database queries) runs in a worker thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from ray_app.ask.retrieval import Retrieved, identified_picture, retrieve_passages
from ray_app.ask.service import AnswerDraft, AskOptions, AskService
from ray_app.audit.chain import audit_answer, build_citations, merge_flags, record_answer, record_started
from ray_app.audit.detector import load_detector
from ray_app.audit.injection import Defences, Screening, screen_inputs
from ray_app.llm.attribution import attribute_passages
from ray_app.llm.generate import count_tokens, generate_answer, model_versions, render_prompt
from ray_app.llm.prompting import Passage
from ray_app.settings import Settings, get_settings

_END = object()


class LocalVision:
    """The vision analyzer, loaded on the first image (a text-only question never loads it)."""

    def __init__(self, store, embedder, settings: Settings | None = None):
        self.store, self.embedder, self.settings = store, embedder, settings
        self._analyzer = None

    def analyzer(self):
        from ray_app.vision.analyzer import VisionAnalyzer

        if self._analyzer is None:
            self._analyzer = VisionAnalyzer(self.store, self.embedder, settings=self.settings)
        return self._analyzer

    async def analyze(self, image: bytes) -> dict:
        result = await asyncio.to_thread(self.analyzer().analyze, image)
        return result.public()

    async def version(self) -> str | None:
        return self.analyzer().encoder_version

    async def saliency(self, image: bytes, label: str) -> dict:
        return await asyncio.to_thread(self.analyzer().saliency, image, label)


class LocalRetrieve:
    """Hybrid search over the store with the vision-expanded query."""

    def __init__(self, store, embedder):
        self.store, self.embedder = store, embedder

    async def retrieve(self, question: str, vision: dict | None, options: AskOptions) -> Retrieved:
        return await asyncio.to_thread(retrieve_passages, question, vision, options.k, self.store, self.embedder,
                                       options.min_relevance, options.fair_exposure)


class FixedPassages:
    """Retrieval replaced by given passages (evaluation questions come with theirs)."""

    def __init__(self, passages: list[Passage]):
        self.passages = passages

    async def retrieve(self, question: str, vision: dict | None, options: AskOptions) -> Retrieved:
        return Retrieved(question, list(self.passages))


class TokenCounter:
    """An answer's ``usage`` in the LLM's own tokenizer: the rendered prompt (after the prompt budget) and the
    generated text. The tokenizer loads on first use, so a process without the model (the ingress) can count.

    Args:
        settings: the LLM (``PRISM_LLM_MODEL``) and ``PRISM_PROMPT_TOKEN_BUDGET``.
        tokenizer: an already loaded tokenizer (skips loading).
    """

    def __init__(self, settings: Settings | None = None, tokenizer=None):
        self.settings, self._tokenizer = settings or get_settings(), tokenizer
        self._loading = threading.Lock()

    def tokenizer(self):
        """The tokenizer, loaded once: concurrent first counts (a burst of asks, each in a worker thread) wait for
        one load instead of importing ``transformers`` side by side (which fails: "cannot import name
        'AutoTokenizer'")."""
        if self._tokenizer is None:
            with self._loading:
                if self._tokenizer is None:
                    from transformers import AutoTokenizer

                    from ray_app.models.llm import resolve_llm

                    self._tokenizer = AutoTokenizer.from_pretrained(resolve_llm(self.settings.llm_model, self.settings))
        return self._tokenizer

    def count(self, question: str, passages: list[Passage], context: str | None, answer: str) -> dict[str, int]:
        tokenizer = self.tokenizer()
        prompt = render_prompt(tokenizer, question, passages, context, self.settings.prompt_token_budget)
        return {"prompt_tokens": count_tokens(tokenizer, prompt), "completion_tokens": count_tokens(tokenizer, answer)}

    async def acount(self, question: str, passages: list[Passage], context: str | None, answer: str) -> dict[str, int]:
        return await asyncio.to_thread(self.count, question, passages, context, answer)


class LocalGenerate:
    """One prompt at a time with :func:`ray_app.llm.generate.stream_tokens`, in a worker thread."""

    def __init__(self, llm, settings: Settings | None = None):
        self.llm, self.settings = llm, settings or get_settings()
        self.counter = TokenCounter(self.settings, llm.tokenizer if llm is not None else None)

    async def generate(self, question: str, passages: list[Passage], context: str | None,
                       max_new_tokens: int) -> AsyncIterator[str]:
        pieces = generate_answer(self.llm, question, passages, context, max_new_tokens,
                                 self.settings.prompt_token_budget)
        while (piece := await asyncio.to_thread(next, pieces, _END)) is not _END:
            yield piece

    async def versions(self) -> dict[str, str | None]:
        return model_versions(self.llm, self.settings)

    async def attribute(self, question: str, passages: list[Passage], context: str | None, answer: str) -> dict:
        return await asyncio.to_thread(attribute_passages, self.llm, question, passages, context, answer,
                                       self.settings.prompt_token_budget)

    async def usage(self, question: str, passages: list[Passage], context: str | None, answer: str) -> dict[str, int]:
        return await self.counter.acount(question, passages, context, answer)


class BatchedGenerate:
    """Concurrent asks share one LLM engine (:mod:`ray_app.llm.engines`: batched decoding, one forward pass per step)."""

    def __init__(self, engine, settings: Settings | None = None):
        self.engine, self.settings = engine, settings or get_settings()
        self.counter = TokenCounter(self.settings, engine.tokenizer)
        self._attributing = asyncio.Semaphore(1)

    async def generate(self, question: str, passages: list[Passage], context: str | None,
                       max_new_tokens: int) -> AsyncIterator[str]:
        prompt = render_prompt(self.engine.tokenizer, question, passages, context, self.settings.prompt_token_budget)
        stream = self.engine.submit(prompt, max_new_tokens)
        try:
            async for piece in stream:
                yield piece
        finally:
            stream.cancel()  # a consumer that went away gives its slot back at the next step

    async def versions(self) -> dict[str, str | None]:
        return self.engine.versions()

    async def attribute(self, question: str, passages: list[Passage], context: str | None, answer: str) -> dict:
        """Passage attribution on the engine's own model, one ask at a time per replica (it shares the CPU with
        the decode loop); an engine without a torch model (ct2, llama.cpp) returns no sentences and a note."""
        llm = getattr(self.engine, "llm", None)
        if llm is None:
            return {"sentences": [], "note": f"no passage attribution: the {self.engine.name} engine has no torch "
                                             "model to score passages with (PRISM_LLM_ENGINE=torch has)"}
        async with self._attributing:
            return await asyncio.to_thread(attribute_passages, llm, question, passages, context, answer,
                                           self.settings.prompt_token_budget)

    async def usage(self, question: str, passages: list[Passage], context: str | None, answer: str) -> dict[str, int]:
        return await self.counter.acount(question, passages, context, answer)


class InjectionScreen:
    """The pre-generation screening with the rules and the learned detector (:mod:`ray_app.audit.detector`, over
    the audit stage's MiniLM, loaded on first use), in a worker thread."""

    def __init__(self, embedder=None):
        self.embedder = embedder
        self._detector: list = []  # [detector or None] once loaded

    def detector(self):
        if not self._detector:
            self._detector.append(load_detector(self.embedder))
        return self._detector[0]

    async def screen(self, question: str, passages: list[Passage], defences: Defences) -> Screening:
        detector = self.detector() if defences.detector else None
        return await asyncio.to_thread(screen_inputs, question, passages, detector, defences.rules)


class LoggedAudit(InjectionScreen):
    """Injection screening before generation; grounding and injection checks after it, then a record appended to
    the tamper-evident audit log."""

    def __init__(self, store, embedder=None):
        super().__init__(embedder)
        self.store = store

    async def start(self, draft: AnswerDraft) -> None:
        await asyncio.to_thread(
            record_started, self.store, ask_id=draft.ask_id, question=draft.question, passages=draft.passages,
            vision=draft.vision, k=draft.k, versions=draft.versions, caller=draft.caller,
            extra_flags=draft.screen_flags, quarantined=draft.quarantined, trace_id=draft.trace_id)

    async def record(self, draft: AnswerDraft) -> dict:
        return await asyncio.to_thread(
            record_answer, self.store, ask_id=draft.ask_id, question=draft.question, answer=draft.answer,
            passages=draft.passages, vision=draft.vision, k=draft.k, versions=draft.versions,
            timings_ms=draft.timings_ms, embedder=self.embedder, caller=draft.caller, status=draft.status,
            error=draft.error, extra_flags=draft.screen_flags, quarantined=draft.quarantined,
            trace_id=draft.trace_id, picture=identified_picture(draft.vision))


class CheckOnlyAudit(InjectionScreen):
    """The same checks without a log record (evaluation answers are not served to anyone)."""

    async def start(self, draft: AnswerDraft) -> None:
        return None

    async def record(self, draft: AnswerDraft) -> dict:
        verdict = audit_answer(draft.question, draft.answer, draft.passages, self.embedder,
                               identified_picture(draft.vision))
        return {"grounded": verdict.grounded, "flags": merge_flags(draft.screen_flags, verdict.flags),
                "citations": build_citations(draft.passages, verdict.grounding)}


def local_service(store=None, settings: Settings | None = None) -> AskService:
    """The whole pipeline in this process, models loaded once: the default store, MiniLM, the LLM."""
    from ray_app.models.llm import load_llm
    from ray_app.models.text import get_text_embedder
    from ray_app.store import get_store

    settings = settings or get_settings()
    store = store or get_store()
    embedder = get_text_embedder()
    return AskService(
        vision=LocalVision(store, embedder, settings),
        retrieve=LocalRetrieve(store, embedder),
        generate=LocalGenerate(load_llm(settings=settings), settings),
        audit=LoggedAudit(store, embedder),
        settings=settings,
    )
