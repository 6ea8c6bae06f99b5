"""Continuous batching with the real SmolLM2: a row decodes the same greedy tokens whether it runs
alone or shares, joins and leaves a running batch."""

from __future__ import annotations

import asyncio
import itertools
import threading
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from ray_app.llm.batching import BatcherClosed, ContinuousBatcher
from ray_app.llm.generate import stop_token_ids, stream_tokens

PASSAGE = (
    "The axolotl is a salamander that lives only in the lakes and canals of Xochimilco near Mexico City. "
    "Unlike most amphibians it keeps its larval form as an adult, with feathery external gills, and it can "
    "regrow lost limbs, parts of its heart and even parts of its brain. Wild numbers have fallen sharply "
    "because of urban growth, pollution and introduced fish such as tilapia and carp. "
)
QUESTIONS = {
    "short": "What is 2 + 2?",
    "medium": "Name three animals that live in the ocean.",
    "long": f"Passage: {PASSAGE}\nQuestion: Where does the axolotl live?",
    "longest": f"Passage: {PASSAGE * 3}\nQuestion: Why are wild axolotls rare?",
}
# Token limits: rows finish at different steps; the long ones finish first, so padding columns get trimmed.
LIMITS = {"short": 12, "medium": 9, "long": 4, "longest": 3}


@pytest.fixture(scope="module")
def llm():
    from ray_app.models.llm import load_llm

    # Token-for-token parity is the decoder's property, checked in float32; bf16 sums in another order per
    # batch shape (docs/reports/llm-engines.md gives its agreement with float32).
    return load_llm(dtype="float32")


@pytest.fixture(scope="module")
def prompts(llm) -> dict[str, str]:
    from ray_app.models.llm import chat_prompt

    return {name: chat_prompt(llm.tokenizer, "Answer briefly.", q) for name, q in QUESTIONS.items()}


@pytest.fixture(scope="module")
def alone(llm, prompts) -> dict[str, tuple[list[int], list[str]]]:
    """Reference: ``stream_tokens`` on each prompt by itself (batch of 1): token ids and text pieces."""
    stops = stop_token_ids(llm.tokenizer)
    out = {}
    for name, prompt in prompts.items():
        model = RecordingModel(llm.model)
        steps = stream_tokens(SimpleNamespace(model=model, tokenizer=llm.tokenizer), [prompt], LIMITS[name])
        pieces = [deltas[0] for deltas in steps if deltas[0]]
        ids = list(itertools.takewhile(lambda t: t not in stops, (picks[0] for picks in model.picks)))
        out[name] = (ids, pieces)
    return out


