"""The ``fusion`` deployment: the LLM writes a cited answer from numbered passages, streaming tokens.

Decoding uses continuous batching (:class:`ray_app.batching.ContinuousBatcher`): one background
thread per replica decodes every running answer in one forward pass per token step, and a request
that arrives joins that batch at the next step (after one prefill pass for the newcomers) instead
of waiting for the running batch to finish. Up to ``PRISM_FUSION_MAX_BATCH_SIZE`` answers decode
together; further requests wait in arrival order for a slot. ``max_new_tokens`` is capped by
``PRISM_MAX_NEW_TOKENS``.
"""

from __future__ import annotations

import os

from ray import serve

from ray_app.answer import image_context, model_versions, render_prompt
from ray_app.prompting import Passage
from ray_app.settings import get_settings


@serve.deployment(name="fusion")
class FusionDeployment:
    """One LLM (+ adapter from ``PRISM_LLM_ADAPTER``) and one continuous batcher per replica."""

    def __init__(self, threads: int | None = None, max_batch_size: int | None = None):
        import torch

        from ray_app.batching import ContinuousBatcher
        from ray_app.models.llm import load_llm

        torch.set_num_threads(threads or max(1, int(os.environ.get("PRISM_FUSION_THREADS", os.cpu_count() or 1))))
        self.settings = get_settings()
        self.llm = load_llm(settings=self.settings)
        self._versions = model_versions(self.llm, self.settings)
        self.batcher = ContinuousBatcher(self.llm, max_batch_size or self.settings.fusion_max_batch_size)

    def versions(self) -> dict:
        """Model and adapter versions for the audit record."""
        return dict(self._versions)

    async def generate(self, question: str, passages: list[dict], vision: dict | None, max_new_tokens: int):
        """Stream the answer's non-empty text pieces (use with ``handle.options(stream=True)``)."""
        limit = max(1, min(int(max_new_tokens), self.settings.max_new_tokens))
        prompt = render_prompt(self.llm.tokenizer, question, [Passage(**p) for p in passages], image_context(vision))
        stream = self.batcher.submit(prompt, limit)
        try:
            async for piece in stream:
                yield piece
        finally:
            stream.cancel()  # a client that went away gives its slot back at the next step

    def __del__(self):
        if getattr(self, "batcher", None) is not None:
            self.batcher.close()
