"""``cnn-tuner train``: one recipe, trained in this process (or data-parallel over ``--workers N``
Ray Train workers), with its files written to a folder.

Writes ``recipe.yaml`` (resolved), ``metrics.csv`` (a row per epoch), ``result.json`` (final
metrics and stop_reason) and ``checkpoint.pt`` (usable as ``pretrained`` by a later run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from trainables.checkpoint import save_checkpoint
from trainables.loop import train
from trainables.recipe import Recipe

_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s",
            "epoch_time_s")


def format_epoch(m: dict[str, Any], epochs: int) -> str:
    line = (f"epoch {m['epoch']:>3}/{epochs}  train_loss {m['train_loss']:.4f}  "
            f"train_acc {m['train_acc']:.4f}  val_loss {m['val_loss']:.4f}  "
            f"val_acc {m['val_acc']:.4f}  lr {m['lr']:.3g}  {m['images_per_s']:,.0f} img/s  "
            f"{m['epoch_time_s']:.1f}s")
    if "stop_reason" in m:
        line += f"\n{m['stop_reason']}: test_acc {m['test_acc']:.4f}"
    return line


def train_to_dir(recipe: Recipe, out: Path, device: str | None = None,
                 quiet: bool = False, workers: int = 1,
                 cpus_per_worker: float = 1, placement: str = "pack") -> dict[str, Any]:
    """Train, then write the four result files (nothing is written if training cannot start);
    returns the final metrics. ``workers`` > 1: data-parallel over that many Ray Train workers
    (tuner.running.dp_train), each reserving ``cpus_per_worker`` CPUs and, on a CUDA
    ``device``, one GPU, placed by ``placement``."""
    last_state: dict[str, Any] = {}

    def show(metrics: dict[str, Any]) -> None:
        if not quiet:
            print(format_epoch(metrics, recipe.epochs), flush=True)

    def report(metrics: dict[str, Any], state_fn: Any) -> None:
        show(metrics)
        if "stop_reason" in metrics:
            last_state["state"] = state_fn()

    if workers != 1:  # data-parallel (dp_train refuses a count below 1)
        from tuner.running.dp_train import train_data_parallel

        gpus = 1 if device is not None and device.startswith("cuda") else 0
        history, last_state["state"] = train_data_parallel(
            recipe, workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus,
            placement=placement, on_epoch=show)
    else:
        history = train(recipe, device=device, report=report).history
    out.mkdir(parents=True, exist_ok=True)
    recipe.to_yaml(out / "recipe.yaml")
    pd.DataFrame(history).reindex(columns=[*_COLUMNS, "precision"]).to_csv(
        out / "metrics.csv", index=False)
    final = dict(history[-1])
    final["epochs_run"] = len(history)
    (out / "result.json").write_text(json.dumps(final, indent=2) + "\n")
    save_checkpoint(last_state["state"], out / "checkpoint.pt")
    return final
