"""Collators shared by the LLM jobs: chat-template SFT examples and DPO preference pairs.

Prompts are rendered with :func:`ray_app.llm.prompting.build_messages` and the tokenizer's chat
template, exactly as serving renders them, so training matches serving. Only answer tokens are
learned: prompt and padding positions carry the label ``-100``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray_app.llm.prompting import Passage, build_messages, special_strings

IGNORE_INDEX = -100


def record_passages(record: dict[str, Any]) -> list[Passage]:
    """Passages of a JSONL record (dicts with ``n``, ``title``, ``text`` and optional ids)."""
    return [Passage(**{k: v for k, v in p.items() if k in Passage.__dataclass_fields__}) for p in record["passages"]]


def render_prompt(tokenizer, record: dict[str, Any]) -> str:
    """The generation prompt (system + user turn + assistant header) for a record."""
    messages = build_messages(record["question"], record_passages(record), record.get("image_context"),
                              reserved=special_strings(tokenizer))
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize_prompt_answer(tokenizer, prompt: str, answer: str, max_len: int) -> dict[str, list[int]]:
    """Token ids and labels for ``prompt + answer + eos``; the prompt is masked with -100.

    When too long, the prompt is cut from the left of its passages section rather than losing
    the answer: the system prompt's first tokens and the whole answer are kept.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer.strip() + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids[: max_len // 2] if len(answer_ids) > max_len // 2 else answer_ids
    room = max_len - len(answer_ids)
    if len(prompt_ids) > room:
        head = min(32, room // 4)
        prompt_ids = prompt_ids[:head] + prompt_ids[len(prompt_ids) - (room - head) :]
    return {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids}


def render_sft_example(tokenizer, record: dict[str, Any], max_len: int) -> dict[str, list[int]]:
    """One SFT record (``question``, ``passages``, ``answer``) as ids + masked labels."""
    return tokenize_prompt_answer(tokenizer, render_prompt(tokenizer, record), record["answer"], max_len)


def render_dpo_pair(tokenizer, record: dict[str, Any], max_len: int) -> dict[str, list[int]]:
    """One DPO record (``question``, ``passages``, ``chosen``, ``rejected``) as two masked sequences."""
    prompt = render_prompt(tokenizer, record)
    chosen = tokenize_prompt_answer(tokenizer, prompt, record["chosen"], max_len)
    rejected = tokenize_prompt_answer(tokenizer, prompt, record["rejected"], max_len)
    return {
        "chosen_input_ids": chosen["input_ids"],
        "chosen_labels": chosen["labels"],
        "rejected_input_ids": rejected["input_ids"],
        "rejected_labels": rejected["labels"],
    }


def pad_sequences(rows: list[list[int]], value: int):
    """Right-pad lists of ids into a ``(batch, longest)`` LongTensor."""
    import torch

    longest = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (longest - len(r)) for r in rows], dtype=torch.long)


@dataclass
class SFTCollator:
    """Batches :func:`render_sft_example` outputs: ``input_ids``, ``attention_mask``, ``labels``."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict:
        ids = pad_sequences([e["input_ids"] for e in examples], self.pad_token_id)
        mask = pad_sequences([[1] * len(e["input_ids"]) for e in examples], 0)
        labels = pad_sequences([e["labels"] for e in examples], IGNORE_INDEX)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass
class DPOCollator:
    """Batches DPO pairs as one ``2B`` batch: the B chosen sequences, then the B rejected ones."""

    pad_token_id: int

    def __call__(self, pairs: list[dict[str, list[int]]]) -> dict:
        seqs = [p["chosen_input_ids"] for p in pairs] + [p["rejected_input_ids"] for p in pairs]
        labels = [p["chosen_labels"] for p in pairs] + [p["rejected_labels"] for p in pairs]
        return {
            "input_ids": pad_sequences(seqs, self.pad_token_id),
            "attention_mask": pad_sequences([[1] * len(s) for s in seqs], 0),
            "labels": pad_sequences(labels, IGNORE_INDEX),
        }
