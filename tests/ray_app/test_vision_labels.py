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


def test_threshold_counts_unrelated_pictures_as_wrong_and_caps_their_share():
    named = np.array([0.9, 0.8, 0.7, 0.6, 0.5])  # every named picture's top label is right
    noise = np.array([0.65, 0.3, 0.2, 0.1])  # pictures of nothing: no label is right
    confidence = np.concatenate([named, noise])
    correct = np.concatenate([np.ones(5, bool), np.zeros(4, bool)])
    unrelated = np.concatenate([np.zeros(5, bool), np.ones(4, bool)])
    # Without the unrelated group the lowest score would do; with it, the 0.65 noise picture must stay below.
    assert choose_threshold(named, np.ones(5, bool), precision=0.8, min_samples=2) == 0.5
    assert choose_threshold(confidence, correct, precision=0.8, min_samples=2, unrelated=unrelated,
                            max_unrelated_sure=0.0) == 0.7
    # One unrelated picture in four may be sure: 5 right of 6 at 0.5 meets 80 %, but not 90 %.
    assert choose_threshold(confidence, correct, precision=0.8, min_samples=2, unrelated=unrelated,
                            max_unrelated_sure=0.25) == 0.5
    assert choose_threshold(confidence, correct, precision=0.9, min_samples=2, unrelated=unrelated,
                            max_unrelated_sure=0.25) == 0.7
    # An unrelated picture marked right by mistake still counts as wrong.
    assert choose_threshold(confidence, np.ones(9, bool), precision=0.8, min_samples=2, unrelated=unrelated,
                            max_unrelated_sure=0.0) == 0.7
    # Every unrelated picture scores above every named one: never sure.
    assert choose_threshold(np.concatenate([named, noise + 1]), correct, precision=0.8, min_samples=2,
                            unrelated=unrelated, max_unrelated_sure=0.0) == NEVER_SURE


def test_threshold_holds_novel_pictures_to_their_own_bound_on_sure_wrong_labels():
    stored = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35])  # near copies of stored pictures: named right
    novel = np.array([0.62, 0.3, 0.2, 0.1])  # nothing stored shows them: a neighbour's name, wrong
    confidence = np.concatenate([stored, novel])
    correct = np.concatenate([np.ones(8, bool), np.zeros(4, bool)])
    is_novel = np.concatenate([np.zeros(8, bool), np.ones(4, bool)])

    def threshold(right, cap, groups=is_novel):
        return choose_threshold(confidence, right, precision=0.85, min_samples=2, novel=groups, max_novel_wrong_sure=cap)

    # Pooled, 8 right of 9 at 0.35 meets 85 % although a novel picture (1 in 4) is sure and wrong.
    assert threshold(correct, 1.0, groups=None) == 0.35 and threshold(correct, 0.25) == 0.35
    # Held to none sure and wrong, the 0.62 novel picture must stay below: only 0.7 and up.
    assert threshold(correct, 0.0) == 0.7
    # A novel picture that is named right (a stored picture of the same name) is no breach.
    assert threshold(np.ones(12, bool), 0.0) == 0.1


def test_threshold_keeps_tied_scores_on_one_side():
    confidence = np.array([0.9, 0.5, 0.5, 0.5])
    correct = np.array([True, True, False, False])
    # At 0.5 all three tied pictures are sure (2 right of 4): the first of them alone (2 of 2) does not count.
    assert choose_threshold(confidence, correct, precision=0.6, min_samples=1) == 0.9
    assert choose_threshold(confidence, correct, precision=0.5, min_samples=1) == 0.5


