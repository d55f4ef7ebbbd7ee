"""What every experiment shares: its verdicts, its result, and how a result reaches the disk.

An experiment is a class with a typed `Config`, a `small` set of overrides for `interplab cruxes`,
and `run(cfg) -> Result`. `run_experiment` builds the config, times the run and writes
`results.json`, `figures/*.png` and `index.html`. `results.json` is written last and atomically,
so its presence means the run finished: `cruxes` relies on that to resume after an interruption.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
from matplotlib.figure import Figure

import interplab
from interplab import ui
from interplab.config import Config, build, load_file
from interplab.experiments.units import Units
from interplab.provenance import code_hash
from interplab.registry import Registry
from interplab.report.html import atomic_write, render_result
from interplab.verdicts import CRUXES, Verdict, VerdictWord, decide, holm  # noqa: F401  (re-exported)


class CI(NamedTuple):
    """A two-sided confidence interval."""

    low: float
    high: float


def bootstrap_ci(
    values: Any,
    stat: Callable[..., Any] = np.mean,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> CI:
    """Percentile bootstrap CI of `stat` over the first axis of `values`.

    Percentile rather than BCa because it stays defined when every resample gives the same value
    (common for counts over a few seeds), where BCa divides by zero. `stat` is called with
    `axis=-1` on all resamples at once when it accepts that keyword, else once per resample.
    """
    x = np.asarray(values, dtype=float)
    if x.shape[0] == 0:
        return CI(math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], size=(n_boot, x.shape[0]))  # (n_boot, n)
    try:
        if x.ndim != 1:
            raise TypeError
        boots = np.asarray(stat(x[idx], axis=-1), dtype=float)  # (n_boot,)
    except TypeError:
        boots = np.array([float(stat(x[i])) for i in idx])
    alpha = (1 - level) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return CI(float(low), float(high))


@dataclass
class Result:
    """Everything one run produced. `figures` are matplotlib Figures, written as PNG beside JSON."""

    experiment: str
    title: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    tables: dict[str, dict[str, list]] = field(default_factory=dict)  # name -> {"columns", "rows"}
    figures: dict[str, Figure] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)  # figure or table name -> caption
    key_figure: str = ""  # the figure shown as a thumbnail beside the experiment's rows (default: the first)
    summary: str = ""
    scale: str = "default"  # "small" (what `cruxes` runs) or "default"
    code: str = field(default_factory=code_hash)  # hash of the computing source that produced it

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of `results.json` (DESIGN's keys plus title, summary, figures)."""
        return {
            "experiment": self.experiment,
            "title": self.title,
            "interplab_version": interplab.__version__,
            "config": _clean(self.config, floats=False),
            "seed": int(self.seed),
            "seconds": float(self.seconds),
            "summary": self.summary,
            "metrics": _clean(self.metrics, floats=True),
            "verdicts": [_clean(asdict(v), floats=True) for v in self.verdicts],
            "tables": _clean(self.tables, floats=False),
            "figures": {name: f"figures/{_file_name(name)}.png" for name in self.figures},
            "captions": dict(self.captions),
            "key_figure": self.key_figure if self.key_figure in self.figures else next(iter(self.figures), None),
            "scale": self.scale,
            "code_hash": self.code,
            "cruxes": _protocols(self.verdicts),
        }


def _protocols(verdicts: list[Verdict]) -> dict[str, Any]:
    """The definitions of the cruxes these verdicts decided, so the report can print the protocol."""
    out = {}
    for v in verdicts:
        if v.crux in CRUXES and v.crux not in out:
            out[v.crux] = _clean(CRUXES.get(v.crux).protocol(), floats=False)
    return out


