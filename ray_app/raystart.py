"""Connecting to Ray: one place for "join the cluster, or start a private local one".

Every Prism job (ingest, training, the Serve driver) starts Ray through :func:`init_ray`, so
they behave alike: under ``ray job submit`` (``RAY_ADDRESS`` set) or with an explicit address
they join that cluster; otherwise they start a local Ray without a dashboard. Ray gives a new
raylet a fixed 30 s to register, which a loaded 2-core machine can miss, so local start-up is
retried on exactly that error. Ray's own driver-side messages are logged at WARNING and above
unless a caller asks for more (``logging_level=...``); whether workers' output is printed by the
driver stays the caller's choice (``log_to_driver``).
"""

from __future__ import annotations

import logging
import os
import time

from ray_app.telemetry import logs

log = logging.getLogger(__name__)
STARTUP_TIMEOUT = "timed out during startup"


def init_ray(address: str | None = None, num_cpus: int | None = None, join: bool = True, attempts: int = 3,
             **init_kwargs) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``) or start a local Ray; a no-op when Ray is already up.

    Args:
        address: a cluster to join (``auto``, ``ray://...``, ``host:port``); None: ``RAY_ADDRESS`` or local.
        num_cpus: logical CPUs of a local Ray (default: the machine's).
        join: False always starts a private local Ray (``RAY_ADDRESS`` is ignored).
        attempts: local start-ups to try when the raylet misses its start-up deadline.
        **init_kwargs: passed to ``ray.init`` (``namespace``, ``log_to_driver``, ``logging_level``...).

    Returns:
        True when this call connected or started Ray (the caller should ``ray.shutdown()``).
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or (os.environ.get("RAY_ADDRESS") if join else None)
    if "://" not in (address or ""):  # a Ray Client (ray://) would forward the setting to the server
        init_kwargs.setdefault("logging_level", logging.WARNING)  # not "Started a local Ray instance..." every run
        if (config := logs.ray_logging_config()) is not None:  # PRISM_LOG_FORMAT=json: the workers too
            init_kwargs.setdefault("logging_config", config)
    handlers = list(logging.getLogger().handlers)
    try:
        return _init(ray, address, num_cpus, attempts, init_kwargs)
    finally:
        logs.keep_own_handler(handlers)


def _init(ray, address: str | None, num_cpus: int | None, attempts: int, init_kwargs: dict) -> bool:
    if address:
        ray.init(address=address, **init_kwargs)
        return True
    for attempt in range(attempts):
        try:
            # "local": never attach to some other cluster found on this machine.
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **init_kwargs)
            return True
        except Exception as exc:  # Ray raises a bare Exception for the start-up timeout
            ray.shutdown()
            if STARTUP_TIMEOUT not in str(exc) or attempt == attempts - 1:
                raise
            log.warning("local Ray did not start in time (attempt %d of %d); retrying", attempt + 1, attempts)
            time.sleep(5)
    return True
