"""How much of the loss do the n most important features of a decomposition explain?

    curve = loss_curve(sae, subject, "resid_post.6", ns=[1, 2, 4, 8, 16, 64])
    curve.summary()["frac_mean"]           # fraction of loss recovered at each n (vs mean ablation)

Ranking (on the ranking split: `split="train"` inputs). The activation mean mu (d,) and each
feature's mean code mu_i are taken over the ranking rows. Feature i is scored by its first-order
attribution, the mean over predictions of -(g . d_i)(f_i(x) - mu_i), where d_i is the direction it
writes and g the gradient of the summed loss with respect to the site, averaged over its values at
the clean activation and at the mean activation (a two-point path integral from mean ablation to
the clean run, so the score estimates the loss the feature removes when it is read). Features are
read in decreasing order of this score.

Scoring (on the scoring split: `split="test"` inputs, drawn with other seeds). For each n the site
gets x_n = mu + sum over the top-n features of (f_i(x) - mu_i) d_i, every other feature held at its
mean (n = 0 is mean ablation: at mu, or at the `mean` a caller passes). Reported per n, from
losses pooled over the scoring batches with bootstrap CIs over batches: the fraction of loss recovered (L_mean - L_n) / (L_mean - L_clean), the
zero-ablation version (L_zero - L_n) / (L_zero - L_clean), delta CE = L_n - L_clean (nats per
prediction for sequence models, the subject's own loss for toys) and the KL to the clean output.
Also each feature's own share (n = 1 with that feature alone) for a uniform random sample of the
live features (those that fire on the ranking split) plus the top-ranked few, and the number of
features needed for 50% and 90%. The decomposition's own full reconstruction ("recon") is scored too.

All splices of one batch share the clean forward pass up to the site and run batched after it
(`splice_batch.BatchSplicer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from interplab.errors import UserError
from interplab.metrics.bootstrap import percentile_ci, safe_div
from interplab.metrics.feature_basis import Basis, as_basis
from interplab.metrics.splice_batch import BatchSplicer
from interplab.subjects.base import Subject

ATTRIBUTION = ("first-order attribution -(g . d_i)(f_i - mu_i) averaged over ranking-split predictions, g the "
               "loss gradient at the site averaged over the clean and the mean-ablated activation")
_RANK_SEED, _SCORE_SEED = 104_729, 611_953  # generator offsets of the two splits: never the same draws


class Splits(NamedTuple):
    """Model inputs of the ranking split and of the scoring split, and how they were drawn."""

    rank: list[torch.Tensor]
    score: list[torch.Tensor]
    described: dict[str, Any]


def draw_splits(subject: Subject, rank_batches: int = 4, score_batches: int = 8, batch_size: int | None = None,
                seed: int = 0) -> Splits:
    """Ranking inputs from the training split, scoring inputs from the held-out split, with
    generator seeds from disjoint ranges (for text corpora the two splits share no position)."""
    if rank_batches < 1 or score_batches < 2:
        raise UserError("a loss curve needs at least 1 ranking batch and 2 scoring batches (its CIs resample them)")
    size = batch_size or (4 if subject.token_dims == 2 else 1024)
    rank_seeds = [seed * 1_000_003 + _RANK_SEED + b for b in range(rank_batches)]
    score_seeds = [seed * 1_000_003 + _SCORE_SEED + b for b in range(score_batches)]
    rank = [subject.sample(size, torch.Generator().manual_seed(s), split="train") for s in rank_seeds]
    score = [subject.sample(size, torch.Generator().manual_seed(s), split="test") for s in score_seeds]
    return Splits(rank, score, {"ranking": {"split": "train", "seeds": rank_seeds, "batch_size": size},
                                "scoring": {"split": "test", "seeds": score_seeds, "batch_size": size}})


def check_disjoint(splits: Splits) -> None:
    """Refuse a scoring batch that is also a ranking batch (ranking would then see what it scores)."""
    for i, s in enumerate(splits.score):
        for r in splits.rank:
            if s.shape == r.shape and torch.equal(s, r):
                raise UserError(f"scoring batch {i} is also a ranking batch; rank and score on disjoint inputs")


def default_ns(width: int) -> list[int]:
    """1, 2, 4, ... up to the width, and the width itself."""
    ns, n = [], 1
    while n < width:
        ns.append(n)
        n *= 2
    return [*ns, width]


class Ranking(NamedTuple):
    """A basis's features ranked on the ranking split."""

    order: torch.Tensor  # (m,) feature indices, most loss removed first
    attribution: torch.Tensor  # (m,) float64 estimated loss removed per prediction, feature order
    code_mean: torch.Tensor  # (m,) mean code over the ranking rows
    live: torch.Tensor  # (m,) bool: fired (nonzero code) on some ranking row


