"""Grounding: does each answer sentence find support in the passage(s) it cites?

Each answer sentence with at least :data:`MIN_CONTENT_WORDS` content words (filler such as "The answer
is:" does not count) is a claim, checked against the passage it cites (title and text):

* **content-word support** — the share of the sentence's content words (lower-cased, stop words and
  filler removed, plural ``s`` stripped) that occur in the passage; support needs
  ``rules.min_overlap``;
* **names and numbers** — every capitalised word after the sentence's first and every number in
  the sentence must occur in the passage ("a *French* physicist" against a passage that says
  English, "*1989*" against none); at most ``rules.max_new_terms`` may be missing;
* **subject** — the words before the sentence's first verb (``is``, ``was``, ...) or comma name what
  it is about; at least ``rules.min_subject_share`` of them must occur in the passage, so a fact
  copied from one passage onto another entity ("*Fidel Castro* was a Mexican revolutionary [1]"
  against Pancho Villa's passage) is not support;
* **embedding cosine** (with an embedder) — MiniLM cosine between sentence and passage; with
  ``rules.min_cosine`` set, a cosine at or above it also counts as support (the baseline rule).

For an ask with a picture that vision identified (``picture``, e.g. "frog"), a sentence whose subject
is the picture itself ("This animal lives in ponds", "It is an amphibian") is checked with that name in
place of the subject: the name came from vision, the rest of the claim must come from a passage. An
identification alone ("This animal is a frog.") is then no passage claim.

A sentence is supported when the checks pass against one passage it cites. A sentence the model
left uncited is *attributed* to the passage that supports it best (post-hoc attribution, reported as
such, never silently); when no passage supports it, it is unsupported. The answer is ``grounded``
when it cites no passage that does not exist, makes at least one claim, and every claim is supported.
An answer that says :data:`ray_app.llm.prompting.NOT_IN_SOURCES` is grounded when it makes no other
claim (and, with ``rules.check_claims_beside_refusal``, when its other claims are supported).

:data:`DEFAULT_RULES` were tuned on half of the hand-labelled sample in ``datasets/grounding`` and
measured on the other half (``prism eval grounding``, ``docs/reports/grounding-check.md``);
:data:`BASELINE_RULES` is the check before it (token overlap >= 0.5 or cosine >= 0.6). Used by the
audit step of serving and by the fine-tuning evaluation.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from ray_app.llm.prompting import Passage, parse_citations, says_not_in_sources

MIN_CONTENT_WORDS = 2
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_CITATION = re.compile(r"\[(\d{1,3})\]")
_WORD = re.compile(r"[a-z0-9]+")
_TOKEN = re.compile(r"\w+")
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d{3})")
_SUBJECT_END = re.compile(r"\s(?:is|was|are|were|has|had|have|lies|remains|consists|comprises)\s|[,:;(]")
SUBJECT_MAX_WORDS = 8
# A sentence about the uploaded picture: "This animal ...", "The picture shows ...", "It is ...".
PICTURE_SUBJECT = re.compile(
    r"^\s*(?:(?:this|that|the)\s+(?:animal|creature|picture|image|photo|photograph|drawing|stamp|object|thing|bird|"
    r"plant|fish|insect)|it|this|that)\b(?=\s+(?:is|was|are|has|have|lives|live|can|eats|belongs|looks|shows|appears)\b)",
    re.IGNORECASE)
STOP_WORDS = frozenset(
    """a an the and or but if then than so of to in on at by for with from into onto about as is are was were be
    been being it its this that these those there their they them he she his her we our you your i me my not no
    do does did has have had can could will would should may might must also which who whom whose what when where
    why how all any each some such very more most other only own same too just over under again out up down off
    one two s t""".split()
)
# Words that frame an answer ("The answer is:", "The passage mentions ...") without claiming anything.
FILLER_WORDS = frozenset("answer answers passage passages question correct mention mentions mentioned both".split())


@dataclass(frozen=True)
class GroundingRules:
    """The thresholds of the check (see the module docstring).

    Attributes:
        min_overlap: share of a sentence's content words that the passage must contain.
        min_cosine: a MiniLM cosine at or above this is support on its own (None: never on its own).
        max_new_terms: names and numbers of the sentence the passage may lack (None: not checked).
        min_subject_share: share of the subject's content words the passage must contain (None: not checked).
        drop_filler: leave framing words ("answer", "passage") out of the content words.
        check_claims_beside_refusal: an answer that says NOT_IN_SOURCES and makes claims must support them.
        ignore_cut_word: leave out the last word of an answer cut off mid-sentence (the token limit).
    """

    min_overlap: float = 0.7
    min_cosine: float | None = None
    max_new_terms: int | None = 0
    min_subject_share: float | None = 0.5
    drop_filler: bool = True
    check_claims_beside_refusal: bool = True
    ignore_cut_word: bool = True


BASELINE_RULES = GroundingRules(min_overlap=0.5, min_cosine=0.6, max_new_terms=None, min_subject_share=None,
                                drop_filler=False, check_claims_beside_refusal=False, ignore_cut_word=False)
DEFAULT_RULES = GroundingRules()


@dataclass
class SentenceSupport:
    """How one answer sentence is supported (by its best passage ``best_n``)."""

    text: str
    cited: list[int]
    best_n: int | None
    overlap: float
    cosine: float | None
    supported: bool
    attributed: bool = False
    new_terms: list[str] = field(default_factory=list)
    subject_share: float | None = None


@dataclass
class GroundingReport:
    """Per-sentence support plus the answer-level verdict."""

    grounded: bool
    sentences: list[SentenceSupport] = field(default_factory=list)
    cited: list[int] = field(default_factory=list)
    invalid_citations: list[int] = field(default_factory=list)
    attributed: list[int] = field(default_factory=list)
    not_in_sources: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def split_sentences(answer: str) -> list[str]:
    """Split an answer into sentences (keeps citation markers)."""
    parts = _SENTENCE_END.split(" ".join(answer.split()))
    return [p.strip() for p in parts if p.strip()]


def drop_cut_word(sentences: list[str]) -> list[str]:
    """Without the last word of an answer that stops mid-sentence (the token limit cut it, maybe mid-word)."""
    if not sentences or sentences[-1][-1] in ".!?\"')]":
        return sentences
    head, _, _ = sentences[-1].rpartition(" ")
    return sentences[:-1] + ([head] if head else [])


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def content_words(text: str, drop_filler: bool = False) -> set[str]:
    """Lower-cased words minus stop words and citation numbers, with a plural ``s`` stripped
    (and minus :data:`FILLER_WORDS` with ``drop_filler``)."""
    text = _CITATION.sub(" ", text.lower())
    words = set()
    for word in _WORD.findall(text):
        if word in STOP_WORDS or len(word) < 2 or (drop_filler and word in FILLER_WORDS):
            continue
        words.add(_stem(word))
    return words


def token_overlap(sentence: str, passage_text: str, drop_filler: bool = False) -> float:
    """Share of the sentence's content words found in the passage (0 when it has none)."""
    words = content_words(sentence, drop_filler)
    if not words:
        return 0.0
    return len(words & content_words(passage_text)) / len(words)


