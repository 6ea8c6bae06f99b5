"""The edge LLM: an ONNX Runtime GenAI model (int4 / int8 / fp32) behind the ask pipeline's generate stage.

Greedy decoding at batch 1 (one user per device), streamed piece by piece with the server's UTF-8-safe
:func:`ray_app.llm.generate.text_delta`; the prompt is the server's (:func:`render_prompt` with the
prompt budget), tokenised by :class:`edge.tokenizer.EdgeTokenizer`. ORT's thread pools are bounded by
``threads`` (the decoder's intra-op pool; inter-op 1).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np

from edge.tokenizer import EdgeTokenizer
from ray_app.llm.generate import count_tokens, render_prompt, stop_token_ids, text_delta
from ray_app.llm.prompting import Passage

_END = object()


class EdgeLLM:
    """An ONNX Runtime GenAI model folder with its tokenizer.

    Args:
        folder: the builder's output (``genai_config.json``, ``model.onnx``, tokenizer files).
        threads: intra-op threads for the decoder (None: ORT's default, every core).
    """

    def __init__(self, folder: str | Path, threads: int | None = None):
        import onnxruntime_genai as og

        self.folder = Path(folder)
        config = og.Config(str(self.folder))
        config.clear_providers()  # the CPU
        if threads:
            options = {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self._og = og
        self.model = og.Model(config)
        self.tokenizer = EdgeTokenizer(self.folder)
        self.stops = stop_token_ids(self.tokenizer)
        self.context_length = json.loads((self.folder / "genai_config.json").read_text())["model"]["context_length"]
        self._lock = threading.Lock()  # one generation at a time: a device decodes for one user

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int) -> Iterator[int]:
        """Greedy token ids after ``prompt_ids`` until a stop token or ``max_new_tokens``."""
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=min(len(prompt_ids) + max_new_tokens,
                                                                  self.context_length), batch_size=1)
        with self._lock:
            generator = self._og.Generator(self.model, params)
            generator.append_tokens(np.asarray([prompt_ids], dtype=np.int32))
            produced = 0
            while produced < max_new_tokens and not generator.is_done():
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                if token in self.stops:
                    return
                produced += 1
                yield token

    def stream_text(self, prompt: str, max_new_tokens: int) -> Iterator[str]:
        """The new text of a greedy completion of ``prompt``, piece by piece (whole UTF-8 characters)."""
        tokens: list[int] = []
        shown = ""
        for token in self.stream_ids(self.tokenizer.encode(prompt), max_new_tokens):
            tokens.append(token)
            piece, shown = text_delta(self.tokenizer, tokens, shown)
            if piece:
                yield piece

    def teacher_forced_top1(self, prompt_ids: list[int], continuation: list[int]) -> list[int]:
        """This model's top-1 token at each step of ``continuation`` when fed the reference tokens (teacher forcing)."""
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=len(prompt_ids) + len(continuation) + 1, batch_size=1)
        with self._lock:
            generator = self._og.Generator(self.model, params)
            generator.append_tokens(np.asarray([prompt_ids], dtype=np.int32))
            tops = []
            for token in continuation:
                tops.append(int(np.asarray(generator.get_logits()).reshape(-1).argmax()))
                generator.append_tokens(np.asarray([[token]], dtype=np.int32))
            return tops


class EdgeGenerate:
    """The ask pipeline's generate stage (``ray_app.ask.service.GenerateStage``) over an :class:`EdgeLLM`.

    Args:
        llm: the model.
        budget: the prompt budget in tokens (passages trimmed to fit; the server's ``fit_passages``).
        versions: ``{"model", "adapter"}`` for the response's audit.
    """

    def __init__(self, llm: EdgeLLM, budget: int | None, versions: dict[str, str | None]):
        self.llm, self.budget, self._versions = llm, budget, versions

    def prompt(self, question: str, passages: list[Passage], context: str | None) -> str:
        return render_prompt(self.llm.tokenizer, question, passages, context, self.budget)

    async def generate(self, question: str, passages: list[Passage], context: str | None,
                       max_new_tokens: int) -> AsyncIterator[str]:
        pieces = self.llm.stream_text(self.prompt(question, passages, context), max_new_tokens)
        try:
            while (piece := await asyncio.to_thread(next, pieces, _END)) is not _END:
                yield piece
        finally:
            try:
                pieces.close()  # a consumer that went away frees the model at once
            except ValueError:  # still running in its thread: it ends at its next token
                pass

    async def versions(self) -> dict[str, str | None]:
        return dict(self._versions)

    async def usage(self, question: str, passages: list[Passage], context: str | None, answer: str) -> dict[str, int]:
        tokenizer = self.llm.tokenizer
        return {"prompt_tokens": count_tokens(tokenizer, self.prompt(question, passages, context)),
                "completion_tokens": count_tokens(tokenizer, answer)}
