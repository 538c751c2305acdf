"""Search spaces: validation, YAML, presets, sampling, and conversion to real Ray Tune / hyperopt /
Optuna.

No Ray cluster: Ray's own variant generator (what BasicVariantGenerator runs) and hyperopt's
stochastic sampler and TPE are called directly.
"""

from __future__ import annotations

import collections
import itertools
import pickle
import random
import warnings

import hyperopt
import numpy as np
import optuna
import pytest
import yaml
from hyperopt.pyll.stochastic import sample as hp_sample
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray.tune.search.variant_generator import generate_variants

from search_spaces import (
    SearchSpace,
    active_knobs,
    choice,
    flatten_config,
    grid,
    list_presets,
    load_space,
    loguniform,
    merge_fixed,
    qrandint,
    randint,
    sample,
    to_hyperopt_space,
    to_optuna_space,
    to_tune_param_space,
    uniform,
)
from search_spaces.registry import preset_path
from trainables.errors import ConfigError
from trainables.recipe import DATA_KNOBS, FAMILIES, KNOBS, Recipe

SCHEDULE_SPACE = {
    "dataset": "digits",
    "epochs": 12,
    "lr": {"loguniform": [1.0e-3, 1.0]},
    "lr_schedule": {"choice": ["step", "cosine", "exponential"]},
    "step_size": {"randint": [2, 4], "when": {"lr_schedule": ["step"]}},
    "gamma": {"uniform": [0.1, 0.5], "when": {"lr_schedule": ["step", "exponential"]}},
    "width": {"qrandint": [16, 48, 16]},
    "batch_size": {"grid": [64, 128]},
}


def build_recipe(flat: dict) -> Recipe:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Recipe.from_dict(flat)


