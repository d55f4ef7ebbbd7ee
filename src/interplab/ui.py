"""Progress bars and console output, silenced everywhere at once by `--quiet`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(stderr=True)
_quiet = False
_bars = True


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def set_bars(enabled: bool) -> None:
    """Progress bars on or off (status lines stay): off in worker processes sharing one terminal."""
    global _bars
    _bars = enabled


def is_quiet() -> bool:
    return _quiet


def info(message: str) -> None:
    """A status line on stderr, unless quiet."""
    if not _quiet:
        console.print(message)


def detail(message: str) -> None:
    """Long output for a run watched on its own terminal (a ledger, a table): skipped when quiet and in
    the worker processes of `interplab cruxes`, whose lines interleave on one terminal."""
    if not _quiet and _bars:
        console.print(message)


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """`with progress("training", steps) as advance: advance(1, fvu=0.1)` — a rich bar, or nothing."""
    if _quiet or not _bars:
        yield lambda n=1, **stats: None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total, stats="")

        def advance(n: int = 1, **stats: float) -> None:
            text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
            bar.update(task, advance=n, **({"stats": text} if stats else {}))

        yield advance
