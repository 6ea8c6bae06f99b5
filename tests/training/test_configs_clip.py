"""Every clip YAML validates against the job's typed config; bad configs fail early with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ray_app.jobconfig import JobConfigError, load_config
from training.clip import ClipJobConfig, main

CONFIG_DIR = Path(__file__).resolve().parents[2] / "training" / "configs" / "clip"


@pytest.mark.parametrize("name", ["smoke", "demo", "full"])
def test_every_preset_validates(name):
    path = CONFIG_DIR / f"{name}.yaml"
    cfg = load_config(ClipJobConfig, path)
    assert cfg.model.embed_dim == 384
    assert cfg.scaling.num_workers >= 1
    assert cfg.run.name == f"clip-{name}"  # $PRISM_HOME/checkpoints/clip-<preset>/final
    vision = cfg.model.vision_cfg()
    assert vision["image_size"] == cfg.model.image_size


def test_all_yaml_files_are_known_presets():
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == ["demo", "full", "smoke"]


def test_dotted_overrides_apply():
    cfg = load_config(ClipJobConfig, CONFIG_DIR / "smoke.yaml", ["train.max_steps=3", "model.timm_model_name=resnet10t"])
    assert cfg.train.max_steps == 3
    assert cfg.model.vision_cfg()["timm_model_name"] == "resnet10t"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.max_stepz=3", "train.max_stepz"),
        ("train.max_steps=many", "train.max_steps"),
        ("scaling.num_workers=0", "scaling.num_workers"),
        ("train.negatives=some", "train.negatives"),
    ],
)
def test_bad_config_fails_before_ray_starts(override, fragment):
    import ray

    with pytest.raises(JobConfigError) as err:
        main(["--config", str(CONFIG_DIR / "smoke.yaml"), override])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)
    assert not ray.is_initialized()


def test_cli_bad_config_is_one_line_exit_2(tmp_path):
    from ray_app.cli import app

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  image_size: 64\n  depth: 3\nrun:\n  name: bad\n")
    result = CliRunner().invoke(app, ["train", "clip", "--config", str(bad)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: config model.depth: Extra inputs are not permitted (1 error(s))"]


# ---------------------------------------------------------------- fields that were accepted and ignored before


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        # torch threads came from train.threads_per_worker while Ray reserved scaling.cpus_per_worker (a float):
        # one field now means both, an integer.
        ("scaling.cpus_per_worker=1.5", "scaling.cpus_per_worker"),
        ("train.threads_per_worker=2", "train.threads_per_worker is now scaling.cpus_per_worker"),
        # a local Ray smaller than the workers left Ray Train waiting for CPUs forever
        ("ray.num_cpus=1", "ray.num_cpus=1 is below"),
        # a crash hook past the last step never fired; a scale range upside down was sampled as given
        ("train.crash_at_step=6", "train.crash_at_step=6 is never reached"),
        ("data.scale_min=1.5", "data.scale_min=1.5 is above"),
        # a text side other than MiniLM's 384-d was checked only by main(), not by the config
        ("model.embed_dim=512", "model.embed_dim"),
        # views share a worker's batch; the instance term has no positives with one view per image
        ("data.views=3", "not a multiple of data.views=3"),
        ("data.views=1", "needs data.views >= 2"),
    ],
)
def test_fields_the_job_cannot_honour_are_rejected(override, fragment):
    with pytest.raises(JobConfigError) as err:
        load_config(ClipJobConfig, CONFIG_DIR / "smoke.yaml", [override])
    assert fragment in str(err.value)


def test_run_resume_false_refuses_an_existing_run_before_ray_starts(tmp_path):
    import ray

    (tmp_path / "smoke" / "step-000003").mkdir(parents=True)
    args = ["--config", str(CONFIG_DIR / "smoke.yaml"), f"run.storage_path={tmp_path}", "run.name=smoke"]
    with pytest.raises(JobConfigError, match="set run.resume=true"):
        main([*args, "run.resume=false"])
    assert not ray.is_initialized()


def test_a_finished_run_is_reported_not_retrained(tmp_path):
    import json

    final = tmp_path / "smoke" / "final"
    final.mkdir(parents=True)
    (final / "open_clip_model.safetensors").write_bytes(b"")
    (tmp_path / "smoke" / "metrics.json").write_text(json.dumps({"train_seconds": 1.0}))
    summary = main(["--config", str(CONFIG_DIR / "smoke.yaml"), f"run.storage_path={tmp_path}", "run.name=smoke"])
    assert summary["already_finished"] is True and summary["final"] == str(final)