def _clean(obj: Any, floats: bool) -> Any:
    """JSON-safe copy: numpy/torch scalars to Python, NaN/inf to None, numbers to float if asked."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v, floats) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v, floats) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy arrays/scalars, tensors
        return _clean(obj.tolist(), floats)
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (int, float)):
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        return float(obj) if floats else obj
    return str(obj)


def _file_name(name: str) -> str:
    """A figure name made safe as a file name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "figure"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def write_result(result: Result, out_dir: Path) -> Path:
    """Write figures, index.html, then results.json (last, so it marks a finished run); return it."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    data = result.to_dict()
    images: dict[str, bytes] = {}
    for name, fig in result.figures.items():
        images[name] = _png(fig)
        atomic_write(out_dir / data["figures"][name], images[name])
    render_result(data, images, out_dir)
    text = json.dumps(data, indent=2, allow_nan=False)
    path = out_dir / "results.json"
    atomic_write(path, text)
    return path


def load_result(out_dir: Path) -> dict[str, Any] | None:
    """The results.json of a finished run in `out_dir`, or None when there is none readable."""
    path = Path(out_dir) / "results.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Experiment:
    """Base class: set `name`, `title`, `Config`, `small`; implement `run(cfg) -> Result`.

    `self.scale` is "small" when the run starts from `small` (as `cruxes` and `run --small` do) and
    "default" otherwise; verdicts pass it to `interplab.verdicts.judge`, which marks a crux run below
    its smallest decidable scale as "needs --scale default" instead of printing a verdict.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    Config: ClassVar[type[Config]]
    small: ClassVar[dict[str, Any]] = {}  # overrides that `interplab cruxes` runs with
    in_cruxes: ClassVar[bool] = True  # False for an experiment another one already contains
    order: ClassVar[int] = 100  # place in the cruxes table (DESIGN's order of the cruxes)
    scale: str = "default"
    units: Units = Units(None)  # finished units of work of this run (`units.py`); set by run_experiment

    def run(self, cfg: Any) -> Result:
        raise NotImplementedError


EXPERIMENTS: Registry[type[Experiment]] = Registry("experiment")


def register(cls: type[Experiment]) -> type[Experiment]:
    """Class decorator: add an Experiment to EXPERIMENTS under its `name`, with its `title` as help."""
    EXPERIMENTS.add(cls.name, cls, help=cls.title)
    return cls


def build_config(name: str, overrides: Mapping[str, Any], config_file: Path | None = None) -> Config:
    """Defaults <- file <- overrides, validated; a bad key or value raises UserError."""
    cls = EXPERIMENTS.get(name)
    values = dict(load_file(config_file)) if config_file is not None else {}
    values.update(overrides)
    return build(cls.Config, values, where=f" of experiment '{name}'")


def run_experiment(
    name: str, overrides: Mapping[str, Any], out_dir: Path, config_file: Path | None = None,
    scale: str = "default",
) -> Result:
    """Run experiment `name` at `scale` ("small": `overrides` start from its `small` settings) and
    write its report into `out_dir`. Verdicts get their family's Holm correction here. Units of work
    the experiment stores through `self.units` land in `out_dir/units/`: a rerun after an
    interruption continues from them."""
    cfg = build_config(name, overrides, config_file)
    exp = EXPERIMENTS.get(name)()
    exp.scale = scale
    exp.units = Units(Path(out_dir) / "units", {"experiment": name, "config": cfg.model_dump(mode="json")})
    ui.info(f"[bold]{name}[/bold]: running at the {scale} scale, writing to {out_dir}")
    start = time.perf_counter()
    result = exp.run(cfg)
    holm(result.verdicts)
    result.scale = scale
    result.code = code_hash()
    result.seconds = time.perf_counter() - start
    # The config on disk is the validated one, whatever the experiment put there: resume compares it.
    result.config = cfg.model_dump(mode="json")
    result.seed = int(getattr(cfg, "seed", result.seed))
    result.experiment = name
    result.title = result.title or exp.title
    write_result(result, out_dir)
    return result


def same_config(stored: Mapping[str, Any] | None, cfg: Config) -> bool:
    """Whether a stored results.json was produced with exactly `cfg` (JSON-normalised) by the code
    as it is now (`provenance.code_hash`): a result of older code is stale, never reused."""
    if not stored:
        return False
    return (stored.get("config") == json.loads(json.dumps(cfg.model_dump(mode="json")))
            and stored.get("code_hash") == code_hash())