@dataclass
class LossCurve:
    """One basis's curve on one site. `batches` holds per-scoring-batch sums (n_batches, ...)."""

    method: str
    site: str
    ns: list[int]
    singles: list[int]  # features spliced alone
    singles_random: list[bool]  # whether each single belongs to the uniform sample of live features
    ranking: Ranking
    batches: dict[str, np.ndarray]
    splits: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.ranking.order.shape[0])

    def pooled(self) -> dict[str, np.ndarray]:
        """Each entry of `batches` summed over the scoring batches."""
        return {k: np.asarray(v).sum(0) for k, v in self.batches.items()}

    def summary(self, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
        """The curve as JSON-able numbers with bootstrap CIs over scoring batches."""
        return summarise(self, n_boot, seed)


# --- ranking ---------------------------------------------------------------------------------
def rank_features(bases: Mapping[str, Basis], splicer: BatchSplicer,
                  inputs: Sequence[torch.Tensor]) -> tuple[dict[str, Ranking], torch.Tensor]:
    """Rank every basis's features on `inputs`; also return their activation mean mu (d,)."""
    rows = [splicer.rows(x) for x in inputs]  # each (n, d)
    mu = torch.cat(rows).double().mean(0).float()  # (d,): the mean of the same rows as the mean codes
    acc: dict[str, dict[str, torch.Tensor]] = {}
    for name, basis in bases.items():
        codes = [basis.codes(r, x) for r, x in zip(rows, inputs)]  # each (n, m)
        acc[name] = {"mean": torch.cat(codes).double().mean(0), "fired": sum((c != 0).sum(0) for c in codes),
                     "fg": torch.zeros(basis.n_features, dtype=torch.float64),
                     "g": torch.zeros(basis.n_features, dtype=torch.float64)}
    n_pred = 0.0
    for r, x in zip(rows, inputs):
        g = splicer.grads(x, torch.stack([r, mu.expand_as(r)])).mean(0)  # (n, d) path-averaged gradient
        n_pred += splicer.predictions(x)
        for name, basis in bases.items():
            G = (g @ basis.directions.T).double()  # (n, m) gradient along each direction
            acc[name]["fg"] += (basis.codes(r, x).double() * G).sum(0)
            acc[name]["g"] += G.sum(0)
    out = {}
    for name, a in acc.items():
        attribution = -(a["fg"] - a["mean"] * a["g"]) / max(n_pred, 1.0)  # (m,)
        order = torch.argsort(attribution, descending=True, stable=True)
        out[name] = Ranking(order, attribution, a["mean"].float(), a["fired"] > 0)
    return out, mu


# --- variants --------------------------------------------------------------------------------
def curve_variants(basis: Basis, rank: Ranking, mu: torch.Tensor, ns: list[int], singles: list[int],
                   rows: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Replacements (1 + len(ns) + len(singles), n, d): the full reconstruction, x_n for each n in
    ascending order, then each single feature alone; every other feature at its mean."""
    F = basis.codes(rows, inputs) - rank.code_mean  # (n, m) centred codes
    D = basis.directions  # (m, d)
    out = [basis.recon(rows, inputs)]
    acc, prev = torch.zeros_like(rows), 0
    for n in ns:
        idx = rank.order[prev:n]
        acc = acc + F[:, idx] @ D[idx]  # (n_rows, d)
        out.append(mu + acc)
        prev = n
    out += [mu + F[:, i : i + 1] * D[i] for i in singles]
    return torch.stack(out)  # (K, n_rows, d)


def pick_singles(rank: Ranking, n_random: int, n_top: int, seed: int) -> tuple[list[int], list[bool]]:
    """The top `n_top` features by attribution and a uniform sample of `n_random` live features."""
    live = rank.live.nonzero().flatten()
    perm = torch.randperm(live.shape[0], generator=torch.Generator().manual_seed(seed))
    sample = set(live[perm[:n_random]].tolist())
    top = [int(i) for i in rank.order[:n_top]]
    chosen = top + sorted(sample - set(top))
    return chosen, [i in sample for i in chosen]


# --- the curves --------------------------------------------------------------------------------
def loss_curves(decompositions: Mapping[str, Any], subject: Subject | str, site: str,
                ns: Sequence[int] | Mapping[str, Sequence[int]] | None = None, *, splits: Splits | None = None,
                rank_batches: int = 4, score_batches: int = 8, batch_size: int | None = None,
                mean: torch.Tensor | None = None, singles: int | Mapping[str, int] = 16, singles_top: int = 4, seed: int = 0,
                max_rows: int = 16_384) -> dict[str, LossCurve]:
    """Curves of several decompositions of one site, on the same ranking and scoring inputs (so
    their differences are paired), sharing the clean, mean- and zero-ablated runs. `ns` and
    `singles` (features spliced alone, a uniform sample of the live ones, besides the top
    `singles_top`) may be given per decomposition name. `mean` (d,) replaces the ranking rows'
    mean in the mean-ablation run only (n = 0, the fractions' baseline); x_n is always built on
    the ranking rows' mean and mean codes, so a complete basis reaches the clean run at n = width."""
    if isinstance(subject, str):
        from interplab.subjects import load_subject

        subject = load_subject(subject)
    if subject.loss is None and subject.tokenizer is None:
        raise UserError(f"subject '{subject.name}' has no loss, so a loss curve is undefined for it")
    bases = {name: as_basis(d, name) for name, d in decompositions.items()}
    splits = splits or draw_splits(subject, rank_batches, score_batches, batch_size, seed)
    check_disjoint(splits)
    splicer = BatchSplicer(subject, site, max_rows=max_rows)
    ranks, mu = rank_features(bases, splicer, splits.rank)
    ablated = mu if mean is None else mean.to(mu)  # (d,) the mean-ablation run's activation
    plan = {}
    for name, basis in bases.items():
        want = ns.get(name) if isinstance(ns, Mapping) else ns
        chosen = sorted({int(n) for n in (want or default_ns(basis.n_features))})
        if chosen[0] < 1 or chosen[-1] > basis.n_features:
            raise UserError(f"ns must lie in 1..{basis.n_features} (the width of '{name}'), got {chosen}")
        n_single = singles.get(name, 0) if isinstance(singles, Mapping) else singles
        plan[name] = (chosen, *pick_singles(ranks[name], n_single, singles_top if n_single else 0, seed))
    sums: dict[str, list[Any]] = {}
    for x in splits.score:
        for i, (name, basis) in enumerate(bases.items()):  # the first call also runs mean and zero ablation
            chosen, picked, _ = plan[name]
            make = lambda r, b=basis, k=ranks[name], c=chosen, p=picked, x=x, i=i: torch.cat(  # noqa: E731
                [torch.stack([ablated.expand_as(r), torch.zeros_like(r)])[: 2 if i == 0 else 0],
                 curve_variants(b, k, mu, c, p, r, x)])
            out = splicer.losses(x, make, (2 if i == 0 else 0) + 1 + len(chosen) + len(picked))
            if i == 0:
                _append(sums, "shared", out.clean_loss, out.loss[:2], out.kl[:2], out.n, out.n_kl)
            _append(sums, name, out.clean_loss, out.loss[2 if i == 0 else 0 :], out.kl[2 if i == 0 else 0 :],
                    out.n, out.n_kl)
    shared = _stack(sums["shared"])
    return {name: LossCurve(name, site, plan[name][0], plan[name][1], plan[name][2], ranks[name],
                            _batches(shared, _stack(sums[name]), len(plan[name][0])), splits.described)
            for name in bases}


def loss_curve(decomposition: Any, subject: Subject | str, site: str, ns: Sequence[int] | None = None,
               **kwargs: Any) -> LossCurve:
    """The curve of one decomposition (a fitted interplab decomposition, a SAELens folder path or a
    Basis) at `site` of `subject`; keyword arguments as `loss_curves`."""
    basis = as_basis(decomposition)
    return loss_curves({basis.name: basis}, subject, site, ns, **kwargs)[basis.name]


def _append(sums: dict[str, list[Any]], key: str, clean: float, loss: torch.Tensor, kl: torch.Tensor, n: float,
            n_kl: float) -> None:
    sums.setdefault(key, []).append((clean, loss.numpy(), kl.numpy(), n, n_kl))


def _stack(rows: list[Any]) -> dict[str, np.ndarray]:
    clean, loss, kl, n, n_kl = zip(*rows)
    return {"clean": np.array(clean), "loss": np.stack(loss), "kl": np.stack(kl), "n": np.array(n),
            "n_kl": np.array(n_kl)}


def _batches(shared: dict[str, np.ndarray], own: dict[str, np.ndarray], n_ns: int) -> dict[str, np.ndarray]:
    """Per-batch sums under their names: the shared runs, then this basis's variants."""
    return {"clean": shared["clean"], "n": shared["n"], "n_kl": shared["n_kl"],
            "mean": shared["loss"][:, 0], "zero": shared["loss"][:, 1],
            "kl_mean": shared["kl"][:, 0], "kl_zero": shared["kl"][:, 1],
            "recon": own["loss"][:, :1], "kl_recon": own["kl"][:, :1],
            "curve": own["loss"][:, 1 : 1 + n_ns], "kl_curve": own["kl"][:, 1 : 1 + n_ns],
            "single": own["loss"][:, 1 + n_ns :], "kl_single": own["kl"][:, 1 + n_ns :]}


# --- summaries -------------------------------------------------------------------------------
def boot_sums(batches: Mapping[str, np.ndarray], n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Sums over batches resampled with replacement: each (n_boot, *shape). The same seed gives
    the same resamples for every curve scored on the same batches (paired differences)."""
    nb = len(batches["clean"])
    if nb < 2 or n_boot < 1:
        return {k: np.empty((0, *np.shape(v)[1:])) for k, v in batches.items()}
    counts = np.random.default_rng(seed).multinomial(nb, np.full(nb, 1.0 / nb), size=n_boot).astype(float)
    return {k: np.tensordot(counts, np.asarray(v, dtype=float), axes=(1, 0)) for k, v in batches.items()}


def fractions(s: Mapping[str, np.ndarray], key: str = "curve", base: str = "mean") -> np.ndarray:
    """(L_base - L_key) / (L_base - L_clean) from summed losses: s[key] is (..., J), the
    baselines (...,); any leading (resample) axes."""
    b, c = np.asarray(s[base])[..., None], np.asarray(s["clean"])[..., None]
    return safe_div(b - np.asarray(s[key]), np.broadcast_to(b - c, np.shape(s[key])))


def per_prediction(s: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """Loss above clean per prediction, (..., J)."""
    c, n = np.asarray(s["clean"])[..., None], np.asarray(s["n"])[..., None]
    return safe_div(np.asarray(s[key]) - c, np.broadcast_to(n, np.shape(s[key])))


def kl_per_position(s: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    n = np.asarray(s["n_kl"])[..., None]
    return safe_div(s[key], np.broadcast_to(n, np.shape(s[key])))


STATISTICS = {
    "frac_mean": lambda s, key: fractions(s, key, "mean"),
    "frac_zero": lambda s, key: fractions(s, key, "zero"),
    "delta_ce": per_prediction,
    "kl": lambda s, key: kl_per_position(s, "kl_" + key),
}


def summarise(curve: LossCurve, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Pooled statistics of a curve with percentile CIs over scoring batches."""
    pooled = curve.pooled()
    boots = boot_sums(curve.batches, n_boot, seed)

    def stat(name: str, key: str) -> tuple[list[float], list[list[float]]]:
        value = STATISTICS[name](pooled, key)  # (J,)
        reps = STATISTICS[name](boots, key) if boots["clean"].size else np.full((0, value.size), np.nan)
        return value.tolist(), [list(percentile_ci(reps[:, j])) for j in range(value.size)]

    per = lambda key: float(safe_div(pooled[key], pooled["n"]))  # noqa: E731
    out: dict[str, Any] = {
        "method": curve.method, "site": curve.site, "width": curve.width, "ns": curve.ns,
        "live": int(curve.ranking.live.sum()), "ranking": ATTRIBUTION,
        "loss_clean": per("clean"), "loss_mean_ablated": per("mean"), "loss_zero_ablated": per("zero"),
    }
    recon: dict[str, Any] = {}
    for name in STATISTICS:
        out[name], out[f"{name}_ci"] = stat(name, "curve")
        v, ci = stat(name, "recon")
        recon[name], recon[f"{name}_ci"] = v[0], ci[0]
    out["recon"] = recon
    out["n50"], out["n90"] = n_needed(out["frac_mean"], curve.ns, 0.5), n_needed(out["frac_mean"], curve.ns, 0.9)
    out["singles"] = single_summary(curve, pooled)
    gap = max(out["loss_mean_ablated"] - out["loss_clean"], 1e-12)
    out["attribution_share"] = share_quantiles(curve.ranking.attribution.numpy()[curve.ranking.live.numpy()] / gap)
    return out


def n_needed(frac: Sequence[float], ns: Sequence[int], level: float) -> int | None:
    """The smallest n of the curve whose pooled fraction reaches `level` (None if none does)."""
    return next((int(n) for n, f in zip(ns, frac) if f is not None and np.isfinite(f) and f >= level), None)


def single_summary(curve: LossCurve, pooled: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Each single feature's share of the gap, and the distribution over the random sample."""
    share = fractions(pooled, "single", "mean") if len(curve.singles) else np.empty(0)  # (S,)
    rand = np.asarray(curve.singles_random, dtype=bool)
    return {"features": curve.singles, "share": np.asarray(share).tolist(), "random": rand.tolist(),
            **share_quantiles(np.asarray(share)[rand] if share.size else np.empty(0))}


def share_quantiles(x: np.ndarray) -> dict[str, Any]:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"n": 0, "median": None, "q10": None, "q90": None, "max": None}
    q10, med, q90 = np.quantile(x, [0.1, 0.5, 0.9])
    return {"n": int(x.size), "median": float(med), "q10": float(q10), "q90": float(q90), "max": float(x.max())}
