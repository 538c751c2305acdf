"""The knob catalog as a table (``cnn-tuner knobs``); the README's knob table is this output."""

from __future__ import annotations

from trainables.recipe import KNOBS, KnobSpec


def _default(spec: KnobSpec) -> str:
    d = spec.default
    return "true" if d is True else "false" if d is False else str(d)


def _when(spec: KnobSpec) -> str:
    parts = []
    for parent, values in spec.when.items():
        if isinstance(values, tuple):
            shown = "/".join("true" if v is True else "false" if v is False else str(v)
                             for v in values)
            parts.append(f"{parent} = {shown}")
        else:
            parts.append(f"{parent} {values}")
    return "; only when " + ", ".join(parts) if parts else ""


def knob_rows() -> list[tuple[str, str, str, str, str]]:
    """(knob, family, meaning, valid range, default) for every knob, in catalog order."""
    rows = []
    for name, spec in KNOBS.items():
        unit = f" [{spec.unit}]" if spec.unit and spec.unit != "path" else ""
        meaning = f"{spec.doc}{unit}{_when(spec)}"
        rows.append((name, spec.family, meaning, spec.range_text(), _default(spec)))
    return rows


def markdown_table() -> str:
    lines = ["| knob | strategy | meaning | valid values | default |", "|---|---|---|---|---|"]
    for name, family, meaning, valid, default in knob_rows():
        cells = [f"`{name}`", family, meaning.replace("|", "/"), valid.replace("|", "/"),
                 f"`{default}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text_table() -> str:
    width = max(len(n) for n in KNOBS)
    return "\n".join(f"{name:<{width}}  {valid:<28} default {default:<10} {meaning}"
                     for name, _, meaning, valid, default in knob_rows())
