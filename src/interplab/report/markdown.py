"""The verdict table as Markdown, for a paper or an issue (`interplab report RUN_DIR --format md`).

Findings first, by experiment, then harness checks and superseded definitions; each row carries
the statistic, its 95% CI, the null, the verdict, the controls, the Holm-adjusted p and whether it
counts. The crux questions and the counts line come once, above and below the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from interplab.report.board import Cell, build_board
from interplab.report.html import fmt, fmt_ci
from interplab.report.terminal import counts_lines

_HEAD = ["experiment", "crux", "subject", "statistic", "95% CI", "null", "verdict", "+ ctl", "− ctl", "Holm p", "status"]


def _esc(text: Any) -> str:
    """A table cell: pipes escaped, line breaks flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _row(c: Cell) -> str:
    v = c.v
    ctl = c.controls
    cells = [c.experiment, f"`{v.get('crux', '')}`", c.subject, fmt(v.get("statistic"), 3), fmt_ci(v.get("ci"), 3),
             fmt(v.get("null"), 3), f"**{c.word}**" if c.counted else c.word, ctl["positive"], ctl["negative"],
             fmt(v.get("p_holm"), 2), c.status]
    return "| " + " | ".join(_esc(x) for x in cells) + " |"


def verdicts_markdown(entries: Sequence[Mapping[str, Any]], title: str = "Verdicts") -> str:
    """The Markdown document: a heading, the table, the questions, the counts."""
    board = build_board(entries, link_pages=False)
    lines = [f"# {title}", "", "| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    lines += [_row(c) for c in board.cells]
    lines += ["", "Counted verdicts are in bold: both planted controls passed through the same pipeline "
              "(+ must read supported, − must not). " + "; ".join(counts_lines(board.counts)) + ".", "", "## Questions", ""]
    seen = set()
    for p in board.protocols:
        q = (p.definition or {}).get("question") or (p.cells[0].v.get("question") if p.cells else "")
        if q and p.crux not in seen:
            seen.add(p.crux)
            lines.append(f"- `{p.crux}` ({p.experiment}): {_esc(q)}")
    return "\n".join(lines) + "\n"
