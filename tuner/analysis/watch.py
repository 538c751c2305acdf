"""``cnn-tuner watch PATH`` and ``cnn-tuner run --watch``: the experiment report, served live.

A small HTTP server on 127.0.0.1 (never another interface: reach it from elsewhere through
``ssh -L``) serves the report of an experiment folder or URI and renders it again, at most every
``REFRESH_S`` seconds, when the files it shows changed. The page polls ``/version`` and reloads
itself when a new page is up, keeping its scroll position (sessionStorage).

The report (``tuner.analysis.report``) needs results.csv and summary.json, which a run writes at
its end. While it runs, the page is built from a snapshot of the experiment (its small files,
copied by ``storage.mirror_experiment``, so local folders and ``s3://`` URIs go the same way and
one render reads one consistent state): a row per trial from its ``params.json`` and the last
complete line of its ``result.json``, its status from Ray's experiment state when readable.
A trial without a complete epoch yet is left out (a line still being written is skipped). Once
the run has written its results, the page is the final report.

The CLI imports this module to build its parser, so the report and the results modules (which
bring matplotlib and torch) are imported where they are used, on the first render.
"""

from __future__ import annotations

import errno
import hashlib
import html
import json
import re
import shutil
import socketserver
import sys
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trainables.errors import ConfigError, first_line
from tuner.analysis.live_trials import (
    ERROR_FILE,
    PARAMS_FILE,
    RESULT_FILE,
    live_summary,
    live_trials,
)
from tuner.running import storage
from tuner.running.settings import SETTINGS_FILE, RunSettings
from tuner.running.storage import filesystem as resolve_fs  # path or URI -> file system

HOST = "127.0.0.1"  # loopback only: the report shows paths and recipes; ssh -L reaches it
# the names a browser on this machine (or at the end of an ssh -L) calls it by: any other Host
# header is a web page elsewhere reaching in through DNS rebinding, refused
LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORT = 8642
REFRESH_S = 3.0  # how often the files are checked (a listing; the page renders only on change)
WATCHED_TRIAL = (RESULT_FILE, PARAMS_FILE, ERROR_FILE)  # a change to one renders again
_NO_BEST = "no trial produced a result, so there is no best recipe."


# -- the page ----------------------------------------------------------------------------------
_BAR_CSS = ("#live{position:sticky;top:0;z-index:9;background:#fff8db;border:1px solid #f0d57a;"
            "padding:.35em .8em;font:14px system-ui,sans-serif;color:#222}")
_SCRIPT = """
(function () {
  var version = %(version)s, key = "cnn-tuner-watch-scrollY";
  if ("scrollRestoration" in history) history.scrollRestoration = "manual";
  var saved = sessionStorage.getItem(key);
  if (saved !== null) {  // reloaded for a new version: back to where the reader was
    sessionStorage.removeItem(key);
    var restore = function () { window.scrollTo(0, parseFloat(saved) || 0); };
    if (document.readyState === "complete") restore();
    else window.addEventListener("load", restore);
  }
  function poll() {
    fetch("version", {cache: "no-store"}).then(function (r) {
      if (!r.ok) throw new Error(r.status);
      return r.text();
    }).then(function (v) {
      if (v.trim() !== version) {
        sessionStorage.setItem(key, String(window.scrollY));
        location.reload();
      } else setTimeout(poll, %(every_ms)d);
    }).catch(function () {
      var s = document.getElementById("live-state");
      if (s) s.textContent = "the server stopped: this page no longer updates";
      setTimeout(poll, 4 * %(every_ms)d);
    });
  }
  setTimeout(poll, %(every_ms)d);
})();
"""


def live_script(version: str, every_s: float) -> str:
    """The inline script: poll ``version`` and reload when it changes, keeping the scroll."""
    return _SCRIPT % {"version": json.dumps(version), "every_ms": max(500, int(every_s * 1000))}


def _bar(state: str, text: str, epochs: int | None) -> str:
    count = "" if epochs is None else (f' &middot; <span id="live-epochs">{epochs}</span> '
                                       "trial-epochs finished")
    space = ' &middot; <a href="space.yaml">space.yaml</a>' if state == "finished" else ""
    return (f'<div id="live" data-state="{state}"><b>live</b> &middot; '
            f'<span id="live-state">{html.escape(text)}</span>{count} &middot; updated '
            f"{datetime.now():%H:%M:%S}{space}</div>")


def inject(page: str, bar: str, script: str) -> str:
    """The report with the live bar at the top of its body and the reload script at its end."""
    head = f"<style>{_BAR_CSS}</style>"
    page = page.replace("</head>", head + "</head>", 1) if "</head>" in page else head + page
    m = re.search(r"<body[^>]*>", page)
    page = page[:m.end()] + bar + page[m.end():] if m else bar + page
    tail = f"<script>{script}</script>"
    i = page.rfind("</body>")
    return page[:i] + tail + page[i:] if i >= 0 else page + tail


def _plain_page(title: str, text: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>'
            f"{html.escape(title)}</title></head><body style=\"font-family:system-ui,sans-serif;"
            f'max-width:1100px;margin:2em auto\"><h1>{html.escape(title)}</h1>'
            f'<p class="note">{html.escape(text)}</p></body></html>\n')


