"""The explanations experiment's verdicts: one pipeline per crux, run on the seeds and on controls.

Each pipeline maps a list of per-model records (from `explanations.evaluate`, the same for trained
seeds and hand-set controls) to `Evidence` with the training seed (or hand-set unit) as the unit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats as sps

from interplab.explain.handset import FAMILIES
from interplab.verdicts import Evidence, Verdict, cached_evidence, exact, from_refits, judge

MECH = {"brute-force": 0, "cubic": 1, "subcubic": 2, "subcubic-rank1": 3}
TARGET = 0.9  # the tightness the mechanism crux asks for: a bound of 0.9 x the true accuracy
BOUNDS = ("cubic", "subcubic", "subcubic-rank1")
SURPRISE = {"no explanation": None, "cubic": "cubic", "subcubic": "subcubic", "subcubic-rank1": "subcubic-rank1",
            "brute force": "brute-force"}  # ledger name -> strategy whose FLOPs are its proof length


def _spearman(a, b) -> float:
    r = sps.spearmanr(a, b).statistic
    return float(r) if np.isfinite(r) else math.nan


def flops_to_target(rec: dict[str, Any]) -> dict[str, float]:
    """FLOPs of each strategy if its bound reaches TARGET x the truth, else infinity."""
    goal = TARGET * rec["truth"]
    return {n: (s["flops"] if s["bound"] >= goal else math.inf) for n, s in rec["strategies"].items() if n in MECH}


def mechanism(records: list[dict[str, Any]]) -> Evidence:
    """Crux explain-mechanism: mean over units of Spearman(mechanism level, FLOPs to the target)."""
    per = []
    for rec in records:
        reach = flops_to_target(rec)
        names = sorted(reach, key=MECH.get)
        per.append(_spearman([MECH[n] for n in names], [reach[n] for n in names]))
    return from_refits(per, 0.0, f"t over {len(per)} units", extra={"reached": [
        sorted(n for n, f in flops_to_target(r).items() if math.isfinite(f)) for r in records]})


def _best_bound(rec: dict[str, Any]) -> tuple[str, float]:
    name = max(BOUNDS, key=lambda n: (rec["strategies"][n]["bound"], -rec["strategies"][n]["flops"]))
    return name, rec["strategies"][name]["bound"]


def heuristic(records: list[dict[str, Any]]) -> Evidence:
    """Crux explain-heuristic: mean over units of log10(best bound's slack / estimate's error)."""
    per, parts = [], []
    for rec in records:
        floor = 1.0 / rec["vocab"] ** rec["k"]
        name, bound = _best_bound(rec)
        slack = max(rec["truth"] - bound, floor)
        err = max(abs(rec["estimates"]["independence"]["accuracy"] - rec["truth"]), floor)
        per.append(math.log10(slack / err))
        parts.append({"best": name, "slack": slack, "error": err})
    return from_refits(per, 0.0, f"t over {len(per)} units", extra={"parts": parts})


def surprise_points(records: list[dict[str, Any]]) -> list[tuple[list[float], list[float]]]:
    """Per seed, (total surprise, FLOPs) of the five proof strategies (no proof: 0 FLOPs)."""
    out = []
    for rec in records:
        ledgers = rec["ledgers"]["explanations"]
        bits = [ledgers[n]["total_bits"] for n in SURPRISE]
        flops = [0.0 if s is None else rec["strategies"][s]["flops"] for s in SURPRISE.values()]
        out.append((bits, flops))
    return out


def surprise(points: list[tuple[list[float], list[float]]], seed: int = 0, n_perm: int = 2000) -> Evidence:
    """Crux explain-surprise: mean over seeds of Spearman(total surprise, FLOPs), with the permutation
    null (surprise shuffled across strategies within each seed) for its p-value."""
    per = [_spearman(bits, flops) for bits, flops in points]
    rng = np.random.default_rng(seed)
    null = np.zeros(n_perm)
    for bits, flops in points:  # Spearman = Pearson of ranks; permuting surprise permutes its ranks
        rx, ry = sps.rankdata(bits), sps.rankdata(flops)
        perms = rx[np.argsort(rng.random((n_perm, len(rx))), axis=1)]  # (n_perm, strategies)
        a, b = perms - perms.mean(1, keepdims=True), ry - ry.mean()
        null += (a @ b) / np.sqrt((a**2).sum(1) * (b**2).sum()) / len(points)
    obs = float(np.nanmean(per))
    perm_p = float((np.sum(np.abs(null) >= abs(obs) - 1e-12) + 1) / (n_perm + 1))
    ties = any(len(set(b)) < len(b) or len(set(f)) < len(f) for b, f in points)
    centre = float(null.mean()) if ties else 0.0  # without ties the permutation mean is exactly 0
    return from_refits(per, centre, f"t over {len(per)} seeds", extra={
        "perm_p": perm_p, "perm_null_mean": float(null.mean()), "perm_null_sd": float(null.std())})


def constructed_points(points, role: str, seed: int) -> list[tuple[list[float], list[float]]]:
    """Control pairings on the real strategies' FLOPs: surprise following them (positive) or shuffled
    across strategies (negative)."""
    rng = np.random.default_rng(seed)
    out = []
    for bits, flops in points:
        if role == "positive":
            made = [10 ** (math.log10(max(f, 1.0)) + rng.normal(0, 0.3)) for f in flops]
        else:
            made = list(rng.permutation(bits))
        out.append((made, flops))
    return out


def _slim(rec: dict[str, Any]) -> dict[str, Any]:
    return {"truth": rec["truth"], "bounds": {n: s["bound"] for n, s in rec["strategies"].items()},
            "estimate": rec["estimates"]["independence"]["accuracy"], "vocab": rec["vocab"], "k": rec["k"]}


def control(crux: str, family: str, stat: Callable[[list], Evidence], cfg, evaluate) -> Evidence:
    """A control: hand-set units of one family through `evaluate` and `stat`, cached."""
    def compute() -> Evidence:
        recs = [evaluate(FAMILIES[family](cfg.control_vocab, 4, unit), True, None, cfg.quant_tol, cfg.seed + unit)
                for unit in range(cfg.control_units)]
        ev = stat(recs)
        return dataclasses.replace(ev, extra={**ev.extra, "records": [_slim(r) for r in recs]})

    settings = {"family": family, "vocab": cfg.control_vocab, "units": cfg.control_units, "k": 4, "seed": cfg.seed}
    return cached_evidence(f"explanations/{crux}/{family}", settings, compute)


def verdicts(seeds: list[dict[str, Any]], cfg, scale: str, evaluate) -> tuple[list[Verdict], dict[str, Any]]:
    """The three cruxes' verdicts with their controls, and the cost harness check."""
    out, details, controls = [], {}, []
    subject = f"max-of-4, vocab {cfg.vocab}, {len(seeds)} training seeds"
    for crux, stat, pos_fam, neg_fam in [("explain-mechanism", mechanism, "one-hot-max", "copy-position"),
                                         ("explain-heuristic", heuristic, "query-push", "poison")]:
        ev = stat(seeds)
        pos, neg = (control(crux, f, stat, cfg, evaluate) for f in (pos_fam, neg_fam))
        controls += pos.extra["records"] + neg.extra["records"]
        out.append(judge(crux, ev, subject, positive=pos, negative=neg, scale=scale, note=ev.how))
        details[crux] = {"evidence": ev.to_dict(), "positive": pos.to_dict(), "negative": neg.to_dict()}
    points = surprise_points(seeds)
    ev = surprise(points, cfg.seed)
    key = {"seeds": cfg.seeds, "steps": cfg.steps, "vocab": cfg.vocab, "seed": cfg.seed}
    pos, neg = (cached_evidence(f"explanations/explain-surprise/{role}", {**key, "role": role},
                                lambda role=role: surprise(constructed_points(points, role, cfg.seed), cfg.seed))
                for role in ("positive", "negative"))
    out.append(judge("explain-surprise", ev, subject, positive=pos, negative=neg, scale=scale,
                     note=f"{ev.how}; permutation p = {ev.extra['perm_p']:.3g}"))
    details["explain-surprise"] = {"evidence": ev.to_dict(), "positive": pos.to_dict(), "negative": neg.to_dict()}
    out.append(cost(seeds, scale))
    return out, {"details": details, "controls": controls, "records": controls}


def cost(seeds: list[dict[str, Any]], scale: str) -> Verdict:
    """Harness explain-heuristic-cost: median log10 FLOPs ratio of the estimate to the best bound."""
    ratios = [math.log10(r["estimates"]["independence"]["flops"] / r["strategies"][_best_bound(r)[0]]["flops"])
              for r in seeds]
    value = float(np.median(ratios))
    return judge("explain-heuristic-cost", exact(value, 0.0), "max-of-4 seeds", scale=scale,
                 note=f"estimate / best bound = {10 ** value:.3g}x in FLOPs (median over seeds)")


def soundness(records: list[dict[str, Any]], scale: str) -> Verdict:
    """Harness explain-sound: the most inputs any bound claims beyond the brute-force truth."""
    excess = -math.inf
    for r in records:
        bounds = r["bounds"] if "bounds" in r else {n: s["bound"] for n, s in r["strategies"].items()}
        total = r["vocab"] ** r["k"]
        excess = max(excess, max((b - r["truth"]) * total for b in bounds.values()))
    return judge("explain-sound", exact(round(excess, 6), 0.5), f"{len(records)} models", scale=scale,
                 note="bound - truth in inputs, over every strategy and model with a brute-force truth")
