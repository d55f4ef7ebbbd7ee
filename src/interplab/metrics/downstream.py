"""Loss recovered: splice the reconstruction x_hat = decomposer.forward(x) in place of the activation.

For each evaluation batch the subject runs four times: clean, with x_hat spliced in, with the
activation zero-ablated and with it mean-ablated (the mean over tokens, estimated on separate data
by `mean_activation`). From the summed losses over all batches:

    ce_score_zero = (CE_zero - CE_spliced) / (CE_zero - CE_clean)      (1: as good as clean)
    ce_score_mean = (CE_mean - CE_spliced) / (CE_mean - CE_clean)
    delta_ce_nats = CE_spliced - CE_clean                               (always shown: the ratios
                                                                         saturate near 1)
    kl_score      = 1 - KL(p_clean || p_spliced) / KL(p_clean || p_zero)  (SAELens's kl_div_score)

Ratios are of losses pooled over all batches (not means of per-batch ratios); CIs resample batches.

BOS. When the subject puts BOS in position 0 (`prepend_bos`), the activation store drops that
position (its activations are attention-sink outliers no decomposition was fitted on), so here
position 0 is never spliced nor ablated: only positions 1.. are replaced. The prediction made at
position 0 is then the same in all four runs, so it is left out of every CE and KL average: CE is
the mean over predictions at positions 1..T-2 (targets 2..T-1), KL the mean over positions
1..T-1. Without BOS every position is replaced and scored (CE over 0..T-2, KL over 0..T-1).

Subjects with a tokenizer are scored with next-token cross-entropy from their logits. Other
subjects with a loss (toy models) use `subject.loss` under the same four runs; the keys keep their
names (`ce_score_*`, `delta_ce_nats`), but the loss is the subject's own, and KL is computed only
where the outputs are logits (token_dims == 2, e.g. maxofk).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from interplab.decompose.base import Decomposer
from interplab.errors import UserError
from interplab.hooks import activations, splice
from interplab.metrics.bootstrap import BatchStats, Estimate, Stats, safe_div
from interplab.subjects.base import Subject

Rows = Callable[[torch.Tensor], torch.Tensor]  # (n, d) activations -> (n, d) replacement


class SiteBatch(NamedTuple):
    """What the decomposition saw and gave on one evaluation batch (positions 1.. under BOS)."""

    acts: torch.Tensor  # (n, d) activations, float32
    codes: torch.Tensor  # (n, m)
    recon: torch.Tensor  # (n, d)


def first_position(subject: Subject) -> int:
    """1 when position 0 holds a prepended BOS (skipped, as the activation store skips it), else 0."""
    return int(subject.token_dims == 2 and bool(subject.config.get("prepend_bos")))


def site_rows(a: torch.Tensor, subject: Subject) -> torch.Tensor:
    """A site's activation (*token dims, *feature dims) as rows (n, d), BOS position dropped."""
    if first_position(subject):
        a = a[:, 1:]  # (batch, seq - 1, ...)
    return a.reshape(-1, int(np.prod(a.shape[subject.token_dims :], dtype=np.int64)))  # (n, d)


def _replacing(rows: Rows, subject: Subject) -> Callable[[torch.Tensor], torch.Tensor]:
    """A splice function that replaces the rows `site_rows` would read and keeps BOS as it was."""
    skip = first_position(subject)

    def fn(a: torch.Tensor) -> torch.Tensor:
        rest = a[:, skip:] if skip else a  # (batch, [seq,] ...)
        new = rows(site_rows(a, subject)).to(a.dtype).reshape(rest.shape)
        return torch.cat([a[:, :skip], new], dim=1) if skip else new

    return fn


def checked_rows(x: torch.Tensor, where: str) -> torch.Tensor:
    """Refuse NaN/inf activations with a message that says which batch and how many."""
    bad = ~torch.isfinite(x)
    if bad.any():
        raise UserError(f"{where} holds {int(bad.sum())} NaN or infinite activation value(s); "
                        "the subject produced them: check its inputs and dtype (float32), then run again")
    return x


