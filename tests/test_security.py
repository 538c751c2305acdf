"""Security: nothing a local run starts listens beyond loopback; untrusted files never run code."""

import os
import subprocess
import sys
import threading
import time

import pytest

from search_spaces import loguniform

from grouped import run_tune

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def _sample(root, listening: dict) -> None:
    """Record the listening sockets of ``root`` (a psutil.Process) and its descendants."""
    import psutil

    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in tree:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening[(proc.pid, conn.laddr.port)] = (proc.name(), conn.laddr.ip)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


@pytest.mark.ray
def test_cli_run_listens_on_loopback_only(tmp_path):
    """The real command, without the variable the test session sets: `cnn-tuner run` itself
    must put Ray in its single-machine mode before anything imports Ray."""
    import psutil
    import ray  # noqa: F401  (its bundled psutil)

    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    run = subprocess.Popen([sys.executable, "-m", "tuner.cli", "run", "--num-samples", "2",
                            "--max-epochs", "3", "--set", "width=8", "--storage", str(tmp_path),
                            "--verbose", "0"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    listening: dict = {}
    root = psutil.Process(run.pid)
    while run.poll() is None:
        _sample(root, listening)
        time.sleep(0.3)
    assert run.returncode == 0, run.stderr.read()[-2000:]
    names = {name for name, _ in listening.values()}
    assert any("raylet" in n or "gcs" in n for n in names), names
    exposed = {k: v for k, v in listening.items() if v[1] not in LOOPBACK}
    assert not exposed, exposed


@pytest.mark.ray
def test_local_run_listens_on_loopback_only(ray_local, tmp_path):
    import psutil  # Ray's bundled copy, on the path once ray is imported

    listening: dict = {}
    me = psutil.Process()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            _sample(me, listening)
            stop.wait(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:  # sockets of Ray's GCS, raylet, object manager and the trial workers, while trials run
        run_tune({"dataset": "digits", "width": 8, "lr": loguniform(0.01, 0.3)}, searcher="random",
             scheduler="fifo", num_samples=2, max_epochs=2, storage=tmp_path, name="sec",
             verbose=0)
    finally:
        stop.set()
        watcher.join()
    names = {name for name, _ in listening.values()}
    assert any("raylet" in n or "gcs" in n for n in names), names
    assert listening, "found no listening socket: the check saw nothing"
    exposed = {k: v for k, v in listening.items() if v[1] not in LOOPBACK}
    assert not exposed, exposed
