"""How much of what a model does do n features explain? Loss and training compute recovered, per feature read.

The crux: reading a fixed number of features, does one explain more of a model with SAE latents or
with PCA components, and does any human-scale reading recover a non-negligible share of the
training compute? For each (subject, site) every decomposition gets a loss curve
(`interplab.metrics.loss_curve`): features ranked by first-order attribution on a ranking split,
x_n = mean + the top-n features' deviations spliced in on a disjoint scoring split, the fraction
of the mean-ablation gap recovered (and vs zero ablation, delta CE, KL), single-feature shares and
the n needed for 50% and 90%. On the compute ladder's model (`interplab.subjects.ladder`) each
point is also expressed as C_eq / C_model (`interplab.metrics.compute`).

Subjects: `tms/hidden` (a TMS "relu" model, whose hidden layer is linear in the features: the true
features' curve is exact at n = n_features), `planted/hidden` (a `readout` toy whose loss reads a
planted sparse dictionary), the ladder's largest model at resid_post and mlp_hidden of its middle
block, and SmolLM2 at resid_post and mlp_hidden of `lm_layer`. Methods: PCA (full rank, signed
codes), sign-split top-k PCA at the SAE's k (its full reconstruction is the full-width PCA reading),
a random orthonormal basis, the neuron basis at MLP hidden layers, the planted truth where known,
`refits` TopK SAEs (the SAE of the verdicts) and any `extra_methods`.

Verdicts (`interplab.verdicts.catalog.loss_explained`), each with its planted controls run through
the same pipeline (`loss_explained_controls`): lx-sae-pca-8 and -64, lx-share, lx-compute-64 and
lx-compute-full, and the harness check lx-truth.

Scale. `small` (what `interplab cruxes` runs): TMS, planted and the small ladder (6 rungs, the
largest a 1-layer d=64 model), 3 SAE refits of width 4d (at most 512), k = 8, 250 steps of 512
rows; SmolLM2 is left out (three SAE refits on a 576- and a 1536-dim site, and their curves through
a 135M-parameter model, do not fit the one-thread budget) and runs at the default scale, with the
default ladder (7 two-layer rungs up to d=128).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from interplab import ui
from interplab.config import Config
from interplab.experiments.base import Experiment, Result, register
from interplab.experiments.loss_explained_controls import controls
from interplab.experiments.loss_explained_figures import CAPTIONS, figures, summarise, table
from interplab.experiments.loss_explained_study import (
    Study,
    StudyResult,
    compute_evidence,
    run_study,
    sae_pca_evidence,
    share_evidence,
    toy_study,
    truth_evidence,
)
from interplab.metrics.feature_basis import TrueFeatures
from interplab.metrics.loss_curve import boot_sums, draw_splits, fractions, n_needed
from interplab.metrics.bootstrap import percentile_ci
from interplab.store import harvest_rows
from interplab.subjects import load_subject
from interplab.subjects.ladder import LadderConfig, ladder_rungs, rung_subject
from interplab.subjects.sites import layer_sites
from interplab.verdicts import Verdict, judge

TMS_DEFAULT = {"n_features": 64, "n_hidden": 16, "variant": "relu", "density": [0.03], "importance_decay": 0.97,
               "steps": 4000}
PLANTED_DEFAULT = {"codes": "sparse", "n_features": 256, "d": 64, "firing": "geometric", "decay": 0.99,
                   "mean_active": 4.0, "steps": 2048, "batch_size": 128}


class LossExplainedConfig(Config):
    """Settings of the loss-explained experiment (the default is the full study; see the module doc)."""

    subjects: list[Literal["tms", "planted", "ladder", "lm"]] = ["tms", "planted", "ladder", "lm"]
    """Subjects studied."""
    tms: dict[str, Any] = dict(TMS_DEFAULT)
    """Config of the `tms` subject (one instance, variant relu: its hidden layer is linear in the features)."""
    planted: dict[str, Any] = dict(PLANTED_DEFAULT)
    """Config of the planted `readout` subject."""
    ladder: dict[str, Any] = {"preset": "default"}
    """Config of the `ladder` subject (its largest rung is studied; every rung is trained)."""
    ladder_sites: list[Literal["resid_post", "mlp_hidden", "mlp_out", "attn_out"]] = ["resid_post", "mlp_hidden"]
    """Site kinds of the ladder's model, at its middle block."""
    lm: str = "smollm2"
    """Language-model subject."""
    lm_config: dict[str, Any] = {"seq_len": 128}
    """Overrides of the LM subject's config."""
    lm_layer: int = Field(15, ge=0)
    """Layer of the LM sites."""
    lm_sites: list[Literal["resid_post", "mlp_hidden", "mlp_out", "attn_out"]] = ["resid_post", "mlp_hidden"]
    """Site kinds of the LM."""
    extra_methods: list[str] = []
    """More decompositions on every site besides PCA, random, neurons and the TopK refits (e.g. ica, sae-relu)."""
    sae_k: int = Field(16, ge=1)
    """k of the TopK SAE (capped at the site's dimension); also the k of sign-split top-k PCA."""
    width_factor: int = Field(4, ge=1)
    """SAE width as a multiple of the site's dimension."""
    sae_max_width: int | None = Field(None, ge=1)
    """Cap on the SAE width (None: none)."""
    sae_steps: int = Field(1000, ge=1)
    """SAE training steps."""
    sae_batch_size: int = Field(1024, ge=2)
    """Rows per SAE step (1000 steps of 1024 rows: about 8 passes over 131k training rows)."""
    sae_lr: float | None = None
    """SAE learning rate (None: Gao et al.'s rule)."""
    sae_device: str = "cpu"
    """Where SAEs train."""
    refits: int = Field(3, ge=1)
    """TopK SAE refits (seeds seed, seed + 1, ...): the resampling unit of the verdicts."""
    toy_train_rows: int = Field(65_536, ge=64)
    """Training rows of the toy sites."""
    ladder_train_tokens: int = Field(131_072, ge=64)
    """Training rows (characters) of the ladder's sites."""
    lm_train_tokens: int = Field(131_072, ge=64)
    """Training rows (tokens) of the LM sites."""
    rank_batches: int = Field(4, ge=1)
    """Ranking-split batches."""
    score_batches: int = Field(16, ge=2)
    """Scoring-split batches (the bootstrap's units)."""
    toy_batch_size: int = Field(1024, ge=2)
    """Samples per toy batch."""
    seq_batch_size: int = Field(16, ge=1)
    """Windows per ladder batch."""
    lm_batch_size: int = Field(2, ge=1)
    """Windows per LM batch."""
    singles: int = Field(32, ge=0)
    """Features spliced alone per method: a uniform sample of the live ones (besides the top few)."""
    singles_top: int = Field(4, ge=0)
    """Top-ranked features also spliced alone."""
    max_rows: int = Field(16_384, ge=64)
    """Sequence positions per batched forward pass (bounds memory)."""
    ica_max_samples: int = Field(20_000, ge=2)
    """Rows FastICA is fitted on, when ica is in extra_methods."""
    controls: bool = True
    """Run the planted controls (without them every verdict is 'uncalibrated')."""
    n_boot: int = Field(1000, ge=10)
    """Bootstrap resamples of the scoring batches."""
    seed: int = 0
    """Seed of splits, fits and resampling."""


