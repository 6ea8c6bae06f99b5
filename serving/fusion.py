"""The ``fusion`` deployment: the LLM writes a cited answer from numbered passages, streaming tokens.

Decoding uses continuous batching (:class:`ray_app.llm.batching.ContinuousBatcher`): one background
thread per replica decodes every running answer in one forward pass per token step, and a request
that arrives joins that batch at the next step (after one prefill pass for the newcomers) instead
of waiting for the running batch to finish. Up to ``PRISM_FUSION_MAX_BATCH_SIZE`` answers decode
together; further requests wait in arrival order for a slot. ``max_new_tokens`` is capped by
``PRISM_MAX_NEW_TOKENS``; ``PRISM_FUSION_THREADS`` sets torch's threads per replica.
"""

from __future__ import annotations

from ray import serve

from ray_app.ask.stages import BatchedGenerate
from ray_app.llm.prompting import Passage
from ray_app.settings import get_settings


@serve.deployment(name="fusion")
class FusionDeployment:
    """One LLM (+ adapter from ``PRISM_LLM_ADAPTER``) and one continuous batcher per replica."""

    def __init__(self, threads: int | None = None, max_batch_size: int | None = None):
        import torch

        from ray_app.llm.batching import ContinuousBatcher
        from ray_app.models.llm import load_llm

        self.settings = get_settings()
        torch.set_num_threads(threads or self.settings.fusion_threads)
        llm = load_llm(settings=self.settings)
        self.batcher = ContinuousBatcher(llm, max_batch_size or self.settings.fusion_max_batch_size)
        self.generator = BatchedGenerate(llm, self.batcher, self.settings)

    async def versions(self) -> dict:
        """Model and adapter versions for the audit record."""
        return await self.generator.versions()

    def stats(self) -> dict:
        """The continuous batcher's rows and queue (load, and whether a gone client's row was freed)."""
        return self.batcher.stats()

    async def generate(self, question: str, passages: list[Passage], context: str | None, max_new_tokens: int):
        """Stream the answer's text pieces (use with ``handle.options(stream=True)``)."""
        limit = max(1, min(int(max_new_tokens), self.settings.max_new_tokens))
        async for piece in self.generator.generate(question, passages, context, limit):
            yield piece

    def __del__(self):
        if getattr(self, "batcher", None) is not None:
            self.batcher.close()
