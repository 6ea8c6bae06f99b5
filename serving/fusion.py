"""The ``fusion`` deployment: the LLM writes a cited answer from numbered passages, streaming tokens.

Concurrent requests share forward passes: ``@serve.batch`` collects up to ``max_batch_size``
prompts that arrive within ``batch_wait_timeout_s`` and decodes them together
(:func:`ray_app.answer.stream_tokens`, one batched forward pass per token step), yielding each
request's tokens as they appear. ``max_new_tokens`` is capped by ``PRISM_MAX_NEW_TOKENS``.
"""

from __future__ import annotations

import asyncio
import os

from ray import serve

from ray_app.answer import image_context, model_versions, render_prompt, stream_tokens
from ray_app.prompting import Passage
from ray_app.settings import get_settings


@serve.deployment(name="fusion")
class FusionDeployment:
    """One LLM (+ adapter from ``PRISM_LLM_ADAPTER``) per replica."""

    def __init__(self, threads: int | None = None):
        import torch

        from ray_app.models.llm import load_llm

        torch.set_num_threads(threads or max(1, int(os.environ.get("PRISM_FUSION_THREADS", os.cpu_count() or 1))))
        self.settings = get_settings()
        self.llm = load_llm(settings=self.settings)
        self._versions = model_versions(self.llm, self.settings)

    def versions(self) -> dict:
        """Model and adapter versions for the audit record."""
        return dict(self._versions)

    async def generate(self, question: str, passages: list[dict], vision: dict | None, max_new_tokens: int):
        """Stream the answer's text pieces (use with ``handle.options(stream=True)``)."""
        limit = max(1, min(int(max_new_tokens), self.settings.max_new_tokens))
        prompt = render_prompt(self.llm.tokenizer, question, [Passage(**p) for p in passages], image_context(vision))
        async for piece in self._decode_batch((prompt, limit)):
            if piece:
                yield piece

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _decode_batch(self, items: list[tuple[str, int]]):
        """Decode a batch of prompts together; one list of text pieces per token step."""
        steps = stream_tokens(self.llm, [p for p, _ in items], [n for _, n in items])
        finished = [False] * len(items)
        while True:
            deltas = await asyncio.to_thread(next, steps, None)
            if deltas is None:
                return
            out = []
            for i, delta in enumerate(deltas):
                finished[i] = finished[i] or delta is None
                out.append(StopIteration if finished[i] else delta)
            yield out
