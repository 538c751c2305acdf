"""The run settings: everything that defines a tuning run besides its space, their validation
(resources, counts, searcher/scheduler pairing), and the facts about a space the runner needs.
Saved beside Ray's state, so `resume` rebuilds the run from them; neither api nor runner needs the
other's internals.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from search_spaces import SearchSpace
from trainables.constraints import parse_constraints
from trainables.errors import ConfigError
from trainables.recipe import DATA_KNOBS, KNOBS, Recipe
from tuner.running import storage
from tuner.running.schedulers import PAUSING, check_multi_objective_scheduler, check_pairing
from tuner.running.searchers import check_multi_objective_searcher

if TYPE_CHECKING:
    from tuner.running.pareto import Objective

SETTINGS_FILE = "cnn_tuner_run.json"
DEFAULT_NUM_SAMPLES = 16
# how Ray Train places a data-parallel trial's workers (ScalingConfig.placement_strategy): pack
# keeps a group on as few nodes as it fits, spread puts each worker on another node where it
# can; the strict ones refuse to start otherwise
WORKER_PLACEMENTS = ("pack", "spread", "strict_pack", "strict_spread")


def check_placement(value: Any) -> None:
    if value not in WORKER_PLACEMENTS:
        raise ConfigError(f"worker_placement: must be one of {', '.join(WORKER_PLACEMENTS)}, "
                          f"got {value!r}")


@dataclass
class RunSettings:
    """Everything that defines a tuning run; saved beside Ray's state so `resume` can rebuild it."""

    space: dict[str, Any]
    searcher: str = "tpe"
    scheduler: str = "asha"
    num_samples: int = DEFAULT_NUM_SAMPLES
    max_epochs: int = 12
    metric: str = "val_acc"
    mode: str = "max"
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    workers_per_trial: int = 1  # >1: data-parallel trials, resources per worker (dp_trial)
    worker_placement: str = "pack"  # where a data-parallel trial's workers go (WORKER_PLACEMENTS)
    max_concurrent: int | None = None
    seed: int = 0
    max_failures: int = 2
    checkpoint_every: int = 1
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    shared_storage: bool = False  # every cluster node sees the storage path (tuner.running.cluster)
    mlflow: str | None = None  # MLflow tracking URI, None: off (tuner.running.trackers)
    wandb: bool = False  # Weights & Biases through Ray's callback (tuner.running.trackers)
    constraints: tuple[str, ...] = ()  # on each trial's cost (trainables.constraints)
    confirm_top: int | None = None  # retrain the top K over seeds after the search (confirm)
    confirm_seeds: int = 3
    objectives: tuple[str, ...] = ()  # 2-3 'metric:mode' texts: a multi-objective run (pareto)
    warm_start: str | None = None  # an earlier experiment seeding the searcher (warm_start)

    def __post_init__(self) -> None:
        # one string is one constraint; JSON gives back a list
        self.constraints = ((self.constraints,) if isinstance(self.constraints, str)
                            else tuple(self.constraints or ()))
        self.objectives = ((self.objectives,) if isinstance(self.objectives, str)
                           else tuple(self.objectives or ()))

    def validate(self, space: SearchSpace) -> None:
        """Refuse settings no run can use, in one line, before Ray starts (resources, counts,
        pairings, fp16, constraints). Messages name the Python parameter; the CLI shows its flag
        instead."""
        parse_constraints(self.constraints)
        if self.confirm_top is not None:
            check_confirm(self.confirm_top, self.confirm_seeds, "confirm_top", "confirm_seeds")
        self._check_objectives()
        check_resources(self.cpus_per_trial, self.gpus_per_trial)
        self._check_workers(space)
        if self.num_samples < 1:
            raise ConfigError(f"num_samples: must be >= 1, got {self.num_samples}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent: must be >= 1, got {self.max_concurrent}")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"mode: must be 'min' or 'max', got {self.mode!r}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every: must be >= 1 epoch, got "
                              f"{self.checkpoint_every}")
        if self.max_failures < -1:
            raise ConfigError(f"max_failures: must be >= 0 (or -1: retry forever), got "
                              f"{self.max_failures}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed: must be in [0, 2**32), got {self.seed}")
        if self.scheduler in PAUSING and self.checkpoint_every != 1:
            raise ConfigError(f"checkpoint_every: scheduler {self.scheduler!r} pauses trials "
                              "and resumes them from the checkpoint of their last epoch, so it "
                              f"needs 1, got {self.checkpoint_every}")
        check_pairing(self.searcher, self.scheduler)
        if self.gpus_per_trial == 0 and "fp16" in possible_values(space, "precision"):
            raise ConfigError("knob 'precision': the space allows fp16, which needs a CUDA "
                              "device, but gpus_per_trial is 0")

    def _check_objectives(self) -> None:
        """A multi-objective run: 2-3 objectives, a searcher and scheduler that handle several
        (tuner.running.searchers / schedulers ``MULTI_OBJECTIVE``), and ``metric``/``mode``
        naming the first objective (what the live view, the report and best_recipe.yaml rank
        by)."""
        if not self.objectives:
            return
        objectives = self.objective_list
        check_multi_objective_searcher(self.searcher)
        check_multi_objective_scheduler(self.scheduler)
        first = objectives[0]
        if (self.metric, self.mode) not in (("val_acc", "max"), (first.metric, first.mode)):
            raise ConfigError(f"metric: with objectives the first objective ({first.text}) is "
                              f"the metric; leave metric/mode unset, got {self.metric}:"
                              f"{self.mode}")
        self.metric, self.mode = first.metric, first.mode

    @property
    def objective_list(self) -> tuple[Objective, ...]:
        """The run's objectives, parsed (empty: a single-objective run)."""
        from tuner.running.pareto import parse_objectives  # numpy only

        return parse_objectives(self.objectives) if self.objectives else ()

    def _check_workers(self, space: SearchSpace) -> None:
        """Data-parallel trials (workers_per_trial > 1): what they cannot do, refused up front."""
        n = self.workers_per_trial
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"workers_per_trial: must be a whole number >= 1, got {n!r}")
        check_placement(self.worker_placement)
        if self.gpus_per_trial > 1:
            raise ConfigError(f"gpus_per_trial: a trial's worker trains on one GPU, got "
                              f"{self.gpus_per_trial:g}; to train one trial on several GPUs "
                              "set workers_per_trial to the number of GPUs (one worker each)")
        if n == 1:
            return
        if self.gpus_per_trial == 0 and True in possible_values(space, "sync_bn"):
            raise ConfigError("knob 'sync_bn': the space allows sync_bn true, which needs CUDA "
                              f"workers (SyncBatchNorm has no CPU kernel), but gpus_per_trial "
                              f"is 0 with workers_per_trial {n}")

    def save(self, path: str) -> None:
        storage.write_text(storage.join(path, SETTINGS_FILE),
                           json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str) -> RunSettings:
        f = storage.join(path, SETTINGS_FILE)
        text = storage.read_text(f)
        if text is None:
            raise ConfigError(f"not a cnn-tuner experiment folder (no {SETTINGS_FILE})",
                              where=str(path))
        try:
            return cls(**json.loads(text))
        except (json.JSONDecodeError, TypeError) as e:
            raise ConfigError(f"corrupt run settings ({e})", where=f) from None


