"""``cnn-tuner report``: the HTML report of a real small tuning run, rendered by headless Chromium.

The run (conftest ``lr_experiment``) varies lr over five decades plus two knobs that do not
matter; the report must draw one curve per trial, mark the trials ASHA stopped, rank lr first
in the importance table, and load offline without JavaScript errors. Chromium is Debian's
``chromium`` package (`make test` installs it); without it these tests fail, not skip.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.image import imread

from tuner.analysis import plots
from tuner.analysis.importance import knob_importance
from tuner.analysis.report import epoch_events, load_experiment, write_report
from tuner.cli import main

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0"]
PLOTS = ("learning_curves", "efficiency", "parallel_coordinates", "importance")


class Dom(HTMLParser):
    """Elements (tag, attributes) and the text of every table's cells, by table id."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.texts: dict[str, str] = {}  # <pre id=...> text
        self._rows: list | None = None
        self._cell: list[str] | None = None
        self._pre: tuple[str, list[str]] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.elements.append((tag, a))
        if tag == "table":
            self._rows = self.tables.setdefault(a.get("id", ""), [])
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []
        elif tag == "pre" and "id" in a:
            self._pre = (a["id"], [])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._rows:
            self._rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._rows = None
        elif tag == "pre" and self._pre is not None:
            self.texts[self._pre[0]] = "".join(self._pre[1])
            self._pre = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._pre is not None:
            self._pre[1].append(data)

    def ids(self, prefix: str) -> list[str]:
        return [a["id"][len(prefix):] for _, a in self.elements
                if a.get("id", "").startswith(prefix)]


def chromium_render(page: Path, profile: Path) -> tuple[Dom, list[str]]:
    """The DOM Chromium built from ``page`` (after its scripts ran) and its console lines."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: `apt-get install chromium` (`make test` does)")
    proc = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "<body" in proc.stdout, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    return Dom(proc.stdout), console


@pytest.fixture(scope="module")
def report(lr_experiment: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cnn-tuner report EXP --out DIR``; returns index.html."""
    out = tmp_path_factory.mktemp("html") / "report"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["report", str(lr_experiment), "--out", str(out)]) == 0
    assert f"wrote {out}/index.html" in stdout.getvalue()
    return out / "index.html"


@pytest.fixture(scope="module")
def rendered(report: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Dom, list[str]]:
    return chromium_render(report, tmp_path_factory.mktemp("chromium"))


# -- the rendered report ---------------------------------------------------------------------
@pytest.mark.ray
def test_report_draws_one_curve_per_trial_and_marks_stopped_ones(lr_experiment, rendered):
    dom, console = rendered
    trials = pd.read_csv(lr_experiment / "results.csv", dtype={"trial_id": str})
    assert console == []  # no JavaScript error (nor any console output)
    assert sorted(dom.ids("trial-")) == sorted(trials["trial_id"])  # SVG line groups
    stopped = trials.loc[trials["status"] != "completed", "trial_id"]
    assert len(stopped) >= 1 and sorted(dom.ids("stop-")) == sorted(stopped)
    legend = [a["data-trial"] for tag, a in dom.elements if tag == "tr" and "data-trial" in a]
    assert sorted(legend) == sorted(trials["trial_id"])


@pytest.mark.ray
def test_report_importance_table_ranks_lr_first(rendered):
    dom, _ = rendered
    header, *rows = dom.tables["importance"]
    assert header[:3] == ["knob", "family", "importance"]
    assert [r[0] for r in rows][0] == "lr" and {r[0] for r in rows} == {
        "lr", "seed", "label_smoothing"}
    family = dict((r[0], float(r[1])) for r in dom.tables["family-importance"][1:])
    assert set(family) == {"optimizer", "regularization"}
    assert family["optimizer"] > family["regularization"]  # lr and seed vs label smoothing


