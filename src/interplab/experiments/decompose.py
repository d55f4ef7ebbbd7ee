"""Decompositions on one yardstick: SAEs against PCA, ICA, the neuron basis and random directions.

The crux: do sparse codes (SAEs) give more faithful and more interpretable features than PCA at a
matched budget of active codes per token? Every method is fitted on training-split activations
and scored by `interplab.metrics.evaluate` on the same held-out batches, with one mean-ablation
baseline per site (the mean of the training activations) shared by every method, at each budget k.

Subjects (one key each, "subject/site"):
- `synthetic/hidden`: a planted dictionary (ground truth: MMCS, MCC, firing F1);
- `tms/hidden`: the hidden ReLU layer of one TMS "neuron" model with more features than neurons
  at low density (superposition). Its ground truth is computed here: feature i alone puts
  x_i * ReLU(W[:, i]) in the hidden layer, so those are the true directions and the model's
  inputs the true codes;
- `{lm}/{site}.{layer}`: a real LM (SmolLM2-135M by default) at `lm_sites` of layer `lm_layer`.

Methods (keys of results): the registered names. Linear methods (identity, random, pca, ica) are
sparsified to k by sign-split top-k (Cunningham et al. 2023) under their plain name, and by rank
(first k components, signed codes) as "<name>-rank" when `linear_sparsify` lists "rank". Sign-split
top-k is the comparator of the verdicts: per token it keeps the k largest |coefficients|, which
for an orthonormal basis leaves the least error of any k of its components, so at equal L0 it is
never worse than the rank version and is the harder baseline for an SAE to beat.

Verdicts (`decompose_pipeline`, `decompose_verdicts`; definitions in
`interplab.verdicts.catalog.decompose`): per subject and k, the within-budget SAE with the lowest
FVU on training rows is chosen from the first seed's fits and refitted with `refits - 1` more
seeds; each aspect's statistic (pooled FVU, pooled loss increase, MCC, chance-adjusted
interpretability) is taken per refit against the deterministic PCA, and its CI is a t interval
over the refits plus the paired batch-bootstrap variance of their mean. Every verdict is judged
with its crux's planted positive and negative controls, built at the subject's dimension and run
through the same pipeline (`decompose_controls`); a crux whose controls fail is "uncalibrated".

results.json layout:
    metrics[subject][method] = {fvu, l0, dead_frac, ce_score_zero, ce_score_mean, delta_ce_nats,
        kl_score, bits_per_token, [mmcs, mcc, f1, interp_score], k, ci: {key: [low, high]},
        details: {scalar side numbers, per_batch_fvu, per_batch_delta_ce_nats}, fit_seconds,
        select_fvu, select_l0 (on training rows, for choosing the SAE),
        eval_seconds (the shared evaluation's time split evenly over the methods),
        [refits: the verdicts' SAE's headline numbers per seed], "k8": {the same at k = 8}, ...}
The top level holds the subject's largest k; each other k sits under "k<k>". A key the subject
does not define is null: synthetic has no loss (no CE scores), KL needs logits (LMs).

Scale. The default is the whole study (k 8 and 32, both sparsifications, every method on
SmolLM2 resid_post.15 and mlp_hidden.15, 1000 SAE steps of 4096 tokens, 5 refits); its
12288-wide SAEs on mlp_hidden dominate: about 67-127 CPU-hours of SAE training on one thread of
this project's CPU by the trainer's first-step estimates (bench/RESULTS.md, "SAE training at scale"), days on a
2-core CPU, so `--set sae_device=cuda` where a GPU is at hand. `small`, what
`interplab cruxes` runs, is a scale at which every control passes: k = 8 of 64 dimensions on
the toys (at k = 32 of 64 even planted sparse data favour PCA after a few hundred SAE steps, so
the FVU and loss controls fail there) and k = 32 of 576 on SmolLM2 resid_post.6; 4x-wide TopK
SAEs, 150 steps (toys) or 100 steps (LM) of 512 rows, 3 refits; identity, random, PCA and TopK on
the toys, PCA and TopK on the LM (8192 training tokens); 8 held-out batches (1024 rows on the toys,
one 64-token window on the LM). About 2.5 minutes on one thread with a fresh cache, controls included.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from interplab import ui
from interplab.config import Config
from interplab.decompose import DECOMPOSITIONS
from interplab.errors import UserError
from interplab.experiments.base import Experiment, Result, Verdict, register
from interplab.experiments.decompose_controls import Controls, Spec, spec_of
from interplab.experiments.decompose_figures import CAPTIONS, figures, headline, methods_table, summarise
from interplab.experiments.decompose_pipeline import (
    OPTIONAL,
    REQUIRED,
    Scored,
    Study,
    eval_batches,
    evidence,
    fit_study,
    score_study,
    site_acts,
    toy_study,
    variants,
)
from interplab.experiments.decompose_verdicts import verdicts_for
from interplab.metrics.downstream import first_position
from interplab.metrics.evaluate import EvalSettings
from interplab.metrics.interpretability import token_labels
from interplab.runtime import device
from interplab.store import harvest_rows
from interplab.subjects import load_subject
from interplab.subjects.sites import layer_sites

__all__ = ["OPTIONAL", "REQUIRED", "DecomposeConfig", "DecomposeExperiment"]

LINEAR = ("identity", "random", "pca", "ica")
ALL_METHODS = ["identity", "random", "pca", "ica", "sae-relu", "sae-topk", "sae-batchtopk", "sae-jumprelu"]
TMS_DEFAULT = {"n_features": 256, "n_hidden": 64, "variant": "neuron", "density": [1 / 64],
               "importance_decay": 1.0, "steps": 3000, "lr": 3e-3}


class DecomposeConfig(Config):
    """Settings of the decompose experiment. The default is the full study (hours on a 2-core CPU);
    `interplab cruxes` runs `DecomposeExperiment.small`."""

    methods: list[str] = list(ALL_METHODS)
    """Registered decompositions run on the toy subjects."""
    lm_methods: list[str] | None = None
    """Decompositions run on the LM sites (None: the same as `methods`)."""
    ks: list[int] = [8, 32]
    """Budgets of active codes per token on the toy subjects; the largest is the headline."""
    lm_ks: list[int] | None = None
    """Budgets on the LM sites (None: the same as `ks`)."""
    refits: int = Field(5, ge=1)
    """Fits of the verdicts' SAE with seeds seed, seed + 1, ... (the resampling unit of its CIs;
    at least 3 at the small scale). PCA is deterministic and fitted once."""
    linear_sparsify: list[Literal["topk", "rank"]] = ["topk", "rank"]
    """How linear methods meet the budget: 'topk' (sign-split, key '<name>') and/or 'rank' ('<name>-rank')."""
    width_factor: int = Field(8, ge=1)
    """SAE width as a multiple of the input dimension."""
    subjects: list[Literal["synthetic", "tms", "lm"]] = ["synthetic", "tms", "lm"]
    """Subjects studied."""
    synthetic: dict[str, Any] = {}
    """Overrides of the `synthetic` subject's config (default: 256 features in 64 dims, ~4 active)."""
    tms: dict[str, Any] = dict(TMS_DEFAULT)
    """Config of the `tms` subject: one instance, variant neuron, more features than neurons."""
    lm: str = "smollm2"
    """Language-model subject (e.g. "tiny-llama" for tests)."""
    lm_config: dict[str, Any] = {}
    """Overrides of the LM subject's config (e.g. {"seq_len": 64})."""
    lm_layer: int = Field(15, ge=0)
    """Layer of the LM sites (15 is the middle of SmolLM2's 30)."""
    lm_sites: list[Literal["resid_post", "mlp_hidden", "mlp_out", "attn_out"]] = ["resid_post", "mlp_hidden"]
    """Site kinds studied at `lm_layer`."""
    toy_train_samples: int = Field(131_072, ge=64)
    """Training activations per toy subject."""
    lm_train_tokens: int = Field(131_072, ge=64)
    """Training tokens harvested from the LM (train split; cached in the user cache for reruns)."""
    sae_steps: int = Field(1000, ge=1)
    """Optimizer steps of every SAE on the toy subjects."""
    lm_sae_steps: int | None = Field(None, ge=1)
    """Optimizer steps of every SAE on the LM sites (None: `sae_steps`)."""
    sae_batch_size: int = Field(4096, ge=2)
    """Tokens per SAE step."""
    sae_lr: float | None = Field(None, gt=0)
    """SAE learning rate (None: the trainer's width-dependent default)."""
    sae_device: str = "cpu"
    """Where the SAEs train ("cuda" on a GPU machine: the default scale's wide SAEs dominate the run)."""
    ica_max_samples: int = Field(20_000, ge=2)
    """Rows FastICA fits on."""
    ica_max_iter: int = Field(200, ge=1)
    """FastICA iterations."""
    eval_batches: int = Field(8, ge=2)
    """Held-out evaluation batches (the bootstrap resamples them)."""
    toy_eval_batch_size: int = Field(4096, ge=1)
    """Samples per evaluation batch of a toy subject."""
    lm_eval_windows: int = Field(8, ge=1)
    """Text windows per evaluation batch of the LM."""
    budget_slack: float = Field(0.1, ge=0)
    """An SAE whose L0 is a mean target (ReLU, JumpReLU, BatchTopK) enters the verdict only if its
    held-out L0 is at most k (1 + budget_slack)."""
    n_boot: int = Field(1000, ge=0)
    """Bootstrap resamples for every CI."""
    seed: int = 0
    """Seed of training data, evaluation data, fits and bootstraps."""

    @field_validator("methods", "lm_methods")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        import interplab.decompose  # noqa: F401  (registers the methods)

        for name in v or []:
            DECOMPOSITIONS.get(name)  # unknown name: one clear error with the choices
        return v

    @field_validator("sae_device")
    @classmethod
    def _device(cls, v: str) -> str:
        device(v)  # a missing GPU is refused now, not after the harvest and the linear fits
        return v

    @field_validator("ks", "lm_ks")
    @classmethod
    def _ks(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v or any(k < 1 for k in v):
            raise ValueError("ks needs at least one budget, each >= 1")
        return sorted(set(v))


# --- data ----------------------------------------------------------------------------------------
def studies(cfg: DecomposeConfig) -> Iterator[Study]:
    """The (subject, site) pairs, built one subject at a time so only one is in memory."""
    for name in cfg.subjects:
        if name == "lm":
            yield from lm_studies(cfg)
            continue
        ui.info(f"decompose: preparing {name}")
        subject = load_subject(name, **({**TMS_DEFAULT, **cfg.tms} if name == "tms" else cfg.synthetic))
        truth, cols = subject.ground_truth.get("features"), None
        if name == "tms":  # feature i alone writes x_i * ReLU(W[:, i]) into the hidden layer
            if subject.model.n_instances != 1:
                raise UserError("decompose studies one TMS instance; give `tms` a single density")
            W = subject.model.W.detach()[0]  # (m, n)
            directions = torch.relu(W) if subject.model.variant == "neuron" else W
            cols = (directions.norm(dim=0) > 1e-6).nonzero().flatten()  # (K,) features that reach it
            truth = directions[:, cols].T.contiguous()  # (K, m)
        yield toy_study(f"{name}/hidden", subject, cfg.methods, cfg.sae_steps, cfg.toy_train_samples, cfg.eval_batches,
                        cfg.toy_eval_batch_size, cfg.seed, truth=truth, truth_cols=cols)


def lm_studies(cfg: DecomposeConfig) -> Iterator[Study]:
    """The LM's sites: harvested training rows, held-out windows, and the windows' token labels."""
    ui.info(f"decompose: loading {cfg.lm}")
    subject = load_subject(cfg.lm, **cfg.lm_config)
    sites = layer_sites(subject.sites, cfg.lm_sites, cfg.lm_layer, cfg.lm)
    rows = harvest_rows(subject, sites, cfg.lm_train_tokens, cfg.seed, 16, cached=True)
    batches = eval_batches(subject, cfg.eval_batches, cfg.lm_eval_windows, cfg.seed)
    ev = EvalSettings()  # the labels `evaluate` derives, for the paired interpretability statistics
    labels = token_labels(batches, subject.tokenizer, first_position(subject), ev.n_frequent, ev.min_label_count,
                          ev.max_label_rate)
    methods = cfg.methods if cfg.lm_methods is None else cfg.lm_methods
    steps = cfg.lm_sae_steps or cfg.sae_steps
    for site in sites:
        train = rows.pop(site)  # (tokens, d)
        yield Study(f"{cfg.lm}/{site}", subject, site, train, batches, site_acts(subject, site, batches),
                    train.double().mean(0), methods, steps, labels=labels, toy=False)


def level(entry: dict[int, dict[str, Any]], ks: list[int]) -> dict[str, Any]:
    """The headline k's entry on top, the other ks under 'k<k>'."""
    top = dict(entry[ks[-1]])
    top.update({f"k{k}": entry[k] for k in ks[:-1]})
    return top


# --- the experiment ------------------------------------------------------------------------------
def control_note(spec: Spec) -> str:
    return (f"planted dictionary vs its Gaussian / a rotation of dense codes at d={spec.d}, k={spec.k}, "
            f"{spec.n_train} training rows, {spec.n_batches} held-out batches of {spec.batch_rows} rows, the same "
            "methods, steps and refits")


@register
class DecomposeExperiment(Experiment):
    """Every decomposition on planted, toy and LM activations at matched budgets, one yardstick."""

    name = "decompose"
    order = 1
    title = "Sparse autoencoders against PCA, ICA, neurons and random directions at matched budgets"
    Config = DecomposeConfig
    small: ClassVar[dict[str, Any]] = {
        "ks": [8], "lm_ks": [32], "linear_sparsify": ["topk"], "methods": ["identity", "random", "pca", "sae-topk"],
        "lm_methods": ["pca", "sae-topk"], "width_factor": 4, "toy_train_samples": 16_384, "sae_steps": 150,
        "lm_sae_steps": 100, "sae_batch_size": 512, "sae_lr": 5e-3, "refits": 3, "lm_layer": 6,
        "lm_sites": ["resid_post"], "lm_train_tokens": 8192, "lm_config": {"seq_len": 64}, "eval_batches": 8,
        "lm_eval_windows": 1, "toy_eval_batch_size": 1024, "n_boot": 200, "ica_max_samples": 8192,
    }

    def run(self, cfg: DecomposeConfig) -> Result:
        metrics: dict[str, Any] = {}
        verdicts: list[Verdict] = []
        lines: list[str] = []
        controls = Controls(cfg)
        for study in studies(cfg):
            ks = cfg.ks if study.toy else (cfg.lm_ks or cfg.ks)
            per: dict[int, Scored] = {}
            steps = (len(variants(study, cfg)) + cfg.refits - 1) * len(ks)
            with ui.progress(f"decompose {study.key}: fitting", steps) as advance:
                for k in ks:
                    fits = fit_study(study, k, cfg, advance, self.units)
                    ui.info(f"decompose {study.key}: scoring at k={k}")
                    per[k] = score_study(study, fits, k, cfg)
            metrics[study.key] = {key: level({k: per[k].entries[key] for k in ks}, ks) for key in per[ks[-1]].entries}
            for k in ks:
                ev = evidence(per[k], cfg)
                spec = spec_of(study, k)
                ui.info(f"decompose {study.key}: controls at k={k}")
                verdicts += verdicts_for(study.key, ev, controls.of(spec, list(ev)), per[k].sae, k, self.scale,
                                         control_note(spec))
            lines.append(headline(study.key, per[ks[-1]].entries, per[ks[-1]].sae, ks[-1]))
            del study
        all_ks = sorted({*cfg.ks, *(cfg.lm_ks or [])})
        return Result(
            experiment=self.name, title=self.title, config=cfg.model_dump(mode="json"), seed=cfg.seed,
            metrics=metrics, verdicts=verdicts, tables={"methods": methods_table(metrics)},
            figures=figures(metrics, all_ks), captions=CAPTIONS, summary=summarise(verdicts, lines),
        )
