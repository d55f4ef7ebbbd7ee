"""Results as rich tables on stdout.

The final table is the command's output, so it prints even under `--quiet` (which silences only
progress and status lines on stderr). Accepts a Result (anything with `to_dict()`) or the JSON
document of results.json, so this module does not import the experiments layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from interplab.report.html import fmt, fmt_ci

_STYLE = {"supported": "bold green", "not supported": "bold red", "inconclusive": "bold yellow"}


def _console() -> Console:
    # Built per call so that tests capturing stdout (capsys) see the output.
    return Console(soft_wrap=False)


def verdicts_table(rows: Sequence[Mapping[str, Any]], title: str | None = "Verdicts") -> Table:
    """A rich Table of verdict dicts; the experiment is shown when rows carry one."""
    show_exp = any("experiment" in r for r in rows)
    table = Table(title=title, show_lines=len(rows) > 1, header_style="bold")
    # Experiment and subject go on lines of the crux cell rather than columns of their own, and
    # numbers get 3 significant digits (results.json and the HTML report keep them all), so the
    # numbers and the verdict still fit an 80-column terminal.
    table.add_column("experiment / crux / subject" if show_exp else "crux / subject", min_width=16, ratio=1)
    table.add_column("statistic", justify="right", no_wrap=True)
    table.add_column("95% CI", justify="right", no_wrap=True)
    table.add_column("null", justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True, min_width=13)
    table.add_column("controls", no_wrap=True)
    for r in rows:
        word = str(r.get("verdict", "inconclusive"))
        status = str(r.get("status") or "")
        crux = escape(str(r.get("crux", "")))
        if show_exp:
            crux = f"[bold cyan]{escape(str(r.get('experiment', '')))}[/]\n{crux}"
        if r.get("subject"):  # on a second, dimmed line: a separate column leaves the crux too narrow
            crux += f"\n[dim]{escape(str(r['subject']))}[/dim]"
        cells = [
            crux,
            fmt(r.get("statistic"), 3),
            fmt_ci(r.get("ci"), 3),
            fmt(r.get("null"), 3),
            f"[{_STYLE.get(word, 'bold')}]{word}[/]" + ("" if status in ("counted", "") else f"\n[dim]{status}[/dim]"),
            _controls(r.get("controls") or {}),
        ]
        table.add_row(*cells)
    return table


def _controls(controls: Mapping[str, Any]) -> str:
    """'+ pass  - pass' style summary of a verdict's positive and negative controls."""
    if not controls:
        return "—"
    marks = []
    for role, sign in (("positive", "+"), ("negative", "−")):
        c = controls.get(role) or {}
        mark = "—" if not c.get("ran") else ("[green]pass[/]" if c.get("passed") else "[red]FAIL[/]")
        marks.append(f"{sign}{mark}")
    return " ".join(marks)


def print_verdicts(rows: Sequence[Mapping[str, Any]], title: str | None = "Verdicts") -> None:
    """Print the verdicts table to stdout."""
    _console().print(verdicts_table(rows, title))


def print_result(result: Any) -> None:
    """Print one run: a headline, its per-run tables, and its verdicts."""
    data = result if isinstance(result, Mapping) else result.to_dict()
    console = _console()
    head = data.get("title") or data.get("experiment", "")
    console.print(f"[bold]{head}[/bold]  ({data.get('experiment')}, seed {data.get('seed')}, {fmt(data.get('seconds'))} s)")
    for name, t in (data.get("tables") or {}).items():
        table = Table(title=name.replace("_", " "), header_style="bold")
        for c in t.get("columns", []):
            table.add_column(str(c), justify="right")
        for row in t.get("rows", []):
            table.add_row(*(fmt(c) for c in row))
        console.print(table)
    verdicts = data.get("verdicts") or []
    if verdicts:
        console.print(verdicts_table(verdicts))