def ray_configs(param_space: dict, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [spec for _ in range(n) for _, spec in generate_variants(param_space, random_state=rng)]


# -- construction, YAML ---------------------------------------------------------------------------
def test_dict_and_yaml_round_trip(tmp_path):
    space = SearchSpace(SCHEDULE_SPACE)
    assert space.fixed == {"dataset": "digits", "epochs": 12}
    assert list(space.tuned) == ["lr", "lr_schedule", "step_size", "gamma", "width", "batch_size"]
    assert space.conditions == {"step_size": ("lr_schedule", ("step",)),
                                "gamma": ("lr_schedule", ("step", "exponential"))}
    assert SearchSpace(space.to_dict()) == space
    path = tmp_path / "space.yaml"
    text = space.to_yaml(path)
    assert "lr: {loguniform: [0.001, 1.0]}" in text.splitlines()
    again = SearchSpace.from_yaml(path)
    assert again == space and again.to_dict() == SCHEDULE_SPACE


def test_yaml_reads_exponent_without_dot_and_scalar_when(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("lr: {loguniform: [1e-4, 1e-1]}\nlr_schedule: {choice: [step, cosine]}\n"
                    "gamma: {uniform: [0.1, 0.5], when: {lr_schedule: step}}\n")
    space = SearchSpace.from_yaml(path)
    assert space.tuned["lr"].low == pytest.approx(1e-4)
    assert space.conditions["gamma"] == ("lr_schedule", ("step",))


def test_python_helpers_normalise_and_equal_yaml_form():
    from_python = SearchSpace({
        "lr_schedule": choice(["step", "cosine"]),
        "step_size": randint(2, 8, when={"lr_schedule": "step"}),
    })
    assert from_python.to_dict() == {
        "lr_schedule": {"choice": ["step", "cosine"]},
        "step_size": {"randint": [2, 8], "when": {"lr_schedule": ["step"]}},
    }


def test_readme_example():
    """The space as the README shows it: Python helpers, conditionals, a fixed dataset."""
    space = SearchSpace({
        "dataset": "digits",
        "epochs": 12,
        "lr": loguniform(1e-3, 0.5),
        "optimizer": choice(["nesterov", "adamw"]),
        "momentum": uniform(0.8, 0.95, when={"optimizer": "nesterov"}),
        "lr_schedule": choice(["onecycle", "cosine", "step"]),
        "step_size": randint(2, 8, when={"lr_schedule": "step"}),
        "gamma": uniform(0.1, 0.5, when={"lr_schedule": "step"}),
        "width": qrandint(16, 48, 8),
        "batch_size": grid([64, 128]),
    })
    rng = random.Random(0)
    for _ in range(50):
        config = sample(space, rng)
        recipe = build_recipe(config)
        assert recipe.dataset == "digits" and recipe.epochs == 12
        assert ("step_size" in config) == (config["lr_schedule"] == "step")
        assert ("momentum" in config) == (config["optimizer"] == "nesterov")
        assert config["width"] in (16, 24, 32, 40, 48)


def test_sample_accepts_numpy_generator_and_active_knobs():
    space = SearchSpace(SCHEDULE_SPACE)
    configs = [sample(space, np.random.default_rng(i)) for i in range(100)]
    assert {c["lr_schedule"] for c in configs} == {"step", "cosine", "exponential"}
    assert {c["step_size"] for c in configs if "step_size" in c} == {2, 3, 4}
    for c in configs:
        assert set(c) == active_knobs(space, c)
        assert all(type(v) in (int, float, str, bool) for v in c.values())
    assert "gamma" not in active_knobs(space, {"lr_schedule": "cosine"})
    assert {"gamma", "step_size"} <= active_knobs(space, {"lr_schedule": "step"})


def test_validation_does_not_leak_recipe_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SearchSpace({"lr_schedule": choice(["step", "cosine"]),
                     "step_size": randint(2, 20, when={"lr_schedule": "step"}), "epochs": 12})
    assert not caught


# -- validation errors ---------------------------------------------------------------------------
# The rules a file of the bad-input corpus shows (unknown knob or kind, low > high, loguniform from
# 0, empty choice, float draws on an int knob, tuned data knob, every `when` rule, qrandint
# multiples, duplicate choices, freeze/nesterov needing another knob) are tested there, once,
# with the file:line (test_bad_inputs.SPACES); these are the others.
BAD_SPACES = [
    # (space, knob named in the message, rule fragment)
    ({"lr": {"uniform": [0.1]}}, "lr", "takes 2 numbers"),
    ({"width": {"qrandint": [16, 64]}}, "width", "takes 3 numbers"),
    ({"lr": {"uniform": [0.5, 0.5]}}, "lr", "`low < high` must hold"),
    ({"width": {"randint": [64, 8]}}, "width", "`low <= high` must hold"),
    ({"batch_size": {"grid": []}}, "batch_size", "at least one value"),
    ({"dropout": {"randint": [0, 1]}}, "dropout", "use uniform"),
    ({"optimizer": {"choice": [1, 2]}}, "optimizer", "expected str"),
    ({"batch_norm": {"choice": [0, 1]}}, "batch_norm", "expected bool"),
    ({"dropout": {"uniform": [0.0, 1.0]}}, "dropout", "must be in [0, 1)"),
    ({"lr": {"choice": [0.1, -1]}}, "lr", "must be in (0, inf)"),
    ({"lr_schedule": "cosine", "step_size": randint(2, 8, when={"lr_schedule": "step"})},
     "step_size", "never drawn"),
    ({"lr": {"uniform": [0.1, float("inf")]}}, "lr", "finite"),
    ({"lr": "fast"}, "lr", "expected float"),
    # cross-knob rules, found by building Recipes
    ({"epochs": randint(2, 10), "warmup_epochs": uniform(0.0, 3.0)}, "warmup_epochs",
     "epochs=2 warmup_epochs=3.0 which is invalid"),
    ({"model": choice(["simple_cnn", "no_such_net"])}, "model", "no_such_net"),
]


@pytest.mark.parametrize("entries, knob, rule", BAD_SPACES,
                         ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD_SPACES)])
def test_bad_space_is_one_line_naming_knob_and_rule(entries, knob, rule):
    with pytest.raises(ConfigError) as info:
        SearchSpace(entries)
    message = str(info.value)
    assert "\n" not in message
    assert f"'{knob}'" in message or f"{knob}=" in message
    assert rule in message


def test_helpers_refuse_bad_shapes_when_called():
    with pytest.raises(ConfigError, match="`low < high` must hold"):
        uniform(1.0, 0.5)
    with pytest.raises(ConfigError, match="exactly one parent"):
        randint(2, 8, when={"lr_schedule": "step", "optimizer": "sgd"})
    with pytest.raises(ConfigError, match="list of values"):
        choice("step")  # type: ignore[arg-type]


