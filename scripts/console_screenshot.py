"""Regenerates docs/console.svg, the README's picture of the live console view: a real run of
the quick preset (8 trials x 6 epochs, random + ASHA) with the view recorded at 100 columns at
the first refresh where trials have finished and others still run.

    python scripts/console_screenshot.py [OUT.svg]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from rich.console import Console

from tuner import RunConfig, TuneConfig, tune
from tuner.running.progress import LiveView

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/console.svg")
shot: dict[str, str] = {}
report = LiveView.report


def recording_report(self: LiveView, trials, done, *sys_info) -> None:  # noqa: ANN001
    report(self, trials, done, *sys_info)
    states = {t.status for t in trials}
    if "svg" not in shot and "RUNNING" in states and "TERMINATED" in states:
        con = Console(record=True, width=100, file=open("/dev/null", "w"))  # noqa: SIM115
        con.print(self.view(self.stats(trials)))
        shot["svg"] = con.export_svg(title="cnn-tuner run")


LiveView.report = recording_report
with tempfile.TemporaryDirectory() as tmp:
    tune("quick", num_samples=8, max_epochs=6,
         tune_config=TuneConfig(searcher="random"),
         run_config=RunConfig(storage=tmp, name="digits-random-asha", verbose=1))
if "svg" not in shot:
    sys.exit("no frame had running and finished trials at once")
OUT.write_text(shot["svg"])
print(f"wrote {OUT}")
