"""The `lpe` pipeline: groups of problems -> estimates -> scores -> each crux's evidence.

One function, `pipeline(groups, cfg, methods)`, runs on the chartf groups and, unchanged, on the
planted control groups (`lpe_controls`): same budgets, samplers' settings, floor, calibration,
statistic and resampling unit.

Sharing that changes no estimate's distribution: naive, QLD and GLD do not depend on the target,
so one sample of D per group serves every target, and its first b draws serve budget b; ITGIS and
MHIS run once per target at the largest budget and are read at every smaller budget from their
running estimate after the batches that fit (each prefix is a valid run at that budget).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Any

from interplab.experiments.lpe_scoring import calibrate, pairwise_evidence, score
from interplab.lpe import Problem
from interplab.verdicts import Evidence

CRUX_PAIRS = {"lpe-is-vs-ae": ("is", "ae", "loss"), "lpe-is-vs-naive": ("is", "naive", "loss"),
              "lpe-ae-vs-naive": ("ae", "naive", "loss"), "lpe-is-vs-ae-log": ("is", "ae", "log1p"),
              "lpe-is-vs-naive-log": ("is", "naive", "log1p"), "lpe-ae-vs-naive-log": ("ae", "naive", "log1p")}
"""crux -> (claimed winner, loser, transform of the fitted IS loss), as families; `representatives` maps a
family to its method. The `-log` cruxes superseded the others (catalog/lpe.py); both are computed."""


@dataclass(frozen=True)
class Group:
    """One (model, distribution) group, the resampling unit: its targets share every sample of D."""

    model: str
    dist: str
    problem: Problem
    """The model and distribution (its `target` is a placeholder; see `targets`)."""
    targets: list[int]
    truths: dict[int, float]
    """Exact P[argmax = t] of every target."""

    @property
    def name(self) -> str:
        return f"{self.model}/{self.dist}"


def representatives(cfg: Any) -> dict[str, str]:
    """Family -> the method that stands for it in the verdicts (fixed in advance by the config)."""
    return {"is": cfg.is_representative, "ae": cfg.extrapolation_representative, "naive": "naive"}


def _seed(cfg: Any, group: Group) -> int:
    return cfg.seed * 1_000_003 + zlib.crc32(group.name.encode()) % 1_000_000


def _shared(group: Group, cfg: Any, methods: set[str], seed: int) -> list[dict]:
    """naive / qld / gld at every budget for every target, from one sample of D."""
    from interplab.lpe import extrapolate
    from interplab.lpe import methods as lm

    acts, top = lm.sample_final(group.problem, max(cfg.budgets), seed)  # (n, d), (n,)
    W, b = extrapolate.unembedding(group.problem.model)
    x = acts.double().numpy()
    fns = {"qld": extrapolate.qld_from_acts, "gld": extrapolate.gld_from_acts}
    rows = []
    for t in group.targets:
        for budget in cfg.budgets:
            for name in sorted(methods & {"naive", "qld", "gld"}):
                est = lm.naive_from_argmax(top[:budget], t) if name == "naive" else fns[name](x[:budget], W, b, t)
                rows.append({"target": t, "method": name, "budget": budget, "estimate": est, "cost": budget})
    return rows


def _sequential(group: Group, cfg: Any, methods: set[str], seed: int) -> list[dict]:
    """ITGIS and MHIS: one run per target at the largest budget, read at every budget."""
    from interplab.lpe import methods as lm

    rows = []
    for t in group.targets:
        p = replace(group.problem, target=t)
        traces = {}
        if "itgis" in methods:
            traces["itgis"] = lm.itgis_trace(p, max(cfg.budgets), seed + t, cfg.itgis_temperature,
                                             score=cfg.itgis_score, decay=cfg.itgis_decay)
        if "mhis" in methods:
            traces["mhis"] = lm.mhis_trace(p, max(cfg.budgets), seed + t, cfg.mhis_temperature, cfg.mhis_chains)
        for name, trace in traces.items():
            for budget in cfg.budgets:
                est, cost = trace.at(budget)
                # cost 0: not even the run's first batch fits this budget, so there is no estimate at it
                rows.append({"target": t, "method": name, "budget": budget, "estimate": est, "cost": cost,
                             "over_budget": cost == 0})
    return rows


def _propagated(group: Group, cfg: Any, methods: set[str], seed: int) -> list[dict]:
    """One Gaussian propagation gives every target; at each budget the full-covariance variant is used
    when its cost fits, else mean field; should neither fit, the row is marked `over_budget` (not
    scored)."""
    from interplab.lpe.propagate import propagate_all

    rows = []
    if "propagate" in methods:
        variants = {full: propagate_all(group.problem.model, group.problem.dists, group.targets, seed=cfg.seed,
                                        full=full) for full in (True, False)}
        for b in cfg.budgets:
            probs, cost = variants[True] if variants[True][1] <= b else variants[False]
            rows += [{"target": t, "method": "propagate", "budget": b, "estimate": float(probs[t]), "cost": cost,
                      "over_budget": cost > b} for t in group.targets]
    return rows


def estimates(groups: list[Group], cfg: Any, methods: set[str]) -> list[dict]:
    """Every method's estimate of every target of every group at every budget (rows, with truth)."""
    rows = []
    for group in groups:
        seed = _seed(cfg, group)
        new = (_shared(group, cfg, methods, seed) + _sequential(group, cfg, methods, seed)
               + _propagated(group, cfg, methods, seed))
        for r in new:
            r.update(model=group.model, dist=group.dist, group=group.name, truth=group.truths[r["target"]])
        rows += new
    return rows


def pipeline(groups: list[Group], cfg: Any, methods: set[str]) -> tuple[list[dict], list[dict]]:
    """(scored rows with raw and held-out fitted losses, rows left unscored because over budget)."""
    rows = estimates(groups, cfg, methods)
    over = [r for r in rows if r.get("over_budget")]
    return calibrate(score([r for r in rows if not r.get("over_budget")], cfg.floor)), over


def crux_evidence(scored: list[dict], cfg: Any) -> dict[str, Evidence]:
    """Each LPE crux's evidence at the largest budget, from the methods fixed in advance."""
    rep = representatives(cfg)
    ran = {r["method"] for r in scored}
    return {crux: pairwise_evidence(scored, rep[w], rep[lo], max(cfg.budgets), cfg.seed, f)
            for crux, (w, lo, f) in CRUX_PAIRS.items() if rep[w] in ran and rep[lo] in ran}
