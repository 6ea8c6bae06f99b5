"""Image validation (magic bytes, byte and pixel limits, truncation) and the analyzer on a real store."""

import io

import numpy as np
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


def test_transparent_pictures_are_read_on_white_as_the_encoder_was_trained():
    """An upload's (and a stored stamp's) transparent pixels become white, whatever colour they hold underneath:
    the frog stamp's hold olive, which ``convert("RGB")`` alone would show the encoder."""
    from ray_app.models.image import to_rgb

    frog = Image.open(FROG_PNG)
    hidden = np.asarray(frog.convert("RGBA"))[..., 3] == 0
    assert hidden.any() and (np.asarray(frog.convert("RGB"))[hidden] != 255).any()
    for image in (to_rgb(frog), load_image(FROG_PNG.read_bytes())):
        assert image.mode == "RGB" and (np.asarray(image)[hidden] == 255).all()
    opaque = np.asarray(frog.convert("RGBA"))[..., 3] == 255
    assert (np.asarray(to_rgb(frog))[opaque] == np.asarray(frog.convert("RGB"))[opaque]).all()
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette))[1, 1].tolist() == [255, 255, 255]
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [200, 0, 0]


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
    labels = analyzer.labels.labels  # the corpus titles as concrete names, case-insensitively unique
    assert "bluegroper" in labels and [x.lower() for x in labels].count("frog") == 1
    assert "animals" not in labels  # categories are a field of each label, not labels of their own
    result = analyzer.analyze(FROG_PNG.read_bytes())
    # A random tower still maps the same pixels to the same vector: the stored stamp is the nearest image.
    assert result.similar_images[0]["id"] == ids["images"]["frog"]
    assert result.similar_images[0]["score"] > 0.999
    assert len(result.labels) == 5 and (result.width, result.height) == (200, 136)
    # The upload is byte-for-byte a stored stamp: its concrete name leads, with its category; zero-shot labels follow.
    first = result.labels[0]
    assert (first["label"].lower(), first["category"], first["source"], first["score"]) == ("frog", "animals", "same_image", 1.0)
    assert {x["source"] for x in result.labels[1:]} == {"zero_shot"}
    assert result.sure is True and result.candidates == []
    buf = io.BytesIO()
    Image.open(STAMP_IMAGES["tiger"]).convert("RGB").save(buf, format="JPEG")  # re-encoded: not a stored copy
    tiger = analyzer.analyze(buf.getvalue())
    assert {x["source"] for x in tiger.labels} == {"zero_shot"}
    assert all("category" in x for x in tiger.labels)
    assert analyzer.encoder_version.split("/")[-1].startswith("enc@")
    with pytest.raises(ImageRejected):
        analyzer.analyze(b"not an image")


def test_below_the_calibrated_threshold_the_analyzer_is_not_sure(store, text_embedder, tmp_path):
    """calibration.json beside the weights sets the temperature and threshold: a low top score gives sure=false,
    the nearest candidates and a note, while the public JSON keeps labels[{label, score}]."""
    from ray_app.models.image import ImageEncoder
    from ray_app.vision.labels import LabelCalibration, write_calibration

    folder = build_random_encoder(tmp_path / "enc")
    write_calibration(folder, LabelCalibration(temperature=1.0, threshold=0.5, fitted=True))
    encoder = ImageEncoder(folder)
    write_corpus(store, text_embedder, encoder)
    analyzer = VisionAnalyzer(store, text_embedder, encoder)
    assert (analyzer.calibration.temperature, analyzer.calibration.threshold) == (1.0, 0.5)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    out = analyzer.analyze(png_bytes_of(noise), ocr=False).public()
    # At temperature 1 over the 13 corpus names no label can reach 0.5: the output says it is not sure.
    assert out["sure"] is False and out["labels"][0]["score"] < 0.5
    assert out["candidates"] == [x["label"] for x in out["labels"][:3]] and len(out["candidates"]) == 3
    assert any(note.startswith("not sure what the picture shows") for note in out["notes"])
    assert all({"label", "score"} <= set(x) for x in out["labels"])
    # An exact stored copy is sure whatever the threshold.
    assert analyzer.analyze(FROG_PNG.read_bytes(), ocr=False).sure is True


def test_the_analyzer_embeds_a_picture_with_its_calibrated_test_time_views(store, text_embedder, tmp_path):
    """calibration.json's ``views`` (chosen by prism eval image-encoder) are how the vision step embeds an upload:
    with identity + flip, a mirrored picture gets the very vector of the unmirrored one."""
    from PIL import ImageOps

    from ray_app.models.image import ImageEncoder
    from ray_app.vision.labels import LabelCalibration, write_calibration

    folder = build_random_encoder(tmp_path / "enc")
    encoder = ImageEncoder(folder)
    write_corpus(store, text_embedder, encoder)
    frog = Image.open(FROG_PNG).convert("RGB")
    plain = VisionAnalyzer(store, text_embedder, encoder).analyze(png_bytes_of(frog), ocr=False)
    assert np.allclose(plain.embedding, encoder.embed([frog])[0], atol=1e-6)  # no views in the file: one vector
    write_calibration(folder, LabelCalibration(views=("identity", "flip")))
    analyzer = VisionAnalyzer(store, text_embedder, encoder)
    assert analyzer.calibration.views == ("identity", "flip")
    mirrored = analyzer.analyze(png_bytes_of(ImageOps.mirror(frog)), ocr=False)
    assert np.allclose(mirrored.embedding, analyzer.analyze(png_bytes_of(frog), ocr=False).embedding, atol=1e-5)
    assert not np.allclose(mirrored.embedding, plain.embedding, atol=1e-3)


def png_bytes_of(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_a_question_about_an_unidentified_picture_is_answered_without_a_guess(store, text_embedder, tmp_path):
    """The ask service with real stages: vision is not sure (a random tower never is), so "what is this?" gets
    "I could not identify the picture" with the candidates, and the LLM is never called (there is none here)."""
    import asyncio

    from ray_app.ask.service import AskService
    from ray_app.ask.stages import CheckOnlyAudit, LocalGenerate, LocalRetrieve, LocalVision
    from ray_app.models.image import ImageEncoder

    encoder = ImageEncoder(build_random_encoder(tmp_path / "enc"))
    write_corpus(store, text_embedder, encoder)
    vision = LocalVision(store, text_embedder)
    vision._analyzer = VisionAnalyzer(store, text_embedder, encoder)
    service = AskService(vision, LocalRetrieve(store, text_embedder), LocalGenerate(llm=None), CheckOnlyAudit(), None)
    service._versions = {"model": "none", "adapter": None}
    noise = Image.fromarray(np.random.default_rng(2).integers(0, 256, (80, 80, 3), dtype=np.uint8))
    done = asyncio.run(service.ask("What is this animal and where does it live?", png_bytes_of(noise)))
    assert done["vision"]["sure"] is False and len(done["vision"]["candidates"]) == 3
    assert done["answer"].startswith("I could not identify the picture. It might be ")
    assert all(c in done["answer"] for c in done["vision"]["candidates"])
