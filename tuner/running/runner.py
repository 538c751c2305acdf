"""The Ray side of a run: start or join Ray, build the trainable and the Tuner, fit, restore.

The dataset is loaded once here, on the driver, and put in Ray's object store once; every
trial on every node reads it from there (a node fetches it once into its local store).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune import CheckpointConfig, CLIReporter, FailureConfig, RunConfig, TuneConfig, Tuner

from search_spaces import Grid, SearchSpace
from trainables.data import DataSplits, load_recipe_data
from trainables.errors import ConfigError, first_line
from tuner.running.dp_trial import AbortOnStop, check_fits_cluster, dp_trial_slots, run_dp_trial
from tuner.running.dp_trial import trial_resources as dp_trial_resources
from tuner.running.progress import LiveView
from tuner.running.result_logs import keep_local_rows
from tuner.running.schedulers import PAUSING, SchedulerOptions, build_scheduler, min_open_trials
from tuner.running.searchers import build_search
from tuner.running.settings import RunSettings, data_recipe
from tuner.running.storage import is_uri
from tuner.running.trial import TrialOptions, run_trial

# Ray's own chatter that tells a CLI user nothing.
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# A local Ray enables token authentication by default and says so in a 245-character warning at
# every start; the setting is right (it stays on), the line tells a CLI user nothing.
logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
    logging.ERROR)
# Checkpointing every epoch forces frequent (cheap, ~10 ms) experiment snapshots; Ray warns.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Ray's result.json / progress.csv lost the rows written since its last sync to storage at every
# trial restart (a pause, a PBT exploit, a retry): tuner.running.result_logs
keep_local_rows()


def load_run_data(space: SearchSpace) -> DataSplits:
    """The run's dataset, loaded on the driver before Ray starts (missing data fails fast)."""
    return load_recipe_data(data_recipe(space))


_defer_shutdown = False  # inside a ``shutdown_after`` block


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join ``address`` (an existing cluster, or 'auto') or start a new local Ray bound to
    loopback (never silently joining another cluster on this machine); shut down only what
    this call started, when it ends or, inside ``shutdown_after``, when that block ends."""
    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                 configure_logging=True, logging_level="warning")
    if _defer_shutdown:  # shutdown_after shuts it down
        yield
        return
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def shutdown_after() -> Iterator[None]:
    """One command's Ray: a Ray that a run starts inside this block stays up until the block
    ends. The command line prints a run's summary before Ray's shutdown (1.4 s on 2 cores, the
    last thing a user waited for), and the confirmation after a search (``--confirm-top``)
    trains on the search's Ray instead of starting and stopping a second one."""
    global _defer_shutdown
    was_up, _defer_shutdown = ray.is_initialized(), True
    try:
        yield
    finally:
        _defer_shutdown = False
        if not was_up and ray.is_initialized():
            ray.shutdown()


class RunInterrupted(KeyboardInterrupt):
    """Ray Tune stopped on Ctrl+C / SIGINT with unfinished trials; its state is saved."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"interrupted; the experiment state is saved in {path}. Resume with: "
                         f"cnn-tuner resume {path}")


def expected_trials(settings: RunSettings, space: SearchSpace) -> int:
    """Trials a complete run has: num_samples x the grid's points (grid knobs multiply)."""
    points = 1
    for dist in space.tuned.values():
        if isinstance(dist, Grid):
            points *= len(dist.values)
    return settings.num_samples * points


def _fit(tuner: Tuner, path: str, settings: RunSettings, space: SearchSpace) -> Any:
    """Tuner.fit(), raising RunInterrupted if Ray stopped early (SIGINT) with trials left:
    a trial not finished, fewer trials than the run asks for (not yet suggested), or a Ctrl+C
    that Ray caught after every trial had started (Ray then marks the trials it stops
    TERMINATED, TuneController._cleanup_trials, so their status cannot tell)."""
    with _CtrlCWatch() as ctrl_c:
        grid = tuner.fit()
    trials = grid._experiment_analysis.trials  # noqa: SLF001 - Ray exposes no public status
    if (ctrl_c.caught or any(t.status not in ("TERMINATED", "ERROR") for t in trials)
            or len(trials) < expected_trials(settings, space)):
        raise RunInterrupted(path)
    return grid


