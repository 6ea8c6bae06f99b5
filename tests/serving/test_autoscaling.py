"""Fusion autoscaling on decode queue depth: the policy's decisions (also through Serve's own wrapper, which
adds the delays), and the fusion replica's queue metrics in the real Serve app."""

from __future__ import annotations

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from serving.autoscaling import FusionQueuePolicy
from tests.serving.harness import prism_app_fixture  # noqa: F401  (registers `prism_app`)

FUSION = DeploymentID(name="fusion", app_name="prism")


def context(rows: list[float] | None, replicas: int = 1, ongoing: float = 0.0, target: float = 16,
            policy_state: dict | None = None, now: float = 1000.0) -> AutoscalingContext:
    """What the Serve controller hands the policy: ``rows`` is each running replica's ``decode_rows``."""
    ids = [ReplicaID(unique_id=f"r{i}", deployment_id=FUSION) for i in range(replicas)]
    metrics = None if rows is None else {
        "decode_rows": dict(zip(ids, rows, strict=True)), "decode_waiting": dict.fromkeys(ids, 0.0)}
    config = AutoscalingConfig(min_replicas=1, max_replicas=8, target_ongoing_requests=target, upscale_delay_s=0,
                               downscale_delay_s=0)
    return AutoscalingContext(
        deployment_id=FUSION, deployment_name="fusion", app_name="prism", current_num_replicas=replicas,
        target_num_replicas=replicas, running_replicas=ids, total_num_requests=ongoing, total_queued_requests=0,
        aggregated_metrics=metrics, raw_metrics=None, capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=8, policy_state=policy_state or {}, last_scale_up_time=None,
        last_scale_down_time=None, current_time=now, config=config)


def test_replicas_follow_wanted_rows_up_to_the_cores():
    policy = FusionQueuePolicy(threads_per_replica=2, cluster_cpus=16)  # room for 8 replicas
    assert policy(context([10.0]))[0] == 1  # one replica carries up to 16 rows
    assert policy(context([16.0, 20.0], replicas=2))[0] == 3  # 36 rows wanted
    decision, state = policy(context([0.0, 0.0], replicas=2))
    assert decision == 1 and state["decode_rows"] == 0.0
    big = policy(context([200.0]))
    assert big[0] == 8 and big[1]["core_cap"] == 8


def test_a_two_core_machine_keeps_one_replica():
    policy = FusionQueuePolicy(threads_per_replica=2, cluster_cpus=2)
    assert policy(context([64.0]))[0] == 1
    assert FusionQueuePolicy(threads_per_replica=1, cluster_cpus=2)(context([64.0]))[0] == 2


def test_before_any_report_it_counts_serves_ongoing_requests():
    policy = FusionQueuePolicy(threads_per_replica=1, cluster_cpus=8)
    assert policy(context(None, ongoing=40.0))[0] == 3


def test_serve_applies_its_upscale_delay_to_the_decision():
    wrapped = _apply_autoscaling_config(FusionQueuePolicy(threads_per_replica=1, cluster_cpus=64))
    assert wrapped(context([500.0]))[0] == 32  # no delay: 500 rows / 16 (min/max bounds come after, in Serve)
    ctx = context([500.0])
    ctx.config.upscale_delay_s = 60
    assert wrapped(ctx)[0] == 1  # the first upscale decision waits for the delay


def test_threads_per_replica_must_be_positive():
    with pytest.raises(ValueError, match="threads_per_replica"):
        FusionQueuePolicy(threads_per_replica=0)


def test_the_fusion_replica_reports_its_queue_to_the_autoscaler(prism_app):
    from ray import serve

    stats = serve.get_deployment_handle("fusion", "prism").record_autoscaling_stats.remote().result(timeout_s=30)
    assert set(stats) == {"decode_rows", "decode_waiting"}
    assert all(isinstance(v, float) and v >= 0 for v in stats.values())
    fusion = serve.status().applications["prism"].deployments["fusion"]
    assert fusion.status == "HEALTHY"  # deployed with the custom policy from serving/config.yaml
