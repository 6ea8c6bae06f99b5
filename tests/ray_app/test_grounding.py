"""Grounding: sentence support by token overlap and MiniLM cosine, citations checked, attribution reported."""

from ray_app.audit.grounding import check_grounding, content_words, split_sentences, token_overlap
from ray_app.llm.prompting import NOT_IN_SOURCES, Passage

FROG = Passage(1, "Frog", "Frogs are tailless amphibians. Frogs live in ponds, marshes and rainforests on every continent "
               "except Antarctica.", "d1", "d1:0")
MOON = Passage(2, "Moon", "The Moon is Earth's only natural satellite and orbits at 384,400 kilometres.", "d2", "d2:0")


def test_split_and_content_words():
    assert split_sentences("Frogs live in ponds [1]. The Moon orbits Earth [2].") == [
        "Frogs live in ponds [1].", "The Moon orbits Earth [2]."]
    assert content_words("The frogs live in the ponds [1].") == {"frog", "live", "pond"}
    assert token_overlap("Frogs live in ponds.", FROG.text) == 1.0


def test_cited_supported_answer_is_grounded(text_embedder):
    report = check_grounding("Frogs live in ponds and marshes [1]. The Moon orbits Earth [2].", [FROG, MOON], text_embedder)
    assert report.grounded
    assert report.cited == [1, 2] and not report.invalid_citations and not report.attributed
    assert all(s.supported for s in report.sentences)


def test_wrong_citation_is_not_grounded():
    report = check_grounding("Frogs live in ponds and marshes [2].", [FROG, MOON])
    assert not report.grounded
    assert report.sentences[0].cited == [2] and not report.sentences[0].supported


def test_invalid_citation_number():
    report = check_grounding("Frogs live in ponds [7].", [FROG, MOON])
    assert report.invalid_citations == [7] and not report.grounded


def test_uncited_sentence_is_attributed_not_silently_accepted():
    report = check_grounding("Frogs live in marshes and ponds.", [FROG, MOON])
    assert report.grounded and report.attributed == [1]
    assert report.sentences[0].attributed and report.sentences[0].best_n == 1


def test_unsupported_claim_fails(text_embedder):
    report = check_grounding("Penguins build nests from volcanic glass in deserts [1].", [FROG, MOON], text_embedder)
    assert not report.grounded
    assert not report.sentences[0].supported


def test_not_in_sources_is_grounded():
    report = check_grounding(NOT_IN_SOURCES, [])
    assert report.grounded and report.not_in_sources
