"""The ``emoji`` source: every single-code-point emoji of Debian ``fonts-noto-color-emoji``, rendered.

The colour font (``NotoColorEmoji.ttf``, OFL-1.1) is a bitmap font: Pillow draws it at its one
strike size (109 px) with ``embedded_color=True``. The code points come from the font's own
character map (a format-12 ``cmap`` subtable, read here without fontTools); the caption is the
Unicode name (``FROG FACE`` -> ``frog face``). Sequences (flags, ZWJ families, skin tones) have no
single Unicode name and are left out. Each emoji is rendered once to
``$PRISM_HOME/data/emoji/U+XXXX.png`` so every record's image is a plain file path. A few Unicode
blocks map to Prism's stamp categories (animals, food, plants, ...), recorded as ``metadata.category``.
"""

from __future__ import annotations

import struct
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ray_app.corpus.schema import make_record
from ray_app.errors import Unavailable

FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
SOURCE = "emoji"
LICENSE = "OFL-1.1 (Noto Color Emoji, Google; Debian fonts-noto-color-emoji)"
URL = "https://github.com/googlefonts/noto-emoji"
STRIKE_SIZE = 109  # the font's only bitmap size
MIN_CODEPOINT = 0x203C  # below it: ASCII digits, '#', '*', (c), (R): text characters, not pictures
NOT_PICTURES = (range(0x1F1E6, 0x1F200), range(0x1F3FB, 0x1F400), range(0xE0000, 0xE0080), range(0xFE00, 0xFE10))

# Unicode ranges -> Prism category (first match wins); most emoji have none.
CATEGORY_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x1F400, 0x1F43F, "animals"), (0x1F980, 0x1F9AE, "animals"), (0x1F577, 0x1F578, "animals"),
    (0x1F330, 0x1F344, "plants"), (0x1F490, 0x1F490, "plants"), (0x1FAB4, 0x1FAB7, "plants"),
    (0x1F345, 0x1F37F, "food"), (0x1F950, 0x1F96F, "food"), (0x1F9C0, 0x1F9CB, "food"), (0x1FAD0, 0x1FADB, "food"),
    (0x1F680, 0x1F6C5, "vehicles"), (0x1F6E9, 0x1F6FC, "vehicles"), (0x2708, 0x2708, "vehicles"),
    (0x1F30C, 0x1F320, "space"), (0x1FA90, 0x1FA90, "space"),
    (0x1F451, 0x1F462, "clothes"), (0x1F97B, 0x1F97F, "clothes"), (0x1FA71, 0x1FA7C, "clothes"),
    (0x1F3BD, 0x1F3CA, "sports"), (0x26BD, 0x26BE, "sports"), (0x1F93A, 0x1F94F, "sports"),
    (0x1F466, 0x1F487, "people"), (0x1F9D1, 0x1F9DF, "people"),
    (0x1F383, 0x1F384, "seasonal"), (0x1F380, 0x1F382, "seasonal"), (0x1F38A, 0x1F38D, "seasonal"),
    (0x1F3E0, 0x1F3F0, "town"), (0x1F489, 0x1F48A, "medical"), (0x1FA7A, 0x1FA7B, "medical"),
    (0x1F525, 0x1F525, "naturalforces"), (0x26A1, 0x26A1, "naturalforces"), (0x1F300, 0x1F30B, "naturalforces"),
    (0x1F3B5, 0x1F3BC, "hobbies"), (0x1F3A8, 0x1F3B4, "hobbies"),
)


class EmojiFontNotAvailable(Unavailable, FileNotFoundError):
    """The Noto colour emoji font is not installed."""


@dataclass(frozen=True)
class Emoji:
    """One emoji: its code point, Unicode name (lower case) and Prism category (or None)."""

    codepoint: int
    name: str
    category: str | None

    @property
    def char(self) -> str:
        return chr(self.codepoint)

    @property
    def key(self) -> str:
        return f"U+{self.codepoint:04X}"


