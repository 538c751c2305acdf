"""The ``cnn-tuner`` command line's grammar and error handling: every command's flags, one-line
usage errors, and ``main``, which runs the command (tuner.cli.commands) and turns a user mistake
(``ConfigError``) into one line naming the flag, exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings

from trainables.errors import ConfigError
from tuner.analysis.watch import DEFAULT_PORT, REFRESH_S
from tuner.cli import commands
from tuner.running.schedulers import REFUSED_PAIRS, SCHEDULERS
from tuner.running.searchers import SEARCHERS

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), like every other user mistake."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    p.set_defaults(func=commands.cmd_train)

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
                   help="epochs before ASHA/median may stop a trial (default: 1 for "
                   "asha, 2 for median and multi-objective asha)")
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
    p.set_defaults(func=commands.cmd_run)

    p = sub.add_parser("resume", help="finish an interrupted experiment")
    p.add_argument("path", help="the experiment folder (STORAGE/NAME)")
    p.add_argument("--address", help="an existing Ray cluster")
    p.add_argument("--verbose", type=int, default=1)
    p.set_defaults(func=commands.cmd_resume)

    p = sub.add_parser("results", help="top trials of a finished experiment")
    p.add_argument("path", help="the experiment folder")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--export-best", metavar="FILE", help="write the best recipe as YAML")
    p.add_argument("--pareto", action="store_true",
                   help="the Pareto front of a multi-objective run (pareto.csv) instead")
    p.set_defaults(func=commands.cmd_results)

    p = sub.add_parser("report", help="HTML report (plots, knob importance, cost) of an "
                       "experiment")
    p.add_argument("path", help="the experiment folder")
    p.add_argument("--out", help="output folder (default: PATH/report)")
    p.set_defaults(func=commands.cmd_report)

    p = sub.add_parser("watch", help="serve an experiment's report live on 127.0.0.1, during "
                       "the run (from the trial folders) and after it")
    p.add_argument("path", help="the experiment folder or URI (STORAGE/NAME)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port on 127.0.0.1 (default: {DEFAULT_PORT}; 0: any free port); from "
                   f"another machine: ssh -L {DEFAULT_PORT}:127.0.0.1:{DEFAULT_PORT} HOST")
    p.add_argument("--every", dest="every_s", type=float, default=REFRESH_S, metavar="SECONDS",
                   help=f"seconds between checks for new results (default: {REFRESH_S:g})")
    p.set_defaults(func=commands.cmd_watch)

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
    p.set_defaults(func=commands.cmd_ablate)

    p = sub.add_parser("confirm", help="retrain the top K trials of a finished experiment with "
                       "S seeds each; rank them by mean with a 95%% CI (docs/confirm.md)")
    p.add_argument("path", help="the experiment folder or URI (STORAGE/NAME)")
    p.add_argument("--top", type=int, default=4, help="trials to retrain (default: 4)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per trial, >= 2 (default: 3)")
    p.add_argument("--cpus-per-trial", type=float, default=1)
    p.add_argument("--gpus-per-trial", type=float, default=0)
    p.add_argument("--address", help="an existing Ray cluster ('auto' or host:port)")
    p.set_defaults(func=commands.cmd_confirm)

    p = sub.add_parser("spaces", help="list, show or validate search spaces")
    p.add_argument("action", choices=["list", "show", "validate"])
    p.add_argument("target", nargs="?", help="preset name (show) or YAML file (validate)")
    p.set_defaults(func=commands.cmd_spaces)

    p = sub.add_parser("knobs", help="every Recipe knob: meaning, valid values, default")
    p.add_argument("--markdown", action="store_true", help="as the markdown table of docs/knobs.md")
    p.set_defaults(func=commands.cmd_knobs)
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
