"""`prism serve up [--detach] | down | status`: run the Serve app from ``serving/config.yaml``.

    prism serve up                 foreground; Ctrl-C stops it
    prism serve up --detach        returns once /healthz answers, prints the URL
    prism serve status [--json]     replicas, queue depth, where the metrics and the dashboard are
    prism serve down

``up`` starts a private local Ray instance (no dashboard) in a driver process, starts Serve with the
config's HTTP options and deploys the application; ``--detach`` runs that driver in the background
(its own process group, logs under ``$PRISM_HOME/serve/``) and records it so ``down`` can stop it.
While it runs, the driver writes what Serve says about the application (``serve.status()``: replicas per
deployment and their states) and where Ray exports metrics to ``$PRISM_HOME/serve/driver.json`` every few
seconds; ``status`` reads that file, the metrics export (the fusion replicas' decode queue) and ``/healthz``.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import typer

from ray_app.cli.common import JSON_OPTION, CLIError, console, emit, handle_errors
from ray_app.raystart import init_ray
from ray_app.settings import get_settings

app = typer.Typer(help="Run the Ray Serve application (HTTP API + web page).", no_args_is_help=True)
DASHBOARD = "deploy/grafana/prism.json"  # the Grafana dashboard, in the repository
SNAPSHOT_EVERY_S = 5.0
CONFIG_OPTION = typer.Option(None, "--config", help="A serve-build YAML (default: serving/config.yaml).")


def state_dir() -> Path:
    return get_settings().home.resolve() / "serve"


def state_file() -> Path:
    return state_dir() / "state.json"


def read_state() -> dict | None:
    path = state_file()
    return json.loads(path.read_text()) if path.exists() else None


def snapshot_file() -> Path:
    return state_dir() / "driver.json"


def metrics_url() -> str | None:
    """Where this Ray node exports metrics (Prism's ``ray_prism_*`` and Ray's) in Prometheus text format."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("MetricsExportPort"):
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    return None


def serve_snapshot() -> dict:
    """What the driver knows: each application's deployments (status, replicas by state) and the metrics URL."""
    from ray import serve

    applications = {}
    for name, application in serve.status().applications.items():
        deployments = {dep: {"status": str(getattr(d.status, "value", d.status)),
                             "replicas": {str(getattr(s, "value", s)): n for s, n in d.replica_states.items()}}
                       for dep, d in application.deployments.items()}
        applications[name] = {"status": str(getattr(application.status, "value", application.status)),
                              "deployments": deployments}
    return {"updated": time.time(), "metrics_url": metrics_url(), "applications": applications}


