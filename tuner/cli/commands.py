"""What each ``cnn-tuner`` command does with its parsed arguments (``cmd_*``, one per command):
check what only the command line can, call the module that does the work, print its outcome.

The flags, usage errors and how library errors name flags live in tuner.cli.parser.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from trainables.errors import ConfigError
from tuner.cli.overrides import parse_sets

EXIT_TRIALS_ERRORED = 1


def _train_device(device: str | None) -> str:
    """``--device``, checked before anything is written: a known device type that exists here."""
    import torch

    from trainables.loop import resolve_device

    try:
        dev = resolve_device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device: not a device: {device!r} (cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise ConfigError(f"--device: {device!r} needs a CUDA device, but this machine has "
                              f"{count} (use --device cpu)")
    elif dev.type != "cpu":
        raise ConfigError(f"--device: must be cpu, cuda or cuda:N, got {device!r}")
    return str(dev)


def cmd_train(args: argparse.Namespace) -> int:
    from trainables.models import check_runnable
    from trainables.recipe import Recipe
    from tuner.cli.train_run import train_to_dir
    from tuner.running.storage import check_folder_target

    overrides = parse_sets(args.set)
    if args.recipe:
        recipe = Recipe.from_yaml(args.recipe, overrides)
    else:
        recipe = Recipe.from_dict(overrides, where="--set")
    device = _train_device(args.device)
    try:
        recipe.check_device(device.split(":")[0])
        check_runnable(recipe.model, recipe.pretrained, download=recipe.download)
    except ConfigError as e:
        raise e.at(args.recipe or "--set") from None
    out = Path(args.out or f"runs/train-{datetime.now():%Y%m%d-%H%M%S}")
    check_folder_target(out, "out")
    final = train_to_dir(recipe, out, device=device, workers=args.workers,
                         cpus_per_worker=args.cpus_per_worker, placement=args.worker_placement)
    print(f"wrote {out}/recipe.yaml, metrics.csv, result.json, checkpoint.pt "
          f"(test_acc {final['test_acc']:.4f}, {final['stop_reason']})")
    return 0


def _print_summary(result) -> None:  # noqa: ANN001
    """The run's last lines, each short (a path aside) so that an 80-column terminal keeps them
    whole: counts, budget, the best trial, where its recipe is and how to retrain it."""
    s = result.summary
    infeasible = s.get("infeasible", 0)
    broke = f", {infeasible} infeasible (broke a --constraint)" if infeasible else ""
    print(f"\n{s['trials']} trials: {s['completed']} completed, {s['early_stopped']} stopped "
          f"early, {s['non_finite']} non-finite{broke}, {s['errored']} errored")
    print(f"{s['total_trial_epochs']} of {s['budget_trial_epochs']} trial-epochs in "
          f"{s['wall_time_s']:.0f} s")
    if result.best_recipe is None:
        print("no feasible trial produced a result" if infeasible else
              "no trial produced a result")
        return
    test = "n/a" if s["best_test_acc"] is None else f"{s['best_test_acc']:.4f}"
    print(f"best trial {s['best_trial']}: val_acc {s['best_val_acc']:.4f}  test_acc {test}")
    if s.get("confirmed"):
        from tuner.analysis.confirm import verdict

        print(verdict(s["confirmed"]))
    recipe = _shown_path(f"{result.path}/best_recipe.yaml")
    print(f"best recipe: {recipe}")
    print(f"retrain: cnn-tuner train --recipe {recipe}")


def _shown_path(path: str) -> str:
    """A local path relative to the working directory when it is inside it (shorter lines)."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _exit_status(result) -> int:  # noqa: ANN001
    """1 when any trial errored (a script must be able to tell), with one line saying where the
    errors are; trials stopped early or with a non-finite loss are results, not errors."""
    s = result.summary
    if not s["errored"]:
        return 0
    print(f"cnn-tuner: {s['errored']} of {s['trials']} trials errored; see the error column of "
          f"{result.path}/results.csv and error.txt in their trial folders "
          f"({result.path}/trial_*)", file=sys.stderr)
    return EXIT_TRIALS_ERRORED


