"""Grounding: does each answer sentence find support in the passage(s) it cites?

The test, per answer sentence with at least :data:`MIN_CONTENT_WORDS` content words:

* **token overlap** — the share of the sentence's content words (lower-cased, stop words
  removed, plural ``s`` stripped) that occur in the passage; support when >= ``min_overlap``
  (default 0.5);
* **embedding cosine** — MiniLM cosine between the sentence and the passage; support when
  >= ``min_cosine`` (default 0.6). Used when an embedder is given.

A sentence is supported when either test passes against one passage it cites. A sentence the
model left uncited is *attributed* to the passage that supports it best (post-hoc attribution,
reported as such, never silently); when no passage supports it, it is unsupported. The answer
is ``grounded`` when it cites no passage that does not exist and every checked sentence is
supported. An answer that says :data:`ray_app.llm.prompting.NOT_IN_SOURCES` makes no claims and
is grounded. Used by the audit step of serving and by the fine-tuning evaluation.
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
STOP_WORDS = frozenset(
    """a an the and or but if then than so of to in on at by for with from into onto about as is are was were be
    been being it its this that these those there their they them he she his her we our you your i me my not no
    do does did has have had can could will would should may might must also which who whom whose what when where
    why how all any each some such very more most other only own same too just over under again out up down off
    one two s t""".split()
)


@dataclass
class SentenceSupport:
    """How one answer sentence is supported."""

    text: str
    cited: list[int]
    best_n: int | None
    overlap: float
    cosine: float | None
    supported: bool
    attributed: bool = False


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


def content_words(text: str) -> set[str]:
    """Lower-cased words minus stop words and citation numbers, with a plural ``s`` stripped."""
    text = _CITATION.sub(" ", text.lower())
    words = set()
    for word in _WORD.findall(text):
        if word in STOP_WORDS or len(word) < 2:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        words.add(word)
    return words


def token_overlap(sentence: str, passage_text: str) -> float:
    """Share of the sentence's content words found in the passage (0 when it has none)."""
    words = content_words(sentence)
    if not words:
        return 0.0
    return len(words & content_words(passage_text)) / len(words)


def check_grounding(
    answer: str,
    passages: list[Passage],
    embedder=None,
    min_overlap: float = 0.5,
    min_cosine: float = 0.6,
) -> GroundingReport:
    """Check every answer sentence against the passages it cites (see the module docstring).

    Args:
        answer: the model's answer with ``[n]`` citations.
        passages: the numbered passages the model saw.
        embedder: optional text embedder with ``embed(list[str]) -> (n, d)`` unit vectors.
        min_overlap: token-overlap threshold for support.
        min_cosine: cosine threshold for support.

    Returns:
        A :class:`GroundingReport`.
    """
    by_n = {p.n: p for p in passages}
    cited = parse_citations(answer)
    invalid = [n for n in cited if n not in by_n]
    if says_not_in_sources(answer):
        return GroundingReport(grounded=not invalid, cited=cited, invalid_citations=invalid, not_in_sources=True)
    sentences = [s for s in split_sentences(answer) if len(content_words(s)) >= MIN_CONTENT_WORDS]
    cosines = _cosine_matrix(sentences, passages, embedder)
    results = [
        _support_sentence(sentence, passages, by_n, cosines[i] if cosines is not None else None, min_overlap, min_cosine)
        for i, sentence in enumerate(sentences)
    ]
    attributed = sorted({r.best_n for r in results if r.attributed and r.best_n is not None})
    grounded = bool(results) and not invalid and all(r.supported for r in results)
    return GroundingReport(grounded, results, cited, invalid, attributed)


def _cosine_matrix(sentences: list[str], passages: list[Passage], embedder) -> np.ndarray | None:
    """(sentences x passages) cosine matrix, or None without an embedder or input."""
    if embedder is None or not sentences or not passages:
        return None
    texts = [_CITATION.sub("", s) for s in sentences] + [f"{p.title}: {p.text}" for p in passages]
    vectors = embedder.embed(texts)
    return vectors[: len(sentences)] @ vectors[len(sentences) :].T


def _support_sentence(
    sentence: str,
    passages: list[Passage],
    by_n: dict[int, Passage],
    cosines: np.ndarray | None,
    min_overlap: float,
    min_cosine: float,
) -> SentenceSupport:
    """Score one sentence against its cited passages, or attribute it to the best passage."""
    cited = [n for n in parse_citations(sentence) if n in by_n]
    candidates = cited or [p.n for p in passages]
    index = {p.n: i for i, p in enumerate(passages)}
    best: tuple[float, float | None, int | None, bool] = (0.0, None, None, False)
    for n in candidates:
        overlap = token_overlap(sentence, f"{by_n[n].title} {by_n[n].text}")
        cosine = float(cosines[index[n]]) if cosines is not None else None
        ok = overlap >= min_overlap or (cosine is not None and cosine >= min_cosine)
        score = max(overlap, cosine or 0.0)
        if (ok, score) > (best[3], max(best[0], best[1] or 0.0)):
            best = (overlap, cosine, n, ok)
    overlap, cosine, best_n, ok = best
    return SentenceSupport(
        text=sentence,
        cited=cited,
        best_n=best_n,
        overlap=round(overlap, 3),
        cosine=None if cosine is None else round(cosine, 3),
        supported=ok,
        attributed=not cited and ok,
    )