def read_cmap_codepoints(font_path: Path) -> set[int]:
    """Code points mapped by the font's format-12 (or format-4) Unicode ``cmap`` subtable."""
    data = font_path.read_bytes()
    num_tables = struct.unpack(">H", data[4:6])[0]
    tables = {data[12 + 16 * i : 16 + 16 * i]: struct.unpack(">II", data[20 + 16 * i : 28 + 16 * i]) for i in range(num_tables)}
    cmap_offset = tables[b"cmap"][0]
    count = struct.unpack(">H", data[cmap_offset + 2 : cmap_offset + 4])[0]
    points: set[int] = set()
    for i in range(count):
        sub = cmap_offset + struct.unpack(">I", data[cmap_offset + 8 + 8 * i : cmap_offset + 12 + 8 * i])[0]
        fmt = struct.unpack(">H", data[sub : sub + 2])[0]
        if fmt == 12:
            groups = struct.unpack(">I", data[sub + 12 : sub + 16])[0]
            for g in range(groups):
                start, end, _ = struct.unpack(">III", data[sub + 16 + 12 * g : sub + 28 + 12 * g])
                points.update(range(start, end + 1))
        elif fmt == 4:
            segs = struct.unpack(">H", data[sub + 6 : sub + 8])[0] // 2
            ends = struct.unpack(f">{segs}H", data[sub + 14 : sub + 14 + 2 * segs])
            starts = struct.unpack(f">{segs}H", data[sub + 16 + 2 * segs : sub + 16 + 4 * segs])
            for start, end in zip(starts, ends, strict=True):
                points.update(range(start, min(end, 0xFFFE) + 1))
    return points


def category_of(codepoint: int) -> str | None:
    return next((cat for lo, hi, cat in CATEGORY_RANGES if lo <= codepoint <= hi), None)


def list_emoji(font_path: Path | None = None) -> list[Emoji]:
    """Every named single-code-point emoji in the font, by code point.

    Raises:
        EmojiFontNotAvailable: the font file does not exist.
    """
    return list(_list_emoji(Path(font_path or FONT_PATH)))


@lru_cache(maxsize=2)
def _list_emoji(font_path: Path) -> tuple[Emoji, ...]:
    if not font_path.is_file():
        raise EmojiFontNotAvailable(f"emoji font not found at {font_path}: apt-get install fonts-noto-color-emoji")
    found = []
    for cp in sorted(read_cmap_codepoints(font_path)):
        if cp < MIN_CODEPOINT or any(cp in r for r in NOT_PICTURES):
            continue
        name = unicodedata.name(chr(cp), "")
        if name:
            found.append(Emoji(cp, name.lower(), category_of(cp)))
    return tuple(found)


@lru_cache(maxsize=2)
def _font(font_path: Path):
    from PIL import ImageFont

    return ImageFont.truetype(str(font_path), STRIKE_SIZE)


def render_emoji(emoji: Emoji, font_path: Path | None = None):
    """The emoji as an RGBA PIL image cropped to its drawn pixels (None if the font draws nothing)."""
    from PIL import Image, ImageDraw

    font = _font(Path(font_path or FONT_PATH))
    canvas = Image.new("RGBA", (2 * STRIKE_SIZE, 2 * STRIKE_SIZE), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((STRIKE_SIZE // 4, STRIKE_SIZE // 4), emoji.char, font=font, embedded_color=True)
    box = canvas.getbbox()
    return canvas.crop(box) if box else None


def emoji_png_path(emoji: Emoji, out_dir: Path) -> Path:
    return out_dir / f"{emoji.key}.png"


def export_emoji(emoji: Emoji, out_dir: Path, font_path: Path | None = None) -> Path | None:
    """Render ``emoji`` to ``out_dir/U+XXXX.png`` once; None when the font draws nothing for it."""
    path = emoji_png_path(emoji, out_dir)
    if path.exists():
        return path
    image = render_emoji(emoji, font_path)
    if image is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    image.save(tmp)
    tmp.replace(path)
    return path


def list_rendered(out_dir: Path | None = None, font_path: Path | None = None, limit: int | None = None) -> list[tuple[Emoji, Path]]:
    """``(emoji, png_path)`` pairs, rendering what is not yet on disk (at most ``limit`` of them)."""
    from ray_app.settings import get_settings

    out_dir = out_dir or get_settings().data_dir / "emoji"
    pairs = []
    for emoji in list_emoji(font_path):
        if limit is not None and len(pairs) >= limit:
            break
        path = export_emoji(emoji, out_dir, font_path)
        if path is not None:
            pairs.append((emoji, path))
    return pairs


def build_records(limit: int | None = None, out_dir: Path | None = None, font_path: Path | None = None) -> Iterator[dict]:
    """Yield one record per emoji (image = its rendered PNG's path)."""
    for emoji, path in list_rendered(out_dir, font_path, limit):
        yield make_record(
            SOURCE,
            emoji.key,
            title=emoji.name[:1].upper() + emoji.name[1:],
            text=f"The {emoji.name} emoji ({emoji.key}).",
            url=URL,
            license=LICENSE,
            image=str(path),
            caption=emoji.name,
            metadata={"category": emoji.category or "emoji", "codepoint": emoji.key},
        )
