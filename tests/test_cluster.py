"""cnn-tuner on Ray clusters.

- ``cluster.yaml`` passes Ray's own cluster-config validation (what ``ray up`` runs), is secure
  by default, and a broken copy is refused.
- The shared-storage rule (``tuner.running.cluster``) and the ``ray submit`` entry script, as
  pure logic.
- A real two-node Ray cluster on loopback (a head and a worker node, each with its own custom
  resource, started by this file run as a script): trials run on both nodes, results and
  checkpoints land in the shared storage, a node-local path is refused before any trial starts,
  a worker node killed mid-run loses no trial, and ``s3://`` storage works against a local S3
  server (moto). Every socket the cluster opens listens on loopback only.

Ray rewrites a node address of 127.0.0.1 to the machine's routable IP (and its servers then
listen on all interfaces) unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; in that mode
``ray start --address`` refuses to add a worker node. So the nodes are started with
``ray.cluster_utils.Cluster`` (explicit ``node_ip_address``), and drivers run with that variable.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import queue
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tuner.running import cluster as tc

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
SUBMIT = ROOT / "scripts" / "cnn_tuner_submit.py"
CLI = [sys.executable, "-m", "tuner.cli"]
TINY = ["--searcher", "random", "--scheduler", "fifo", "--set", "width=8", "--verbose", "0"]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
# node deaths are noticed within ~5 s instead of Ray's default ~30 s
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_timeout_ms": 2000,
                 "health_check_failure_threshold": 5}
BUCKET = "cnn-tuner-test"


# -- cluster.yaml --------------------------------------------------------------------------------

def _load_cluster_yaml() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does with the file before touching a cloud: fill in the provider's
    defaults, then validate against Ray's cluster-config JSON schema and rules."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_validator():
    prepared = _ray_validate(_load_cluster_yaml())
    types = prepared["available_node_types"]
    head, workers = types[prepared["head_node_type"]], [
        t for name, t in types.items() if name != prepared["head_node_type"]]
    assert head["max_workers"] == 0 and "GPU" not in head["resources"]
    assert len(workers) == 1 and workers[0]["node_config"]["InstanceType"].startswith("g")
    assert 0 <= workers[0]["min_workers"] < workers[0]["max_workers"]  # autoscaling
    assert "~/cnn-tuner" in prepared["file_mounts"]
    setup = " ".join(prepared["setup_commands"])
    assert "make -C ~/cnn-tuner .venv/.installed" in setup  # the README's `make` install
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), ".venv/.installed"],
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr  # a real target of the Makefile
    init = " ".join(prepared["initialization_commands"])
    assert "CNN_TUNER_STORAGE=s3://" in init  # the shared storage every run gets


@pytest.mark.parametrize("breakage", ["wrong_type", "unknown_key", "head_not_a_type",
                                      "min_above_max"])
def test_broken_cluster_yaml_is_refused(breakage):
    config = _load_cluster_yaml()
    worker = config["available_node_types"]["worker.gpu"]
    if breakage == "wrong_type":
        worker["min_workers"] = "two"
    elif breakage == "unknown_key":
        config["head_start_ray_command"] = config.pop("head_start_ray_commands")
    elif breakage == "head_not_a_type":
        config["head_node_type"] = "head.gpu"
    else:
        worker["min_workers"] = config["max_workers"] + 1
    with pytest.raises(Exception) as err:  # jsonschema.ValidationError or ValueError
        _ray_validate(config)
    assert type(err.value).__name__ in ("ValidationError", "ValueError")


def test_cluster_yaml_is_secure_by_default():
    config = _load_cluster_yaml()
    text = CLUSTER_YAML.read_text()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in text and "--ray-client-server-port" not in text
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # token from a file
    assert "export RAY_AUTH_MODE=token" in " ".join(config["initialization_commands"])
    # no secrets: no AWS key ids, private keys, passwords or inline tokens
    assert not re.search(r"AKIA[0-9A-Z]{16}|BEGIN [A-Z ]*PRIVATE KEY|aws_secret|password\s*[:=]|"
                         r"RAY_AUTH_TOKEN=|ssh_private_key:", text, re.I)
    assert "SecurityGroupIds: [" not in text.replace("# SecurityGroupIds: [", "")


def test_every_cluster_yaml_key_has_a_comment():
    key = re.compile(r"""^\s*(?:"[^"]+"|[A-Za-z_][\w.]*)\s*:(?:\s|$)""")
    missing = [line for line in CLUSTER_YAML.read_text().splitlines()
               if key.match(line) and "#" not in line]
    assert not missing, missing


