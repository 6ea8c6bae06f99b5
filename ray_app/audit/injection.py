"""Prompt-injection rules, checked on the question, every passage and the OCR passage before generation.

Text is normalised before the rules run, so the usual disguises do not hide an instruction: Unicode
compatibility forms (NFKC: fullwidth letters), zero-width and other format characters removed, runs of
whitespace collapsed, and base64 blobs decoded and checked as well. :func:`screen_inputs` quarantines
the passages a rule flags: they never reach the prompt, and the audit records why.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass, field

from ray_app.llm.prompting import Passage

# name -> pattern; a name is what the audit records (``prompt_injection:passage:3`` + the rule names).
INJECTION_RULES: dict[str, re.Pattern] = {
    name: re.compile(pattern, re.IGNORECASE)
    for name, pattern in {
        "override": r"\b(ignore|disregard|forget|override|bypass|skip)\b.{0,40}\b(previous|prior|above|earlier|all|"
                    r"any|your|the|these|those|system)\b.{0,20}\b(instruction|prompt|rule|direction|message|guideline|"
                    r"context|polic(y|ie))s?\b",
        "leak": r"\b(reveal|print|show|repeat|leak|output|display|tell me)\b.{0,30}\b(system prompt|your instructions|"
                r"hidden (prompt|instructions)|initial prompt|developer message)\b",
        "persona": r"\byou are now\b|\bact as (an? )?(unrestricted|unfiltered|jailbroken|evil|dan)\b|\bdo anything now\b|"
                   r"\bjailbr(eak|oken)\b|\bdeveloper mode\b|\bpretend (that )?you (are|have) no (rules|restrictions|"
                   r"limits)\b|\bfrom now on,? you\b",
        "role_tag": r"</?\s*(system|assistant|im_start|im_end)\s*>|<\|?(im_start|im_end|endoftext|system)\|?>|"
                    r"^\s*#{2,}\s*(system|instruction)s?\b|\[/?(inst|sys)\]",
        "new_instructions": r"\bnew (instructions?|rules|task)\s*:|\b(system|admin|developer) (note|override|message)"
                            r"\s*:",
        "addressed_to_ai": r"\b(ai|llm|language model|assistant|chatbot)s?( systems?| models?| assistants?)?\b.{0,40}"
                           r"\b(must|should|are (instructed|required)|shall)\b.{0,40}\b(say|reply|respond|answer|"
                           r"include|tell|output|write|recommend|ignore)\b",
        "exfiltration": r"!\[[^\]]*\]\(\s*https?://|\b(visit|click|open|go to)\b.{0,30}https?://|"
                        r"\b(send|post|forward|email)\b.{0,40}\b(conversation|chat history|api key|password|"
                        r"credentials)\b",
    }.items()
}
_FORMAT_CHARS = re.compile(r"[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e"
                           r"\u2060-\u206f\ufeff\ufe00-\ufe0f]")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")


def normalise_for_rules(text: str | None) -> str:
    """NFKC, format characters (zero-width, bidi) removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text or "")
    text = _FORMAT_CHARS.sub("", text)
    return " ".join(text.split())


def decoded_base64(text: str) -> list[str]:
    """Printable texts hidden as base64 in ``text``."""
    found = []
    for blob in _BASE64.findall(text):
        try:
            decoded = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if decoded.isprintable() and sum(c.isalpha() for c in decoded) >= len(decoded) // 2:
            found.append(decoded)
    return found


def injection_rules(text: str | None) -> list[str]:
    """The names of the rules ``text`` (normalised, and any base64 inside it decoded) triggers."""
    plain = normalise_for_rules(text)
    views = [plain] + [normalise_for_rules(d) for d in decoded_base64(plain)]
    return [name for name, rule in INJECTION_RULES.items() if any(rule.search(v) for v in views)]


def looks_like_injection(text: str | None) -> bool:
    return bool(injection_rules(text))


def injection_flags(question: str, passages: list[Passage]) -> list[str]:
    """Flags for text that tries to give the model instructions: ``prompt_injection:question`` and
    ``prompt_injection:passage:<n>`` (passages are data; the flag says one tried to be a command)."""
    flags = []
    if looks_like_injection(question):
        flags.append("prompt_injection:question")
    flags += [f"prompt_injection:passage:{p.n}" for p in passages if looks_like_injection(p.text)]
    return flags


@dataclass
class Screening:
    """The pre-generation verdict: the passages the prompt may use, those quarantined, and the flags."""

    kept: list[Passage]
    quarantined: list[Passage] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    rules: dict[str, list[str]] = field(default_factory=dict)  # "question" / "passage:<n>" -> rule names


def screen_inputs(question: str, passages: list[Passage]) -> Screening:
    """Check the question and every passage (OCR included) before generation; quarantine flagged passages.

    A passage flagged by a rule (checked on its title and text) is left out of the prompt and noted as
    ``prompt_injection:passage:<n>`` and ``quarantined:passage:<n>``; the others keep their numbers.
    A flagged question is noted (``prompt_injection:question``) and still answered from the passages.
    """
    screening = Screening(kept=[])
    if rules := injection_rules(question):
        screening.rules["question"] = rules
        screening.flags.append("prompt_injection:question")
    for p in passages:
        rules = injection_rules(f"{p.title}\n{p.text}")
        if not rules:
            screening.kept.append(p)
            continue
        screening.quarantined.append(p)
        screening.rules[f"passage:{p.n}"] = rules
        screening.flags += [f"prompt_injection:passage:{p.n}", f"quarantined:passage:{p.n}"]
    return screening
