"""The decompose pipeline, one function per stage, run alike on real subjects and on planted controls:

    study (data)  ->  fit_study (every method, the verdicts' SAE chosen on training rows and refitted
    with more seeds)  ->  score_study (the yardstick on held-out batches, and paired scorecards)
    ->  evidence (one `Evidence` per crux the study defines)

A control is a `Study` built from a planted subject by the same functions (see
`decompose_controls`), so its verdict comes from exactly the statistic, null, budget, SAE steps,
evaluation batches and resampling that the real subject's does.

The refit is the resampling unit: the SAE of the verdicts is fitted `refits` times with seeds
seed, seed + 1, ...; PCA is deterministic (fitted once). Every refit is scored on the same held-out
batches, so each verdict's evidence is a t interval over the refits' statistics plus the
batch-bootstrap variance of their mean (`from_refits(..., sampling_var=...)`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from interplab.decompose import DECOMPOSITIONS, create
from interplab.decompose.sae import SAEDecomposer
from interplab.experiments.decompose_verdicts import pick_sae, refit_evidence, round1_evidence
from interplab.experiments.units import Units
from interplab.hooks import activations
from interplab.metrics import evaluate_many, fvu
from interplab.metrics.bootstrap import boot_counts
from interplab.metrics.downstream import site_rows
from interplab.metrics.groundtruth import mmcs, random_floor
from interplab.metrics.interpretability import Labels
from interplab.metrics.paired import Scorecard, per_batch_mean
from interplab.runtime import single_thread
from interplab.store import harvest_rows
from interplab.subjects.base import Subject
from interplab.verdicts import Evidence

REQUIRED = ("fvu", "l0", "dead_frac", "ce_score_zero", "ce_score_mean", "delta_ce_nats", "kl_score", "bits_per_token")
OPTIONAL = ("mmcs", "mcc", "f1", "interp_score")
SELECT_ROWS = 8192


class Study(NamedTuple):
    """One (subject, site) and everything every method shares there."""

    key: str
    subject: Subject
    site: str
    train: torch.Tensor  # (n, d) training-split activations
    batches: list[torch.Tensor]  # held-out model inputs, the same for every method
    acts: list[torch.Tensor]  # (n_b, d) the site's activations on each batch (BOS dropped)
    mean: torch.Tensor  # (d,) mean-ablation baseline
    methods: list[str]  # registered decompositions fitted here
    sae_steps: int
    truth: torch.Tensor | None = None  # (K, d) true directions (MMCS), else None
    truth_codes: list[torch.Tensor] | None = None  # (n_b, K) true codes on each batch (MCC), else None
    labels: Labels | None = None  # labels of the rows of `acts`, in order (interpretability), else None
    toy: bool = True  # small ops: fit and score on one thread


def site_acts(subject: Subject, site: str, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """The site's activation rows (n_b, d) on each batch of model inputs (BOS position dropped)."""
    with torch.no_grad():
        return [site_rows(activations(subject.model, x, [site], sites=subject.sites)[site], subject).float()
                for x in batches]


def eval_batches(subject: Subject, n: int, size: int, seed: int) -> list[torch.Tensor]:
    """Held-out model inputs: the test split, generators apart from the training stream's."""
    return [subject.sample(size, torch.Generator().manual_seed((seed + 7_777) * 1_000_003 + b), split="test")
            for b in range(n)]


def toy_study(key: str, subject: Subject, methods: list[str], steps: int, n_train: int, n_batches: int,
              batch_size: int, seed: int, truth: torch.Tensor | None = None, truth_cols: torch.Tensor | None = None,
              labels: Callable[[list[torch.Tensor]], Labels] | None = None, toy: bool = True) -> Study:
    """A study of a toy subject's `hidden` site: training rows, held-out batches and their activations,
    the true codes (input columns `truth_cols`, default the first K) when `truth` (K, d) is given, and
    the rows' labels when a `labels(batches)` function is given."""
    rows = harvest_rows(subject, ["hidden"], n_train, seed, 4096, cached=False)["hidden"]  # (n_train, d)
    batches = eval_batches(subject, n_batches, batch_size, seed)
    truth_codes = None
    if truth is not None:
        cols = torch.arange(truth.shape[0]) if truth_cols is None else truth_cols
        truth_codes = [x.reshape(x.shape[0], -1)[:, cols] for x in batches]  # (n_b, K) each
    return Study(key, subject, "hidden", rows, batches, site_acts(subject, "hidden", batches), rows.double().mean(0),
                 methods, steps, truth, truth_codes, labels(batches) if labels else None, toy)


class Variant(NamedTuple):
    key: str  # results key: "pca", "pca-rank", "sae-topk"
    name: str  # registered name
    settings: dict[str, Any]  # everything but k
    sae: bool


def variants(study: Study, cfg: Any) -> list[Variant]:
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


