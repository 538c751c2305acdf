"""The docs stay true: the examples of README.md and docs/*.md run, or at least parse.

How a fenced block is treated (write docs to these rules):

- ```python: runs with this Python in a fresh folder and must exit 0;
- ```bash: every command in it must be a ``cnn-tuner`` command; they run one after the other
  (the venv's ``cnn-tuner`` first on PATH) in a fresh folder and must each exit 0;
- ```console: each ``$ cnn-tuner ...`` line runs; the lines after it are its whole output
  (stdout + stderr); an output starting ``cnn-tuner: error:`` means exit code 2, otherwise 0;
- ```yaml: a search space; it must pass ``cnn-tuner spaces validate``. One whose first line is
  ``# NAME.yaml`` is also written as NAME.yaml into the folder where its document's examples run;
- ``<!-- no-run: REASON -->`` on the line before the fence: the block does not run (a GPU, a
  cluster, s3, minutes of tuning, ``make``), but its ``cnn-tuner`` commands must still parse
  (``ray submit ... cnn_tuner_submit.py -- ARGS`` and ``... -- cnn-tuner ARGS`` included) and its
  YAML still validate.

Examples that start Ray (``tune(``, ``cnn-tuner run|resume|ablate`` not refused) are marked
``ray``. The selected examples run concurrently (they are separate processes, mostly waiting on
imports), so the file stays near a minute on 2 cores.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent  # the venv that runs the tests holds the cnn-tuner script
NO_RUN = re.compile(r"<!--\s*no-run:\s*(\S.*?)\s*-->")
FENCE = re.compile(r"```(\S*)")
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}
RAY_COMMANDS = {"run", "resume", "ablate"}
WORKERS = 3
TIMEOUT_S = 300

# Floors, so that marking blocks no-run cannot quietly turn this file into a no-op.
MIN_RUN = 8
MIN_PARSED = 20
MIN_YAML = 2


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    no_run: str | None  # the reason, when marked

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def read_blocks(doc: Path) -> list[Block]:
    lines = doc.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.fullmatch(lines[i])
        if not m:
            i += 1
            continue
        end = lines.index("```", i + 1)
        prev = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
        marker = NO_RUN.fullmatch(prev)
        out.append(Block(doc, i + 1, m.group(1), "\n".join(lines[i + 1:end]),
                         marker.group(1) if marker else None))
        i = end + 1
    return out


BLOCKS = [b for doc in DOCS for b in read_blocks(doc)]


def shell_commands(text: str) -> list[str]:
    """Command lines of a shell block: continuations joined, comment-only lines dropped."""
    lines = (ln.strip() for ln in text.replace("\\\n", " ").splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def console_steps(text: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each ``$ `` line of a console block."""
    steps: list[tuple[str, list[str]]] = []
    for ln in text.splitlines():
        if ln.startswith("$ "):
            steps.append((ln[2:], []))
        else:
            assert steps, f"console output before any `$ ` command: {ln!r}"
            steps[-1][1].append(ln)
    return steps


def tokens(command: str) -> list[str]:
    toks = shlex.split(command, comments=True)
    cut = next((i for i, t in enumerate(toks) if t in SHELL_OPERATORS), len(toks))
    return toks[:cut]


def cnn_tuner_argv(command: str) -> list[str] | None:
    """The arguments a command passes to the cnn-tuner CLI, or None when it does not call it."""
    toks = tokens(command)
    if "cnn-tuner" in toks:
        return toks[toks.index("cnn-tuner") + 1:]
    submit = [i for i, t in enumerate(toks) if t.endswith("cnn_tuner_submit.py")]
    if submit and "--" in toks[submit[0]:]:
        return toks[toks.index("--", submit[0]) + 1:]
    return None


def all_cli_commands() -> list[tuple[Block, str, list[str]]]:
    found = []
    for b in BLOCKS:
        if b.lang in ("bash", "sh"):
            cmds = shell_commands(b.text)
        elif b.lang == "console":
            cmds = [c for c, _ in console_steps(b.text)]
        else:
            continue
        found += [(b, c, argv) for c in cmds if (argv := cnn_tuner_argv(c)) is not None]
    return found


