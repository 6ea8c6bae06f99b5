"""Grounding: sentence support (content words, names and numbers, subject), citations checked, attribution reported."""

from ray_app.audit.grounding import (
    BASELINE_RULES,
    DEFAULT_RULES,
    check_grounding,
    content_words,
    names_and_numbers,
    split_sentences,
    subject_words,
    token_overlap,
)
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


# ---------------------------------------------------------------- the checks behind a trustworthy grounded: true
# (issue 16; measured against hand labels by `prism eval grounding`, docs/reports/grounding-check.md)

DIRAC = Passage(1, "Paul Dirac", "Paul Adrien Maurice Dirac was an English theoretical physicist who is considered to be one "
                "of the founders of quantum mechanics.", "d3", "d3:0")
VILLA = Passage(1, "Pancho Villa", "Francisco \"Pancho\" Villa was a Mexican revolutionary, guerrilla leader, and politician. "
                "He was a key figure in the Mexican Revolution.", "d4", "d4:0")


def test_guinea_fowl_answer_is_not_grounded_in_a_frog_passage(text_embedder):
    """Issue 16's example: an answer naming another animal, cited or not, is not grounded in the frog passage."""
    for answer in ("This animal is a Guinea fowl. It is a species of the African buffalo.",
                   "This animal is a Guinea fowl [1]. It is a species of the African buffalo [1]."):
        report = check_grounding(answer, [FROG], text_embedder)
        assert not report.grounded
        assert not any(s.supported for s in report.sentences)
        assert "guinea" in report.sentences[0].new_terms or report.sentences[0].overlap < DEFAULT_RULES.min_overlap


def test_faithful_paraphrase_is_grounded(text_embedder):
    report = check_grounding("Frogs live in marshes, ponds and rainforests on every continent but Antarctica [1]. "
                             "The Moon orbits Earth at 384,400 kilometres [2].", [FROG, MOON], text_embedder)
    assert report.grounded
    assert [s.new_terms for s in report.sentences] == [[], []]


def test_a_name_the_passage_lacks_makes_a_sentence_unsupported():
    """"French" against a passage that says English: the words overlap, the name does not."""
    assert check_grounding("Paul Adrien Maurice Dirac was an English theoretical physicist [1].", [DIRAC]).grounded
    report = check_grounding("Paul Adrien Maurice Dirac was a French theoretical physicist [1].", [DIRAC])
    assert not report.grounded and report.sentences[0].new_terms == ["french"]
    # The first word is capitalised by grammar, not as a name: the subject check covers it.
    assert names_and_numbers("Dirac was a French physicist in 1,930 [1].") == ["french", "1930"]


def test_a_number_the_passage_lacks_makes_a_sentence_unsupported():
    assert check_grounding("The Moon orbits at 384,400 kilometres [2].", [FROG, MOON]).grounded
    report = check_grounding("The Moon orbits at 500,000 kilometres [2].", [FROG, MOON])
    assert not report.grounded and report.sentences[0].new_terms == ["500000"]


def test_a_fact_moved_onto_another_subject_is_not_support():
    """Pancho Villa's description given to Fidel Castro, cited to Villa's passage: every other word matches."""
    report = check_grounding("Fidel Castro was a Mexican revolutionary, guerrilla leader, and politician [1].", [VILLA])
    assert not report.grounded
    assert report.sentences[0].subject_share == 0.0
    assert subject_words("Fidel Castro was a Mexican revolutionary [1].") == {"fidel", "castro"}


def test_claims_beside_a_refusal_are_still_checked():
    assert not check_grounding(f"Frogs are birds that fly south in winter [1]. {NOT_IN_SOURCES}", [FROG, MOON]).grounded
    assert check_grounding(f"Frogs are tailless amphibians [1]. {NOT_IN_SOURCES}", [FROG, MOON]).grounded
    report = check_grounding(NOT_IN_SOURCES, [FROG, MOON])
    assert report.grounded and report.not_in_sources and not report.sentences


def test_filler_is_no_claim_and_a_cut_off_word_is_ignored():
    assert not check_grounding("The answer is: Frog.", [FROG, MOON]).grounded  # nothing claimed, nothing refused
    assert check_grounding("Frogs live in ponds, marshes and rainfo", [FROG, MOON]).grounded  # the token limit cut it


def test_baseline_rules_are_the_earlier_check(text_embedder):
    """The earlier check (overlap >= 0.5 or cosine >= 0.6) passed the swapped name; the default rules do not."""
    swapped = "Paul Adrien Maurice Dirac was a French theoretical physicist [1]."
    assert check_grounding(swapped, [DIRAC], text_embedder, BASELINE_RULES).grounded
    assert not check_grounding(swapped, [DIRAC], text_embedder).grounded
    refusal_with_claim = f"Frogs are birds that fly south in winter [1]. {NOT_IN_SOURCES}"
    assert check_grounding(refusal_with_claim, [FROG, MOON], text_embedder, BASELINE_RULES).grounded


def test_issue_16_guinea_fowl_answer_with_the_passages_a_small_store_retrieves(text_embedder):
    """The answer issue 16 saw marked grounded, against the real wiki passages on guinea fowl and the African
    buffalo (what a 300-document store retrieves for the frog question): the earlier check passed it, this one
    does not ("this animal" is the picture, which no passage names)."""
    from ray_app.corpus.wiki import load_wiki_records

    text = {r["title"]: r["text"][:600] for r in load_wiki_records() if r["title"] in ("Guinea fowl", "African buffalo")}
    passages = [Passage(1, "Guinea fowl", text["Guinea fowl"]), Passage(2, "African buffalo", text["African buffalo"])]
    answer = "This animal is a Guinea fowl. It is a species of the African buffalo."
    assert check_grounding(answer, passages, text_embedder, BASELINE_RULES).grounded
    report = check_grounding(answer, passages, text_embedder)
    assert not report.grounded and not report.sentences[0].supported


def test_a_sentence_about_the_identified_picture_is_checked_with_its_name():
    """An image ask whose picture vision identified as a frog: "This animal lives in ponds" is a claim about frogs
    (the name from vision, the rest from a passage); the identification alone is no passage claim; a wrong
    identification stays unsupported; without a picture the deictic subject finds no passage."""
    answer = "This animal is a frog. It lives in ponds and marshes."
    with_picture = check_grounding(answer, [FROG, MOON], picture="frog")
    assert with_picture.grounded and with_picture.attributed == [1]
    assert [s.text for s in with_picture.sentences] == ["frog lives in ponds and marshes."]
    assert not check_grounding(answer, [FROG, MOON]).grounded
    wrong = check_grounding("This animal is a toad. It lives in ponds.", [FROG, MOON], picture="frog")
    assert not wrong.grounded and not wrong.sentences[0].supported
    assert check_grounding("This is a frog [1].", [FROG, MOON], picture="frog").cited == [1]
    # A subject that is not the picture is left alone.
    assert check_grounding("The Moon lives in ponds.", [FROG, MOON], picture="frog").sentences[0].text.startswith("The Moon")
