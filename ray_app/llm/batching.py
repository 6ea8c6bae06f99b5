"""Continuous (iteration-level) batching for greedy decoding: requests join and leave between token steps.

The ``fusion`` deployment (``serving/fusion.py``) owns one :class:`ContinuousBatcher`; ``prism ask``
and the evaluation jobs decode one prompt at a time with :func:`ray_app.llm.generate.stream_tokens`.

One background thread owns the model and the running batch (KV cache, attention mask, positions).
Each iteration it (1) prefills the waiting prompts together and merges their KV cache into the
running batch, (2) runs one decode step for every row, (3) sends each row its new text and (4)
drops the rows that finished. A request therefore waits at most one iteration (plus its own
prefill) for its first token instead of the whole decode of the batch in front of it.

Rows are left-padded and carry explicit position ids, and padding is masked out, so a row's
greedy tokens do not depend on which other rows share its batch.
"""

from __future__ import annotations

import asyncio
import copy
import queue
import threading
from collections.abc import AsyncIterator, Iterator

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from ray_app.llm.generate import left_padded, stop_token_ids, text_delta

_END = object()  # the last item of a stream


class BatcherClosed(RuntimeError):
    """The batcher was closed before the request finished."""


class TokenStream:
    """One request: its prompt, the tokens decoded so far, and the text pieces for its consumer.

    Created by :meth:`ContinuousBatcher.submit`. Iterate it with ``async for`` when it was
    submitted from a running event loop, else with a plain ``for``; either way it yields
    non-empty text pieces, ends when the row finishes and raises if decoding failed.
    """

    def __init__(self, prompt: str, max_new_tokens: int):
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.tokens: list[int] = []  # greedy picks, without the stop token; complete once the stream ends
        self.text = ""
        self.finished = False
        self.cancelled = False
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._queue: asyncio.Queue | queue.SimpleQueue = asyncio.Queue() if self._loop else queue.SimpleQueue()

    def cancel(self) -> None:
        """Give the row's slot back at the next step (the consumer has gone)."""
        self.cancelled = True

    def __aiter__(self) -> AsyncIterator[str]:
        if self._loop is None:
            raise TypeError("this stream was submitted outside an event loop; iterate it with `for`")
        return self._iterate_async()

    def __iter__(self) -> Iterator[str]:
        if self._loop is not None:
            raise TypeError("this stream was submitted from an event loop; iterate it with `async for`")
        return self._iterate_sync()

    def _iterate_sync(self) -> Iterator[str]:
        while (item := self._queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def _iterate_async(self) -> AsyncIterator[str]:
        while (item := await self._queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    # Called from the decode thread only.

    def _put(self, item) -> None:
        if self._loop is None:
            self._queue.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the consumer's event loop is closed: nobody is listening
            self.cancelled = True

    def _finish(self, error: BaseException | None = None) -> None:
        if not self.finished:
            self.finished = True
            self._put(error if error is not None else _END)


class DecodeLoop:
    """A request queue served by one background decode thread: the part every engine shares.

    Subclasses implement :meth:`_step`, which advances decoding by one iteration (the newcomers
    taken from the queue join it) and feeds each row's tokens to :meth:`_accept`.

    Args:
        tokenizer: the model's tokenizer (decodes the greedy picks into text; knows the stop tokens).
        max_batch_size: rows decoded together; further requests wait (in arrival order) for a slot.
    """

    def __init__(self, tokenizer, max_batch_size: int = 16):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self._stops = stop_token_ids(tokenizer)
        self._waiting: queue.SimpleQueue[TokenStream | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders submit() against close()
        self._closed = False
        self.generated_tokens = 0  # every row's tokens so far (written by the decode thread only)
        self._rows: list[TokenStream] = []  # the running batch, touched by the decode thread only
        self._thread = threading.Thread(target=self._run, name="prism-decode", daemon=True)

    def _start(self) -> None:
        """Start the decode thread (subclasses call it once their own state is ready)."""
        self._thread.start()

    def submit(self, prompt: str, max_new_tokens: int) -> TokenStream:
        """Queue a prompt; the returned stream yields its text as the batch decodes it.

        Raises:
            ValueError: an empty prompt or ``max_new_tokens`` below 1.
            BatcherClosed: :meth:`close` was called.
        """
        if not prompt:
            raise ValueError("the prompt is empty")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        stream = TokenStream(prompt, max_new_tokens)
        with self._lock:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            self._waiting.put(stream)
        return stream

    def stats(self) -> dict:
        """Rows decoding now and requests waiting for a row (read from another thread: a snapshot)."""
        return {"running": len(self._rows), "waiting": self._waiting.qsize(), "max_batch_size": self.max_batch_size,
                "generated_tokens": self.generated_tokens}

    def alive(self) -> bool:
        """Whether the decode thread is running and accepting requests (a replica's health check)."""
        return self._thread.is_alive() and not self._closed

    def generate(self, prompt: str, max_new_tokens: int) -> str:
        """Decode one prompt to the end and return its text (blocking; not from an event loop)."""
        return "".join(self.submit(prompt, max_new_tokens))

    def close(self, timeout: float | None = 30) -> None:
        """Stop the decode thread; requests still running or waiting raise :class:`BatcherClosed`."""
        with self._lock:
            self._closed = True
        self._waiting.put(None)  # wakes the thread if it is waiting for work
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(timeout)

    # The decode thread.

    def _step(self, newcomers: list[TokenStream]) -> None:
        raise NotImplementedError

    def _reset(self) -> None:
        self._rows = []

    def _run(self) -> None:
        try:
            while not self._closed:
                newcomers = self._take_waiting()
                try:
                    if newcomers or self._rows:
                        self._step(newcomers)
                except Exception as exc:  # every request in flight raises it; the next ones start afresh
                    for stream in self._rows + newcomers:
                        stream._finish(exc)
                    self._reset()
        finally:
            with self._lock:
                self._closed = True
            closed = BatcherClosed("the batcher was closed")
            for stream in self._rows:
                stream._finish(closed)
            while True:
                try:
                    stream = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if stream is not None:
                    stream._finish(closed)

    def _take_waiting(self) -> list[TokenStream]:
        """Waiting requests for the free slots, in arrival order; blocks while the batch is empty."""
        taken: list[TokenStream] = []
        while len(self._rows) + len(taken) < self.max_batch_size:
            try:
                stream = self._waiting.get(block=not self._rows and not taken)
            except queue.Empty:
                break
            if stream is None:  # close() woke us
                break
            if stream.cancelled:
                stream._finish()
            else:
                taken.append(stream)
        return taken

    def _accept(self, stream: TokenStream, tid: int) -> None:
        """Record a row's greedy pick: send its text, or end the row (stop token, token limit, cancelled)."""
        if stream.finished:
            return
        if stream.cancelled or tid in self._stops:
            stream._finish()
            return
        stream.tokens.append(tid)
        self.generated_tokens += 1
        delta, stream.text = text_delta(self.tokenizer, stream.tokens, stream.text)
        if delta:
            stream._put(delta)
        if len(stream.tokens) >= stream.max_new_tokens:
            stream._finish()


class ContinuousBatcher(DecodeLoop):
    """Greedy decoding of many prompts in one running batch that requests join and leave per step.

    Args:
        llm: a loaded causal LM with ``.model`` and ``.tokenizer`` (:func:`ray_app.models.llm.load_llm`).
        max_batch_size: rows decoded together; further requests wait (in arrival order) for a slot.
        shared_prefix: text that most prompts start with (the chat template's system turn); its KV cache
            is computed once and prompts that start with its tokens prefill only the rest (:class:`SharedPrefix`).
    """

    def __init__(self, llm, max_batch_size: int = 16, shared_prefix: str | None = None):
        super().__init__(llm.tokenizer, max_batch_size)
        self.llm = llm
        self.prefix = SharedPrefix(llm, shared_prefix) if shared_prefix else None
        # Row i of every tensor is self._rows[i].
        self._cache: DynamicCache | None = None  # keys/values [rows, kv_heads, columns, head_dim] per layer
        self._mask: torch.Tensor | None = None  # [rows, columns]: 1 for real tokens, 0 for left padding
        self._positions: torch.Tensor | None = None  # [rows, 1]: position id of each row's last token
        self._next_ids: torch.Tensor | None = None  # [rows]: picked tokens that are not in the cache yet
        self._start()

    def _step(self, newcomers: list[TokenStream]) -> None:
        with torch.inference_mode():
            if newcomers:
                self._admit(newcomers)
            if self._rows:
                self._decode_step()

    def _admit(self, newcomers: list[TokenStream]) -> None:
        """Prefill the newcomers (in one forward pass per group) and merge them into the running batch.

        Prompts that start with the shared prefix prefill only their suffix on top of its cached keys
        and values; the others are prefilled whole.
        """
        ids = [self.llm.tokenizer(s.prompt, add_special_tokens=False)["input_ids"] for s in newcomers]
        groups: dict[bool, list[int]] = {True: [], False: []}
        for i, row in enumerate(ids):
            groups[self.prefix is not None and self.prefix.matches(row)].append(i)
        for reuse, members in groups.items():
            if not members:
                continue
            rows = [ids[i] for i in members]
            if reuse:
                cache, mask, positions, logits = self.prefix.prefill(rows)
            else:
                input_ids, mask, positions = left_padded(rows, self.llm.tokenizer.pad_token_id)
                out = self.llm.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
                cache, logits = out.cache, out.logits
            check_cache(cache)
            self._merge([newcomers[i] for i in members], cache, mask, positions[:, -1:], logits[:, -1, :].argmax(-1))
        self._drop_finished()

    def _merge(self, streams: list[TokenStream], cache: DynamicCache, mask: torch.Tensor, last_positions: torch.Tensor,
               first_ids: torch.Tensor) -> None:
        if self._rows:
            self._cache, self._mask = concat_batches(self._cache, self._mask, cache, mask)
            self._positions = torch.cat([self._positions, last_positions])
            self._next_ids = torch.cat([self._next_ids, first_ids])
        else:
            self._cache, self._mask, self._positions, self._next_ids = cache, mask, last_positions, first_ids
        self._rows += streams
        for stream, tid in zip(streams, first_ids.tolist(), strict=True):
            self._accept(stream, tid)

    def _decode_step(self) -> None:
        """Feed every row its last picked token (one shared forward pass) and pick the next ones."""
        input_ids = self._next_ids.unsqueeze(1)
        self._mask = torch.cat([self._mask, torch.ones_like(input_ids)], dim=1)
        self._positions = self._positions + 1
        out = self.llm.model(
            input_ids=input_ids, attention_mask=self._mask, position_ids=self._positions, cache=self._cache, use_cache=True
        )
        self._next_ids = out.logits[:, -1, :].argmax(-1)
        for stream, tid in zip(self._rows, self._next_ids.tolist(), strict=True):
            self._accept(stream, tid)
        self._drop_finished()

    def _drop_finished(self) -> None:
        """Remove finished rows from the batch and the padding columns no remaining row needs."""
        keep = [i for i, stream in enumerate(self._rows) if not stream.finished]
        if not keep:
            self._reset()
            return
        if len(keep) < len(self._rows):
            index = torch.tensor(keep)
            self._cache.batch_select_indices(index)
            self._mask, self._positions, self._next_ids = self._mask[index], self._positions[index], self._next_ids[index]
            self._rows = [self._rows[i] for i in keep]
            self._mask = trim_left_padding(self._cache, self._mask)

    def _reset(self) -> None:
        self._rows, self._cache, self._mask, self._positions, self._next_ids = [], None, None, None, None


class SharedPrefix:
    """The KV cache of a prompt prefix that many requests share (the system turn), computed once.

    A prompt whose token ids start with the prefix's ids is prefilled as ``[prefix][padding][suffix]``:
    the suffixes of a group are left-padded to a common length and placed after the cached prefix
    columns (masked padding columns in the middle get no attention), with positions counted from the
    prefix's end. The tokenizer decides the match: a prompt whose ids differ at the boundary is
    prefilled whole, so reuse never changes a token.
    """

    def __init__(self, llm, text: str):
        self.llm = llm
        self.ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"]
        self._cache: DynamicCache | None = None  # one row; built by the decode thread on first use

    def matches(self, ids: list[int]) -> bool:
        return len(ids) > len(self.ids) and ids[: len(self.ids)] == self.ids

    def prefill(self, rows: list[list[int]]):
        """Prefill prompts that :meth:`matches` on top of the prefix: ``(cache, mask, positions, logits)``."""
        size = len(self.ids)
        if self._cache is None:
            ids = torch.tensor([self.ids])
            out = self.llm.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
            check_cache(out.cache)
            self._cache = out.cache
        cache = copy.deepcopy(self._cache)
        cache.batch_repeat_interleave(len(rows))
        suffix_ids, suffix_mask, _ = left_padded([r[size:] for r in rows], self.llm.tokenizer.pad_token_id)
        mask = torch.cat([torch.ones(len(rows), size, dtype=suffix_mask.dtype), suffix_mask], dim=1)
        positions = ((mask.cumsum(-1) - 1).clamp(min=0))[:, size:]
        out = self.llm.model(input_ids=suffix_ids, attention_mask=mask, position_ids=positions, cache=cache,
                             use_cache=True)
        return out.cache, mask, positions, out.logits


# KV-cache surgery. A DynamicCache holds, per layer, `keys` and `values` of shape
# [batch, kv_heads, columns, head_dim]; column j of every layer lines up with column j of the
# attention mask. Masked columns get zero attention weight, so their contents never matter.


def check_cache(cache: DynamicCache) -> None:
    """Refuse caches whose columns are not one-per-token (sliding-window or quantized layers)."""
    if not isinstance(cache, DynamicCache) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        raise NotImplementedError(f"continuous batching needs a DynamicCache of full-attention layers, got {cache!r}")


def left_pad(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    """Prepend zero columns along ``dim`` until it is ``columns`` long."""
    missing = columns - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def concat_batches(
    cache: DynamicCache, mask: torch.Tensor, new_cache: DynamicCache, new_mask: torch.Tensor
) -> tuple[DynamicCache, torch.Tensor]:
    """Append the rows of ``new_cache`` to ``cache`` (in place); returns it with the joint mask.

    The shorter of the two is left-padded (zero keys/values, mask 0) so both end in the same
    column: every row's newest token stays in the last column, where the next step appends.
    """
    columns = max(mask.shape[1], new_mask.shape[1])
    for layer, new_layer in zip(cache.layers, new_cache.layers, strict=True):
        layer.keys = torch.cat([left_pad(layer.keys, columns, -2), left_pad(new_layer.keys, columns, -2)])
        layer.values = torch.cat([left_pad(layer.values, columns, -2), left_pad(new_layer.values, columns, -2)])
    return cache, torch.cat([left_pad(mask, columns, 1), left_pad(new_mask, columns, 1)])


def trim_left_padding(cache: DynamicCache, mask: torch.Tensor) -> torch.Tensor:
    """Drop leading columns that are padding in every row (from the cache in place); returns the mask."""
    lead = int(mask.any(dim=0).int().argmax())  # first column some row attends to
    if lead == 0:
        return mask
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, lead:, :], layer.values[:, :, lead:, :]
    return mask[:, lead:]
