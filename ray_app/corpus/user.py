"""User data adapters: JSONL files, Parquet files and image folders with caption sidecars.

Rows follow Prism's document schema (``id``, ``source``, ``title``, ``text``, ``url``, ``license``,
``image``, ``caption``, ``metadata``); fields outside it go into ``metadata``. A bad row (no text,
wrong types, a text over ``max_text_chars``, an image that does not decode) is counted in
``skipped`` under its reason and left out; it never stops the build.

Image folders: every ``NAME.{png,jpg,jpeg,gif,webp,bmp}`` with a sidecar ``NAME.txt`` (line 1 is
the caption, the rest, if any, the text) or ``NAME.json`` (schema fields).

Image paths are the user's input, so they stay inside the corpus folder (the folder of the JSONL or
Parquet file, or the image folder itself): an absolute path, a ``..`` part or a symbolic link that
leads outside is skipped as ``unsafe_path``. Formats are allow-listed twice, by suffix and by what
Pillow finds in the bytes (PNG, JPEG, GIF, WebP, BMP; no SVG, TIFF, PDF, ...): ``bad_image_format``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray_app.corpus.schema import COLUMNS, make_record
from ray_app.errors import InputError, NotFound
from ray_app.jsonl import iter_jsonl
from ray_app.settings import get_settings

SOURCE = "user"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"}
IMAGE_FORMATS = {"PNG", "JPEG", "GIF", "WEBP", "BMP"}  # what Pillow must find in the bytes
_TEXT_FIELDS = ("title", "text", "url", "license", "image", "caption", "source", "id")


class BadRow(InputError):
    """A row that cannot become a record; ``reason`` is the counter key."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


def safe_image_path(image: str, base_dir: Path) -> Path:
    """``base_dir / image`` resolved, when it stays inside ``base_dir``.

    Raises:
        BadRow: ``unsafe_path`` for an absolute path, a ``..`` part, or a link that resolves outside
            ``base_dir``; ``bad_image_format`` for a suffix outside :data:`IMAGE_SUFFIXES`.
    """
    relative = Path(image)
    if relative.is_absolute() or image.startswith(("/", "\\")) or ".." in relative.parts or "\\" in image:
        raise BadRow("unsafe_path", f"image paths must be relative to the corpus folder, without '..': {image!r}")
    root = base_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise BadRow("unsafe_path", f"image path {image!r} leads outside the corpus folder {root}")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise BadRow("bad_image_format", f"image {image!r}: only {', '.join(sorted(IMAGE_SUFFIXES))} files")
    return path


def check_image(path: Path) -> None:
    """Raise BadRow unless ``path`` is a readable image of an allowed format within the size limits."""
    from PIL import Image

    settings = get_settings()
    if not path.is_file():
        raise BadRow("missing_image", f"image not found: {path}")
    if path.stat().st_size > settings.max_image_bytes:
        raise BadRow("image_too_large", f"image over {settings.max_image_bytes} bytes: {path}")
    try:
        with Image.open(path, formats=sorted(IMAGE_FORMATS)) as im:
            if im.width * im.height > settings.max_image_pixels:
                raise BadRow("image_too_large", f"image over {settings.max_image_pixels} pixels: {path}")
            im.load()
    except BadRow:
        raise
    except Exception as exc:  # PIL raises many types for broken bytes
        other = _other_format(path)
        if other:
            raise BadRow("bad_image_format", f"{path}: {other} images are not accepted "
                                             f"(only {', '.join(sorted(IMAGE_FORMATS))})") from exc
        raise BadRow("bad_image", f"image does not decode: {path}: {exc}") from exc


