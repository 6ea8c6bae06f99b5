"""Passage attribution by ablation: which passages each sentence of an answer depends on.

For every answer sentence, each passage is scored by how much the sentence's log-probability under the
same LLM drops when that passage is removed from the prompt (teacher-forced: the answer as written,
after the prompt as served; occlusion in the sense of captum's ``FeatureAblation`` over passages, with
the sentence's log-probability as the target). A passage the sentence copies or paraphrases scores
high; one it ignores scores near zero (or below, when removing it makes the sentence likelier).

Cost, bounded: one forward pass over the prompt prefix that every variant shares (the system turn and
the passages before the first removed one; its keys and values are computed once), then one batched
forward pass per ``rows_per_pass`` variants over the rest, keeping logits only at the answer's
positions. At most ``max_passages`` passages are removed (the best-ranked ones; the rest stay in the
prompt unscored) and ``max_sentences`` sentences are scored. The fusion deployment runs it on the
model it serves (``serving/fusion.py``); ``prism ask --explain`` in-process.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from ray_app.llm.generate import fit_passages, left_padded, render_prompt
from ray_app.llm.prompting import Passage

MAX_PASSAGES = 8
MAX_SENTENCES = 6
ROWS_PER_PASS = 5
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class Sentence:
    """One answer sentence: its text and its characters ``[start, end)`` in the answer."""

    text: str
    start: int
    end: int


def split_sentences(answer: str) -> list[Sentence]:
    """The answer's sentences (split after ``.``, ``!`` or ``?`` and a space, and at line breaks), with spans
    that cover the answer without gaps (a sentence's span runs to where the next one starts)."""
    starts = [0] + [m.end() for m in _SENTENCE_END.finditer(answer)]
    spans = [(s, e) for s, e in zip(starts, [*starts[1:], len(answer)], strict=True)]
    return [Sentence(answer[s:e].strip(), s, e) for s, e in spans if answer[s:e].strip()]


def attribute_passages(llm, question: str, passages: list[Passage], context: str | None, answer: str,
                       budget: int | None = None, max_passages: int = MAX_PASSAGES,
                       max_sentences: int = MAX_SENTENCES, rows_per_pass: int = ROWS_PER_PASS) -> dict:
    """Score every passage's effect on every answer sentence (see the module docstring).

    Args:
        llm: a loaded LLM (``model``, ``tokenizer``), the one that wrote the answer.
        question, passages, context: what the answer was written from (as :func:`render_prompt` takes them).
        answer: the answer's text.
        budget: ``PRISM_PROMPT_TOKEN_BUDGET``: the passages are cut as they were for the answer, once.

    Returns:
        ``{"sentences": [{"sentence", "passages": [{"n", "chunk_id", "score"}, ...]}], "method", "passages_scored",
        "sentences_total", "forward_passes"}``; each sentence's passages are ranked by ``score``, the drop in the
        sentence's log-probability (nats) when the passage is removed.
    """
    sentences = split_sentences(answer)
    if not passages or not sentences:
        return _result([], len(sentences), 0, 0)
    tokenizer = llm.tokenizer
    if budget is not None:
        passages = fit_passages(tokenizer, question, passages, context, budget)
    scored = passages[:max_passages]
    sentences = sentences[:max_sentences]
    prompts = [render_prompt(tokenizer, question, passages, context)]
    prompts += [render_prompt(tokenizer, question, [p for p in passages if p is not left_out], context)
                for left_out in scored]
    answer_ids, owner = answer_tokens(tokenizer, answer, sentences)
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] + answer_ids for p in prompts]
    logprobs, passes = token_logprobs(llm.model, tokenizer.pad_token_id, rows, len(answer_ids), rows_per_pass)
    per_sentence = [[float(lp[[i for i, s in enumerate(owner) if s == j]].sum()) for j in range(len(sentences))]
                    for lp in logprobs]
    full = per_sentence[0]
    out = []
    for j, sentence in enumerate(sentences):
        ranked = sorted(((full[j] - per_sentence[1 + i][j], p) for i, p in enumerate(scored)), key=lambda x: -x[0])
        out.append({"sentence": sentence.text,
                    "passages": [{"n": p.n, "chunk_id": p.chunk_id, "score": round(score, 4)} for score, p in ranked]})
    return _result(out, len(split_sentences(answer)), len(scored), passes)


def _result(sentences: list[dict], total: int, scored: int, passes: int) -> dict:
    return {"sentences": sentences, "method": "ablation: drop in the sentence's log-probability (nats) without the "
            "passage", "passages_scored": scored, "sentences_total": total, "forward_passes": passes}


def answer_tokens(tokenizer, answer: str, sentences: list[Sentence]) -> tuple[list[int], list[int]]:
    """The answer's token ids and, per token, the index of the sentence it belongs to (by its last character;
    -1 for tokens after the last scored sentence)."""
    encoded = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    owner = []
    for start, end in encoded["offset_mapping"]:
        at = max(end - 1, start)
        owner.append(next((j for j, s in enumerate(sentences) if s.start <= at < s.end), -1))
    return encoded["input_ids"], owner


def token_logprobs(model, pad_id: int | None, rows: list[list[int]], answer_len: int, rows_per_pass: int):
    """Log-probabilities of the last ``answer_len`` tokens of every row, teacher-forced.

    The rows' common prefix is run once and its KV cache repeated for each pass; the suffixes are left-padded
    after it (masked padding between prefix and suffix, positions counted over real tokens), so every row's
    answer sits in the last columns and only those logits are computed.

    Returns:
        ``(one float tensor of answer_len log-probabilities per row, forward passes run)``.
    """
    import torch

    # Every row keeps at least answer_len + 1 tokens of its own: the logit before the answer's first token.
    shared = common_prefix(rows, limit=min(len(r) for r in rows) - answer_len - 1)
    prefix = torch.tensor([rows[0][:shared]])
    out_rows, passes, prefix_cache = [], 0, None
    with torch.inference_mode():
        if shared:
            prefix_cache = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True).cache
            passes += 1
        for first in range(0, len(rows), rows_per_pass):
            batch = [r[shared:] for r in rows[first : first + rows_per_pass]]
            cache = None
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(batch))
            ids, suffix_mask, _ = left_padded(batch, pad_id)
            mask = torch.cat([torch.ones(len(batch), shared, dtype=suffix_mask.dtype), suffix_mask], dim=1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                        logits_to_keep=answer_len + 1)
            passes += 1
            targets = ids[:, -answer_len:]
            for r in range(len(batch)):
                logits = out.logits[r, :-1].float()  # position t predicts token t + 1
                out_rows.append(logits.log_softmax(-1).gather(-1, targets[r].unsqueeze(-1)).squeeze(-1))
    return out_rows, passes


def common_prefix(rows: list[list[int]], limit: int) -> int:
    """How many leading tokens every row shares, at most ``limit``."""
    shared, first = 0, rows[0]
    while shared < limit and all(len(r) > shared and r[shared] == first[shared] for r in rows):
        shared += 1
    return shared
