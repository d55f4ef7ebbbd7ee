"""Self-contained HTML reports: one page per experiment run, and the crux matrix of all of them.

Pages are rendered from the plain JSON document of `results.json` (never from live objects), so a
report can be rebuilt from disk (`interplab report`). Figures are inlined as base64 PNG data URIs
(the index inlines small thumbnails of each experiment's key figure) and the CSS is inline with
system fonts: a page opens offline, from a file, or attached to an e-mail, and makes no network
request. The only links are relative ones inside the run folder and fragments of the page itself.
"""

from __future__ import annotations

import base64
import io
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from interplab.report.board import STATUS_HELP, build_board, controls_state, slug, word_class

_TEMPLATES = Path(__file__).parent / "templates"
THUMB_PX = 240  # thumbnails' stored width; shown at about 100 CSS pixels, sharp on 2x screens


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
    """CSS class of a verdict word: 'supported', 'not-supported', 'inconclusive' or 'needs-scale'."""
    return word_class(word)


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
        undefined=jinja2.ChainableUndefined,
    )
    env.filters.update(fmt=fmt, fmt_ci=fmt_ci, verdict_class=verdict_class, flatten=flatten, slug=slug,
                       controls_state=controls_state)
    env.globals.update(STATUS_HELP=STATUS_HELP)
    return env


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail(png: bytes, width: int = THUMB_PX) -> str | None:
    """A small PNG data URI of a figure (None when the bytes are not a readable image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(png)) as im:
            im = im.convert("RGB")
            im.thumbnail((width, 2 * width))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return _data_uri(buf.getvalue())


def _caption(name: str, captions: Mapping[str, str]) -> str:
    return captions.get(name) or name.replace("_", " ").replace("-", " ").capitalize()


def key_figure(data: Mapping[str, Any]) -> str | None:
    """The name of a run's key figure: the one it names, else its first figure."""
    figures = data.get("figures") or {}
    name = data.get("key_figure")
    if name in figures:
        return str(name)
    return next(iter(figures), None)


def render_result_html(data: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """The HTML text of one run's report; `images` maps figure names to PNG bytes."""
    captions = data.get("captions") or {}
    files = data.get("figures") or {}  # name -> relative path of the PNG beside the page
    figures = [
        {"name": name, "caption": _caption(name, captions), "src": _data_uri(png), "file": files.get(name),
         "id": f"fig-{slug(name)}"}
        for name, png in images.items()
    ]
    tables = [
        {"name": name, "caption": _caption(name, captions), **table}
        for name, table in (data.get("tables") or {}).items()
    ]
    entry = {"name": data.get("experiment") or "run", "title": data.get("title"),
             "verdicts": data.get("verdicts") or [], "cruxes": data.get("cruxes") or {}}
    return _environment().get_template("result.html.j2").render(
        r=data,
        version=data.get("interplab_version"),
        title=data.get("title") or data.get("experiment", "interplab result"),
        figures=figures,
        tables=tables,
        metrics=flatten(data.get("metrics") or {}),
        board=build_board([entry], link_pages=False),
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


def _with_thumb(entry: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """The entry with `thumb` (a data URI of its key figure) when the figure is on disk."""
    out = dict(entry)
    name = key_figure(entry)
    rel = (entry.get("figures") or {}).get(name) if name else None
    path = Path(out_dir) / str(entry.get("name", "")) / str(rel) if rel else None
    if path is not None and path.is_file():
        out["thumb"] = thumbnail(path.read_bytes())
        out["thumb_caption"] = _caption(str(name), entry.get("captions") or {})
    return out


def render_index(
    entries: Sequence[Mapping[str, Any]], out_dir: Path, title: str = "interplab cruxes", version: str | None = None
) -> Path:
    """Write the crux matrix `out_dir/index.html` and return its path.

    Each entry is one experiment's run: `name` (its folder under `out_dir`, linked as
    `name/index.html`), `title`, `verdicts` and `cruxes` (as in results.json), and optionally
    `figures` / `key_figure` / `captions` (its key figure becomes a thumbnail), `seconds`, `reused`.
    """
    out_dir = Path(out_dir)
    entries = [_with_thumb(e, out_dir) for e in entries]
    html = _environment().get_template("index.html.j2").render(
        title=title, entries=entries, board=build_board(entries), version=version,
    )
    path = out_dir / "index.html"
    atomic_write(path, html)
    return path