def starts_ray(b: Block) -> bool:
    if b.lang == "python":
        return bool(re.search(r"\b(tune|resume|ablate)\(", b.text))
    if b.lang == "bash":
        return any((cnn_tuner_argv(c) or [""])[0] in RAY_COMMANDS for c in shell_commands(b.text))
    if b.lang == "console":
        return any((cnn_tuner_argv(c) or [""])[0] in RAY_COMMANDS
                   and not (out and out[0].startswith("cnn-tuner: error:"))
                   for c, out in console_steps(b.text))
    return False


RUNNABLE = [b for b in BLOCKS if b.no_run is None and b.lang in ("python", "bash", "console")]
YAML = [b for b in BLOCKS if b.lang == "yaml" and b.no_run is None]


# -- running ------------------------------------------------------------------------------------
@dataclass
class Step:
    command: str
    returncode: int
    output: str
    expected: list[str] | None = None  # console blocks only


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only, as in conftest
    env.setdefault("OMP_NUM_THREADS", "1")  # examples run side by side: one thread each
    return env


def _prepare(b: Block, cwd: Path) -> None:
    """The named YAML files of the block's document, for commands that read them."""
    for y in read_blocks(b.doc):
        first = y.text.splitlines()[0] if y.text else ""
        if y.lang == "yaml" and (m := re.fullmatch(r"#\s*([\w.-]+\.ya?ml)\s*", first)):
            (cwd / m.group(1)).write_text(y.text + "\n")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def run_block(b: Block, cwd: Path) -> list[Step]:
    _prepare(b, cwd)
    steps: list[Step] = []
    if b.lang == "python":
        (cwd / "example.py").write_text(b.text + "\n")
        p = _run([sys.executable, "example.py"], cwd)
        return [Step("python example.py", p.returncode, p.stdout + p.stderr)]
    if b.lang == "bash":
        for c in shell_commands(b.text):
            p = _run(["bash", "-o", "pipefail", "-c", c], cwd)
            steps.append(Step(c, p.returncode, p.stdout + p.stderr))
            if p.returncode:
                break
        return steps
    for c, expected in console_steps(b.text):
        p = _run(["bash", "-c", c], cwd)
        steps.append(Step(c, p.returncode, p.stdout + p.stderr, expected))
    return steps


@pytest.fixture(scope="module")
def started(request, tmp_path_factory) -> dict[str, Future]:
    """Every selected example, started at once (Ray-starting ones first: they take longest)."""
    chosen = [item.callspec.params["block"] for item in request.session.items
              if item.path == Path(__file__) and item.originalname == "test_example"]
    chosen.sort(key=lambda b: not starts_ray(b))
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    futures = {b.id: pool.submit(run_block, b, tmp_path_factory.mktemp("doc-example"))
               for b in chosen}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def _param(b: Block):  # noqa: ANN202
    return pytest.param(b, id=b.id, marks=[pytest.mark.ray] if starts_ray(b) else [])


@pytest.mark.slow
@pytest.mark.parametrize("block", [_param(b) for b in RUNNABLE])
def test_example(block: Block, started: dict[str, Future]) -> None:
    if block.lang == "bash":
        for c in shell_commands(block.text):
            assert cnn_tuner_argv(c) is not None and tokens(c)[0] == "cnn-tuner", (
                f"{block.id}: only cnn-tuner commands run here; mark the block "
                f"`<!-- no-run: why -->` or change {c!r}")
    for step in started[block.id].result(timeout=2 * TIMEOUT_S):
        where = f"{block.id}: {step.command!r}"
        if step.expected is None:
            assert step.returncode == 0, f"{where} exited {step.returncode}:\n{step.output[-3000:]}"
            continue
        want = 2 if step.expected and step.expected[0].startswith("cnn-tuner: error:") else 0
        assert step.returncode == want, f"{where} exited {step.returncode}:\n{step.output}"
        assert step.output.rstrip("\n").splitlines() == step.expected, (
            f"{where}: the output changed; update the doc:\n{step.output}")