def cmd_run(args: argparse.Namespace) -> int:
    """``run``; with ``--watch``, the live report of the run's folder is served on 127.0.0.1
    while it goes, and stopped after the summary."""
    _check_confirm_flags(args)
    if args.watch is None:
        return _tune_run(args)
    from tuner.analysis.watch import Watcher
    from tuner.running.api import storage_root
    from tuner.running.storage import join

    args.name = args.name or _default_name(args)  # the watcher must know the folder now
    path = join(storage_root(args.storage), args.name)
    with Watcher(path, args.watch, param="watch", wait=True) as watcher:
        print(f"live report: {watcher.url} (after the run: cnn-tuner watch {path})", flush=True)
        return _tune_run(args)


def _check_confirm_flags(args: argparse.Namespace) -> None:
    """``--confirm-top`` and ``--confirm-seeds`` go together (or not at all)."""
    if (args.confirm_top is None) != (args.confirm_seeds is None):
        given, missing = (("--confirm-top", "--confirm-seeds") if args.confirm_seeds is None
                          else ("--confirm-seeds", "--confirm-top"))
        raise ConfigError(f"{given}: needs {missing} too (confirmation retrains the top K "
                          "trials with S seeds each: give both, or neither)")


def _default_name(args: argparse.Namespace) -> str:
    """The name tune() would give this run's experiment, known before it starts."""
    from tuner.running.api import default_name, resolve_space
    from tuner.running.config import TuneConfig

    fixed = {**parse_sets(args.set), **({"dataset": args.dataset} if args.dataset else {})}
    return default_name(resolve_space(args.space, fixed=fixed),
                        TuneConfig(searcher=args.searcher, scheduler=args.scheduler))


def _tune_run(args: argparse.Namespace) -> int:
    from tuner.running.runner import shutdown_after

    with shutdown_after():  # the summary first, then Ray's shutdown
        return _tune_and_summarise(args)


def _tune_and_summarise(args: argparse.Namespace) -> int:
    from tuner.running.api import tune
    from tuner.running.config import Resources, RunConfig, TuneConfig
    from tuner.running.schedulers import SchedulerOptions

    fixed = {k: v for k, v in (("dataset", args.dataset), ("data_dir", args.data_dir))
             if v is not None}
    result = tune(
        args.space, fixed={**parse_sets(args.set), **fixed},
        tune_config=TuneConfig(
            searcher=args.searcher, scheduler=args.scheduler, num_samples=args.num_samples,
            max_epochs=args.max_epochs, max_concurrent=args.max_concurrent, seed=args.seed,
            scheduler_options=SchedulerOptions(grace_period=args.grace_period,
                                               reduction_factor=args.reduction_factor),
            constraints=tuple(args.constraints or ()),
            objectives=tuple(args.objectives or ()), warm_start=args.warm_start,
            **({} if args.confirm_top is None else
               {"confirm_top": args.confirm_top, "confirm_seeds": args.confirm_seeds})),
        resources=Resources(cpus_per_trial=args.cpus_per_trial,
                            gpus_per_trial=args.gpus_per_trial,
                            workers_per_trial=args.workers_per_trial,
                            worker_placement=args.worker_placement),
        run_config=RunConfig(storage=args.storage, name=args.name, address=args.address,
                             max_failures=args.max_failures,
                             checkpoint_every=args.checkpoint_every, resume=args.resume,
                             verbose=args.verbose, mlflow=args.mlflow, wandb=args.wandb))
    _print_summary(result)
    return _exit_status(result)


def cmd_resume(args: argparse.Namespace) -> int:
    from tuner.running.api import resume
    from tuner.running.runner import shutdown_after

    with shutdown_after():  # the summary first, then Ray's shutdown
        result = resume(args.path, address=args.address, verbose=args.verbose)
        _print_summary(result)
        return _exit_status(result)


