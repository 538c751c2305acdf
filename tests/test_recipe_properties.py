"""Property: any dict thrown at Recipe.from_dict builds a Recipe or raises ConfigError, nothing
else (no TypeError, no KeyError, no traceback a user would see)."""

import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainables.errors import ConfigError
from trainables.recipe import KNOBS, Recipe

_values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["none", "backbone", "2", "IMAGENET1K_V1", "1e-3", "step", "cosine",
                     "adamw", "fp16", "digits", "resnet18", "pad_crop"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(),
                                                         max_size=2),
)
_keys = st.one_of(st.sampled_from(sorted(KNOBS)), st.text(min_size=1, max_size=10))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=6))
def test_from_dict_accepts_or_raises_config_error(values):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            recipe = Recipe.from_dict(values)
        except ConfigError as e:
            assert "\n" not in str(e)
            return
    assert Recipe.from_dict(recipe.to_dict()) == recipe  # what was accepted round-trips
