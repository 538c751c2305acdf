"""Ray Tune's per-trial result logs (result.json and progress.csv), without
losing the rows a trial wrote before a pause.

Ray's logger callbacks write into the driver's staging folder, which Ray copies to the storage
path every few minutes. Each time a trial (re)starts from a checkpoint (a PBT or HyperBand pause,
a PBT exploit, a retry), Ray's callback first copies the file back from storage
(``LoggerCallback._restore_from_remote``), over the newer local one: every row written since the
last copy to storage is gone. Measured on Ray 2.60 with random + pbt (10 trials, 9 epochs):
trials paused at epoch 4 and at epoch 8 kept rows 1-4 and 9 only, and in one run of the
contract suite no row of an exploited trial survived. The per-epoch curves of the report, the
live view and the contract tests read these rows.

Here the copy from storage happens only when the local file does not exist, i.e. when this
driver has not written the trial yet (a resumed experiment starts a new staging folder); the
local file, the only one this driver appends to, is otherwise the newer one.

The fix replaces the one method both of Ray's callbacks call (``keep_local_rows``, run when
tuner.running.runner is imported) rather than passing subclasses as ``RunConfig.callbacks``: Ray
counts user callbacks for its telemetry by importing its MLflow, W&B, Comet and Aim integrations
(``ray.air._internal.usage.tag_callbacks``), 1.2 s per run where mlflow is installed, measured
by benchmarks/profile_default.py; with no callback given it skips that.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ray.tune.logger import LoggerCallback


def keep_local_rows() -> None:
    """Make Ray's logger callbacks copy a trial's file from storage only when this driver has
    none (idempotent)."""
    restore = LoggerCallback._restore_from_remote  # noqa: SLF001 - the method to replace
    if getattr(restore, "keeps_local_rows", False):
        return

    @functools.wraps(restore)
    def restore_unless_local(self: LoggerCallback, file_name: str, trial: Any) -> None:
        if Path(trial.local_path, file_name).exists():
            return
        restore(self, file_name, trial)

    restore_unless_local.keeps_local_rows = True  # type: ignore[attr-defined]
    LoggerCallback._restore_from_remote = restore_unless_local  # noqa: SLF001
