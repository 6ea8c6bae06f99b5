"""The ask service: one async pipeline over four stages (vision, retrieve, generate, audit).

    prism ask "What is this animal and where does it live?" --image frog.png --json

:class:`AskService` validates a question, runs the stages and yields :class:`AskEvent` items:
``meta`` (the ask id, what vision saw, the numbered passages), ``token`` (``{"text"}``) per piece
of the answer, then ``done`` (the ``/v1/ask`` response). Its consumers are thin transports:
``prism ask`` (:mod:`ray_app.cli.ask`), the answer evaluation (:mod:`ray_app.evaluation.answers`)
and the Serve ingress (``serving/ingress.py``), which maps events to SSE or JSON and Prism's
errors to status codes. The stages are injected: in one process they are the local classes of
:mod:`ray_app.ask.stages`; in the Serve graph they call the deployments.

Errors are Prism's own (:mod:`ray_app.errors`): input errors and rejected images are raised
before the first event, so a transport can still answer them with a status code.

The question's e-mails, phone numbers, card numbers and SSNs are redacted first
(:func:`ray_app.audit.pii.redact_pii`): retrieval, the LLM, the audit record and every log see the
placeholders, and the record's flags say which kinds were found (``pii_redacted:<kind>``).

Injection defences (:class:`ray_app.audit.injection.Defences`, all on by default): before generation the
audit stage screens the question, every passage and the OCR passage (rules plus the learned detector);
flagged passages are quarantined, and a flagged question is not answered. After generation, before the
final event, the answer is checked for URLs and markdown images no source holds and for pieces of the
system prompt. Either way the ask ends with a ``flagged`` event instead of ``done``: the same response,
its ``answer`` replaced by a message saying why (``withheld: true``); the audit record keeps what happened.

Every ask that reaches generation is audited twice: a ``started`` record before the first event and a
``completed`` one however it ends (answered, or cancelled when the client goes away, timeout, error),
the latter written under :func:`asyncio.shield` so a cancelled request still finishes its record.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

from ray_app.ask.admission import AdmissionGate
from ray_app.ask.explain import explain_answer, start_saliency
from ray_app.ask.retrieval import Retrieved, image_context, unidentified_image_reply
from ray_app.audit.injection import (
    ALL_DEFENCES,
    Defences,
    Screening,
    check_output,
    screen_inputs,
    withheld_message,
)
from ray_app.audit.pii import redact_pii
from ray_app.errors import InputError, Unavailable
from ray_app.llm.prompting import NOT_IN_SOURCES, Passage
from ray_app.settings import Settings, get_settings
from ray_app.telemetry.logs import ASK_ID

log = logging.getLogger(__name__)

MAX_K = 20
MAX_QUESTION_CHARS = 2000


class AskInputError(InputError):
    """A question or option a user can fix (empty question, k out of range)."""


class AskTimeout(Unavailable):
    """The ask ran past ``PRISM_ASK_TIMEOUT_S`` (the server's own limit, whatever the client asked for)."""

    code = "timeout"


@dataclass
class AskOptions:
    """Per-request knobs; ``max_new_tokens`` is capped by ``settings.max_new_tokens``."""

    k: int = 5
    max_new_tokens: int | None = None
    min_relevance: float = 0.25
    explain: bool = False  # add an ``explanation`` (ray_app.ask.explain) to the answer
    fair_exposure: str | None = None  # re-rank the people among the passages for this attribute (ray_app.bias.exposure)

    def check(self, settings: Settings) -> AskOptions:
        """A copy with the limits applied.

        Raises:
            AskInputError: ``k`` or ``max_new_tokens`` out of range, or an unknown ``fair_exposure`` attribute.
        """
        if not 1 <= self.k <= MAX_K:
            raise AskInputError(f"k must be between 1 and {MAX_K}, got {self.k}")
        limit = settings.max_new_tokens
        wanted = self.max_new_tokens or limit
        if wanted < 1:
            raise AskInputError(f"max_new_tokens must be at least 1, got {wanted}")
        if self.fair_exposure not in (None, "gender", "region", "era"):
            raise AskInputError(f"fair_exposure must be gender, region or era, got {self.fair_exposure!r}")
        return AskOptions(self.k, min(wanted, limit), self.min_relevance, self.explain, self.fair_exposure)


@dataclass(frozen=True)
class AskEvent:
    """One step of an answer: ``meta``, ``token`` (``data["text"]``), then ``done`` (the response) or ``flagged``
    (the response with its answer withheld by the injection defences)."""

    kind: Literal["meta", "token", "done", "flagged"]
    data: dict[str, Any]


@dataclass
class AnswerDraft:
    """What the audit stage checks and logs: one finished answer and what it was made from."""

    ask_id: str
    question: str
    answer: str
    passages: list[Passage]
    vision: dict | None
    k: int
    versions: dict[str, str | None]
    timings_ms: dict[str, float] = field(default_factory=dict)
    caller: str | None = None  # the API key id that asked (never the key); None without auth
    usage: dict[str, int] = field(default_factory=dict)  # prompt_tokens, completion_tokens, total_tokens
    status: str = "answered"  # or "withheld", "blocked", "cancelled", "timeout", "error": how the ask ended
    error: str | None = None
    screen_flags: list[str] = field(default_factory=list)  # the pre-generation injection screening's flags
    quarantined: list[Passage] = field(default_factory=list)  # retrieved, flagged, left out of the prompt
    trace_id: str | None = None  # the request's OpenTelemetry trace id (ray_app.telemetry.tracing), when traced


@dataclass
class AskTrace:
    """How far one ask got, so that its ``completed`` record is written however it ends."""

    draft: AnswerDraft | None = None  # set once the ``started`` record is written
    answer: str = ""
    closed: bool = False  # the completed record is written or being written

    def unfinished(self, status: str, error: str | None) -> AnswerDraft | None:
        """The draft to log for an ask that ended early (once), or None when there is nothing to log."""
        if self.draft is None or self.closed:
            return None
        self.closed = True
        return replace(self.draft, answer=self.answer.strip(), status=status, error=error)


class VisionStage(Protocol):
    async def analyze(self, image: bytes) -> dict:
        """The public vision result (labels, OCR text, similar images); raises ``ImageRejected``."""

    async def version(self) -> str | None:
        """The image encoder's version for the audit record."""

    async def saliency(self, image: bytes, label: str) -> dict:
        """Where in the image the encoder's match with ``label`` lies (optional; ``ray_app.ask.explain``)."""


class RetrieveStage(Protocol):
    async def retrieve(self, question: str, vision: dict | None, options: AskOptions) -> Retrieved:
        """The numbered passages the answer may use."""


class GenerateStage(Protocol):
    def generate(self, question: str, passages: list[Passage], context: str | None,
                 max_new_tokens: int) -> AsyncIterator[str]:
        """The answer's text pieces as the LLM writes them."""

    async def versions(self) -> dict[str, str | None]:
        """``{"model", "adapter"}`` versions for the audit record."""

    async def usage(self, question: str, passages: list[Passage], context: str | None, answer: str) -> dict[str, int]:
        """``{"prompt_tokens", "completion_tokens"}``: the rendered prompt and the answer in the LLM's tokenizer
        (optional: a generator without it reports zeros)."""

    async def attribute(self, question: str, passages: list[Passage], context: str | None, answer: str) -> dict:
        """Per answer sentence, the passages ranked by ablation (optional; ``ray_app.llm.attribution``)."""


class AuditStage(Protocol):
    async def start(self, draft: AnswerDraft) -> None:
        """Log that generation starts (the ``started`` record: request, passages' hashes, versions)."""

    async def record(self, draft: AnswerDraft) -> dict:
        """Check and log one answer (``draft.status`` says how it ended): ``{"grounded", "flags", "citations"}``."""

    async def screen(self, question: str, passages: list[Passage], defences: Defences) -> Screening:
        """The pre-generation injection screening (optional: without it the service runs the rules alone)."""


def check_question(question: str | None) -> str:
    """Return the stripped question or raise :class:`AskInputError`."""
    question = (question or "").strip()
    if not question:
        raise AskInputError("the question is empty")
    if "\x00" in question:  # no text column or search in Postgres can hold one
        raise AskInputError("the question contains a NUL character")
    if len(question) > MAX_QUESTION_CHARS:
        raise AskInputError(f"the question has {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
    return question


def new_ask_id() -> str:
    return uuid.uuid4().hex


class AskService:
    """The ask pipeline over injected stages; one instance serves many concurrent asks.

    Args:
        vision: labels, OCR and similar images for an uploaded image (None: images are refused).
        retrieve: the passages for a question.
        generate: the LLM's answer, streamed.
        audit: grounding and injection checks plus the audit-log record.
        settings: limits (``max_new_tokens``).
        gate: admission control; an ask holds a place from before vision until its last event
            (None: every ask is admitted).
        defences: the injection defences that run (default: all; the injection evaluation switches them).
    """

    def __init__(self, vision: VisionStage | None, retrieve: RetrieveStage, generate: GenerateStage,
                 audit: AuditStage, settings: Settings | None = None, gate: AdmissionGate | None = None,
                 defences: Defences = ALL_DEFENCES):
        self.vision, self.retriever, self.generator, self.auditor = vision, retrieve, generate, audit
        self.settings = settings or get_settings()
        self.gate = gate
        self.defences = defences
        self._versions: dict | None = None

    async def versions(self, with_image: bool) -> dict[str, str | None]:
        """Model and adapter versions (asked of the generator once), plus the image encoder's when used."""
        if self._versions is None:
            self._versions = dict(await self.generator.versions())
        encoder = await self.vision.version() if with_image and self.vision is not None else None
        return dict(self._versions, image_encoder=encoder)

    async def stream(self, question: str, image: bytes | None = None, options: AskOptions | None = None,
                     caller: str | None = None) -> AsyncIterator[AskEvent]:
        """Yield ``meta``, ``token``..., ``done`` (its ``usage`` counts the LLM's tokens).

        ``caller`` (an API key id) goes into the audit record.

        Raises (before the first event): :class:`AskInputError`, ``ImageRejected``,
        :class:`~ray_app.ask.admission.Overloaded` and the stages' own errors. Later errors end the
        stream with the exception.
        """
        redaction = redact_pii(check_question(question))  # before anything sees, logs or stores it
        question = redaction.text
        options = (options or AskOptions()).check(self.settings)
        if image is not None and self.vision is None:
            raise AskInputError("this service answers questions without images")
        async with self.gate.place() if self.gate is not None else nullcontext() as place:
            trace, status, error = AskTrace(), "cancelled", None  # a consumer that goes away: cancelled
            start, ended = time.perf_counter(), "cancelled"
            try:
                async for event in within(self._events(question, image, options, caller, trace, redaction.flags),
                                          self.settings.ask_timeout_s):
                    ended = event.kind if event.kind in ("done", "flagged") else ended
                    if event.kind == "token" and place is not None:
                        place.started()  # the gate adapts how many asks it lets in to this
                    yield event
            except AskTimeout as exc:
                status, error = "timeout", str(exc)
                ended = status
                raise
            except Exception as exc:
                status, error = "error", f"{type(exc).__name__}: {exc}"
                ended = type(exc).__name__
                raise
            finally:
                await self._log_unfinished(trace, status, error)
                # ids, outcome and time only: never the question or the answer (tests/serving/test_privacy.py)
                ask_id = trace.draft.ask_id if trace.draft else None
                log.info("ask %s ended: %s", ask_id or "-", ended,
                         extra={"ask_id": ask_id, "outcome": ended, "ms": _ms(start)})

    async def _log_unfinished(self, trace: AskTrace, status: str, error: str | None) -> None:
        """The ``completed`` record of an ask that ended early, shielded from the request's cancellation."""
        draft = trace.unfinished(status, error)
        if draft is None:
            return
        try:
            await asyncio.shield(self.auditor.record(draft))
        except Exception:  # the ask's own error (or the client's absence) is what the caller must see
            log.exception("could not log the %s ask %s", status, draft.ask_id)

    async def _events(self, question: str, image: bytes | None, options: AskOptions, caller: str | None = None,
                      trace: AskTrace | None = None, pii_flags: list[str] = ()) -> AsyncIterator[AskEvent]:
        trace = trace if trace is not None else AskTrace()
        start = time.perf_counter()
        timings: dict[str, float] = {}
        vision = None
        if image is not None:
            vision = await self.vision.analyze(image)
            timings["vision_ms"] = _ms(start)
        saliency = start_saliency(self.vision, image, vision) if options.explain else None  # overlaps generation
        t1 = time.perf_counter()
        retrieved = await self.retriever.retrieve(question, vision, options)
        timings["retrieval_ms"] = _ms(t1)
        screening = await self._screen(question, retrieved.passages)  # flagged passages never reach the prompt
        passages = screening.kept
        ask_id = new_ask_id()
        ASK_ID.set(ask_id)  # every record logged for the rest of this ask carries it (ray_app/telemetry/logs.py)
        draft = AnswerDraft(ask_id, question, "", passages, vision, options.k, await self.versions(image is not None),
                            timings, caller, screen_flags=[*pii_flags, *screening.flags],
                            quarantined=screening.quarantined)
        await self.auditor.start(draft)
        trace.draft = draft
        yield AskEvent("meta", {"id": ask_id, "vision": vision, "passages": [asdict(p) for p in passages],
                                "quarantined": quarantine_notes(screening)})
        if "prompt_injection:question" in screening.flags:  # not answered: the LLM never sees it
            trace.closed = True
            draft = replace(draft, status="blocked", usage=await self._usage(question, [], vision, ""))
            verdict = await asyncio.shield(self.auditor.record(draft))
            yield AskEvent("flagged", withheld_response(draft, verdict, 0.0))
            return

        t2 = time.perf_counter()
        async for piece in self._answer_pieces(question, passages, vision, options.max_new_tokens):
            if not trace.answer:
                timings["ttft_ms"] = _ms(start)
            trace.answer += piece
            yield AskEvent("token", {"text": piece})
        timings["generation_ms"] = _ms(t2)
        timings["total_ms"] = _ms(start)

        answer = trace.answer
        draft = replace(draft, answer=answer.strip(), usage=await self._usage(question, passages, vision, answer))
        output = check_output(answer, passages, image_context(vision)) if self.defences.output else []
        if output:  # withheld: logged with its reasons, never shown
            draft = replace(draft, status="withheld", screen_flags=[*draft.screen_flags, *output])
        explanation = None
        if options.explain and not output:
            explanation = await explain_answer(self.generator, question, passages, vision, draft.answer, saliency,
                                               image is not None)
            timings["explain_ms"] = explanation["ms"]
        trace.closed = True
        t3 = time.perf_counter()
        verdict = await asyncio.shield(self.auditor.record(draft))
        if output:
            yield AskEvent("flagged", withheld_response(draft, verdict, audit_ms=_ms(t3)))
        else:
            response = build_response(draft, verdict, audit_ms=_ms(t3))
            if explanation is not None:
                response["explanation"] = explanation
            yield AskEvent("done", response)

    async def _screen(self, question: str, passages: list[Passage]) -> Screening:
        """The audit stage's screening (rules + detector) when it has one, else the rules here."""
        if not (self.defences.rules or self.defences.detector):
            return Screening(kept=list(passages))
        if hasattr(self.auditor, "screen"):
            return await self.auditor.screen(question, passages, self.defences)
        return screen_inputs(question, passages, rules=self.defences.rules)

    async def ask(self, question: str, image: bytes | None = None, options: AskOptions | None = None) -> dict:
        """Run the pipeline to the end and return the ``/v1/ask`` response (``withheld`` when flagged)."""
        async for event in self.stream(question, image, options):
            if event.kind in ("done", "flagged"):
                return event.data
        raise RuntimeError("the ask pipeline ended without an answer")

    async def _usage(self, question: str, passages: list[Passage], vision: dict | None, answer: str) -> dict[str, int]:
        """Token counts of the LLM call (zeros when the LLM was not called or cannot count)."""
        counts = {"prompt_tokens": 0, "completion_tokens": 0}
        if passages and hasattr(self.generator, "usage") and unidentified_image_reply(question, vision) is None:
            counts = await self.generator.usage(question, passages, image_context(vision), answer)
        return {**counts, "total_tokens": counts["prompt_tokens"] + counts["completion_tokens"]}

    async def _answer_pieces(self, question: str, passages: list[Passage], vision: dict | None,
                             max_new_tokens: int) -> AsyncIterator[str]:
        reply = unidentified_image_reply(question, vision)
        if reply is not None:  # vision is not sure what the picture shows: say so, never name something unrelated
            yield reply
            return
        if not passages:  # nothing relevant was found: say so without calling the LLM
            yield NOT_IN_SOURCES
            return
        async for piece in self.generator.generate(question, passages, image_context(vision), max_new_tokens):
            if piece:
                yield piece


async def within(events: AsyncIterator[AskEvent], seconds: float) -> AsyncIterator[AskEvent]:
    """``events`` until ``seconds`` have passed in all, then :class:`AskTimeout` (the rest is cancelled)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        try:
            event = await asyncio.wait_for(anext(events), max(deadline - loop.time(), 0))
        except StopAsyncIteration:
            return
        except TimeoutError:
            await events.aclose()
            raise AskTimeout(f"the answer took longer than the server's limit of {seconds:g} s") from None
        yield event


def quarantine_notes(screening: Screening) -> list[dict]:
    """What the client is told about each quarantined passage: which it was and which rules it tripped."""
    return [{"n": p.n, "title": p.title, "doc_id": p.doc_id, "chunk_id": p.chunk_id,
             "rules": screening.rules.get(f"passage:{p.n}", [])} for p in screening.quarantined]


def build_response(draft: AnswerDraft, verdict: dict, audit_ms: float) -> dict:
    """The ``/v1/ask`` response for an audited answer."""
    return {
        "id": draft.ask_id,
        "answer": draft.answer,
        "citations": verdict["citations"],
        "vision": draft.vision,
        "audit": {"audit_id": draft.ask_id, "grounded": verdict["grounded"], "flags": verdict["flags"]},
        "timings_ms": dict(draft.timings_ms, audit_ms=audit_ms),
        "usage": dict(draft.usage) or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def withheld_response(draft: AnswerDraft, verdict: dict, audit_ms: float) -> dict:
    """The response of an ask the injection defences stopped: the answer replaced by why, no citations."""
    response = build_response(draft, verdict, audit_ms)
    return dict(response, answer=withheld_message(verdict["flags"]), citations=[], withheld=True)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)
