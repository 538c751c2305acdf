"""Shared test setup: small thread counts so the suite runs on 2 cores; one Ray per session.
Markers (pyproject.toml): `ray` starts a real Ray, `slow` trains to an accuracy or starts fresh
Pythons, `chromium` needs the browser; `make test-fast` leaves all three out."""

import os
from pathlib import Path

import pytest
import torch

# Ray binds every port to 127.0.0.1 only in its single-machine mode, read when Ray is imported
# (see tuner.running.loopback.prefer_loopback): tests never listen beyond loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

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


@pytest.fixture(scope="session")
def lr_experiment(ray_local, tmp_path_factory):
    """A real small tuning run in which only the learning rate matters: lr spans five decades,
    while the seed and a label smoothing of at most 0.01 barely move a 3-epoch val_acc. ASHA
    (grace 1, eta 2) stops some trials early. Shared by the report and ablation tests, which
    must not write into it (copy it first). Returns the experiment folder."""
    from search_spaces import loguniform, randint, uniform
    from tuner.running.schedulers import SchedulerOptions

    from grouped import run_tune

    space = {"dataset": "digits", "width": 8, "batch_size": 128,
             "lr": loguniform(1e-5, 0.5), "seed": randint(0, 1000),
             "label_smoothing": uniform(0.0, 0.01)}
    res = run_tune(space, searcher="random", scheduler="asha", num_samples=12, max_epochs=3,
               seed=0, scheduler_options=SchedulerOptions(grace_period=1, reduction_factor=2),
               storage=tmp_path_factory.mktemp("report"), name="lr_only", verbose=0)
    return Path(res.path)
