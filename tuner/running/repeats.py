"""Several recipes, each trained with several seeds, as parallel Ray tasks; and the 95%
Student-t interval of the mean over those seeds.

What ``cnn-tuner ablate`` (a recipe and its strategy-off variants) and ``confirm`` (the top
trials of a search) share: every (label, seed) training is one Ray task holding the resource
flags of a trial, all submitted at once; a failed training is a row with its error, not a
failed command. Datasets are loaded once on the driver per distinct set of data knobs and put
in the object store.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from trainables.errors import last_line
from trainables.recipe import Recipe

CONFIDENCE = 0.95


def train_task(recipe: dict[str, Any], data: Any, cpus: float,
               metrics: Sequence[str]) -> dict[str, Any]:
    """One training inside a Ray task: threads from its CPUs, device from its GPUs."""
    import torch

    from trainables.loop import train
    from tuner.running.trial import recipe_from_config, trial_device

    torch.set_num_threads(max(1, int(cpus)))
    device, _ = trial_device()
    final = train(recipe_from_config(recipe), data, device).final
    return {**{m: final.get(m, math.nan) for m in metrics},
            "stop_reason": final.get("stop_reason", ""), "epochs_run": final["epoch"]}


def train_all(jobs: list[tuple[str, int, Recipe]], *, label: str, metrics: Sequence[str],
              cpus: float, gpus: float, address: str | None,
              log: Callable[[str], Any]) -> pd.DataFrame:
    """Train every ``(name, seed, recipe)`` job as a Ray task, all submitted at once; a row per
    job (``label`` names the column holding ``name``), sorted by name and seed. ``metrics``:
    the final metrics kept, the first of them logged as each job ends."""
    import ray

    from trainables.data import load_recipe_data
    from tuner.running.runner import ray_session

    rows, shown = [], metrics[0]
    with ray_session(address):
        task = ray.remote(train_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        data_refs: dict[tuple, Any] = {}
        for _, _, r in jobs:
            if r.data_key not in data_refs:
                data_refs[r.data_key] = ray.put(load_recipe_data(r))
        pending = {task.remote(r.to_dict(), data_refs[r.data_key], cpus, tuple(metrics)):
                   (name, seed) for name, seed, r in jobs}
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            name, seed = pending.pop(ref)
            try:
                row = {label: name, "seed": seed, **ray.get(ref), "error": ""}
            except ray.exceptions.RayError as e:
                row = {label: name, "seed": seed, **dict.fromkeys(metrics, math.nan),
                       "error": last_line(e)}
            rows.append(row)
            log(f"[{len(rows)}/{len(jobs)}] {name} seed {seed}: {shown} "
                f"{row[shown]:.4f}" + (f" (error: {row['error']})" if row["error"] else ""))
    return pd.DataFrame(rows).sort_values([label, "seed"]).reset_index(drop=True)


def t_interval(values: Iterable[float]) -> tuple[float, float, float]:
    """Mean of the finite ``values`` and its ``CONFIDENCE`` Student-t interval: (mean, low,
    high); NaN bounds under two values, a zero-width interval when they are all equal."""
    v = np.asarray([x for x in values if pd.notna(x)], dtype=float)
    mean = float(v.mean()) if len(v) else math.nan
    if len(v) < 2:
        return mean, math.nan, math.nan
    sem = float(stats.sem(v))
    if sem == 0:
        return mean, mean, mean
    lo, hi = stats.t.interval(CONFIDENCE, len(v) - 1, loc=mean, scale=sem)
    return mean, float(lo), float(hi)
