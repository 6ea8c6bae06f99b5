"""The Prism Serve application: ingress -> (vision, rag, fusion, audit), composed with DeploymentHandles.

    serve run serving/config.yaml            # or: prism serve up [--detach]
    serve deploy serving/config.yaml         # onto a running cluster (with its dashboard)

``serving/config.yaml`` (``serve build`` format) sets replicas, autoscaling, ``max_ongoing_requests``
and ``ray_actor_options`` per deployment; :func:`deploy_config` applies it from Python.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from ray_app.telemetry import logs
from serving.audit import AuditDeployment
from serving.fusion import FusionDeployment
from serving.ingress import Ingress
from serving.rag import RagDeployment
from serving.vision import VisionDeployment

CONFIG_PATH = Path(__file__).parent / "config.yaml"
APP_NAME = "prism"


DEPLOYMENTS = {"ingress": Ingress, "vision": VisionDeployment, "rag": RagDeployment, "fusion": FusionDeployment,
               "audit": AuditDeployment}


def build_app(config: ServeDeploySchema | None = None):
    """The bound application graph (``import_path: serving.app:app``).

    With ``config``, each deployment takes its options (replicas, autoscaling, actor options, ...)
    from the config's entry of the same name, as ``serve deploy`` would apply them.
    """
    options = {}
    if config is not None:
        for dep in config.applications[0].deployments:
            options[dep.name] = dep.model_dump(exclude_unset=True, exclude={"name"})
    d = {name: cls.options(**options.get(name, {})) for name, cls in DEPLOYMENTS.items()}
    return d["ingress"].bind(d["vision"].bind(), d["rag"].bind(), d["fusion"].bind(), d["audit"].bind())


app = build_app()


def load_config(path: Path = CONFIG_PATH, host: str | None = None, port: int | None = None,
                min_replicas: int | None = None) -> ServeDeploySchema:
    """Read and validate the config; optionally override the HTTP address and pin replicas.

    Args:
        path: a ``serve build``-format YAML.
        host, port: HTTP bind address overrides.
        min_replicas: when set, every deployment starts (and may stay) at this many replicas.
    """
    raw = yaml.safe_load(Path(path).read_text())
    if host is not None:
        raw.setdefault("http_options", {})["host"] = host
    if port is not None:
        raw.setdefault("http_options", {})["port"] = port
    if os.environ.get(logs.FORMAT_ENV):  # PRISM_LOG_FORMAT=json|text overrides the YAML's encoding
        raw.setdefault("logging_config", {})["encoding"] = logs.log_format().upper()
    if min_replicas is not None:
        for application in raw["applications"]:
            for dep in application.get("deployments", []):
                auto = dep.get("autoscaling_config")
                if auto:
                    auto["min_replicas"] = min_replicas
                    auto["initial_replicas"] = min_replicas
    return ServeDeploySchema.model_validate(raw)


def http_options(config: ServeDeploySchema) -> dict:
    """The config's HTTP options, with HTTPS when a certificate is configured (``PRISM_TLS_CERTFILE`` and
    ``PRISM_TLS_KEYFILE``; they override ``ssl_certfile`` / ``ssl_keyfile`` in the YAML).

    Raises:
        InputError: only one of the two is set, or a file is missing.
    """
    from ray_app.errors import InputError
    from ray_app.settings import get_settings

    options = config.http_options.model_dump(exclude_unset=True)
    settings = get_settings()
    if settings.tls_certfile or settings.tls_keyfile:
        if not (settings.tls_certfile and settings.tls_keyfile):
            raise InputError("HTTPS needs both PRISM_TLS_CERTFILE and PRISM_TLS_KEYFILE")
        for path in (settings.tls_certfile, settings.tls_keyfile):
            if not Path(path).is_file():
                raise InputError(f"no such certificate or key file: {path}")
        options |= {"ssl_certfile": str(settings.tls_certfile), "ssl_keyfile": str(settings.tls_keyfile)}
    return options


def deploy_config(config: ServeDeploySchema) -> None:
    """Start Serve with the config's HTTP options (HTTPS when a certificate is configured) and run the
    application (Ray must be up).

    Returns once every deployment is running (models loaded).
    """
    from ray import serve

    serve.start(http_options=http_options(config), proxy_location=config.proxy_location,
                logging_config=config.logging_config)
    application = config.applications[0]
    serve.run(build_app(config), name=application.name, route_prefix=application.route_prefix,
              logging_config=application.logging_config or config.logging_config)
