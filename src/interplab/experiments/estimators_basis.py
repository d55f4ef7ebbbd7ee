"""Part (c) of the estimators experiment: which basis makes the independence presumption most accurate.

Subjects: `tms` (the hidden ReLU layer of a neuron-variant model with more features than neurons,
read by its ReLU decoder) and a language model (`smollm2` by default) at resid_post of its middle
layer (read by the later layers into logits; position 0, the BOS attention sink, is left untouched).
Bases: neurons (`identity`), PCA and ICA (full, unsparsified), a TopK SAE, and random orthogonal
directions. Bases are fitted on training samples; the damage is measured on held-out ones
(`interplab.estimate.basis`).

The claim is fixed in advance (crux est-basis): SAE latents presumed independent predict the output
mean better than neurons presumed independent; statistic mean_error(neurons) - mean_error(SAE).
The unit is an independent draw: of the subject (tms instances trained side by side, each from its
own initialisation and batches; an LM is one model, so its draws are independent token samples)
and of every basis fit (its own seed), with the permutations averaged within the draw; a t interval
over draws. The planted controls (`planted_draws`) go through the same `basis_pipeline`.
The round-1 statistic (least delta loss against the runner-up, est-basis-loss) is computed beside
it on the first draw, non-primary, so the change is visible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from interplab import ui
from interplab.decompose import create
from interplab.estimate.basis import BasisDamage, Rest, RestOut, basis_damage, rest_out
from interplab.hooks import activations, splice
from interplab.verdicts import Evidence, Verdict, bootstrap_units, cached_evidence, from_refits, judge

ALL_BASES = ("neurons", "random", "pca", "ica", "sae-topk")
VERDICT_BASES = ("neurons", "sae-topk")  # what the est-basis statistic reads (controls fit only these)
PLANTED_DIM, PLANTED_SOURCES = 8, 20


@dataclass
class Draw:
    """One independent draw of a subject: activations to fit on and to evaluate, the rest of the network."""

    h_train: torch.Tensor  # (n, d)
    h_eval: torch.Tensor  # (n, d)
    rest: Rest
    k: int  # TopK SAE's k
    width: int  # TopK SAE's width
    seed: int  # seed of the basis fits and permutations


def fit_bases(x: torch.Tensor, cfg: Any, k: int, width: int, seed: int,
              names: Iterable[str] = ALL_BASES) -> dict[str, Any]:
    """The named bases among neurons, random directions, PCA, ICA and a TopK SAE, fitted on x (n, d)."""
    d = x.shape[1]
    make: dict[str, Callable[[], Any]] = {
        "neurons": lambda: create("identity"),
        "random": lambda: create("random", seed=seed),
        "pca": lambda: create("pca"),
        "ica": lambda: create("ica", seed=seed, max_samples=min(x.shape[0], 20_000), max_iter=400),
        "sae-topk": lambda: create("sae-topk", k=min(k, d), width=width, steps=cfg.sae_steps,
                                   batch_size=min(1024, x.shape[0]), seed=seed),
    }
    return {name: make[name]().fit(x) for name in names}


def basis_pipeline(draws: Iterable[Draw], cfg: Any, names: Iterable[str] = ALL_BASES
                   ) -> tuple[Evidence, list[dict[str, BasisDamage]]]:
    """Damage of every named basis per draw, and the est-basis evidence over the draws."""
    names = list(names)
    damages = [basis_damage(dr.rest, dr.h_eval, fit_bases(dr.h_train, cfg, dr.k, dr.width, dr.seed, names),
                            repeats=cfg.basis_repeats, seed=dr.seed) for dr in draws]
    neurons = [d["neurons"].mean_error for d in damages]
    sae = [d["sae-topk"].mean_error for d in damages]
    ev = from_refits(np.subtract(neurons, sae), 0.0, how=f"t over {len(damages)} independent draws of the subject "
                     "and the basis fits (permutations averaged within each)",
                     extra={"mean_error_neurons": neurons, "mean_error_sae": sae})
    return ev, damages


def _sparse(n: int, k: int, density: float, g: torch.Generator) -> torch.Tensor:
    """(n, k) independent sparse variables: non-zero with probability `density`, then uniform on [0, 1]."""
    u = torch.rand(n, k, generator=g)  # (n, k)
    return ((u - (1 - density)) / density).clamp_min(0)  # (n, k)


def _readout(rows: torch.Tensor, bias: float) -> Rest:
    """A ReLU layer reading activations h (n, d) with directions rows (m, d): out = ReLU(h rowsᵀ + bias)."""
    def rest(h: torch.Tensor) -> RestOut:
        out = F.relu(h.float() @ rows.T + bias)  # (n, m)
        return rest_out(out, 0.0)
    return rest


def planted_draws(cfg: Any, positive: bool) -> Iterator[Draw]:
    """Controls of est-basis. Positive: 20 independent sparse sources in random directions of 8 dimensions
    (an SAE's basis is independent by construction, the neurons' is not). Negative: 8 independent sparse
    neuron coordinates (independent in the neuron basis). Both read by a ReLU layer along 20 unit directions."""
    n = cfg.basis_samples
    for i in range(cfg.basis_draws):
        g = torch.Generator().manual_seed(31_337 + 1000 * cfg.seed + i)
        dirs = F.normalize(torch.randn(PLANTED_SOURCES, PLANTED_DIM, generator=g), dim=1)  # (20, 8)
        if positive:
            h_train, h_eval = (_sparse(n, PLANTED_SOURCES, 0.05, g) @ dirs for _ in range(2))  # (n, 8)
        else:
            h_train, h_eval = (_sparse(n, PLANTED_DIM, 0.25, g) for _ in range(2))  # (n, 8)
        yield Draw(h_train, h_eval, _readout(dirs, -0.1), PLANTED_DIM // 2, 2 * PLANTED_SOURCES, cfg.seed + i)


def tms_draws(cfg: Any) -> Iterator[Draw]:
    """`basis_draws` tms instances trained side by side (independent initialisations and batches)."""
    from interplab.subjects.base import load_subject
    from interplab.subjects.tms import sample_tms

    density = list(cfg.tms.get("density", [0.05]))[:1] * cfg.basis_draws
    model = load_subject("tms", **{**cfg.tms, "density": density, "seed": cfg.seed}).model
    n_feat = model.n_features

    def hidden(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = sample_tms(cfg.basis_samples, model.density, n_feat, torch.Generator().manual_seed(seed))  # (n, inst, f)
        return x, activations(model, x, ["hidden"])["hidden"]  # (n, inst, m)

    (_, h_train), (x_eval, h_eval) = hidden(cfg.seed + 1), hidden(cfg.seed + 2)
    for i in range(cfg.basis_draws):
        yield Draw(h_train[:, i], h_eval[:, i], _tms_rest(model, i, x_eval[:, i]), max(1, model.n_hidden // 2),
                   2 * n_feat, cfg.seed + i)


def _tms_rest(model: Any, i: int, x: torch.Tensor) -> Rest:
    """Instance i's decoder on hidden rows (n, m); loss: importance-weighted error against x (n, f)."""
    W, b, importance = model.W[i].detach(), model.b[i].detach(), model.importance[i]  # (m, f), (f,), (f,)

    def rest(h: torch.Tensor) -> RestOut:
        out = F.relu(h.float() @ W + b)  # (n, f)
        return rest_out(out, float(((out - x).square() * importance).sum(-1).mean()))
    return rest