# -- checking what does not run -----------------------------------------------------------------
def test_every_cnn_tuner_command_parses() -> None:
    """Each command parses, and the names in it exist: searcher, scheduler, each ``--set``
    knob with a value it accepts, and ``--space`` (a preset or a YAML file named in the docs)."""
    from search_spaces import list_presets
    from trainables.recipe import KNOBS
    from tuner.cli import build_parser
    from tuner.cli.overrides import parse_sets
    from tuner.running.schedulers import SCHEDULERS
    from tuner.running.searchers import SEARCHERS

    spaces = set(list_presets()) | {
        m.group(1) for doc in DOCS for m in re.finditer(r"\b([\w-]+\.ya?ml)\b", doc.read_text())}
    commands = all_cli_commands()
    for b, command, argv in commands:
        where = f"{b.id}: {command!r}"
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"{where} does not parse (exit {e.code})")
        if b.lang == "console":
            continue  # run, and may show a refusal on purpose
        assert getattr(args, "searcher", "tpe") in SEARCHERS, where
        assert getattr(args, "scheduler", "asha") in SCHEDULERS, where
        assert getattr(args, "space", "quick") in spaces, where
        for knob, value in parse_sets(getattr(args, "set", None)).items():
            assert knob in KNOBS, f"{where}: no knob {knob!r}"
            KNOBS[knob].coerce(value)
    assert len(commands) >= MIN_PARSED, f"only {len(commands)} cnn-tuner commands in the docs"


def test_every_yaml_block_is_a_valid_space(tmp_path, capsys) -> None:
    from tuner.cli import main

    for i, b in enumerate(YAML):
        first = b.text.splitlines()[0]
        m = re.fullmatch(r"#\s*([\w.-]+\.ya?ml)\s*", first)
        path = tmp_path / str(i) / (m.group(1) if m else "space.yaml")
        path.parent.mkdir()
        path.write_text(b.text + "\n")
        code = main(["spaces", "validate", str(path)])
        assert code == 0, f"{b.id}: cnn-tuner spaces validate: {capsys.readouterr().err}"
    assert len(YAML) >= MIN_YAML


def test_enough_examples_run() -> None:
    """Marking blocks no-run must not empty this file: a floor on what really runs."""
    assert len(RUNNABLE) >= MIN_RUN, [b.id for b in RUNNABLE]
    assert sum(b.lang == "python" for b in RUNNABLE) >= 2


def test_no_run_markers_sit_on_a_fence() -> None:
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for i, ln in enumerate(lines):
            if ln.lstrip().startswith("<!--") and "no-run" in ln:
                where = f"{doc.name}:{i + 1}"
                assert NO_RUN.fullmatch(ln.strip()), f"{where}: write <!-- no-run: why -->"
                nxt = next((x for x in lines[i + 1:] if x.strip()), "")
                assert FENCE.fullmatch(nxt), f"{where}: a no-run marker without a fence after it"


def test_links_point_to_files_that_exist() -> None:
    for doc in DOCS:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"
        assert "DESIGN.md" not in text, f"{doc.name}: DESIGN.md is not in the repository"


def test_readme_shows_the_signature_of_tune() -> None:
    import inspect

    from tuner import tune

    parts = []
    for p in inspect.signature(tune).parameters.values():
        if p.kind is p.KEYWORD_ONLY and "*" not in parts:
            parts.append("*")
        parts.append(f"{p.name}={p.default!r}".replace("'", '"'))
    shown = re.search(r"`tune\((.*?)\)`", (ROOT / "README.md").read_text(), re.S)
    assert shown, "README.md: no `tune(...)` signature"
    assert " ".join(shown.group(1).split()) == ", ".join(parts), "README.md: update tune(...)"
