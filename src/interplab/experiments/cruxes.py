"""`interplab cruxes`: every experiment at its small scale, one overview page, one verdicts table.

Each experiment writes into `out_dir/<name>/`; one whose results.json holds the same config and was
produced by the same code (`provenance.code_hash`) at the small scale is reused rather than rerun,
so an interrupted `cruxes` resumes where it stopped (a results.json exists only for finished runs,
because it is written last and atomically) and a result of older code is never shown as current.

Experiments run in `jobs` worker processes (default: one per core), each on one thread (torch and
BLAS). At this scale their ops are small, and on a laptop whose cores are shared with anything else,
spinning OpenMP threads slow them down several times over (an SAE fit in `decompose`: 25 s on one
thread, 126 s on two busy cores); one thread per experiment and one experiment per core keeps
`cruxes` at a few minutes. `interplab run` keeps torch's threads, for runs at scale.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import interplab
from interplab import ui
from interplab.experiments.base import EXPERIMENTS, build_config, load_result, run_experiment, same_config
from interplab.provenance import code_hash
from interplab.report.html import atomic_write, render_index
from interplab.report.runs import entry
from interplab.report.terminal import print_summary
from interplab.runtime import single_thread
from interplab.verdicts import summary_counts


def _stored(name: str, folder: Path) -> dict[str, Any] | None:
    """The finished small-scale run in `folder`, if it is current (same config, same code)."""
    cfg = build_config(name, EXPERIMENTS.get(name).small)
    stored = load_result(folder)
    ok = same_config(stored, cfg) and stored.get("experiment") == name and stored.get("scale") == "small"  # type: ignore[union-attr]
    return stored if ok else None


def _run_small(name: str, folder: str, quiet: bool, bars: bool) -> dict[str, Any]:
    """Run one experiment at its small scale on one thread (in a worker process or in this one)."""
    ui.set_quiet(quiet)
    ui.set_bars(bars)
    with single_thread():
        return run_experiment(name, EXPERIMENTS.get(name).small, Path(folder), scale="small").to_dict()


def _run_all(names: list[str], out_dir: Path, fresh: bool, jobs: int) -> dict[str, dict[str, Any]]:
    """Every experiment's results.json document, reusing current ones; `jobs` at a time."""
    done: dict[str, dict[str, Any]] = {}
    todo = []
    for name in names:
        stored = None if fresh else _stored(name, out_dir / name)
        if stored is not None:
            ui.info(f"[bold]{name}[/bold]: reusing the finished run in {out_dir / name} (same config and code)")
            done[name] = {**stored, "_reused": True}
        else:
            todo.append(name)
    if jobs <= 1 or len(todo) <= 1:
        for name in todo:
            done[name] = _run_small(name, str(out_dir / name), ui.is_quiet(), True)
        return done
    # spawn, not fork: the parent has imported torch, and a forked OpenMP runtime can hang
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx) as pool:
        futures = {name: pool.submit(_run_small, name, str(out_dir / name), ui.is_quiet(), False) for name in todo}
        for name, fut in futures.items():
            done[name] = fut.result()
            ui.info(f"[bold]{name}[/bold]: finished in {done[name].get('seconds', 0):.0f} s")
    return done


def default_jobs() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def run_cruxes(out_dir: Path, fresh: bool = False, only: list[str] | None = None, jobs: int | None = None) -> Path:
    """Run the experiments (all, or `only`), write index.html and cruxes.json; return the index path."""
    out_dir = Path(out_dir)
    chosen = [n for n in EXPERIMENTS.names() if EXPERIMENTS.get(n).in_cruxes]
    names = list(only) if only else sorted(chosen, key=lambda n: EXPERIMENTS.get(n).order)
    for name in names:
        EXPERIMENTS.get(name)  # fail on a typo before spending time on the others
    done = _run_all(names, out_dir, fresh, default_jobs() if jobs is None else jobs)
    entries = [entry(name, done[name], bool(done[name].get("_reused")), EXPERIMENTS.get(name).title) for name in names]
    rows = [{"experiment": e["name"], **v} for e in entries for v in e["verdicts"]]
    doc = {
        "interplab_version": interplab.__version__,
        "code_hash": code_hash(),
        "counts": summary_counts(rows),
        "experiments": [{k: e[k] for k in ("name", "title", "seconds", "reused")} for e in entries],
        "cruxes": {k: v for e in entries for k, v in e["cruxes"].items()},
        "verdicts": rows,
    }
    atomic_write(out_dir / "cruxes.json", json.dumps(doc, indent=2, allow_nan=False))
    index = render_index(entries, out_dir, version=interplab.__version__)
    print_summary(entries)
    return index