class _CtrlCWatch:
    """Whether Ray Tune caught a Ctrl+C during ``fit()``. Ray installs its own SIGINT handler
    for the run and, when the signal comes, puts back the handler it found
    (ray/tune/tune.py, ``_setup_signal_catching``): this installs a handler of its own first,
    and finds it back in place after fit() exactly when Ray caught one. Ray catches only in the
    main thread and unless TUNE_DISABLE_SIGINT_HANDLER is set; elsewhere it knows nothing."""

    def __enter__(self) -> _CtrlCWatch:
        self.caught = False
        self.active = (threading.current_thread() is threading.main_thread()
                       and os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") in ("", "0"))
        if self.active:
            self.previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, sig: int, frame: Any) -> None:  # a second Ctrl+C: what it did before
        if callable(self.previous):
            self.previous(sig, frame)
        else:
            signal.default_int_handler(sig, frame)

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.caught = signal.getsignal(signal.SIGINT) == self._handler
            signal.signal(signal.SIGINT, self.previous)


def trial_slots(settings: RunSettings) -> int:
    """How many trials the running Ray cluster can hold at once (at least 1)."""
    resources = ray.cluster_resources()
    if settings.workers_per_trial > 1:
        return dp_trial_slots(settings.workers_per_trial, settings.cpus_per_trial,
                              settings.gpus_per_trial, resources)
    slots = resources.get("CPU", 1) / settings.cpus_per_trial
    if settings.gpus_per_trial:
        slots = min(slots, resources.get("GPU", 0) / settings.gpus_per_trial)
    return max(1, int(slots + 1e-9))


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def build_trainable(settings: RunSettings, data: DataSplits) -> Any:
    """The trainable with its resources; the dataset goes into the object store exactly once
    (an ObjectRef handed to with_parameters is passed through, not put again)."""
    # a paused trial resumes from the checkpoint of its last report: save at every report
    options = TrialOptions(checkpoint_every=settings.checkpoint_every,
                           checkpoint_budget=1.0 if settings.scheduler in PAUSING else 0.05,
                           constraints=settings.constraints, metric=settings.metric,
                           mode=settings.mode, objectives=settings.objectives)
    if settings.workers_per_trial > 1:  # data-parallel: Ray Train workers reserve their own
        trainable = tune.with_parameters(
            run_dp_trial, data_ref=[ray.put(data)], options=options,
            workers=settings.workers_per_trial, cpus_per_worker=settings.cpus_per_trial,
            gpus_per_worker=settings.gpus_per_trial, max_failures=settings.max_failures,
            placement=settings.worker_placement)
        trainable.__mixins__ = (AbortOnStop,)  # wrap_function makes it a base of the trainable
        return tune.with_resources(trainable, dp_trial_resources())
    trainable = tune.with_parameters(run_trial, data=ray.put(data), options=options)
    return tune.with_resources(trainable, {"cpu": settings.cpus_per_trial,
                                           "gpu": settings.gpus_per_trial})


def _reporter(settings: RunSettings, space: SearchSpace, name: str,
              verbose: int) -> tune.ProgressReporter | None:
    """What the console shows while Ray runs: nothing (0), the compact live view (1,
    tuner.running.progress), or Ray's own trial table every 10 s (2 and 3)."""
    if verbose <= 0:
        return None
    # Ray's new output engine (RAY_AIR_NEW_OUTPUT unset or 1) drops a passed reporter with a
    # warning (ray/tune/tune.py, "AIR_VERBOSITY is set, ignoring passed-in ProgressReporter");
    # it reads the variable when fit() runs, so a user's RAY_AIR_NEW_OUTPUT=1 would silently
    # replace our view and table: the legacy engine it is.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    if verbose == 1:
        return LiveView(name, settings, list(space.tuned))
    # conditional knobs are absent from some configs, which Ray's best-trial line can't show
    always = [k for k, d in space.tuned.items() if d.parent is None]
    return CLIReporter(parameter_columns=always[:8],
                       metric_columns={"epoch": "epoch", "val_acc": "val_acc",
                                       "val_loss": "val_loss", "images_per_s": "img/s"},
                       max_report_frequency=10, sort_by_metric=True,
                       print_intermediate_tables=True)