# -- the shared-storage rule ------------------------------------------------------------------

MOUNTS = tc.parse_mounts(
    "/dev/sda1 / ext4 rw 0 0\n"
    "tmpfs /tmp tmpfs rw 0 0\n"
    "fs-1.efs:/ /mnt/shared nfs4 rw,vers=4.1 0 0\n"
    "bucket /mnt/s3\\040data fuse.s3fs rw 0 0\n"
    "/dev/sdb1 /mnt/shared/local ext4 rw 0 0\n")


@pytest.mark.parametrize("path,fs_type,shared", [
    ("/home/me/results", "ext4", False),
    ("/tmp/x", "tmpfs", False),
    ("/mnt/shared/results", "nfs4", True),
    ("/mnt/shared", "nfs4", True),
    ("/mnt/sharedx/results", "ext4", False),  # a prefix of the name is not the mount
    ("/mnt/s3 data/run", "fuse.s3fs", True),
    ("/mnt/shared/local/run", "ext4", False),  # the innermost mount decides
])
def test_network_file_systems_count_as_shared(path, fs_type, shared, monkeypatch):
    monkeypatch.delenv(tc.SHARED_STORAGE_ENV, raising=False)
    assert tc.mount_fs_type(path, MOUNTS) == fs_type
    assert tc.storage_is_shared(path, mounts=MOUNTS) is shared
    assert tc.storage_is_shared(f"file://{path}", mounts=MOUNTS) is shared


def test_uris_and_declared_paths_count_as_shared(monkeypatch):
    monkeypatch.delenv(tc.SHARED_STORAGE_ENV, raising=False)
    for uri in ("s3://bucket/results", "gs://b/r", "abfs://c@a.dfs.core.windows.net/r"):
        assert tc.storage_is_shared(uri, mounts=MOUNTS)
    assert not tc.storage_is_shared("/home/me/r", mounts=MOUNTS)
    assert tc.storage_is_shared("/home/me/r", shared_storage=True, mounts=MOUNTS)
    monkeypatch.setenv(tc.SHARED_STORAGE_ENV, "1")
    assert tc.storage_is_shared("/home/me/r", mounts=MOUNTS)
    monkeypatch.setenv(tc.SHARED_STORAGE_ENV, "0")
    assert not tc.storage_is_shared("/home/me/r", mounts=MOUNTS)


def _node(node_id: str, alive: bool = True, **resources: float) -> dict[str, Any]:
    return {"NodeID": node_id, "Alive": alive, "Resources": resources}


def test_multi_node_reason():
    one = [_node("h", CPU=4), _node("dead", alive=False, CPU=4, GPU=1)]
    assert tc.multi_node_reason(one, "h", {"CPU": 1}) is None
    assert "2 alive nodes" in tc.multi_node_reason([*one, _node("w", CPU=4)], "h", {"CPU": 1})
    # GPU trials sent to a CPU-only head run on workers the autoscaler starts
    reason = tc.multi_node_reason(one, "h", {"CPU": 1, "GPU": 0.5})
    assert "0.5 GPU (this node has 0)" in reason


# -- the `ray submit` entry script ------------------------------------------------------------