class Fitted(NamedTuple):
    dec: Any  # the fitted decomposer
    seconds: float  # time to fit
    select_fvu: float  # FVU on (up to SELECT_ROWS) training rows: chooses the SAE of the verdicts
    select_l0: float  # mean L0 on the same rows: whether the SAE is within budget
    sae: bool


def _threads(study: Study) -> contextlib.AbstractContextManager:
    """Toy sites fit and score on one thread: their ops are small, and OpenMP threads spinning on
    shared cores slow them down many times over; LM sites keep torch's threads."""
    return single_thread() if study.toy else contextlib.nullcontext()


def fit(study: Study, v: Variant, k: int, seed: int | None = None, units: Units | None = None) -> Fitted:
    """One method fitted at budget k (seed: overrides the variant's), with its FVU and L0 on
    training rows (for choosing the SAE without looking at the scored batches). With `units` (the
    run's store), a fit finished by an earlier, interrupted run of the same command is read back."""
    settings = v.settings if seed is None else {**v.settings, "seed": seed}
    units = units or Units(None)
    key = {"study": study.key, "variant": v.key, "k": k, "seed": settings.get("seed")}
    timed: dict[str, float] = {}

    def run_fit() -> Any:
        start = time.perf_counter()
        dec = create(v.name, k=k, **settings).fit(study.train)
        timed["seconds"] = time.perf_counter() - start
        return dec

    with _threads(study):
        dec = units.decomposer(key, run_fit)
        seconds = units.json({**key, "what": "fit seconds"}, lambda: timed.get("seconds", 0.0))
        rows = study.train[-SELECT_ROWS:].float()  # (n, d)
        with torch.no_grad():
            out = dec.forward(rows)
        l0 = float((out.codes != 0).sum(1).double().mean())
    return Fitted(dec, seconds, fvu(rows, out.recon), l0, v.sae)


class Fits(NamedTuple):
    table: dict[str, Fitted]  # every variant at the first seed
    sae: str | None  # key of the verdicts' SAE (chosen on training rows), None if none is within budget
    refits: list[Fitted]  # that SAE at seeds seed, seed + 1, ...; refits[0] is table[sae]


def fit_study(study: Study, k: int, cfg: Any, advance: Callable[..., None] | None = None,
              units: Units | None = None) -> Fits:
    """Every variant at the first seed; the within-budget SAE with the lowest training-row FVU is
    chosen once from those fits and refitted with `cfg.refits - 1` further seeds. Every fit is a
    unit of work of the run (`units`): a rerun after an interruption reads the finished ones back."""
    vs = variants(study, cfg)
    table: dict[str, Fitted] = {}
    for v in vs:
        table[v.key] = fit(study, v, k, units=units)
        if advance:
            advance(1, k=k, method=v.key)
    sae = pick_sae({key: f._asdict() for key, f in table.items()}, k, cfg.budget_slack)
    refits = []
    if sae is not None:
        v = next(v for v in vs if v.key == sae)
        refits = [table[sae]] + [fit(study, v, k, seed=cfg.seed + r, units=units) for r in range(1, cfg.refits)]
        if advance:
            advance(cfg.refits - 1, k=k, method=f"{sae} refits")
    return Fits(table, sae, refits)


class Scored(NamedTuple):
    entries: dict[str, dict[str, Any]]  # results entry of every table method
    sae: str | None
    pca: Scorecard | None
    saes: list[Scorecard]  # one per refit
    dce_pca: list[float] | None  # per-batch loss increase when spliced in (None: the subject has no loss)
    dce_saes: list[list[float]]
    n_batches: int


def code_norms(dec: Any) -> np.ndarray:
    """How much of x a unit code writes, per latent (m,): the mass weights of interpretability."""
    norms = dec.components_.norm(dim=1)  # (m,)
    if getattr(getattr(dec, "codec_", None), "rescale_acts_by_decoder_norm", False):
        norms = torch.ones_like(norms)  # SAELens divides such codes by the row norm before decoding
    return norms.double().numpy()


def scorecard(study: Study, dec: Any) -> Scorecard:
    """The paired statistics of one decomposition on the study's held-out activations."""
    with torch.no_grad():
        outs = [dec.forward(a) for a in study.acts]
    card = Scorecard(truth=study.truth_codes is not None, labels=study.labels)
    return card.score(study.acts, [o.recon for o in outs], [o.codes for o in outs], study.truth_codes, code_norms(dec))


