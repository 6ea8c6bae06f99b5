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
    bad.write_text("model:\n  image_size: 64\n  depth: 3\n")
    result = CliRunner().invoke(app, ["train", "clip", "--config", str(bad)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: config model.depth: Extra inputs are not permitted (1 error(s))"]
