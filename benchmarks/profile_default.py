"""Where the default `cnn-tuner run` spends its wall time (issue 15's profile).

Runs the default search as a user does (``python -m tuner.cli run --verbose 0 --seed S``) in a
fresh process under pyinstrument (the driver), then reads the experiment folder it wrote (the
trials). Prints the breakdown on stderr and one JSON line on stdout:

* driver phases (pyinstrument, wall seconds): Python start and imports, loading the data, Ray
  start, building the searcher and Tuner, ``Tuner.fit`` (the driver mostly waits there), the
  searcher's own suggest/observe time inside it, collecting results and the summary;
* trials (their result.json rows): trial start-up (the first report's ``time_this_iter_s`` minus
  its epoch: worker start, imports, data from the object store, model build, the cost
  estimate), training, evaluation, and the report + checkpoint time around each epoch;
* cores: the core-seconds ``fit`` offered (wall x ``--cpus``) against the ones trials used;
  the rest is idle (waiting for a worker, for Ray's bookkeeping, for the searcher).

``pyinstrument`` is not a project dependency: ``make bench`` installs it, or
``pip install pyinstrument``.

    python benchmarks/profile_default.py [--seed 0] [--set image_size=16 ...]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import emit, trial_results

HERE = os.path.dirname(os.path.abspath(__file__))

# Driver phases: a pyinstrument frame's function name (and the file it is in), outermost
# occurrence counted once. pyinstrument hides importlib's frames: an import is a "<module>" frame.
PHASES = {
    "imports": [("<module>", None)],
    "load_data": [("load_run_data", "runner.py")],
    "ray_start": [("init", "ray/_private/worker.py")],
    "fit": [("_fit", "runner.py")],
    "ray_telemetry_imports": [("tag_callbacks", "usage.py")],
    "searcher": [("suggest", "hyperopt_search.py"), ("on_trial_complete", "hyperopt_search.py"),
                 ("on_trial_result", "hyperopt_search.py")],
    "collect_results": [("collect_results", None)],
    "ray_shutdown": [("shutdown", "ray/_private/worker.py")],
    "summary": [("_print_summary", None)],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2,
                   help="cores the run's Ray has (default: this machine's)")
    p.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                   help="passed to `cnn-tuner run --set` (e.g. image_size=16)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 4 trials of 3 epochs (not the default run's profile)")
    p.add_argument("--keep", help="folder for the experiment and the profile (default: a "
                                  "temporary one, removed)")
    return p.parse_args(argv)


def _frames(frame: dict[str, Any], name: str, file: str | None,
            inside: bool = False) -> float:
    """Seconds in frames named ``name`` (in a file ending with ``file``), outermost only."""
    here = frame["function"] == name and (file is None or frame["file_path"].endswith(file))
    if here and not inside:
        return float(frame["time"])
    return sum(_frames(c, name, file, inside or here) for c in frame.get("children", ()))


def driver_phases(profile: dict[str, Any]) -> dict[str, float]:
    root = profile["root_frame"]  # the CLI's __main__ module itself: not an import
    out = {k: sum(_frames(c, n, f) for c in root.get("children", ()) for n, f in spec)
           for k, spec in PHASES.items()}
    out["total"] = float(profile["duration"])
    return out


def trial_phases(experiment: str) -> dict[str, Any]:
    """Sums over every trial's rows (seconds). ``epoch``: an epoch's training and validation
    (and the test at the end), as the loop times it; ``startup``: the rest of a process's first
    report (from Ray's call of the trainable: data from the object store, the model, the cost
    estimate); ``report_checkpoint``: the rest of every later report."""
    startup = epoch = report = busy = 0.0
    epochs = trials = 0
    first_epoch, later_epochs = [], []
    for path in sorted(glob.glob(os.path.join(experiment, "trial_*", "result.json"))):
        rows = trial_results(os.path.dirname(path))
        trials += 1
        for r in rows:
            epochs += 1
            busy += r["time_this_iter_s"]
            epoch += r["epoch_time_s"]
            extra = r["time_this_iter_s"] - r["epoch_time_s"]
            if r.get("iterations_since_restore") == 1:  # the process's first report
                startup += extra
                first_epoch.append(r["epoch_time_s"])
            else:
                report += extra
                later_epochs.append(r["epoch_time_s"])
    return {"trials": trials, "trial_epochs": epochs, "busy_s": busy, "startup_s": startup,
            "epoch_s": epoch, "report_checkpoint_s": report,
            "first_epoch_mean_s": sum(first_epoch) / max(len(first_epoch), 1),
            "later_epoch_mean_s": sum(later_epochs) / max(len(later_epochs), 1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        print("profile_default: needs pyinstrument (pip install pyinstrument)", file=sys.stderr)
        return 2
    work = args.keep or tempfile.mkdtemp(prefix="profile-default-")
    os.makedirs(work, exist_ok=True)
    try:
        return profile(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def profile(args: argparse.Namespace, work: str) -> int:
    """Run and read the profile in ``work``; 0, or 1 when the run failed."""
    out = os.path.join(work, "driver-profile.json")
    name = f"default-{args.seed}-{int(time.time())}"
    sets = [a for s in args.set for a in ("--set", s)]
    # filter_threshold=0: keep frames under 1% of the run (pyinstrument drops them by default)
    cmd = [sys.executable, "-m", "pyinstrument", "-r", "json", "-o", out,
           "-p", "processor_options.filter_threshold=0", "-m", "tuner.cli",
           "run", "--storage", work, "--name", name, "--verbose", "0", "--seed",
           str(args.seed), *sets,
           *(["--num-samples", "4", "--max-epochs", "3"] if args.quick else [])]
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=os.path.dirname(HERE), stdout=sys.stderr).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        print(f"profile_default: exit status {rc} from {' '.join(cmd)}", file=sys.stderr)
        return 1
    with open(out) as f:
        driver = driver_phases(json.load(f))
    trials = trial_phases(os.path.join(work, name))
    with open(os.path.join(work, name, "summary.json")) as f:
        summary = json.load(f)
    offered = driver["fit"] * args.cpus
    cores = {"fit_core_s": offered, "trial_core_s": trials["busy_s"],
             "idle_core_s": offered - trials["busy_s"],
             "idle_fraction": (offered - trials["busy_s"]) / offered if offered else None}
    outside_fit = driver["total"] - driver["fit"]
    print(f"wall {wall:.1f} s (driver profile {driver['total']:.1f} s), outside fit "
          f"{outside_fit:.1f} s: " + ", ".join(f"{k} {v:.2f}" for k, v in driver.items()),
          file=sys.stderr)
    print("trials: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                 for k, v in trials.items()), file=sys.stderr)
    print("cores: " + ", ".join(f"{k} {v:.2f}" for k, v in cores.items()), file=sys.stderr)
    emit("profile_default", {"wall_s": wall, "outside_fit_s": outside_fit, "driver": driver,
                             "trials": trials, "cores": cores,
                             "best_test_acc": summary.get("best_test_acc")},
         ratio=None, target="(a measurement)", met=None, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