@torch.no_grad()
def mean_activation(subject: Subject, site: str, n_batches: int = 4, batch_size: int = 8, seed: int = 1,
                    split: str = "train") -> torch.Tensor:
    """Mean activation (d,) in float64 over tokens (BOS position excluded) of inputs drawn apart from
    the evaluation data (training split, its own seed): the baseline of mean ablation."""
    total, n = None, 0
    for b in range(n_batches):
        x = subject.sample(batch_size, torch.Generator().manual_seed(seed * 1_000_003 + b), split=split)
        rows = site_rows(activations(subject.model, x, [site], sites=subject.sites)[site], subject).double()
        total = rows.sum(0) if total is None else total + rows.sum(0)  # (d,)
        n += rows.shape[0]
    return total / n  # (d,)


# --- losses ---------------------------------------------------------------------------------------
def _next_token_ce(logits: torch.Tensor, ids: torch.Tensor, skip: int) -> torch.Tensor:
    """Per-prediction CE in nats (batch, seq - 1 - skip) at positions skip..T-2, in float32."""
    pred = logits[:, skip:-1].float()  # (batch, T-1-skip, vocab)
    return F.cross_entropy(pred.flatten(0, 1), ids[:, skip + 1 :].flatten(), reduction="none")


def _kl(clean_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || p) per row of the last axis (rows,): each row in float32, returned as float64
    so that the caller's sum over rows accumulates in float64."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (..., vocab)
    return (clean_logp.exp() * (clean_logp - logp)).sum(-1).double().flatten()  # (rows,)


class _Run(NamedTuple):
    loss_sum: float  # summed per-token CE (LM) or the batch's mean subject loss (toy)
    kl_sum: float  # summed per-position KL from the clean run (0 where undefined)


class Baseline(NamedTuple):
    """The three runs every decomposition shares on one batch: clean, zero- and mean-ablated.

    Computed once per batch and handed to `LossRecovered.update` of every decomposition scored on
    that batch, so scoring n methods costs 3 + n forward passes rather than 4n.
    """

    runs: dict[str, _Run]  # "clean", "zero", "mean"
    clean_logp: torch.Tensor | None  # (batch, [T - skip,] vocab) log-probs of the clean run, for KL


@torch.no_grad()
def _run(subject: Subject, site: str, x: torch.Tensor, rows: Rows | None,
         clean_logp: torch.Tensor | None) -> tuple[_Run, torch.Tensor | None]:
    """One forward pass with `rows` replacing the site (None: clean): its loss, its KL from
    `clean_logp` (when given), and its log-probs where the outputs are logits (else None)."""
    skip, lm = first_position(subject), subject.tokenizer is not None
    fns = {} if rows is None else {site: _replacing(rows, subject)}
    with splice(subject.model, fns, sites=subject.sites):
        if lm:
            logits = subject.forward(x)  # (batch, T, vocab)
            loss = float(_next_token_ce(logits, x, skip).double().sum())
        else:
            loss = float(subject.loss(x))
            logits = subject.forward(x) if subject.token_dims == 2 else None  # (batch, vocab) for maxofk
    if logits is None:
        return _Run(loss, 0.0), None
    logits = logits[:, skip:] if lm else logits  # (batch, [T - skip,] vocab)
    kl = 0.0 if clean_logp is None else float(_kl(clean_logp, logits).sum())
    return _Run(loss, kl), F.log_softmax(logits.float(), dim=-1)


def baseline(subject: Subject, site: str, x: torch.Tensor, mean: torch.Tensor) -> Baseline:
    """The clean, zero-ablated and mean-ablated runs on model inputs `x` (mean: (d,))."""
    clean, clean_logp = _run(subject, site, x, None, None)
    mean = mean.float()
    zero, _ = _run(subject, site, x, torch.zeros_like, clean_logp)
    ablated, _ = _run(subject, site, x, lambda a: mean.expand_as(a), clean_logp)
    return Baseline({"clean": clean, "zero": zero, "mean": ablated}, clean_logp)


