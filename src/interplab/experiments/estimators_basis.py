"""Part (c) of the estimators experiment: which basis makes the independence presumption most accurate.

Subjects: `tms` (the hidden ReLU layer of a neuron-variant model with more features than neurons;
downstream: its importance-weighted reconstruction loss) and a language model (`smollm2` by
default) at resid_post of its middle layer (downstream: next-token cross-entropy; position 0, the
BOS attention sink, is left untouched). Bases: neurons (`identity`), PCA and ICA (full, unsparsified),
a TopK SAE, and random orthogonal directions as the null. Bases are fitted on training samples
and the damage is measured on held-out ones (`interplab.estimate.basis`).

Verdict per subject: the basis with the least loss increase against the runner-up; statistic
delta_loss(runner-up) - delta_loss(best). The permutation repeats are split: the bases are ranked on
the first third (at least 2 repeats) and the difference is scored, with a paired percentile
bootstrap, on the rest, so picking the best does not bias its margin. The CI covers permutation
noise only: the bases, the network and the samples are fitted and drawn once, so it says nothing of
how the ranking would vary with other data or other fits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from interplab import ui
from interplab.decompose import create
from interplab.estimate.basis import BasisDamage, RestOut, basis_damage, rest_out
from interplab.experiments.base import Verdict, bootstrap_ci, decide
from interplab.hooks import activations, splice


def fit_bases(x: torch.Tensor, cfg: Any, k: int, width: int) -> dict[str, Any]:
    """Neurons, random directions (null), PCA, ICA and a TopK SAE, fitted on x (n, d)."""
    d = x.shape[1]
    bases = {
        "neurons": create("identity").fit(x),
        "random": create("random", seed=cfg.seed).fit(x),
        "pca": create("pca").fit(x),
        "ica": create("ica", seed=cfg.seed, max_samples=min(x.shape[0], 20_000), max_iter=400).fit(x),
    }
    bases["sae-topk"] = create("sae-topk", k=min(k, d), width=width, steps=cfg.sae_steps,
                               batch_size=min(1024, x.shape[0]), seed=cfg.seed).fit(x)
    return bases


def tms_study(cfg: Any) -> dict[str, BasisDamage]:
    """The tms neuron model's hidden layer."""
    from interplab.subjects.base import load_subject
    from interplab.subjects.tms import sample_tms

    subject = load_subject("tms", **cfg.tms)
    model = subject.model
    n_feat = model.n_features

    def draw(seed: int) -> torch.Tensor:
        return sample_tms(cfg.basis_samples, model.density, n_feat, torch.Generator().manual_seed(seed))

    x_train, x_eval = draw(cfg.seed + 1), draw(cfg.seed + 2)  # (n, 1, n_feat)
    h_train = activations(model, x_train, ["hidden"])["hidden"][:, 0]  # (n, m)
    h_eval = activations(model, x_eval, ["hidden"])["hidden"][:, 0]  # (n, m)
    importance = model.importance[0]  # (n_feat,)

    def rest(h: torch.Tensor) -> RestOut:
        with splice(model, {"hidden": lambda a: h.view_as(a).to(a.dtype)}):
            out = model(x_eval)  # (n, 1, n_feat)
        loss = ((out - x_eval).square() * importance).sum(-1).mean()
        return rest_out(out, float(loss))

    bases = fit_bases(h_train, cfg, k=max(1, model.n_hidden // 2), width=2 * n_feat)
    return basis_damage(rest, h_eval, bases, repeats=cfg.basis_repeats, seed=cfg.seed)


def lm_study(cfg: Any, name: str) -> dict[str, BasisDamage]:
    """An LM's residual stream at its middle layer; outputs: logits, loss: next-token CE."""
    from interplab.subjects.base import load_subject

    subject = load_subject(name, seq_len=cfg.lm_seq_len)
    model = subject.model
    layer = int(model.config.num_hidden_layers) // 2
    site = f"resid_post.{layer}"
    n_seq = max(2, cfg.lm_samples // (cfg.lm_seq_len - 1))
    ids_train = subject.sample(n_seq, torch.Generator().manual_seed(cfg.seed + 1), split="train")  # (b, seq)
    ids_eval = subject.sample(n_seq, torch.Generator().manual_seed(cfg.seed + 2), split="test")  # (b, seq)
    with torch.no_grad():
        a_train = activations(model, ids_train, [site], sites=subject.sites)[site][:, 1:]  # (b, seq-1, d)
        a_eval = activations(model, ids_eval, [site], sites=subject.sites)[site]  # (b, seq, d)
    d = a_eval.shape[-1]

    def rest(h: torch.Tensor) -> RestOut:
        total, sq, loss, n = 0.0, 0.0, 0.0, 0
        rows = h.view(ids_eval.shape[0], -1, d)  # (b, seq-1, d)
        for start in range(0, ids_eval.shape[0], 8):  # batches of 8 windows bound the logits' memory
            ids = ids_eval[start:start + 8]
            logits = _logits_after(model, layer, site, subject.sites, ids, a_eval[start:start + 8],
                                   rows[start:start + 8])[:, 1:-1].double()  # (b, seq-2, vocab)
            total = total + logits.sum((0, 1))
            sq = sq + logits.square().sum((0, 1))
            n += logits.shape[0] * logits.shape[1]
            loss += float(F.cross_entropy(logits.flatten(0, 1), ids[:, 2:].flatten(), reduction="sum"))
        mean = total / n
        return RestOut(mean, (sq / n - mean.square()).clamp_min(0), loss / n)

    x = a_eval[:, 1:].reshape(-1, d)  # (b·(seq-1), d)
    bases = fit_bases(a_train.reshape(-1, d), cfg, k=32, width=2 * d)
    return basis_damage(rest, x, bases, repeats=cfg.basis_repeats, seed=cfg.seed)


def _logits_after(model: Any, layer: int, site: str, sites: Any, ids: torch.Tensor, clean: torch.Tensor,
                  rows: torch.Tensor) -> torch.Tensor:
    """Logits with positions 1.. of resid_post.{layer} replaced by rows (b, seq-1, d).

    A Llama-shaped model runs only the layers after `layer`, from `inputs_embeds` (half the cost of a
    full forward pass with a splice); any other model gets the splice.
    """
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers"):
        with splice(model, {site: _positions_put(rows)}, sites=sites):
            return model(ids).logits
    h = clean.clone()  # (b, seq, d)
    h[:, 1:] = rows.to(h.dtype)
    layers = inner.layers
    try:
        inner.layers = torch.nn.ModuleList(list(layers)[layer + 1:])
        return model(inputs_embeds=h, use_cache=False).logits
    finally:
        inner.layers = layers


def _positions_put(rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Splicer replacing positions 1.. of a (b, seq, d) activation by rows (b, seq-1, d)."""

    def put(a: torch.Tensor) -> torch.Tensor:
        a = a.clone()
        a[:, 1:] = rows.to(a.dtype)
        return a

    return put


def rank_repeats(n: int) -> int:
    """How many of n permutation repeats rank the bases; the rest score the verdict's difference."""
    return max(2, n // 3)


def verdict(damage: dict[str, BasisDamage], subject: str, seed: int) -> Verdict:
    """Least-damage basis against the runner-up: ranked on the first repeats, scored (paired) on the rest."""
    n = min(len(v.per_repeat_delta_loss) for v in damage.values())
    n_rank = rank_repeats(n)
    if n - n_rank < 2:
        raise ValueError(f"the basis verdict needs at least {n_rank + 2} permutation repeats, got {n}")
    ranked = {b: float(np.mean(v.per_repeat_delta_loss[:n_rank])) for b, v in damage.items()}
    order = sorted(damage, key=lambda b: ranked[b])
    best, second = order[0], order[1]
    diff = (np.array(damage[second].per_repeat_delta_loss[n_rank:n])
            - np.array(damage[best].per_repeat_delta_loss[n_rank:n]))  # (n - n_rank,)
    ci = bootstrap_ci(diff, seed=seed)
    return Verdict(
        crux=f"the {best} basis makes independence most accurate (least loss increase)",
        statistic=float(diff.mean()), ci=(ci.low, ci.high), null=0.0, verdict=decide(ci, 0.0), subject=subject,
        note=(f"delta loss of the runner-up ({second}) minus that of {best}; bases ranked on {n_rank} permutation "
              f"repeats, the difference scored on {len(diff)} others; the CI covers permutation noise only "
              "(one draw of the samples, one fit of each basis and of the network)"),
    )


def run_basis(cfg: Any) -> tuple[dict[str, Any], dict[str, str], list[Verdict]]:
    """metrics[subject][basis] = {mean_error, delta_loss, ...}, the least-damage basis per subject, verdicts."""
    metrics: dict[str, Any] = {}
    best: dict[str, str] = {}
    verdicts = []
    for subject in cfg.basis_subjects:
        ui.info(f"estimators: basis study on {subject}")
        damage = tms_study(cfg) if subject == "tms" else lm_study(cfg, subject)
        metrics[subject] = {b: {"mean_error": v.mean_error, "delta_loss": v.delta_loss,
                                "recon_delta_loss": v.recon_delta_loss, "clean_loss": v.clean_loss,
                                "per_repeat_delta_loss": v.per_repeat_delta_loss,
                                "per_repeat_mean_error": v.per_repeat_mean_error} for b, v in damage.items()}
        v = verdict(damage, subject, cfg.seed)
        best[subject] = min(damage, key=lambda b: damage[b].delta_loss)
        verdicts.append(v)
    return metrics, best, verdicts
