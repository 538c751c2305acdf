"""Experiment trackers (tuner.running.trackers, docs/tracking.md): every trial of a real tiny run
lands in MLflow (a local folder store and a real `mlflow server`), in W&B's offline run files and
in TensorBoard's event files, epoch by epoch; a tracker whose package is missing, or a tracking
store that does not answer, is refused in one line before anything starts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from trainables.errors import ConfigError
from tuner import RunConfig, TuneConfig, tune
from tuner.cli import main

TRIALS, EPOCHS = 3, 2
SPACE = {"dataset": "digits", "width": 8, "batch_size": 128,
         "lr": {"loguniform": [1e-3, 0.3]}}


def _tune(storage: Path, name: str = "t", **run) -> object:
    return tune(SPACE, num_samples=TRIALS, max_epochs=EPOCHS,
                tune_config=TuneConfig(searcher="random", scheduler="fifo"),
                run_config=RunConfig(storage=storage, name=name, verbose=0, **run))


def _epochs(trial_dir: Path, metric: str = "val_acc") -> dict[int, float]:
    """epoch -> metric from Ray's result.json of a trial folder: what every tracker must hold."""
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    return {r["epoch"]: r[metric] for r in rows}


# ---------------------------------------------------------------------------------------------
# refused before anything starts (no Ray)


def _no_run(*args, **kwargs):
    raise AssertionError("run_experiment called: the check must come before Ray starts")


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_missing_package_is_one_line_and_exit_2_before_anything_starts(
        tracker, tmp_path, monkeypatch, capsys):
    import tuner.running.wandb_logger  # noqa: F401 - Ray's W&B module must import the real wandb
    monkeypatch.setitem(sys.modules, tracker, None)  # `import mlflow` raises ImportError
    monkeypatch.setattr("tuner.running.runner.run_experiment", _no_run)
    space = tmp_path / "space.yaml"
    space.write_text("dataset: digits\nwidth: 8\n")
    assert main(["run", "--space", str(space), "--storage", str(tmp_path / "runs"),
                 f"--{tracker}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"cnn-tuner: error: --{tracker}: needs the {tracker} package: "
                     f"pip install 'cnn-tuner[{tracker}]'"]
    with pytest.raises(ConfigError, match=f"^{tracker}: needs the {tracker} package: pip "):
        _tune(tmp_path / "runs", **{tracker: True})
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_tracking_server_is_refused_at_once(tmp_path, monkeypatch):
    """MLflow would retry a dead server for minutes, mid-run; the check asks once, up front."""
    monkeypatch.setattr("tuner.running.runner.run_experiment", _no_run)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"^mlflow: tracking store http://127\.0\.0\.1:\d+ not "
                                          r"usable \("):
        _tune(tmp_path / "runs", mlflow=f"http://127.0.0.1:{_free_port()}")
    assert time.monotonic() - start < 30
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", [3, "", " "])
def test_mlflow_takes_true_or_a_uri(value, tmp_path):
    with pytest.raises(ConfigError, match=r"^mlflow: True \(MLflow's default tracking store\) "
                                          f"or a tracking URI, got {value!r}"):
        _tune(tmp_path, mlflow=value)


def test_wandb_takes_a_bool(tmp_path, monkeypatch):
    monkeypatch.setattr("tuner.running.runner.run_experiment", _no_run)
    with pytest.raises(ConfigError, match=r"^wandb: True or False, got 'yes'"):
        _tune(tmp_path, wandb="yes")


