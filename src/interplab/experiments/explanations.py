"""Explanations scored in proofs and in bits: compact proofs and surprise accounting on max-of-k.

For every trained max-of-k model (one per seed; k = 4, vocabulary 64, and a larger k): the exact
accuracy by brute force over all vocab^k inputs, certified lower bounds (cubic, subcubic with the
exact EQKE, subcubic with EQKE at rank 1) each with its FLOPs and unexplained dimension, the
presumption-of-independence estimate and sampling at the same FLOPs, and the surprise ledger of each
explanation (no explanation, brute force, each proof, the estimate) under the initialisation prior,
beside the bits in the weights (parameters x the fewest bits per parameter that keep the accuracy).
Verdicts (`interplab.verdicts.catalog.explanations`) use the training seed as the unit; their controls
are hand-set models (`interplab.explain.handset`) evaluated by the same function as the seeds.

results.json: metrics["models"][label] = one record per model (bounds, FLOPs, estimates, ledgers,
bits per parameter); metrics["summary"][k][strategy] = mean/sd of bound, FLOPs, unexplained dimension;
metrics["ledgers"] (k = 4) = mean bits per explanation; tables "proofs" and "surprise".
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import Field

from interplab import ui
from interplab.config import Config
from interplab.experiments import explanations_figures as figs
from interplab.experiments import explanations_verdicts as ver
from interplab.experiments.base import Experiment, Result, register
from interplab.explain import (
    Weights,
    brute_force,
    cubic,
    independence,
    paths,
    sampling,
    subcubic,
    subcubic_rank1,
)
from interplab.explain import ledgers as led
from interplab.explain.surprise import weight_bits
from interplab.runtime import single_thread
from interplab.subjects.maxofk import MaxOfKConfig, MaxOfKModel, train_maxofk

PROOFS = ("cubic", "subcubic", "subcubic-rank1")


class ExplanationsConfig(Config):
    """Settings of the explanations experiment; `interplab cruxes` runs `ExplanationsExperiment.small`."""

    seeds: int = Field(10, ge=3)
    """Training seeds of the k = 4 model (the verdicts' unit)."""
    vocab: int = Field(64, ge=4, le=64)
    """Token values of the studied models."""
    steps: int = Field(1500, ge=1)
    """Training steps of each model (the maxofk subject's default is 1500)."""
    large_k: int = Field(5, ge=0, le=8)
    """The larger k studied beside k = 4 (0: none)."""
    large_seeds: int = Field(10, ge=0)
    """Training seeds at the larger k."""
    large_brute: int = Field(2, ge=0)
    """How many of them also get brute force (vocab^(k+1) work each: 64x that of k = 4 at k = 5); the others
    are bounded and estimated only."""
    prior_models: int = Field(8, ge=1)
    """Models drawn from the initialisation to price the ledgers' claims."""
    control_vocab: int = Field(32, ge=8, le=64)
    """Vocabulary of the hand-set control models (k as the studied models)."""
    control_units: int = Field(3, ge=3)
    """Hand-set models per control family (their unit, like the seeds)."""
    quant_tol: float = Field(1e-3, gt=0, lt=1)
    """Accuracy a quantised model may lose (on 16,384 sampled inputs) for its bits per parameter to count."""
    seed: int = 0
    """First training seed (seeds are seed, seed + 1, ...); also seeds the prior, sampling and the controls."""


def train(cfg: ExplanationsConfig, k: int, seed: int) -> MaxOfKModel:
    """The cached max-of-k model of one seed."""
    return train_maxofk(MaxOfKConfig(vocab=cfg.vocab, k=k, steps=cfg.steps, seed=seed))


@torch.no_grad()
def evaluate(model: MaxOfKModel, brute: bool = True, prior: led.InitPrior | None = None,
             quant_tol: float = 1e-3, seed: int = 0) -> dict[str, Any]:
    """Everything measured on one model: the same function for trained seeds and hand-set controls."""
    w = Weights.of(model)
    p = paths(w)
    proofs = {"cubic": cubic(p), "subcubic": subcubic(p), "subcubic-rank1": subcubic_rank1(w)}
    est = independence(p)
    mc = sampling(p, est.flops, torch.Generator().manual_seed(10_000 + seed))
    rec: dict[str, Any] = {"vocab": p.vocab, "k": p.n_ctx, "n_params": w.n_params, "truth": None,
                           "strategies": {n: {"bound": r.bound, "flops": r.flops, "unexplained_dim": r.unexplained_dim,
                                              "claims": r.n_claims} for n, r in proofs.items()},
                           "estimates": {"independence": {"accuracy": est.accuracy, "flops": est.flops},
                                         "sampling": {"accuracy": mc.accuracy, "flops": mc.flops,
                                                      "samples": mc.n_samples}}}
    if not brute:
        return rec
    bf = brute_force(p)
    rec["truth"] = bf.accuracy
    rec["strategies"]["brute-force"] = {"bound": bf.accuracy, "flops": bf.flops, "unexplained_dim": bf.unexplained_dim,
                                        "claims": bf.total}
    for e in rec["estimates"].values():
        e["error"] = e["accuracy"] - bf.accuracy
    if prior is not None:
        rec["ledgers"] = _ledgers(model, w, bf, proofs, est, prior, quant_tol)
    return rec


def _ledgers(model, w, bf, proofs, est, prior, quant_tol) -> dict[str, Any]:
    """Each explanation's ledger and the bits in the weights."""
    k = w.n_ctx
    ledgers = [led.none_ledger(bf), led.brute_ledger(bf, prior)]
    ledgers += [led.proof_ledger(proofs[n], bf, prior, k) for n in PROOFS]
    ledgers.append(led.estimate_ledger(est, bf, k))
    bits, accs = led.bits_per_param(model, quant_tol)
    return {"explanations": {lg.explanation: lg.to_dict() for lg in ledgers}, "bits_per_param": bits,
            "quantised_accuracy": {str(b): a for b, a in accs.items()},
            "weight_bits": weight_bits(w.n_params, bits), "text": "\n".join(lg.render() for lg in ledgers)}


@register
class ExplanationsExperiment(Experiment):
    """Certified bounds, heuristic estimates and surprise ledgers on max-of-k; the three cruxes."""

    name = "explanations"
    order = 7
    title = "Explanations scored in proofs and in bits: compact proofs and surprise accounting on max-of-k"
    Config = ExplanationsConfig
    small: ClassVar[dict[str, Any]] = {"steps": 800, "large_seeds": 2, "large_brute": 0, "prior_models": 4}

    def run(self, cfg: ExplanationsConfig) -> Result:
        with single_thread():
            prior = led.init_prior(cfg.vocab, 4, 32, cfg.prior_models, cfg.seed + 777)
            models: dict[str, dict[str, Any]] = {}
            for i in range(cfg.seeds):
                s = cfg.seed + i
                ui.info(f"explanations: k = 4, seed {s}")
                models[f"k4_s{s}"] = {"seed": s, **evaluate(train(cfg, 4, s), True, prior, cfg.quant_tol, s)}
                ui.detail(models[f"k4_s{s}"]["ledgers"]["text"])
            if cfg.large_k:
                for i in range(cfg.large_seeds):
                    s = cfg.seed + i
                    ui.info(f"explanations: k = {cfg.large_k}, seed {s}")
                    rec = evaluate(train(cfg, cfg.large_k, s), i < cfg.large_brute, None, cfg.quant_tol, s)
                    models[f"k{cfg.large_k}_s{s}"] = {"seed": s, **rec}
            seeds = [r for r in models.values() if r["k"] == 4]
            verdicts, checks = ver.verdicts(seeds, cfg, self.scale, evaluate)
        sound = [r for r in models.values() if r["truth"] is not None]
        verdicts.append(ver.soundness(sound + checks["controls"], self.scale))
        metrics = {"models": models, "summary": figs.summary(models), "ledgers": figs.ledger_means(seeds),
                   "controls": checks["records"], "prior": {"models": prior.r, "input_rate": prior.input_hits /
                                                            max(1, prior.input_trials)},
                   "verdict_details": checks["details"]}
        return figs.result(self, cfg, metrics, verdicts)


def log10(x: float) -> float:
    return math.log10(x) if x > 0 else -math.inf
