"""The README stays true: its knob table is the catalog, its two set-up commands come first."""

from pathlib import Path

from tuner.cli.knob_table import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_knob_table_is_the_catalog():
    assert markdown_table() in README.read_text(), "regenerate: cnn-tuner knobs --markdown"


def test_readme_starts_with_the_two_setup_commands():
    lines = README.read_text().splitlines()
    block = lines[lines.index("```bash") + 1:]
    block = block[:block.index("```")]
    assert [ln.split()[:2] for ln in block] == [["make", "demo"], ["make", "test"]]
