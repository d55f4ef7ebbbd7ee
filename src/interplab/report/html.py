"""Self-contained HTML reports: one page per experiment run, and an overview of all cruxes.

Pages are rendered from the plain JSON document of `results.json` (never from live objects), so
this module imports nothing else from interplab and a report can be rebuilt from disk. Figures are
inlined as base64 PNG data URIs and the CSS is inline with system fonts: a page opens offline,
from a file, or attached to an e-mail, and makes no network request.
"""

from __future__ import annotations

import base64
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

_TEMPLATES = Path(__file__).parent / "templates"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place.

    A rename within one folder is atomic, so readers see the old file or the new one, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers to `digits` significant digits (integers as integers), None/NaN as an em dash."""
    if value is None or isinstance(value, jinja2.Undefined):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        if value.is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.{digits}g}"
    return str(value)


def fmt_ci(ci: Sequence[Any] | None, digits: int = 4) -> str:
    if not ci or len(ci) != 2:
        return "—"
    return f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def verdict_class(word: str | None) -> str:
    """CSS class of a verdict word: 'supported', 'not-supported' or 'inconclusive'."""
    return (word or "inconclusive").replace(" ", "-")


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested metrics as (dotted.key, value) rows, for the collapsible metrics list."""
    rows: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(flatten(value, name + "."))
        elif isinstance(value, list):
            rows.append((name, ", ".join(fmt(v) for v in value)))
        else:
            rows.append((name, value))
    return rows


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fmt=fmt, fmt_ci=fmt_ci, verdict_class=verdict_class, flatten=flatten)
    return env


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _caption(name: str, captions: Mapping[str, str]) -> str:
    return captions.get(name) or name.replace("_", " ").replace("-", " ").capitalize()


def render_result_html(data: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """The HTML text of one run's report; `images` maps figure names to PNG bytes."""
    captions = data.get("captions") or {}
    files = data.get("figures") or {}  # name -> relative path of the PNG beside the page
    figures = [
        {"name": name, "caption": _caption(name, captions), "src": _data_uri(png), "file": files.get(name)}
        for name, png in images.items()
    ]
    tables = [
        {"name": name, "caption": _caption(name, captions), **table}
        for name, table in (data.get("tables") or {}).items()
    ]
    return _environment().get_template("result.html.j2").render(
        r=data,
        version=data.get("interplab_version"),
        title=data.get("title") or data.get("experiment", "interplab result"),
        figures=figures,
        tables=tables,
        metrics=flatten(data.get("metrics") or {}),
    )


def render_result(data: Mapping[str, Any], images: Mapping[str, bytes], out_dir: Path) -> Path:
    """Write `out_dir/index.html` for one run and return its path."""
    path = Path(out_dir) / "index.html"
    atomic_write(path, render_result_html(data, images))
    return path


def load_images(out_dir: Path, data: Mapping[str, Any]) -> dict[str, bytes]:
    """The PNG bytes of the figures a results.json lists, skipping any that are missing."""
    images = {}
    for name, rel in (data.get("figures") or {}).items():
        path = Path(out_dir) / rel
        if path.is_file():
            images[name] = path.read_bytes()
    return images


def render_index(
    entries: Sequence[Mapping[str, Any]], out_dir: Path, title: str = "interplab cruxes", version: str | None = None
) -> Path:
    """Write the overview page `out_dir/index.html` and return its path.

    Each entry has `name` (the run folder, linked as `name/index.html`), `title`, `verdicts`
    (dicts as in results.json) and optionally `seconds` and `reused`.
    """
    counts = {"supported": 0, "not supported": 0, "inconclusive": 0}
    for entry in entries:
        for v in entry.get("verdicts") or []:
            counts[v.get("verdict", "inconclusive")] = counts.get(v.get("verdict", "inconclusive"), 0) + 1
    html = _environment().get_template("index.html.j2").render(
        title=title, entries=entries, counts=counts, version=version
    )
    path = Path(out_dir) / "index.html"
    atomic_write(path, html)
    return path