def _run_config(settings: RunSettings, space: SearchSpace, storage: str, name: str,
                verbose: int) -> RunConfig:
    # PBT clones another trial's checkpoint some time after choosing it, while that trial goes on
    # writing new ones; with num_to_keep Ray deletes the chosen one first and the clone errors
    # ("Could not recover from checkpoint as it does not exist on storage anymore"): keep all.
    keep = None if settings.scheduler == "pbt" else 4
    from tuner.running.trackers import callbacks  # MLflow, W&B (Ray writes TensorBoard itself)

    return RunConfig(
        name=name, storage_path=storage, verbose=verbose,
        progress_reporter=_reporter(settings, space, name, verbose),
        failure_config=FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=keep),
        callbacks=callbacks(settings, storage, name),
    )


def _scheduler(settings: RunSettings, space: SearchSpace) -> Any:
    return build_scheduler(settings.scheduler, settings.max_epochs,
                           SchedulerOptions(**settings.scheduler_options), space,
                           num_trials=expected_trials(settings, space),
                           objectives=settings.objective_list)


def _metric_mode(settings: RunSettings) -> tuple[Any, Any]:
    """What the searcher optimises: the metric and mode, or their lists for several
    objectives."""
    objectives = settings.objective_list
    if objectives:
        return [o.metric for o in objectives], [o.mode for o in objectives]
    return settings.metric, settings.mode


def _search_plan(settings: RunSettings, space: SearchSpace, max_concurrent: int,
                 warm_start: Any = None) -> Any:
    metric, mode = _metric_mode(settings)
    return build_search(settings.searcher, space, seed=settings.seed,
                        num_samples=settings.num_samples, metric=metric,
                        mode=mode, max_concurrent=max_concurrent,
                        constraints=settings.constraints, warm_start=warm_start)


def run_experiment(settings: RunSettings, space: SearchSpace, *, storage: str, name: str,
                   address: str | None, resume: bool, verbose: int,
                   warm_start: Any = None) -> tuple[Any, str]:
    """Fit a new experiment (or resume it when ``resume`` and it exists). ``warm_start``
    (tuner.running.warm_start) seeds a new experiment's searcher; a resumed one gets its
    searcher back from Ray's checkpoint, warm trials included, so it is not applied again."""
    path = f"{storage.rstrip('/')}/{name}"
    exists = Tuner.can_restore(path)
    if exists and not resume:
        raise ConfigError(f"experiment {path} already exists; finish it with `cnn-tuner resume "
                          f"{path}` (or pass --resume), or choose another --name")
    plan = _search_plan(settings, space, settings.max_concurrent or 0,  # validates before Ray
                        warm_start)
    scheduler = _scheduler(settings, space)
    open_trials, why = min_open_trials(scheduler, expected_trials(settings, space))
    if settings.max_concurrent and settings.max_concurrent < open_trials:
        raise ConfigError(f"max_concurrent: scheduler {settings.scheduler!r} pauses trials and "
                          f"{why}, so it needs at least {open_trials} trials open at once, got "
                          f"{settings.max_concurrent}")
    data = load_run_data(space)
    on_cluster = bool(address) or ray.is_initialized()  # not a Ray of our own
    with ray_session(address):
        if on_cluster:
            _check_storage(storage, settings)
        if settings.workers_per_trial > 1:
            check_fits_cluster(settings.workers_per_trial, settings.cpus_per_trial,
                               settings.gpus_per_trial, settings.worker_placement)
            if hasattr(scheduler, "max_running"):  # PBT: take turns as the groups fit
                scheduler.max_running = trial_slots(settings)
        if exists:
            return _restore(path, settings, space, data, verbose), path
        if not settings.max_concurrent:  # default: as many trials as the cluster holds
            plan = _search_plan(settings, space, max(trial_slots(settings), open_trials),
                                warm_start)
        settings.save(path)
        tuner = Tuner(
            build_trainable(settings, data), param_space=plan.param_space,
            tune_config=TuneConfig(
                # several objectives: the searcher and scheduler hold them, Tune ranks nothing
                metric=None if settings.objectives else settings.metric,
                mode=None if settings.objectives else settings.mode,
                search_alg=plan.search_alg,
                scheduler=scheduler, num_samples=settings.num_samples,
                max_concurrent_trials=plan.max_concurrent_trials,
                # a data-parallel trial's actor owns its Ray Train group: end it with the trial
                reuse_actors=settings.workers_per_trial == 1,
                trial_dirname_creator=_trial_dirname),
            run_config=_run_config(settings, space, storage, name, verbose))
        return _fit(tuner, path, settings, space), path