def write_snapshot(path: Path | None = None) -> None:
    """Write :func:`serve_snapshot` (atomically) for ``prism serve status``."""
    path = path or snapshot_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(serve_snapshot()))
    tmp.replace(path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def healthz(url: str, timeout: float = 5.0) -> dict | None:
    # Over HTTPS the configured certificate is the trust anchor (a self-signed one works; a CA-issued one too).
    cert = get_settings().tls_certfile
    verify = ssl.create_default_context(cafile=str(cert)) if url.startswith("https://") and cert else True
    try:
        r = httpx.get(f"{url}/healthz", timeout=timeout, verify=verify)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def choose_models() -> dict:
    """The LLM adapter and the image encoder the app will serve.

    Each is the configured one (``PRISM_LLM_ADAPTER``, ``PRISM_IMAGE_ENCODER``), else the newest trained
    under ``$PRISM_HOME/checkpoints`` (:func:`ray_app.models.llm.resolve_adapter`,
    :func:`ray_app.models.image_default.resolve_image_encoder`).

    Returns:
        ``{"adapter", "adapter_source", "image_encoder", "image_encoder_source"}`` (folders or None).
    """
    from ray_app.models.image import CONFIG_NAME
    from ray_app.models.image_default import resolve_image_encoder
    from ray_app.models.llm import resolve_adapter

    adapter, adapter_source = resolve_adapter()
    encoder, encoder_source = resolve_image_encoder()
    return {"adapter": adapter, "adapter_source": adapter_source,
            "image_encoder": str(encoder) if (encoder / CONFIG_NAME).exists() else None,
            "image_encoder_source": encoder_source}


def models_env(models: dict) -> dict[str, str]:
    """The choice as environment variables: set in the driver before Ray starts, every replica (started now or
    scaled up later) loads the same models, and a run that finishes meanwhile changes nothing."""
    env = {"PRISM_LLM_ADAPTER": models["adapter"] or "none"}
    if models["image_encoder"]:
        env["PRISM_IMAGE_ENCODER"] = models["image_encoder"]
    return env


def describe_models(models: dict) -> list[str]:
    """Two lines that say which adapter and image encoder the app serves, and why."""
    return [f"LLM adapter: {models['adapter'] or 'none (the base model)'} ({models['adapter_source']})",
            f"image encoder: {models['image_encoder'] or 'none (vision without labels)'} "
            f"({models['image_encoder_source']})"]


def run_driver(config_path: Path | None, host: str | None, port: int | None, num_cpus: int | None) -> None:
    """Start Ray + Serve, deploy the config and block until SIGTERM/SIGINT (then shut down)."""
    import logging

    import ray
    from ray import serve

    from serving.app import CONFIG_PATH, deploy_config, load_config

    config = load_config(config_path or CONFIG_PATH, host=host, port=port)
    models = choose_models()
    os.environ.update(models_env(models))
    get_settings.cache_clear()
    for line in describe_models(models):
        logging.getLogger(__name__).warning("%s", line)  # the serve log says what is served
    os.environ.setdefault("DATABASE_URL", _database_url())
    port = get_settings().metrics_export_port
    start_ray(num_cpus or max(os.cpu_count() or 2, 2), **({"_metrics_export_port": port} if port else {}))
    deploy_config(config)
    stop = {"now": False}

    def _stop(*_):
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    written = 0.0
    try:
        while not stop["now"]:
            if time.monotonic() - written > SNAPSHOT_EVERY_S:
                written = time.monotonic()
                try:
                    write_snapshot()
                except Exception:  # noqa: BLE001 - status is informative; serving goes on
                    logging.getLogger(__name__).warning("could not write %s", snapshot_file(), exc_info=True)
            time.sleep(0.5)
    finally:
        snapshot_file().unlink(missing_ok=True)
        serve.shutdown()
        ray.shutdown()


PROXY_CALLBACK = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"


def start_ray(num_cpus: int, **init_kwargs) -> None:
    """A private local Ray (never a cluster from RAY_ADDRESS) in the "serve" namespace.

    Its Serve HTTP proxy gets Prism's body limit (:class:`serving.http_limits.ProxyBodyLimit`) through Serve's
    proxy callback, so an oversized body is cut off in the proxy, not queued there.
    """
    os.environ.setdefault(PROXY_CALLBACK, "serving.http_limits:proxy_middlewares")
    init_ray(num_cpus=num_cpus, join=False, namespace="serve", **init_kwargs)


def _database_url() -> str:
    """The URL replicas should use (DATABASE_URL or the running embedded server)."""
    from ray_app.store import resolve_url

    return resolve_url(get_settings())


def _migrate() -> None:
    """Apply pending migrations and the serving role's rights as the owner (``prism db migrate``)."""
    from ray_app.store import Store

    Store(_database_url()).close()


def _address(config_path: Path | None, host: str | None, port: int | None) -> str:
    from serving.app import CONFIG_PATH, load_config

    config = load_config(config_path or CONFIG_PATH, host=host, port=port)
    bind = config.http_options.host
    scheme = "https" if get_settings().tls_certfile or config.http_options.ssl_certfile else "http"
    return f"{scheme}://{'127.0.0.1' if bind in ('0.0.0.0', '::') else bind}:{config.http_options.port}"


@app.command("up")
@handle_errors
def up(
    detach: bool = typer.Option(False, "--detach", help="Run in the background; return once healthy."),
    config: Path | None = CONFIG_OPTION,
    host: str | None = typer.Option(None, "--host", help="Override http_options.host."),
    port: int | None = typer.Option(None, "--port", help="Override http_options.port."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", help="Logical CPUs for the local Ray instance."),
    timeout_s: float = typer.Option(900, "--timeout", help="Seconds to wait for /healthz with --detach."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Start the Serve app (foreground, or --detach)."""
    url = _address(config, host, port)
    state = read_state()
    if state and pid_alive(state["pid"]):
        raise CLIError(f"already running at {state['url']} (pid {state['pid']}); `prism serve down` first")
    _migrate()  # fail early, before starting Ray, when there is no database; replicas never migrate
    models = choose_models()
    for line in describe_models(models):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if not detach:
        console.print(f"Prism serving at {url} (Ctrl-C stops)")
        run_driver(config, host, port, num_cpus)
        return
    pid = _spawn_driver(config, host, port, num_cpus, models_env(models))
    _wait_healthy(url, pid, timeout_s)
    emit({"url": url, "pid": pid, "log": str(state_dir() / "serve.log"), **models}, json_out,
         lambda o: console.print(f"[green]Prism is up[/green]: {o['url']}  (pid {o['pid']}, log {o['log']})"))


def _spawn_driver(config: Path | None, host: str | None, port: int | None, num_cpus: int | None,
                  extra_env: dict[str, str] | None = None) -> int:
    state_dir().mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "serving.cli", "_driver"]
    for flag, value in (("--config", config), ("--host", host), ("--port", port), ("--num-cpus", num_cpus)):
        if value is not None:
            args += [flag, str(value)]
    env = dict(os.environ, DATABASE_URL=_database_url(), **(extra_env or {}))
    with open(state_dir() / "serve.log", "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    url = _address(config, host, port)
    state_file().write_text(json.dumps({"pid": proc.pid, "url": url, "started": time.time()}))
    return proc.pid


def _wait_healthy(url: str, pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthz(url):
            return
        if not pid_alive(pid):
            state_file().unlink(missing_ok=True)
            raise CLIError(f"the Serve driver exited during startup; see {state_dir() / 'serve.log'}")
        time.sleep(2)
    raise CLIError(f"not healthy after {timeout_s:.0f} s at {url}; see {state_dir() / 'serve.log'}")


@app.command("down")
@handle_errors
def down(json_out: bool = JSON_OPTION) -> None:
    """Stop the app started with `prism serve up --detach`."""
    state = read_state()
    stopped = False
    if state and pid_alive(state["pid"]):
        _stop_group(state["pid"])
        stopped = True
    state_file().unlink(missing_ok=True)
    emit({"stopped": stopped}, json_out, lambda o: console.print("stopped" if o["stopped"] else "not running"))


def _stop_group(pid: int, timeout_s: float = 60) -> None:
    """SIGTERM the driver's process group (it shuts Serve and Ray down), SIGKILL if it lingers."""
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.5)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    if pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)


@app.command("status")
@handle_errors
def status(json_out: bool = JSON_OPTION) -> None:
    """Is the app running and healthy? Its replicas, queue depth, and where its metrics and dashboard are."""
    emit(status_report(read_state(), read_snapshot()), json_out, print_status)


def read_snapshot() -> dict | None:
    path = snapshot_file()
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def status_report(state: dict | None, snapshot: dict | None) -> dict:
    """``prism serve status``: the driver's state, ``/healthz``, the driver's Serve snapshot and the metrics export.

    Returns:
        ``{"running", "healthy", "url", "pid", "versions", "replicas": {deployment: running replicas},
        "deployments": {deployment: {"status", "replicas": {state: n}}}, "queue": {"decode_rows", "decode_waiting",
        "asks_active", "asks_waiting"}, "metrics_url", "dashboard", "snapshot_age_s"}`` (None where unknown).
    """
    running = bool(state and pid_alive(state["pid"]))
    health = healthz(state["url"]) if running else None
    snapshot = snapshot if running and snapshot else {}
    found = {dep: info for application in (snapshot.get("applications") or {}).values()
             for dep, info in application["deployments"].items()}
    deployments = {dep: found[dep] for dep in sorted(found, key=_pipeline_order)}
    admission = (health or {}).get("admission") or {}
    queue = {**decode_queue(snapshot.get("metrics_url")), "asks_active": admission.get("active"),
             "asks_waiting": admission.get("waiting")}
    dashboard = Path.cwd() / DASHBOARD
    return {"running": running, "healthy": health is not None, "url": state["url"] if state else None,
            "pid": state["pid"] if state else None, "versions": (health or {}).get("versions"),
            "replicas": {dep: info["replicas"].get("RUNNING", 0) for dep, info in deployments.items()} or None,
            "deployments": deployments or None, "queue": queue, "metrics_url": snapshot.get("metrics_url"),
            "dashboard": str(dashboard) if dashboard.exists() else DASHBOARD,
            "snapshot_age_s": round(time.time() - snapshot["updated"], 1) if snapshot.get("updated") else None}


def _pipeline_order(deployment: str) -> tuple[int, str]:
    order = ("ingress", "vision", "rag", "fusion", "audit")
    return (order.index(deployment) if deployment in order else len(order), deployment)


def decode_queue(url: str | None) -> dict:
    """The fusion replicas' decode queue from the metrics export: rows decoding + waiting, and waiting alone."""
    out: dict = {"decode_rows": None, "decode_waiting": None}
    if not url:
        return out
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return out
    from prometheus_client.parser import text_string_to_metric_families

    names = {"ray_prism_decode_queue_depth": "decode_rows", "ray_prism_decode_waiting": "decode_waiting"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                key = names[sample.name]
                out[key] = (out[key] or 0.0) + sample.value
    return out


def print_status(o: dict) -> None:
    console.print(f"{'healthy' if o['healthy'] else 'running (not healthy yet)' if o['running'] else 'not running'}"
                  + (f" at {o['url']} (pid {o['pid']})" if o["running"] else ""), markup=False, soft_wrap=True)
    if not o["running"]:
        return
    replicas = ", ".join(f"{d} {n}" for d, n in (o["replicas"] or {}).items()) or "unknown (no driver snapshot yet)"
    q = o["queue"]
    console.print(f"replicas: {replicas}", markup=False, soft_wrap=True)
    console.print(f"queue: fusion rows decoding+waiting {_known(q['decode_rows'])} (waiting {_known(q['decode_waiting'])}); "
                  f"asks in flight {_known(q['asks_active'])}, waiting {_known(q['asks_waiting'])} (this ingress replica)",
                  markup=False, soft_wrap=True)
    console.print(f"metrics: {o['metrics_url'] or 'unknown'} (Prometheus text; Prism's series are ray_prism_*)",
                  markup=False, soft_wrap=True)
    console.print(f"dashboard: {o['dashboard']} (Grafana: Dashboards > New > Import)", markup=False, soft_wrap=True)


def _known(value) -> str:
    return "?" if value is None else f"{value:g}"


@app.command("_driver", hidden=True)
def driver(config: Path | None = CONFIG_OPTION, host: str | None = typer.Option(None, "--host"),
           port: int | None = typer.Option(None, "--port"), num_cpus: int | None = typer.Option(None, "--num-cpus")) -> None:
    """The background driver process behind `up --detach`."""
    run_driver(config, host, port, num_cpus)


if __name__ == "__main__":
    app()
