"""Real Ray runtimes for the Ray tests: a plain ``ray.init(num_cpus=2)`` and a local two-node
``ray.cluster_utils.Cluster`` (a head and one worker node on this machine). No mocks.

Without Ray installed the tests skip, unless ``PRMGYM_REQUIRE_RAY=1`` (set by CI), which turns the
skip into a failure.
"""

from __future__ import annotations

import os

import pytest


def require_ray():
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        if os.environ.get("PRMGYM_REQUIRE_RAY") == "1":
            pytest.fail(f"PRMGYM_REQUIRE_RAY=1 but Ray is not installed ({exc}); pip install -e '.[ray]'")
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")
    return ray


def start(kind: str):
    """Start a Ray runtime of ``kind`` ("init": one node, 2 CPUs; "cluster": head + 1 worker
    node, 2 CPUs each); returns a stop function."""
    ray = require_ray()
    if ray.is_initialized():
        ray.shutdown()
    if kind == "init":
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a cluster already on the machine
        return ray.shutdown
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)

    def stop():
        ray.shutdown()
        cluster.shutdown()

    return stop