def data_recipe(space: SearchSpace) -> Recipe:
    """The Recipe holding only the space's data knobs: every trial shares its dataset."""
    return Recipe.from_dict({k: v for k, v in space.fixed.items() if k in DATA_KNOBS})


def possible_values(space: SearchSpace, knob: str) -> set[Any]:
    """Every value ``knob`` can take in trials of ``space`` (its default when not in it)."""
    if knob in space.fixed:
        return {space.fixed[knob]}
    dist = space.tuned.get(knob)
    if dist is None:
        return {KNOBS[knob].default}
    return set(getattr(dist, "values", ())) | {KNOBS[knob].default} if dist.parent else \
        set(getattr(dist, "values", ()))


def check_confirm(top: int, seeds: int, top_name: str = "top",
                  seeds_name: str = "seeds") -> None:
    """Confirmation over seeds (tuner.running.confirm): at least one recipe, and at least two
    seeds each (a confidence interval needs two runs). The names are the caller's parameters."""
    for name, value, low, why in ((top_name, top, 1, "the best trials to retrain"),
                                  (seeds_name, seeds, 2, "a confidence interval needs at least "
                                   "two runs per recipe")):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{name}: must be a whole number >= {low} ({why}), got {value!r}")


def check_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """A trial's resources: CPUs > 0, GPUs >= 0, fractions only below one GPU."""
    if cpus_per_trial <= 0:
        raise ConfigError(f"cpus_per_trial: must be > 0, got {cpus_per_trial}")
    if gpus_per_trial < 0:
        raise ConfigError(f"gpus_per_trial: must be >= 0, got {gpus_per_trial}")
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise ConfigError(f"gpus_per_trial: above 1 it must be a whole number, got "
                          f"{gpus_per_trial}")
