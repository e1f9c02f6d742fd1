"""The README and docs/ say only what is true: every command and option they write exists, and every measured
figure they quote lives in docs/results.md (numbers appear in one place only).

What counts as a *figure* (kept simple on purpose): outside code, a number followed by a unit of time or
throughput (``12 s``, ``4.5 minutes``, ``13-16 ms``, ``4.2 patches/s``), or a score with three decimals next
to a metric or region name or in a ``a / b / c`` triple (``Dice 0.769``, ``0.769 / 0.611 / 0.608``). Sizes,
shares and lengths (GB, %, mm) are facts of data and settings, not measurements; versions, dates, shapes
(``240x240x155``), config values and anything in code are not figures either. ``docs/results.md`` is where figures live, each under a heading
that gives its date, machine and command.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from tumorlib.app.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = ROOT / "docs" / "results.md"
UNIT = r"(?:ms|s|min|minutes|seconds|h|hours|patches/s|vol/s|GFLOP/s)"
SCORE = r"0\.\d{3}(?!\d)"
FIGURE = re.compile(rf"(?<![\w.\-/x])\d+(?:[.,]\d+)?(?:\s?[-–]\s?\d+(?:\.\d+)?)?\s?{UNIT}(?![\w/^³])"
                    rf"|(?<=\b(?:WT|TC|ET|ED)\s){SCORE}|(?<=\br\s){SCORE}|(?<=\b(?:NCR|ECE)\s){SCORE}|(?<=Dice\s){SCORE}"
                    rf"|{SCORE}(?=\s?/\s?{SCORE})|(?<=/\s){SCORE}|(?<=/){SCORE}")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _code(text: str) -> list[str]:
    """Command lines the text shows: lines of fenced code blocks and inline code spans."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            lines.append(line)
        else:
            lines.extend(re.findall(r"`([^`]+)`", line))
    return lines


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(re.sub(r"`[^`]*`", " ", line))
    return "\n".join(kept)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_commands_and_options_exist(doc):
    """``tumorlib <command> --option`` written in a doc: the subcommand and each option exist in the parser
    (the cases come from the parser itself); ``make <target>``: the Makefile has the target."""
    commands = _subcommands()
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    wrong = []
    for line in _code(doc.read_text()):
        line = line.split("#", 1)[0]
        for match in re.finditer(r"(?:^|[\s;(])tumorlib (\S+)(.*?)(?=\btumorlib |$)", line):
            name, rest = match.group(1), match.group(2)
            if name.startswith(("<", "-")):
                continue
            if name not in commands:
                wrong.append(f"tumorlib {name}")
                continue
            known = {s for a in commands[name]._actions for s in a.option_strings}
            wrong += [f"tumorlib {name} {opt}" for opt in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest)
                      if opt not in known and opt != "--field"]
        wrong += [f"make {t}" for t in re.findall(r"(?:^|\s)make ([a-z][\w-]*)", line) if t not in targets]
    assert not wrong, f"{doc.name} documents what does not exist: {sorted(set(wrong))}"


@pytest.mark.parametrize("doc", [d for d in DOCS if d != RESULTS], ids=lambda p: p.name)
def test_figures_live_in_results_md(doc):
    """A measured figure quoted outside docs/results.md must be one that results.md holds."""
    results = RESULTS.read_text()
    quoted = [m.group(0).strip() for m in FIGURE.finditer(_prose(doc.read_text()))]
    missing = [q for q in quoted if q not in results and q.replace(" ", "") not in results.replace(" ", "")]
    assert not missing, f"{doc.name} quotes figures that docs/results.md does not hold: {missing}"


@pytest.mark.parametrize("text, figures", [
    ("took 12 s and 4.5 minutes, 13-16 ms a step", ["12 s", "4.5 minutes", "13-16 ms"]),
    ("Dice WT 0.769, and 0.771 / 0.611 / 0.608 per region", ["0.769", "0.771", "0.611", "0.608"]),
    ("a 240x240x155 volume, 7 GB, 25 %, sizes 0-5000 mm^3, by more than 0.005, version 2.13.0", []),
])
def test_what_counts_as_a_figure(text, figures):
    assert [m.group(0) for m in FIGURE.finditer(text)] == figures


def test_results_md_gives_each_section_a_date():
    """Every section of results.md says when it was measured (or that the date was not recorded)."""
    sections = re.findall(r"^## (.+)$", RESULTS.read_text(), re.M)
    assert sections
    undated = [s for s in sections if not re.search(r"\d{4}-\d{2}-\d{2}|not recorded|not measurements", s)]
    assert not undated, f"results.md sections without a date: {undated}"


def test_readme_is_short_and_points_to_docs():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 130, "the README is read in five minutes: move detail to docs/"
    for link in re.findall(r"\]\((docs/[\w.]+)", text):
        assert (ROOT / link).is_file(), link
