"""The ``/v1/search`` and ``/v1/ask`` request bodies and image decoding: one contract for the Serve app
(``serving/``) and the edge server (``edge/``)."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from ray_app.errors import InputError


class InvalidImage(InputError):
    """The ``image`` field is neither base64 nor a base64 ``data:`` URL (400)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if "\x00" in value:  # no text column or search in Postgres can hold one
        raise ValueError("must not contain NUL characters")
    return value.strip()


def strict_bool(value):
    """A JSON boolean, or ``"true"``/``"false"`` (a multipart form sends text); anything else is refused (422)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("must be a boolean (true or false)")


FairExposure = Literal["gender", "region", "era"]
FAIR_EXPOSURE_HELP = ("Re-rank the people among the results for this attribute (annotated from their wiki "
                      "biographies) so that each group gets exposure in proportion to the candidates: the bias "
                      "audit's mitigation (ray_app.bias.exposure, weight 0.5; docs/rai/README.md). Default: off.")


class SearchRequest(BaseModel):
    query: str = Field(..., min_length=1, max_length=2000, description="What to look for.")
    k: int = Field(5, ge=1, le=50, description="Results to return.")
    mode: Literal["hybrid", "vector", "text"] = Field("hybrid", description="Ranking: both fused (the frozen fusion), vector, or BM25 full text.")
    sources: list[str] | None = Field(None, description="Only documents from these sources.")
    fair_exposure: FairExposure | None = Field(None, description=FAIR_EXPOSURE_HELP)

    _strip = field_validator("query")(not_blank)


class AskRequest(BaseModel):
    question: str = Field(..., min_length=1, max_length=2000, description="The question.")
    image: str | None = Field(None, description="Optional image: base64 or a data URL (PNG, JPEG, GIF, WebP).")
    k: int = Field(5, ge=1, le=20, description="Passages to retrieve.")
    max_new_tokens: int | None = Field(None, ge=1, le=2048, description="Answer length limit (capped by the server).")
    stream: bool = Field(False, description="Server-sent events: meta, token..., done.")
    explain: bool = Field(False, description="Add `explanation`: per answer sentence the passages ranked by "
                                             "ablation, and an image saliency map when an image is sent (costs "
                                             "`timings_ms.explain_ms`).")
    fair_exposure: FairExposure | None = Field(None, description=FAIR_EXPOSURE_HELP.replace("results", "passages"))

    _strip = field_validator("question")(not_blank)
    _explain = field_validator("explain", mode="before")(strict_bool)


def decode_image(value: str) -> bytes:
    """Bytes of a base64 string or ``data:image/...;base64,`` URL.

    Raises:
        InvalidImage: a data URL that is not base64, a remote URL (never fetched), or invalid base64.
    """
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if ";base64" not in header:
            raise InvalidImage("image data URLs must be base64-encoded (data:image/png;base64,...)", "invalid_image_url")
    elif value.startswith(("http://", "https://")):
        raise InvalidImage("remote image URLs are not fetched; send the image as a data URL", "invalid_image_url")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"the image is not valid base64: {exc}", "invalid_base64") from exc
