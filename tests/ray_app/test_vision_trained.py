"""The trained image encoder on pictures it has never seen byte for byte (slow: needs a trained checkpoint).

The checkpoint is ``PRISM_TEST_IMAGE_ENCODER``, else the newest finished ``prism train clip`` run under
``.prism/checkpoints`` (``clip-full`` after ``prism train clip --config training/configs/clip/full.yaml``),
else the demo preset is trained here (about 10 minutes on 2 cores). Its ``calibration.json`` comes from
``prism eval image-encoder`` when that has run; otherwise this module fits one on the held-out stamps first.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.serving.harness import FROG_PNG, REPO, write_corpus

pytestmark = pytest.mark.slow
DEMO_CONFIG = REPO / "training" / "configs" / "clip" / "demo.yaml"


def _trained_checkpoint(tmp_path_factory) -> Path:
    from ray_app.models.image import CONFIG_NAME, WEIGHTS_NAME
    from ray_app.models.trained import finished_runs

    if os.environ.get("PRISM_TEST_IMAGE_ENCODER"):
        return Path(os.environ["PRISM_TEST_IMAGE_ENCODER"])
    runs = [f for f in finished_runs(REPO / ".prism" / "checkpoints", WEIGHTS_NAME) if (f / CONFIG_NAME).is_file()]
    if runs:
        return runs[0]
    import ray

    from ray_app.raystart import init_ray
    from training.clip import main

    storage = tmp_path_factory.mktemp("clip-demo")
    init_ray(num_cpus=2, configure_logging=False)
    try:
        return Path(main(["--config", str(DEMO_CONFIG), f"run.storage_path={storage}"])["final"])
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from ray_app.evaluation.image_encoder import ImageEncoderEvalConfig, eval_image_encoder
    from ray_app.vision.labels import CALIBRATION_NAME

    folder = _trained_checkpoint(tmp_path_factory)
    if not (folder / CALIBRATION_NAME).is_file():
        eval_image_encoder(ImageEncoderEvalConfig(checkpoint=folder, out=tmp_path_factory.mktemp("report")))
    return folder


def mirrored_frog(scale: float = 0.75) -> bytes:
    """The frog stamp mirrored and scaled to ``scale`` of its size, centred on a white canvas of the original size."""
    frog = Image.open(FROG_PNG).convert("RGBA")
    small = ImageOps.mirror(frog).resize((round(frog.width * scale), round(frog.height * scale)), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", frog.size, (255, 255, 255, 255))
    canvas.alpha_composite(small, ((frog.width - small.width) // 2, (frog.height - small.height) // 2))
    buf = io.BytesIO()
    canvas.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def test_mirrored_scaled_frog_is_a_frog_among_the_demo_vocabulary(checkpoint, text_embedder):
    """Against the demo corpus's 10,000+ concrete names (stamps, photos, wiki titles), as served."""
    from ray_app.evaluation.image_encoder import demo_label_rows
    from ray_app.models.image import ImageEncoder
    from ray_app.vision.analyzer import LabelIndex, load_image
    from ray_app.vision.data import split_stamps
    from ray_app.vision.labels import label_entries, read_calibration

    encoder = ImageEncoder(checkpoint)
    train, heldout = split_stamps()
    names, categories = label_entries(demo_label_rows(train + heldout))
    index = LabelIndex(names, text_embedder, categories=categories)
    vector = encoder.embed([load_image(mirrored_frog())])[0]
    top = index.top(vector, 5, read_calibration(checkpoint).temperature)
    assert "frog" in top[0]["label"].lower(), top
    assert top[0]["category"] in {"animals", None} or "frog" in top[0]["label"].lower()


def test_served_labels_for_the_mirrored_frog_and_an_unrelated_picture(checkpoint, store, text_embedder):
    """The vision step on a real store: the frog's top label is a frog (no stored copy has these bytes); random
    noise is not identified (sure: false) and gets candidates instead of a name."""
    from ray_app.models.image import ImageEncoder
    from ray_app.vision.analyzer import VisionAnalyzer

    encoder = ImageEncoder(checkpoint)
    write_corpus(store, text_embedder, encoder)
    analyzer = VisionAnalyzer(store, text_embedder, encoder)
    frog = analyzer.analyze(mirrored_frog(), ocr=False).public()
    assert frog["labels"][0]["source"] in {"zero_shot", "similar_images"}, frog["labels"]  # not a stored copy
    assert "frog" in frog["labels"][0]["label"].lower() and frog["sure"] is True, frog["labels"]
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    unrelated = analyzer.analyze(buf.getvalue(), ocr=False).public()
    assert unrelated["sure"] is False and len(unrelated["candidates"]) == 3, unrelated["labels"]