def test_calibration_file_round_trip(tmp_path):
    assert read_calibration(tmp_path) == LabelCalibration() and not read_calibration(None).fitted
    write_calibration(tmp_path, LabelCalibration(temperature=0.02, threshold=0.4, fitted=True, ece=0.03))
    got = read_calibration(tmp_path)
    assert (got.temperature, got.threshold, got.fitted, got.ece) == (0.02, 0.4, True, 0.03)
    assert got.views == ("identity",)  # files written before test-time views read as none
    write_calibration(tmp_path, LabelCalibration(views=("identity", "flip")))
    assert read_calibration(tmp_path).views == ("identity", "flip")
    write_calibration(tmp_path, LabelCalibration(views=("identity", "sideways")))
    with pytest.raises(ValueError, match="calibration.json.*sideways"):
        read_calibration(tmp_path)


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


def test_unrelated_pictures_are_seeded_and_of_every_kind():
    from ray_app.vision.data import UNRELATED_KINDS, unrelated_picture, unrelated_pictures

    pictures = unrelated_pictures(2, seed=5)
    again = unrelated_pictures(2, seed=5)
    assert [n for n, _ in pictures] == [f"unrelated/{k}/{i}" for k in UNRELATED_KINDS for i in range(2)]
    for (name, image), (_, same) in zip(pictures, again, strict=True):
        assert image.mode == "RGB" and 64 <= min(image.size) and max(image.size) <= 256, name
        assert np.array_equal(np.asarray(image), np.asarray(same)), name
    pixels = dict(pictures)
    assert len(np.unique(np.asarray(pixels["unrelated/solid/0"]).reshape(-1, 3), axis=0)) == 1
    assert len(np.unique(np.asarray(pixels["unrelated/checkerboard/0"]).reshape(-1, 3), axis=0)) <= 2
    assert np.asarray(pixels["unrelated/noise/0"]).std() > 40
    assert not np.array_equal(np.asarray(unrelated_pictures(1, seed=6)[0][1]), np.asarray(pixels["unrelated/noise/0"]))
    with pytest.raises(ValueError, match="unknown unrelated picture kind"):
        unrelated_picture("sunset", np.random.default_rng(0))


def test_a_neighbourhood_gate_keeps_pictures_of_nothing_from_being_sure():
    from ray_app.vision.analyzer import is_sure
    from ray_app.vision.labels import fit_sure_rule, sure_score

    rng = np.random.default_rng(0)
    # Named pictures lie among many similar stored images; pictures of nothing have one close stored image (a blank
    # stamp) that makes their top score high, and nothing else near.
    named_nn = np.sort(rng.uniform(0.7, 0.95, (40, 10)), axis=1)[:, ::-1]
    blank_nn = np.concatenate([np.full((20, 1), 0.99), rng.uniform(0.3, 0.6, (20, 9))], axis=1)
    top = np.concatenate([rng.uniform(0.4, 0.9, 40), np.full(20, 0.96)])
    correct = np.concatenate([np.ones(40, bool), np.zeros(20, bool)])
    unrelated = np.concatenate([np.zeros(40, bool), np.ones(20, bool)])
    nn = np.concatenate([named_nn, blank_nn])
    gate, threshold, candidates = fit_sure_rule(top, correct, nn, unrelated)
    assert candidates[0]["min_neighbourhood"] is None and candidates[0]["threshold"] == NEVER_SURE  # no gate: never sure
    assert gate is not None and blank_nn.mean(1).max() < gate <= named_nn.mean(1).min()
    assert threshold == pytest.approx(top[:40].min())  # every named picture is sure, no picture of nothing
    sure = sure_score(top, nn, gate) >= threshold
    assert sure[:40].all() and not sure[40:].any()
    cal = LabelCalibration(threshold=threshold, min_neighbourhood=gate)
    label = [{"label": "frog", "score": 0.96, "source": "similar_images"}]
    assert is_sure(label, cal, named_nn[0]) and not is_sure(label, cal, blank_nn[0])
    assert not is_sure(label, cal, [])  # no stored images at all: nothing vouches for the picture
    assert is_sure([{**label[0], "source": "same_image"}], cal, [])  # an exact stored copy is always sure
    assert is_sure(label, LabelCalibration(threshold=0.5), [])  # without a gate only the score counts
