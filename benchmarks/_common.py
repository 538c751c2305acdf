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


def _proc_cpu(pid: int, tick: float) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after the command name, which may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / tick


def _role(pid: int) -> str:
    """What a process under the driver is: Ray's raylet or GCS, a Ray worker, or another."""
    if pid == os.getpid():
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return "ray_other"
    if os.path.basename(argv[0]) in ("raylet", "gcs_server"):
        return os.path.basename(argv[0])
    if argv[0].endswith("Agent"):  # ray::DashboardAgent, ray::RuntimeEnvAgent
        return "ray_other"
    if argv[0].startswith("ray::") or any(a.endswith("default_worker.py") for a in argv[1:3]):
        return "ray_workers"  # an idle worker or an actor (a trial), or one not yet named
    return "ray_other"


class TreeCPU:
    """CPU seconds spent by this process and every process under it (Ray's raylet and GCS, its
    workers, its agents) while the ``with`` block runs, summed by ``_role``. A thread samples
    /proc every ``interval`` s and keeps each process's last reading, so one that exits in the
    block counts up to its last sample. ``.seconds`` after the block; Linux only ({} elsewhere)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.seconds = interval, {}
        self._first: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._stop = None

    def _sample(self, tick: float, baseline: bool = False) -> None:
        """Read every process under this one; the ``baseline`` reading is what each had spent
        before the block (a process first seen later started in it: from 0)."""
        cpu, children = {}, {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (got := _proc_cpu(int(entry), tick)) is not None:
                ppid, cpu[int(entry)] = got
                children.setdefault(ppid, []).append(int(entry))
        frontier = [os.getpid()]
        while frontier:
            pid = frontier.pop()
            frontier.extend(children.get(pid, []))
            role = self._last[pid][0] if pid in self._last else _role(pid)
            self._last[pid] = (role, cpu[pid])
            self._first.setdefault(pid, cpu[pid] if baseline else 0.0)

    def __enter__(self) -> TreeCPU:
        import threading

        if not os.path.isdir("/proc"):
            return self
        tick = os.sysconf("SC_CLK_TCK")
        self._sample(tick, baseline=True)
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self._sample(tick)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is None:
            return
        self._stop.set()
        self._thread.join()
        self._sample(os.sysconf("SC_CLK_TCK"))
        for pid, (role, cpu) in self._last.items():
            self.seconds[role] = self.seconds.get(role, 0.0) + cpu - self._first[pid]