# --- studies -------------------------------------------------------------------------------------
def studies(cfg: LossExplainedConfig) -> Iterator[Study]:
    for name in cfg.subjects:
        if name == "tms":
            yield tms_study(cfg)
        elif name == "planted":
            yield planted_study(cfg)
        elif name == "ladder":
            yield from ladder_studies(cfg)
        else:
            yield from lm_studies(cfg)


def tms_study(cfg: LossExplainedConfig) -> Study:
    ui.info("loss-explained: preparing tms")
    subject = load_subject("tms", **{**cfg.tms, "variant": "relu"})
    W = subject.model.W.detach()[0]  # (m, n): feature j writes x_j W[:, j] into the linear hidden layer
    return toy_study("tms/hidden", subject, TrueFeatures(W.T, lambda x: x[:, 0, :]), cfg)


def planted_study(cfg: LossExplainedConfig) -> Study:
    ui.info("loss-explained: preparing the planted readout")
    subject = load_subject("readout", **cfg.planted)
    m = subject.ground_truth["features"].shape[0]
    return toy_study("planted/hidden", subject, TrueFeatures(subject.ground_truth["features"], lambda z: z[:, :m]), cfg)


def ladder_studies(cfg: LossExplainedConfig) -> Iterator[Study]:
    lcfg = LadderConfig(**cfg.ladder)
    rungs = ladder_rungs(lcfg)
    ui.info(f"loss-explained: training the compute ladder ({len(rungs)} rungs)")
    models = [(r.name, rung_subject(lcfg, i, rungs), r.flops) for i, r in enumerate(rungs)]
    subject = models[-1][1]
    layer = (rungs[-1].cfg.n_layers - 1) // 2
    sites = layer_sites(subject.sites, cfg.ladder_sites, layer, "ladder")
    rows = harvest_rows(subject, sites, cfg.ladder_train_tokens, cfg.seed, 64, cached=False)
    splits = draw_splits(subject, cfg.rank_batches, cfg.score_batches, cfg.seq_batch_size, cfg.seed)
    for site in sites:
        yield Study(f"ladder/{site}", subject, site, rows.pop(site), splits, None, models,
                    neurons=site.startswith("mlp_hidden"))


