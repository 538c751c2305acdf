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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback


class _KeepsLocalRows:
    def _restore_from_remote(self, file_name: str, trial: Any) -> None:
        if Path(trial.local_path, file_name).exists():
            return
        super()._restore_from_remote(file_name, trial)  # type: ignore[misc]


class JsonLogger(_KeepsLocalRows, JsonLoggerCallback):
    """Ray's result.json writer, keeping the rows written before a restart."""


class CSVLogger(_KeepsLocalRows, CSVLoggerCallback):
    """Ray's progress.csv writer, keeping the rows written before a restart."""


def result_loggers() -> list[Any]:
    """The two logger callbacks; given to Ray, they take the place of its defaults (Ray adds its
    TensorBoard writer still, which never copies from storage)."""
    return [CSVLogger(), JsonLogger()]
