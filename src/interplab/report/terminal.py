"""Results on stdout: one line per crux x subject, at most 100 columns.

    decompose — Sparse autoencoders against PCA, ICA, neurons and random directions at matched budgets
      Does an SAE reconstruct activations better than PCA at an equal number of active codes?
        sae-fvu  synthetic/hidden   0.123 [0.0456, 0.201]  supported      +✓ −✓  counted

The question is printed once above its crux's lines; harness checks and superseded definitions
follow apart; the closing counts line counts only counted verdicts as findings. The summary is the
command's output, so it prints even under `--quiet` (which silences only progress on stderr).
Accepts a Result (anything with `to_dict()`) or the JSON of results.json / cruxes.json entries, so
this module does not import the experiments layer.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from interplab.report.board import Board, Cell, build_board
from interplab.report.html import fmt, fmt_ci
from interplab.verdicts.judge import COUNTED, HARNESS, NEEDS_SCALE, SUPERSEDED, UNCALIBRATED

MAX_WIDTH = 100
_WORD_STYLE = {"supported": "bold green", "not supported": "bold red", "inconclusive": "bold yellow"}
_STATUS_WORD = {COUNTED: "counted", UNCALIBRATED: "uncalibrated", NEEDS_SCALE: "needs scale",
                HARNESS: "harness", SUPERSEDED: "superseded"}
_MARK = {"pass": ("✓", "green"), "fail": ("✗", "bold red"), "none": ("·", "dim")}


def _width() -> int:
    """The terminal's width, at most 100 (100 when stdout is not a terminal)."""
    return min(MAX_WIDTH, shutil.get_terminal_size((MAX_WIDTH, 24)).columns)


def _console(width: int | None = None) -> Console:
    # Built per call so that tests capturing stdout (capsys) see the output.
    return Console(soft_wrap=False, width=width or _width(), highlight=False)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _cut_middle(text: str, width: int) -> str:
    """Shortened in the middle: a subject's name and its site both stay readable."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


class _Columns:
    """Widths of the line's fields, from the data. The subject and the statistic share one field
    (`both`): the statistic is right-aligned at its end and the subject takes what that line's
    statistic leaves, so a short statistic leaves a long subject readable."""

    def __init__(self, cells: Sequence[Cell], width: int):
        self.crux = min(18, max([len(str(c.v.get("crux", ""))) for c in cells] + [4]))
        self.word = 13
        self.status = max([len(_STATUS_WORD.get(c.status, c.status)) for c in cells] + [7])
        fixed = 2 + self.crux + 2 + 2 + self.word + 2 + 4 + 2 + self.status
        need = max([len(c.subject) + 2 + len(_stat(c)) for c in cells] + [18])
        self.both = max(8 + 2 + 9, min(need, width - fixed))


def _stat(c: Cell) -> str:
    return f"{fmt(c.v.get('statistic'), 3)} {fmt_ci(c.v.get('ci'), 3)}"


def _line(c: Cell, cols: _Columns) -> Text:
    t = Text("  ")
    t.append(_cut(str(c.v.get("crux", "")), cols.crux).ljust(cols.crux), style="cyan")
    stat = _stat(c)
    room = max(8, cols.both - len(stat) - 2)  # the subject's share of this line
    t.append("  " + _cut_middle(c.subject, room).ljust(cols.both - len(stat)) + stat)
    word = "—" if c.status == NEEDS_SCALE else c.word
    t.append("  " + _cut(word, cols.word).ljust(cols.word), style=_WORD_STYLE.get(word, "") if c.counted else "dim")
    t.append("  ")
    for role, sign in (("positive", "+"), ("negative", "−")):
        mark, style = _MARK[c.controls[role]]
        t.append(sign, style="dim")
        t.append(mark, style=style)
    status = _STATUS_WORD.get(c.status, c.status)
    t.append("  " + status, style="bold" if c.counted else "dim")
    return t


def counts_lines(counts: Mapping[str, int]) -> list[str]:
    """'counted: 3 supported, ...' and 'not counted: 2 uncalibrated, ...'."""
    n = counts
    return [f"counted: {n.get('supported', 0)} supported, {n.get('not supported', 0)} not supported, "
            f"{n.get('inconclusive', 0)} inconclusive",
            f"not counted: {n.get(UNCALIBRATED, 0)} uncalibrated, {n.get(NEEDS_SCALE, 0)} need --scale default, "
            f"{n.get(HARNESS, 0)} harness, {n.get(SUPERSEDED, 0)} superseded"]


def summary_lines(board: Board, width: int = MAX_WIDTH, titles: bool = True) -> list[Text]:
    """The summary as rich Text lines, none wider than `width`."""
    if not board.cells:
        return [Text("no verdicts")]
    cols = _Columns([c for g in board.groups for r in g.rows for c in r.cells.values()] or board.apart, width)
    lines: list[Text] = []
    for g in board.groups:
        if titles:
            lines.append(Text(_cut(f"{g.name} — {g.title}", width), style="bold"))
        for r in g.rows:
            lines.append(Text(_cut(f"  {r.question or r.crux}", width), style="dim"))
            lines.extend(_line(c, cols) for c in r.cells.values())
    if board.apart:
        lines.append(Text(_cut("not findings (never counted): harness checks and superseded definitions", width),
                          style="bold"))
        cols = _Columns(board.apart, width)
        lines.extend(_line(c, cols) for c in board.apart)
    lines.extend(Text(_cut(line, width), style="bold") for line in counts_lines(board.counts))
    return lines


def print_summary(entries: Sequence[Mapping[str, Any]], titles: bool = True) -> None:
    """Print the verdicts of `entries` (as `render_index` takes them) to stdout."""
    width = _width()
    console = _console(width)
    for line in summary_lines(build_board(entries, link_pages=False), width, titles):
        console.print(line, no_wrap=True, overflow="ellipsis")


def print_verdicts(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> None:
    """Print verdict dicts (each may carry `experiment`) grouped by experiment, in order."""
    entries: dict[str, dict[str, Any]] = {}
    for r in rows:
        name = str(r.get("experiment") or title or "verdicts")
        entries.setdefault(name, {"name": name, "title": title or name, "verdicts": []})["verdicts"].append(r)
    print_summary(list(entries.values()), titles=len(entries) > 1)


def print_result(result: Any) -> None:
    """Print one run: a headline, its per-run tables, and its verdicts."""
    data = result if isinstance(result, Mapping) else result.to_dict()
    console = _console()
    head = data.get("title") or data.get("experiment", "")
    console.print(f"[bold]{head}[/bold]  ({data.get('experiment')}, seed {data.get('seed')}, {fmt(data.get('seconds'))} s)")
    for name, t in (data.get("tables") or {}).items():
        table = Table(title=name.replace("_", " "), header_style="bold")
        for i, c in enumerate(t.get("columns", [])):
            table.add_column(str(c), justify="left" if i == 0 else "right")
        for row in t.get("rows", []):
            table.add_row(*(fmt(c) for c in row))
        console.print(table)
    if data.get("verdicts"):
        name = str(data.get("experiment") or "run")
        print_summary([{"name": name, "title": head, "verdicts": data["verdicts"], "cruxes": data.get("cruxes") or {}}],
                      titles=False)
