"""Experiment trackers beside the experiment folder: MLflow, Weights & Biases, TensorBoard.

- **MLflow** (``RunConfig(mlflow=True | URI)``, ``--mlflow [URI]``): one MLflow experiment named
  after the cnn-tuner experiment; in it a parent run for the whole tuning run and, nested under
  it (the ``mlflow.parentRunId`` tag), one run per trial: params = the trial's knobs, metrics =
  its epoch metrics (step = epoch), tags = ``trial_id``, ``status`` and ``stop_reason``. The
  parent holds the run settings as params and ``best_recipe.yaml``, ``summary.json`` and
  ``results.csv`` as artifacts, logged once the results are collected (``log_results``).
  Runs are found again by their tags, so ``resume`` continues the same MLflow runs.
- **Weights & Biases** (``wandb=True``, ``--wandb``): Ray's ``WandbLoggerCallback``, offline
  unless ``WANDB_MODE`` says otherwise (no API key needed); the offline runs go to
  ``STORAGE/NAME/wandb/`` for ``wandb sync``. In ``wandb_logger``: Ray's module imports wandb
  (0.3 s), so only a run with W&B on imports it.
- **TensorBoard**: Ray itself writes event files into every trial folder (its
  ``TBXLoggerCallback``, on whenever tensorboardX is installed): nothing to switch on.

Ray's own ``MLflowLoggerCallback`` is not used: it neither nests trials under a parent run nor
finds its runs again on resume (a resumed trial got a second MLflow run), and it logs a metric
per request; this one is written on ``MlflowClient`` and logs each epoch in one batch.
Everything here runs on the driver; the packages are imported only when a tracker is on.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.logger import LoggerCallback

from trainables.errors import ConfigError, first_line
from tuner.running import storage
from tuner.running.results import BEST_RECIPE, RESULTS_CSV, SUMMARY

if TYPE_CHECKING:
    from tuner.running.results import TuneResult
    from tuner.running.settings import RunSettings

# the tags that tell cnn-tuner's MLflow runs apart: the parent of an experiment folder, a trial
ROLE_TAG, PATH_TAG, TRIAL_TAG = "cnn_tuner.role", "cnn_tuner.path", "trial_id"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag (what mlflow.start_run(nested=) sets)
# numbers in a trial's result that are bookkeeping, not metrics
NOT_METRICS = frozenset({"epoch", "training_iteration", "iterations_since_restore", "pid",
                         "timestamp", "done", "should_checkpoint", "time_since_restore",
                         "resumed_from"})
# the run settings the parent run shows as params
PARENT_PARAMS = ("searcher", "scheduler", "num_samples", "max_epochs", "metric", "mode", "seed",
                 "cpus_per_trial", "gpus_per_trial", "max_concurrent")


def require(tracker: str) -> None:
    """ConfigError naming the field (``mlflow:``/``wandb:``) when the tracker's package is not
    installed; the package is the extra of the same name."""
    try:
        __import__(tracker)
    except ImportError:
        raise ConfigError(f"{tracker}: needs the {tracker} package: pip install "
                          f"'cnn-tuner[{tracker}]'") from None


def mlflow_uri(value: bool | str | None) -> str | None:
    """``RunConfig.mlflow`` as the tracking URI a run saves (None: off). True is MLflow's default
    store (``MLFLOW_TRACKING_URI``, else ./mlruns or sqlite:///mlflow.db, by MLflow version);
    local paths become absolute so that ``resume`` from another folder finds the same store."""
    if value is None or value is False:
        return None
    if value is not True and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"mlflow: True (MLflow's default tracking store) or a tracking URI, "
                          f"got {value!r}")
    require("mlflow")
    import mlflow

    if value is True:
        return mlflow.get_tracking_uri()
    if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(value[len("sqlite:///"):]).expanduser().resolve())
    if not storage.is_uri(value):
        return str(Path(value).expanduser().resolve())
    return value


def experiment_name(path: str) -> str:
    """The MLflow experiment (and W&B group) of an experiment folder: the folder's name."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


@contextlib.contextmanager
def scoped_environ(**values: str) -> Iterator[None]:
    """Environment variables set for the duration of a block, then restored."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check(settings: RunSettings, path: str) -> None:
    """Before Ray starts: the trackers' packages are installed and the MLflow store answers, with
    the experiment folder ``path``'s MLflow experiment usable there (not deleted). One-line
    ConfigErrors naming the field."""
    if not isinstance(settings.wandb, bool):
        raise ConfigError(f"wandb: True or False, got {settings.wandb!r}")
    if settings.wandb:
        require("wandb")
    if not settings.mlflow:
        return
    require("mlflow")
    from mlflow.tracking import MlflowClient

    uri, name = settings.mlflow, experiment_name(path)
    # MLflow retries an unreachable server for minutes; a check before the run asks once
    with scoped_environ(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="20"):
        try:
            experiment = MlflowClient(uri).get_experiment_by_name(name)
        except Exception as e:  # MLflow raises many kinds (MlflowException, requests, sqlalchemy)
            if "MLFLOW_ALLOW_FILE_STORE" in str(e):
                folder = uri.removeprefix("file://")
                raise ConfigError(f"mlflow: this MLflow refuses a folder as tracking store "
                                  f"({uri}); give a database such as sqlite:///{folder}/mlflow.db"
                                  ", or set MLFLOW_ALLOW_FILE_STORE=true") from None
            raise ConfigError(f"mlflow: tracking store {uri} not usable "
                              f"({first_line(e, 200)})") from None
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ConfigError(f"mlflow: the MLflow experiment {name!r} is deleted in {uri}; restore "
                          "it (mlflow experiments restore) or choose another name")


def callbacks(settings: RunSettings, storage_root: str, name: str) -> list[Any]:
    """The Ray Tune callbacks of the trackers a run has on (TensorBoard needs none)."""
    path = storage.join(storage_root, name)
    out: list[Any] = []
    if settings.mlflow:
        params = {k: getattr(settings, k) for k in PARENT_PARAMS}
        out.append(MLflowCallback(settings.mlflow, experiment_name(path), path, params))
    if settings.wandb:
        from tuner.running.wandb_logger import wandb_callback  # Ray's module imports wandb: 0.3 s
        out.append(wandb_callback(path, experiment_name(path)))
    return out


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _experiment_id(client: Any, uri: str, name: str) -> str:
    """The MLflow experiment ``name``, created when missing. In a local SQLite store, MLflow
    would put a new experiment's artifacts in ./mlruns of whatever folder the run starts from;
    here they go beside the database (DB_FOLDER/mlruns/NAME), where ``resume`` finds them too."""
    experiment = client.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        database = Path(uri[len("sqlite:///"):])
        location = (database.parent / "mlruns" / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


def _parent_run(client: Any, experiment_id: str, path: str) -> str | None:
    """The parent run of the experiment folder ``path``, by its tags (None: not created yet)."""
    runs = client.search_runs([experiment_id], f"tags.`{ROLE_TAG}` = 'parent'",
                              max_results=1000)
    ids = [r.info.run_id for r in runs if r.data.tags.get(PATH_TAG) == path]
    return ids[0] if ids else None


def _trial_runs(client: Any, experiment_id: str, parent: str) -> dict[str, str]:
    """trial id -> MLflow run id of the trials nested under ``parent``."""
    runs = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent}'",
                              max_results=50000)
    return {r.data.tags[TRIAL_TAG]: r.info.run_id for r in runs if TRIAL_TAG in r.data.tags}


class MLflowCallback(LoggerCallback):
    """A Ray Tune callback on the driver: each trial an MLflow run nested under the experiment's
    parent run (module docstring). Order: ``setup`` finds or creates the experiment and parent;
    ``log_trial_start`` finds or creates the trial's run and logs its knobs once;
    ``log_trial_result`` logs an epoch; ``log_trial_end`` marks the run FINISHED or FAILED.
    A tracking error never stops the tuning: one warning, then this callback stops logging."""

    def __init__(self, tracking_uri: str, name: str, path: str, params: dict[str, Any]) -> None:
        self.tracking_uri, self.name, self.path, self.params = tracking_uri, name, path, params
        self._client: Any = None
        self._experiment = self._parent = ""
        self._runs: dict[str, str] = {}
        self._broken = False

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks into tuner.pkl
        return {**self.__dict__, "_client": None}

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self._client = _client(self.tracking_uri)
        self._experiment = _experiment_id(self._client, self.tracking_uri, self.name)
        parent = _parent_run(self._client, self._experiment, self.path)
        if parent is None:
            parent = self._client.create_run(
                self._experiment, run_name=self.name,
                tags={ROLE_TAG: "parent", PATH_TAG: self.path}).info.run_id
            self._log_params(parent, self.params)
        self._parent = parent
        self._runs = _trial_runs(self._client, self._experiment, parent)

    def log_trial_start(self, trial: Any) -> None:
        if trial.trial_id in self._runs or self._broken:
            return  # resumed, unpaused or retried: the same MLflow run goes on
        with self._guard(f"the start of trial {trial.trial_id}"):
            run = self._client.create_run(
                self._experiment, run_name=f"trial_{trial.trial_id}",
                tags={PARENT_TAG: self._parent, TRIAL_TAG: trial.trial_id,
                      PATH_TAG: self.path})
            self._runs[trial.trial_id] = run.info.run_id
            # PBT changes a trial's knobs later; MLflow params are write-once: the first ones
            self._log_params(run.info.run_id, trial.config)

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        if trial.trial_id not in self._runs:
            self.log_trial_start(trial)
        if self._broken:
            return
        from mlflow.entities import Metric

        step = int(result.get("epoch") or iteration)
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(v), stamp, step) for k, v in result.items()
                   if k not in NOT_METRICS and isinstance(v, numbers.Real)
                   and not isinstance(v, bool)]
        with self._guard(f"epoch {step} of trial {trial.trial_id}"):
            self._client.log_batch(self._runs[trial.trial_id], metrics=metrics)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        if trial.trial_id in self._runs and not self._broken:
            with self._guard(f"the end of trial {trial.trial_id}"):
                self._client.set_terminated(self._runs[trial.trial_id],
                                            "FAILED" if failed else "FINISHED")

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items() if v is not None]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(run_id, params=items[i:i + 100])

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except Exception as e:  # an MLflow outage must not end hours of tuning
            self._broken = True
            warnings.warn(f"mlflow: could not log {what} to {self.tracking_uri} "
                          f"({first_line(e, 160)}); MLflow logging stops here, the run goes on "
                          "(its results are in the experiment folder)", stacklevel=3)


def log_results(settings: RunSettings, result: TuneResult) -> None:
    """After the results are collected: the parent run gets best_recipe.yaml, summary.json and
    results.csv as artifacts and the best metrics; each trial's run its ``status`` and
    ``stop_reason`` (tuner.running.results); the parent is marked FINISHED."""
    if not settings.mlflow:
        return
    from mlflow.entities import Metric, RunTag

    client = _client(settings.mlflow)
    name = experiment_name(result.path)
    experiment = client.get_experiment_by_name(name)
    parent = _parent_run(client, experiment.experiment_id, result.path) if experiment else None
    if parent is None:
        warnings.warn(f"mlflow: no parent run of {result.path} in {settings.mlflow}; the results "
                      "were not logged there", stacklevel=2)
        return
    runs = _trial_runs(client, experiment.experiment_id, parent)
    for row in result.dataframe.itertuples(index=False):
        if str(row.trial_id) in runs:
            client.log_batch(runs[str(row.trial_id)], tags=[
                RunTag("status", str(row.status)), RunTag("stop_reason", str(row.stop_reason))])
    for file in (BEST_RECIPE, SUMMARY, RESULTS_CSV):
        text = storage.read_text(storage.join(result.path, file))
        if text is not None:
            client.log_text(parent, text, file)
    summary = result.summary
    stamp = int(time.time() * 1000)
    best = [Metric(k, float(summary[k]), stamp, 0) for k in ("best_val_acc", "best_test_acc")
            if summary.get(k) is not None]
    tags = [RunTag("best_trial", str(summary["best_trial"]))] if summary.get("best_trial") else []
    client.log_batch(parent, metrics=best, tags=tags)
    client.set_terminated(parent, "FINISHED")
