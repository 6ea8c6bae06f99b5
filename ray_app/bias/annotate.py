"""Attributes of the wiki biographies derived from their own text: gender, region, era.

    from ray_app.bias.annotate import annotate, load_biographies
    annotate(title, description, text)   # Attributes(gender="female", region="Europe", era="19th century", ...)

Rules (no model, so every label can be traced to words in the article):

* **gender** — third-person pronouns in the summary: ``he/him/his/himself`` against ``she/her/hers/herself``;
  the larger count wins when it is at least twice the other. Otherwise gendered nouns in the description and the
  first sentence (king/queen, actor/actress, son/daughter, ...). Group articles (a band, brothers, a dynasty) and
  everything undecided are ``unknown``.
* **region** — the first nationality or place the description names (``German-American`` -> Germany -> Europe;
  ``King of France`` -> Europe), else the first one in the summary's first two sentences; mapped to one of
  :data:`REGIONS`. A person's region is where the description says they were from, not where they worked.
* **era** — the first year (or century) in the description, which is the birth year for ``(1771–1832)`` and
  ``(born 1940)`` and the earliest date it gives otherwise (a reign, a floruit), else the first year in the
  summary; binned into :data:`ERAS`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import lru_cache

UNKNOWN = "unknown"
GENDERS = ("female", "male", UNKNOWN)
REGIONS = ("Europe", "North America", "Latin America", "Sub-Saharan Africa", "Middle East and North Africa",
           "South Asia", "East, Southeast and Central Asia", "Oceania", UNKNOWN)
# The Middle East includes Anatolia and the Caucasus (Ottoman, Armenian, Georgian, Azerbaijani).
ERAS = ("ancient (before 500)", "medieval (500-1499)", "early modern (1500-1799)", "19th century (1800-1899)",
        "20th century and later (1900-)", UNKNOWN)
PEOPLE_CATEGORY = "People"

_MALE = re.compile(r"\b(he|him|his|himself)\b", re.IGNORECASE)
_FEMALE = re.compile(r"\b(she|her|hers|herself)\b", re.IGNORECASE)
_MALE_NOUNS = re.compile(
    r"\b(king|emperor|prince|duke|sultan|tsar|pharaoh|shah|father|son|husband|brother|actor|businessman|"
    r"statesman|nobleman|monk|pope|caliph|khan|chieftain|boy|man|lord|sir|count|baron|grandson|nephew|uncle)\b",
    re.IGNORECASE)
_FEMALE_NOUNS = re.compile(
    r"\b(queen|empress|princess|duchess|tsarina|mother|daughter|wife|sister|actress|businesswoman|stateswoman|"
    r"noblewoman|nun|abbess|girl|woman|lady|dame|countess|baroness|granddaughter|niece|aunt|heroine)\b",
    re.IGNORECASE)
_GROUP = re.compile(r"\b(brothers|sisters|band|duo|trio|group|team|troupe|family|dynasty|couple|quartet)\b",
                    re.IGNORECASE)

_PLACES = {
    "Europe": (
        "english anglo-irish anglo-saxon british scottish irish welsh french frankish carolingian norman german "
        "germanic prussian bavarian saxon italian venetian florentine genoese sicilian lombard roman byzantine "
        "greek athenian spartan macedonian hellenistic greco-roman spanish castilian catalan basque andalusian "
        "navarese aragonese portuguese dutch flemish belgian austrian austro-bohemian bohemian habsburg swiss "
        "genevan swedish danish norwegian finnish norse scandinavian icelandic viking polish poiish czech slovak "
        "hungarian romanian russian soviet soviet-russian soviet-era ukrainian latvian estonian lithuanian "
        "serbian croatian bosnian slovene albanian bulgarian belarusian gaulish celtic "
        "visigothic ostrogothic holy roman "
        "england britain scotland ireland wales france germany prussia italy rome spain castile aragon portugal "
        "netherlands holland belgium austria switzerland sweden denmark norway finland iceland poland bohemia "
        "hungary romania russia muscovy kiev kyiv ukraine greece athens sparta macedon macedonia serbia "
        "bulgaria croatia lithuania europe"
    ),
    "North America": (
        "american african-american u.s. canadian cherokee métis lakota apache shawnee sioux "
        "united states canada america"
    ),
    "Latin America": (
        "mexican brazilian argentine argentinian cuban colombian jamaican peruvian chilean venezuelan haitian "
        "bolivian uruguayan ecuadorian dominican nicaraguan guatemalan salvadoran paraguayan puerto rican nahua "
        "aztec inca incan maya mayan tlahtoāni sapa inca latin american "
        "mexico brazil argentina cuba colombia jamaica peru chile venezuela haiti bolivia uruguay ecuador "
        "nicaragua guatemala tenochtitlan"
    ),
    "Sub-Saharan Africa": (
        "nigerian ghanaian kenyan senegalese congolese zulu ethiopian south african ambundu malian tanzanian "
        "ugandan zimbabwean angolan rwandan liberian somali sudanese mozambican malawian zambian cameroonian "
        "ivorian guinean xhosa yoruba igbo ashanti mansa "
        "nigeria ghana kenya senegal congo ethiopia south africa mali tanzania uganda zimbabwe angola rwanda "
        "liberia somalia sudan mozambique ndongo songhai"
    ),
    "Middle East and North Africa": (
        "persian iranian arab arabian egyptian syrian lebanese turkish ottoman iraqi assyrian sumerian babylonian "
        "akkadian hittite israeli israelite hebrew palestinian palestinian-american saudi algerian moroccan "
        "tunisian libyan berber maghrebi carthaginian phoenician umayyad abbasid rashidun mamluk fatimid ayyubid "
        "seljuk achaemenid sasanian sassanid parthian azerbaijani armenian georgian kurdish yemeni jordanian khedive "
        "persia iran arabia egypt syria lebanon turkey iraq assyria babylon sumer israel judah judea palestine "
        "algeria morocco tunisia libya carthage mecca medina baghdad armenia"
    ),
    "South Asia": (
        "indian pakistani bangladeshi sri lankan nepali nepalese mughal gupta chola maurya mauryan vedic "
        "hindustani chhatrapati maratha afghan ghaznavid ghurid kushan kuchan sikh bengali tamil punjabi rajput "
        "india pakistan bangladesh sri lanka nepal afghanistan delhi bengal"
    ),
    "East, Southeast and Central Asia": (
        "chinese japanese korean mongol mongolian taiwanese hong kong vietnamese thai burmese khmer cambodian "
        "javanese indonesian filipino malaysian singaporean tang qin han ming qing tibetan manchu chanyu "
        "xiongnu kazakh uzbek timurid turkic hunnic "
        "china japan korea mongolia taiwan vietnam thailand siam burma myanmar cambodia indonesia java "
        "philippines malaysia singapore tibet"
    ),
    "Oceania": "australian new zealand new zealander maori hawaiian polynesian australia",
}
_MULTI = ("south african", "sri lankan", "puerto rican", "hong kong", "new zealand", "new zealander",
          "united states", "south africa", "sri lanka", "latin american", "holy roman", "sapa inca")


def _place_table() -> dict[str, str]:
    table = {}
    for region, words in _PLACES.items():
        text = words
        for phrase in _MULTI:
            if phrase in text:
                table[phrase] = region
                text = text.replace(phrase, " ")
        for word in text.split():
            table[word] = region
    return table


PLACE_REGION = _place_table()
# Longest names first, so "South African" wins over "African" and "African-American" over "African".
_PLACE = re.compile(r"(?<![\w-])(" + "|".join(re.escape(p) for p in sorted(PLACE_REGION, key=len, reverse=True))
                    + r")(?![\w])", re.IGNORECASE)
_YEAR = re.compile(r"(?:\b(AD|c\.)\s*|\b)(\d{1,4})(?:s)?\s*(BCE|BC|CE|AD)?\b")
_CENTURY = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)[- ]century(?:\s*(BCE|BC))?", re.IGNORECASE)
_RANGE_BC = re.compile(r"\b(BCE|BC)\b")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@dataclass(frozen=True)
class Attributes:
    """The audit's attributes of one biography, with what each rule saw (for the gold comparison)."""

    gender: str
    region: str
    era: str
    year: int | None  # the year the era comes from (negative: BC)
    he: int
    she: int
    place: str | None  # the nationality or place word the region comes from

    def to_dict(self) -> dict:
        return asdict(self)


