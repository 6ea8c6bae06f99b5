"""The chunker: token budget, sentence alignment, overlap and coverage, counted with MiniLM's tokenizer."""

from __future__ import annotations

import pytest

from ray_app.corpus.synthetic import build_records
from ray_app.ingest.chunking import ChunkConfig, Chunker, load_tokenizer, split_sentences


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_split_sentences_keeps_abbreviations_and_paragraphs():
    text = "Dr. Smith arrived, e.g. at noon. Then he left!\n\nA new paragraph starts here? Yes."
    assert split_sentences(text) == [
        "Dr. Smith arrived, e.g. at noon.", "Then he left!", "A new paragraph starts here?", "Yes.",
    ]


def test_chunks_respect_budget_align_to_sentences_and_cover_the_text(tokenizer):
    config = ChunkConfig(max_tokens=60, overlap_tokens=16)
    chunker = Chunker(config, tokenizer)
    texts = [r["text"] for r in build_records(40)]
    for text, chunks in zip(texts, chunker.chunk_many(texts), strict=True):
        sentences = split_sentences(text)
        assert chunks, "a non-empty text gives at least one chunk"
        assert all(n_tokens(tokenizer, c) <= config.max_tokens for c in chunks)
        joined = " ".join(chunks)
        assert all(s in joined for s in sentences), "every sentence lands in some chunk"
        assert all(any(c.startswith(s) for s in sentences) for c in chunks), "chunks start at a sentence"


def test_overlap_repeats_trailing_sentences_within_the_overlap_budget(tokenizer):
    sentence = "The quick brown fox jumps over the lazy dog number {}."
    text = " ".join(sentence.format(i) for i in range(30))
    config = ChunkConfig(max_tokens=50, overlap_tokens=15)
    chunks = Chunker(config, tokenizer).chunk(text)
    assert len(chunks) > 3
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        first = split_sentences(nxt)[0]
        assert first in split_sentences(prev), "the next chunk starts with the previous chunk's last sentence"
        shared = [s for s in split_sentences(nxt) if s in split_sentences(prev)]
        assert sum(n_tokens(tokenizer, s) for s in shared) <= config.overlap_tokens
    no_overlap = Chunker(ChunkConfig(max_tokens=50, overlap_tokens=0), tokenizer).chunk(text)
    assert sum(len(split_sentences(c)) for c in no_overlap) == 30


def test_an_over_budget_sentence_is_cut_at_token_boundaries(tokenizer):
    long_sentence = " ".join(f"word{i}" for i in range(400)) + "."
    chunks = Chunker(ChunkConfig(max_tokens=64, overlap_tokens=8), tokenizer).chunk(long_sentence)
    assert len(chunks) >= 400 * 2 // 64  # "wordN" is at least two word pieces
    assert all(n_tokens(tokenizer, c) <= 64 for c in chunks)
    assert "word0" in chunks[0] and "word399" in chunks[-1]


def test_empty_and_blank_texts_give_no_chunks(tokenizer):
    assert Chunker(tokenizer=tokenizer).chunk_many(["", "   \n\n  ", "One sentence."]) == [[], [], ["One sentence."]]


@pytest.mark.parametrize("kwargs", [{"max_tokens": 4}, {"max_tokens": 50, "overlap_tokens": 50}, {"overlap_tokens": -1}])
def test_invalid_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        ChunkConfig(**kwargs)