def score_study(study: Study, fits: Fits, k: int, cfg: Any) -> Scored:
    """The yardstick for every fitted method (and every refit) on the held-out batches, in one pass
    that shares the baseline runs, plus a scorecard per method for the paired statistics."""
    refit_keys = [f"{fits.sae}@seed{cfg.seed + r}" for r in range(1, len(fits.refits))]
    decs = {key: f.dec for key, f in fits.table.items()}
    decs.update({key: f.dec for key, f in zip(refit_keys, fits.refits[1:], strict=True)})
    start = time.perf_counter()
    with _threads(study):
        # ground truth is scored by the scorecards (also for TMS, whose truth is not the subject's own)
        plain = dataclasses.replace(study.subject, ground_truth={})
        res = evaluate_many(decs, plain, study.site, study.batches, mean=study.mean, n_boot=cfg.n_boot,
                            seed=cfg.seed, amortize_tokens=study.train.shape[0])
        cards = {key: scorecard(study, dec) for key, dec in decs.items()}
    seconds = (time.perf_counter() - start) / len(decs)
    entries = {key: entry(res[key], cards[key], study, k, f, seconds, cfg) for key, f in fits.table.items()}
    sae_keys = [fits.sae, *refit_keys] if fits.sae else []
    dce = lambda key: res[key]["details"].get("per_batch_delta_ce_nats")  # noqa: E731
    if fits.sae:
        entries[fits.sae]["refits"] = [refit_summary(res[key], cards[key], cfg.seed + r)
                                       for r, key in enumerate(sae_keys)]
    pca = "pca" if "pca" in decs else None
    return Scored(entries, fits.sae, cards.get(pca) if pca else None, [cards[key] for key in sae_keys],
                  dce(pca) if pca else None, [dce(key) for key in sae_keys], len(study.batches))


def entry(res: dict[str, Any], card: Scorecard, study: Study, k: int, f: Fitted, eval_seconds: float,
          cfg: Any) -> dict[str, Any]:
    """The results.json entry of one method at one budget."""
    out: dict[str, Any] = {key: res.get(key) for key in REQUIRED}
    ci = dict(res["ci"])
    details = {n: x for n, x in res["details"].items() if isinstance(x, (int, float, bool))}
    for key in ("per_batch_fvu", "per_batch_delta_ce_nats"):  # for paired differences between methods
        if key in res["details"]:
            details[key] = res["details"][key]
    if study.truth_codes is not None:
        gt = card.gt.result(cfg.n_boot, cfg.seed)  # type: ignore[union-attr]
        out.update(mcc=gt["mcc"].value, f1=gt["f1"].value)
        ci.update(mcc=[gt["mcc"].low, gt["mcc"].high], f1=[gt["f1"].low, gt["f1"].high])
        if study.truth is not None:
            signed = bool(res["details"].get("signed_codes"))
            out["mmcs"] = mmcs(study.truth, f.dec.components_, signed)
            details["mmcs_random_floor"] = random_floor(study.truth, f.dec.n_components_, signed=signed)
            details["n_true_features"] = int(study.truth.shape[0])
    if res.get("interp_score") is not None:
        out["interp_score"] = res["interp_score"]
    out.update(k=k, ci=ci, details=details, fit_seconds=f.seconds, eval_seconds=eval_seconds, sae=f.sae,
               select_fvu=f.select_fvu, select_l0=f.select_l0)
    return out


def refit_summary(res: dict[str, Any], card: Scorecard, seed: int) -> dict[str, Any]:
    """One refit's headline numbers, for the table of refits."""
    out = {"seed": seed, "fvu": res["fvu"], "l0": res["l0"], "delta_ce_nats": res.get("delta_ce_nats")}
    if card.gt is not None:
        out["mcc"] = card.gt.result(0)["mcc"].value
    if card.mono is not None:
        out["interp_score_adjusted"] = res["details"].get("interp_score_adjusted")
    return out


def evidence(sc: Scored, cfg: Any) -> dict[str, Evidence]:
    """The evidence of every crux this study defines (statistics signed so that > 0 favours the SAE)."""
    if sc.sae is None or sc.pca is None:
        return {}
    counts = boot_counts(sc.n_batches, cfg.n_boot, cfg.seed)  # one set of resamples: paired methods
    pca, saes = sc.pca, sc.saes
    out = {
        "sae-fvu": refit_evidence(pca.fvu(counts), [s.fvu(counts) for s in saes], sae_is_lower=True),
        "sae-fvu-batchmean": round1_evidence(pca.per_batch_fvu() - saes[0].per_batch_fvu(), counts),
    }
    if sc.dce_pca is not None and all(v is not None for v in sc.dce_saes):
        out["sae-dce"] = refit_evidence(per_batch_mean(sc.dce_pca, counts),
                                        [per_batch_mean(v, counts) for v in sc.dce_saes], sae_is_lower=True)
    if pca.gt is not None:
        out["sae-recovery"] = refit_evidence(pca.mcc(counts), [s.mcc(counts) for s in saes], sae_is_lower=False)
    if pca.mono is not None:
        out["sae-interp"] = refit_evidence(pca.interp(counts), [s.interp(counts) for s in saes], sae_is_lower=False)
        out["sae-interp-raw"] = refit_evidence(pca.interp(counts, adjusted=False),
                                               [s.interp(counts, adjusted=False) for s in saes], sae_is_lower=False)
    return out
