"""Image validation (magic bytes, byte and pixel limits, truncation) and the analyzer on a real store."""

import io

import pytest
from PIL import Image

from ray_app.settings import Settings
from ray_app.vision.analyzer import ImageRejected, LabelIndex, VisionAnalyzer, load_image, sniff_format
from tests.serving.harness import FROG_PNG, STAMP_IMAGES, build_random_encoder, png_bytes, write_corpus


def _rejected(data: bytes, settings: Settings | None = None) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        load_image(data, settings or Settings())
    return info.value


def test_formats_by_magic_bytes():
    assert sniff_format(png_bytes()) == "PNG"
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    assert sniff_format(buf.getvalue()) == "JPEG"
    assert sniff_format(b"%PDF-1.7 not an image") is None
    assert _rejected(b"hello, I am text").code == "unsupported_media_type"
    assert _rejected(b"<svg xmlns='http://www.w3.org/2000/svg'/>").code == "unsupported_media_type"


def test_limits_and_truncation():
    data = png_bytes((100, 100))
    assert load_image(data).size == (100, 100)
    too_many = _rejected(data, Settings(max_image_pixels=5_000))
    assert too_many.code == "image_too_many_pixels"
    assert _rejected(data, Settings(max_image_bytes=len(data) - 1)).code == "image_too_large"
    truncated = _rejected(FROG_PNG.read_bytes()[:1500])
    assert truncated.code == "invalid_image"
    assert _rejected(b"").code == "empty_image"


def test_label_index_ranks_by_text_space(text_embedder):
    index = LabelIndex(["frog", "Frog", "rocket", "coffee"], text_embedder)
    assert index.labels == ["frog", "rocket", "coffee"]
    top = index.top(text_embedder.embed(["a small green frog"])[0], k=2)
    assert top[0]["label"] == "frog" and abs(sum(x["score"] for x in index.top(index.vectors[0], k=3)) - 1) < 1e-3


def test_analyzer_on_a_random_encoder(store, text_embedder, tmp_path):
    from ray_app.models.image import ImageEncoder

    encoder = ImageEncoder(build_random_encoder(tmp_path / "enc"))
    ids = write_corpus(store, text_embedder, encoder)
    analyzer = VisionAnalyzer(store, text_embedder, encoder)
    labels = analyzer.labels.labels  # config labels + corpus titles, case-insensitively unique
    assert "bluegroper" in labels and "frog" in labels and "Frog" not in labels
    result = analyzer.analyze(FROG_PNG.read_bytes())
    # A random tower still maps the same pixels to the same vector: the stored stamp is the nearest image.
    assert result.similar_images[0]["id"] == ids["images"]["frog"]
    assert result.similar_images[0]["score"] > 0.999
    assert len(result.labels) == 5 and (result.width, result.height) == (200, 136)
    # The upload is byte-for-byte a stored stamp: its title and category lead, zero-shot labels follow.
    assert [(x["label"], x["source"]) for x in result.labels[:2]] == [("frog", "same_image"), ("animals", "same_image")]
    assert {x["source"] for x in result.labels[2:]} == {"zero_shot"}
    buf = io.BytesIO()
    Image.open(STAMP_IMAGES["tiger"]).convert("RGB").save(buf, format="JPEG")  # re-encoded: not a stored copy
    tiger = analyzer.analyze(buf.getvalue())
    assert {x["source"] for x in tiger.labels} == {"zero_shot"}
    assert analyzer.encoder_version.split("/")[-1].startswith("enc@")
    with pytest.raises(ImageRejected):
        analyzer.analyze(b"not an image")
