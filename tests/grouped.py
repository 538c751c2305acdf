"""``tune()`` called with its arguments given flat, as the tests name them (``searcher=``,
``storage=``, ...): each name goes to the group (TuneConfig, Resources, RunConfig) with that
field, so a test reads like the command line it mirrors. Field names are unique across the groups
(tests/test_api_errors.py checks it)."""

from dataclasses import fields

from tuner import Resources, RunConfig, TuneConfig, tune

GROUPS = {"tune_config": TuneConfig, "resources": Resources, "run_config": RunConfig}
TOP_LEVEL = ("fixed",)


def grouped(**flat):
    """The keyword arguments of tune() for ``flat``; an unknown name raises TypeError."""
    out, left = {}, dict(flat)
    for arg, cls in GROUPS.items():
        mine = {f.name: left.pop(f.name) for f in fields(cls) if f.name in left}
        if mine:
            out[arg] = cls(**mine)
    out.update({k: left.pop(k) for k in TOP_LEVEL if k in left})
    if left:
        raise TypeError(f"tune() has no argument {sorted(left)}")
    return out


def run_tune(space, **flat):
    return tune(space, **grouped(**flat))