@pytest.mark.ray
def test_report_is_self_contained_and_pngs_are_not_blank(report, rendered):
    dom, _ = rendered
    for tag, a in dom.elements:
        assert tag not in ("link", "iframe"), a
        assert not (tag == "script" and "src" in a), a
        if tag == "img":
            assert a["src"].startswith("data:image/png;base64,")
    assert sum(tag == "img" for tag, _ in dom.elements) == 3  # efficiency, parallel, importance
    for stem in PLOTS:
        img = imread(report.parent / f"{stem}.png")[..., :3]
        ink = np.mean(np.any(img < 0.9, axis=-1))  # share of pixels that are not near-white
        assert 0.02 < ink < 0.9, (stem, ink)


@pytest.mark.ray
def test_report_cost_and_best_recipe(lr_experiment, rendered):
    dom, _ = rendered
    summary = pd.read_json(lr_experiment / "summary.json", typ="series")
    cost = dict((r[0], r[1]) for r in dom.tables["cost"])
    assert cost["trials"] == "12"
    assert cost["trial-epochs used"].startswith(f"{summary['total_trial_epochs']} of 36 ")
    assert summary["total_trial_epochs"] < 36  # ASHA stopped some trials
    assert "CPU-seconds reserved" in cost and cost["GPU-seconds reserved"].startswith("0 ")
    assert "by the asha scheduler" in cost["stopped early"]
    exp = load_experiment(lr_experiment)
    events = epoch_events(exp.curves, "val_acc")
    assert len(events) == summary["total_trial_epochs"]  # one point per trial-epoch
    assert (events["timestamp"].diff().dropna() >= 0).all()
    shown = yaml.safe_load(dom.texts["best-recipe"])
    assert shown == yaml.safe_load((lr_experiment / "best_recipe.yaml").read_text())
    assert shown["lr"] == pytest.approx(summary["best_recipe"]["lr"])
    assert dom.texts["retrain"] == (f"cnn-tuner train --recipe {lr_experiment}/best_recipe.yaml "
                                    "--out runs/best")
    assert dom.texts["rerun"].startswith("cnn-tuner run --space ")


# -- importance on its own -------------------------------------------------------------------
@pytest.mark.ray
def test_importance_ranks_the_learning_rate_above_knobs_that_do_not_matter(lr_experiment):
    trials = pd.read_csv(lr_experiment / "results.csv")
    imp = knob_importance(trials, ["lr", "seed", "label_smoothing"], "val_acc")
    scores = dict(zip(imp.knobs["knob"], imp.knobs["importance"], strict=True))
    assert imp.ok and imp.n_trials == 12
    assert scores["lr"] > 2 * max(scores["seed"], scores["label_smoothing"]), scores
    assert sum(scores.values()) == pytest.approx(1.0)


def test_importance_handles_categorical_and_inactive_knobs():
    rng = np.random.default_rng(0)
    n = 40
    schedule = rng.choice(["step", "cosine", "onecycle"], n)
    df = pd.DataFrame({
        "lr_schedule": schedule,
        "step_size": np.where(schedule == "step", rng.integers(1, 5, n), np.nan),  # conditional
        "dropout": rng.uniform(0, 0.5, n),
        "batch_norm": rng.choice([True, False], n),
    })
    df["val_acc"] = np.where(df["batch_norm"], 0.9, 0.3) + rng.normal(0, 0.01, n)
    imp = knob_importance(df, ["lr_schedule", "step_size", "dropout", "batch_norm"], "val_acc")
    assert imp.knobs["knob"].iloc[0] == "batch_norm" and imp.knobs["importance"].iloc[0] > 0.8
    assert imp.families["family"].iloc[0] == "batch_norm"
    assert imp.note == "40 trials"
    few = knob_importance(df.head(5), ["dropout", "batch_norm"], "val_acc")
    assert "fewer than 8" in few.note
    none = knob_importance(df.head(2), ["dropout"], "val_acc")
    assert not none.ok and "too few" in none.note


