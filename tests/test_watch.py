"""``cnn-tuner watch`` / ``run --watch``: the report served live from a run in progress.

Most tests build an experiment folder as a run leaves it midway (the settings file, trial folders
with params.json and result.json lines, no results.csv yet) and serve it on a free port; one
watches a real small run in headless Chromium. The server must listen on loopback only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_report import CHROMIUM_FLAGS, Dom

from search_spaces import SearchSpace
from tuner.analysis.watch import DEFAULT_PORT, REFRESH_S, Watcher, live_script
from tuner.cli import build_parser, main
from tuner.running.settings import RunSettings

SPACE = {"dataset": "digits", "width": 8, "lr": {"loguniform": [0.01, 0.3]}}
SLOW = 3600.0  # a refresh interval no test waits for: the tests call refresh() themselves


def epoch_line(trial: str, epoch: int, stop: str | None = None) -> str:
    rec = {"epoch": epoch, "training_iteration": epoch, "trial_id": trial,
           "val_acc": 0.2 * epoch, "val_loss": 2.0 - 0.2 * epoch, "train_acc": 0.2 * epoch,
           "train_loss": 2.0 - 0.2 * epoch, "images_per_s": 500.0,
           "timestamp": 1_000 + 10 * epoch, "time_total_s": 10.0 * epoch}
    if stop:
        rec["stop_reason"] = stop
    return json.dumps(rec) + "\n"


def experiment(root: Path, epochs: dict[str, int]) -> Path:
    """A run in progress as its folder shows it: settings, and a trial folder with params.json
    and ``epochs[trial]`` complete result.json lines per trial."""
    space = SearchSpace.from_dict(SPACE)
    RunSettings(space=space.to_dict(), searcher="random", scheduler="fifo", num_samples=4,
                max_epochs=4).save(str(root))
    for i, (trial, n) in enumerate(epochs.items()):
        d = root / f"trial_{trial}"
        d.mkdir()
        (d / "params.json").write_text(json.dumps({"dataset": "digits", "width": 8,
                                                   "epochs": 4, "lr": 0.01 * (i + 1)}))
        if n:
            (d / "result.json").write_text("".join(epoch_line(trial, e) for e in range(1, n + 1)))
    return root


def get(url: str, host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def trial_rows(page: str) -> dict[str, list[str]]:
    """The report's trial table: trial id -> its cells (trial, status, stop_reason, ...)."""
    rows = Dom(page).tables["trials"][1:]
    return {r[1].removesuffix(" (best)"): r[1:] for r in rows}


def live_epochs(page: str) -> int:
    m = re.search(r'<span id="live-epochs">(\d+)</span>', page)
    assert m, page[:2000]
    return int(m.group(1))


TMP_COPY = str(Path(tempfile.gettempdir()) / "cnn-tuner-watch-")  # the watcher's private copy


def watch_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("cnn-tuner-watch-*")}


# -- the server ---------------------------------------------------------------------------------
def _listening(port: int) -> dict[str, list[str]]:
    """Local addresses (hex, as the kernel writes them) listening on ``port``, by table."""
    found: dict[str, list[str]] = {}
    for table in ("tcp", "tcp6"):
        f = Path("/proc/net") / table
        for line in f.read_text().splitlines()[1:] if f.exists() else []:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.rsplit(":", 1)
            if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
                found.setdefault(table, []).append(addr)
    return found