def test_the_default_store_and_local_paths_resolve_to_where_resume_finds_them(
        tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from tuner.running.trackers import mlflow_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_uri(True) == mlflow.get_tracking_uri()  # ./mlruns or sqlite:///mlflow.db
    assert str(tmp_path) in mlflow_uri(True)
    assert mlflow_uri("store") == str(tmp_path / "store")
    assert mlflow_uri("sqlite:///m.db") == f"sqlite:///{tmp_path}/m.db"
    assert mlflow_uri("http://host:5000") == "http://host:5000"
    assert mlflow_uri(False) is None


def test_a_sqlite_store_keeps_its_artifacts_beside_the_database(tmp_path, monkeypatch):
    """Not in ./mlruns of whatever folder the run started from (MLflow's default)."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from tuner.running.trackers import _experiment_id

    monkeypatch.chdir(tmp_path / "..")
    uri = f"sqlite:///{tmp_path}/db/mlflow.db"
    (tmp_path / "db").mkdir()
    client = MlflowClient(uri)
    experiment_id = _experiment_id(client, uri, "exp")
    assert _experiment_id(client, uri, "exp") == experiment_id  # found again, not re-created
    location = client.get_experiment(experiment_id).artifact_location
    assert location == (tmp_path / "db" / "mlruns" / "exp").as_uri()


# ---------------------------------------------------------------------------------------------
# real runs


def _assert_in_mlflow(uri: str, exp: Path) -> None:
    """The MLflow experiment named after ``exp`` holds a parent run with the results as
    artifacts and, nested under it, one run per trial with its knobs, its val_acc per epoch and
    its status tags, all matching the experiment folder."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(exp.name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("cnn_tuner.role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["searcher"] == "random"
    assert parent.data.params["num_samples"] == str(TRIALS)
    summary = json.loads((exp / "summary.json").read_text())
    assert parent.data.tags["best_trial"] == summary["best_trial"]
    assert parent.data.metrics["best_val_acc"] == pytest.approx(summary["best_val_acc"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "best_recipe.yaml", "summary.json", "results.csv"}
    for file in ("best_recipe.yaml", "summary.json"):
        local = client.download_artifacts(parent.info.run_id, file, str(exp.parent / "dl"))
        assert Path(local).read_text() == (exp / file).read_text()

    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str}).set_index("trial_id")
    trials = {r.data.tags["trial_id"]: r for r in runs if r is not parent}
    assert set(trials) == set(table.index) and len(trials) == TRIALS
    for trial_id, run in trials.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_name == f"trial_{trial_id}" and run.info.status == "FINISHED"
        assert run.data.tags["status"] == table.loc[trial_id, "status"] == "completed"
        assert run.data.tags["stop_reason"] == table.loc[trial_id, "stop_reason"]
        assert run.data.params["dataset"] == "digits" and run.data.params["width"] == "8"
        assert float(run.data.params["lr"]) == pytest.approx(table.loc[trial_id, "lr"])
        history = client.get_metric_history(run.info.run_id, "val_acc")
        expected = _epochs(exp / f"trial_{trial_id}")
        assert len(history) == EPOCHS == len(expected)
        assert {m.step: m.value for m in history} == pytest.approx(expected)
        assert {m.step for m in client.get_metric_history(run.info.run_id, "train_loss")} == \
            set(range(1, EPOCHS + 1))


@pytest.fixture(scope="module")
def tracked(ray_local, tmp_path_factory) -> tuple[Path, str]:
    """One tiny run logged to an MLflow folder store and to W&B offline: (experiment, URI).
    MLflow 3 refuses folder stores unless MLFLOW_ALLOW_FILE_STORE opts back in."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        mp.delenv("WANDB_MODE", raising=False)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = _tune(root, mlflow=str(root / "mlruns"), wandb=True)
    assert result.summary["completed"] == TRIALS
    return Path(result.path), str(root / "mlruns")


@pytest.mark.ray
def test_mlflow_local_store_holds_every_trial_nested_under_the_run(tracked, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    exp, uri = tracked
    assert (Path(uri)).is_dir()
    _assert_in_mlflow(uri, exp)


def _wandb_records(path: Path):
    """The protobuf records of a W&B offline .wandb file (LevelDB's log format: 32 KiB blocks of
    chunks with 7-byte headers, after a 7-byte file header); wandb itself reads them in Go."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, record = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        record = chunk if kind in (1, 2) else record + chunk  # FULL/FIRST start, MIDDLE/LAST add
        if kind in (1, 4):
            message = wandb_internal_pb2.Record()
            message.ParseFromString(record)
            yield message


@pytest.mark.ray
def test_wandb_offline_runs_hold_every_epoch_under_the_experiment(tracked):
    exp, _ = tracked
    trials = sorted(d.name.removeprefix("trial_") for d in exp.glob("trial_*"))
    files = {f.stem.removeprefix("run-"): f for f in exp.glob("wandb/offline-run-*/run-*.wandb")}
    assert sorted(files) == trials and len(trials) == TRIALS
    for trial_id, file in files.items():
        records = list(_wandb_records(file))
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert run.run_id == trial_id and run.run_group == exp.name
        history = {}
        for r in records:
            if r.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                         for i in r.history.item}
                history[items["_step"]] = items.get("val_acc")
        assert history == pytest.approx(_epochs(exp / f"trial_{trial_id}"))


