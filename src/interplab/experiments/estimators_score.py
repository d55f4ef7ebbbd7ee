"""One pipeline from a family of random networks to the evidence of est-mlp / est-rare.

    ev, metrics, scored = network_evidence(lambda s: mlp_network(64, 4, s), width=64, cfg=cfg)

The unit is the random network. Per family (a (width, depth) setting, or a planted control):
`ranking_networks` networks pick the propagation estimator with the best mean advantage, then
`networks` other networks are scored with that estimator, one value each, and `from_refits` gives a
t interval over them. Real subjects and both controls go through this function unchanged.

Per network:
- the ground truth is K = `truth_chunks` independent chunks of 2^truth_log2 / K samples; the
  estimator's nmse = Σ_u (G_u - μ_u)² / Σ_u Var_u is estimated without bias by the U-statistic
  mean_{j≠k} Σ_u (G_u - m_ju)(G_u - m_ku) / Σ_u Var_u over chunk means m (no noise subtraction, and
  correlated output units are handled), its SE by the jackknife over chunks;
- the advantage is log10(baseline / nmse_up), nmse_up = max(nmse, 0) + 2·SE: where the estimator is
  more accurate than the truth can resolve, the truth's resolution stands in for its error, so the
  value is a lower bound, never a point below the resolution (review section B);
- baseline = the better at the estimator's FLOPs of Monte Carlo (1/N, N = FLOPs / FLOPs per sample,
  at least one sample) and the constant estimate 0 (its nmse from the same chunks), which beats
  sampling on events rarer than 1/N.
Monte Carlo is also run (on the ranking networks) at 2^mc_log2 samples, for the figure: its
measured nmse should follow 1/N.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from interplab.estimate import Gaussian, estimate_mean, ops_of, run_samples
from interplab.experiments.estimators_nets import methods
from interplab.verdicts import Evidence, from_refits

RANKING_SEED = 10_000  # ranking networks are drawn from seeds apart from the scored ones


@dataclass
class Truth:
    """A network's output mean from K independent chunks of samples."""

    means: np.ndarray  # (K, units) chunk means
    var: np.ndarray  # (units,) single-sample variance (mean of the chunks' unbiased variances)
    per_sample: float  # Monte Carlo's FLOPs per sample

    @property
    def mean(self) -> np.ndarray:
        return self.means.mean(0)  # (units,)


def ground_truth(net: nn.Sequential, width: int, log2: int, chunks: int, seed: int) -> Truth:
    """2^log2 samples in `chunks` independent chunks (own seeds), statistics of the last op's output."""
    ops = ops_of(net)
    site = ops[-1].name
    n = (1 << log2) // chunks
    means, variances, flops = [], [], 0.0
    for k in range(chunks):
        st = run_samples(ops, Gaussian.standard(width, full=False), n, seed=seed * 7919 + 104_729 * k + 1,
                         sites=[site])
        means.append(st.means[site].double().numpy())  # (units,)
        variances.append(st.variances[site].double().numpy())  # (units,)
        flops += st.flops
    return Truth(np.stack(means), np.mean(variances, 0), flops / (n * chunks))


def nmse_stats(estimate: np.ndarray, truth: Truth) -> tuple[float, float]:
    """Unbiased nmse of `estimate` (units,) against the truth's chunks, and its jackknife SE."""
    d = np.asarray(estimate, dtype=float)[None, :] - truth.means  # (K, units)
    k = d.shape[0]
    denom = float(truth.var.sum())
    if denom <= 0:
        return math.nan, math.nan
    s = d.sum(0)  # (units,)
    q = np.einsum("ku,ku->k", d, d)  # (K,)
    u = (s @ s - q.sum()) / (k * (k - 1))
    s_minus = s[None, :] - d  # (K, units) sums without chunk k
    u_minus = (np.einsum("ku,ku->k", s_minus, s_minus) - (q.sum() - q)) / ((k - 1) * (k - 2))  # (K,)
    se = math.sqrt((k - 1) / k * float(np.sum((u_minus - u_minus.mean()) ** 2)))
    return float(u / denom), se / denom


def advantage(nmse: float, se: float, flops: float, per_sample: float, zero: float) -> tuple[float, str]:
    """log10(baseline / nmse_up) and which baseline was the better ("montecarlo" or "zero")."""
    mc = 1.0 / max(flops / per_sample, 1.0)
    base, kind = (mc, "montecarlo") if mc <= zero else (max(zero, 1e-300), "zero")
    up = max(nmse, 0.0) + 2.0 * se
    if not (math.isfinite(up) and up > 0):
        return math.nan, kind
    return math.log10(base / up), kind