def _submit_module() -> Any:
    spec = importlib.util.spec_from_file_location("cnn_tuner_submit", SUBMIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_submit_script_joins_the_cluster_and_its_storage():
    args = _submit_module().cluster_args
    env = {"CNN_TUNER_STORAGE": "s3://b/r"}
    assert args(["run", "--num-samples", "8"], env) == [
        "run", "--num-samples", "8", "--address", "auto", "--storage", "s3://b/r"]
    assert args(["run", "--address=h:6379", "--storage", "/nfs/r"], env) == [
        "run", "--address=h:6379", "--storage", "/nfs/r"]
    assert args(["resume", "/nfs/r/x"], env) == ["resume", "/nfs/r/x", "--address", "auto"]
    assert args(["results", "/nfs/r/x"], env) == ["results", "/nfs/r/x"]
    assert args(["run"], {}) == ["run", "--address", "auto"]


@pytest.mark.slow
def test_submit_script_runs_the_cli():
    proc = subprocess.run([sys.executable, str(SUBMIT), "spaces", "list"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "quick" in proc.stdout.split(), proc.stderr


# -- a two-node Ray cluster on loopback ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_args(ray_dir: str, resource: str) -> dict[str, Any]:
    return {"node_ip_address": "127.0.0.1", "num_cpus": 1, "resources": {resource: 1},
            "include_dashboard": False, "temp_dir": ray_dir,
            "object_store_memory": 80 * 1024 * 1024,
            "dashboard_agent_listen_port": _free_port(), "runtime_env_agent_port": _free_port(),
            "metrics_export_port": _free_port(), "metrics_agent_port": _free_port()}


def _say(**message: Any) -> None:
    print(json.dumps(message), flush=True)


def serve_two_nodes(ray_dir: str) -> None:
    """Run a head node {"node_a": 1} and a worker node {"node_b": 1}, 1 CPU each, on 127.0.0.1,
    until stdin closes; stdin lines `kill-worker` / `add-worker` stop or add the worker node.
    (This file run as a script; the tests drive it.)"""
    from ray.cluster_utils import Cluster

    head_args = {**_node_args(ray_dir, "node_a"), "gcs_server_port": _free_port(),
                 "_system_config": HEALTH_CHECKS}
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    worker = cluster.add_node(**_node_args(ray_dir, "node_b"))
    _say(address=cluster.address, head=cluster.head_node.node_id, worker=worker.node_id)
    for line in sys.stdin:
        if line.strip() == "kill-worker" and worker is not None:
            cluster.remove_node(worker, allow_graceful=False)  # SIGKILL: a machine failure
            worker = None
            _say(worker=None)
        elif line.strip() == "add-worker" and worker is None:
            worker = cluster.add_node(**_node_args(ray_dir, "node_b"))
            _say(worker=worker.node_id)
    cluster.shutdown()


class LoopbackCluster:
    """The helper process running the two nodes, and the environment its drivers need."""

    def __init__(self, env: dict[str, str], ray_dir: str) -> None:
        self.env, self.ray_dir = env, ray_dir
        self.log = Path(ray_dir) / "helper.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, __file__, "serve", ray_dir], env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, text=True, cwd=ROOT)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        info = self._reply(timeout=120)
        self.address, self.head, self.worker = info["address"], info["head"], info["worker"]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)

    def _reply(self, timeout: float) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self._lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]  # it died
                continue
            if line.startswith("{"):
                return json.loads(line)
        raise TimeoutError("the cluster helper did not answer")

    def _send(self, command: str) -> dict[str, Any]:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._reply(timeout=60)

    def kill_worker(self) -> None:
        self.worker = self._send("kill-worker")["worker"]

    def ensure_worker(self) -> None:
        if self.worker is None:
            self.worker = self._send("add-worker")["worker"]

    def driver_env(self, **extra: str) -> dict[str, str]:
        # the driver keeps 127.0.0.1 as its node address (see the module docstring)
        return {**self.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **extra}

    def processes(self) -> list[Any]:
        import ray  # noqa: F401, I001 - first: puts Ray's bundled psutil on the path
        import psutil

        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def stop(self) -> None:
        import ray  # noqa: F401, I001 - first: puts Ray's bundled psutil on the path
        import psutil

        try:
            procs = self.processes()
        except psutil.Error:
            procs = []
        self.proc.stdin.close()  # the helper shuts the cluster down
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for p in procs:  # anything the shutdown missed: only processes of this cluster
            try:
                p.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.ray_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def s3_endpoint():
    """A local S3 server (moto) on loopback with an empty bucket; None without moto."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        yield None
        return
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                           endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    yield env
    server.stop()


@pytest.fixture(scope="module")
def loopback_cluster(s3_endpoint):
    """Two Ray nodes on 127.0.0.1 with token authentication; the S3 endpoint (if any) is in
    the nodes' environment, as an instance profile would be on a cloud cluster."""
    ray_dir = tempfile.mkdtemp(prefix="ctr", dir="/tmp")  # short: Ray's socket paths
    os.makedirs(os.path.join(ray_dir, "ray"))
    env = {**os.environ, "RAY_TMPDIR": ray_dir, "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16), **(s3_endpoint or {})}
    env.pop("RAY_ADDRESS", None)
    env.pop(tc.SHARED_STORAGE_ENV, None)
    cluster = LoopbackCluster(env, ray_dir)
    yield cluster
    cluster.stop()


@pytest.fixture
def two_nodes(loopback_cluster):
    loopback_cluster.ensure_worker()
    return loopback_cluster


def _trial_results(exp: Path) -> dict[str, list[dict[str, Any]]]:
    """trial dir name -> its reported results, in order."""
    out = {}
    for result in sorted(exp.glob("trial_*/result.json")):
        out[result.parent.name] = [json.loads(line) for line in result.read_text().splitlines()]
    return out


def _listening(processes: list[Any]) -> set[tuple[str, int, str]]:
    import psutil

    found = set()
    for p in processes:
        try:
            for conn in p.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port, p.name()))
        except psutil.Error:
            pass
    return found