class RecordingModel:
    """Wraps the LLM's model: records each forward pass (input shape, mask width, greedy picks),
    can pause the decode thread after chosen calls (1-based) and can fail one call."""

    def __init__(self, model, pause_after: tuple[int, ...] = (), fail_at: int | None = None):
        self.model, self.pause_after, self.fail_at = model, set(pause_after), fail_at
        self.calls = 0
        self.shapes: list[tuple[int, int]] = []
        self.widths: list[int] = []
        self.picks: list[list[int]] = []
        self.paused, self.resume = threading.Event(), threading.Event()

    def __call__(self, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected failure")
        out = self.model(**kwargs)
        self.shapes.append(tuple(kwargs["input_ids"].shape))
        self.widths.append(kwargs["attention_mask"].shape[1])
        self.picks.append(out.logits[:, -1, :].argmax(-1).tolist())
        if self.calls in self.pause_after:
            self.paused.set()
            assert self.resume.wait(60), "the test never resumed the decode thread"
            self.resume.clear()
        return out

    @contextmanager
    def held(self):
        """Run the block while the decode thread is paused inside a forward pass."""
        assert self.paused.wait(60), "the decode thread never reached the pause"
        self.paused.clear()
        try:
            yield
        finally:
            self.resume.set()


def make_batcher(llm, **model_kwargs) -> tuple[ContinuousBatcher, RecordingModel]:
    model = RecordingModel(llm.model, **model_kwargs)
    return ContinuousBatcher(SimpleNamespace(model=model, tokenizer=llm.tokenizer), max_batch_size=4), model


def check_alone(stream, pieces: list[str], alone, name: str) -> None:
    ids, text_pieces = alone[name]
    assert stream.tokens == ids, name
    assert pieces == text_pieces, name


def test_rows_prefilled_together_decode_as_alone(llm, prompts, alone):
    batcher, model = make_batcher(llm, pause_after=(1,))
    try:
        warmup = batcher.submit(prompts["short"], 1)  # holds the thread so the next three queue up together
        names = ["short", "medium", "long"]
        with model.held():
            streams = {name: batcher.submit(prompts[name], LIMITS[name]) for name in names}
        list(warmup)
        for name, stream in streams.items():
            check_alone(stream, list(stream), alone, name)
    finally:
        batcher.close()
    assert model.shapes[1][0] == 3  # one prefill pass for all three prompts
    assert all(rows == 3 for rows, _ in model.shapes[2:4])  # decoded together
    untrimmed = model.widths[1] + len(model.widths) - 2  # the last step's mask width had no column been dropped
    assert model.widths[-1] < untrimmed  # "long" left first and took its leading padding columns with it


def test_late_joiner_and_its_neighbours_decode_as_alone(llm, prompts, alone):
    batcher, model = make_batcher(llm, pause_after=(1, 4))
    try:
        warmup = batcher.submit(prompts["short"], 1)
        names = ["short", "medium", "long"]
        with model.held():
            streams = {name: batcher.submit(prompts[name], LIMITS[name]) for name in names}
        with model.held():  # inside the 3rd step of those three
            assert streams["short"].tokens and not streams["short"].finished
            streams["longest"] = batcher.submit(prompts["longest"], LIMITS["longest"])
        list(warmup)
        for name, stream in streams.items():
            check_alone(stream, list(stream), alone, name)
    finally:
        batcher.close()
    assert model.shapes[4][0] == 1 and model.shapes[5] == (4, 1)  # the newcomer's prefill, then one batch of 4
    assert model.widths[4] > model.widths[3]  # the newcomer is longer: the running rows were left-padded


def test_error_in_the_decode_loop_reaches_the_consumers(llm, prompts, alone):
    batcher, model = make_batcher(llm, fail_at=2)
    try:
        first = batcher.submit(prompts["short"], LIMITS["short"])
        with pytest.raises(RuntimeError, match="injected failure"):
            list(first)
        second = batcher.submit(prompts["long"], LIMITS["long"])  # the loop keeps serving
        check_alone(second, list(second), alone, "long")
    finally:
        batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit(prompts["short"], 2)


def test_async_stream_cancel_and_close(llm, prompts, alone):
    batcher, _ = make_batcher(llm)

    async def main():
        abandoned = batcher.submit(prompts["medium"], LIMITS["medium"])
        async for _ in abandoned:
            abandoned.cancel()  # the consumer leaves after one piece; its slot is given back
        stream = batcher.submit(prompts["long"], LIMITS["long"])
        pieces = [piece async for piece in stream]
        return abandoned, stream, pieces

    try:
        abandoned, stream, pieces = asyncio.run(main())
        check_alone(stream, pieces, alone, "long")
        assert len(abandoned.tokens) < LIMITS["medium"]
        with pytest.raises(TypeError):
            iter(stream)
    finally:
        batcher.close()



def test_shared_prefix_is_prefilled_once_and_changes_no_token(llm, prompts, alone):
    from ray_app.models.llm import chat_prompt

    def ids(text: str) -> list[int]:
        return llm.tokenizer(text, add_special_tokens=False)["input_ids"]

    prefix = chat_prompt(llm.tokenizer, "Answer briefly.", "\x00").split("\x00")[0]
    other = chat_prompt(llm.tokenizer, "Reply in one word.", QUESTIONS["short"])  # another system turn: no reuse
    reference = ContinuousBatcher(llm, max_batch_size=1)
    try:
        other_alone = reference.generate(other, 4)
    finally:
        reference.close()
    model = RecordingModel(llm.model, pause_after=(1,))
    batcher = ContinuousBatcher(SimpleNamespace(model=model, tokenizer=llm.tokenizer), max_batch_size=4,
                                shared_prefix=prefix)
    try:
        warmup = batcher.submit(prompts["short"], 1)  # its admission computes the prefix (call 1) and pauses
        with model.held():
            streams = {name: batcher.submit(prompts[name], LIMITS[name]) for name in ("short", "long")}
            stranger = batcher.submit(other, 4)
        list(warmup)
        for name, stream in streams.items():
            check_alone(stream, list(stream), alone, name)
        assert "".join(stranger) == other_alone
    finally:
        batcher.close()
    assert model.shapes[0] == (1, len(ids(prefix)))  # the prefix itself, once
    assert (2, len(ids(prompts["long"])) - len(ids(prefix))) in model.shapes  # matching rows: suffixes only
    assert (1, len(ids(other))) in model.shapes  # the stranger: its whole prompt
    assert (1, len(ids(prefix))) not in model.shapes[1:]