def test_not_a_mapping_is_refused():
    with pytest.raises(ConfigError, match="must be a mapping"):
        SearchSpace([("lr", 0.1)])  # type: ignore[arg-type]


def test_yaml_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("dataset: digits\n# a comment\nlr: {uniform: [0.5, 0.1]}\n")
    with pytest.raises(ConfigError) as info:
        SearchSpace.from_yaml(path)
    assert str(info.value).startswith(f"{path}:3: knob 'lr': uniform: `low < high`")


# -- presets -------------------------------------------------------------------------------------
def test_presets_are_listed():
    assert {"quick", "strategies", "cifar_resnet", "transfer"} <= set(list_presets())


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_validates_and_samples_valid_recipes(name):
    space = load_space(name)
    assert preset_path(name).read_text().startswith("#")  # the header comment
    assert not set(space.tuned) & set(DATA_KNOBS)
    rng = random.Random(1)
    for _ in range(30):
        build_recipe(sample(space, rng))
    assert load_space(preset_path(name)) == space


def test_quick_preset_is_the_documented_budget():
    space = load_space("quick")
    assert space.fixed["dataset"] == "digits" and space.fixed["epochs"] == 12
    assert space.fixed["width"] == 16 and space.fixed["optimizer"] == "adamw"
    assert space.fixed["channels_last"] is True  # 1.5x faster CPU epochs, same model
    assert space.tuned["batch_size"].values == (64, 128)
    assert set(space.tuned["lr_schedule"].values) == {"onecycle", "cosine"}
    # AdamW's lr range (BENCHMARKS.md section 10), below the catalog's SGD default of 0.2;
    # momentum is SGD's, so AdamW's recipes neither tune nor carry it
    assert (space.tuned["lr"].low, space.tuned["lr"].high) == (0.005, 0.15)
    assert "momentum" not in space.tuned and "momentum" not in space.fixed
    # no crop augmentation: random shifts cost centred digits accuracy in 12 epochs (section 10)
    assert space.fixed["aug_crop"] == "none" and "aug_crop_padding" not in space.tuned
    # 16x16: half a 32x32 run's time, the same accuracy without crops (section 10)
    assert space.fixed["image_size"] == 16
    # every other range holds the knob catalog's default
    for knob in ("weight_decay", "dropout", "label_smoothing"):
        dist, default = space.tuned[knob], KNOBS[knob].default
        assert dist.low <= default <= dist.high, (knob, default)


def test_strategies_preset_tunes_every_family():
    space = load_space("strategies")
    families = {KNOBS[k].family for k in space.tuned}
    assert families == set(FAMILIES) - {"data"}


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError) as info:
        load_space("quik")
    assert "quick" in str(info.value) and "strategies" in str(info.value)


# -- Ray Tune ------------------------------------------------------------------------------------
def test_ray_param_space_honours_conditionals_ranges_and_grid():
    space = SearchSpace(SCHEDULE_SPACE)
    configs = ray_configs(to_tune_param_space(space, seed=0), 100)
    assert len(configs) == 200  # each random sample expands the 2-value grid
    seen = collections.defaultdict(set)
    for config in configs:
        flat = flatten_config(config)
        for k, v in flat.items():
            seen[k].add(v)
        assert ("step_size" in flat) == (flat["lr_schedule"] == "step")
        assert ("gamma" in flat) == (flat["lr_schedule"] in ("step", "exponential"))
        assert config["step_size"] is None or flat["lr_schedule"] == "step"
        assert 1e-3 <= flat["lr"] <= 1.0
        build_recipe(flat)
    assert seen["step_size"] == {2, 3, 4}  # randint's high is inclusive
    assert seen["width"] == {16, 32, 48}  # qrandint's high is inclusive
    assert seen["batch_size"] == {64, 128}
    assert all(0.1 <= g <= 0.5 for g in seen["gamma"])