@pytest.mark.ray
def test_node_local_storage_is_refused_before_any_trial(two_nodes, tmp_path):
    storage = tmp_path / "local"
    proc = subprocess.run(
        [*CLI, "run", "--address", two_nodes.address, "--storage", str(storage), "--name", "x",
         "--num-samples", "2", "--max-epochs", "1", *TINY],
        env=two_nodes.driver_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("cnn-tuner: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "2 alive nodes" in errors[0] and str(storage) in errors[0]
    assert tc.SHARED_STORAGE_ENV in errors[0] and "s3://" in errors[0]
    assert not storage.exists()  # nothing written, no trial started


@pytest.mark.ray
def test_trials_run_on_both_nodes_with_results_in_shared_storage(two_nodes, tmp_path):
    """`ray submit`'s entry script (it adds --address auto) with storage all nodes see."""
    exp = tmp_path / "exp"
    run = subprocess.Popen(
        [sys.executable, str(SUBMIT), "run", "--storage", str(tmp_path), "--name", "exp",
         "--num-samples", "2", "--max-epochs", "2", *TINY],
        env=two_nodes.driver_env(**{tc.SHARED_STORAGE_ENV: "1"}), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline, sockets, driver_sockets = time.time() + 180, set(), set()
    while time.time() < deadline and run.poll() is None:  # every socket opened during the run
        sockets |= _listening(two_nodes.processes())
        driver_sockets |= _listening(_driver_tree(run.pid))
        time.sleep(0.2)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-3000:]
    assert "2 trials: 2 completed" in out

    results = _trial_results(exp)
    assert len(results) == 2
    nodes = {r[-1]["node_id"] for r in results.values()}
    assert nodes == {two_nodes.head, two_nodes.worker}  # one trial on each node
    for trial in results:  # every result and checkpoint is in the shared storage
        assert [r["epoch"] for r in results[trial]] == [1, 2]
        assert len(list((exp / trial).glob("checkpoint_*/checkpoint.pt"))) == 2
    assert len(pd.read_csv(exp / "results.csv")) == 2

    names = {name for _, _, name in sockets}
    # seen: the GCS, the raylets, the trials' Ray workers and the driver; all on loopback
    assert {"gcs_server", "raylet"} <= names, sorted(sockets)
    assert any(n.startswith("ray::") and "Agent" not in n for n in names), sorted(sockets)
    assert driver_sockets, "the driver's Ray worker opened no socket?"
    sockets |= driver_sockets
    assert {ip for ip, _, _ in sockets} <= LOOPBACK, sorted(sockets)


def _driver_tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


@pytest.mark.ray
def test_s3_storage_through_a_local_s3_server(two_nodes, s3_endpoint, tmp_path):
    if s3_endpoint is None:
        pytest.skip("moto[server] is not installed (pip install -e '.[dev]')")
    import pyarrow.fs as pafs

    storage = f"s3://{BUCKET}/results"
    proc = subprocess.run(
        [*CLI, "run", "--address", two_nodes.address, "--storage", storage, "--name", "s3exp",
         "--num-samples", "2", "--max-epochs", "1", *TINY],
        env=two_nodes.driver_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 trials: 2 completed" in proc.stdout

    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                           endpoint_override=s3_endpoint["AWS_ENDPOINT_URL"])
    files = [f.path for f in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/results/s3exp",
                                                                recursive=True))]
    results = [f for f in files if f.endswith("/result.json")]
    assert len(results) == 2, files
    assert len([f for f in files if f.endswith("/checkpoint.pt")]) == 2
    nodes = set()
    for path in results:
        with fs.open_input_stream(path) as f:
            nodes.add(json.loads(f.read().decode().splitlines()[-1])["node_id"])
    assert nodes == {two_nodes.head, two_nodes.worker}
    assert not list(tmp_path.rglob("result.json"))  # nothing written to the local disk
    for name in ("results.csv", "summary.json", "best_recipe.yaml", "cnn_tuner_run.json"):
        assert f"{BUCKET}/results/s3exp/{name}" in files, name  # cnn-tuner's files too
    top = subprocess.run([*CLI, "results", f"{storage}/s3exp", "--top", "2"],
                         env=two_nodes.driver_env(), capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and top.stdout.count("completed") == 2, top.stderr[-2000:]

    # the report reads the experiment from S3 (not its checkpoints) and writes itself beside it
    report = subprocess.run([*CLI, "report", f"{storage}/s3exp"], env=two_nodes.driver_env(),
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    assert f"wrote {storage}/s3exp/report/index.html" in report.stdout
    with fs.open_input_stream(f"{BUCKET}/results/s3exp/report/index.html") as f:
        page = f.read().decode()
    assert f"{storage}/s3exp" in page and "s3exp</h1>" in page
    assert f"cnn-tuner results {storage}/s3exp --export-best best_recipe.yaml" in page
    assert len(set(re.findall(r'id="trial-([^"]+)"', page))) == 2  # a curve per trial
    with fs.open_input_stream(f"{BUCKET}/results/s3exp/report/learning_curves.png") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob("index.html"))  # written to S3 only

    # resuming a finished experiment on S3 restores Ray's state from there and changes nothing
    resumed = subprocess.run([*CLI, "resume", f"{storage}/s3exp", "--address",
                              two_nodes.address, "--verbose", "0"], env=two_nodes.driver_env(),
                             capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 trials: 2 completed" in resumed.stdout


@pytest.mark.ray
def test_worker_node_failure_loses_no_trial(two_nodes, tmp_path):
    exp, epochs = tmp_path / "exp", 16
    run = subprocess.Popen(
        [*CLI, "run", "--address", two_nodes.address, "--storage", str(tmp_path), "--name",
         "exp", "--num-samples", "2", "--max-epochs", str(epochs), "--max-failures", "2", *TINY],
        env=two_nodes.driver_env(**{tc.SHARED_STORAGE_ENV: "1"}), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    victim, worker = None, two_nodes.worker
    deadline = time.time() + 180
    while victim is None and time.time() < deadline and run.poll() is None:
        for trial, rows in _trial_results(exp).items():
            on_worker = rows and rows[-1]["node_id"] == worker and "stop_reason" not in rows[-1]
            # after two rows that name a checkpoint: the first is registered by then (see below)
            if on_worker and sum(bool(r.get("checkpoint_dir_name")) for r in rows) >= 2:
                victim, killed_after = trial, rows[-1]["epoch"]
                two_nodes.kill_worker()  # while the trial runs on it, after a checkpoint
                break
        time.sleep(0.1)
    assert victim is not None, "no trial was caught running on the worker node"
    out, err = run.communicate(timeout=240)
    assert run.returncode == 0, err[-3000:]

    df = pd.read_csv(exp / "results.csv")
    assert len(df) == 2 and (df["status"] == "completed").all(), df
    assert (df["epochs_run"] == epochs).all()
    rows = _trial_results(exp)[victim]
    before = [r for r in rows if r["node_id"] == worker]
    after = rows[len(before):]
    assert before and after and all(r["node_id"] == two_nodes.head for r in after), rows
    assert before[-1]["epoch"] >= killed_after
    # retried on the head from the newest checkpoint Ray had registered from the worker (rows
    # name their checkpoint; the 5% checkpoint-time budget can skip some epochs' saves), not
    # restarted from epoch 1, and trained on from there to the end. Ray registers a reported
    # checkpoint in a second call to the worker (`save`), before the next epoch starts, so the
    # kill can lose the worker's last checkpoint, never an older one.
    registered = max(r["epoch"] for r in before[:-1] if r.get("checkpoint_dir_name"))
    assert after[0]["resumed_from"] >= registered >= 1, (registered, after[0])
    assert [r["epoch"] for r in after] == list(range(after[0]["resumed_from"] + 1, epochs + 1))
    assert [r["epoch"] for r in before] == list(range(1, len(before) + 1))
    assert "stop_reason" in after[-1]


@pytest.mark.ray
@pytest.mark.parametrize(("placement", "cpus", "spread"), [
    ("pack", "1", True), ("spread", "0.5", True), ("strict_spread", "0.5", True),
    ("strict_pack", "0.5", False)])
def test_a_data_parallel_trial_placed_over_two_nodes(two_nodes, tmp_path, placement, cpus,
                                                     spread):
    """One trial, 2 Ray Train workers on two 1-CPU nodes, its ranks training together over gloo
    on loopback, every epoch reported once. pack: 1-CPU workers cannot share a node, so the
    group spreads (pack keeps it on one node only when it fits there); spread, strict_spread:
    half-CPU workers would fit on one node, and each goes to its own anyway; strict_pack: both
    on one node."""
    exp = tmp_path / "dp"
    proc = subprocess.run(
        [*CLI, "run", "--address", two_nodes.address, "--storage", str(tmp_path), "--name", "dp",
         "--num-samples", "1", "--max-epochs", "2", "--workers-per-trial", "2",
         "--cpus-per-trial", cpus, "--worker-placement", placement, *TINY],
        env=two_nodes.driver_env(**{tc.SHARED_STORAGE_ENV: "1"}), capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rows,) = _trial_results(exp).values()
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["stop_reason"] == "completed"
    for r in rows:  # rank 0 and rank 1 in one world of 2, on both nodes or on one
        assert r["world_size"] == 2
        nodes = r["worker_node_ids"].split(",")
        assert len(nodes) == 2 and set(nodes) <= {two_nodes.head, two_nodes.worker}
        assert len(set(nodes)) == (2 if spread else 1), (placement, nodes)
        assert len(set(r["worker_pids"].split(","))) == 2


# -- local multi-GPU (Ray's logical GPUs: no CUDA needed) ---------------------------------------

def test_two_gpus_per_trial_is_refused_pointing_at_workers_per_trial(tmp_path):
    """A trial's worker trains on one GPU (cuda:0): a trial holding two used only one of
    them. Several GPUs per trial means several workers (docs/data-parallel.md)."""
    from search_spaces import grid
    from trainables.errors import ConfigError

    from grouped import run_tune

    with pytest.raises(ConfigError, match="gpus_per_trial: .*set workers_per_trial"):
        run_tune({"dataset": "digits", "width": 8, "lr": grid([0.1, 0.2])}, searcher="grid",
                 scheduler="fifo", max_epochs=1, cpus_per_trial=0.5, gpus_per_trial=2,
                 storage=tmp_path, name="gpu2", verbose=0)
    assert not (tmp_path / "gpu2").exists()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve_two_nodes(sys.argv[2])
