"""Low-probability estimation (Wu & Hilton 2024) on character transformers, against exact truth.

Every method estimates P_{x ~ D}[argmax of the last-position logits = t] for every target t whose exact
probability (by enumeration of D's support) lies in [1e-9, 1e-3], at budgets of 2^10, 2^12 and 2^14
forward-pass equivalents. Scores: Itakura–Saito loss and squared error in log10 space, raw and after a
per-method affine calibration in log10 space, two-fold over (model, distribution) groups: every target
is scored once, by a map fitted on other groups, so never on a target that shares its sample (see
lpe_figures.calibrate). Verdicts compare fixed family representatives (config) with a cluster
bootstrap over (model, distribution) groups. Propagation rows whose cost exceeds the budget (neither
variant fits) are not scored; they are counted in metrics["over_budget"] and the loss table.

Sharing that changes no estimate's distribution: naive, QLD and GLD do not depend on the target, so
one sample of D per (model, distribution) serves every target, and its first b draws serve budget b;
ITGIS and MHIS run once per target at the largest budget and are read at every smaller budget from
their running estimate after the batches that fit (each prefix is a valid run at that budget).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from interplab import ui
from interplab.config import Config
from interplab.experiments.base import Experiment, Result, register
from interplab.experiments.lpe_figures import (
    calibrate,
    loss_table,
    scatter_figure,
    score,
    verdicts,
)
from interplab.runtime import single_thread

SAMPLING = ("naive", "itgis", "mhis")
EXTRAPOLATION = ("qld", "gld")


class LPEConfig(Config):
    """Settings of the low-probability-estimation experiment."""

    layers: list[int] = Field(default_factory=lambda: [1, 2, 4])
    """Depths of the chartf models studied."""
    distributions: list[str] = Field(
        default_factory=lambda: ["letters", "lower", "digits_punct", "vowel_heavy", "capitals"])
    """Named input distributions (interplab.lpe.DISTRIBUTIONS)."""
    positions: int = Field(5, ge=2, le=8)
    """Input length L; supports of 12-16 symbols give 12^L-16^L inputs to enumerate."""
    budgets: list[Annotated[int, Field(ge=3)]] = Field(default_factory=lambda: [1024, 4096, 16384])
    """Budgets in forward-pass equivalents (a backward pass counts two); each at least 3 (one forward and
    backward pass)."""
    methods: list[str] = Field(default_factory=lambda: ["naive", "itgis", "mhis", "qld", "gld", "propagate"])
    """Methods compared (interplab.lpe.METHODS)."""
    p_low: float = Field(1e-9, gt=0)
    """Targets are the symbols whose exact probability lies in [p_low, p_high]."""
    p_high: float = Field(1e-3, gt=0, lt=1)
    """Upper end of the target range."""
    max_targets: int = Field(64, ge=1)
    """At most this many targets per (model, distribution), evenly spread over the sorted ones."""
    floor: float = Field(1e-12, gt=0, lt=1e-9)
    """Estimates below this (zeros of naive sampling) are raised to it before scoring; counted."""
    itgis_temperature: float = Field(1.0, gt=0)
    """ITGIS temperature T (1 was best of 0.3-10 on the 2-layer model, capitals, budget 4096, one seed)."""
    mhis_temperature: float = Field(0.5, gt=0)
    """MHIS temperature T of p(x) exp(s(x) / T) (0.5 was best of 0.1-10 in the same small sweep)."""
    mhis_chains: int = Field(16, ge=1)
    """Parallel MHIS chains."""
    train_steps: int = Field(1000, ge=1)
    """Training steps of each chartf model (cached)."""
    is_representative: Literal["itgis", "mhis"] = "itgis"
    """Method that stands for importance sampling in the verdicts, fixed in advance (choosing the better
    of ITGIS / MHIS on the scored targets would bias the verdict); both are in the loss table."""
    extrapolation_representative: Literal["qld", "gld"] = "qld"
    """Method that stands for activation extrapolation in the verdicts, fixed in advance likewise."""
    seed: int = 0
    """Seed of the samplers and of the calibration split (models train from seed 0)."""

    @model_validator(mode="after")
    def _target_range(self) -> LPEConfig:
        if self.p_low > self.p_high:
            raise ValueError(f"p_low ({self.p_low:g}) must not exceed p_high ({self.p_high:g}): targets are "
                             "the symbols whose exact probability lies in [p_low, p_high]")
        return self

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        from interplab.lpe import METHODS

        for m in v:
            METHODS.get(m)  # raises UserError with the choices
        return v

    @field_validator("distributions")
    @classmethod
    def _known_dists(cls, v: list[str]) -> list[str]:
        from interplab.lpe import distribution

        for name in v:
            distribution(name, 2)
        return v


def _spread(targets: list[int], k: int) -> list[int]:
    if len(targets) <= k:
        return targets
    return [targets[i] for i in np.linspace(0, len(targets) - 1, k).round().astype(int)]


def _shared_estimates(problem: Any, targets: list[int], cfg: LPEConfig, seed: int) -> list[dict]:
    """naive / qld / gld at every budget for every target, from one sample of D."""
    from interplab.lpe import extrapolate, methods

    acts, top = methods.sample_final(problem, max(cfg.budgets), seed)  # (n, d), (n,)
    W, b = extrapolate.unembedding(problem.model)
    x = acts.double().numpy()
    rows = []
    for t in targets:
        for budget in cfg.budgets:
            for name in set(cfg.methods) & {"naive", "qld", "gld"}:
                if name == "naive":
                    est = methods.naive_from_argmax(top[:budget], t)
                else:
                    fn = extrapolate.qld_from_acts if name == "qld" else extrapolate.gld_from_acts
                    est = fn(x[:budget], W, b, t)
                rows.append({"target": t, "method": name, "budget": budget, "estimate": est, "cost": budget})
    return rows


def _sequential_estimates(problem: Any, targets: list[int], cfg: LPEConfig, seed: int) -> list[dict]:
    from dataclasses import replace

    from interplab.lpe import methods

    rows = []
    for t in targets:
        p = replace(problem, target=t)
        traces = {}
        if "itgis" in cfg.methods:
            traces["itgis"] = methods.itgis_trace(p, max(cfg.budgets), seed + t, cfg.itgis_temperature)
        if "mhis" in cfg.methods:
            traces["mhis"] = methods.mhis_trace(p, max(cfg.budgets), seed + t, cfg.mhis_temperature, cfg.mhis_chains)
        for name, trace in traces.items():
            for budget in cfg.budgets:
                est, cost = trace.at(budget)
                # cost 0: not even the run's first batch fits this budget, so there is no estimate at it
                # (trace.at's 0 is a placeholder): marked, and left unscored like an over-budget row
                rows.append({"target": t, "method": name, "budget": budget, "estimate": est, "cost": cost,
                             "over_budget": cost == 0})
    return rows


def _propagate_estimates(problem: Any, targets: list[int], cfg: LPEConfig) -> list[dict]:
    """One Gaussian propagation gives every target; at each budget the full-covariance variant is used
    when its cost fits, else mean field (diagonal), as `interplab.lpe.estimate` does. Should neither
    fit, the mean-field estimate is kept with its cost and the row is marked `over_budget`; such rows
    are not scored (LPE.run drops them and counts them)."""
    from interplab.lpe.propagate import propagate_all

    variants = {full: propagate_all(problem.model, problem.dists, targets, seed=cfg.seed, full=full)
                for full in (True, False)}
    rows = []
    for b in cfg.budgets:
        probs, cost = variants[True] if variants[True][1] <= b else variants[False]
        rows += [{"target": t, "method": "propagate", "budget": b, "estimate": float(probs[t]), "cost": cost,
                  "over_budget": cost > b} for t in targets]
    return rows


def run_model(n_layers: int, cfg: LPEConfig) -> tuple[list[dict], dict[str, float]]:
    """All estimates on one model: rows of (dist, target, truth, method, budget, estimate, cost)."""
    from interplab.lpe import Problem, distribution, event_probs, pick_targets
    from interplab.subjects.chartf import CharTFConfig, train_chartf

    model = train_chartf(CharTFConfig(n_layers=n_layers, steps=cfg.train_steps))
    info = {"char_loss": model.test_loss.item(), "unigram_loss": model.unigram_loss.item()}
    rows: list[dict] = []
    for k, dname in enumerate(cfg.distributions):
        dists = distribution(dname, cfg.positions)  # (L, V)
        probs = event_probs(model, dists)  # (V,) exact
        targets = _spread(pick_targets(probs, cfg.p_low, cfg.p_high), cfg.max_targets)
        ui.info(f"{n_layers}-layer model, {dname}: {len(targets)} targets")
        if not targets:
            continue
        problem = Problem(model, dists, targets[0], dname)
        seed = cfg.seed * 1_000_003 + 7919 * n_layers + 104_729 * k
        new = _shared_estimates(problem, targets, cfg, seed) + _sequential_estimates(problem, targets, cfg, seed)
        if "propagate" in cfg.methods:
            new += _propagate_estimates(problem, targets, cfg)
        for r in new:
            r.update(model=f"{n_layers}L", dist=dname, truth=float(probs[r["target"]]))
        rows += new
    return rows, info


@register
class LPE(Experiment):
    """Estimate rare outputs of character transformers far below the sampling floor, against exact truth."""

    name = "lpe"
    order = 5
    title = "Low-probability estimation: importance sampling vs activation extrapolation vs propagation"
    Config = LPEConfig
    small: ClassVar[dict[str, Any]] = {
        "layers": [1], "distributions": ["digits_punct", "vowel_heavy", "capitals"], "positions": 4,
        "budgets": [1024, 4096],
    }

    def run(self, cfg: LPEConfig) -> Result:
        rows, subjects = [], {}
        with single_thread():
            for n_layers in cfg.layers:
                new, info = run_model(n_layers, cfg)
                rows += new
                subjects[f"{n_layers}L"] = info
        over = [r for r in rows if r.get("over_budget")]
        scored = calibrate(score([r for r in rows if not r.get("over_budget")], cfg.floor), cfg.seed)
        metrics = _metrics(scored, cfg, subjects)
        metrics["over_budget"] = _over_budget(over)
        vs = verdicts(scored, cfg, EXTRAPOLATION, SAMPLING)
        table = loss_table(metrics, cfg)
        return Result(
            experiment=self.name,
            title=self.title,
            config=cfg.model_dump(mode="json"),
            seed=cfg.seed,
            metrics=metrics,
            verdicts=vs,
            tables={"is_loss": table, "targets": _targets_table(rows), "models": _models_table(subjects)},
            figures={"scatter": scatter_figure(scored, cfg)},
            captions=_captions(cfg),
            summary=_summary(metrics, vs, cfg),
        )


def _metrics(scored: list[dict], cfg: LPEConfig, subjects: dict) -> dict[str, Any]:
    """metrics[model][method][budget] = mean losses (raw and fitted), floored count, targets, cost."""
    out: dict[str, Any] = {"subjects": subjects, "per_target": _per_target(scored)}
    for model in sorted({r["model"] for r in scored}):
        out[model] = {}
        for method in cfg.methods:
            out[model][method] = {}
            for budget in cfg.budgets:
                sel = [r for r in scored if r["model"] == model and r["method"] == method and r["budget"] == budget]
                if not sel:
                    continue
                col = {k: np.array([r[k] for r in sel]) for k in ("is_loss", "log_se", "is_loss_fitted",
                                                                    "log_se_fitted", "cost", "floored")}
                out[model][method][str(budget)] = {
                    "is_loss": col["is_loss"].mean(), "log_se": col["log_se"].mean(),
                    "is_loss_fitted": col["is_loss_fitted"].mean(), "log_se_fitted": col["log_se_fitted"].mean(),
                    "is_loss_median": float(np.median(col["is_loss"])), "floored": int(col["floored"].sum()),
                    "n_targets": len(sel), "mean_cost": col["cost"].mean(),
                }
    return out


def _over_budget(over: list[dict]) -> dict[str, Any]:
    """over_budget[model][method][budget] = {"targets": n, "cost": cost}: rows whose cost exceeded the
    budget (propagation where neither variant fits), left out of every score."""
    out: dict[str, Any] = {}
    for r in over:
        cell = out.setdefault(r["model"], {}).setdefault(r["method"], {}).setdefault(
            str(r["budget"]), {"targets": 0, "cost": r["cost"]})
        cell["targets"] += 1
    return out


def _per_target(scored: list[dict]) -> dict[str, Any]:
    """per_target[model][dist][symbol] = {"truth": p, method: {budget: estimate}} (raw estimates)."""
    from interplab.subjects.chartf import VOCAB

    out: dict[str, Any] = {}
    for r in scored:
        cell = out.setdefault(r["model"], {}).setdefault(r["dist"], {}).setdefault(VOCAB[r["target"]], {})
        cell["truth"] = r["truth"]
        cell.setdefault(r["method"], {})[str(r["budget"])] = r["estimate"]
    return out


def _targets_table(rows: list[dict]) -> dict[str, list]:
    from interplab.subjects.chartf import VOCAB

    seen = sorted({(r["model"], r["dist"], r["target"], r["truth"]) for r in rows}, key=lambda k: (k[0], k[1], k[3]))
    return {"columns": ["model", "distribution", "target", "exact probability"],
            "rows": [[m, d, repr(VOCAB[t]), p] for m, d, t, p in seen]}


def _models_table(subjects: dict) -> dict[str, list]:
    return {"columns": ["model", "held-out loss (nats/char)", "unigram loss (nats/char)"],
            "rows": [[m, v["char_loss"], v["unigram_loss"]] for m, v in subjects.items()]}


def _captions(cfg: LPEConfig) -> dict[str, str]:
    return {
        "is_loss": "Mean Itakura–Saito loss D_IS(p, q) = p/q − ln(p/q) − 1 over targets, raw and after a "
        "per-method affine calibration in log10 space fitted on the other fold of (model, distribution) groups "
        "(never on a target sharing the scored target's sample). Lower is "
        f"better; estimates below {cfg.floor:g} (naive zeros) are raised to it. A method whose cost exceeds "
        "a budget (propagation when neither variant fits) is not scored there: empty cells, listed in the "
        "last column.",
        "targets": "Every target: the symbol and its exact probability by enumeration.",
        "models": "The chartf subjects: held-out character loss against the unigram baseline.",
        "scatter": "Estimate against exact probability (log-log), one panel per method, colour = budget; "
        "dashed: estimate = truth; dotted: the floor that zero estimates are raised to.",
    }


def _summary(metrics: dict, vs: list, cfg: LPEConfig) -> str:
    top = str(max(cfg.budgets))
    parts = []
    for model in [m for m in metrics if m not in ("subjects", "per_target", "over_budget")]:
        ranked = sorted((v[top]["is_loss_fitted"], k) for k, v in metrics[model].items() if top in v)
        parts.append(f"{model}: " + " < ".join(f"{k} ({loss:.3g})" for loss, k in ranked))
    words = "; ".join(f"{v.crux.split(': ')[-1]}: {v.verdict}" for v in vs)
    return (f"Fitted IS loss at budget {top} (best first) — " + " | ".join(parts) + f". Verdicts — {words}.")