def test_server_listens_on_loopback_only(tmp_path):
    with Watcher(tmp_path, 0, every_s=SLOW) as w:
        host, port = w.address
        assert host == "127.0.0.1" and w.url == f"http://127.0.0.1:{port}/"
        assert w._server.socket.getsockname() == ("127.0.0.1", port)  # noqa: SLF001
        if Path("/proc/net/tcp").exists():
            assert _listening(port) == {"tcp": ["0100007F"]}  # 127.0.0.1; not 0.0.0.0, not ::
        status, page = get(w.url)
        assert status == 200 and '<div id="live"' in page
        assert get(w.url + "version")[0] == 200 and get(w.url + "nothing")[0] == 404
        assert get(w.url + "favicon.ico")[0] == 204
        for name in ("localhost", "[::1]"):
            assert get(w.url, host=f"{name}:9000")[0] == 200  # e.g. ssh -L 9000:...
        assert get(w.url, host=f"evil.example:{port}")[0] == 403  # DNS rebinding
    with pytest.raises(OSError):  # closed
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_port_in_use_is_one_line_exit_2_and_nothing_left_running(tmp_path, capsys):
    exp = experiment(tmp_path / "exp", {"a_00000": 1})
    threads, dirs = threading.active_count(), watch_dirs()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["watch", str(exp), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(
            f"cnn-tuner: error: --port: port {port} is in use on 127.0.0.1"), err
        out = tmp_path / "store"
        assert main(["run", "--watch", str(port), "--storage", str(out), "--name", "x"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(
            f"cnn-tuner: error: --watch: port {port} is in use"), err
    assert not (out / "x").exists()  # refused before the run started
    assert threading.active_count() == threads and watch_dirs() == dirs


def test_cli_flags_and_a_missing_folder(tmp_path, capsys):
    parse = build_parser().parse_args
    assert parse(["run"]).watch is None
    assert parse(["run", "--watch"]).watch == DEFAULT_PORT
    assert parse(["run", "--watch", "0"]).watch == 0
    args = parse(["watch", "somewhere"])
    assert (args.port, args.every_s) == (DEFAULT_PORT, REFRESH_S)
    assert main(["watch", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such experiment folder" in err


# -- a run in progress --------------------------------------------------------------------------
def test_half_written_lines_and_trials_without_results_render(tmp_path):
    exp = experiment(tmp_path / "exp", {"a_00000": 2, "a_00001": 0, "a_00002": 0})
    with (exp / "trial_a_00000" / "result.json").open("a") as f:
        f.write(epoch_line("a_00000", 3)[:40])  # the line Ray is writing now
    (exp / "trial_a_00002" / "params.json").write_text('{"dataset": "dig')  # being written
    (exp / "trial_a_00003").mkdir()  # made, nothing in it yet
    with Watcher(exp, 0, every_s=SLOW) as w:
        w.report.refresh()
        status, page = get(w.url)
    assert status == 200 and w.report.state == "running", w.report.text
    assert "1 of 3 trials started have reported" in page  # 00003 has no params.json yet
    assert live_epochs(page) == 2
    rows = trial_rows(page)
    assert list(rows) == ["a_00000"] and rows["a_00000"][1:4] == ["running", "", "2"]
    assert TMP_COPY not in page and str(exp) in page  # the experiment, not the copy


def test_reload_script_keeps_scroll_and_version_changes_on_a_new_epoch(tmp_path):
    exp = experiment(tmp_path / "exp", {"a_00000": 1, "a_00001": 1})
    with Watcher(exp, 0, every_s=SLOW) as w:
        w.report.refresh()
        first = get(w.url + "version")[1]
        page = get(w.url)[1]
        assert f"var version = {json.dumps(first)}" in page  # the page knows its version
        assert not w.report.refresh() and get(w.url + "version")[1] == first  # nothing new
        with (exp / "trial_a_00001" / "result.json").open("a") as f:
            f.write(epoch_line("a_00001", 2))
        assert w.report.refresh()
        second = get(w.url + "version")[1]
        assert int(second) > int(first) and live_epochs(get(w.url)[1]) == 3
    script = live_script("7", 3.0)
    for part in ('fetch("version"', 'sessionStorage.setItem(key, String(window.scrollY))',
                 "location.reload()", "sessionStorage.getItem(key)", "window.scrollTo(0",
                 "setTimeout(poll, 3000)"):
        assert part in script, part


def test_results_being_written_keep_the_live_page_then_the_final_one(tmp_path):
    """The run writes results.csv then summary.json at its end: half written, the page stays
    the live one; complete, it is the final report."""
    exp = experiment(tmp_path / "exp", {"a_00000": 2, "a_00001": 1})
    with (exp / "trial_a_00000" / "result.json").open("a") as f:
        f.write(epoch_line("a_00000", 3, stop="completed"))
    with Watcher(exp, 0, every_s=SLOW) as w:
        w.report.refresh()
        live = get(w.url)[1]
        df = trial_rows(live)
        assert df["a_00000"][1:4] == ["completed", "completed", "3"]
        assert df["a_00001"][1] == "running"
        rows = "trial_id,status,stop_reason,epochs_run,lr,val_acc,test_acc\n" \
               "a_00000,completed,completed,3,0.01,0.6,\na_00001,completed,completed,4,0.02,0.8,\n"
        (exp / "results.csv").write_text(rows)
        (exp / "summary.json").write_text('{"best_trial": "a_000')
        assert w.report.refresh() and w.report.state == "running"
        (exp / "summary.json").write_text(json.dumps({
            "best_trial": "a_00001", "best_val_acc": 0.8, "best_test_acc": None,
            "total_trial_epochs": 7, "wall_time_s": 30.0}))
        assert w.report.refresh() and w.report.state == "finished"
        page = get(w.url)[1]
    assert live_epochs(page) == 7 and "final report" in page
    assert trial_rows(page)["a_00001"][1:4] == ["completed", "completed", "4"]


def test_an_experiment_behind_a_uri_is_watched_through_pyarrow(tmp_path):
    exp = experiment(tmp_path / "exp", {"a_00000": 2})
    uri = f"file://{exp}"
    with Watcher(uri, 0, every_s=SLOW) as w:
        w.report.refresh()
        page = get(w.url)[1]
    assert w.report.state == "running" and uri in page and TMP_COPY not in page


def test_before_the_run_writes_anything_the_page_waits(tmp_path):
    exp = tmp_path / "later"
    with Watcher(exp, 0, every_s=SLOW, wait=True) as w:
        w.report.refresh()
        assert w.report.state == "waiting" and "no such experiment folder" in get(w.url)[1]
        version = w.report.version
        assert not w.report.refresh() and w.report.version == version  # same message: no reload
        experiment(exp, {"a_00000": 0})
        assert w.report.refresh() and "no epoch finished yet" in get(w.url)[1]


def test_run_watch_serves_the_runs_folder_while_it_goes(tmp_path, monkeypatch, capsys):
    """``run --watch 0``: the folder tune() writes is served from before it starts until the
    summary is printed (tune() replaced by one writing a trial, so no Ray starts)."""
    import tuner.running.api as api

    seen: dict = {}

    def fake_tune(space, **kw):  # noqa: ANN001, ANN202
        run = kw["run_config"]
        url = re.search(r"http://127\.0\.0\.1:\d+/", capsys.readouterr().out).group(0)
        exp = experiment(Path(run.storage) / run.name, {"a_00000": 1})
        wait_for(lambda: "1 of 1 trials started have reported" in get(url)[1], 60, "the page")
        seen.update(url=url, name=run.name)
        summary = {"trials": 1, "completed": 0, "early_stopped": 1, "non_finite": 0,
                   "errored": 0, "total_trial_epochs": 1, "budget_trial_epochs": 4,
                   "wall_time_s": 1.0}
        return SimpleNamespace(summary=summary, best_recipe=None, path=str(exp))

    monkeypatch.setattr(api, "tune", fake_tune)
    assert main(["run", "--watch", "0", "--storage", str(tmp_path), "--dataset", "digits"]) == 0
    assert re.fullmatch(r"digits-tpe-asha-\d{8}-\d{6}", seen["name"])  # tune()'s default
    assert "no trial produced a result" in capsys.readouterr().out  # the summary, then...
    with pytest.raises(OSError):  # ...no more server
        socket.create_connection(("127.0.0.1", int(seen["url"].rsplit(":", 1)[1][:-1])),
                                 timeout=5).close()


@pytest.mark.slow
def test_ctrl_c_stops_watch_cleanly(tmp_path):
    exp = experiment(tmp_path / "exp", {"a_00000": 1})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "watch", str(exp), "--port",
                             "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line + proc.stderr.read()
        assert get(m.group(0))[0] == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == f"cnn-tuner: stopped watching {exp}\n", err
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=5).close()


# -- a real run, in Chromium --------------------------------------------------------------------
def chromium_dom(url: str, profile: Path) -> tuple[str, list[str]]:
    """The DOM Chromium built from ``url`` (after its scripts ran) and its console lines."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: `apt-get install chromium` (`make test` does)")
    proc = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                           url], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "<body" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout, [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]


@pytest.mark.ray
@pytest.mark.chromium
def test_live_page_in_chromium_during_a_real_run(ray_local, tmp_path):
    from tuner import RunConfig, TuneConfig, tune

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = tune(
                SPACE, num_samples=4, max_epochs=4,
                tune_config=TuneConfig(searcher="random", scheduler="fifo"),
                run_config=RunConfig(storage=tmp_path, name="w", verbose=0))
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            outcome["error"] = e

    runner = threading.Thread(target=run, name="tune", daemon=True)
    with Watcher(tmp_path / "w", 0, every_s=0.5, wait=True) as w:
        runner.start()
        wait_for(lambda: w.report.state == "running" and (w.report.epochs or 0) >= 1
                 or "error" in outcome, 300, "the first epoch on the page")
        early, console_early = chromium_dom(w.url, tmp_path / "profile-1")
        wait_for(lambda: (w.report.epochs or 0) > live_epochs(early)
                 or w.report.state == "finished" or "error" in outcome, 300,
                 "another epoch on the page")
        later, console_later = chromium_dom(w.url, tmp_path / "profile-2")
        runner.join(timeout=300)
        assert "error" not in outcome, outcome.get("error")
        wait_for(lambda: w.report.state == "finished", 60, "the final report")
        total = outcome["result"].summary["total_trial_epochs"]
        assert w.report.epochs == total == 16
    assert 'data-state="running"' in early
    assert 1 <= live_epochs(early) < live_epochs(later), (live_epochs(early), live_epochs(later))
    assert console_early == [] and console_later == []  # no JavaScript error (nor any output)
    assert 'id="trials"' in later and "sessionStorage" in later