def check_experiment_state(path: str) -> None:
    """Ray restarts an experiment FROM SCRATCH when its state file does not parse; refuse that:
    a corrupt or truncated state is an error naming the file, never a silent restart."""
    if is_uri(path):
        return
    states = sorted(Path(path).glob("experiment_state-*.json"))
    if not states:
        raise ConfigError("no Ray Tune experiment state to resume (experiment_state-*.json is "
                          "missing)", where=path)
    try:
        state = json.loads(states[-1].read_text())
        if not isinstance(state, dict) or "trial_data" not in state:
            raise ValueError("no trial_data")
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"corrupt Ray Tune experiment state, cannot resume ({e}); restore the "
                          "file from a backup or start a new experiment",
                          where=str(states[-1])) from None


def _check_storage(storage: str, settings: RunSettings) -> None:
    """On a Ray we joined (a cluster), refuse node-local storage when trials may run on
    several nodes (tuner.running.cluster); a Ray this run starts itself is one node."""
    from tuner.running.cluster import check_shared_storage

    resources = {"CPU": settings.cpus_per_trial, "GPU": settings.gpus_per_trial}
    check_shared_storage(storage, shared_storage=settings.shared_storage,
                         trial_resources={k: v for k, v in resources.items() if v})


def _restore(path: str, settings: RunSettings, space: SearchSpace, data: DataSplits,
             verbose: int) -> Any:
    check_experiment_state(path)
    # Ray saves the param space with its sample_from functions replaced by placeholders and, on
    # restore, resolves them only from a param_space passed again: without it, every trial the
    # random/grid generator had not created yet got ('__fn_ph', ...) tuples as knob values
    # (Tuner.restore's param_space argument, ray-project/ray#32317). Same space, same seed.
    param_space = _search_plan(settings, space, settings.max_concurrent or 0).param_space
    try:
        tuner = Tuner.restore(path, trainable=build_trainable(settings, data),
                              resume_unfinished=True, restart_errored=True,
                              param_space=param_space or None)
    except (ValueError, KeyError, TypeError, OSError, EOFError, RuntimeError) as e:
        # a truncated or corrupt experiment_state-*.json / searcher state: never start afresh
        state = sorted(Path(path).glob("experiment_state-*.json")) if not is_uri(path) else []
        where = str(state[-1]) if state else path
        raise ConfigError(f"corrupt Ray Tune experiment state, cannot resume "
                          f"({type(e).__name__}: {first_line(e, 160)})",
                          where=where) from None
    # Ray restores the RunConfig pickled when the run started (tuner.pkl), its verbosity and
    # console reporter included; this resume's verbosity replaces them (the internal tuner's
    # run config is the object fit() reads)
    run_config = tuner._local_tuner.get_run_config()  # noqa: SLF001
    run_config.verbose = verbose
    run_config.progress_reporter = _reporter(settings, space, path.rstrip("/").rsplit("/", 1)[-1],
                                             verbose)
    return _fit(tuner, path, settings, space)


def restore_experiment(path: str | Path, *, address: str | None,
                       verbose: int) -> tuple[Any, RunSettings, str]:
    """Resume an experiment folder written by `cnn-tuner run`."""
    path = str(path) if is_uri(str(path)) else str(Path(path).expanduser().resolve())
    settings = RunSettings.load(path)
    if not Tuner.can_restore(path):
        raise ConfigError("no Ray Tune experiment state to resume (experiment_state-*.json is "
                          "missing)", where=path)
    space = SearchSpace.from_dict(settings.space)
    data = load_run_data(space)
    on_cluster = bool(address) or ray.is_initialized()
    with ray_session(address):
        if on_cluster:
            _check_storage(path, settings)
        return _restore(path, settings, space, data, verbose), settings, path
