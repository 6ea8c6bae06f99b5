"""How close an exported LLM is to the torch model it came from, on the same prompts.

:func:`greedy_parity`: the greedy tokens of both (fp32 ONNX must equal torch fp32).
:func:`top1_agreement`: teacher-forced next-token agreement: both models are fed the torch model's greedy
continuation, and at each step their top-1 tokens are compared (int4 / int8 against fp32).
"""

from __future__ import annotations

from edge.llm import EdgeLLM


def torch_greedy(llm, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """The torch model's greedy continuation of ``prompt_ids`` (stops at its stop tokens)."""
    import torch

    from ray_app.llm.generate import stop_token_ids

    stops = stop_token_ids(llm.tokenizer)
    with torch.inference_mode():
        out = llm.model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=llm.tokenizer.pad_token_id, eos_token_id=sorted(stops))
    new = out[0, len(prompt_ids):].tolist()
    for i, token in enumerate(new):
        if token in stops:
            return new[:i]
    return new


def greedy_parity(edge: EdgeLLM, llm, prompts: list[str], max_new_tokens: int = 24) -> list[dict]:
    """Per prompt: both greedy token lists and whether they are equal."""
    rows = []
    for prompt in prompts:
        ids = edge.tokenizer.encode(prompt)
        ours = list(edge.stream_ids(ids, max_new_tokens))
        theirs = torch_greedy(llm, ids, max_new_tokens)
        rows.append({"prompt_tokens": len(ids), "edge": ours, "torch": theirs, "equal": ours == theirs})
    return rows


def top1_agreement(edge: EdgeLLM, llm, prompts: list[str], max_new_tokens: int = 32) -> dict:
    """Teacher-forced top-1 agreement of ``edge`` with the torch model over its greedy continuations."""
    agree = total = 0
    for prompt in prompts:
        ids = edge.tokenizer.encode(prompt)
        reference = torch_greedy(llm, ids, max_new_tokens)
        if not reference:
            continue
        tops = edge.teacher_forced_top1(ids, reference)
        agree += sum(a == b for a, b in zip(tops, reference, strict=True))
        total += len(reference)
    return {"agreement": round(agree / total, 4) if total else None, "tokens": total, "prompts": len(prompts)}
