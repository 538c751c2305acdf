"""The ``cnn-tuner`` command line: argument parsing and error handling only.

User mistakes (``ConfigError``) print one line and exit with code 2, without a traceback; the
work itself lives in the modules each command calls.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from datetime import datetime
from pathlib import Path

from trainables.errors import ConfigError
from tuner.analysis.watch import DEFAULT_PORT, REFRESH_S
from tuner.cli.overrides import parse_sets
from tuner.running.schedulers import REFUSED_PAIRS, SCHEDULERS
from tuner.running.searchers import SEARCHERS

EXIT_USAGE = 2
EXIT_TRIALS_ERRORED = 1


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), like every other user mistake."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


def _cmd_train(args: argparse.Namespace) -> int:
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


def _cmd_run(args: argparse.Namespace) -> int:
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


def _cmd_resume(args: argparse.Namespace) -> int:
    from tuner.running.api import resume

    result = resume(args.path, address=args.address, verbose=args.verbose)
    _print_summary(result)
    return _exit_status(result)


def _cmd_results(args: argparse.Namespace) -> int:
    from tuner.running.results import load_results

    df, summary = load_results(args.path)
    metric, mode = summary["metric"], summary["mode"]
    top = df.sort_values(metric, ascending=mode == "min").head(args.top)
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


def _cmd_report(args: argparse.Namespace) -> int:
    from tuner.analysis.report import write_report

    index = write_report(args.path, args.out)
    print(f"wrote {index} (self-contained) and its plots as PNGs beside it")
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from tuner.analysis.watch import Watcher, stderr_line

    with Watcher(args.path, args.port, every_s=args.every_s, log=stderr_line) as watcher:
        print(f"serving the live report of {watcher.report.source} at {watcher.url} "
              f"(checks every {watcher.report.every_s:g} s; Ctrl+C stops)", flush=True)
        try:
            watcher.wait()
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"stopped watching {watcher.report.source}") from None
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
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


def _cmd_confirm(args: argparse.Namespace) -> int:
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


def _cmd_spaces(args: argparse.Namespace) -> int:
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


def _cmd_knobs(args: argparse.Namespace) -> int:
    from tuner.cli.knob_table import markdown_table, text_table

    print(markdown_table() if args.markdown else text_table())
    return 0


def _placement_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--worker-placement", default="pack",
                   help="where a data-parallel group's workers go: pack (as few nodes as it "
                   "fits on, default) | spread (another node each where one has room) | "
                   "strict_pack | strict_spread (those or wait)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cnn-tuner", description="Tune CNN training recipes with Ray Tune.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one recipe (no Ray unless --workers) and write its "
                       "results")
    p.add_argument("--recipe", help="recipe YAML file (default: the built-in defaults)")
    p.add_argument("--set", action="append", metavar="KNOB=VALUE",
                   help="override a knob (repeatable), e.g. --set lr=0.1")
    p.add_argument("--out", help="output folder (default: runs/train-<time>)")
    p.add_argument("--device", default=None,
                   help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--workers", type=int, default=1,
                   help="train data-parallel over N Ray Train workers (DDP; a local Ray unless "
                   "one runs; with cuda one GPU per worker; docs/data-parallel.md)")
    p.add_argument("--cpus-per-worker", type=float, default=1,
                   help="CPUs each worker reserves and its torch threads (default: 1)")
    _placement_flag(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("run", help="tune a search space with Ray Tune (default: digits, quick "
                       "preset, TPE + ASHA, all CPU cores)")
    p.add_argument("--space", default="quick", help="preset name or YAML file (default: quick)")
    p.add_argument("--dataset", help="fix the dataset knob")
    p.add_argument("--data-dir", help="fix the data_dir knob")
    p.add_argument("--searcher", default="tpe",
                   help=f"{' | '.join(SEARCHERS)} (default: tpe)")
    p.add_argument("--scheduler", default="asha",
                   help=f"{' | '.join(SCHEDULERS)} (default: asha; refused pairs: "
                   f"{', '.join(f'{s} + {t}' for s, t in REFUSED_PAIRS)})")
    p.add_argument("--num-samples", type=int,
                   help="trials to run (default: 16; grid search runs each point once)")
    p.add_argument("--max-epochs", type=int, help="fix the epochs knob (ASHA's max_t)")
    p.add_argument("--cpus-per-trial", type=float, default=1,
                   help="CPUs per trial (per worker with --workers-per-trial N)")
    p.add_argument("--gpus-per-trial", type=float, default=0,
                   help="GPUs per trial (per worker with --workers-per-trial N); fractions "
                   "pack trials (0.5: two per GPU)")
    p.add_argument("--workers-per-trial", type=int, default=1,
                   help="train each trial data-parallel over N Ray Train workers (DDP); the "
                   "resource flags are per worker (docs/data-parallel.md)")
    _placement_flag(p)
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    p.add_argument("--storage", help="results root: a path or URI (default: ./cnn-tuner-results)")
    p.add_argument("--name", help="experiment name (default: dataset-searcher-scheduler-time)")
    p.add_argument("--seed", type=int, default=0, help="searcher seed")
    p.add_argument("--address", help="an existing Ray cluster ('auto' or host:port)")
    p.add_argument("--set", action="append", metavar="KNOB=VALUE", help="fix a knob (repeatable)")
    p.add_argument("--grace-period", type=int,
                   help="epochs before ASHA/median may stop a trial (default: 2)")
    p.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA/HyperBand eta")
    p.add_argument("--constraint", action="append", dest="constraints", metavar="METRIC<=N",
                   help="a limit on each trial's cost, repeatable: params, params_trainable, "
                   "flops, latency_ms or train_time_s with <=, <, >= or > and a number (2e5, "
                   "200k, 1.5M); a trial that breaks one ends infeasible (docs/constraints.md)")
    p.add_argument("--objective", action="append", dest="objectives", metavar="METRIC:MODE",
                   help="search the trade-off of 2 or 3 objectives, e.g. --objective val_acc:max "
                   "--objective params:min: searchers random, grid, optuna; schedulers fifo, "
                   "asha (multi-objective ASHA); writes pareto.csv (docs/multi-objective.md)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retries per trial (-1: retry forever)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")
    p.add_argument("--resume", action="store_true", help="resume the experiment if it exists")
    p.add_argument("--verbose", type=int, default=1, help="Ray Tune verbosity 0-3")
    p.add_argument("--mlflow", nargs="?", const=True, default=False, metavar="TRACKING_URI",
                   help="log every trial to MLflow, nested under one run per experiment (no "
                   "URI: MLflow's default store; needs cnn-tuner[mlflow]; docs/tracking.md)")
    p.add_argument("--wandb", action="store_true",
                   help="log every trial to Weights & Biases, offline into STORAGE/NAME/wandb "
                   "unless WANDB_MODE says otherwise (needs cnn-tuner[wandb]; docs/tracking.md)")
    p.add_argument("--watch", type=int, nargs="?", const=DEFAULT_PORT, metavar="PORT",
                   help="serve the report live on 127.0.0.1:PORT while the run goes (no PORT: "
                   f"{DEFAULT_PORT}; 0: any free port; docs/watch.md)")
    p.add_argument("--confirm-top", type=int, metavar="K",
                   help="after the search, retrain the best K trials with --confirm-seeds "
                   "seeds each; the best by mean becomes the best recipe (docs/confirm.md)")
    p.add_argument("--confirm-seeds", type=int, metavar="S",
                   help="seeds per recipe for --confirm-top (>= 2; give both or neither)")
    p.add_argument("--warm-start", metavar="PATH",
                   help="seed the searcher (tpe, optuna) with the finished trials of an earlier "
                   "experiment on a compatible space; they are not run again "
                   "(docs/warm-start.md)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("resume", help="finish an interrupted experiment")
    p.add_argument("path", help="the experiment folder (STORAGE/NAME)")
    p.add_argument("--address", help="an existing Ray cluster")
    p.add_argument("--verbose", type=int, default=1)
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("results", help="top trials of a finished experiment")
    p.add_argument("path", help="the experiment folder")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--export-best", metavar="FILE", help="write the best recipe as YAML")
    p.add_argument("--pareto", action="store_true",
                   help="the Pareto front of a multi-objective run (pareto.csv) instead")
    p.set_defaults(func=_cmd_results)

    p = sub.add_parser("report", help="HTML report (plots, knob importance, cost) of an "
                       "experiment")
    p.add_argument("path", help="the experiment folder")
    p.add_argument("--out", help="output folder (default: PATH/report)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("watch", help="serve an experiment's report live on 127.0.0.1, during "
                       "the run (from the trial folders) and after it")
    p.add_argument("path", help="the experiment folder or URI (STORAGE/NAME)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port on 127.0.0.1 (default: {DEFAULT_PORT}; 0: any free port); from "
                   f"another machine: ssh -L {DEFAULT_PORT}:127.0.0.1:{DEFAULT_PORT} HOST")
    p.add_argument("--every", dest="every_s", type=float, default=REFRESH_S, metavar="SECONDS",
                   help=f"seconds between checks for new results (default: {REFRESH_S:g})")
    p.set_defaults(func=_cmd_watch)

    p = sub.add_parser("ablate", help="turn each strategy of a recipe off in turn; the change "
                       "in test accuracy with a 95%% CI over seeds")
    p.add_argument("recipe", help="recipe YAML file (e.g. an experiment's best_recipe.yaml)")
    p.add_argument("--seeds", type=int, default=3, help="trainings per variant (default: 3)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--out", help="output folder (default: the experiment folder of a "
                   "best_recipe.yaml, else runs/ablate-<recipe name>)")
    p.add_argument("--cpus-per-trial", type=float, default=1)
    p.add_argument("--gpus-per-trial", type=float, default=0)
    p.add_argument("--address", help="an existing Ray cluster ('auto' or host:port)")
    p.set_defaults(func=_cmd_ablate)

    p = sub.add_parser("confirm", help="retrain the top K trials of a finished experiment with "
                       "S seeds each; rank them by mean with a 95%% CI (docs/confirm.md)")
    p.add_argument("path", help="the experiment folder or URI (STORAGE/NAME)")
    p.add_argument("--top", type=int, default=4, help="trials to retrain (default: 4)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per trial, >= 2 (default: 3)")
    p.add_argument("--cpus-per-trial", type=float, default=1)
    p.add_argument("--gpus-per-trial", type=float, default=0)
    p.add_argument("--address", help="an existing Ray cluster ('auto' or host:port)")
    p.set_defaults(func=_cmd_confirm)

    p = sub.add_parser("spaces", help="list, show or validate search spaces")
    p.add_argument("action", choices=["list", "show", "validate"])
    p.add_argument("target", nargs="?", help="preset name (show) or YAML file (validate)")
    p.set_defaults(func=_cmd_spaces)

    p = sub.add_parser("knobs", help="every Recipe knob: meaning, valid values, default")
    p.add_argument("--markdown", action="store_true", help="as the markdown table of docs/knobs.md")
    p.set_defaults(func=_cmd_knobs)
    return parser


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Python parameter name -> its flag, for every command (``cpus_per_trial`` ->
    ``--cpus-per-trial``): the parser is the one source of the flags."""
    names: dict[str, str] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its actions here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                names.update({k: v for k, v in _flags(sub).items() if k not in names})
        elif action.dest not in names:
            longs = [o for o in action.option_strings if o.startswith("--")]
            if longs and action.dest != "help":
                names[action.dest] = longs[0]
    return names


def as_flags(message: str, flags: dict[str, str]) -> str:
    """The library names Python parameters (``cpus_per_trial: must be > 0``); the command line
    names its flags: the leading parameter, and unquoted multi-word parameter names inside."""
    head, sep, rest = message.partition(": ")
    if sep and head in flags:
        message = f"{flags[head]}: {rest}"
    return re.sub(r"(?<![\w'-])([a-z]+(?:_[a-z]+)+)(?![\w'])",
                  lambda m: flags.get(m.group(1), m.group(1)), message)


def _one_line_warnings(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    return f"cnn-tuner: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warnings
    parser = build_parser()
    args = parser.parse_args(argv)  # tuner.cli.main kept a local Ray on loopback already
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"cnn-tuner: error: {as_flags(str(e), _flags(parser))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        print(f"cnn-tuner: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
