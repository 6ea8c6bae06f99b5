"""The ask service's stages in the Serve graph: each calls its deployment through a handle.

:class:`ray_app.ask.service.AskService` runs in the ingress over these; the deployments hold the
models (``serving/vision.py``, ``rag.py``, ``fusion.py``, ``audit.py``). Every call is bounded by
``PRISM_HANDLE_TIMEOUT_S`` and made once more when its replica failed before answering
(:mod:`serving.faults`). Each call hands the request's W3C ``traceparent`` to the deployment, which opens
its stage's span as a child of the request's (:mod:`ray_app.telemetry.tracing`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ray_app.ask.retrieval import Retrieved
from ray_app.ask.service import AnswerDraft, AskOptions
from ray_app.ask.stages import TokenCounter
from ray_app.audit.injection import Defences, Screening
from ray_app.llm.prompting import Passage
from ray_app.settings import get_settings
from ray_app.telemetry.tracing import current_traceparent
from ray_app.vision.analyzer import ImageRejected
from serving import faults


def timeout_s() -> float:
    return get_settings().handle_timeout_s


class ServeVision:
    def __init__(self, handle):
        self.handle = handle

    async def analyze(self, image: bytes) -> dict:
        tp = current_traceparent.get()
        out = await faults.call(lambda: self.handle.analyze.remote(image, traceparent=tp), timeout_s(), "vision")
        if "error" in out:  # rebuilt here: the code does not survive Ray's exception wrapping
            raise ImageRejected(out["error"]["code"], out["error"]["message"])
        return out["vision"]

    async def version(self) -> str | None:
        return await faults.call(lambda: self.handle.version.remote(), timeout_s(), "vision")

    async def saliency(self, image: bytes, label: str) -> dict:
        out = await faults.call(lambda: self.handle.saliency.remote(image, label), timeout_s(), "vision")
        if "error" in out:
            raise ImageRejected(out["error"]["code"], out["error"]["message"])
        return out


class ServeRetrieve:
    def __init__(self, handle):
        self.handle = handle

    async def retrieve(self, question: str, vision: dict | None, options: AskOptions) -> Retrieved:
        tp = current_traceparent.get()
        return await faults.call(lambda: self.handle.retrieve.remote(question, vision, options, traceparent=tp),
                                 timeout_s(), "rag")


class ServeGenerate:
    """The fusion deployment's stream; ``usage`` counts tokens here with the LLM's tokenizer (no model)."""

    def __init__(self, handle, counter: TokenCounter | None = None):
        self.handle = handle
        self.counter = counter or TokenCounter()

    async def generate(self, question: str, passages: list[Passage], context: str | None,
                       max_new_tokens: int) -> AsyncIterator[str]:
        tp = current_traceparent.get()

        def make():
            return self.handle.options(stream=True).generate.remote(question, passages, context, max_new_tokens,
                                                                    traceparent=tp)

        async for piece in faults.stream(make, timeout_s(), "fusion"):
            yield piece

    async def versions(self) -> dict[str, str | None]:
        return await faults.call(lambda: self.handle.versions.remote(), timeout_s(), "fusion")

    async def attribute(self, question: str, passages: list[Passage], context: str | None, answer: str) -> dict:
        """Passage attribution on the fusion replica's model (``FusionDeployment.attribute``)."""
        return await faults.call(lambda: self.handle.attribute.remote(question, passages, context, answer),
                                 timeout_s(), "fusion")

    async def usage(self, question: str, passages: list[Passage], context: str | None, answer: str) -> dict[str, int]:
        return await self.counter.acount(question, passages, context, answer)


class ServeAudit:
    def __init__(self, handle):
        self.handle = handle

    async def start(self, draft: AnswerDraft) -> None:
        tp = current_traceparent.get()
        await faults.call(lambda: self.handle.start.remote(draft, traceparent=tp), timeout_s(), "audit")

    async def record(self, draft: AnswerDraft) -> dict:
        tp = current_traceparent.get()
        return await faults.call(lambda: self.handle.record.remote(draft, traceparent=tp), timeout_s(), "audit")

    async def screen(self, question: str, passages: list[Passage], defences: Defences) -> Screening:
        tp = current_traceparent.get()
        return await faults.call(lambda: self.handle.screen.remote(question, passages, defences, traceparent=tp),
                                 timeout_s(), "audit")
