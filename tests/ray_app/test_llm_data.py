"""SFT and DPO data built from the real wiki corpus with the real MiniLM retriever."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ray_app.llm.prompting import NOT_IN_SOURCES, parse_citations


@pytest.fixture(scope="module")
def built(text_embedder):
    from ray_app.corpus.wiki import load_wiki_records
    from ray_app.llm.data import build_sft_examples

    return build_sft_examples(load_wiki_records(), n_articles=120, k=3, test_fraction=0.2, seed=1, embed=text_embedder.embed)


def test_examples_cover_every_kind_and_split_by_article(built):
    from ray_app.llm.data import KINDS

    train, test = built
    assert len(train) + len(test) == 120 and test
    assert {e["kind"] for e in train + test} >= set(KINDS) - {"where", "who_was"}
    assert not {e["article"] for e in train} & {e["article"] for e in test}


def test_reference_answers_cite_the_passage_they_copy(built):
    train, _ = built
    for ex in train:
        by_n = {p["n"]: p for p in ex["passages"]}
        assert [p["n"] for p in ex["passages"]] == [1, 2, 3]
        if ex["kind"] == "not_in_sources":
            assert ex["answer"] == NOT_IN_SOURCES
            assert ex["article"] not in {p["title"] for p in ex["passages"]}
            continue
        cited = parse_citations(ex["answer"])
        assert cited == ex["gold_passages"]
        assert by_n[cited[0]]["title"] == ex["article"]
        first_sentence = ex["answer"].split(f" [{cited[0]}]")[0]
        assert first_sentence in by_n[cited[0]]["text"]


def test_injection_examples_plant_an_instruction_the_answer_ignores(built):
    train, test = built
    injected = [e for e in train + test if e["kind"] == "injection"]
    assert injected
    for ex in injected:
        victim = next(p for p in ex["passages"] if p["n"] == ex["injected"]["passage"])
        assert ex["injected"]["instruction"] in victim["text"]
        assert victim["title"] != ex["article"]
        assert ex["injected"]["target"].lower() not in ex["answer"].lower()


def test_dpo_pairs_prefer_the_grounded_answer(built):
    from ray_app.llm.data import build_dpo_pairs

    train, _ = built
    pairs = build_dpo_pairs(train, seed=0, per_example=2)
    assert {p["rejected_kind"] for p in pairs} == {"hallucination", "uncited", "followed_injection"}
    for p in pairs:
        assert p["chosen"] == p["answer"] and p["rejected"] != p["chosen"]
        if p["rejected_kind"] == "followed_injection":
            assert p["rejected"] == p["injected"]["target"]
        if p["rejected_kind"] == "uncited":
            assert not parse_citations(p["rejected"])


def test_cli_writes_jsonl_and_reports_counts(tmp_path):
    from ray_app.cli import app

    runner = CliRunner()
    sft = runner.invoke(app, ["data", "sft", "--articles", "30", "--out", str(tmp_path / "sft"), "--json"])
    assert sft.exit_code == 0, sft.output
    info = json.loads(sft.stdout)
    assert info["n_train"] + info["n_test"] == 30 and info["shared_articles"] == 0
    rows = [json.loads(line) for line in (tmp_path / "sft" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == info["n_train"]
    dpo = runner.invoke(app, ["data", "dpo", "--sft-dir", str(tmp_path / "sft"), "--out", str(tmp_path / "dpo"), "--json"])
    assert dpo.exit_code == 0, dpo.output
    assert json.loads(dpo.stdout)["n_train"] == info["n_train"]


def test_cli_dpo_without_sft_data_is_a_one_line_error(tmp_path):
    from ray_app.cli import app

    result = CliRunner().invoke(app, ["data", "dpo", "--sft-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "run `prism data sft` first" in result.output


def test_heldout_questions_come_only_from_articles_no_sft_split_trains_on(text_embedder):
    from ray_app.corpus.wiki import load_wiki_records
    from ray_app.llm.data import build_heldout_examples, build_sft_examples, is_test_article

    records = load_wiki_records()
    heldout = build_heldout_examples(records, n=40, k=3, test_fraction=0.02, seed=0, embed=text_embedder.embed)
    assert len(heldout) == 40 and len({e["id"] for e in heldout}) == 40
    assert all(is_test_article(e["article"], 0.02) for e in heldout)
    assert {e["kind"] for e in heldout} >= {"known_for", "compare", "not_in_sources", "injection"}
    titles = {p["title"] for e in heldout for p in e["passages"]}
    assert all(is_test_article(t, 0.02) for t in titles)  # distractors are held out too
    train, _ = build_sft_examples(records, n_articles=300, k=3, test_fraction=0.02, seed=0, embed=text_embedder.embed)
    assert not {e["article"] for e in train} & {e["article"] for e in heldout}


def test_heldout_refuses_more_questions_than_held_out_articles():
    from ray_app.errors import InputError
    from ray_app.llm.data import build_heldout_examples

    records = [{"title": f"T{i}", "text": "A first sentence that is long enough. A second one."} for i in range(50)]
    with pytest.raises(InputError, match="held-out articles"):
        build_heldout_examples(records, n=40, test_fraction=0.1, embed=lambda texts: None)