def cmd_results(args: argparse.Namespace) -> int:
    from tuner.running.results import best_first, load_results

    df, summary = load_results(args.path)
    metric, mode = summary["metric"], summary["mode"]
    top = best_first(df, metric, mode).head(args.top)
    from trainables.recipe import KNOBS

    tuned = [c for c in df.columns if c in KNOBS and df[c].nunique(dropna=True) > 1]
    cols = ["trial_id", "status", "epochs_run", metric, "test_acc", *tuned]
    if args.pareto:  # the front instead, best first by the first objective
        from tuner.running.front import read_front

        top, objectives = read_front(args.path, summary)
        cols = ["trial_id", *objectives, "test_acc", "epochs_run", *tuned]
    import pandas as pd

    with pd.option_context("display.max_columns", 30, "display.width", 200):
        print(top[[c for c in dict.fromkeys(cols) if c in top.columns]].to_string(index=False))
    if args.export_best:
        from trainables.recipe import Recipe

        if not summary.get("best_recipe"):
            raise ConfigError("no best recipe in this experiment", where=args.path)
        Recipe.from_dict(summary["best_recipe"]).to_yaml(args.export_best)
        print(f"wrote {args.export_best}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tuner.analysis.report import write_report

    index = write_report(args.path, args.out)
    print(f"wrote {index} (self-contained) and its plots as PNGs beside it")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from tuner.analysis.watch import Watcher, stderr_line

    with Watcher(args.path, args.port, every_s=args.every_s, log=stderr_line) as watcher:
        print(f"serving the live report of {watcher.report.source} at {watcher.url} "
              f"(checks every {watcher.report.every_s:g} s; Ctrl+C stops)", flush=True)
        try:
            watcher.wait()
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"stopped watching {watcher.report.source}") from None
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from trainables.recipe import Recipe
    from tuner.analysis.ablate import ablate, default_out, format_table

    recipe = Recipe.from_yaml(args.recipe)
    result = ablate(recipe, seeds=args.seeds, epochs=args.epochs,
                    out=args.out or default_out(args.recipe), cpus_per_trial=args.cpus_per_trial,
                    gpus_per_trial=args.gpus_per_trial, address=args.address)
    print(format_table(result.table))
    print(f"wrote {result.out}/ablation.csv (`cnn-tuner report` shows it when it is in the "
          "experiment folder)")
    return 0


def cmd_confirm(args: argparse.Namespace) -> int:
    from tuner.analysis.confirm import confirm, format_table, verdict

    result = confirm(args.path, top=args.top, seeds=args.seeds,
                     cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                     address=args.address)
    print(format_table(result.table))
    if result.confirmed:
        print(verdict(result.confirmed))
    print(f"wrote {_shown_path(result.path)}/confirm.csv, confirm_runs.csv, best_recipe.yaml "
          "(the best by mean) and summary.json")
    failed = int((result.runs["error"] != "").sum())
    if failed:
        print(f"cnn-tuner: {failed} of {len(result.runs)} trainings failed; see the error column "
              f"of {result.path}/confirm_runs.csv", file=sys.stderr)
    return EXIT_TRIALS_ERRORED if failed else 0


def cmd_spaces(args: argparse.Namespace) -> int:
    from search_spaces import SearchSpace, list_presets, load_space

    if args.action == "list":
        for name in list_presets():
            print(name)
        return 0
    if not args.target:
        what = "a preset name or YAML file" if args.action == "show" else "a YAML file"
        raise ConfigError(f"spaces {args.action}: needs {what} (presets: "
                          f"{', '.join(list_presets())})")
    if args.action == "show":
        print(load_space(args.target).to_yaml(), end="")
    else:
        SearchSpace.from_yaml(args.target)
        print(f"{args.target}: ok")
    return 0


def cmd_knobs(args: argparse.Namespace) -> int:
    from tuner.cli.knob_table import markdown_table, text_table

    print(markdown_table() if args.markdown else text_table())
    return 0
