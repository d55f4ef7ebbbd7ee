"""Heuristic estimators against sampling at equal FLOPs, and which basis makes independence most accurate.

(a) Random He-initialised ReLU MLPs without biases on x ~ N(0, I), every (width, depth): the
    variance-normalised MSE of the final-layer mean, nmse = (Σ_u (G_u - Y_u)² - Σ_u Var_u / N_truth)
    / Σ_u Var_u (Y: the mean from N_truth samples, its own sampling error subtracted; Var: the
    single-sample variance, so Monte Carlo with N samples scores 1/N), against the FLOPs each
    estimator counts, for `mean`, `cov` (orders 1 and `order`), `cumulant` and Monte Carlo at 2^4..2^16.
(b) The rare-event variant: 3 ReLU layers, a linear layer with bias -3, a Heaviside (P ~ 1e-3).
(c) Independence in a basis (see `estimators_basis.py`): tms hidden layer, smollm2 residual stream.

Verdicts. Per (width, depth) and for (b): log10 of Monte Carlo's nmse at the best propagation
estimator's FLOPs (1/N, N = FLOPs / FLOPs per sample, at least one sample) over that estimator's
nmse; > 0 means independence beats sampling. The nmse is floored at the resolution of the ground
truth (so the ratio is a lower bound when an estimator is more accurate than the truth can tell);
CI: bootstrap over output units of every network. The best estimator is picked on the same data
(a small selection effect, noted). Calibration over the ensemble of networks (mean error, slope of
Y on G) is reported, not judged.

results.json: metrics["mlp"]["w{width}_d{depth}"][method] = {nmse, flops}; metrics["rare"][same];
metrics["calibration"][...][method] = {mean_error, slope, intercept};
metrics["basis"][subject][basis] = {mean_error, delta_loss, recon_delta_loss, per_repeat_delta_loss,
per_repeat_mean_error}.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from interplab import ui
from interplab.config import Config
from interplab.errors import did_you_mean
from interplab.estimate import Gaussian, Heaviside, estimate_mean, ops_of, run_samples
from interplab.experiments import estimators_figures as figs
from interplab.experiments.base import (
    Experiment,
    Result,
    Verdict,
    bootstrap_ci,
    decide,
    register,
)
from interplab.runtime import single_thread
from interplab.subjects.mlp import MLPConfig, build_mlp

PosInt = Annotated[int, Field(ge=1)]
Log2 = Annotated[int, Field(ge=0, le=26)]


class EstimatorsConfig(Config):
    """Settings of the estimators experiment; `interplab cruxes` runs `EstimatorsExperiment.small`."""

    widths: list[PosInt] = Field([32, 64, 128, 256], min_length=1)
    """Widths of the random MLPs in part (a)."""
    depths: list[PosInt] = Field([2, 4, 8], min_length=1)
    """Hidden ReLU layers of the random MLPs in part (a)."""
    networks: int = Field(2, ge=1)
    """Random networks per (width, depth); calibration pools them."""
    truth_log2: int = Field(22, ge=8, le=34)
    """Ground truth from 2^truth_log2 samples."""
    mc_log2: list[Log2] = Field([4, 6, 8, 10, 12, 14, 16], min_length=1)
    """Monte Carlo sample counts, as powers of two."""
    mc_repeats: int = Field(3, ge=1)
    """Independent Monte Carlo runs per sample count (their nmse is averaged)."""
    order: int = Field(4, ge=1, le=20)
    """Highest Mehler order of the `cov` and `cumulant` estimators (order 1 is always run too)."""
    rare: bool = True
    """Run part (b), the rare-event variant."""
    rare_widths: list[PosInt] = Field([64, 256], min_length=1)
    """Widths of the rare-event networks (3 ReLU layers, then bias -3 and a Heaviside)."""
    basis: bool = True
    """Run part (c), the basis study."""
    basis_subjects: list[str] = ["tms", "smollm2"]
    """Subjects of the basis study: tms (hidden layer of a neuron model) and/or an LM name
    (smollm2, tiny-llama, hf:...), studied at resid_post of its middle layer."""
    basis_samples: int = Field(8192, ge=64)
    """Activation samples of the toy subject the bases are fitted on, and as many evaluated."""
    lm_samples: int = Field(2048, ge=16)
    """Tokens of the LM the bases are fitted on, and as many evaluated (each evaluation is a forward pass)."""
    basis_repeats: int = Field(12, ge=8)
    """Independent permutations per basis: the first third (at least 2) rank the bases, the verdict's
    bootstrap runs over the rest (at least 6, so that its CI is more than [min, max])."""
    tms: dict[str, Any] = {"n_features": 20, "n_hidden": 8, "variant": "neuron", "density": [0.05],
                           "importance_decay": 1.0, "steps": 3000, "lr": 3e-3}
    """Config of the tms subject of the basis study (one instance, more features than neurons)."""
    lm_seq_len: int = Field(64, ge=4)
    """Tokens per window for the LM basis study."""
    sae_steps: int = Field(400, ge=1)
    """Steps of the TopK SAE fitted for the basis study."""
    seed: int = 0
    """Seed of the networks, samples and permutations."""

    @field_validator("basis_subjects")
    @classmethod
    def _basis_subjects(cls, v: list[str]) -> list[str]:
        choices = basis_subject_choices()
        shown = ["tms", *(c if c != "hf" else "hf:<local folder or hub id>" for c in choices)]
        for name in v:
            if name == "tms" or (name.startswith("hf:") and len(name) > 3) or (name != "hf" and name in choices):
                continue
            near = did_you_mean(name, [c for c in ["tms", *choices] if c != "hf" and c != name])
            raise ValueError(f"basis subject '{name}' is not supported{near}; choose tms or an LM subject, one of: "
                             f"{', '.join(shown)}")
        return v


def basis_subject_choices() -> list[str]:
    """The registered LM subjects (those of `interplab.subjects.lm`) the basis study can take."""
    from interplab.subjects import SUBJECTS

    return [n for n in SUBJECTS.names() if getattr(SUBJECTS.get(n), "__module__", "") == "interplab.subjects.lm"]


# ---------------------------------------------------------------- part (a) and (b)

def mlp_network(width: int, depth: int, seed: int) -> nn.Sequential:
    """The `mlp` subject's network: no biases, He-normal weights."""
    return build_mlp(MLPConfig(width=width, depth=depth, seed=seed), torch.Generator().manual_seed(seed))


