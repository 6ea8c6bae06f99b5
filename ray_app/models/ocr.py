"""OCR with Tesseract 5 (Debian ``tesseract-ocr``) through ``pytesseract``."""

from __future__ import annotations

import shutil

from ray_app.models.errors import ModelNotAvailable


def tesseract_available() -> bool:
    return shutil.which("tesseract") is not None


def ocr_image(image, lang: str = "eng", timeout_s: float = 10.0) -> str:
    """Return the text Tesseract reads in a PIL image, whitespace-normalised ('' when none).

    Raises:
        ModelNotAvailable: Tesseract is not installed (apt-get install tesseract-ocr).
    """
    if not tesseract_available():
        raise ModelNotAvailable("Tesseract is not installed: apt-get install tesseract-ocr (or run `make setup`)")
    import pytesseract

    text = pytesseract.image_to_string(image.convert("RGB"), lang=lang, timeout=timeout_s)
    return " ".join(text.split())