def _tokens(text: str) -> list[str]:
    """Word tokens in their original case; thousands separators dropped (``1,400`` -> ``1400``)."""
    return _TOKEN.findall(_DIGIT_COMMA.sub("", _CITATION.sub(" ", text)))


def passage_terms(text: str) -> set[str]:
    """Every word of a passage, lower-cased and stemmed (what names and numbers are looked up in)."""
    return {_stem(t.lower()) for t in _tokens(text)}


def names_and_numbers(sentence: str) -> list[str]:
    """Capitalised words after the first word, and every token with a digit, lower-cased and stemmed."""
    out = []
    for i, token in enumerate(_tokens(sentence)):
        low = token.lower()
        if low in STOP_WORDS or low in FILLER_WORDS:
            continue
        if any(c.isdigit() for c in token) or (i > 0 and token[0].isupper()):
            out.append(_stem(low))
    return list(dict.fromkeys(out))


def subject_words(sentence: str) -> set[str]:
    """Content words of the sentence's subject: the words before its first verb or comma (at most
    :data:`SUBJECT_MAX_WORDS`); empty when no such boundary comes that early."""
    text = " " + _CITATION.sub(" ", sentence).strip() + " "
    match = _SUBJECT_END.search(text)
    if match is None:
        return set()
    head = text[: match.start()]
    if len(head.split()) > SUBJECT_MAX_WORDS:
        return set()
    return content_words(head, drop_filler=True)


