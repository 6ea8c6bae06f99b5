"""Prompt-injection defences around generation: rules and a learned detector before it, output checks after.

Text is normalised before the rules run, so the usual disguises do not hide an instruction: Unicode
compatibility forms (NFKC: fullwidth letters), zero-width and other format characters removed, runs of
whitespace collapsed, and base64 blobs decoded and checked as well. :func:`screen_inputs` checks the
question and every passage (OCR included) with the rules and, when given one, the learned detector
(:mod:`ray_app.audit.detector`): flagged passages are quarantined (they never reach the prompt) and a
flagged question is not answered. :func:`check_output` looks at a finished answer before its final event:
a URL or markdown image that no source contains, or a piece of the system prompt, withholds it.
:class:`Defences` switches each of the three on or off (the injection evaluation measures every mix;
Serve runs all three).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass, field

from ray_app.llm.prompting import NOT_IN_SOURCES, SYSTEM_PROMPT, Passage

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


@dataclass(frozen=True)
class Defences:
    """Which injection defences run: the rules and the learned detector before generation, the output checks
    after it. Untrusted text is neutralised and delimited in the prompt whatever these say."""

    rules: bool = True
    detector: bool = True
    output: bool = True

    @property
    def name(self) -> str:
        on = [n for n in ("rules", "detector", "output") if getattr(self, n)]
        return "+".join(on) if on else "none"


ALL_DEFENCES = Defences()
NO_DEFENCES = Defences(False, False, False)


def screen_inputs(question: str, passages: list[Passage], detector=None, rules: bool = True) -> Screening:
    """Check the question and every passage (OCR included) before generation; quarantine flagged passages.

    A passage flagged by a rule or by ``detector`` (checked on its title and text) is left out of the prompt
    and noted as ``prompt_injection:passage:<n>`` and ``quarantined:passage:<n>``; the others keep their
    numbers. A flagged question is noted (``prompt_injection:question``): the service does not answer it.

    Args:
        detector: a :class:`ray_app.audit.detector.InjectionDetector` (None: rules only).
        rules: run the rules (off only to measure the detector alone).
    """
    screening = Screening(kept=[])
    texts = [question] + [f"{p.title}\n{p.text}" for p in passages]
    found = [injection_rules(t) if rules else [] for t in texts]
    if detector is not None:
        for names, hit in zip(found, detector.flag(texts), strict=True):
            if hit:
                names.append("detector")
    if found[0]:
        screening.rules["question"] = found[0]
        screening.flags.append("prompt_injection:question")
    for p, rules_hit in zip(passages, found[1:], strict=True):
        if not rules_hit:
            screening.kept.append(p)
            continue
        screening.quarantined.append(p)
        screening.rules[f"passage:{p.n}"] = rules_hit
        screening.flags += [f"prompt_injection:passage:{p.n}", f"quarantined:passage:{p.n}"]
    return screening


# ---------------------------------------------------------------- after generation

_URL = re.compile(r"(?:https?://|www\.)[^\s<>()\[\]\"']+", re.IGNORECASE)
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*([^)\s]*)")
_WORD = re.compile(r"[a-z0-9]+")
LEAK_WORDS = 6  # this many consecutive words of the system prompt in an answer is a leak


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _prompt_shingles(n: int = LEAK_WORDS) -> set[tuple[str, ...]]:
    """Every ``n``-word run of the system prompt, except the one reply it allows (:data:`NOT_IN_SOURCES`)."""
    words = _words(SYSTEM_PROMPT.replace(NOT_IN_SOURCES, " "))
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


_SHINGLES = _prompt_shingles()


def leaks_system_prompt(answer: str) -> bool:
    """True when ``answer`` repeats :data:`LEAK_WORDS` consecutive words of the system prompt."""
    words = _words(answer)
    return any(tuple(words[i:i + LEAK_WORDS]) in _SHINGLES for i in range(len(words) - LEAK_WORDS + 1))


def _host(url: str) -> str:
    url = re.sub(r"^(https?://)?(www\.)?", "", url.lower())
    return url.split("/", 1)[0].split("?", 1)[0].rstrip(".,;:")


def output_flags(answer: str, sources: list[str]) -> list[str]:
    """What withholds an answer: ``output:url`` (a URL whose host no source mentions), ``output:markdown_image``
    (an image whose address no source holds: rendering it would send a request to that address) and
    ``output:system_prompt`` (the answer repeats the system prompt)."""
    plain = normalise_for_rules(answer)
    corpus = normalise_for_rules(" ".join(sources)).lower()
    flags = []
    if any(_host(u) and _host(u) not in corpus for u in _URL.findall(plain)):
        flags.append("output:url")
    if any(not target or target.lower() not in corpus for target in _MD_IMAGE.findall(plain)):
        flags.append("output:markdown_image")
    if leaks_system_prompt(plain):
        flags.append("output:system_prompt")
    return flags


def check_output(answer: str, passages: list[Passage], image_context: str | None = None) -> list[str]:
    """:func:`output_flags` against the sources the answer was written from (passages, their titles, the image line)."""
    sources = [f"{p.title} {p.text}" for p in passages] + ([image_context] if image_context else [])
    return output_flags(answer, sources)


OUTPUT_REASONS = {
    "output:url": "it contained a link that none of the sources contains",
    "output:markdown_image": "it contained an image that none of the sources contains (showing it would contact "
                             "that address)",
    "output:system_prompt": "it repeated Prism's own instructions",
}
QUESTION_WITHHELD = ("Prism did not answer: the question looks like an attempt to change its instructions "
                     "(prompt injection). Ask about the topic itself.")


def withheld_message(flags: list[str]) -> str:
    """What a user is told instead of an answer the defences stopped (the question, or the answer's own text)."""
    reasons = [OUTPUT_REASONS[f] for f in flags if f in OUTPUT_REASONS]
    if not reasons:
        return QUESTION_WITHHELD
    return f"Prism withheld this answer because {' and '.join(reasons)}. The audit log keeps the record."
