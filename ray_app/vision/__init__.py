"""Vision: image validation, zero-shot labels, OCR and similar images; image-encoder data."""
