"""Explanations (issue 22 item 1): passage attribution by ablation with the real SmolLM2, and occlusion saliency
of an open_clip image tower on a picture whose object sits in a known corner."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from ray_app.ask.explain import explained_label
from ray_app.llm.attribution import attribute_passages, split_sentences
from ray_app.llm.prompting import Passage

PASSAGES = [
    Passage(1, "Tiger", "The tiger is a large cat native to Asia with orange fur and black stripes. It lives in "
                        "forests, grasslands and mangrove swamps.", doc_id="d1", chunk_id="c-tiger"),
    Passage(2, "Zorblat", "The zorblat is a small purple lizard that lives only on the island of Vellmora. It eats "
                          "moths at night.", doc_id="d2", chunk_id="c-zorblat"),
    Passage(3, "Coffee", "Coffee is a beverage brewed from roasted coffee beans. It is dark, bitter and slightly "
                         "acidic.", doc_id="d3", chunk_id="c-coffee"),
    Passage(4, "Moon", "The Moon is Earth's only natural satellite. It orbits Earth at an average distance of "
                       "384,400 kilometres.", doc_id="d4", chunk_id="c-moon"),
]
ANSWER = "The zorblat is a small purple lizard [2]. It lives only on the island of Vellmora [2]."


def test_split_sentences_covers_the_answer():
    sentences = split_sentences("Frogs live in ponds [1]. They eat insects!\nTadpoles hatch from eggs [2].")
    assert [s.text for s in sentences] == ["Frogs live in ponds [1].", "They eat insects!", "Tadpoles hatch from eggs [2]."]
    assert sentences[0].start == 0 and sentences[0].end == sentences[1].start
    assert split_sentences("  ") == []


def test_explained_label_is_the_top_label_or_the_nearest_candidate():
    assert explained_label({"sure": True, "labels": [{"label": "frog"}, {"label": "toad"}]}) == "frog"
    assert explained_label({"sure": False, "labels": [{"label": "cat"}], "candidates": ["cat", "lion"]}) == "cat"
    assert explained_label({"sure": None, "labels": []}) is None
    assert explained_label(None) is None


@pytest.fixture(scope="module")
def llm():
    from ray_app.models.llm import load_llm

    return load_llm(adapter="")  # the served precision (bf16 where the CPU has it), no adapter


def test_the_passage_holding_the_answer_ranks_first(llm):
    """Only passage [2] says what a zorblat is and where it lives: removing it must hurt every sentence most."""
    result = attribute_passages(llm, "What is a zorblat and where does it live?", PASSAGES, None, ANSWER)
    assert [s["sentence"] for s in result["sentences"]] == [
        "The zorblat is a small purple lizard [2].", "It lives only on the island of Vellmora [2]."]
    for sentence in result["sentences"]:
        ranked = sentence["passages"]
        assert [p["n"] for p in ranked][0] == 2 and ranked[0]["chunk_id"] == "c-zorblat"
        assert sorted(p["n"] for p in ranked) == [1, 2, 3, 4]
        assert ranked[0]["score"] > ranked[1]["score"] + 1.0  # by more than a nat over the runner-up
    assert result["passages_scored"] == 4 and result["sentences_total"] == 2
    assert result["forward_passes"] == 2  # the shared prefix once, then the 5 prompts in one batch


def test_attribution_is_bounded(llm):
    many = [Passage(i, f"Note {i}", f"Fact number {i} is about item {i}.", chunk_id=f"c{i}") for i in range(1, 11)]
    answer = " ".join(f"Item {i} has fact {i} [{i}]." for i in range(1, 9))
    result = attribute_passages(llm, "List the facts.", many, None, answer, max_passages=3, max_sentences=2)
    assert len(result["sentences"]) == 2 and result["sentences_total"] == 8
    assert all(len(s["passages"]) == 3 for s in result["sentences"]) and result["passages_scored"] == 3
    assert attribute_passages(llm, "q", [], None, answer)["sentences"] == []


# Saliency: a tiny random open_clip tower cannot name anything, so the target is made to depend on a known corner:
# the picture holds a red square (top left of what the encoder sees) and a blue one (bottom right); the target
# vector is the tower's own embedding of the picture with only one of them. Hiding that square lowers the cosine,
# hiding the other raises it, hiding grey background changes little: the map's mass must sit on the target square.

SIZE = (128, 96)  # wider than tall: the encoder sees the centre 96 x 96, so the map's placement is checked too
MEAN_GREY = (123, 117, 104)  # open_clip's normalisation mean: the occlusion baseline


def picture(red: bool = True, blue: bool = True):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", SIZE, MEAN_GREY)
    draw = ImageDraw.Draw(image)
    if red:
        draw.rectangle([18, 4, 54, 40], fill=(220, 20, 20))  # top left of the centre crop (x 16..112)
    if blue:
        draw.rectangle([74, 56, 110, 92], fill=(20, 40, 220))  # bottom right of it
    return image


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    from ray_app.models.image import ImageEncoder
    from tests.serving.harness import build_random_encoder

    return ImageEncoder(build_random_encoder(tmp_path_factory.mktemp("tower")))


def alpha_of(data_url: str) -> np.ndarray:
    from PIL import Image

    assert data_url.startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    assert png.mode == "RGBA"
    return np.asarray(png)[..., 3].astype(np.float64)


@pytest.mark.parametrize(("target", "corner"), [("red", "top_left"), ("blue", "bottom_right")])
def test_saliency_mass_sits_on_the_target_corner(tower, target, corner):
    from ray_app.vision.saliency import explain_image

    vector = tower.embed([picture(red=target == "red", blue=target == "blue")])[0]
    out = explain_image(tower, picture(), vector, "square")
    alpha = alpha_of(out["image_saliency"])
    assert alpha.shape == (72, 96)  # the picture's aspect ratio, longest side 96
    assert alpha[:, :12].sum() == 0 and alpha[:, -12:].sum() == 0  # outside the crop the encoder sees: clear
    h, w = alpha.shape
    quadrant = alpha[: h // 2, : w // 2] if corner == "top_left" else alpha[h // 2 :, w // 2 :]
    assert quadrant.sum() / alpha.sum() > 0.6
    assert out["evaluations"] == 49 and out["label"] == "square" and 0.5 < out["cosine"] <= 1.0


def trained_encoder():
    """A trained image encoder when this machine has one (``PRISM_TEST_IMAGE_ENCODER``, else ``.prism``'s newest)."""
    import os
    from pathlib import Path

    from ray_app.models.image import CONFIG_NAME, WEIGHTS_NAME
    from tests.serving.harness import REPO

    checkpoints = REPO / ".prism" / "checkpoints"
    for folder in (os.environ.get("PRISM_TEST_IMAGE_ENCODER"), checkpoints / "clip-full" / "final",
                   checkpoints / "clip-demo" / "final"):
        if folder and (Path(folder) / CONFIG_NAME).is_file() and (Path(folder) / WEIGHTS_NAME).is_file():
            return Path(folder)
    return None


@pytest.mark.skipif(trained_encoder() is None, reason="no trained image encoder (prism train clip) on this machine")
@pytest.mark.parametrize("corner", ["top_left", "bottom_right"])
def test_trained_encoder_finds_the_frog_for_the_label_frog(corner):
    """The trained tower against the MiniLM vector of "frog": the Tux Paint frog pasted in one corner of a white
    canvas carries most of the map."""
    from PIL import Image

    from ray_app.models.image import ImageEncoder
    from ray_app.models.text import get_text_embedder
    from ray_app.vision.saliency import explain_image
    from tests.serving.harness import FROG_PNG

    if not FROG_PNG.exists():
        pytest.skip("Tux Paint stamps not installed (make setup)")
    frog = Image.open(FROG_PNG).convert("RGBA")
    frog.thumbnail((110, 110))
    canvas = Image.new("RGB", (256, 256), (255, 255, 255))
    canvas.paste(frog, (5, 5) if corner == "top_left" else (251 - frog.width, 251 - frog.height), frog)
    out = explain_image(ImageEncoder(trained_encoder()), canvas, get_text_embedder().embed(["frog"])[0], "frog")
    alpha = alpha_of(out["image_saliency"])
    h, w = alpha.shape
    quadrant = alpha[: h // 2, : w // 2] if corner == "top_left" else alpha[h // 2 :, w // 2 :]
    assert quadrant.sum() / alpha.sum() > 0.5


def test_bench_explain_on_small_data(tmp_path):
    """`prism bench explain` on two held-out questions (and no image encoder in the test home: the image part says
    why it was skipped) writes its JSON and Markdown."""
    from ray_app.benchmarks.explain import main

    result = main(["--questions", "2", "--images", "1", "--out", str(tmp_path), "--json"])
    attribution = result["attribution"]
    assert attribution["answers"] == 2 and attribution["sentences_scored"] >= 2
    assert 0 <= attribution["top1_is_gold_rate"] <= 1 and attribution["forward_passes_mean"] == 2
    assert "skipped" in result["saliency"] or result["saliency"]["images"] == 1
    assert (tmp_path / "explain.json").is_file() and "Passage attribution" in (tmp_path / "explain.md").read_text()