def evaluate_network(net: nn.Sequential, width: int, cfg: Any, seed: int, mc: bool = False) -> dict[str, Any]:
    """Every propagation estimator on one network: nmse, SE, FLOPs, advantage; Monte Carlo if `mc`."""
    truth = ground_truth(net, width, cfg.truth_log2, cfg.truth_chunks, seed)
    zero, zero_se = nmse_stats(np.zeros_like(truth.mean), truth)
    out: dict[str, Any] = {"truth": truth.mean, "var": truth.var, "per_sample": truth.per_sample,
                           "zero": zero, "methods": {}}
    g = Gaussian.standard(width)
    for key, (name, opts) in methods(cfg.order).items():
        est = estimate_mean(net, g, name, **opts)
        guess = list(est.means.values())[-1].double().numpy()  # (units,)
        nmse, se = nmse_stats(guess, truth)
        adv, base = advantage(nmse, se, est.flops, truth.per_sample, zero)
        out["methods"][key] = {"est": guess, "nmse": nmse, "se": se, "flops": est.flops, "advantage": adv,
                               "baseline": base, "resolved": nmse > 2 * se}
    if mc:
        ops = ops_of(net)
        for log2 in cfg.mc_log2:
            runs = [run_samples(ops, Gaussian.standard(width, full=False), 1 << log2,
                                seed=seed * 6133 + 101 * log2 + r + 7, sites=[ops[-1].name])
                    for r in range(cfg.mc_repeats)]
            nmses = [nmse_stats(st.means[ops[-1].name].double().numpy(), truth)[0] for st in runs]
            out["methods"][f"montecarlo_{1 << log2}"] = {"nmse": float(np.mean(nmses)), "flops": runs[0].flops,
                                                         "n": 1 << log2}
    return out


def rank(results: list[dict[str, Any]], keys: list[str]) -> str:
    """The estimator with the best mean advantage over the ranking networks."""
    def score(key: str) -> float:
        vals = [r["methods"][key]["advantage"] for r in results]
        vals = [v for v in vals if math.isfinite(v)]
        return float(np.mean(vals)) if vals else -math.inf

    return max(keys, key=score)


def network_evidence(make_net: Callable[[int], nn.Sequential], width: int, cfg: Any
                     ) -> tuple[Evidence, dict[str, Any], list[dict[str, Any]]]:
    """Rank the estimators on ranking networks, score the winner on fresh ones: evidence, metrics, results."""
    keys = list(methods(cfg.order))
    ranking = [evaluate_network(make_net(cfg.seed + RANKING_SEED + r), width, cfg, cfg.seed + RANKING_SEED + r,
                                mc=True) for r in range(cfg.ranking_networks)]
    best = rank(ranking, keys)
    scored = [evaluate_network(make_net(cfg.seed + i), width, cfg, cfg.seed + i) for i in range(cfg.networks)]
    picked = [r["methods"][best] for r in scored]
    values = [m["advantage"] for m in picked]
    unresolved = sum(not m["resolved"] for m in picked)
    extra = {"method": best, "unresolved": unresolved, "baselines": [m["baseline"] for m in picked],
             "nmse": [m["nmse"] for m in picked], "se": [m["se"] for m in picked]}
    ev = from_refits(values, 0.0, how=f"t over {len(values)} scored random networks; {best} ranked best on "
                     f"{len(ranking)} other networks", extra=extra)
    return ev, _metrics(ranking, scored, keys, best, ev), scored


def _metrics(ranking: list[dict[str, Any]], scored: list[dict[str, Any]], keys: list[str], best: str,
             ev: Evidence) -> dict[str, Any]:
    """metrics[method] = {nmse, se, flops, advantage} (means over scored networks), Monte Carlo, best."""
    out: dict[str, Any] = {}
    for key in keys:
        ms = [r["methods"][key] for r in scored]
        out[key] = {f: float(np.nanmean([m[f] for m in ms])) for f in ("nmse", "se", "flops", "advantage")}
    for key in (k for k in ranking[0]["methods"] if k.startswith("montecarlo")):
        ms = [r["methods"][key] for r in ranking]
        out[key] = {"nmse": float(np.mean([m["nmse"] for m in ms])), "flops": float(ms[0]["flops"])}
    per_sample = float(np.mean([r["per_sample"] for r in scored]))
    out["zero"] = {"nmse": float(np.mean([r["zero"] for r in scored]))}
    out["best"] = {"method": best, "log10_advantage": ev.statistic, "ci": list(ev.ci),
                   "mc_flops_per_sample": per_sample, "resolution": 2 * out[best]["se"],
                   "unresolved": ev.extra["unresolved"], "networks": len(scored), "ranking_networks": len(ranking),
                   "per_network": ev.extra["per_fit"]}
    return out


def calibration(results: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Over every unit of every network: mean of (Y - G) in single-sample SDs, and Y regressed on G."""
    out = {}
    for key in keys:
        est = np.concatenate([r["methods"][key]["est"] for r in results])
        y = np.concatenate([r["truth"] for r in results])
        sd = np.sqrt(np.concatenate([r["var"] for r in results]))
        ok = sd > 0
        slope, intercept = np.polyfit(est, y, 1) if np.ptp(est) > 0 else (math.nan, math.nan)
        out[key] = {"mean_error": float(np.mean((y[ok] - est[ok]) / sd[ok])), "slope": float(slope),
                    "intercept": float(intercept)}
    return out