# -- robustness and errors -------------------------------------------------------------------
def test_parallel_coordinates_take_categorical_boolean_and_inactive_knobs():
    df = pd.DataFrame({"lr_schedule": ["step", "cosine", "step", None],
                       "step_size": [2, np.nan, 5, np.nan],  # conditional: inactive -> NaN
                       "batch_norm": [True, False, True, True],
                       "lr": [1e-3, 1e-2, 1e-1, 3e-1], "never": [np.nan] * 4,
                       "val_acc": [0.2, 0.5, 0.9, 0.7]})
    fig = plots.parallel_coordinates(df, ["lr_schedule", "step_size", "batch_norm", "lr",
                                          "never"], {"lr"}, "val_acc")
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"cosine", "step", "True", "False", "(inactive)", "0.001", "0.3"} <= texts
    png = imread(io.BytesIO(plots.png_bytes(fig)))
    assert np.mean(np.any(png[..., :3] < 0.9, axis=-1)) > 0.02


@pytest.mark.ray
def test_report_on_a_run_with_an_errored_trial_and_few_trials(lr_experiment, tmp_path):
    """A trial that errored before its first epoch has no curve; five trials are 'few'."""
    exp = tmp_path / "exp"
    shutil.copytree(lr_experiment, exp, ignore=shutil.ignore_patterns("checkpoint_*"))
    trials = pd.read_csv(exp / "results.csv", dtype={"trial_id": str}).head(5)
    gone = trials["trial_id"].iloc[0]
    trials.loc[0, ["status", "stop_reason", "val_acc", "epochs_run"]] = [
        "errored", "error", np.nan, 0]
    trials.to_csv(exp / "results.csv", index=False)
    (exp / f"trial_{gone}" / "result.json").unlink()
    index = Path(write_report(exp))
    assert index == exp / "report" / "index.html"
    dom = Dom(index.read_text())
    assert len(dom.ids("trial-")) == 4  # the errored trial has no epoch to draw
    assert len([a for t, a in dom.elements if t == "tr" and "data-trial" in a]) == 5
    assert dict((r[0], r[1]) for r in dom.tables["cost"])["errored"] == "1"
    assert "fewer than 8" in index.read_text()


def test_report_refuses_a_folder_that_is_not_an_experiment(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a cnn-tuner experiment folder" in err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such experiment folder" in capsys.readouterr().err


@pytest.mark.ray
def test_report_on_an_experiment_behind_a_uri(lr_experiment, tmp_path):
    """A URI goes through pyarrow (file:// here; s3:// in test_cluster): the experiment is
    read without its checkpoints and the report written back beside it, or into --out."""
    exp = tmp_path / "exp"
    shutil.copytree(lr_experiment, exp, ignore=shutil.ignore_patterns("report"))
    uri = f"file://{exp}"
    assert write_report(uri) == f"{uri}/report/index.html"
    page = (exp / "report" / "index.html").read_text()
    assert uri in page and "exp</h1>" in page
    assert f"cnn-tuner results {uri} --export-best best_recipe.yaml" in page
    trials = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    assert sorted(Dom(page).ids("trial-")) == sorted(trials["trial_id"])
    assert (exp / "report" / "learning_curves.png").stat().st_size > 1000
    out = tmp_path / "local"
    assert write_report(uri, out) == str(out / "index.html") and (out / "space.yaml").is_file()


def test_report_on_a_missing_uri_is_one_line(tmp_path, capsys):
    assert main(["report", f"file://{tmp_path}/nothing-here"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such experiment folder" in err and "nothing-here" in err


@pytest.mark.chromium
def test_chromium_harness_catches_javascript_errors(tmp_path):
    """The no-JS-error check above can fail: a page with an uncaught error is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><p>x</p><script>notDefined();</script></body></html>")
    _, console = chromium_render(page, tmp_path / "profile")
    assert any("Uncaught ReferenceError" in ln for ln in console), console
