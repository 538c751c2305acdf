"""The cross-knob check: configs a space can produce must build valid Recipes.

Per-knob checks cannot see rules between knobs (``freeze`` needs ``pretrained``, ``warmup_epochs``
< ``epochs``, nesterov needs momentum > 0), and only the Recipe knows those rules, so the check asks
it: it builds Recipes from a seeded, deterministic set of configs and turns the first refusal into
one line naming the offending values. The configs cross two sets:

- discrete assignments: every combination of the choice/grid values when there are few, else a
  seeded random sample of them;
- numeric assignments: the corners that matter for pairwise rules (all ends low, all high, and each
  knob at one end with the others at the other end, which covers every pair's four corners), then
  random draws biased towards the ends.

It is a check, not a proof: a rule that only a narrow interior region breaks can slip through, and
the Recipe refuses that config when its trial starts.
"""

from __future__ import annotations

import itertools
import random
import re
import warnings
from typing import TYPE_CHECKING, Any

from search_spaces.distributions import Choice, Distribution, Grid
from trainables.errors import ConfigError
from trainables.recipe import Recipe

if TYPE_CHECKING:
    from search_spaces.space import SearchSpace

MAX_DISCRETE = 256  # discrete assignments (all combinations up to this many)
RANDOM_DRAWS = 64  # end-biased random numeric assignments
MAX_CONFIGS = 512  # Recipes built per space (a Recipe with torchvision weights takes ~ms)
_SEED = 0


def check_combinations(space: SearchSpace) -> None:
    """Raise ConfigError naming the knob values of the first config the Recipe refuses."""
    from search_spaces.space import SpaceError

    rng = random.Random(_SEED)
    tuned = space.tuned
    discrete = {k: d for k, d in tuned.items() if isinstance(d, (Choice, Grid))}
    numeric = {k: d for k, d in tuned.items() if k not in discrete}
    d_list = _unique(_discrete_assignments(discrete, rng))
    n_list = _unique(_numeric_assignments(numeric, rng))
    if len(d_list) * len(n_list) <= MAX_CONFIGS:
        pairs = list(itertools.product(d_list, n_list))
    else:
        pairs = [(d_list[i % len(d_list)], n_list[rng.randrange(len(n_list))])
                 for i in range(MAX_CONFIGS)]
    from trainables.models import check_runnable  # torchvision: only when a space is checked

    seen: set[str] = set()
    checked: set[tuple[str, str]] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # advice such as "step_size >= epochs" is not an error
        for d, n in pairs:
            values = {**d, **n}

            def pick(knob: str, dist: Distribution, values: dict = values) -> Any:
                return values[knob]

            config = space.resolve(pick)
            key = repr(sorted(config.items()))
            if key in seen:
                continue
            seen.add(key)
            try:
                recipe = Recipe.from_dict(config)
            except ConfigError as e:
                named = _named_knobs(str(e), config, tuned) or [k for k in tuned if k in config]
                shown = " ".join(f"{k}={config[k]!r}" for k in named)
                first = next((k for k in named if k in tuned), None)
                raise SpaceError(f"space allows {shown} which is invalid: {e}",
                                 knob=first) from None
            pair = (recipe.model, recipe.pretrained)
            if pair not in checked:  # opens files, imports torchvision: once a pair
                checked.add(pair)
                try:
                    check_runnable(*pair)
                except ConfigError as e:
                    knob = "pretrained" if recipe.pretrained != "none" else "model"
                    raise SpaceError(f"space allows model={pair[0]!r} pretrained={pair[1]!r}, "
                                     f"which cannot run: {e}",
                                     knob=knob if knob in tuned else None) from None


def _discrete_assignments(discrete: dict[str, Distribution], rng: random.Random) -> list[dict]:
    sizes = [len(d.values) for d in discrete.values()]  # type: ignore[attr-defined]
    total = 1
    for s in sizes:
        total *= s
    if total <= MAX_DISCRETE:
        return [dict(zip(discrete, combo, strict=True)) for combo in
                itertools.product(*(d.values for d in discrete.values()))]  # type: ignore
    return [{k: d.sample(rng) for k, d in discrete.items()} for _ in range(MAX_DISCRETE)]


def _numeric_assignments(numeric: dict[str, Distribution], rng: random.Random) -> list[dict]:
    lows = {k: d.edges()[0] for k, d in numeric.items()}
    highs = {k: d.edges()[-1] for k, d in numeric.items()}
    out = [lows, highs]
    for k in numeric:
        out.append({**lows, k: highs[k]})
        out.append({**highs, k: lows[k]})
    for _ in range(RANDOM_DRAWS):
        draw = {}
        for k, d in numeric.items():
            u = rng.random()
            draw[k] = lows[k] if u < 0.25 else highs[k] if u < 0.5 else d.sample(rng)
        out.append(draw)
    return out


def _unique(assignments: list[dict]) -> list[dict]:
    return list({repr(sorted(a.items())): a for a in assignments}.values())


def _named_knobs(message: str, config: dict[str, Any], tuned: dict) -> list[str]:
    """Knobs of ``config`` the Recipe's message names, or whose (tuned, text) value it quotes."""

    def mentions(word: str) -> bool:
        pattern = rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])"
        return re.search(pattern, message) is not None

    return [k for k, v in config.items()
            if mentions(k) or (k in tuned and isinstance(v, str) and mentions(v))]