def infer_gender(description: str, text: str) -> tuple[str, int, int]:
    """``(gender, he-count, she-count)`` by the pronoun rule, then gendered nouns (module docstring)."""
    he, she = len(_MALE.findall(text)), len(_FEMALE.findall(text))
    if he >= 1 and he >= 2 * she:
        return "male", he, she
    if she >= 1 and she >= 2 * he:
        return "female", he, she
    head = f"{description}. {first_sentences(text, 1)}"
    if _GROUP.search(description) and he + she == 0:
        return UNKNOWN, he, she
    male, female = len(_MALE_NOUNS.findall(head)), len(_FEMALE_NOUNS.findall(head))
    if male > female:
        return "male", he, she
    if female > male:
        return "female", he, she
    return UNKNOWN, he, she


def first_sentences(text: str, n: int) -> str:
    return " ".join(_SENTENCE.split(text.strip())[:n])


def infer_region(description: str, text: str) -> tuple[str, str | None]:
    """``(region, the word it comes from)``: the first place word in the description, else in the summary's start."""
    for source in (description, first_sentences(text, 2)):
        match = _PLACE.search(source)
        if match:
            word = match.group(1).lower()
            return PLACE_REGION[word], word
    return UNKNOWN, None


def first_year(text: str) -> int | None:
    """The first year or century in ``text`` (a century counts as its middle year; BC years are negative)."""
    candidates = []
    for m in _CENTURY.finditer(text):
        year = (int(m.group(1)) - 1) * 100 + 50
        candidates.append((m.start(), -year if m.group(2) else year))
    for m in _YEAR.finditer(text):
        value, era = int(m.group(2)), m.group(3)
        if any(start <= m.start() < start + 20 for start, _ in candidates):
            continue  # part of a century phrase
        if era is None and not (len(m.group(2)) >= 3 or m.group(1) or _RANGE_BC.search(text[m.end():m.end() + 12])):
            continue  # "3 children": a bare number of one or two digits is a year only after AD / c. or before BC
        bc = era in ("BC", "BCE") or (era is None and bool(_RANGE_BC.search(text[m.end():m.end() + 12])))
        candidates.append((m.start(), -value if bc else value))
    return min(candidates)[1] if candidates else None