def lm_draws(cfg: Any, name: str) -> Iterator[Draw]:
    """Independent token samples of an LM (one model): residual stream at its middle layer."""
    from interplab.subjects.base import load_subject

    subject = load_subject(name, seq_len=cfg.lm_seq_len)
    model = subject.model
    layer = int(model.config.num_hidden_layers) // 2
    site = f"resid_post.{layer}"
    n_seq = max(2, cfg.lm_samples // (cfg.lm_seq_len - 1))
    for i in range(cfg.basis_draws):
        ids_train = subject.sample(n_seq, torch.Generator().manual_seed(cfg.seed + 1 + 2 * i), split="train")
        ids_eval = subject.sample(n_seq, torch.Generator().manual_seed(cfg.seed + 2 + 2 * i), split="test")
        with torch.no_grad():
            a_train = activations(model, ids_train, [site], sites=subject.sites)[site][:, 1:]  # (b, seq-1, d)
            a_eval = activations(model, ids_eval, [site], sites=subject.sites)[site]  # (b, seq, d)
        d = a_eval.shape[-1]
        yield Draw(a_train.reshape(-1, d), a_eval[:, 1:].reshape(-1, d),
                   _lm_rest(model, layer, site, subject.sites, ids_eval, a_eval), 32, 2 * d, cfg.seed + i)


def _lm_rest(model: Any, layer: int, site: str, sites: Any, ids_eval: torch.Tensor, a_eval: torch.Tensor) -> Rest:
    """Logits' mean and variance over positions 1..seq-2, and next-token cross-entropy, on replaced rows."""
    d = a_eval.shape[-1]

    def rest(h: torch.Tensor) -> RestOut:
        total, sq, loss, n = 0.0, 0.0, 0.0, 0
        rows = h.view(ids_eval.shape[0], -1, d)  # (b, seq-1, d)
        for start in range(0, ids_eval.shape[0], 8):  # batches of 8 windows bound the logits' memory
            ids = ids_eval[start:start + 8]
            logits = _logits_after(model, layer, site, sites, a_eval[start:start + 8],
                                   rows[start:start + 8], ids)[:, 1:-1].double()  # (b, seq-2, vocab)
            total = total + logits.sum((0, 1))
            sq = sq + logits.square().sum((0, 1))
            n += logits.shape[0] * logits.shape[1]
            loss += float(F.cross_entropy(logits.flatten(0, 1), ids[:, 2:].flatten(), reduction="sum"))
        mean = total / n
        return RestOut(mean, (sq / n - mean.square()).clamp_min(0), loss / n)
    return rest


def _logits_after(model: Any, layer: int, site: str, sites: Any, clean: torch.Tensor, rows: torch.Tensor,
                  ids: torch.Tensor) -> torch.Tensor:
    """Logits with positions 1.. of resid_post.{layer} replaced by rows (b, seq-1, d).

    A Llama-shaped model runs only the layers after `layer`, from `inputs_embeds` (half the cost of a
    full forward pass with a splice); any other model gets the splice.
    """
    h = clean.clone()  # (b, seq, d)
    h[:, 1:] = rows.to(h.dtype)
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers"):
        with splice(model, {site: lambda a: h.to(a.dtype)}, sites=sites):
            return model(ids).logits
    layers = inner.layers
    try:
        inner.layers = torch.nn.ModuleList(list(layers)[layer + 1:])
        return model(inputs_embeds=h, use_cache=False).logits
    finally:
        inner.layers = layers


def basis_controls(cfg: Any) -> tuple[Evidence, Evidence]:
    """est-basis's planted positive and negative controls through `basis_pipeline` (cached)."""
    settings = {"samples": cfg.basis_samples, "draws": cfg.basis_draws, "repeats": cfg.basis_repeats,
                "sae_steps": cfg.sae_steps, "seed": cfg.seed}
    return tuple(cached_evidence(f"estimators/est-basis/{role}", {"role": role, **settings},
                                 lambda p=(role == "positive"): basis_pipeline(planted_draws(cfg, p), cfg,
                                                                               VERDICT_BASES)[0])
                 for role in ("positive", "negative"))  # type: ignore[return-value]


def rank_repeats(n: int) -> int:
    """How many of n permutation repeats rank the bases (round-1 statistic); the rest score the difference."""
    return max(2, n // 3)


def loss_evidence(damage: dict[str, BasisDamage], seed: int) -> tuple[Evidence, str, str]:
    """Round-1 statistic on one draw: least delta loss (ranked on the first repeats) against the runner-up,
    the paired difference bootstrapped over the other repeats. Returns evidence, best, runner-up."""
    n = min(len(v.per_repeat_delta_loss) for v in damage.values())
    n_rank = rank_repeats(n)
    if n - n_rank < 2:
        raise ValueError(f"the round-1 basis statistic needs at least {n_rank + 2} permutation repeats, got {n}")
    ranked = {b: float(np.mean(v.per_repeat_delta_loss[:n_rank])) for b, v in damage.items()}
    best, second = sorted(damage, key=lambda b: ranked[b])[:2]
    diff = (np.array(damage[second].per_repeat_delta_loss[n_rank:n])
            - np.array(damage[best].per_repeat_delta_loss[n_rank:n]))  # (n - n_rank,)
    ev = bootstrap_units(diff, 0.0, how=f"bootstrap over {len(diff)} permutation repeats (ranked on {n_rank} "
                         "others; one draw, one fit)", seed=seed, extra={"best": best, "runner_up": second})
    return ev, best, second


def _subject_metrics(damages: list[dict[str, BasisDamage]]) -> dict[str, Any]:
    """Per basis: means over draws, and the per-draw values."""
    out: dict[str, Any] = {}
    for b in damages[0]:
        per = [d[b] for d in damages]
        out[b] = {"mean_error": float(np.mean([p.mean_error for p in per])),
                  "delta_loss": float(np.mean([p.delta_loss for p in per])),
                  "recon_delta_loss": float(np.mean([p.recon_delta_loss for p in per])),
                  "clean_loss": float(np.mean([p.clean_loss for p in per])),
                  "per_draw_mean_error": [p.mean_error for p in per],
                  "per_draw_delta_loss": [p.delta_loss for p in per],
                  "per_repeat_mean_error": per[0].per_repeat_mean_error,
                  "per_repeat_delta_loss": per[0].per_repeat_delta_loss}
    return out


def run_basis(cfg: Any, scale: str) -> tuple[dict[str, Any], list[Verdict]]:
    """metrics[subject][basis] = {mean_error, delta_loss, ...} and the est-basis (and est-basis-loss) verdicts."""
    metrics: dict[str, Any] = {}
    verdicts = []
    ui.info("estimators: est-basis controls (independent sources, independent neurons)")
    pos, neg = basis_controls(cfg)
    for subject in cfg.basis_subjects:
        ui.info(f"estimators: basis study on {subject}")
        draws = tms_draws(cfg) if subject == "tms" else lm_draws(cfg, subject)
        ev, damages = basis_pipeline(draws, cfg)
        metrics[subject] = _subject_metrics(damages)
        label = "tms hidden" if subject == "tms" else f"{subject} resid_post (middle layer)"
        verdicts.append(judge("est-basis", ev, label, positive=pos, negative=neg, scale=scale,
                              note="mean_error(neurons) - mean_error(sae-topk) of the predicted output mean; "
                                   + ("tms instances" if subject == "tms" else "token samples of one model")
                                   + " and basis fits drawn independently"))
        old, best, second = loss_evidence(damages[0], cfg.seed)
        verdicts.append(judge("est-basis-loss", old, label, scale=scale,
                              note=f"round-1 form: delta loss of {second} minus that of {best} (least damage), "
                                   "permuted rows against their original targets; superseded by est-basis"))
    return metrics, verdicts