def test_ray_grid_expands_to_the_cartesian_product():
    space = SearchSpace({"batch_size": grid([64, 128, 256]), "optimizer": grid(["sgd", "adamw"]),
                         "lr": loguniform(0.01, 0.1), "aug_crop": grid(["none", "pad_crop"]),
                         "aug_crop_padding": randint(1, 4, when={"aug_crop": "pad_crop"})})
    configs = ray_configs(to_tune_param_space(space, seed=0), 1)
    triples = [(c["batch_size"], c["optimizer"], c["aug_crop"]) for c in configs]
    assert sorted(triples) == sorted(itertools.product([64, 128, 256], ["sgd", "adamw"],
                                                       ["none", "pad_crop"]))
    for c in configs:  # a conditional child of a grid parent
        assert (c["aug_crop_padding"] is not None) == (c["aug_crop"] == "pad_crop")
        assert c["aug_crop_padding"] is None or 1 <= c["aug_crop_padding"] <= 4


def test_child_of_a_fixed_parent_is_always_drawn():
    space = SearchSpace({"lr_schedule": "step",
                         "step_size": randint(2, 4, when={"lr_schedule": "step"})})
    assert "step_size" in sample(space, random.Random(0))
    assert "step_size" in to_hyperopt_space(space)
    assert ray_configs(to_tune_param_space(space, seed=0), 1)[0]["step_size"] in (2, 3, 4)


def test_ray_conditionals_resolve_inside_a_tuner_experiment_spec():
    """Tuners hand sample_from functions the experiment spec {"config": ...}, not the config."""
    space = SearchSpace(SCHEDULE_SPACE)
    specs = ray_configs({"config": to_tune_param_space(space, seed=0)}, 30)
    for spec in specs:
        flat = flatten_config(spec["config"])
        assert ("step_size" in flat) == (flat["lr_schedule"] == "step")
    assert any("step_size" in flatten_config(s["config"]) for s in specs)


def test_ray_conditional_draws_are_seeded_and_vary():
    space = SearchSpace({"lr_schedule": choice(["step"]),
                         "step_size": randint(1, 1000, when={"lr_schedule": "step"})})

    def draws(seed):
        return [c["step_size"] for c in ray_configs(to_tune_param_space(space, seed=seed), 20)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)
    assert len(set(draws(5))) > 10  # same discrete values, different draws


def test_ray_param_space_pickles():
    """Ray ships the param space to its workers: the copy draws what the original would."""
    space = SearchSpace(SCHEDULE_SPACE)
    again = pickle.loads(pickle.dumps(to_tune_param_space(space, seed=0)))
    assert ray_configs(again, 5) == ray_configs(to_tune_param_space(space, seed=0), 5)


# -- hyperopt ------------------------------------------------------------------------------------
def test_hyperopt_space_honours_conditionals_and_builds_recipes():
    space = SearchSpace(SCHEDULE_SPACE)
    hp_space = to_hyperopt_space(space)
    assert set(hp_space) == set(space.tuned) - set(space.conditions)  # no fixed, no children
    rng = np.random.default_rng(0)
    seen = collections.defaultdict(set)
    for _ in range(200):
        raw = hp_sample(hp_space, rng=rng)
        flat = flatten_config(raw)
        assert ("step_size" in flat) == (flat["lr_schedule"] == "step")
        assert ("gamma" in flat) == (flat["lr_schedule"] in ("step", "exponential"))
        for k, v in flat.items():
            seen[k].add(v)
        build_recipe(merge_fixed(space, flat))
    assert seen["step_size"] == {2, 3, 4}
    assert seen["width"] == {16, 32, 48}
    assert all(type(v) is int for v in seen["width"] | seen["step_size"])


def test_hyperopt_labels_are_unique_per_branch():
    space = SearchSpace({
        "optimizer": choice(["sgd", "adamw"]),
        "lr_schedule": choice(["step", "exponential", "cosine"], when={"optimizer": "sgd"}),
        "gamma": uniform(0.1, 0.5, when={"lr_schedule": ["step", "exponential"]}),
        "step_size": randint(2, 4, when={"lr_schedule": "step"}),
    })
    labels = {node.arg["label"].obj for node in hyperopt.pyll.toposort(
        hyperopt.pyll.as_apply(to_hyperopt_space(space))) if node.name == "hyperopt_param"}
    assert labels == {"optimizer", "lr_schedule[optimizer=sgd]",
                      "gamma[optimizer=sgd,lr_schedule=step]",
                      "gamma[optimizer=sgd,lr_schedule=exponential]",
                      "step_size[optimizer=sgd,lr_schedule=step]"}
    rng = np.random.default_rng(1)
    for _ in range(100):
        flat = flatten_config(hp_sample(to_hyperopt_space(space), rng=rng))
        assert ("lr_schedule" in flat) == (flat["optimizer"] == "sgd")
        assert ("step_size" in flat) == (flat.get("lr_schedule") == "step")
        build_recipe(flat)


