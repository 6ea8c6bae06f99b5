"""PII redaction: e-mail addresses, phone numbers, card numbers (Luhn-checked) and US social security numbers.

The ask service redacts every question with :func:`redact_pii` before anything sees it (retrieval, the
LLM, the audit record, a log line), so these values are never written anywhere. Each match becomes a
placeholder (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[SSN]``) and is counted by kind.

Rules, checked in this order (a span taken by one is not matched again):
- card: 13-19 digits, in one run or grouped 4-4-4-4(-3) / 4-6-5 by one kind of separator (space or
  hyphen), whose Luhn sum is valid;
- SSN: ``AAA-GG-SSSS`` (or with spaces) with a valid area (not 000, 666 or 9xx), group (not 00) and
  serial (not 0000);
- e-mail: ``local@domain.tld``;
- phone: an optional ``+`` and country code, then 7-15 digits in groups separated by spaces, dots,
  hyphens or a parenthesised area code (``+1 (555) 010-7788``, ``555.010.7788``, ``+44 20 7946 0958``);
  a bare run of digits counts only with a leading ``+`` (a year or a quantity is left alone).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

_CARD = re.compile(r"(?<![\w+-])(?:\d{13,19}"  # one run of digits
                   r"|\d{4}(?P<a>[ -])\d{4}(?P=a)\d{4}(?P=a)\d{1,4}(?:(?P=a)\d{1,3})?"  # 4-4-4-4(-3), one separator
                   r"|\d{4}(?P<b>[ -])\d{6}(?P=b)\d{4,5})(?![\w-])")  # 4-6-5 (Amex), 4-6-4 (Diners)
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)(\d{3})([- ])(?!00)\d{2}\2(?!0000)\d{4}(?![\w-])")
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # international, grouping optional
    r"|(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}"  # (555) 010-7788, 555-010-7788, 555.010.7788
    r")(?![\w-])")
PLACEHOLDERS = {"card": "[CARD]", "ssn": "[SSN]", "email": "[EMAIL]", "phone": "[PHONE]"}


@dataclass
class Redaction:
    """A text with its PII replaced, and how many values of each kind were replaced."""

    text: str
    counts: Counter = field(default_factory=Counter)

    @property
    def flags(self) -> list[str]:
        """``pii_redacted:<kind>`` per kind found (what the audit record keeps: kinds, never values)."""
        return [f"pii_redacted:{kind}" for kind in PLACEHOLDERS if self.counts[kind]]


def luhn_valid(digits: str) -> bool:
    """The Luhn check of a card number (digits only)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def redact_pii(text: str) -> Redaction:
    """Replace e-mails, phone numbers, Luhn-valid card numbers and SSNs in ``text`` with placeholders."""
    counts: Counter = Counter()

    def sub(kind: str, pattern: re.Pattern, value: str, check=None) -> str:
        def replace(match: re.Match) -> str:
            if check is not None and not check(match.group(0)):
                return match.group(0)
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        return pattern.sub(replace, value)

    text = sub("card", _CARD, text, lambda s: 13 <= len(_digits(s)) <= 19 and luhn_valid(_digits(s)))
    text = sub("ssn", _SSN, text)
    text = sub("email", _EMAIL, text)
    text = sub("phone", _PHONE, text, lambda s: 7 <= len(_digits(s)) <= 15)
    return Redaction(text, counts)
