"""Sentence-aware chunking with a token budget and overlap, counted with the embedder's tokenizer.

Text is split into paragraphs and sentences; sentences are packed greedily into chunks of at most
``max_tokens`` WordPiece tokens (MiniLM's tokenizer, so the budget is what the embedder sees).
Each chunk after the first starts with the previous chunk's last sentences, up to
``overlap_tokens``. A sentence longer than the budget is cut at token boundaries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_PARAGRAPHS = re.compile(r"\n\s*\n")
# A sentence ends at . ! ? (optionally followed by a closing quote or bracket) before whitespace and
# an upper-case letter, digit or opening quote.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?][\"')\]])|(?<=[.!?]))\s+(?=[A-Z0-9\"'(\[])")
# Words after which a full stop does not end a sentence ("Dr. Smith", "e.g. The", "J. R. R. Tolkien").
_ABBREVIATIONS = {"dr.", "mr.", "mrs.", "ms.", "prof.", "st.", "jr.", "sr.", "vs.", "e.g.", "i.e.", "etc.",
                  "no.", "fig.", "c.", "ca.", "approx.", "inc.", "ltd.", "mt.", "u.s."}

@dataclass(frozen=True)
class ChunkConfig:
    """How documents are cut into chunks.

    Attributes:
        max_tokens: token budget per chunk (without special tokens); keep it below the embedder's
            limit (``embed_max_tokens``) minus the title prefix.
        overlap_tokens: at most this many tokens of trailing sentences repeated at the next chunk's start.
    """

    max_tokens: int = 200
    overlap_tokens: int = 32

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise ValueError(f"max_tokens must be at least 8, got {self.max_tokens}")
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise ValueError(f"overlap_tokens must be in [0, max_tokens), got {self.overlap_tokens}")

    def key(self) -> str:
        """A short string that changes when chunking would change (part of a document's content hash)."""
        return f"chunk:{self.max_tokens}:{self.overlap_tokens}"


@lru_cache(maxsize=2)
def load_tokenizer(model: str | None = None):
    """The embedder's (fast) tokenizer, loaded once per process."""
    from transformers import AutoTokenizer

    from ray_app.models.text import resolve_text_model
    from ray_app.settings import get_settings

    return AutoTokenizer.from_pretrained(resolve_text_model(model or get_settings().text_model))


def split_sentences(text: str) -> list[str]:
    """Split into sentences, keeping paragraph breaks as sentence boundaries; empty pieces dropped."""
    out = []
    for paragraph in _PARAGRAPHS.split(text):
        pieces = [p for p in _SENTENCE_END.split(" ".join(paragraph.split())) if p.strip()]
        merged: list[str] = []
        for piece in pieces:
            if merged and _ends_with_abbreviation(merged[-1]):
                merged[-1] += " " + piece
            else:
                merged.append(piece)
        out += merged
    return out


def _ends_with_abbreviation(sentence: str) -> bool:
    last = sentence.rsplit(" ", 1)[-1].lower()
    return last in _ABBREVIATIONS or (len(last) == 2 and last[0].isalpha() and last[1] == ".")

class Chunker:
    """Cut texts into overlapping, sentence-aligned chunks under a token budget.

    Args:
        config: budget and overlap.
        tokenizer: a Hugging Face fast tokenizer (default: the embedder's).
    """

    def __init__(self, config: ChunkConfig | None = None, tokenizer=None):
        self.config = config or ChunkConfig()
        self.tokenizer = tokenizer or load_tokenizer()

    def chunk_many(self, texts: list[str]) -> list[list[str]]:
        """Chunk several texts with one batched tokenizer call; an empty text gives no chunks."""
        sentences = [split_sentences(t or "") for t in texts]
        flat = [s for doc in sentences for s in doc]
        lengths = [len(ids) for ids in self.tokenizer(flat, add_special_tokens=False)["input_ids"]] if flat else []
        out, pos = [], 0
        for doc in sentences:
            out.append(self._pack(doc, lengths[pos : pos + len(doc)]))
            pos += len(doc)
        return out

    def chunk(self, text: str) -> list[str]:
        return self.chunk_many([text])[0]

    def _split_long(self, sentence: str) -> list[tuple[str, int]]:
        """Cut one over-budget sentence into pieces of at most ``max_tokens`` tokens."""
        enc = self.tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True)
        offsets, step = enc["offset_mapping"], self.config.max_tokens
        pieces = []
        for start in range(0, len(offsets), step):
            window = offsets[start : start + step]
            piece = sentence[window[0][0] : window[-1][1]].strip()
            if piece:
                pieces.append((piece, len(window)))
        return pieces

    def _pack(self, sentences: list[str], lengths: list[int]) -> list[str]:
        budget, overlap = self.config.max_tokens, self.config.overlap_tokens
        units: list[tuple[str, int]] = []
        for sentence, n in zip(sentences, lengths, strict=True):
            units += self._split_long(sentence) if n > budget else [(sentence, n)]
        chunks: list[str] = []
        current: list[tuple[str, int]] = []
        size, fresh = 0, 0  # fresh: units in `current` not carried over from the previous chunk
        for unit in units:
            if current and size + unit[1] > budget:
                chunks.append(" ".join(u[0] for u in current))
                current = self._tail(current, overlap, budget - unit[1])
                size, fresh = sum(u[1] for u in current), 0
            current.append(unit)
            size += unit[1]
            fresh += 1
        if current and fresh:
            chunks.append(" ".join(u[0] for u in current))
        return chunks

    @staticmethod
    def _tail(units: list[tuple[str, int]], overlap: int, room: int) -> list[tuple[str, int]]:
        """The last units of a chunk totalling at most ``min(overlap, room)`` tokens."""
        limit, tail, size = min(overlap, room), [], 0
        for unit in reversed(units):
            if size + unit[1] > limit:
                break
            tail.insert(0, unit)
            size += unit[1]
        return tail
