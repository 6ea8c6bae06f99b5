"""A light tokenizer for the edge: Hugging Face ``tokenizers`` plus the model's Jinja chat template.

It answers the calls :mod:`ray_app.llm.generate` and :mod:`ray_app.llm.prompting` make on a
``transformers`` tokenizer (``apply_chat_template``, ``__call__``, ``decode``, ``get_added_vocab``,
``all_special_tokens``, ``convert_tokens_to_ids``), so the prompt, its budget and the untrusted-text
defences are the server's own, without importing ``transformers`` (and torch) on the device.
"""

from __future__ import annotations

import json
from pathlib import Path


class EdgeTokenizer:
    """Tokenizer and chat template read from a folder (``tokenizer.json``, ``tokenizer_config.json``,
    ``chat_template.jinja``).

    Args:
        folder: the exported LLM folder.
    """

    def __init__(self, folder: str | Path):
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer

        folder = Path(folder)
        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = json.loads((folder / "tokenizer_config.json").read_text())
        template = folder / "chat_template.jinja"
        source = template.read_text() if template.exists() else config.get("chat_template")
        if not source:
            raise ValueError(f"{folder} has no chat template")
        # The options transformers renders chat templates with.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(source)
        self.eos_token = _token_text(config.get("eos_token"))
        self.bos_token = _token_text(config.get("bos_token"))
        self.pad_token = _token_text(config.get("pad_token")) or self.eos_token
        self.unk_token = _token_text(config.get("unk_token"))
        self._added = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items()}
        self._special_ids = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    @property
    def eos_token_id(self) -> int | None:
        return self.convert_tokens_to_ids(self.eos_token) if self.eos_token else None

    @property
    def pad_token_id(self) -> int | None:
        return self.convert_tokens_to_ids(self.pad_token) if self.pad_token else None

    @property
    def unk_token_id(self) -> int | None:
        return self.convert_tokens_to_ids(self.unk_token) if self.unk_token else None

    @property
    def all_special_tokens(self) -> list[str]:
        return [t for t in (self.bos_token, self.eos_token, self.unk_token, self.pad_token) if t]

    def get_added_vocab(self) -> dict[str, int]:
        return dict(self._added)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False):
        text = self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        return self.encode(text) if tokenize else text

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without added BOS/EOS (the chat template writes its own)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self._tok.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self._tok.decode(ids, skip_special_tokens=False)


def _token_text(value) -> str | None:
    """``tokenizer_config.json`` writes a token as a string or as ``{"content": ...}``."""
    if isinstance(value, dict):
        return value.get("content")
    return value