def lm_studies(cfg: LossExplainedConfig) -> Iterator[Study]:
    ui.info(f"loss-explained: loading {cfg.lm}")
    subject = load_subject(cfg.lm, **cfg.lm_config)
    sites = layer_sites(subject.sites, cfg.lm_sites, cfg.lm_layer, cfg.lm)
    rows = harvest_rows(subject, sites, cfg.lm_train_tokens, cfg.seed, 16, cached=True)
    splits = draw_splits(subject, cfg.rank_batches, cfg.score_batches, cfg.lm_batch_size, cfg.seed)
    for site in sites:
        yield Study(f"{cfg.lm}/{site}", subject, site, rows.pop(site), splits, neurons=site.startswith("mlp_hidden"))


# --- metrics -------------------------------------------------------------------------------------
def study_metrics(result: StudyResult, cfg: LossExplainedConfig) -> dict[str, Any]:
    """Every curve's summary, the SAE refits' mean curve, and (ladder) compute-equivalents."""
    out: dict[str, Any] = {"d": result.d, "fit_seconds": result.fit_seconds,
                           "methods": {m: c.summary(cfg.n_boot, cfg.seed) for m, c in result.curves.items()}}
    curves = [result.curves[f] for f in result.refits]
    pooled = np.mean([fractions(c.pooled()) for c in curves], axis=0)
    boots = np.mean([fractions(boot_sums(c.batches, cfg.n_boot, cfg.seed)) for c in curves], axis=0)  # (B, J)
    ns = curves[0].ns
    recon = [out["methods"][f]["recon"]["frac_mean"] for f in result.refits]
    out["sae"] = {"ns": ns, "frac_mean": pooled.tolist(), "refits": len(curves),
                  "frac_mean_ci": [list(percentile_ci(boots[:, j])) for j in range(len(ns))],
                  "n50": n_needed(pooled, ns, 0.5), "n90": n_needed(pooled, ns, 0.9), "recon_frac": float(np.mean(recon))}
    if result.ladder is not None:
        out["ladder"] = result.ladder.to_dict()
        out["compute"] = {}
        for m, s in out["methods"].items():
            loss = np.array(s["delta_ce"], dtype=float) + s["loss_clean"]
            lf, where = result.ladder.log10_fraction(loss)
            rl, rw = result.ladder.log10_fraction(s["recon"]["delta_ce"] + s["loss_clean"])
            out["compute"][m] = {"ns": s["ns"], "log10_fraction": lf.tolist(), "where": where.tolist(),
                                 "recon": float(rl), "recon_where": int(rw)}
    return out


