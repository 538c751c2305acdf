"""Declarative search spaces over Recipe knobs: distributions, validation, presets, converters.

A space is plain data: a dict (or YAML file) of knob -> fixed value or distribution::

    from search_spaces import SearchSpace, choice, loguniform, randint

    space = SearchSpace({
        "dataset": "digits",
        "lr": loguniform(1e-3, 1.0),
        "lr_schedule": choice(["step", "cosine"]),
        "step_size": randint(2, 8, when={"lr_schedule": "step"}),
    })

It is validated against the Recipe's knob catalog when built, and converted to Ray Tune, hyperopt
or Optuna objects only in ``search_spaces.convert``.
"""

from search_spaces.convert import (
    ClipToSpace,
    flatten_config,
    merge_fixed,
    optuna_distributions,
    pbt_mutations,
    to_hyperopt_point,
    to_hyperopt_space,
    to_optuna_space,
    to_tune_param_space,
)
from search_spaces.distributions import (
    Choice,
    Distribution,
    Grid,
    LogUniform,
    QRandInt,
    RandInt,
    Uniform,
    choice,
    grid,
    loguniform,
    qrandint,
    randint,
    uniform,
)
from search_spaces.registry import list_presets, load_space, preset_path
from search_spaces.space import SearchSpace, active_knobs, sample

__all__ = [
    "Choice", "ClipToSpace", "Distribution", "Grid", "LogUniform", "QRandInt", "RandInt",
    "SearchSpace", "Uniform", "active_knobs", "choice", "flatten_config", "grid", "list_presets",
    "load_space", "loguniform", "merge_fixed", "optuna_distributions", "pbt_mutations",
    "preset_path", "qrandint", "randint", "sample", "to_hyperopt_point", "to_hyperopt_space",
    "to_optuna_space", "to_tune_param_space", "uniform",
]
