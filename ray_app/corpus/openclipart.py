"""The ``openclipart`` source: ~8,100 public-domain clip-art PNGs from Debian ``openclipart-png``.

The package installs ``/usr/share/openclipart/png/<category>/[<sub>/...]/NAME.png``. There are no
caption files: the caption is the cleaned file name (underscores to spaces, the numeric suffix and
the artist's name dropped, since Open Clip Art names read ``object_firstname_lastname_NN``) followed
by its folders, e.g. ``milk carton (food, beverages)``. Where a folder matches one of Prism's 16
stamp categories (``ray_app.vision.data.CATEGORIES``) the record's ``metadata.category`` names it,
so the image encoder can learn those labels from these pictures too. Pattern, gradient and example
files (``special/``) and the package's own ``unsorted/duplicates/`` are left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ray_app.corpus.schema import make_record
from ray_app.errors import Unavailable

OPENCLIPART_ROOT = Path("/usr/share/openclipart/png")
SOURCE = "openclipart"
LICENSE = "Public domain (Open Clip Art Library, Debian openclipart-png)"
URL = "https://openclipart.org/"
SKIPPED_FOLDERS = ("special", "unsorted/duplicates")

# Artists' names (often cut short: file names stop at 25 characters) and file-name noise. A name is
# cut at its first artist token, because the artist comes after the object ("milk_carton_jarno_vasama").
ARTIST_TOKENS = frozenset("""
    aj anthony archi archit archite architet architett architetto arc balin bazelkov benji bucu buculei dan dave elder
    enrique fra fran franc frances francesc francesco fudriot ganson ge ger gerald geral gerhards grond guillou jacq
    jarno jasper jean jk joel jon jonadab jonathan juliane kim krug lie linda lumen luiz marcelo mateya matthew mauro
    meza michael mike mimooh mo nicu nurbldoff olivo park patricia pena peterm phillips rollandin romus sergio stefan
    tanguy vas vasa vasama vasamaa victor yve yves
""".split())
NOISE_TOKENS = frozenset({"bw", "bwh", "sm", "alt", "alt2", "01r", "png"})

# Folder prefix -> Prism category; the longest matching prefix wins, folders not listed have none.
CATEGORY_OF_FOLDER: dict[str, str] = {
    "animals": "animals",
    "buildings": "town",
    "buildings/furniture": "household",
    "containers": "household",
    "decorations": "seasonal",
    "electronics": "household",
    "food": "food",
    "geography/astronomy": "space",
    "logos": "symbols",
    "office": "household",
    "people": "people",
    "people/clothing": "clothes",
    "plants": "plants",
    "recreation/art": "hobbies",
    "recreation/games": "hobbies",
    "recreation/holiday": "seasonal",
    "recreation/music": "hobbies",
    "recreation/sports": "sports",
    "science/astronomy": "space",
    "science/medicine": "medical",
    "signs_and_symbols": "symbols",
    "signs_and_symbols/weather": "naturalforces",
    "tools": "household",
    "tools/toys": "hobbies",
    "tools/weapons": "military",
    "transportation": "vehicles",
    "transportation/aiga-symbols": "symbols",
    "transportation/roadsigns": "symbols",
}


class OpenClipartNotAvailable(Unavailable, FileNotFoundError):
    """The Open Clip Art PNGs are not installed."""


@dataclass(frozen=True)
class Clipart:
    """One clip-art PNG: its file, cleaned name, folder path, Prism category (or None) and unique name."""

    path: Path
    title: str
    folder: str
    category: str | None
    name: str

    @property
    def caption(self) -> str:
        """The cleaned name with its folders as context: ``milk carton (food, beverages)``."""
        context = ", ".join(part.replace("_", " ").replace("-", " ") for part in self.folder.split("/") if part)
        return f"{self.title} ({context})" if context else self.title


def clean_name(stem: str) -> str:
    """A file name as words: separators to spaces, artist names, numbers, single letters and noise dropped.

    >>> clean_name("milk_carton_jarno_vasama_")
    'milk carton'
    >>> clean_name("orso_architetto_francesc_02")
    'orso'
    """
    words = []
    for token in re.split(r"[_\-\s.]+", stem.lower()):
        if token in ARTIST_TOKENS:
            break
        if not token or token in NOISE_TOKENS or token.isdigit() or len(token) == 1:
            continue
        stripped = re.sub(r"\d+$", "", token)  # "smiley102" -> "smiley", but "m16" stays
        words.append(stripped if len(stripped) >= 3 else token)
    return " ".join(words)


def category_of(folder: str) -> str | None:
    """The Prism category of a folder path (longest listed prefix), or None."""
    parts = folder.split("/")
    for n in range(len(parts), 0, -1):
        found = CATEGORY_OF_FOLDER.get("/".join(parts[:n]))
        if found:
            return found
    return None


def list_cliparts(root: Path | None = None) -> list[Clipart]:
    """Every usable clip-art PNG under ``root``, sorted by name; files whose name cleans to nothing are left out.

    Raises:
        OpenClipartNotAvailable: the folder does not exist.
    """
    return list(_list_cliparts(Path(root or OPENCLIPART_ROOT)))


@lru_cache(maxsize=4)
def _list_cliparts(root: Path) -> tuple[Clipart, ...]:
    if not root.is_dir():
        raise OpenClipartNotAvailable(f"Open Clip Art not found at {root}: apt-get install openclipart-png")
    found = []
    for path in sorted(root.rglob("*.png")):
        rel = path.relative_to(root)
        folder = rel.parent.as_posix()
        if any(folder == s or folder.startswith(s + "/") for s in SKIPPED_FOLDERS):
            continue
        title = clean_name(path.stem)
        if not title:
            continue
        found.append(Clipart(path, title, folder if folder != "." else "", category_of(folder), rel.with_suffix("").as_posix()))
    return tuple(found)


def build_records(limit: int | None = None, root: Path | None = None) -> Iterator[dict]:
    """Yield one record per clip-art PNG (image = the installed file's path)."""
    for i, art in enumerate(list_cliparts(root)):
        if limit is not None and i >= limit:
            break
        yield make_record(
            SOURCE,
            art.name,
            title=art.title[:1].upper() + art.title[1:],
            text=f"Clip art: {art.caption}.",
            url=URL,
            license=LICENSE,
            image=str(art.path),
            caption=art.caption,
            metadata={"category": art.category or art.folder.split("/")[0], "folder": art.folder, "file": art.name},
        )
