"""The ``stamps`` source: Tux Paint's ~950 captioned clip-art stamps in 16 categories (GPL-2).

Debian's ``tuxpaint-stamps-default`` installs ``/usr/share/tuxpaint/stamps/CATEGORY/**/NAME.{png,svg}``
with ``NAME.txt`` beside it, whose first line is the English caption. The category is the top
folder. Stamps that ship only as SVG are rasterised with cairosvg (or skipped, and counted, when
that fails). ``*_mirror.png`` files are pre-flipped copies of a stamp, not stamps of their own.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ray_app.corpus.schema import make_record
from ray_app.errors import InputError, Unavailable

log = logging.getLogger(__name__)

STAMPS_ROOT = Path("/usr/share/tuxpaint/stamps")
SOURCE = "stamps"
LICENSE = "GPL-2.0 (Tux Paint stamps)"
URL = "https://tuxpaint.org/"


class StampsNotAvailable(Unavailable, FileNotFoundError):
    """The Tux Paint stamps are not installed."""


@dataclass(frozen=True)
class Stamp:
    """One captioned stamp: its image file, English caption, top-level category and unique name."""

    path: Path
    caption: str
    category: str
    name: str

    @property
    def is_svg(self) -> bool:
        return self.path.suffix == ".svg"


def read_caption(txt: Path) -> str:
    """First line of a stamp's ``.txt`` (the English caption), stripped."""
    with txt.open(encoding="utf-8", errors="replace") as fh:
        return fh.readline().strip()


def list_stamps(root: Path | None = None) -> list[Stamp]:
    """Every captioned stamp under ``root``, sorted by name (PNG preferred over SVG).

    Raises:
        StampsNotAvailable: the stamps folder does not exist.
    """
    root = Path(root or STAMPS_ROOT)
    return list(_list_stamps(root))


@lru_cache(maxsize=4)
def _list_stamps(root: Path) -> tuple[Stamp, ...]:
    if not root.is_dir():
        raise StampsNotAvailable(f"Tux Paint stamps not found at {root}: apt-get install tuxpaint-stamps-default")
    stamps = []
    for txt in sorted(root.rglob("*.txt")):
        image = next((p for p in (txt.with_suffix(".png"), txt.with_suffix(".svg")) if p.exists()), None)
        caption = read_caption(txt)
        if image is None or not caption:
            continue
        rel = txt.relative_to(root).with_suffix("")
        stamps.append(Stamp(path=image, caption=caption, category=rel.parts[0], name=rel.as_posix()))
    return tuple(stamps)


def load_stamp_image(stamp: Stamp, max_side: int = 256):
    """Open a stamp as an RGBA PIL image no larger than ``max_side`` (SVGs rasterised with cairosvg).

    Raises:
        InputError: the file cannot be decoded or rasterised.
    """
    from PIL import Image

    try:
        if stamp.is_svg:
            import cairosvg

            png = cairosvg.svg2png(url=str(stamp.path), output_width=max_side)
            image = Image.open(io.BytesIO(png))
        else:
            image = Image.open(stamp.path)
        image = image.convert("RGBA")
    except Exception as exc:  # cairosvg and PIL raise many types for a bad file
        raise InputError(f"cannot decode stamp {stamp.name}: {exc}") from exc
    image.thumbnail((max_side, max_side))
    return image


def stamp_png_path(stamp: Stamp, out_dir: Path) -> Path:
    """Where an SVG stamp's rasterised PNG is cached (PNG stamps are used in place)."""
    return out_dir / f"{stamp.name}.png"


def build_records(limit: int | None = None, out_dir: Path | None = None, root: Path | None = None) -> Iterator[dict]:
    """Yield one record per stamp (image = file path; SVG stamps rasterised once into ``out_dir``).

    Args:
        limit: stop after this many records.
        out_dir: where rasterised SVGs go (default ``$PRISM_HOME/data/stamps``).
        root: the stamps folder (default: Tux Paint's).
    """
    from ray_app.settings import get_settings

    out_dir = out_dir or get_settings().data_dir / "stamps"
    count = skipped = 0
    for stamp in list_stamps(root):
        if limit is not None and count >= limit:
            break
        image_path = stamp.path
        if stamp.is_svg:
            image_path = stamp_png_path(stamp, out_dir)
            if not image_path.exists():
                try:
                    image = load_stamp_image(stamp, max_side=512)
                except InputError as exc:
                    skipped += 1
                    log.warning("%s", exc)
                    continue
                image_path.parent.mkdir(parents=True, exist_ok=True)
                image.save(image_path)
        count += 1
        yield make_record(
            SOURCE,
            stamp.name,
            title=stamp.caption.rstrip("."),
            text=stamp.caption,
            url=URL,
            license=LICENSE,
            image=str(image_path),
            caption=stamp.caption,
            metadata={"category": stamp.category, "stamp": stamp.name},
        )
    if skipped:
        log.warning("stamps: skipped %d SVG stamps that could not be rasterised", skipped)