def check_grounding(answer: str, passages: list[Passage], embedder=None, rules: GroundingRules = DEFAULT_RULES,
                    picture: str | None = None) -> GroundingReport:
    """Check every answer sentence against the passages it cites (see the module docstring).

    Args:
        answer: the model's answer with ``[n]`` citations.
        passages: the numbered passages the model saw.
        embedder: optional text embedder with ``embed(list[str]) -> (n, d)`` unit vectors.
        rules: the thresholds (:data:`DEFAULT_RULES`; :data:`BASELINE_RULES` is the earlier check).
        picture: what vision identified the uploaded picture as (None: no picture, or not identified).

    Returns:
        A :class:`GroundingReport`.
    """
    by_n = {p.n: p for p in passages}
    cited = parse_citations(answer)
    invalid = [n for n in cited if n not in by_n]
    refused = says_not_in_sources(answer)
    if refused and not rules.check_claims_beside_refusal:
        return GroundingReport(grounded=not invalid, cited=cited, invalid_citations=invalid, not_in_sources=True)
    split = split_sentences(answer)
    if picture:
        split = [resolved for s in split if (resolved := about_picture(s, picture))]
    sentences = [s for s in (drop_cut_word(split) if rules.ignore_cut_word else split)
                 if not says_not_in_sources(s) and len(content_words(s, rules.drop_filler)) >= MIN_CONTENT_WORDS]
    # The cosine is computed only where a rule uses it: the default rules need no embedding pass.
    cosines = _cosine_matrix(sentences, passages, embedder if rules.min_cosine is not None else None)
    results = [_support_sentence(s, passages, by_n, cosines[i] if cosines is not None else None, rules)
               for i, s in enumerate(sentences)]
    attributed = sorted({r.best_n for r in results if r.attributed and r.best_n is not None})
    grounded = (bool(results) or refused) and not invalid and all(r.supported for r in results)
    return GroundingReport(grounded, results, cited, invalid, attributed, not_in_sources=refused)


def about_picture(sentence: str, picture: str) -> str:
    """``sentence`` with a subject that points at the picture ("This animal", "It") replaced by ``picture``;
    an identification of the picture as ``picture`` itself ("This animal is a frog.") becomes empty."""
    resolved = PICTURE_SUBJECT.sub(picture, sentence, count=1)
    if resolved != sentence and content_words(_CITATION.sub(" ", resolved)) <= content_words(picture):
        return ""
    return resolved


def _cosine_matrix(sentences: list[str], passages: list[Passage], embedder) -> np.ndarray | None:
    """(sentences x passages) cosine matrix, or None without an embedder or input."""
    if embedder is None or not sentences or not passages:
        return None
    texts = [_CITATION.sub("", s) for s in sentences] + [f"{p.title}: {p.text}" for p in passages]
    vectors = embedder.embed(texts)
    return vectors[: len(sentences)] @ vectors[len(sentences) :].T


def _support_one(sentence: str, passage: Passage, cosine: float | None, rules: GroundingRules) -> tuple[bool, float, list[str], float | None]:
    """``(supported, overlap, new_terms, subject_share)`` of one sentence against one passage."""
    text = f"{passage.title} {passage.text}"
    overlap = token_overlap(sentence, text, rules.drop_filler)
    terms = passage_terms(text)
    new_terms = [t for t in names_and_numbers(sentence) if t not in terms] if rules.max_new_terms is not None else []
    subject = subject_words(sentence) if rules.min_subject_share is not None else set()
    share = len({_stem(w) for w in subject} & terms) / len(subject) if subject else None
    ok = (
        overlap >= rules.min_overlap
        and (rules.max_new_terms is None or len(new_terms) <= rules.max_new_terms)
        and (share is None or share >= rules.min_subject_share)
    )
    if rules.min_cosine is not None and cosine is not None and cosine >= rules.min_cosine:
        ok = True
    return ok, overlap, new_terms, share


def _support_sentence(sentence: str, passages: list[Passage], by_n: dict[int, Passage], cosines: np.ndarray | None,
                      rules: GroundingRules) -> SentenceSupport:
    """Score one sentence against its cited passages, or attribute it to the best passage."""
    cited = [n for n in parse_citations(sentence) if n in by_n]
    candidates = cited or [p.n for p in passages]
    index = {p.n: i for i, p in enumerate(passages)}
    best: tuple | None = None
    for n in candidates:
        cosine = float(cosines[index[n]]) if cosines is not None else None
        ok, overlap, new_terms, share = _support_one(sentence, by_n[n], cosine, rules)
        key = (ok, max(overlap, cosine or 0.0) - 0.1 * len(new_terms))
        if best is None or key > best[0]:
            best = (key, n, ok, overlap, cosine, new_terms, share)
    if best is None:
        return SentenceSupport(sentence, cited, None, 0.0, None, False)
    _, best_n, ok, overlap, cosine, new_terms, share = best
    return SentenceSupport(
        text=sentence,
        cited=cited,
        best_n=best_n,
        overlap=round(overlap, 3),
        cosine=None if cosine is None else round(cosine, 3),
        supported=ok,
        attributed=not cited and ok,
        new_terms=new_terms,
        subject_share=None if share is None else round(share, 3),
    )