# --- verdicts ------------------------------------------------------------------------------------
class _Controls:
    """Each (crux, method)'s controls, computed on first use (cached across runs by `cached_evidence`)."""

    def __init__(self, cfg: LossExplainedConfig):
        self.cfg, self.done = cfg, {}

    def __call__(self, crux: str, method: str = "sae") -> tuple[Any, Any]:
        if not self.cfg.controls:
            return None, None
        if (crux, method) not in self.done:
            ui.info(f"loss-explained: planted controls of {crux} ({method})")
            self.done[crux, method] = controls(crux, self.cfg, method)
        return self.done[crux, method]


def verdicts_for(result: StudyResult, cfg: LossExplainedConfig, scale: str, ctrl: _Controls) -> list[Verdict]:
    out = []
    for n in (8, 64):
        ev = sae_pca_evidence(result, n, cfg)
        if ev is not None:
            note = (f"frac at n={n}: SAE refits {np.round(ev.extra['frac_sae'], 3).tolist()}, PCA "
                    f"{ev.extra['frac_pca']:.3g}; > 0 favours the SAE")
            out.append(judge(f"lx-sae-pca-{n}", ev, result.key, *ctrl(f"lx-sae-pca-{n}"), scale=scale, note=note))
    ev = share_evidence(result, cfg)
    if ev is not None:
        note = (f"median single share: SAE refits {np.round(ev.extra['median_share_sae'], 5).tolist()}, PCA "
                f"{ev.extra['median_share_pca']:.4g}; < 0 means under 1% and under PCA's")
        out.append(judge("lx-share", ev, result.key, *ctrl("lx-share"), scale=scale, note=note))
    for which, crux in (("n64", "lx-compute-64"), ("full", "lx-compute-full")):
        for method, label in (("sae", "SAE"), ("pca", "PCA" if which == "n64" else "PCA top-k")):
            ev = compute_evidence(result, which, method, cfg)
            if ev is not None:
                below = sum(w == -1 for w in ev.extra["where"])
                note = (f"log10 C_eq/C_model; {below} of {len(ev.extra['where'])} fits below the ladder (their value "
                        f"is its floor: an upper bound); null -2 is 1% of the training compute; controls read with {label}")
                out.append(judge(crux, ev, f"{result.key} · {label}", *ctrl(crux, method), scale=scale, note=note))
    ev = truth_evidence(result)
    if ev is not None:
        out.append(judge("lx-truth", ev, result.key, scale=scale, note="planted features, all read"))
    return out


@register
class LossExplainedExperiment(Experiment):
    """Loss and training compute recovered per feature read, SAE against PCA, with planted controls."""

    name = "loss-explained"
    order = 6
    title = "How much of what the model does do n features explain? Loss and compute recovered, SAE vs PCA"
    Config = LossExplainedConfig
    small: ClassVar[dict[str, Any]] = {
        "subjects": ["tms", "planted", "ladder"], "ladder": {"preset": "small"},
        "tms": {**TMS_DEFAULT, "steps": 2000, "batch_size": 256}, "sae_k": 8, "sae_steps": 250, "sae_batch_size": 512,
        "sae_lr": 5e-3, "sae_max_width": 512,
        "toy_train_rows": 16_384, "ladder_train_tokens": 16_384, "rank_batches": 2, "score_batches": 8,
        "seq_batch_size": 8, "singles": 24, "n_boot": 500,
    }

    def run(self, cfg: LossExplainedConfig) -> Result:
        metrics: dict[str, Any] = {}
        verdicts: list[Verdict] = []
        ctrl = _Controls(cfg)
        for study in studies(cfg):
            result = run_study(study, cfg)
            metrics[study.key] = study_metrics(result, cfg)
            verdicts += verdicts_for(result, cfg, self.scale, ctrl)
        return Result(
            experiment=self.name, title=self.title, config=cfg.model_dump(mode="json"), seed=cfg.seed,
            metrics=metrics, verdicts=verdicts, tables={"curves": table(metrics)}, figures=figures(metrics),
            captions=CAPTIONS, summary=summarise(verdicts, metrics),
        )
