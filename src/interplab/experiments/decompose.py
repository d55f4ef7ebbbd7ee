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
  inputs the true codes; MMCS, MCC and F1 come from the metrics' own ground-truth scorers;
- `{lm}/{site}.{layer}`: a real LM (SmolLM2-135M by default) at `lm_sites` of layer `lm_layer`.

Methods (keys of results): the registered names. Linear methods (identity, random, pca, ica) are
sparsified to k by sign-split top-k (Cunningham et al. 2023) under their plain name, and by rank
(first k components, signed codes) as "<name>-rank" when `linear_sparsify` lists "rank". Sign-split
top-k is the comparator of the verdicts: per token it keeps the k largest |coefficients|, which
for an orthonormal basis leaves the least error of any k of its components, so at equal L0 it is
never worse than the rank version and is the harder baseline for an SAE to beat.

results.json layout:
    metrics[subject][method] = {fvu, l0, dead_frac, ce_score_zero, ce_score_mean, delta_ce_nats,
        kl_score, bits_per_token, [mmcs, mcc, f1, interp_score], k, ci: {key: [low, high]},
        details: {scalar side numbers, per_batch_fvu, per_batch_delta_ce_nats}, fit_seconds,
        select_fvu, select_l0 (on training rows, for choosing the SAE),
        eval_seconds (the shared evaluation's time split evenly over the methods),
        "k8": {the same at k = 8}, ...}
The top level holds the headline budget (the largest k); each other k sits under "k<k>". A key
the subject does not define is null: synthetic has no loss (no CE scores), KL needs logits (LMs).

Verdicts, at every k and per subject: the SAE compared is the one with the lowest FVU among those
within budget (L0 <= k (1 + budget_slack); TopK always is), both measured on training rows
(`select_fvu`, `select_l0`) so that the scored batches play no part in the choice, and fixed once
per subject and k so that no metric picks its own SAE; PCA is the sign-split one. Statistics are signed so
that > 0 favours the SAE: FVU(PCA) - FVU(SAE), delta CE(PCA) - delta CE(SAE) in nats, and
MCC(SAE) - MCC(PCA) (planted and TMS) or interp_score(SAE) - interp_score(PCA) (LMs). The FVU and
delta CE CIs are paired bootstraps over the shared evaluation batches; the MCC and interpretability
ones combine the two methods' bootstrap CIs as if independent (wider than a paired CI would be).
Every method of a site is scored in one pass over the batches (`evaluate_many`), which shares the
clean and ablated forward passes among them.

Scale. The default is the whole study (k 8 and 32, both sparsifications, every method on
SmolLM2 resid_post.15 and mlp_hidden.15, 1000 SAE steps of 4096 tokens); its 12288-wide SAEs on
mlp_hidden dominate, and on a 2-core CPU it runs for about a day. `small`, what `interplab
cruxes` runs (about 3 minutes on 2 free cores), keeps k = 32 and sign-split linear methods only,
all eight methods on the toys, and identity, random, PCA and TopK on SmolLM2 resid_post.6 alone
(16k training tokens, 150 SAE steps, 4 x 2 evaluation windows of 64 tokens); ICA, ReLU, BatchTopK
and JumpReLU SAEs are left out on the LM, whose short-trained mean-L0 SAEs miss the budget anyway.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import Field, field_validator

from interplab import ui
from interplab.config import Config
from interplab.decompose import DECOMPOSITIONS, create
from interplab.decompose.sae import SAEDecomposer
from interplab.errors import UserError
from interplab.experiments.base import Experiment, Result, Verdict, register
from interplab.experiments.decompose_figures import (
    CAPTIONS,
    figures,
    headline,
    methods_table,
    summarise,
)
from interplab.experiments.decompose_verdicts import pick_sae, verdicts_for
from interplab.hooks import activations
from interplab.metrics import evaluate_many, fvu
from interplab.metrics.groundtruth import GroundTruth, mmcs, random_floor
from interplab.runtime import device, single_thread
from interplab.store import harvest_rows
from interplab.subjects import load_subject
from interplab.subjects.base import Subject
from interplab.subjects.sites import layer_sites

LINEAR = ("identity", "random", "pca", "ica")
ALL_METHODS = ["identity", "random", "pca", "ica", "sae-relu", "sae-topk", "sae-batchtopk", "sae-jumprelu"]
REQUIRED = ("fvu", "l0", "dead_frac", "ce_score_zero", "ce_score_mean", "delta_ce_nats", "kl_score", "bits_per_token")
OPTIONAL = ("mmcs", "mcc", "f1", "interp_score")
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
    """Budgets of active codes per token; the largest is the headline."""
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

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("ks needs at least one budget, each >= 1")
        return sorted(set(v))


class Study(NamedTuple):
    """One (subject, site) and everything every method shares there."""

    key: str
    subject: Subject
    site: str
    train: torch.Tensor  # (n, d) training-split activations
    batches: list[torch.Tensor]  # held-out model inputs, the same for every method
    mean: torch.Tensor  # (d,) mean-ablation baseline
    methods: list[str]
    sae_steps: int
    truth: torch.Tensor | None = None  # (K, d) true directions scored here (TMS), else None
    truth_cols: torch.Tensor | None = None  # (K,) input columns holding the true codes
    toy: bool = True  # small ops: fit and score on one thread


class Variant(NamedTuple):
    key: str  # results key: "pca", "pca-rank", "sae-topk"
    name: str  # registered name
    settings: dict[str, Any]  # everything but k
    sae: bool


# --- data ----------------------------------------------------------------------------------------
def eval_batches(subject: Subject, n: int, size: int, seed: int) -> list[torch.Tensor]:
    """Held-out model inputs: the test split, generators apart from the training stream's."""
    return [subject.sample(size, torch.Generator().manual_seed((seed + 7_777) * 1_000_003 + b), split="test")
            for b in range(n)]


def studies(cfg: DecomposeConfig) -> Iterator[Study]:
    """The (subject, site) pairs, built one subject at a time so only one is in memory."""
    toy = {"synthetic": cfg.synthetic, "tms": {**TMS_DEFAULT, **cfg.tms}}
    for name in cfg.subjects:
        if name == "lm":
            yield from lm_studies(cfg)
            continue
        ui.info(f"decompose: preparing {name}")
        subject = load_subject(name, **toy[name])
        if name == "tms" and subject.model.n_instances != 1:
            raise UserError("decompose studies one TMS instance; give `tms` a single density")
        rows = harvest_rows(subject, ["hidden"], cfg.toy_train_samples, cfg.seed, 4096, cached=False)["hidden"]
        truth = cols = None
        if name == "tms":  # feature i alone writes x_i * ReLU(W[:, i]) into the hidden layer
            W = subject.model.W.detach()[0]  # (m, n)
            directions = torch.relu(W) if subject.model.variant == "neuron" else W
            cols = (directions.norm(dim=0) > 1e-6).nonzero().flatten()  # (K,) features that reach it
            truth = directions[:, cols].T.contiguous()  # (K, m)
        batches = eval_batches(subject, cfg.eval_batches, cfg.toy_eval_batch_size, cfg.seed)
        yield Study(f"{name}/hidden", subject, "hidden", rows, batches, rows.double().mean(0), cfg.methods,
                    cfg.sae_steps, truth, cols)


def lm_studies(cfg: DecomposeConfig) -> Iterator[Study]:
    ui.info(f"decompose: loading {cfg.lm}")
    subject = load_subject(cfg.lm, **cfg.lm_config)
    sites = layer_sites(subject.sites, cfg.lm_sites, cfg.lm_layer, cfg.lm)
    rows = harvest_rows(subject, sites, cfg.lm_train_tokens, cfg.seed, 16, cached=True)
    batches = eval_batches(subject, cfg.eval_batches, cfg.lm_eval_windows, cfg.seed)
    methods = cfg.methods if cfg.lm_methods is None else cfg.lm_methods
    steps = cfg.lm_sae_steps or cfg.sae_steps
    for site in sites:
        train = rows.pop(site)  # (tokens, d)
        yield Study(f"{cfg.lm}/{site}", subject, site, train, batches, train.double().mean(0), methods, steps,
                    toy=False)


# --- methods -------------------------------------------------------------------------------------
def variants(study: Study, cfg: DecomposeConfig) -> list[Variant]:
    """The study's methods with their settings; linear ones once per sparsification."""
    out, d = [], study.train.shape[1]
    for name in study.methods:
        if issubclass(DECOMPOSITIONS.get(name), SAEDecomposer):
            s = {"width": cfg.width_factor * d, "steps": study.sae_steps, "batch_size": cfg.sae_batch_size,
                 "seed": cfg.seed, "lr": cfg.sae_lr, "device": cfg.sae_device}
            out.append(Variant(name, name, s, True))
            continue
        extra = {"max_samples": cfg.ica_max_samples, "max_iter": cfg.ica_max_iter} if name == "ica" else {}
        for how in cfg.linear_sparsify:
            key = name if how == "topk" else f"{name}-rank"
            out.append(Variant(key, name, {"sparsify": how, "seed": cfg.seed, **extra}, False))
    return out


def tms_ground_truth(dec: Any, study: Study, n_boot: int, seed: int) -> dict[str, Any]:
    """MMCS, MCC and F1 against the TMS features that reach the hidden layer, with CIs over batches."""
    acc = GroundTruth()
    signed = False
    with torch.no_grad():
        for x in study.batches:
            a = activations(study.subject.model, x, [study.site], sites=study.subject.sites)[study.site]
            codes = dec.transform(a.reshape(a.shape[0], -1))  # (n, m)
            signed = signed or bool((codes < 0).any())
            acc.update(x.reshape(x.shape[0], -1)[:, study.truth_cols], codes)
    est = acc.result(n_boot, seed)
    out = {"mmcs": mmcs(study.truth, dec.components_, signed), "mcc": est["mcc"].value, "f1": est["f1"].value}
    ci = {k: [est[k].low, est[k].high] for k in ("mcc", "f1")}
    floor = random_floor(study.truth, dec.n_components_, signed=signed)
    return {**out, "ci": ci, "details": {"mmcs_random_floor": floor, "n_true_features": int(study.truth.shape[0])}}


class Fitted(NamedTuple):
    dec: Any  # the fitted decomposer
    seconds: float  # time to fit
    select_fvu: float  # FVU on (up to SELECT_ROWS) training rows: chooses the SAE of the verdicts
    select_l0: float  # mean L0 on the same rows: whether the SAE is within budget


SELECT_ROWS = 8192


def fit(study: Study, v: Variant, k: int) -> Fitted:
    """One method fitted at budget k on the study's training rows, with its FVU and L0 on those
    rows (for choosing the SAE without looking at the scored batches). Toy sites fit on one
    thread: their ops are small, and spinning OpenMP threads on shared cores slow them down many
    times over; LM sites keep torch's threads for their wide matrix multiplies."""
    start = time.perf_counter()
    with single_thread() if study.toy else contextlib.nullcontext():
        dec = create(v.name, k=k, **v.settings).fit(study.train)
        seconds = time.perf_counter() - start
        rows = study.train[-SELECT_ROWS:].float()  # (n, d)
        with torch.no_grad():
            out = dec.forward(rows)
        l0 = float((out.codes != 0).sum(1).double().mean())
    return Fitted(dec, seconds, fvu(rows, out.recon), l0)


def score_all(study: Study, fitted: dict[str, Fitted], k: int, cfg: DecomposeConfig) -> dict[str, dict[str, Any]]:
    """Every fitted method evaluated on the held-out batches, the batches' clean and ablated runs
    shared by all (`evaluate_many`), plus TMS ground truth; one results entry per method."""
    start = time.perf_counter()
    decs = {key: f.dec for key, f in fitted.items()}
    with single_thread() if study.toy else contextlib.nullcontext():
        scored = evaluate_many(decs, study.subject, study.site, study.batches, mean=study.mean, n_boot=cfg.n_boot,
                               seed=cfg.seed, amortize_tokens=study.train.shape[0])
        if study.truth is not None:
            for key, dec in decs.items():
                gt = tms_ground_truth(dec, study, cfg.n_boot, cfg.seed)
                scored[key].update({k_: gt[k_] for k_ in ("mmcs", "mcc", "f1")})
                scored[key]["ci"].update(gt["ci"])
                scored[key]["details"].update(gt["details"])
    eval_seconds = (time.perf_counter() - start) / len(decs)
    return {key: entry(res, k, fitted[key], eval_seconds, isinstance(decs[key], SAEDecomposer))
            for key, res in scored.items()}


def entry(res: dict[str, Any], k: int, f: Fitted, eval_seconds: float, sae: bool) -> dict[str, Any]:
    """The results.json entry of one method at one budget, from what `evaluate` returned."""
    out: dict[str, Any] = {key: res.get(key) for key in REQUIRED}
    out.update({key: res[key] for key in OPTIONAL if key in res})
    details = {n: x for n, x in res["details"].items() if isinstance(x, (int, float, bool))}
    for key in ("per_batch_fvu", "per_batch_delta_ce_nats"):  # for paired differences between methods
        if key in res["details"]:
            details[key] = res["details"][key]
    out.update(k=k, ci=res["ci"], details=details, fit_seconds=f.seconds, eval_seconds=eval_seconds, sae=sae,
               select_fvu=f.select_fvu, select_l0=f.select_l0)
    return out


# --- the experiment ------------------------------------------------------------------------------
def level(entry: dict[int, dict[str, Any]], ks: list[int]) -> dict[str, Any]:
    """The headline k's entry on top, the other ks under 'k<k>'."""
    top = dict(entry[ks[-1]])
    top.update({f"k{k}": entry[k] for k in ks[:-1]})
    return top


@register
class DecomposeExperiment(Experiment):
    """Every decomposition on planted, toy and LM activations at matched budgets, one yardstick."""

    name = "decompose"
    order = 1
    title = "Sparse autoencoders against PCA, ICA, neurons and random directions at matched budgets"
    Config = DecomposeConfig
    small: ClassVar[dict[str, Any]] = {
        "ks": [32], "linear_sparsify": ["topk"], "toy_train_samples": 32_768, "sae_steps": 300, "lm_sae_steps": 150,
        "sae_batch_size": 1024, "sae_lr": 5e-3, "lm_methods": ["identity", "random", "pca", "sae-topk"],
        "lm_layer": 6, "lm_sites": ["resid_post"], "lm_train_tokens": 16_384, "lm_config": {"seq_len": 64},
        "eval_batches": 4, "lm_eval_windows": 2, "toy_eval_batch_size": 2048, "n_boot": 500, "ica_max_samples": 8192,
    }

    def run(self, cfg: DecomposeConfig) -> Result:
        metrics: dict[str, Any] = {}
        verdicts: list[Verdict] = []
        lines: list[str] = []
        for study in studies(cfg):
            vs = variants(study, cfg)
            per: dict[int, dict[str, dict[str, Any]]] = {k: {} for k in cfg.ks}
            with ui.progress(f"decompose {study.key}: fitting", len(vs) * len(cfg.ks)) as advance:
                for k in cfg.ks:
                    fitted: dict[str, Fitted] = {}
                    for v in vs:
                        fitted[v.key] = fit(study, v, k)
                        advance(1, k=k, method=v.key)
                    ui.info(f"decompose {study.key}: scoring {len(vs)} methods at k={k}")
                    per[k] = score_all(study, fitted, k, cfg)
            metrics[study.key] = {v.key: level({k: per[k][v.key] for k in cfg.ks}, cfg.ks) for v in vs}
            for k in cfg.ks:
                verdicts += verdicts_for(study.key, per[k], k, cfg)
            top = cfg.ks[-1]
            lines.append(headline(study.key, per[top], pick_sae(per[top], top, cfg.budget_slack), top))
        return Result(
            experiment=self.name, title=self.title, config=cfg.model_dump(mode="json"), seed=cfg.seed,
            metrics=metrics, verdicts=verdicts, tables={"methods": methods_table(metrics, cfg.ks)},
            figures=figures(metrics, cfg.ks), captions=CAPTIONS, summary=summarise(verdicts, lines),
        )