def test_hyperopt_tpe_suggestions_build_valid_recipes():
    space = load_space("strategies")  # the preset with conditionals on several knobs
    recipes = []

    def objective(params):
        flat = flatten_config(params)
        assert ("step_size" in flat) == (flat["lr_schedule"] == "step"), flat
        assert ("gamma" in flat) == (flat["lr_schedule"] in ("step", "exponential")), flat
        assert ("momentum" in flat) == (flat["optimizer"] in ("sgd", "nesterov")), flat
        recipe = build_recipe(merge_fixed(space, flat))
        recipes.append(recipe)
        return recipe.lr * recipe.width  # any deterministic score

    hyperopt.fmin(objective, to_hyperopt_space(space), algo=hyperopt.tpe.suggest, max_evals=40,
                  rstate=np.random.default_rng(0), show_progressbar=False)
    assert {r.lr_schedule for r in recipes} == set(space.tuned["lr_schedule"].values)
    lr = space.tuned["lr"]
    assert all(lr.low <= r.lr <= lr.high and r.width in (16, 32, 48, 64) for r in recipes)


def test_ray_hyperopt_search_suggestions_merge_with_fixed_values():
    """How the tuner feeds TPE: HyperOptSearch(space=to_hyperopt_space(space)) with the fixed
    values as the Tuner's param_space; Ray merges each suggestion over it (merge_dicts)."""
    from ray.tune.search.hyperopt import HyperOptSearch
    from ray.tune.utils.util import merge_dicts

    space = load_space("strategies")
    searcher = HyperOptSearch(space=to_hyperopt_space(space), metric="val_acc", mode="max",
                              n_initial_points=5, random_state_seed=0)
    schedules = set()
    for i in range(12):
        suggestion = searcher.suggest(str(i))
        config = merge_dicts(space.fixed, suggestion)  # what the trial receives
        recipe = build_recipe(flatten_config(config))
        assert {k: getattr(recipe, k) for k in space.fixed} == space.fixed
        schedules.add(recipe.lr_schedule)
        assert ("step_size" in flatten_config(config)) == (recipe.lr_schedule == "step")
        searcher.on_trial_complete(str(i), {"val_acc": recipe.lr})
    assert len(schedules) > 1


# -- Optuna --------------------------------------------------------------------------------------
def test_optuna_define_by_run_honours_conditionals_and_builds_recipes():
    space = SearchSpace({k: v for k, v in SCHEDULE_SPACE.items() if k != "batch_size"})
    define_by_run = to_optuna_space(space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = collections.defaultdict(set)
    for _ in range(200):
        trial = study.ask()
        flat = define_by_run(trial)
        assert set(trial.params) == set(flat) - set(space.fixed)  # a suggestion per active knob
        assert ("step_size" in flat) == (flat["lr_schedule"] == "step")
        assert ("gamma" in flat) == (flat["lr_schedule"] in ("step", "exponential"))
        assert 1e-3 <= flat["lr"] <= 1.0 and 0.1 <= flat.get("gamma", 0.1) <= 0.5
        for k, v in flat.items():
            seen[k].add(v)
        build_recipe(flat)
        study.tell(trial, flat["lr"])
    assert seen["step_size"] == {2, 3, 4} and seen["width"] == {16, 32, 48}  # ends inclusive
    assert seen["dataset"] == {"digits"}


def test_optuna_tpe_suggestions_build_valid_recipes_and_pickle():
    space = load_space("strategies")
    define_by_run = pickle.loads(pickle.dumps(to_optuna_space(space)))  # Ray saves the searcher
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4))
    schedules = set()
    for _ in range(12):
        trial = study.ask()
        recipe = build_recipe(define_by_run(trial))
        schedules.add(recipe.lr_schedule)
        study.tell(trial, recipe.lr)
    assert len(schedules) > 1


