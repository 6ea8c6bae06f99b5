"""Fusion autoscaling on decode queue depth (a custom Ray Serve autoscaling policy).

Serve's default policy counts ongoing requests. What decides whether another fusion replica helps is
the engine's own queue: rows decoding plus requests waiting for a batch slot, which each replica
reports through ``FusionDeployment.record_autoscaling_stats`` as ``decode_rows`` and ``decode_waiting``.
:class:`FusionQueuePolicy` asks for one replica per ``target_ongoing_requests`` wanted rows (the
batch one replica should carry), and never for more replicas than the cluster has cores for: each
replica runs ``PRISM_FUSION_THREADS`` torch threads, so replicas never share cores, and on a
cluster the count follows the CPUs of every node. (On a 2-core machine, 1 thread per replica, Ray's
CPU reservations in ``serving/config.yaml`` keep the count at 1.)

Serve applies ``min_replicas``/``max_replicas``, ``upscale_delay_s`` and ``downscale_delay_s`` to
the decision (the policy is wrapped by Serve's ``_apply_autoscaling_config``). The policy module is
pickled by value into the Serve controller, so it imports nothing from Prism.

    autoscaling_config:
      policy: {policy_function: "serving.autoscaling:FusionQueuePolicy"}
"""

from __future__ import annotations

import math
import os
import time

CORES_REFRESH_S = 30.0


class FusionQueuePolicy:
    """Desired fusion replicas = ceil(wanted decode rows / target rows per replica), capped by the cores.

    Args:
        threads_per_replica: CPU threads one fusion replica computes with; None: ``PRISM_FUSION_THREADS`` as the
            replicas read it (default: the node's cores but one, :class:`ray_app.settings.Settings`).
        cluster_cpus: the cluster's CPU count; None reads ``ray.cluster_resources()`` (every 30 s).
    """

    def __init__(self, threads_per_replica: int | None = None, cluster_cpus: float | None = None):
        if threads_per_replica is None:
            # as ray_app.settings.default_fusion_threads (this module is pickled by value: no Prism imports)
            threads_per_replica = int(os.environ.get("PRISM_FUSION_THREADS") or max(1, (os.cpu_count() or 1) - 1))
        if threads_per_replica < 1:
            raise ValueError(f"threads_per_replica must be at least 1, got {threads_per_replica}")
        self.threads_per_replica = threads_per_replica
        self._fixed_cpus = cluster_cpus
        self._cpus: float | None = cluster_cpus
        self._read_at = 0.0

    def core_cap(self) -> int:
        """Replicas the cores can run without two replicas' threads sharing a core (at least 1)."""
        if self._fixed_cpus is None and time.monotonic() - self._read_at > CORES_REFRESH_S:
            import ray

            self._cpus = float(ray.cluster_resources().get("CPU", 1.0))
            self._read_at = time.monotonic()
        return max(1, int((self._cpus or 1.0) // self.threads_per_replica))

    def __call__(self, ctx) -> tuple[int, dict]:
        rows = _total(ctx.aggregated_metrics, "decode_rows")
        if rows is None:  # no replica has reported yet: Serve's own count of ongoing requests
            rows = float(ctx.total_num_requests)
        waiting = _total(ctx.aggregated_metrics, "decode_waiting") or 0.0
        per_replica = ctx.config.get_target_ongoing_requests()
        desired = max(1, math.ceil(rows / per_replica)) if rows > 0 else ctx.capacity_adjusted_min_replicas
        cap = self.core_cap()
        state = {"decode_rows": rows, "decode_waiting": waiting, "core_cap": cap}
        return min(desired, cap), state


def _total(metrics, name: str) -> float | None:
    """Sum over replicas of one custom metric (each replica's value averaged over the look-back window)."""
    per_replica = (metrics or {}).get(name)
    if not per_replica:
        return None
    return float(sum(per_replica.values()))