def era_of(year: int | None) -> str:
    if year is None:
        return UNKNOWN
    for bound, label in ((500, ERAS[0]), (1500, ERAS[1]), (1800, ERAS[2]), (1900, ERAS[3])):
        if year < bound:
            return label
    return ERAS[4]


def infer_era(description: str, text: str) -> tuple[str, int | None]:
    """``(era, year)`` from the description's first date, else the summary's."""
    year = first_year(description)
    if year is None:
        year = first_year(first_sentences(text, 3))
    return era_of(year), year


def annotate(title: str, description: str, text: str) -> Attributes:
    """The attributes of one biography (``title`` is not used by the rules; it names the record)."""
    gender, he, she = infer_gender(description, text)
    region, place = infer_region(description, text)
    era, year = infer_era(description, text)
    return Attributes(gender, region, era, year, he, she, place)


@lru_cache(maxsize=1)
def load_biographies() -> tuple[dict, ...]:
    """The wiki articles of category People, each with ``doc_id`` (the store's id) and its :class:`Attributes`.

    Raises:
        WikiDataNotAvailable: the wiki package is not installed.
    """
    from ray_app.corpus.wiki import SOURCE, load_wiki_records
    from ray_app.store.rows import stable_id

    out = []
    for record in load_wiki_records():
        if record["category"] != PEOPLE_CATEGORY:
            continue
        attributes = annotate(record["title"], record["description"], record["text"])
        out.append({**record, "doc_id": stable_id(SOURCE, record["title"]), "attributes": attributes})
    return tuple(out)


GOLD_PATH = "datasets/rai/annotation_gold.jsonl"
ATTRIBUTES = ("gender", "region", "era")


def gold_sample(biographies: list[dict], n: int = 110, seed: int = 22) -> list[dict]:
    """The hand-checked sample: ``n`` biographies drawn with ``seed`` from the list sorted by document id."""
    import random

    return random.Random(seed).sample(sorted(biographies, key=lambda r: r["doc_id"]), n)


def wilson_interval(errors: int, n: int, z: float = 1.96) -> list[float]:
    """The 95 % Wilson score interval of an error rate ``errors / n``."""
    if n == 0:
        return [0.0, 1.0]
    p = errors / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def annotation_error(gold: list[dict], biographies: list[dict]) -> dict:
    """Per attribute: the rules' error rate against the hand labels, its 95 % interval, and every mistake.

    Args:
        gold: rows ``{"doc_id", "title", "gender", "region", "era", "note"}``.
        biographies: :func:`load_biographies` records (with ``attributes``).

    Raises:
        KeyError: a gold row names a document that is not a biography.
    """
    by_id = {b["doc_id"]: b for b in biographies}
    out = {"n": len(gold)}
    for name in ATTRIBUTES:
        mistakes = []
        for row in gold:
            predicted = getattr(by_id[row["doc_id"]]["attributes"], name)
            if predicted != row[name]:
                mistakes.append({"title": row["title"], "rule": predicted, "gold": row[name], "note": row.get("note", "")})
        unknown_gold = sum(row[name] == UNKNOWN for row in gold)
        out[name] = {"error_rate": round(len(mistakes) / max(len(gold), 1), 4),
                     "errors": len(mistakes), "ci95": wilson_interval(len(mistakes), len(gold)),
                     "rule_said_unknown": sum(m["rule"] == UNKNOWN for m in mistakes),
                     "gold_unknown": unknown_gold, "mistakes": mistakes}
    return out
