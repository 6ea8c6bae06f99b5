"""LLM engines behind one interface (ray_app/llm/engines.py), on the real SmolLM2.

Parity: CTranslate2 in float32 writes the same greedy tokens as torch in float32; its int8
conversion's next-token agreement with torch float32 (teacher-forced on fixed prompts) is measured;
llama.cpp on the bundled GGUF agrees with torch float32 (when llama-cpp-python is installed).
"""

import importlib.util
import time

import numpy as np
import pytest
import torch

from ray_app.errors import InputError
from ray_app.llm.engines import build_engine, known_engines, parse_engine
from ray_app.llm.generate import render_prompt
from ray_app.llm.prompting import Passage

QUESTIONS = ["Where do frogs live?", "What is a rocket?", "Why do cats purr?"]
PASSAGES = [Passage(1, "Frog", "Frogs live in ponds, rivers and rain forests on every continent but Antarctica."),
            Passage(2, "Rocket", "A rocket carries its own oxidiser, so its engine works in the vacuum of space.")]


@pytest.fixture(scope="module")
def torch_fp32():
    engine = build_engine("torch-fp32", max_batch_size=4, threads=2, adapter="")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompts(torch_fp32):
    return [render_prompt(torch_fp32.tokenizer, q, PASSAGES, None) for q in QUESTIONS]


def greedy(engine, prompts: list[str], n: int) -> list[list[int]]:
    streams = [engine.submit(p, n) for p in prompts]
    for s in streams:
        "".join(s)
    return [s.tokens for s in streams]


def torch_argmax(torch_fp32, ids: list[int]) -> np.ndarray:
    """torch float32's greedy pick after every prefix of ``ids``."""
    with torch.inference_mode():
        logits = torch_fp32.llm.model(input_ids=torch.tensor([ids])).logits[0]
    return logits.argmax(-1).numpy()


def test_engine_names_parse_and_unknown_ones_are_input_errors():
    assert parse_engine("ct2").name == "ct2-int8" and parse_engine("torch").name == "torch"
    assert "llamacpp-q4_1" in known_engines()
    for bad in ("vllm", "ct2-int4", "torch-fp16"):
        with pytest.raises(InputError, match="LLM engine"):
            parse_engine(bad)


def test_ct2_fp32_writes_torch_fp32s_greedy_tokens(torch_fp32, prompts):
    ct2 = build_engine("ct2-fp32", max_batch_size=4, threads=2, adapter="")
    try:
        assert greedy(ct2, prompts, 12) == greedy(torch_fp32, prompts, 12)
        assert ct2.versions()["model"].endswith("/ct2-fp32") and ct2.parameters == torch_fp32.parameters
    finally:
        ct2.close()


def test_ct2_int8_mostly_agrees_with_torch_fp32_on_the_next_token(torch_fp32, prompts):
    """Issue 15 asks >= 95 % for quantized engines; CTranslate2's int8 (weights and tied lm_head) measures about
    0.91 on these prompts (its int16 about 0.67), so it is not the default: this guards against it getting worse."""
    ct2 = build_engine("ct2-int8", max_batch_size=4, threads=2, adapter="")
    try:
        agree = total = 0
        for prompt, answer in zip(prompts, greedy(torch_fp32, prompts, 24), strict=True):
            ids = torch_fp32.tokenizer(prompt, add_special_tokens=False)["input_ids"] + answer
            expected = torch_argmax(torch_fp32, ids)
            tokens = ct2.tokenizer.convert_ids_to_tokens(ids)
            logits = np.array(ct2.generator.forward_batch([tokens]))[0]
            got = logits.argmax(-1)
            span = slice(len(ids) - len(answer) - 1, len(ids))  # the answer's positions, teacher-forced
            agree += int((got[span] == expected[span]).sum())
            total += len(expected[span])
        assert agree / total >= 0.88, agree / total
    finally:
        ct2.close()


def test_ct2_cancel_frees_the_row_and_health_follows_the_loop(prompts):
    ct2 = build_engine("ct2-int8", max_batch_size=2, threads=2, adapter="")
    stream = ct2.submit(prompts[0], 200)
    next(iter(stream))  # decoding
    stream.cancel()
    ct2.generate(prompts[1], 2)  # runs only after the cancelled row's batch ended
    deadline = time.monotonic() + 30  # the row is dropped once the batch call returns, just after the last token
    while ct2.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ct2.stats()["running"] == 0 and ct2.alive()
    assert len(stream.tokens) < 200
    ct2.close()
    assert not ct2.alive()


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_llamacpp_agrees_with_torch_fp32_on_the_next_token(torch_fp32, prompts):
    """The bundled Q4_1 GGUF is what torch runs de-quantised, so llama.cpp (which also quantises activations to
    8 bits) picks torch float32's next token at >= 95 % of answer positions (measured 0.97)."""
    from llama_cpp import Llama

    from ray_app.models.llm import find_smollm2_gguf

    llama = build_engine("llamacpp", threads=2, adapter="")
    assert llama.generate(prompts[0], 8) and llama.stats()["running"] == 0
    llama.close()
    scorer = Llama(model_path=str(find_smollm2_gguf()), n_ctx=2048, n_threads=2, logits_all=True, verbose=False)
    agree = total = 0
    for prompt, answer in zip(prompts, greedy(torch_fp32, prompts, 24), strict=True):
        ids = torch_fp32.tokenizer(prompt, add_special_tokens=False)["input_ids"] + answer
        scorer.reset()
        scorer.eval(ids)
        got, expected = np.array(scorer.scores[:len(ids)]).argmax(-1), torch_argmax(torch_fp32, ids)
        span = slice(len(ids) - len(answer) - 1, len(ids))
        agree += int((got[span] == expected[span]).sum())
        total += len(expected[span])
    assert agree / total >= 0.95, agree / total


def test_llamacpp_refuses_an_adapter():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    with pytest.raises(InputError, match="base model"):
        build_engine("llamacpp", adapter="/some/adapter")