def rare_network(width: int, seed: int) -> nn.Sequential:
    """3 ReLU layers, then a linear layer with bias -3 and a Heaviside: P(unit fires) ~ 1e-3."""
    body = build_mlp(MLPConfig(width=width, depth=3, seed=seed), torch.Generator().manual_seed(seed))
    layers = dict(body.named_children())
    last = nn.Linear(width, width)
    with torch.no_grad():
        last.weight.copy_(layers["linear3"].weight)
        last.bias.fill_(-3.0)
    layers["linear3"] = last
    layers.pop("out")
    return nn.Sequential(*layers.values(), Heaviside())


def methods(order: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """Propagation estimators run: result key -> (registry name, options)."""
    out = {"mean": ("mean", {}), "cov": ("cov", {"order": 1}), "cumulant": ("cumulant", {"order": 1})}
    if order > 1:
        out[f"cov_o{order}"] = ("cov", {"order": order})
        out[f"cumulant_o{order}"] = ("cumulant", {"order": order})
    return out


def _truth(net: nn.Sequential, width: int, log2: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Final-layer mean and single-sample variance from 2^log2 samples, and MC's FLOPs per sample."""
    ops = ops_of(net)
    st = run_samples(ops, Gaussian.standard(width, full=False), 1 << log2, seed=seed, sites=[ops[-1].name])
    name = ops[-1].name
    return st.means[name].numpy(), st.variances[name].numpy(), st.flops / st.n


def evaluate_network(net: nn.Sequential, width: int, cfg: EstimatorsConfig, seed: int) -> dict[str, Any]:
    """Per-unit squared errors and FLOPs of every estimator on one network, with its ground truth."""
    truth, var, per_sample = _truth(net, width, cfg.truth_log2, seed=10_000 + seed)
    out: dict[str, Any] = {"truth": truth, "var": var, "per_sample": per_sample, "methods": {}}
    g = Gaussian.standard(width)
    for key, (name, opts) in methods(cfg.order).items():
        est = estimate_mean(net, g, name, **opts)
        last = list(est.means)[-1]
        out["methods"][key] = {"est": est.means[last].numpy(), "flops": est.flops}
    ops = ops_of(net)
    for k in cfg.mc_log2:
        sq, flops = [], 0.0
        for r in range(cfg.mc_repeats):
            st = run_samples(ops, g, 1 << k, seed=seed * 7919 + 101 * k + r, sites=[ops[-1].name])
            sq.append((st.means[ops[-1].name].numpy() - truth) ** 2)
            flops = st.flops
        out["methods"][f"montecarlo_{1 << k}"] = {"sq": np.mean(sq, 0), "flops": flops, "n": 1 << k}
    return out


def nmse_parts(res: dict[str, Any], key: str) -> np.ndarray:
    """Per unit (n_units, 3): squared error, truth's sampling variance, single-sample variance."""
    m = res["methods"][key]
    sq = m["sq"] if "sq" in m else (m["est"] - res["truth"]) ** 2
    return np.stack([sq, res["var"] / res["n_truth"], res["var"]], -1)


def nmse(parts: np.ndarray, axis: int = 0) -> np.ndarray:
    """(Σ squared error - Σ truth's sampling variance) / Σ single-sample variance; NaN when no unit varies."""
    p = parts.sum(axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p[..., 2] > 0, (p[..., 0] - p[..., 1]) / p[..., 2], np.nan)


def summarise(results: list[dict[str, Any]], cfg: EstimatorsConfig, label: str) -> tuple[dict, Verdict]:
    """metrics[method] = {nmse, flops} over the networks of one setting, and its verdict."""
    for r in results:
        r["n_truth"] = 1 << cfg.truth_log2
    keys = list(results[0]["methods"])
    metrics: dict[str, Any] = {}
    for key in keys:
        parts = np.concatenate([nmse_parts(r, key) for r in results])  # (units, 3)
        metrics[key] = {"nmse": float(nmse(parts)), "flops": float(np.mean([r["methods"][key]["flops"] for r in results]))}
    props = [k for k in keys if not k.startswith("montecarlo")]
    per_sample = float(np.mean([r["per_sample"] for r in results]))
    units = sum(len(r["truth"]) for r in results)
    floor = math.sqrt(2.0 / units) / (1 << cfg.truth_log2)  # resolution of the noise-subtracted nmse

    def log_ratio(key: str, parts: np.ndarray, axis: int = 0) -> np.ndarray:
        n_eq = max(metrics[key]["flops"] / per_sample, 1.0)
        with np.errstate(invalid="ignore"):
            return np.log10((1.0 / n_eq) / np.maximum(nmse(parts, axis), floor))

    all_parts = {k: np.concatenate([nmse_parts(r, k) for r in results]) for k in props}
    best = max(props, key=lambda k: np.nan_to_num(float(log_ratio(k, all_parts[k])), nan=-np.inf))
    stat = float(log_ratio(best, all_parts[best]))
    ci = bootstrap_ci(all_parts[best], lambda x, axis=None: log_ratio(best, x, 1 if x.ndim == 3 else 0),
                      seed=cfg.seed)
    metrics["best"] = {"method": best, "log10_ratio_vs_mc": stat, "mc_flops_per_sample": per_sample,
                       "nmse_floor": floor}
    v = Verdict(
        crux="independence-based estimates beat sampling at equal FLOPs",
        statistic=stat, ci=(ci.low, ci.high), null=0.0, verdict=decide(ci, 0.0), subject=label,
        note=f"log10(MC nmse at equal FLOPs / {best} nmse); best of {len(props)} estimators, picked on the same data",
    )
    return metrics, v


def calibration(results: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Over every unit of every network: mean of (Y - G) in single-sample SDs, and Y regressed on G."""
    out = {}
    for key in keys:
        G = np.concatenate([r["methods"][key]["est"] for r in results])
        Y = np.concatenate([r["truth"] for r in results])
        sd = np.sqrt(np.concatenate([r["var"] for r in results]))
        slope, intercept = np.polyfit(G, Y, 1) if np.ptp(G) > 0 else (math.nan, math.nan)
        out[key] = {"mean_error": float(np.mean((Y - G) / sd)), "slope": float(slope), "intercept": float(intercept)}
    return out


def run_mlp(cfg: EstimatorsConfig) -> tuple[dict, dict, list[Verdict]]:
    """Part (a): metrics per setting, calibration per setting, verdicts."""
    metrics, calib, verdicts = {}, {}, []
    for depth in cfg.depths:
        for width in cfg.widths:
            label = f"w{width}_d{depth}"
            ui.info(f"estimators: mlp {label}")
            results = [evaluate_network(mlp_network(width, depth, cfg.seed + i), width, cfg, cfg.seed + i)
                       for i in range(cfg.networks)]
            metrics[label], v = summarise(results, cfg, f"mlp {label}")
            calib[label] = calibration(results, list(methods(cfg.order)))
            verdicts.append(v)
    return metrics, calib, verdicts


def run_rare(cfg: EstimatorsConfig) -> tuple[dict, list[Verdict]]:
    """Part (b): the rare-event networks."""
    metrics, verdicts = {}, []
    for width in cfg.rare_widths:
        label = f"w{width}_d3"
        ui.info(f"estimators: rare-event {label}")
        results = [evaluate_network(rare_network(width, cfg.seed + i), width, cfg, cfg.seed + i)
                   for i in range(cfg.networks)]
        metrics[label], v = summarise(results, cfg, f"rare-event {label}")
        metrics[label]["p_mean"] = float(np.mean([r["truth"].mean() for r in results]))
        v.crux = "independence-based estimates of rare-event probabilities beat sampling at equal FLOPs"
        verdicts.append(v)
    return metrics, verdicts


@register
class EstimatorsExperiment(Experiment):
    """Mean / covariance / cumulant propagation against Monte Carlo at equal FLOPs; damage of independence per basis."""

    name = "estimators"
    order = 4
    title = "Heuristic estimators: presumed independence against sampling, at equal compute"
    Config = EstimatorsConfig
    small: ClassVar[dict[str, Any]] = {
        "widths": [32, 64, 128], "depths": [2, 4, 8], "truth_log2": 18, "mc_log2": [4, 8, 12, 16], "mc_repeats": 2,
        "rare_widths": [64], "basis_subjects": ["tms"], "basis_samples": 4096, "basis_repeats": 12,
        "tms": {"n_features": 20, "n_hidden": 8, "variant": "neuron", "density": [0.05],
                "importance_decay": 1.0, "steps": 1500, "lr": 3e-3},
        "sae_steps": 300,
    }

    def run(self, cfg: EstimatorsConfig) -> Result:
        with single_thread():
            mlp, calib, verdicts = run_mlp(cfg)
            metrics: dict[str, Any] = {"mlp": mlp, "calibration": calib}
            if cfg.rare:
                metrics["rare"], rare_v = run_rare(cfg)
                verdicts += rare_v
            if cfg.basis and cfg.basis_subjects:
                from interplab.experiments.estimators_basis import run_basis

                metrics["basis"], metrics["basis_best"], basis_v = run_basis(cfg)
                verdicts += basis_v
        return figs.result(self, cfg, metrics, verdicts)
