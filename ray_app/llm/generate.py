"""Greedy answer generation with the LLM: the prompt, batched streaming decode, model versions.

:func:`stream_tokens` decodes several prompts in one forward pass per step and yields each
prompt's new text as it appears; :class:`ray_app.llm.batching.ContinuousBatcher` builds on its
helpers to let prompts join and leave a running batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from ray_app.llm.prompting import (
    NOT_IN_SOURCES,
    PASSAGE_CHARS,
    Passage,
    build_messages,
    neutralise,
    special_strings,
)
from ray_app.settings import Settings, get_settings


def render_prompt(tokenizer, question: str, passages: list[Passage], context: str | None,
                  budget: int | None = None) -> str:
    """The chat-templated prompt for the shared answer format (``ray_app.llm.prompting``).

    The question, passages and image line are untrusted: their special-token strings (this tokenizer's
    added tokens and any ``<|...|>``) are defused and line breaks flattened, so tokenizing the prompt
    gives exactly the chat template's own special tokens and each passage stays one ``[n]`` line.
    With ``budget``, passages are trimmed (longest first) until the prompt has at most about that many
    tokens (:func:`fit_passages`); the question, the image line and the system prompt are never cut.
    """
    if budget is not None:
        passages = fit_passages(tokenizer, question, passages, context, budget)
    messages = build_messages(question, passages, context, reserved=special_strings(tokenizer))
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_prefix(tokenizer) -> str:
    """The text every :func:`render_prompt` prompt starts with: the chat template up to the user turn's content
    (the system turn), whose KV cache an engine can compute once (:class:`ray_app.llm.batching.SharedPrefix`)."""
    marker = "\x00"
    messages = build_messages(marker, [], None)
    messages[1]["content"] = marker
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text[: text.index(marker)]


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_passages(tokenizer, question: str, passages: list[Passage], context: str | None, budget: int) -> list[Passage]:
    """Passages cut to fit the prompt in ``budget`` tokens: every passage keeps the same number of tokens
    (the longest are cut first, at one common cap), so no passage is dropped for another."""
    total = count_tokens(tokenizer, render_prompt(tokenizer, question, passages, context))
    if total <= budget or not passages:
        return passages
    reserved = special_strings(tokenizer)
    # Counted and cut as the prompt shows them (neutralised), so a defused token's extra pieces are paid for.
    ids = [tokenizer(neutralise(p.text[:PASSAGE_CHARS], reserved), add_special_tokens=False)["input_ids"]
           for p in passages]
    allowed = max(sum(len(i) for i in ids) - (total - budget), 0)
    cap = token_cap([len(i) for i in ids], allowed)
    return [replace(p, text=tokenizer.decode(i[:cap]).strip()) for p, i in zip(passages, ids, strict=True)]


def token_cap(lengths: list[int], allowed: int) -> int:
    """The largest cap ``c`` with ``sum(min(length, c)) <= allowed`` (water-filling)."""
    remaining, cap = allowed, 0
    ordered = sorted(lengths)
    for i, length in enumerate(ordered):
        share = remaining // (len(ordered) - i)
        if length > share:
            return share
        remaining -= length
        cap = length
    return cap


def stop_token_ids(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return {i for i in ids if i is not None}


def encode_left_padded(tokenizer, prompts: list[str]):
    """Tokenize prompts into one left-padded batch: ``(input_ids, attention_mask, position_ids)``.

    Left padding puts every prompt's last token in the last column, so one decode step appends
    one column for all rows; positions count real tokens only, so padding does not shift RoPE.
    """
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return left_padded(rows, tokenizer.pad_token_id)


def left_padded(rows: list[list[int]], pad_id: int | None):
    """Token-id rows as one left-padded batch (see :func:`encode_left_padded`)."""
    import torch

    width = max(len(r) for r in rows)
    pad = 0 if pad_id is None else pad_id
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def text_delta(tokenizer, tokens: list[int], shown: str) -> tuple[str, str]:
    """The text that the newest of ``tokens`` adds to ``shown``, and the text now shown.

    A token that ends inside a multi-byte UTF-8 character decodes to a trailing "\ufffd"; its text
    is held back (delta ``""``) until a later token completes the character.
    """
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if text.endswith("\ufffd"):
        return "", shown
    return text[len(shown):], text


def stream_tokens(llm, prompts: list[str], max_new_tokens: list[int] | int) -> Iterator[list[str | None]]:
    """Greedy decoding of several prompts at once, one shared forward pass per step.

    Prompts are left-padded into one batch and decoded with a KV cache. Each step yields one
    item per prompt: the text it added this step (maybe ``""``), or ``None`` once it has
    finished (stop token or its own ``max_new_tokens``). Ends when every prompt has finished.
    The batch is static; :class:`ray_app.llm.batching.ContinuousBatcher` lets prompts join and
    leave between steps.
    """
    import torch

    tok, model = llm.tokenizer, llm.model
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    input_ids, mask, positions = encode_left_padded(tok, prompts)
    stops, pad = stop_token_ids(tok), tok.pad_token_id
    tokens: list[list[int]] = [[] for _ in prompts]
    texts = [""] * len(prompts)
    done = [False] * len(prompts)
    past = None
    for step in range(max(limits)):
        with torch.inference_mode():
            out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=past, use_cache=True)
        past = out.cache
        next_ids = out.logits[:, -1, :].argmax(-1)
        deltas: list[str | None] = []
        for i, tid in enumerate(next_ids.tolist()):
            if done[i] or tid in stops:
                done[i] = True
                deltas.append(None)
                continue
            tokens[i].append(tid)
            delta, texts[i] = text_delta(tok, tokens[i], texts[i])
            deltas.append(delta)
            done[i] = step + 1 >= limits[i]
        yield deltas
        if all(done):
            return
        input_ids = torch.where(torch.tensor(done), torch.tensor(pad), next_ids).unsqueeze(1)
        mask = torch.cat([mask, torch.ones_like(input_ids)], dim=1)
        positions = positions[:, -1:] + 1


def folder_version(folder: str | Path | None, files: tuple[str, ...]) -> str | None:
    """``<name>@<sha256 of the small config files + weight sizes>`` for a model or adapter folder."""
    if not folder:
        return None
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in files:
        path = folder / name
        if path.exists():
            digest.update(path.read_bytes() if path.stat().st_size < 1_000_000 else str(path.stat().st_size).encode())
    # A training run's checkpoint (RUN/final, RUN/step-000NNN) is named by its run.
    name = f"{folder.parent.name}/{folder.name}" if folder.name == "final" or folder.name.startswith("step-") else folder.name
    return f"{name}@{digest.hexdigest()[:12]}"


def model_versions(llm, settings: Settings | None = None) -> dict:
    """The LLM and adapter versions recorded in every audit record; the model's names the precision it ran
    in (``smollm2-135m-instruct@<hash>/bfloat16``)."""
    from ray_app.models.llm import resolve_llm

    settings = settings or get_settings()
    files = ("config.json", "generation_config.json", "model.safetensors")
    dtype = str(getattr(llm.model, "dtype", "")).removeprefix("torch.")
    return {
        "model": f"{folder_version(resolve_llm(llm.name, settings), files) or llm.name}/{dtype}",
        "adapter": folder_version(llm.adapter, ("adapter_config.json", "adapter_model.safetensors")),
    }




def generate_answer(llm, question: str, passages: list[Passage], context: str | None,
                    max_new_tokens: int, budget: int | None = None) -> Iterator[str]:
    """Stream one answer's text; :data:`NOT_IN_SOURCES` (no LLM call) when there are no passages."""
    if not passages:
        yield NOT_IN_SOURCES
        return
    prompt = render_prompt(llm.tokenizer, question, passages, context, budget)
    for deltas in stream_tokens(llm, [prompt], max_new_tokens):
        if deltas[0] is None:
            return
        yield deltas[0]
