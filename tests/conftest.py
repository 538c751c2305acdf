"""Shared test setup: small thread counts so the suite runs on 2 cores; one Ray per session.
Markers (pyproject.toml): `ray` starts a real Ray, `slow` trains to an accuracy or starts fresh
Pythons, `chromium` needs the browser; `make test-fast` leaves all three out."""

import os
import time
from pathlib import Path

import pytest
import torch

# Ray binds every port to 127.0.0.1 only in its single-machine mode, read when Ray is imported
# (see tuner.running.loopback.prefer_loopback): tests never listen beyond loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

torch.set_num_threads(1)

def _start_ray():
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False,
             _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=False)
    return ray


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every test that needs it: 2 CPUs, 2 logical GPUs (no CUDA needed:
    Ray only schedules them), loopback only, no dashboard. Shut down at the end."""
    ray = _start_ray()
    yield ray
    ray.shutdown()


RELEASE_WAIT_S = 30.0  # how long a test's actors get to exit and give back what they held


def held_resources(ray, wait_s: float = RELEASE_WAIT_S) -> dict[str, float]:
    """What the session's Ray still holds once a test has ended (CPU/GPU not yet given back,
    after up to ``wait_s`` for actors to exit): {} when everything is free again."""
    deadline = time.monotonic() + wait_s
    while True:
        total, free = ray.cluster_resources(), ray.available_resources()
        held = {k: total[k] - free.get(k, 0.0) for k in ("CPU", "GPU")
                if total.get(k, 0.0) - free.get(k, 0.0) > 1e-6}
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(0.2)


@pytest.fixture(autouse=True)
def ray_gives_everything_back(request):
    """A test on the session's Ray ends with every CPU and GPU free again. A run that left an
    actor or a placement group behind would starve every later test of trials, and the suite
    would wait forever; instead that test errors, naming what was held, and the next one gets
    a fresh Ray."""
    yield
    if "ray_local" not in request.fixturenames:
        return
    import ray

    if not ray.is_initialized():
        return
    held = held_resources(ray)
    if held:
        groups = [g for g in ray.util.placement_group_table().values()
                  if g.get("state") != "REMOVED"]
        ray.shutdown()
        _start_ray()
        pytest.fail(f"the test left Ray resources held {RELEASE_WAIT_S:.0f} s after it ended: "
                    f"{held}; placement groups not removed: {len(groups)} "
                    f"({[g.get('bundles') for g in groups]}); Ray restarted for the next test",
                    pytrace=False)


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


def pytest_terminal_summary(terminalreporter):
    """The last lines of a run name each failure with its whole error message: pytest's short
    summary cuts it at the terminal's width, and a CI log keeps only its tail."""
    failed = terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", [])
    if not failed:
        return
    terminalreporter.section("failures, whole messages")
    for report in failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash else (str(report.longrepr).strip().splitlines()
                                               or [""])[-1]
        where = f"{crash.path}:{crash.lineno}" if crash else ""
        terminalreporter.write_line(f"{report.nodeid} ({report.when}) {where}")
        for line in message.splitlines()[:40]:
            terminalreporter.write_line(f"    {line[:300]}")
