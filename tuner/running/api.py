"""``tuner.tune(space, ...)``: the Python API over Ray Tune.

A run is: validate the space -> load the data once on the driver -> put it in the object store
(``tune.with_parameters``) -> ``ray.tune.Tuner`` with a searcher and a scheduler -> results
(``results.csv``, ``best_recipe.yaml``, ``summary.json``) written into the experiment folder.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from search_spaces import SearchSpace, load_space
from trainables.errors import ConfigError
from trainables.models import require_weights
from trainables.recipe import KNOBS
from tuner.running.config import Resources, RunConfig, TuneConfig, with_shortcuts
from tuner.running.confirm import confirm_run
from tuner.running.loopback import prefer_loopback
from tuner.running.results import TuneResult, collect_results
from tuner.running.settings import DEFAULT_NUM_SAMPLES, RunSettings, possible_values
from tuner.running.storage import check_folder_target, is_uri, join

DEFAULT_STORAGE = "cnn-tuner-results"


def resolve_space(space: SearchSpace | dict | str | Path, *, max_epochs: int | None = None,
                  fixed: dict[str, Any] | None = None) -> SearchSpace:
    """The space to search: a preset name, YAML file, dict or SearchSpace, with knobs fixed on
    top (``fixed``: the CLI's --set, --dataset and --data-dir; max_epochs -> epochs). Paths
    become absolute because trials run in their own working directories."""
    if isinstance(space, SearchSpace):
        base = space.to_dict()
    elif isinstance(space, dict):
        base = SearchSpace.from_dict(space).to_dict()
    else:
        base = load_space(str(space)).to_dict()
    extra = dict(fixed or {})
    if max_epochs is not None:
        extra["epochs"] = max_epochs
    base.update(extra)
    for key in ("data_dir", "pretrained"):
        value = base.get(key)
        if isinstance(value, str) and value not in ("none", "") and (
                key == "data_dir" or Path(value).exists()):
            base[key] = str(Path(value).expanduser().resolve())
    return SearchSpace.from_dict(base)


def _num_samples(searcher: str, num_samples: int | None) -> int:
    """Trials per point of the space: grid search runs each grid point once, so a count given
    with it is refused rather than silently overridden; 16 samples otherwise by default."""
    if searcher != "grid":
        return DEFAULT_NUM_SAMPLES if num_samples is None else num_samples
    if num_samples is not None:
        raise ConfigError(f"num_samples: grid search runs every grid point once; leave it unset "
                          f"(got {num_samples})")
    return 1


def _check_gpus(gpus_per_trial: float, address: str | None) -> None:
    """A trial asking for more GPUs than the cluster has would wait forever: refuse it now.
    Known only for a local run (its GPUs are this machine's) or a Ray already started."""
    if gpus_per_trial <= 0 or (address and not _ray_initialized()):
        return
    if _ray_initialized():
        import ray

        count = ray.cluster_resources().get("GPU", 0)
    else:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < gpus_per_trial:
        raise ConfigError(f"gpus_per_trial: {gpus_per_trial:g} GPU(s) per trial, but this "
                          f"machine has {count:g}; no trial could start (give address: a "
                          "cluster with GPUs)")


def _ray_initialized() -> bool:
    import sys

    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def tune(space: SearchSpace | dict | str | Path = "quick", *, num_samples: int | None = None,
         max_epochs: int | None = None, fixed: dict[str, Any] | None = None,
         tune_config: TuneConfig | None = None, resources: Resources | None = None,
         run_config: RunConfig | None = None) -> TuneResult:
    """Search ``space`` with Ray Tune and return the trials, the best recipe and its metrics.

    ``space`` is a preset name, a YAML path, a dict of knob -> distribution or value, or a
    SearchSpace; ``fixed`` fixes knobs on top (the CLI's ``--set``, ``--dataset``,
    ``--data-dir``). ``num_samples`` and ``max_epochs`` are shortcuts for the same fields of
    ``tune_config``; ``resources`` is what each trial reserves, ``run_config`` where and how the
    run goes (see ``tuner.running.config``). Everything is validated before Ray starts; errors
    are ``ConfigError`` with one line naming the parameter or knob and the rule. On a multi-node
    cluster (``RunConfig.address``) ``storage`` must be shared: a URI (``s3://...``), a network
    file system, or a path declared shared with ``shared_storage=True`` (or the environment
    variable ``CNN_TUNER_SHARED_STORAGE=1``); see ``tuner.running.cluster``.
    """
    config = with_shortcuts(tune_config, num_samples=num_samples, max_epochs=max_epochs)
    resources, run = resources or Resources(), run_config or RunConfig()
    prefer_loopback(run.address)
    from tuner.running import trackers
    from tuner.running.runner import run_experiment  # imports Ray: keep `import tuner` light

    space_obj = resolve_space(space, max_epochs=config.max_epochs, fixed=fixed)
    epochs = space_obj.fixed.get("epochs", KNOBS["epochs"].default)
    if "epochs" in space_obj.tuned:
        raise ConfigError("max_epochs: the space tunes 'epochs'; fix it with max_epochs (the "
                          "budget ASHA counts in)")
    settings = RunSettings(
        space=space_obj.to_dict(), searcher=config.searcher, scheduler=config.scheduler,
        num_samples=_num_samples(config.searcher, config.num_samples),
        max_epochs=int(epochs), metric=config.metric, mode=config.mode,
        cpus_per_trial=resources.cpus_per_trial, gpus_per_trial=resources.gpus_per_trial,
        workers_per_trial=resources.workers_per_trial,
        worker_placement=resources.worker_placement, max_concurrent=config.max_concurrent,
        seed=config.seed, max_failures=run.max_failures,
        checkpoint_every=run.checkpoint_every, shared_storage=run.shared_storage,
        scheduler_options=asdict(config.scheduler_options), constraints=config.constraints,
        objectives=config.objectives, confirm_top=config.confirm_top,
        confirm_seeds=config.confirm_seeds, warm_start=_absolute(config.warm_start),
        mlflow=trackers.mlflow_uri(run.mlflow), wandb=run.wandb)
    settings.validate(space_obj)
    warm = _warm_start(settings, space_obj)
    require_weights(possible_values(space_obj, "model"), possible_values(space_obj, "pretrained"),
                    download=all(possible_values(space_obj, "download")))
    _check_gpus(resources.gpus_per_trial, run.address)
    _check_verbose(run.verbose)
    name = run.name or default_name(space_obj, config)
    root = storage_root(run.storage)
    if not is_uri(root):
        check_folder_target(root, "storage")
    trackers.check(settings, join(root, name))
    start = time.time()
    result_grid, path = run_experiment(settings, space_obj, storage=root, name=name,
                                       address=run.address, resume=run.resume,
                                       verbose=run.verbose, warm_start=warm)
    result = collect_results(result_grid, settings, path, wall_time_s=time.time() - start)
    result = confirm_run(result, settings, run.address, run.verbose)  # when confirm_top is set
    trackers.log_results(settings, result)
    return result


def _absolute(path: str | Path | None) -> str | None:
    """A local path made absolute (the run's settings keep it), a URI as given."""
    if path is None or is_uri(str(path)):
        return None if path is None else str(path)
    return str(Path(path).expanduser().resolve())


def _warm_start(settings: RunSettings, space: SearchSpace) -> Any:
    """The earlier experiment's trials that seed the searcher (tuner.running.warm_start), read
    and checked against the space before Ray starts; None without warm_start."""
    if settings.warm_start is None:
        return None
    from tuner.running.searchers import check_warm_start_searcher
    from tuner.running.warm_start import load_warm_start

    check_warm_start_searcher(settings.searcher)
    if settings.objectives:
        raise ConfigError("warm_start: a multi-objective run cannot be warm-started (the "
                          "earlier trials carry one reward each)")
    return load_warm_start(settings.warm_start, space, settings.metric, settings.mode)


def default_name(space: SearchSpace, config: TuneConfig) -> str:
    """An experiment's name unless one is given: DATASET-SEARCHER-SCHEDULER-TIME."""
    dataset = space.fixed.get("dataset", "digits")
    return f"{dataset}-{config.searcher}-{config.scheduler}-{datetime.now():%Y%m%d-%H%M%S}"


def storage_root(storage: str | Path | None) -> str:
    """Where experiments go: a URI as given, a local folder made absolute (trials run in their
    own working directories); ./cnn-tuner-results by default."""
    root = str(storage or DEFAULT_STORAGE)
    return root if is_uri(root) else str(Path(root).expanduser().resolve())


def _check_verbose(verbose: int) -> None:
    if not 0 <= verbose <= 3:
        raise ConfigError(f"verbose: must be 0, 1, 2 or 3, got {verbose}")


def resume(path: str | Path, *, address: str | None = None, verbose: int = 1) -> TuneResult:
    """Finish an interrupted experiment: unfinished trials resume from their checkpoints,
    errored ones restart, the searcher keeps its history."""
    prefer_loopback(address)
    from tuner.running import trackers
    from tuner.running.runner import restore_experiment

    _check_verbose(verbose)
    where = str(path) if is_uri(str(path)) else str(Path(path).expanduser().resolve())
    trackers.check(RunSettings.load(where), where)  # the run's trackers, before Ray starts
    start = time.time()
    result_grid, settings, exp_path = restore_experiment(path, address=address, verbose=verbose)
    result = collect_results(result_grid, settings, exp_path, wall_time_s=time.time() - start)
    result = confirm_run(result, settings, address, verbose)  # as the run's settings say
    trackers.log_results(settings, result)
    return result