class LossRecovered:
    """Per-batch loss sums of the four runs; `result` pools them and bootstraps over batches."""

    def __init__(self, subject: Subject, site: str, mean: torch.Tensor):
        if subject.loss is None and subject.tokenizer is None:
            raise UserError(f"subject '{subject.name}' has no loss, so loss recovered is undefined for it")
        self.subject, self.site = subject, site
        self.mean = mean.float()  # (d,)
        self.with_kl = subject.token_dims == 2
        self.stats = BatchStats()

    def baseline(self, x: torch.Tensor) -> Baseline:
        """The runs on `x` that do not depend on the decomposition (share them across methods)."""
        return baseline(self.subject, self.site, x, self.mean)

    def update(self, decomposer: Decomposer, x: torch.Tensor, where: str = "evaluation batch",
               base: Baseline | None = None) -> SiteBatch:
        """Score the spliced run on model inputs `x` against `base` (computed here when None, which
        must then come from the same `x`); return what the decomposition saw and gave."""
        seen: list[SiteBatch] = []

        def reconstruct(acts: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, d)
            out = decomposer.forward(checked_rows(acts.float(), f"{where} at site '{self.site}'"))
            seen.append(SiteBatch(acts.float(), out.codes, out.recon))
            return out.recon

        base = self.baseline(x) if base is None else base
        spliced, _ = _run(self.subject, self.site, x, reconstruct, base.clean_logp)
        runs = {**base.runs, "spliced": spliced}
        n, n_kl = self._counts(x)
        self.stats.add(n=n, n_kl=n_kl, **{f"loss_{k}": r.loss_sum for k, r in runs.items()},
                       **{f"kl_{k}": r.kl_sum for k, r in runs.items() if k != "clean"})
        return seen[0]

    def _counts(self, x: torch.Tensor) -> tuple[float, float]:
        """How many predictions the loss and KL sums cover (a toy loss is already a batch mean)."""
        if self.subject.tokenizer is None:
            return 1.0, float(x.shape[0])
        skip = first_position(self.subject)
        return float(x.shape[0] * (x.shape[1] - 1 - skip)), float(x.shape[0] * (x.shape[1] - skip))

    def result(self, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Estimate]:
        fns: dict[str, Callable[[Stats], np.ndarray]] = {
            "ce_score_zero": lambda s: _score(s, "zero"),
            "ce_score_mean": lambda s: _score(s, "mean"),
            "delta_ce_nats": lambda s: safe_div(s["loss_spliced"] - s["loss_clean"], s["n"]),
            "ce_clean": lambda s: safe_div(s["loss_clean"], s["n"]),
            "ce_spliced": lambda s: safe_div(s["loss_spliced"], s["n"]),
            "ce_zero": lambda s: safe_div(s["loss_zero"], s["n"]),
            "ce_mean": lambda s: safe_div(s["loss_mean"], s["n"]),
        }
        if self.with_kl:
            fns["kl_score"] = lambda s: 1 - safe_div(s["kl_spliced"], s["kl_zero"])
            fns["kl_score_mean"] = lambda s: 1 - safe_div(s["kl_spliced"], s["kl_mean"])
            fns["kl_spliced_nats"] = lambda s: safe_div(s["kl_spliced"], s["n_kl"])
        return {name: self.stats.estimate(fn, n_boot, seed, level) for name, fn in fns.items()}


def _score(s: Stats, baseline: str) -> np.ndarray:
    return safe_div(s[f"loss_{baseline}"] - s["loss_spliced"], s[f"loss_{baseline}"] - s["loss_clean"])


def loss_recovered(decomposer: Decomposer, subject: Subject, site: str, inputs: Iterable[torch.Tensor],
                   mean: torch.Tensor | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """Loss-recovered metrics of `decomposer` at `site` over batches of model inputs."""
    if mean is None:
        mean = mean_activation(subject, site)
    acc = LossRecovered(subject, site, mean)
    for i, x in enumerate(inputs):
        acc.update(decomposer, x, f"evaluation batch {i}")
    return acc.result(n_boot, seed)