# -- the live report ---------------------------------------------------------------------------
class LiveReport:
    """The current page of an experiment (a folder or URI), rendered again by ``refresh()``
    when the files it shows changed. ``version`` grows by one with each new page; ``state`` is
    waiting, running, finished or error; ``epochs`` the trial-epochs the page shows."""

    def __init__(self, source: str | Path, every_s: float = REFRESH_S,
                 log: Callable[[str], None] | None = None) -> None:
        source = str(source)
        self.source = source if storage.is_uri(source) else str(
            Path(source).expanduser().absolute())
        self.name = self.source.rstrip("/").rsplit("/", 1)[-1] or "experiment"
        self.every_s, self._log = every_s, log
        self._tmp = Path(tempfile.mkdtemp(prefix="cnn-tuner-watch-"))
        self.out = self._tmp / "out"  # the rendered report: index.html, space.yaml, PNGs
        self._lock = threading.Lock()  # the page and its version, read by the server's threads
        self._rendering = threading.Lock()  # one refresh at a time (the loop, a test, a caller)
        self._stamp: str | None = None
        self._failures = 0
        self.version, self.state, self.text, self.epochs = 0, "waiting", "rendering...", None
        self._html = self._page(_plain_page(f"cnn-tuner: {self.name}", self.text))

    @property
    def html(self) -> str:
        with self._lock:
            return self._html

    def refresh(self) -> bool:
        """Render the page again if the experiment's files changed since the last render;
        True when a new page is up. Never raises: what went wrong is on the page (and, when it
        persists, in one ``log`` line)."""
        with self._rendering:
            return self._refresh()

    def _refresh(self) -> bool:
        try:
            stamp = self.fingerprint()
        except ConfigError as e:  # a URI not usable: say so, check again next time
            return self._set(None, "waiting", str(e), None)
        if stamp == self._stamp:
            return False
        try:
            new = self._render(stamp)
        except ConfigError as e:  # not an experiment yet (no settings file...)
            new = self._set(None, "waiting", f"waiting for the experiment: {e}", stamp)
        except Exception as e:  # a file read mid-write, or a bug: keep the last page, retry
            self._failures += 1
            message = f"could not render ({type(e).__name__}: {first_line(e)})"
            if self._failures == 2 and self._log:  # once, and not for a one-off race
                self._log(message)
            return self._set(None, "error", message, None) if self.version == 0 else False
        self._failures = 0
        return new

    def fingerprint(self) -> str:
        """A hash of the size and time of every file the page shows (one listing)."""
        import pyarrow.fs as pafs

        from tuner.running.results import BEST_RECIPE, RESULTS_CSV, SUMMARY

        top = (SETTINGS_FILE, RESULTS_CSV, SUMMARY, BEST_RECIPE, "ablation.csv",
               "ablation_recipe.yaml")
        fs, root = resolve_fs(self.source)
        root = root.rstrip("/")
        try:
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        except (FileNotFoundError, OSError):
            infos = []
        h = hashlib.sha1()
        for info in sorted(infos, key=lambda i: i.path):
            parts = info.path[len(root):].lstrip("/").split("/")
            watched = (parts[-1] in top if len(parts) == 1 else
                       len(parts) == 2 and parts[-1] in WATCHED_TRIAL)
            if watched and info.type == pafs.FileType.File:
                h.update(f"{info.path}\0{info.size}\0{info.mtime_ns}\n".encode())
        return h.hexdigest()

    def _render(self, stamp: str) -> bool:
        from tuner.analysis.report import REPORT_DIR
        from tuner.running.results import BEST_RECIPE, RESULTS_CSV, SUMMARY, load_results

        snap = self._tmp / "snapshot" / self.name
        shutil.rmtree(snap.parent, ignore_errors=True)
        storage.mirror_experiment(self.source, snap, skip_top=(REPORT_DIR,))
        shutil.rmtree(self.out, ignore_errors=True)
        if (snap / RESULTS_CSV).is_file() and (snap / SUMMARY).is_file():
            try:
                _, summary = load_results(snap)
                page = self._report(self.source)
                return self._set(page, "finished", "the run has ended: this is its final "
                                 "report", stamp, int(summary.get("total_trial_epochs") or 0))
            except ConfigError:
                pass  # written as we read: show the trials; the next change renders it again
        settings = RunSettings.load(str(snap))
        live = live_trials(snap, settings)
        if not len(live.rows):
            return self._set(None, "running", f"run in progress: {live.started} trials "
                             "started, no epoch finished yet", stamp, 0)
        summary = {**live_summary(live.rows, settings), "wall_time_s": live.wall_time_s}
        (snap / BEST_RECIPE).unlink(missing_ok=True)
        (snap / RESULTS_CSV).write_text(live.rows.drop(columns=["path"]).to_csv(index=False))
        (snap / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        page = self._report(snap).replace(str(snap), self.source)
        page = page.replace(_NO_BEST, "the run is in progress: best_recipe.yaml is written "
                            "when it ends.")
        return self._set(page, "running", f"run in progress: {len(live.rows)} of "
                         f"{live.started} trials started have reported", stamp,
                         summary["total_trial_epochs"])

    def _report(self, path: str | Path) -> str:
        """``cnn-tuner report`` of ``path`` into the private output folder; the page refers to
        its space.yaml by name (served beside the page) rather than by a temporary path."""
        from tuner.analysis.report import write_report

        page = Path(write_report(path, self.out)).read_text()
        return page.replace(f"{self.out}/", "")

    def _set(self, page: str | None, state: str, text: str, stamp: str | None,
             epochs: int | None = None) -> bool:
        """Put up a new page (the report, or ``text`` alone) under a new version; the same
        message again is no new page."""
        self._stamp = stamp
        if page is None and (state, text) == (self.state, self.text):
            return False
        body = page if page is not None else _plain_page(f"cnn-tuner: {self.name}", text)
        with self._lock:
            self.version += 1
            self.state, self.text, self.epochs = state, text, epochs
            self._html = self._page(body)
        return True

    def _page(self, body: str) -> str:
        return inject(body, _bar(self.state, self.text, self.epochs),
                      live_script(str(self.version), self.every_s))

    def file(self, name: str) -> bytes | None:
        """A file of the rendered report (space.yaml, a PNG) by its bare name, else None."""
        f = self.out / name
        if "/" in name or name.startswith(".") or not f.is_file():
            return None
        return f.read_bytes()

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


# -- the server --------------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a browser's open connection never holds up a stop
    report: LiveReport

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: it resolves the host name
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        report = self.server.report
        path = urlsplit(self.path).path
        host = self.headers.get("Host")
        if host and urlsplit(f"//{host}").hostname not in LOCAL_NAMES:
            self._send(403, "this server answers only to 127.0.0.1 and localhost\n",
                       "text/plain; charset=utf-8")
        elif path in ("/", "/index.html"):
            self._send(200, report.html, "text/html; charset=utf-8")
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")  # none: a 404 would be a console error
        elif path == "/version":
            self._send(200, str(report.version), "text/plain; charset=utf-8")
        elif (data := report.file(path.lstrip("/"))) is not None:
            self._send(200, data, "image/png" if path.endswith(".png") else
                       "text/plain; charset=utf-8")
        else:
            self._send(404, "not found\n", "text/plain; charset=utf-8")

    def _send(self, code: int, text: str | bytes, kind: str) -> None:
        body = text.encode() if isinstance(text, str) else text
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per poll would flood the terminal (and a run's live view)


def bind(port: int, param: str = "port") -> _Server:
    """A server listening on 127.0.0.1:``port`` (0: any free port), or ConfigError naming
    ``param`` when the port is taken or not one."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"{param}: a port is 0-65535 (0: any free one), got {port}")
    try:
        return _Server((HOST, port), _Handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"{param}: port {port} is in use on {HOST}; choose another "
                              "(0: any free port)") from None
        raise ConfigError(f"{param}: cannot listen on {HOST}:{port} ({e.strerror})") from None


class Watcher:
    """Serve the live report of ``source`` on 127.0.0.1:``port`` (default ``DEFAULT_PORT``) from
    background threads: one answers the browser, one checks the files every ``every_s`` seconds
    (default ``REFRESH_S``) and renders on change.
    The port is taken when this is made (ConfigError if it is in use), the threads run from
    ``start()`` to ``stop()`` (or as a context manager). A local folder that does not exist is
    an error unless ``wait=True`` (a run about to create it)."""

    def __init__(self, source: str | Path, port: int | None = None, *,
                 every_s: float | None = None, param: str = "port", wait: bool = False,
                 log: Callable[[str], None] | None = None) -> None:
        source, port = str(source), DEFAULT_PORT if port is None else port
        every_s = REFRESH_S if every_s is None else every_s
        if not storage.is_uri(source):
            p = Path(source).expanduser()
            if (p.exists() and not p.is_dir()) or (not p.exists() and not wait):
                raise ConfigError("no such experiment folder", where=str(p))
        if every_s <= 0:
            raise ConfigError(f"every_s: must be > 0 seconds, got {every_s}")
        self._server = bind(port, param)
        self.report = LiveReport(source, every_s, log)
        self._server.report = self.report
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        return self._server.server_address[:2]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}/"

    def start(self) -> Watcher:
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                             name="cnn-tuner-watch-http", daemon=True),
            threading.Thread(target=self._refresh_loop, name="cnn-tuner-watch-refresh",
                             daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            self.report.refresh()
            self._stop.wait(self.report.every_s)

    def wait(self) -> None:
        """Block until stopped (Ctrl+C raises KeyboardInterrupt here, in the main thread)."""
        while not self._stop.wait(0.5):
            pass

    def stop(self) -> None:
        self._stop.set()
        if self._threads:
            self._server.shutdown()
        self._server.server_close()
        for t in self._threads:
            t.join(timeout=60)  # a render in progress finishes first
        self.report.close()

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stderr_line(message: str) -> None:
    print(f"cnn-tuner: watch: {message}", file=sys.stderr, flush=True)
