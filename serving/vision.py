"""The ``vision`` deployment: validate an image, label it (zero-shot), OCR it, find similar images."""

from __future__ import annotations

from ray import serve

from ray_app.telemetry.logs import attach_to_serve
from ray_app.telemetry.tracing import stage_span
from ray_app.vision.analyzer import ImageRejected, VisionAnalyzer
from serving.health import check_loaded, check_store, ready_store


@serve.deployment(name="vision", graceful_shutdown_timeout_s=40, graceful_shutdown_wait_loop_s=2)
class VisionDeployment:
    """Loads the image encoder, label vocabulary, OCR and a store connection once per replica."""

    def __init__(self):
        from ray_app.models.text import get_text_embedder
        from ray_app.store import get_store

        attach_to_serve()  # Prism's loggers write through Serve's (JSON, with the request id)
        self.analyzer = VisionAnalyzer(get_store(), get_text_embedder())

    def version(self) -> str | None:
        return self.analyzer.encoder_version

    def check_health(self) -> None:
        """Serve's probe (``serving/health.py``): the analyzer is loaded and the pool open."""
        check_loaded(analyzer=getattr(self, "analyzer", None))
        check_store(self.analyzer.store)

    def ready(self) -> dict:
        """``/readyz``: loaded, and the database answers."""
        self.check_health()
        return ready_store(self.analyzer.store) | {"image_encoder": self.analyzer.encoder_version}

    def analyze(self, data: bytes, traceparent: str | None = None) -> dict:
        """``{"vision": {...}}`` or ``{"error": {"code", "message"}}`` for a rejected image."""
        with stage_span("vision", traceparent) as span:
            try:
                result = self.analyzer.analyze(data)
            except ImageRejected as exc:
                span.set_attribute("prism.rejected", exc.code)
                return {"error": {"code": exc.code, "message": str(exc)}}
            return {"vision": result.public()}

    def saliency(self, data: bytes, label: str) -> dict:
        """The image encoder's occlusion saliency map for ``label`` (``explain: true``), or ``{"error"}``."""
        try:
            return self.analyzer.saliency(data, label)
        except ImageRejected as exc:
            return {"error": {"code": exc.code, "message": str(exc)}}
