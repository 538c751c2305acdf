"""Shared test setup: small thread counts so the suite runs on 2 cores; one Ray per session."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every test that needs it: 2 CPUs, 2 logical GPUs (no CUDA needed:
    Ray only schedules them), loopback only, no dashboard. Shut down at the end."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False,
             _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()
