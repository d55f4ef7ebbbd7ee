"""`interplab cruxes`: every experiment at its small scale, one overview page, one verdicts table.

Each experiment writes into `out_dir/<name>/`; one whose results.json already holds the same
config is reused rather than rerun, so an interrupted `cruxes` resumes where it stopped (a
results.json exists only for finished runs, because it is written last and atomically).

The experiments run on one thread (torch and BLAS). At this scale their ops are small, and on a
laptop whose cores are shared with anything else, spinning OpenMP threads slow them down several
times over (an SAE fit in `decompose`: 25 s on one thread, 126 s on two busy cores); one thread
keeps `cruxes` at a few minutes whatever else the machine does. `interplab run` keeps torch's
threads, for runs at scale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import interplab
from interplab import ui
from interplab.experiments.base import EXPERIMENTS, build_config, load_result, run_experiment, same_config
from interplab.report.html import atomic_write, render_index
from interplab.report.terminal import print_verdicts
from interplab.runtime import single_thread


def _run_one(name: str, out_dir: Path, fresh: bool) -> dict[str, Any]:
    """Run (or reuse) one experiment at its small scale; return its overview entry."""
    cls = EXPERIMENTS.get(name)
    folder = out_dir / name
    cfg = build_config(name, cls.small)
    stored = None if fresh else load_result(folder)
    reused = same_config(stored, cfg) and stored.get("experiment") == name  # type: ignore[union-attr]
    if reused:
        ui.info(f"[bold]{name}[/bold]: reusing finished run in {folder}")
        data = stored
    else:
        with single_thread():
            data = run_experiment(name, cls.small, folder).to_dict()
    return {
        "name": name,
        "title": data.get("title") or cls.title,
        "seconds": data.get("seconds"),
        "reused": reused,
        "verdicts": data.get("verdicts") or [],
    }


def run_cruxes(out_dir: Path, fresh: bool = False, only: list[str] | None = None) -> Path:
    """Run the experiments (all, or `only`), write index.html and cruxes.json; return the index path."""
    out_dir = Path(out_dir)
    chosen = [n for n in EXPERIMENTS.names() if EXPERIMENTS.get(n).in_cruxes]
    names = list(only) if only else sorted(chosen, key=lambda n: EXPERIMENTS.get(n).order)
    for name in names:
        EXPERIMENTS.get(name)  # fail on a typo before spending time on the others
    entries = [_run_one(name, out_dir, fresh) for name in names]
    rows = [{"experiment": e["name"], **v} for e in entries for v in e["verdicts"]]
    doc = {
        "interplab_version": interplab.__version__,
        "experiments": [{k: e[k] for k in ("name", "title", "seconds", "reused")} for e in entries],
        "verdicts": rows,
    }
    atomic_write(out_dir / "cruxes.json", json.dumps(doc, indent=2, allow_nan=False))
    index = render_index(entries, out_dir, version=interplab.__version__)
    print_verdicts(rows, title="Cruxes")
    return index
