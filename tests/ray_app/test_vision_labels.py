"""Honest labels: concrete names, temperature calibration, ECE, the "sure" threshold, and the not-identified reply."""

from __future__ import annotations

import numpy as np
import pytest

from ray_app.ask.retrieval import build_query, confident_labels, image_context, unidentified_image_reply
from ray_app.vision.labels import (
    NEVER_SURE,
    LabelCalibration,
    choose_threshold,
    concrete_name,
    expected_calibration_error,
    fit_temperature,
    label_entries,
    read_calibration,
    softmax,
    write_calibration,
)


def test_concrete_names_drop_articles_and_punctuation():
    assert concrete_name("A frog.") == "frog"
    assert concrete_name("An  orange tabby cat!") == "orange tabby cat"
    assert concrete_name("The Moon") == "Moon"
    assert concrete_name("Albert Einstein") == "Albert Einstein"
    assert concrete_name("A") == "A"  # nothing left after the article: keep the title
    names, cats = label_entries([("A frog.", "animals"), ("Frog", "test"), ("Moon", None), ("  ", "x")])
    assert names == ["frog", "Moon"] and cats == ["animals", None]  # first spelling (and its category) kept


def test_fitted_temperature_recovers_the_one_that_made_the_data():
    rng = np.random.default_rng(0)
    sims = rng.uniform(-0.2, 0.6, size=(4000, 30))
    true_t = 0.08
    probs = softmax(sims, true_t)
    targets = np.array([rng.choice(30, p=p) for p in probs])
    fitted = fit_temperature(sims, targets)
    assert 0.065 < fitted < 0.1
    confidence, correct = softmax(sims, fitted).max(1), softmax(sims, fitted).argmax(1) == targets
    assert expected_calibration_error(confidence, correct)["ece"] < 0.03
    # The same scores at a far too low temperature are overconfident: a large ECE.
    cold = softmax(sims, 0.005)
    assert expected_calibration_error(cold.max(1), cold.argmax(1) == targets)["ece"] > 0.3


def test_ece_bins_and_threshold():
    confidence = np.array([0.95, 0.9, 0.85, 0.3, 0.2, 0.1])
    correct = np.array([True, True, False, False, False, True])
    result = expected_calibration_error(confidence, correct, bins=2)
    # bin [0, .5]: mean conf 0.2, accuracy 1/3; bin (.5, 1]: mean conf 0.9, accuracy 2/3
    assert result["ece"] == pytest.approx(0.5 * abs(0.2 - 1 / 3) + 0.5 * abs(0.9 - 2 / 3))
    assert [b["n"] for b in result["bins"]] == [3, 3]
    assert choose_threshold(confidence, correct, precision=0.6, min_samples=2) == 0.85  # top 3: 2/3 right
    assert choose_threshold(confidence, correct, precision=1.0, min_samples=2) == 0.9
    assert choose_threshold(confidence, correct, precision=1.0, min_samples=5) == NEVER_SURE


def test_calibration_file_round_trip(tmp_path):
    assert read_calibration(tmp_path) == LabelCalibration() and not read_calibration(None).fitted
    write_calibration(tmp_path, LabelCalibration(temperature=0.02, threshold=0.4, fitted=True, ece=0.03))
    got = read_calibration(tmp_path)
    assert (got.temperature, got.threshold, got.fitted, got.ece) == (0.02, 0.4, True, 0.03)


UNSURE = {"sure": False, "candidates": ["frog", "toad", "lizard"],
          "labels": [{"label": "frog", "score": 0.4}, {"label": "toad", "score": 0.3}, {"label": "lizard", "score": 0.1}],
          "similar_images": [{"score": 0.7, "caption": "A frog."}]}


def test_an_unidentified_picture_gets_a_plain_reply_not_a_guess():
    reply = unidentified_image_reply("What is this animal and where does it live?", UNSURE)
    assert reply == ("I could not identify the picture. It might be frog, toad or lizard, but I am not sure; "
                     "ask again naming what it shows.")
    assert confident_labels(UNSURE) == []  # unsure labels never steer retrieval or the prompt
    assert image_context(UNSURE) == "the picture could not be identified"
    # A question that does not point at the picture is answered as usual.
    assert unidentified_image_reply("How do frogs breathe?", UNSURE) is None
    assert unidentified_image_reply("What is this?", {**UNSURE, "sure": True}) is None
    # A close stored image does not overrule "not sure" (the calibrated labels already weighed it; a weak tower
    # finds every picture close), and its caption is not offered to retrieval or the prompt either.
    near = {**UNSURE, "similar_images": [{"score": 0.95, "caption": "A frog."}]}
    assert unidentified_image_reply("What is this?", near) is not None
    assert "A frog." not in build_query("What is this?", near) and "looks like" not in image_context(near)
    assert "A frog." in build_query("What is this?", {**near, "sure": True})
    # Vision output without the field (the edge runtime, older servers) keeps the old behaviour.
    assert unidentified_image_reply("What is this?", {"labels": UNSURE["labels"]}) is None


def test_an_exact_stored_copy_names_the_picture_alone():
    """A zero-shot guess beside an exact copy's name (a random tower's "Fish" at 0.48 beside the frog stamp)
    would pull another animal's passages into the prompt: only the copy's names steer retrieval."""
    vision = {"sure": True, "labels": [{"label": "frog", "score": 1.0, "source": "same_image"},
                                       {"label": "Fish", "score": 0.48, "source": "zero_shot"}],
              "similar_images": [{"score": 1.0, "caption": "A frog."}]}
    assert confident_labels(vision) == ["frog"]
    assert build_query("What is this?", vision) == "What is this? frog A frog."
    assert image_context(vision) == "it shows: frog; it looks like: A frog."
    zero_shot = {"sure": True, "labels": [{"label": "Fish", "score": 0.48, "source": "zero_shot"},
                                          {"label": "Moon", "score": 0.2, "source": "zero_shot"}]}
    assert confident_labels(zero_shot) == ["Fish"]


def test_near_stored_neighbours_name_the_picture_and_far_ones_leave_it_to_zero_shot():
    from ray_app.vision.labels import label_probabilities

    text_sims = np.array([[0.30, 0.32, 0.10, 0.0]] * 2)  # zero-shot slightly prefers label 1
    cal = LabelCalibration(temperature=0.05, neighbour_temperature=0.02, neighbour_floor=0.8)
    near = label_probabilities(text_sims[:1], np.array([[0.97, 0.6]]), np.array([[0, 2]]), cal)[0]
    far = label_probabilities(text_sims[1:], np.array([[0.55, 0.5]]), np.array([[0, 2]]), cal)[0]
    assert near.argmax() == 0 and near[0] > 0.99  # a near copy of a stored "label 0" picture
    assert far.argmax() == 1 and abs(far.sum() - 1) < 1e-9  # neighbours below the floor barely count
    zero_shot_only = label_probabilities(text_sims[:1], None, None, cal)[0]
    np.testing.assert_allclose(zero_shot_only, softmax(text_sims[:1], 0.05)[0])
    # A neighbour whose title is not in the vocabulary gives its share back to the rest.
    unknown = label_probabilities(text_sims[:1], np.array([[0.97]]), np.array([[-1]]), cal)[0]
    np.testing.assert_allclose(unknown, zero_shot_only)
