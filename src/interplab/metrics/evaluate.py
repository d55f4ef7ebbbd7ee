"""One entry point for the whole yardstick: `evaluate(decomposer, subject, site) -> dict`.

Every metric defined for the subject is computed on the same held-out evaluation batches, in one
pass over them:

- every subject: fvu, l0, dead_frac, dense_frac, bits_per_token;
- subjects with a loss (language models, toy models with a task): ce_score_zero, ce_score_mean,
  delta_ce_nats, and kl_score where the outputs are logits (token_dims == 2);
- planted subjects (`synthetic`: ground_truth has `features` and `firing_prob`): mmcs, mcc, f1;
- subjects with a tokenizer: interp_score and probe_f1_k1 / _k2 / _k5.

The returned dict holds those numbers at the top level (undefined ones are absent: `headline_keys`
lists them), `ci` with the bootstrap CI over evaluation batches of each one that depends on the
data (mmcs and the probes have none: the first depends on the dictionary alone, the second is
scored on one fixed train/test split), and `details` with the parts and side numbers: raw losses
(ce_clean, ce_spliced, ce_zero, ce_mean, kl_score_mean, kl_spliced_nats, loss_kind), the bits
breakdown (bits_index, bits_values, bits_residual, bits_raw, dictionary_bits, dict_bits_per_token),
firing_precision / firing_recall and mmcs_random_floor, interp_score_adjusted, mono_mean,
mono_hist, probe_acc_k*, probe_f1_per_label, the labels used, n_batches, n_tokens,
per_batch_fvu, per_batch_delta_ce_nats. Everything is plain floats, lists and dicts, ready for results.json.

Evaluation batches are drawn with seeds of their own (never the training stream's) from the
`test` split; the mean-ablation baseline from the `train` split with seed + 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field

from interplab.config import Config, build
from interplab.decompose.base import Decomposer
from interplab.errors import UserError
from interplab.hooks import activations
from interplab.metrics import interpretability as interp
from interplab.metrics.bootstrap import Estimate
from interplab.metrics.description_length import DEFAULT_PRECISION, DescriptionLength
from interplab.metrics.downstream import (
    Baseline,
    LossRecovered,
    SiteBatch,
    checked_rows,
    first_position,
    mean_activation,
    site_rows,
)
from interplab.metrics.groundtruth import GroundTruth, mmcs, random_floor
from interplab.metrics.reconstruction import DENSE_THRESHOLD, Reconstruction
from interplab.subjects.base import Subject

_EVAL_SEED_OFFSET = 104_729  # evaluation draws apart from any training stream seeded by `seed`


class EvalSettings(Config):
    """How the yardstick is taken."""

    n_batches: int = Field(8, ge=1)
    """Evaluation batches drawn when no data is passed; CIs resample these batches."""
    batch_size: int | None = Field(None, ge=1)
    """Model inputs per batch (None: 8 windows for sequence subjects, 4096 samples otherwise)."""
    seed: int = 0
    """Seed of the evaluation draws, of the mean-ablation draws (seed + 1) and of the bootstrap."""
    split: Literal["train", "test"] = "test"
    """Data split evaluated (held-out by default)."""
    mean_batches: int = Field(4, ge=1)
    """Batches from the training split that estimate the mean activation for mean ablation."""
    precision: float = Field(DEFAULT_PRECISION, gt=0)
    """Quantisation step of the description length, as a fraction of the data's per-dimension std."""
    amortize_tokens: int | None = Field(None, ge=1)
    """Tokens the dictionary's bits are spread over (None: the evaluated tokens)."""
    dense_threshold: float = Field(DENSE_THRESHOLD, gt=0, lt=1)
    """A latent firing on more than this fraction of tokens is dense."""
    interp: bool = True
    """Compute the label-based interpretability scores (subjects with a tokenizer)."""
    interp_tokens: int = Field(65_536, ge=1)
    """At most this many tokens (whole batches) enter the interpretability scores."""
    n_frequent: int = Field(20, ge=0)
    """Most frequent exact tokens that become labels."""
    min_label_count: int = Field(10, ge=1)
    """A label needs this many positive tokens (and as many negative) to be kept."""
    max_label_rate: float = Field(0.25, gt=0, le=1)
    """Labels on more than this fraction of tokens are dropped (they credit dense latents by chance)."""
    n_boot: int = Field(1000, ge=0)
    """Bootstrap resamples of the evaluation batches (0: no CIs)."""
    level: float = Field(0.95, gt=0, lt=1)
    """Confidence level of the CIs."""


def is_planted(subject: Subject) -> bool:
    """A subject whose activations are built from a known dictionary and whose inputs are its codes."""
    return "features" in subject.ground_truth and "firing_prob" in subject.ground_truth


