"""What every benchmark shares: the one JSON line, the machine, a quiet Ray, Optuna spaces.

A benchmark prints exactly one JSON line on stdout (everything else, Ray's and Optuna's chatter
included, goes to stderr), so ``python benchmarks/NAME.py > out.jsonl`` collects results.
Ratios are measured within one run, on the same machine, interleaved where they can be:
absolute numbers on a shared 2-core machine are noise, ratios much less so.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

# Ray reads these when it is imported; the runner sets them too.
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Ray starts its workers (so every trial) at nice 15. On a machine shared with other work that
# alone hands the trials' CPU to anything at nice 0: the bare loop and Optuna they are compared
# with, and other users. Benchmarks compare at equal priority; set RAY_worker_niceness=15 in the
# environment to measure Ray's default instead.
os.environ.setdefault("RAY_worker_niceness", "0")

_REAL_STDOUT_FD: int | None = None


def cpu_model() -> str:
    """The CPU model name as /proc/cpuinfo gives it, with its family and model numbers: a KVM
    guest may name only "AMD EPYC", and a Zen 3 (family 25) and a Zen 5 (family 26) differ
    2.8x in the default run's epoch time (BENCHMARKS.md)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:  # the first processor's block is enough
                    break
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def machine() -> dict[str, Any]:
    """CPU model, cores, GPU (if CUDA), library versions: what a number in BENCHMARKS.md needs."""
    import torch

    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "ray_worker_niceness": os.environ.get("RAY_worker_niceness")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    with contextlib.suppress(Exception):
        load1 = os.getloadavg()[0]
        info["load_avg_1m_at_end"] = round(load1, 2)
    return info


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send fd 1 to fd 2 (Python prints, C extensions and Ray's log forwarding alike) for the
    benchmark body, so the JSON line is the only thing left on stdout."""
    global _REAL_STDOUT_FD
    sys.stdout.flush()
    saved = os.dup(1)
    _REAL_STDOUT_FD = saved
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        _REAL_STDOUT_FD = None


def emit(benchmark: str, figures: dict[str, Any], *, ratio: float | None, target: str,
         met: bool | None, args: Any = None, **extra: Any) -> dict[str, Any]:
    """Print the benchmark's one JSON line: name, figures, headline ratio, target, machine."""
    line = {"benchmark": benchmark, **figures, "ratio": _round(ratio), "target": target,
            "met": met, **extra,
            "machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    if args is not None:
        line["args"] = {k: v for k, v in vars(args).items()}
    print(json.dumps(_round(line)), flush=True)
    return line


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    return value


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def mean(values: list[float]) -> float:
    return float(statistics.fmean(values)) if values else float("nan")


class Timer:
    """``with Timer() as t: ...`` then ``t.s`` (perf_counter seconds)."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.s = float("nan")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.s = time.perf_counter() - self.start


@contextlib.contextmanager
def ray_local(num_cpus: int = 2, num_gpus: int | None = None) -> Iterator[float]:
    """One local Ray for the whole benchmark process (``tuner.tune`` reuses an initialised
    Ray); yields the seconds ``ray.init`` took; always shuts it down. ``num_gpus``: how many
    GPUs Ray may hand out (None: all it finds)."""
    import ray

    start = time.perf_counter()
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
             log_to_driver=False, logging_level="error", configure_logging=True)
    try:
        yield time.perf_counter() - start
    finally:
        ray.shutdown()


def quiet_optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def parse_fixed(items: list[str]) -> dict[str, Any]:
    """``["width=16", "image_size=16"]`` -> {"width": 16, "image_size": 16} (YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--fixed: expected KNOB=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def trial_results(path: str) -> list[dict[str, Any]]:
    """Every result row a Ray Tune trial wrote (its ``result.json``, one JSON object a line)."""
    rows = []
    with open(os.path.join(path, "result.json")) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows
