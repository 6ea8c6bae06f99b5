"""`prism serve up [--detach] | down | status`: run the Serve app from ``serving/config.yaml``.

    prism serve up                 foreground; Ctrl-C stops it
    prism serve up --detach        returns once /healthz answers, prints the URL
    prism serve status [--json]
    prism serve down

``up`` starts a private local Ray instance (no dashboard) in a driver process, starts Serve with the
config's HTTP options and deploys the application; ``--detach`` runs that driver in the background
(its own process group, logs under ``$PRISM_HOME/serve/``) and records it so ``down`` can stop it.
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
CONFIG_OPTION = typer.Option(None, "--config", help="A serve-build YAML (default: serving/config.yaml).")


def state_dir() -> Path:
    return get_settings().home.resolve() / "serve"


def state_file() -> Path:
    return state_dir() / "state.json"


def read_state() -> dict | None:
    path = state_file()
    return json.loads(path.read_text()) if path.exists() else None


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
    start_ray(num_cpus or max(os.cpu_count() or 2, 2))
    deploy_config(config)
    stop = {"now": False}

    def _stop(*_):
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop["now"]:
            time.sleep(0.5)
    finally:
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
    """Is the app running and healthy?"""
    state = read_state()
    running = bool(state and pid_alive(state["pid"]))
    health = healthz(state["url"]) if running else None
    out = {"running": running, "healthy": health is not None, "url": state["url"] if state else None,
           "pid": state["pid"] if state else None, "versions": (health or {}).get("versions")}
    emit(out, json_out, lambda o: console.print(
        f"{'healthy' if o['healthy'] else 'running (not healthy yet)' if o['running'] else 'not running'}"
        + (f" at {o['url']}" if o["running"] else "")))


@app.command("_driver", hidden=True)
def driver(config: Path | None = CONFIG_OPTION, host: str | None = typer.Option(None, "--host"),
           port: int | None = typer.Option(None, "--port"), num_cpus: int | None = typer.Option(None, "--num-cpus")) -> None:
    """The background driver process behind `up --detach`."""
    run_driver(config, host, port, num_cpus)


if __name__ == "__main__":
    app()