def headline_keys(subject: Subject) -> list[str]:
    """The top-level keys `evaluate` returns for this subject."""
    keys = ["fvu", "l0", "dead_frac", "dense_frac", "bits_per_token"]
    if subject.tokenizer is not None or subject.loss is not None:
        keys += ["ce_score_zero", "ce_score_mean", "delta_ce_nats"]
        if subject.token_dims == 2:
            keys.append("kl_score")
    if is_planted(subject):
        keys += ["mmcs", "mcc", "f1"]
    if subject.tokenizer is not None:
        keys += ["interp_score", *(f"probe_f1_k{k}" for k in interp.PROBE_KS)]
    return keys


def draw_batches(subject: Subject, cfg: EvalSettings) -> Iterator[torch.Tensor]:
    """`n_batches` batches of model inputs from `split`, each from its own seeded generator."""
    size = cfg.batch_size or (8 if subject.token_dims == 2 else 4096)
    for b in range(cfg.n_batches):
        g = torch.Generator().manual_seed((cfg.seed + _EVAL_SEED_OFFSET) * 1_000_003 + b)
        yield subject.sample(size, g, split=cfg.split)


class _Interp:
    """Token ids and sparse codes of the first `cap` tokens (whole batches), for the labels."""

    def __init__(self, subject: Subject, cap: int):
        self.subject, self.cap, self.first = subject, cap, first_position(subject)
        self.ids: list[torch.Tensor] = []
        self.codes: list[sp.csr_matrix] = []
        self.n = 0

    def add(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        if self.n + codes.shape[0] > self.cap and self.ids:
            return
        self.ids.append(x)
        self.codes.append(interp.as_sparse(codes))
        self.n += codes.shape[0]

    def result(self, norms: np.ndarray, cfg: EvalSettings) -> tuple[dict[str, float], dict[str, Estimate], dict[str, Any]]:
        labels = interp.token_labels(self.ids, self.subject.tokenizer, self.first, cfg.n_frequent,
                                     cfg.min_label_count, cfg.max_label_rate)
        codes, norms = interp.split_signs(sp.vstack(self.codes, format="csr"), norms)  # (n, m')
        mono = interp.Monosemanticity(labels)
        start, groups, window = 0, [], 0
        for ids, c in zip(self.ids, self.codes, strict=True):
            mono.update(codes[start : start + c.shape[0]], slice(start, start + c.shape[0]), norms)
            per_window = ids.shape[1] - self.first
            groups.append(np.repeat(np.arange(window, window + ids.shape[0]), per_window))
            start, window = start + c.shape[0], window + ids.shape[0]
        m = mono.result(cfg.n_boot, cfg.seed, cfg.level)
        probes = interp.sparse_probing(codes, labels, np.concatenate(groups))
        top = {f"probe_f1_k{k}": probes[f"probe_f1_k{k}"] for k in interp.PROBE_KS}
        details = {
            "interp_score_adjusted": m["interp_score_adjusted"], "mono_mean": m["mono_mean"],
            "mono_hist": m["mono_hist"], "labels": labels.names,
            "interp_tokens": int(codes.shape[0]),
            **{f"probe_acc_k{k}": probes[f"probe_acc_k{k}"] for k in interp.PROBE_KS},
            "probe_f1_per_label": {name: {str(k): v[k][1] for k in v} for name, v in probes["per_label"].items()},
        }
        return top, {"interp_score": m["interp_score"]}, details


def _site_batch(decomposer: Decomposer, subject: Subject, site: str, x: torch.Tensor, where: str) -> SiteBatch:
    """Activations at `site` (BOS dropped), with their codes and reconstructions."""
    a = activations(subject.model, x, [site], sites=subject.sites)[site]
    acts = checked_rows(site_rows(a, subject).float(), f"{where} at site '{site}'")  # (n, d)
    out = decomposer.forward(acts)
    return SiteBatch(acts, out.codes, out.recon)


def evaluate(decomposer: Decomposer, subject: Subject, site: str, data: Iterable[torch.Tensor] | None = None,
             *, mean: torch.Tensor | None = None, **settings: Any) -> dict[str, Any]:
    """Every yardstick metric defined for `subject`, on batches of model inputs `data` (what
    `subject.sample` returns; default: `n_batches` fresh held-out batches). `mean` (d,) overrides
    the mean-ablation baseline. Settings are the fields of `EvalSettings`."""
    return evaluate_many({"only": decomposer}, subject, site, data, mean=mean, **settings)["only"]


def evaluate_many(decomposers: Mapping[str, Decomposer], subject: Subject, site: str,
                  data: Iterable[torch.Tensor] | None = None, *, mean: torch.Tensor | None = None,
                  **settings: Any) -> dict[str, dict[str, Any]]:
    """`evaluate` for several decompositions of one site at once, on the same batches: each
    batch is drawn once and its clean and ablated runs are shared, so n methods cost 3 + n
    forward passes per batch instead of 4n. Returns {name: what `evaluate` returns}."""
    cfg = build(EvalSettings, settings, where=" of evaluate")
    if not decomposers:
        raise UserError("evaluate_many needs at least one decomposition")
    if isinstance(data, (torch.Tensor, np.ndarray)):
        data = [torch.as_tensor(data)]  # one batch, not an iterable of rows
    sticks = {name: _Yardstick(dec, subject, site, cfg) for name, dec in decomposers.items()}
    with torch.no_grad():
        for i, x in enumerate(draw_batches(subject, cfg) if data is None else data):
            if i == 0 and mean is None and next(iter(sticks.values())).has_loss:
                # estimated on training-split draws of its own seed, at this batch size
                mean = mean_activation(subject, site, cfg.mean_batches, x.shape[0], cfg.seed + 1)
            base = None
            for stick in sticks.values():
                base = stick.add(x, f"evaluation batch {i}", mean, base)
    return {name: stick.result() for name, stick in sticks.items()}


class _Yardstick:
    """The accumulators of every metric defined for a subject, fed one batch of inputs at a time."""

    def __init__(self, decomposer: Decomposer, subject: Subject, site: str, cfg: EvalSettings):
        self.decomposer, self.subject, self.site, self.cfg = decomposer, subject, site, cfg
        self.lm = subject.tokenizer is not None
        self.has_loss = self.lm or subject.loss is not None
        norms = decomposer.components_.norm(dim=1)  # (m,) how much of x a unit code writes
        if getattr(getattr(decomposer, "codec_", None), "rescale_acts_by_decoder_norm", False):
            norms = torch.ones_like(norms)  # SAELens divides such codes by the row norm before decoding
        self.norms = norms
        self.recon, self.dl = Reconstruction(cfg.dense_threshold), DescriptionLength(norms, cfg.precision)
        self.gt = GroundTruth() if is_planted(subject) else None
        self.tok = _Interp(subject, cfg.interp_tokens) if self.lm and cfg.interp else None
        self.loss: LossRecovered | None = None
        self.signed = False

    def add(self, x: torch.Tensor, where: str, mean: torch.Tensor | None, base: Baseline | None) -> Baseline | None:
        """Score one batch; `base` is the batch's shared baseline runs (None: computed here and
        returned for the next decomposition scored on the same batch)."""
        if self.has_loss and self.loss is None:
            assert mean is not None  # evaluate_many estimates it before the first batch
            self.loss = LossRecovered(self.subject, self.site, mean)
        if self.loss is not None:
            base = self.loss.baseline(x) if base is None else base
            sb = self.loss.update(self.decomposer, x, where, base)
        else:
            sb = _site_batch(self.decomposer, self.subject, self.site, x, where)
        self.recon.update(sb.acts, sb.recon, sb.codes)
        self.dl.update(sb.acts, sb.codes, sb.recon)
        self.signed = self.signed or bool((sb.codes < 0).any())
        if self.gt is not None:
            k = self.subject.ground_truth["features"].shape[0]
            self.gt.update(x[:, :k], sb.codes)  # the inputs are the true codes, as in sample_activations
        if self.tok is not None:
            self.tok.add(x, sb.codes)
        return base

    def result(self) -> dict[str, Any]:
        if self.recon.stats.n_batches == 0:
            raise UserError("evaluate received no batches; pass at least one batch of model inputs")
        cfg, dec = self.cfg, self.decomposer
        boot = (cfg.n_boot, cfg.seed, cfg.level)
        ests: dict[str, Estimate] = {**self.recon.result(*boot)}
        ests.update(self.dl.result(dec.components_, cfg.amortize_tokens, *boot))
        top: dict[str, float] = {}
        details: dict[str, Any] = {
            "n_batches": self.recon.stats.n_batches, "n_tokens": int(self.recon.stats.sums()["n"]),
            "per_batch_fvu": self.recon.per_batch()["fvu"].tolist(), "signed_codes": self.signed,
        }
        if self.loss is not None:
            ests.update(self.loss.result(*boot))
            s = self.loss.stats.stacked()  # per-batch sums, for paired comparisons between methods
            details["per_batch_delta_ce_nats"] = ((s["loss_spliced"] - s["loss_clean"]) / s["n"]).tolist()
            details["loss_kind"] = "next-token cross-entropy, nats" if self.lm else "the subject's own loss"
        if self.gt is not None:
            features = self.subject.ground_truth["features"]
            ests.update(self.gt.result(*boot))
            top["mmcs"] = mmcs(features, dec.components_, self.signed)
            details["mmcs_random_floor"] = random_floor(features, dec.n_components_, signed=self.signed)
        if self.tok is not None:
            probe_top, interp_ests, interp_details = self.tok.result(self.norms.double().numpy(), cfg)
            top.update(probe_top)
            ests.update(interp_ests)
            details.update(interp_details)
        return _assemble(self.subject, ests, top, details)


def _assemble(subject: Subject, ests: dict[str, Estimate], top: dict[str, float], details: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers on top, their CIs under `ci`, the rest under `details`."""
    headline = headline_keys(subject)
    out: dict[str, Any] = {}
    ci: dict[str, list[float]] = {}
    for name, e in ests.items():
        if name in headline:
            out[name] = e.value
            ci[name] = [e.low, e.high]
        else:
            details[name] = e.value
    out.update(top)
    out["ci"] = ci
    out["details"] = details
    return out
