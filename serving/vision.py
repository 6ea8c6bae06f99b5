"""The ``vision`` deployment: validate an image, label it (zero-shot), OCR it, find similar images."""

from __future__ import annotations

from ray import serve

from ray_app.vision.analyzer import ImageRejected, VisionAnalyzer


@serve.deployment(name="vision")
class VisionDeployment:
    """Loads the image encoder, label vocabulary, OCR and a store connection once per replica."""

    def __init__(self):
        from ray_app.models.text import get_text_embedder
        from ray_app.store import get_store

        self.analyzer = VisionAnalyzer(get_store(), get_text_embedder())

    def version(self) -> str | None:
        return self.analyzer.encoder_version

    def analyze(self, data: bytes) -> dict:
        """``{"vision": {...}}`` or ``{"error": {"code", "message"}}`` for a rejected image."""
        try:
            result = self.analyzer.analyze(data)
        except ImageRejected as exc:
            return {"error": {"code": exc.code, "message": str(exc)}}
        return {"vision": result.public()}