def _other_format(path: Path) -> str | None:
    """The format Pillow reads in a file refused by the allow-list (headers only, nothing decoded), or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.format if im.format not in IMAGE_FORMATS else None
    except Exception:  # not an image at all
        return None


def _parse_metadata(value: Any) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise BadRow("wrong_type", "metadata is not JSON") from exc
        if isinstance(parsed, dict):
            return parsed
    raise BadRow("wrong_type", "metadata must be an object")


def record_from_row(row: Any, key: str, base_dir: Path) -> dict:
    """Turn one user row into a schema record.

    Args:
        row: the parsed row (must be a JSON object / dict).
        key: fallback id key (``file:line``) when the row has no ``id``, ``url`` or ``title``.
        base_dir: folder that relative image paths are resolved against.

    Raises:
        BadRow: the row is unusable; ``reason`` says why.
    """
    if not isinstance(row, dict):
        raise BadRow("wrong_type", "row is not an object")
    for name in _TEXT_FIELDS:
        if row.get(name) is not None and not isinstance(row[name], str):
            raise BadRow("wrong_type", f"{name} must be a string")
    text, caption = (row.get("text") or "").strip(), (row.get("caption") or "").strip() or None
    image = (row.get("image") or "").strip() or None
    if len(text) > get_settings().max_text_chars:
        raise BadRow("too_long", f"text over {get_settings().max_text_chars} characters")
    if not text and not (image and caption):
        raise BadRow("no_text", "no text (and no captioned image)")
    if image:
        path = safe_image_path(image, base_dir)
        check_image(path)
        image = str(path)
    title = (row.get("title") or "").strip() or (caption or text)[:80]
    metadata = _parse_metadata(row.get("metadata")) | {k: v for k, v in row.items() if k not in COLUMNS}
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise BadRow("wrong_type", "metadata is not JSON-serialisable") from exc
    return make_record(
        (row.get("source") or SOURCE).strip() or SOURCE,
        row.get("id") or row.get("url") or row.get("title") or key,
        title=title, text=text, url=row.get("url"), license=row.get("license"), image=image,
        caption=caption, metadata=metadata,
    )


def read_jsonl(path: Path, skipped: Counter) -> Iterator[dict]:
    """Records from a JSONL file (one object per line; blank lines ignored)."""
    def bad_json(line_no: int, error) -> None:
        skipped["bad_json"] += 1

    for line_no, row in iter_jsonl(path, on_error=bad_json):
        try:
            yield record_from_row(row, f"{path.name}:{line_no}", path.parent)
        except BadRow as exc:
            skipped[exc.reason] += 1


def read_parquet(path: Path, skipped: Counter) -> Iterator[dict]:
    """Records from a Parquet file, read in batches (bounded memory)."""
    import pyarrow.parquet as pq

    row_no = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=2048):
        for row in batch.to_pylist():
            row_no += 1
            try:
                yield record_from_row(row, f"{path.name}:{row_no}", path.parent)
            except BadRow as exc:
                skipped[exc.reason] += 1


def _sidecar(image: Path) -> dict | None:
    txt, js = image.with_suffix(".txt"), image.with_suffix(".json")
    if js.exists():
        row = json.loads(js.read_text(encoding="utf-8"))
        if not isinstance(row, dict):
            raise BadRow("wrong_type", f"{js} is not an object")
        return row
    if txt.exists():
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
        caption = lines[0].strip() if lines else ""
        return {"caption": caption, "text": "\n".join(lines[1:]).strip() or caption}
    return None


def read_image_folder(folder: Path, skipped: Counter) -> Iterator[dict]:
    """Records for the captioned images under ``folder`` (recursively, sorted by path)."""
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            row = _sidecar(image)
            if row is None:
                raise BadRow("no_caption", f"no caption sidecar for {image}")
            # The file found here, as a path inside the folder (a sidecar cannot point elsewhere).
            row = {"id": str(image.relative_to(folder)), "category": image.parent.name, **row,
                   "image": str(image.relative_to(folder))}
            yield record_from_row(row, str(image.relative_to(folder)), folder)
        except json.JSONDecodeError:
            skipped["bad_json"] += 1
        except BadRow as exc:
            skipped[exc.reason] += 1


def read_user_data(path: Path, skipped: Counter) -> Iterator[dict]:
    """Dispatch on what ``path`` is: a ``.jsonl``/``.json`` file, a ``.parquet`` file, or a folder.

    A folder holding JSONL/Parquet files is read file by file; otherwise it is an image folder.

    Raises:
        NotFound: ``path`` does not exist.
        InputError: an unsupported file type.
    """
    if not path.exists():
        raise NotFound(f"no such file or folder: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in {".jsonl", ".parquet"})
        if not files:
            yield from read_image_folder(path, skipped)
        for file in files:
            yield from read_user_data(file, skipped)
    elif path.suffix.lower() in {".jsonl", ".json"}:
        yield from read_jsonl(path, skipped)
    elif path.suffix.lower() == ".parquet":
        yield from read_parquet(path, skipped)
    else:
        raise InputError(f"unsupported input {path.name!r}: use .jsonl, .parquet or an image folder")
