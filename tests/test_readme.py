"""The docs stay true: docs/knobs.md's table is the catalog, the README's two set-up commands
come first."""

from pathlib import Path

from tuner.cli.knob_table import markdown_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
KNOBS_DOC = ROOT / "docs" / "knobs.md"


def test_readme_knob_table_is_the_catalog():
    assert markdown_table() in KNOBS_DOC.read_text(), (
        "regenerate the table in docs/knobs.md: cnn-tuner knobs --markdown")


def test_readme_starts_with_the_two_setup_commands():
    lines = README.read_text().splitlines()
    block = lines[lines.index("```bash") + 1:]
    block = block[:block.index("```")]
    assert [ln.split()[:2] for ln in block] == [["make", "demo"], ["make", "test"]]
