"""Where a result came from: a hash of the source code that produced it.

A result reused from disk (a finished experiment in `interplab cruxes`, a cached control, a cached
fit) is valid only if the code that would produce it today is the code that produced it. Keys hold
`code_hash()`: the SHA-256 of every computing module of the package (everything except the
presentation layer: `report/`, `cli.py`, `ui.py`), so a change to any statistic, subject, method or
experiment makes every stored result stale, while a change to a template or a help text does not.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_PRESENTATION = ("report", "cli.py", "ui.py")


def _computing_sources(root: Path) -> list[Path]:
    """The .py files under `root` that compute results (sorted, presentation layer left out)."""
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in _PRESENTATION or "__pycache__" in rel.parts:
            continue
        files.append(path)
    return files


def source_hash(paths: list[Path], root: Path = _PACKAGE) -> str:
    """SHA-256 (16 hex digits) of the files' relative names and contents, in the given order."""
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


@functools.cache
def code_hash() -> str:
    """Hash of interplab's computing source; part of the key of every reused result."""
    return source_hash(_computing_sources(_PACKAGE))
