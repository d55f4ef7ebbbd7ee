"""Run folders read back from disk: one run's results.json, or a cruxes folder's cruxes.json.

`interplab report RUN_DIR` rebuilds the HTML of a folder from these files alone (after a template
change, or for a run copied from another machine), and writes the verdict table as Markdown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from interplab.errors import UserError
from interplab.report.html import load_images, render_index, render_result

RESULTS, CRUXES = "results.json", "cruxes.json"


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; a missing or damaged file is one UserError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"cannot read '{path}' ({e.strerror or e}); pass a folder written by interplab") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' is not valid JSON ({e}); rerun the experiment that wrote it") from None
    if not isinstance(data, dict):
        raise UserError(f"'{path}' does not hold a JSON object; rerun the experiment that wrote it")
    return data


def entry(name: str, data: Mapping[str, Any], reused: bool = False, title: str | None = None) -> dict[str, Any]:
    """One experiment's entry of the crux matrix (what `render_index` takes) from its results.json."""
    return {"name": name, "title": data.get("title") or title or name, "seconds": data.get("seconds"),
            "reused": reused, "verdicts": list(data.get("verdicts") or []), "cruxes": dict(data.get("cruxes") or {}),
            "figures": dict(data.get("figures") or {}), "key_figure": data.get("key_figure"),
            "captions": dict(data.get("captions") or {}), "summary": data.get("summary") or ""}


def kind(run_dir: Path) -> str:
    """'cruxes' or 'run', by which file the folder holds; anything else is a UserError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"'{run_dir}' is not a folder; pass the output folder of `interplab run`, `eval` or `cruxes`")
    if (run_dir / CRUXES).is_file():
        return "cruxes"
    if (run_dir / RESULTS).is_file():
        return "run"
    raise UserError(f"'{run_dir}' holds neither {RESULTS} nor {CRUXES}; pass the output folder of "
                    "`interplab run`, `eval` or `cruxes`")


def cruxes_entries(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """cruxes.json and the entries of its experiments: each from its own results.json when that is
    in the folder (figures included), else from the verdicts cruxes.json holds."""
    doc = read_json(Path(run_dir) / CRUXES)
    entries = []
    for exp in doc.get("experiments") or []:
        name = str(exp.get("name"))
        path = Path(run_dir) / name / RESULTS
        if path.is_file():
            entries.append(entry(name, read_json(path), bool(exp.get("reused")), exp.get("title")))
            continue
        verdicts = [v for v in doc.get("verdicts") or [] if v.get("experiment") == name]
        ids = {v.get("crux") for v in verdicts}
        cruxes = {k: p for k, p in (doc.get("cruxes") or {}).items() if k in ids}
        entries.append(entry(name, {**exp, "verdicts": verdicts, "cruxes": cruxes}, bool(exp.get("reused"))))
    return doc, entries


def rebuild(run_dir: Path) -> Path:
    """Re-render the HTML of a run folder (a cruxes folder: every experiment's page and the index);
    return the top page."""
    run_dir = Path(run_dir)
    if kind(run_dir) == "run":
        data = read_json(run_dir / RESULTS)
        return render_result(data, load_images(run_dir, data), run_dir)
    doc, entries = cruxes_entries(run_dir)
    for e in entries:
        folder = run_dir / e["name"]
        if (folder / RESULTS).is_file():
            data = read_json(folder / RESULTS)
            render_result(data, load_images(folder, data), folder)
    return render_index(entries, run_dir, version=doc.get("interplab_version"))


def entries_of(run_dir: Path) -> list[dict[str, Any]]:
    """The entries of a run folder of either kind (one entry for a single run)."""
    run_dir = Path(run_dir)
    if kind(run_dir) == "cruxes":
        return cruxes_entries(run_dir)[1]
    data = read_json(run_dir / RESULTS)
    return [entry(str(data.get("experiment") or run_dir.name), data)]
