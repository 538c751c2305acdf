"""Security: nothing a local run starts listens beyond loopback; untrusted files never run code."""

import threading

import pytest

from search_spaces import loguniform
from tuner import tune

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


@pytest.mark.ray
def test_local_run_listens_on_loopback_only(ray_local, tmp_path):
    import psutil  # Ray's bundled copy, on the path once ray is imported

    listening = {}

    def sample():
        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                for conn in proc.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        listening[(proc.pid, conn.laddr.port)] = (proc.name(), conn.laddr.ip)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue

    stop = threading.Event()

    def watch():
        while not stop.is_set():
            sample()
            stop.wait(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:  # sockets of Ray's GCS, raylet, object manager and the trial workers, while trials run
        tune({"dataset": "digits", "width": 8, "lr": loguniform(0.01, 0.3)}, searcher="random",
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