def test_optuna_refuses_grid_values():
    with pytest.raises(ConfigError, match="searcher 'optuna': grid values need --searcher grid"):
        to_optuna_space(SearchSpace({"lr": grid([0.1, 0.2])}))


def test_flatten_config():
    nested = {"lr": np.float64(0.1), "width": np.int64(32), "gamma": None,
              "lr_schedule": {"lr_schedule": "step", "step_size": np.int64(3)}}
    flat = flatten_config(nested)
    assert flat == {"lr": 0.1, "width": 32, "lr_schedule": "step", "step_size": 3}
    assert type(flat["width"]) is int and type(flat["lr"]) is float
    with pytest.raises(ConfigError, match="two values"):
        flatten_config({"lr_schedule": "cosine", "x": {"lr_schedule": "step"}})


# -- property ------------------------------------------------------------------------------------
NUMERIC = sorted(k for k, s in KNOBS.items() if s.type in (int, float) and k not in DATA_KNOBS)
CHOICE_KNOBS = {k: s for k, s in KNOBS.items() if (s.choices or s.type is bool)
                and k not in DATA_KNOBS}
JUNK = [0, -1, 1.5, "nope", True]


@st.composite
def numeric_entry(draw, knob):
    """A plausible entry (so that many spaces construct), or, 1 time in 8, one broken in a
    random way (reversed or out-of-range bounds, a kind that does not fit the knob)."""
    spec = KNOBS[knob]
    lo = float(spec.low if spec.low is not None else 0.0)
    hi = float(spec.high if spec.high is not None else 10.0)
    if spec.type is int:
        hi = min(hi, lo + 64)
    lo, hi = lo + 1e-3 * (spec.low_open or lo == 0.0), hi - 1e-3 * spec.high_open
    a, b = sorted(draw(st.floats(lo, hi)) for _ in range(2))
    kind = draw(st.sampled_from(["uniform", "loguniform", "choice"] if spec.type is float
                                else ["randint", "qrandint", "choice"]))
    broken = draw(st.integers(0, 7)) == 0
    if broken:
        how = draw(st.sampled_from(["reverse", "below", "above", "kind"]))
        if how == "reverse":
            a, b = b, a
        elif how == "below":
            a = lo - draw(st.floats(0.01, 100))
        elif how == "above":
            b = hi + draw(st.floats(0.01, 100))
        else:
            kind = "randint" if spec.type is float else "uniform"
    if spec.type is int:
        a, b = round(a), round(b)
        if kind == "qrandint":
            return {"qrandint": [a - a % 2, b - b % 2, 2]}
    return {kind: [a, b]}


@st.composite
def spaces(draw):
    entries = {}
    for knob in draw(st.lists(st.sampled_from(NUMERIC), max_size=5, unique=True)):
        entries[knob] = draw(numeric_entry(knob))
    for knob in draw(st.lists(st.sampled_from(sorted(CHOICE_KNOBS)), max_size=3, unique=True)):
        spec = CHOICE_KNOBS[knob]
        pool = list(spec.choices or (True, False))
        if draw(st.integers(0, 7)) == 0:
            pool += JUNK
        entries[knob] = {"choice": draw(st.lists(st.sampled_from(pool), min_size=1,
                                                 max_size=4, unique=True))}
    return entries


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spaces(), st.integers(0, 2**16))
def test_property_space_constructs_and_samples_valid_recipes_or_refuses(entries, seed):
    try:
        space = SearchSpace(entries)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert SearchSpace(space.to_dict()) == space
    rng = random.Random(seed)
    for _ in range(20):
        build_recipe(sample(space, rng))
    flat = flatten_config(hp_sample(to_hyperopt_space(space), rng=np.random.default_rng(seed))
                          ) if space.tuned else {}
    build_recipe(merge_fixed(space, flat))


def test_yaml_dump_is_safe_loadable():
    space = load_space("strategies")
    assert SearchSpace(yaml.safe_load(space.to_yaml())) == space
