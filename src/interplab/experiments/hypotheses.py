"""The four superposition hypotheses, each measured with a CI and set against a null model.

- 1a neurons are polysemantic, 1b features span several neurons, 2a features are sparse (fire with
  probability well below 1/2), 2b there are more features than dimensions. Definitions:
  `interplab.metrics.hypotheses` and `reference/superposition.md`.

Subjects:
- `tms` neuron model (10 features, 5 ReLU neurons, importance 0.75^i) at density 1.0 and 0.05,
  `tms_seeds` independently trained instances each (one batched model); ground truth W and codes.
  The bootstrap unit is the instance: each statistic is computed per trained model.
- `synthetic`: a planted dictionary (more features than dimensions); ground truth features and codes.
  The bootstrap unit is the neuron (1a), the feature (1b, 2a); 2b is exact (n / d, no CI).
- `smollm2` `mlp_hidden` and `resid_post` at `lm_layer`: SAE latents (`decompose`'s sae-topk) are the
  PROXY for features; see `hypotheses_lm`.

Nulls: for 1a/1b a random rotation of the neuron basis (the statistic averaged over
`n_rotations` Haar rotations: what a basis with no privileged directions shows); for 2a the same
pipeline on a Gaussian with the codes' mean and covariance (a code is "on" when positive); for 2b on
the toys the no-superposition value 1 feature per dimension. "supported" needs the whole CI on the
supporting side of the null (`decide`).

Why 1a uses activation mass with the positive part on ReLU neurons (measured on 6 seeds per density,
10k steps): with c_ji = W_ji^2 Var(x_i) taken literally (sign-blind), the sparse (0.05) neuron
model's neurons have median PR 3.4-4.7 against 2.9-4.4 for random rotations of the same weights,
and the fraction with PR >= 1.5 is 0.8-1.0 against 0.95-1.0: 1a comes out inconclusive or even
"not supported". Half of those weights are negative, and a feature with W_ji < 0 never makes
neuron j fire (it only inhibits it), so it carries none of the neuron's activation mass, the
reference's alternative definition. Counting only W_ji > 0, the sparse model's neurons carry
median 2.5-3.1 features against 1.9-2.3 under rotation (fraction 1.0 against 0.70-0.82), and the
dense model's carry exactly one (fraction 0 against 0.40-0.46). No threshold was changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from pydantic import Field

from interplab import ui
from interplab.config import Config
from interplab.experiments.base import (
    Experiment,
    Result,
    Verdict,
    bootstrap_ci,
    decide,
    register,
)
from interplab.experiments.hypotheses_figures import forest_figure
from interplab.metrics import hypotheses as H

XLABELS = {  # (crux, group) -> x label of the forest plot panel
    ("1a", "toy"): "fraction of live neurons with PR >= 1.5 (features per neuron)",
    ("1b", "toy"): "fraction of represented features with PR >= 1.5 (neurons per feature)",
    ("2a", "toy"): "median firing probability p_i (lower = sparser; supported when below the null)",
    ("2b", "toy"): "represented features per dimension",
    ("1a", "lm"): "fraction of live neurons with PR >= 1.5 over SAE latents (proxy)",
    ("1b", "lm"): "fraction of SAE latents (proxy) with PR >= 1.5 over neurons",
    ("2a", "lm"): "FVU(PCA rank k) - FVU(SAE top-k), held out (higher = sparse structure)",
    ("2b", "lm"): "FVU(narrow SAE) - FVU(wide SAE) at equal k, held out",
}
REPRESENTED = 0.5  # a tms feature is represented when ||W_i|| exceeds this (as in superposition-intro)
TMS_SETUP: dict[str, Any] = {"n_features": 10, "n_hidden": 5, "variant": "neuron", "importance_decay": 0.75}


class HypothesesConfig(Config):
    """Settings of the `hypotheses` experiment."""

    tms_densities: list[float] = [1.0, 0.05]
    """Feature densities (1 - S) of the tms neuron models studied, one subject each."""
    tms_seeds: int = Field(6, ge=2)
    """Independently trained neuron models per density (the bootstrap unit)."""
    tms_steps: int = Field(10_000, ge=1)
    """Training steps of the neuron models (the dense one needs ~10k to become monosemantic)."""
    tms_batch_size: int = Field(1024, ge=1)
    """Training batch size of the neuron models."""
    tms_samples: int = Field(20_000, ge=100)
    """Inputs drawn per tms instance to measure firing probabilities."""
    synthetic: dict[str, Any] = {"n_features": 256, "d": 64, "mean_active": 4.0}
    """Settings of the `synthetic` subject (planted dictionary)."""
    synthetic_samples: int = Field(20_000, ge=100)
    """Samples of the synthetic subject used for firing probabilities and the Gaussian null."""
    lm: bool = True
    """Include the real LM (SAE latents as a proxy for features)."""
    lm_name: str = "smollm2"
    """Registered LM subject."""
    lm_layer: int = Field(6, ge=0)
    """Layer of the LM sites (a middle layer of SmolLM2-135M's 30)."""
    lm_sites: list[str] = ["mlp_hidden", "resid_post"]
    """Site kinds studied at `lm_layer`."""
    lm_tokens: int = Field(24_000, ge=512)
    """Activations harvested per site; the last `lm_eval_fraction` are held out."""
    lm_eval_fraction: float = Field(0.25, gt=0, lt=1)
    """Held-out share of the harvested tokens (FVU is measured there)."""
    sae_k: int = Field(16, ge=1)
    """Active latents per token of the sae-topk fits (the L0 at which PCA and widths are compared)."""
    sae_widths: list[int] = [1, 8]
    """Dictionary widths in multiples of d for the 2b width test (first: narrow; last: used for 1a/1b/2a)."""
    sae_steps: int = Field(1000, ge=1)
    """Optimizer steps of every SAE fit."""
    sae_batch_size: int = Field(1024, ge=1)
    """Tokens per SAE step."""
    block: int = Field(64, ge=1)
    """Consecutive held-out tokens per bootstrap block (tokens of one window are correlated)."""
    n_rotations: int = Field(50, ge=1)
    """Random rotations averaged for the 1a/1b null."""
    n_boot: int = Field(2000, ge=100)
    """Bootstrap resamples of every CI."""
    seed: int = 0
    """Seed of training, sampling, nulls and bootstraps."""


class Finding(NamedTuple):
    """One (hypothesis, subject) measurement before it becomes a Verdict."""

    verdict: Verdict
    extra: dict[str, float]  # secondary numbers for results.json (medians, exact ground-truth values)


def finding(crux: str, subject: str, units: np.ndarray, null: float, seed: int, n_boot: int, note: str,
            stat: Callable[..., Any] = np.mean, higher_is_support: bool = True,
            extra: dict[str, float] | None = None) -> Finding:
    """Statistic = stat(units); percentile-bootstrap CI over units; verdict against `null`."""
    units = np.asarray(units, dtype=float)
    value = float(stat(units))
    ci = bootstrap_ci(units, stat=stat, n_boot=n_boot, seed=seed)
    word = decide(ci, null, higher_is_support)
    v = Verdict(crux=crux, statistic=value, ci=(ci.low, ci.high), null=float(null), verdict=word,
                subject=subject, note=note)
    return Finding(v, extra or {})


def _median(x: np.ndarray, axis: int | None = None) -> Any:
    return np.median(x, axis=axis)


# --- tms neuron model ---------------------------------------------------------------------------
def tms_findings(cfg: HypothesesConfig) -> list[Finding]:
    """1a, 1b, 2a, 2b on each density's trained neuron models (ground truth W and codes)."""
    from interplab.subjects import load_subject
    from interplab.subjects.tms import sample_tms

    S = cfg.tms_seeds
    per = [float(d) for d in cfg.tms_densities for _ in range(S)]
    ui.info(f"hypotheses: training {len(per)} tms neuron models ({cfg.tms_steps} steps)")
    subject = load_subject("tms", **TMS_SETUP, density=per, steps=cfg.tms_steps,
                           batch_size=cfg.tms_batch_size, seed=cfg.seed)
    W = subject.model.W.detach().double()  # (inst, m, n)
    gen = torch.Generator().manual_seed(cfg.seed + 11)
    x = sample_tms(cfg.tms_samples, subject.model.density, TMS_SETUP["n_features"], gen)  # (N, inst, n)
    n_feat, n_hid = TMS_SETUP["n_features"], TMS_SETUP["n_hidden"]
    out: list[Finding] = []
    for g, dens in enumerate(cfg.tms_densities):
        name = f"tms neuron model {n_feat}→{n_hid}, density {dens:g}"
        rows = [_tms_instance(W[i], x[:, i].double(), gen, cfg.n_rotations) for i in range(g * S, (g + 1) * S)]
        col = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        note = f"mean over {S} trained instances, bootstrap over instances; "
        out += [
            finding("1a", name, col["1a"], col["1a_null"].mean(), cfg.seed, cfg.n_boot,
                    note + "null: random rotations of the neuron basis", extra={"median_pr": col["1a_median"].mean()}),
            finding("1b", name, col["1b"], col["1b_null"].mean(), cfg.seed, cfg.n_boot,
                    note + "null: random rotations of the neuron basis", extra={"median_pr": col["1b_median"].mean()}),
            finding("2a", name, col["2a"], col["2a_null"].mean(), cfg.seed, cfg.n_boot,
                    note + "statistic: median p_i (lower = sparser); null: Gaussian codes with the same mean and "
                    "covariance, on when positive", higher_is_support=False,
                    extra={"fraction_p_below_half": col["2a_fraction"].mean()}),
            finding("2b", name, col["2b"], 1.0, cfg.seed, cfg.n_boot,
                    note + f"statistic: features with ||W_i|| > {REPRESENTED} per neuron; null: 1, the most "
                    "features m dims hold without superposition",
                    extra={"n_over_m": n_feat / n_hid, "dims_per_feature_D*": float((1 / col["2b_frob"]).mean())}),
        ]
    return out


def _tms_instance(W: torch.Tensor, codes: torch.Tensor, gen: torch.Generator, n_rot: int) -> dict[str, float]:
    """Per-instance statistics and nulls; W (m, n), codes (N, n)."""
    dirs = W.T  # (n, m): feature i's weights into the neurons
    mom = codes.square().mean(0)  # (n,) E[x_i^2]
    st1a = H.neuron_polysemanticity(dirs, mom, rectified=True)
    st1b = H.feature_polysemanticity(dirs)
    p = H.firing_probability(codes)  # (n,)
    p_null = H.firing_probability(H.gaussian_like(codes, codes.shape[0], gen).clamp(min=0))  # (n,)
    return {
        "1a": st1a.fraction, "1a_median": st1a.median,
        "1a_null": float(H.rotation_null(lambda d: H.neuron_polysemanticity(d, mom, True).fraction, dirs, n_rot,
                                         gen).mean()),
        "1b": st1b.fraction, "1b_median": st1b.median,
        "1b_null": float(H.rotation_null(lambda d: H.feature_polysemanticity(d).fraction, dirs, n_rot, gen).mean()),
        "2a": H.sparsity(p).median, "2a_fraction": H.sparsity(p).fraction, "2a_null": H.sparsity(p_null).median,
        "2b": float((W.norm(dim=0) > REPRESENTED).double().sum() / W.shape[0]),
        "2b_frob": H.features_per_dimension(W),
    }


# --- synthetic ----------------------------------------------------------------------------------
def synthetic_findings(cfg: HypothesesConfig) -> list[Finding]:
    """Ground truth of the planted dictionary; activation dims play the neurons (no privileged basis)."""
    from interplab.subjects import load_subject
    from interplab.subjects.synthetic import sample_activations

    subject = load_subject("synthetic", **cfg.synthetic)
    gen = torch.Generator().manual_seed(cfg.seed + 13)
    codes = sample_activations(subject, cfg.synthetic_samples, gen).codes.double()  # (N, n)
    dirs = subject.ground_truth["features"].double()  # (n, d)
    n, d = dirs.shape
    name = f"synthetic {n} features in {d} dims"
    mom = codes.square().mean(0)  # (n,)
    st1a = H.neuron_polysemanticity(dirs, mom, rectified=False)
    st1b = H.feature_polysemanticity(dirs)
    null1a = H.rotation_null(lambda x: H.neuron_polysemanticity(x, mom, False).fraction, dirs, cfg.n_rotations, gen)
    null1b = H.rotation_null(lambda x: H.feature_polysemanticity(x).fraction, dirs, cfg.n_rotations, gen)
    p = H.firing_probability(codes).numpy()  # (n,)
    p_null = H.sparsity(H.firing_probability(H.gaussian_like(codes, codes.shape[0], gen).clamp(min=0))).median
    per_dim = float(H.features_per_dimension(dirs.T))
    exact = "exact ground truth (no sampling error): the CI is the value itself"
    return [
        finding("1a", name, (st1a.pr[st1a.live] >= H.POLY_THRESHOLD).double().numpy(), float(null1a.mean()),
                cfg.seed, cfg.n_boot, "bootstrap over activation dims; null: random rotations",
                extra={"median_pr": st1a.median}),
        finding("1b", name, (st1b.pr[st1b.live] >= H.POLY_THRESHOLD).double().numpy(), float(null1b.mean()),
                cfg.seed, cfg.n_boot, "bootstrap over features; null: random rotations",
                extra={"median_pr": st1b.median}),
        finding("2a", name, p, p_null, cfg.seed, cfg.n_boot, "median p_i, bootstrap over features; null: Gaussian "
                "codes with the same mean and covariance, on when positive", stat=_median, higher_is_support=False,
                extra={"fraction_p_below_half": H.sparsity(torch.from_numpy(p)).fraction}),
        finding("2b", name, np.array([per_dim]), 1.0, cfg.seed, cfg.n_boot, f"||F||²/d = n/d, {exact}; null 1",
                extra={"n_over_d": n / d}),
    ]


# --- experiment ---------------------------------------------------------------------------------
def verdict_table(findings: list[Finding]) -> dict[str, list]:
    rows = [[f.verdict.crux, f.verdict.subject, f.verdict.statistic, f.verdict.ci[0], f.verdict.ci[1],
             f.verdict.null, f.verdict.verdict] for f in findings]
    return {"columns": ["crux", "subject", "statistic", "CI low", "CI high", "null", "verdict"], "rows": rows}


def metrics_of(findings: list[Finding]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in findings:
        v = f.verdict
        out.setdefault(v.subject or "", {})[v.crux] = {
            "statistic": v.statistic, "ci": list(v.ci), "null": v.null, "verdict": v.verdict, **f.extra}
    return out


@register
class Hypotheses(Experiment):
    """1a, 1b, 2a, 2b on toy ground truth and on an LM (SAE latents as proxy), each against a null."""

    name = "hypotheses"
    order = 3
    title = "Polysemanticity, sparsity and superposition (1a, 1b, 2a, 2b) against a null"
    Config = HypothesesConfig
    small: ClassVar[dict[str, Any]] = {"tms_seeds": 4, "tms_samples": 8000, "synthetic_samples": 8000, "n_rotations": 30, "n_boot": 1000,
             "lm_sites": ["resid_post"], "lm_tokens": 4096, "sae_widths": [1, 4], "sae_steps": 150,
             "sae_batch_size": 512}

    def run(self, cfg: HypothesesConfig) -> Result:
        toy = tms_findings(cfg) + synthetic_findings(cfg)
        findings = list(toy)
        caveat = ""
        if cfg.lm:
            from interplab.experiments.hypotheses_lm import CAVEAT, lm_findings

            findings += lm_findings(cfg)
            caveat = " " + CAVEAT
        verdicts = [f.verdict for f in findings]
        n_toy = len(toy)
        cruxes = ("1a", "1b", "2a", "2b")
        figures = {f"forest_{c}": forest_figure(c, [(XLABELS[c, "toy"], verdicts[:n_toy]),
                                                    (XLABELS[c, "lm"], verdicts[n_toy:])]) for c in cruxes}
        captions = {f"forest_{c}": "Statistic (dot) and 95% bootstrap CI (bar), coloured by verdict; open diamond: "
                    "the same statistic on the null. Toys (ground truth) above, the LM (SAE latents as proxy) below."
                    for c in cruxes}
        captions["verdicts"] = "One row per (hypothesis, subject)." + caveat
        counts = {w: sum(v.verdict == w for v in verdicts) for w in ("supported", "not supported", "inconclusive")}
        summary = (f"{len(verdicts)} verdicts: {counts['supported']} supported, {counts['not supported']} not "
                   f"supported, {counts['inconclusive']} inconclusive." + caveat)
        return Result(experiment=self.name, title=self.title, config=cfg.model_dump(mode="json"), seed=cfg.seed,
                      metrics=metrics_of(findings), verdicts=verdicts, tables={"verdicts": verdict_table(findings)},
                      figures=figures, captions=captions, summary=summary)