def _tfrecords(path: Path):
    """The records of a TFRecord file: length (8 bytes), its CRC (4), data, the data's CRC (4)."""
    data, pos = path.read_bytes(), 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        yield data[pos + 12:pos + 12 + length]
        pos += 12 + length + 4


@pytest.mark.ray
def test_tensorboard_event_files_hold_val_acc_per_epoch_for_every_trial(tracked):
    """Ray writes them (TBXLoggerCallback, with tensorboardX installed); read with its protos."""
    from tensorboardX.proto.event_pb2 import Event

    exp, _ = tracked
    trials = sorted(exp.glob("trial_*"))
    assert len(trials) == TRIALS
    for trial in trials:
        scalars = {}
        for file in trial.glob("events.out.tfevents.*"):
            for record in _tfrecords(file):
                event = Event()
                event.ParseFromString(record)
                for value in event.summary.value:
                    if value.tag == "ray/tune/val_acc":
                        scalars[event.step] = value.simple_value
        assert scalars == pytest.approx(_epochs(trial), abs=1e-6), trial.name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, artifacts proxied into tmp_path),
    in its own process group, killed with everything it started."""
    pytest.importorskip("mlflow")
    port, log = _free_port(), tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
             str(port), "--workers", "1", "--backend-store-uri",
             f"sqlite:///{tmp_path}/server.db", "--artifacts-destination",
             str(tmp_path / "artifacts")],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # workers and job runner, if any linger
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=20)


@pytest.mark.ray
def test_cli_mlflow_flag_logs_to_a_tracking_server(ray_local, mlflow_server, tmp_path,
                                                   capsys):
    space = tmp_path / "space.yaml"
    space.write_text("dataset: digits\nwidth: 8\nbatch_size: 128\n"
                     "lr: {loguniform: [0.001, 0.3]}\n")
    code = main(["run", "--space", str(space), "--storage", str(tmp_path / "runs"), "--name",
                 "served", "--num-samples", str(TRIALS), "--max-epochs", str(EPOCHS),
                 "--searcher", "random", "--scheduler", "fifo", "--verbose", "0",
                 "--mlflow", mlflow_server])
    assert code == 0, capsys.readouterr().err[-2000:]
    _assert_in_mlflow(mlflow_server, tmp_path / "runs" / "served")
    assert any((tmp_path / "artifacts").rglob("summary.json"))  # uploaded through the server


def _reported(exp: Path) -> int:
    """Epochs reported so far, over all trials."""
    return sum(len(f.read_text().splitlines()) for f in exp.glob("trial_*/result.json"))


@pytest.mark.ray
def test_resume_goes_on_logging_to_the_same_mlflow_runs(tmp_path):
    """Ctrl+C after the first epochs, then `cnn-tuner resume`: every trial has one MLflow run
    (found again by its tags, none duplicated) holding all its epochs, and the parent gets the
    results at the end."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    cli, exp, uri = [sys.executable, "-m", "tuner.cli"], tmp_path / "exp", \
        f"sqlite:///{tmp_path}/mlflow.db"
    run = subprocess.Popen(  # two at a time: most trials have not started at the Ctrl+C
        [*cli, "run", "--storage", str(tmp_path), "--name", "exp", "--num-samples", "6",
         "--max-epochs", "3", "--max-concurrent", "2", "--searcher", "random", "--scheduler",
         "fifo", "--set", "width=8", "--verbose", "0", "--mlflow", uri],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and _reported(exp) < 1 and run.poll() is None:
        time.sleep(0.2)
    assert run.poll() is None, run.communicate()[1][-2000:]
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    resumed = subprocess.run([*cli, "resume", str(exp), "--verbose", "0"], capture_output=True,
                             text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str}).set_index("trial_id")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    parents = [r for r in runs if r.data.tags.get("cnn_tuner.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trials = {r.data.tags["trial_id"]: r for r in runs
              if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert len(trials) == len(runs) - 1 == len(table) == 6
    for trial_id, r in trials.items():
        assert r.data.tags["status"] == table.loc[trial_id, "status"]
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        # a trial cut mid-epoch re-runs from its last checkpoint: an epoch may show twice
        assert set(steps) == set(range(1, table.loc[trial_id, "epochs_run"] + 1)), steps
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {
        "best_recipe.yaml", "summary.json"}
    assert (tmp_path / "mlruns" / "exp").is_dir()  # artifacts beside the database
