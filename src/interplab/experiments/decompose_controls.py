"""Planted controls of the decompose cruxes, run through the very pipeline of the real subjects.

For each real study, its `Spec` (dimension, training rows, evaluation batches and their size, the
budget k, the methods, SAE steps: everything the pipeline's outcome depends on) defines the control
studies, built from the `synthetic` subject at the same dimension with `FEATURES_PER_DIM` features
per dimension, about 4 active per row (far fewer than any k studied), and a dictionary seed of its own:

| crux | positive (claim true by construction) | negative (claim false) |
|---|---|---|
| sae-fvu, sae-fvu-batchmean | planted sparse dictionary | Gaussian with its mean and covariance |
| sae-dce | the same two, read by ReLU(<h, f_i> - THRESHOLD) for every planted feature f_i; loss = the readout's squared distortion |
| sae-recovery | planted sparse dictionary (true codes known) | d dense Gaussian codes through a random rotation (unidentifiable) |
| sae-interp, sae-interp-raw | planted activations labelled by the firing of the N_LABELS most frequent features | the Gaussian, with independent labels of the same rates |

Controls are cached (`cached_evidence`) by their spec, the pipeline's settings and the code hash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from interplab.experiments.decompose_pipeline import Study, evidence, fit_study, score_study, toy_study
from interplab.metrics.interpretability import Labels
from interplab.subjects import load_subject
from interplab.subjects.base import Subject
from interplab.subjects.synthetic import SyntheticConfig, firing_probabilities
from interplab.verdicts import Evidence, cached_evidence

FEATURES_PER_DIM = 4  # planted features per dimension (the synthetic subject's default, 256 in 64)
THRESHOLD = 0.25  # readout threshold: half the smallest planted magnitude (0.5)
N_LABELS = 30  # labels of the interpretability controls (about as many as the LM's token labels)
DICT_SEED = 1  # the controls' dictionaries differ from the real `synthetic` subject's (seed 0)
ROLES = {  # crux -> (positive kind, negative kind)
    "sae-fvu": ("sparse", "gaussian"), "sae-fvu-batchmean": ("sparse", "gaussian"), "sae-dce": ("sparse", "gaussian"),
    "sae-interp": ("sparse", "gaussian"), "sae-interp-raw": ("sparse", "gaussian"),
    "sae-recovery": ("sparse", "rotation"),
}
PIPELINE = ("refits", "width_factor", "sae_batch_size", "sae_lr", "linear_sparsify", "budget_slack", "n_boot", "seed",
            "ica_max_samples", "ica_max_iter")


class Spec(NamedTuple):
    """What a real study's controls must share with it."""

    d: int
    n_train: int
    n_batches: int
    batch_rows: int
    k: int
    methods: tuple[str, ...]
    sae_steps: int
    lm: bool  # guards an LM: labels for interpretability, no recovery (toys: the other way round)


def spec_of(study: Study, k: int) -> Spec:
    """The control spec of a real study at budget k (controls fit PCA and the SAE methods only)."""
    methods = tuple(m for m in study.methods if m == "pca" or m.startswith("sae-"))
    return Spec(study.train.shape[1], study.train.shape[0], len(study.acts), study.acts[0].shape[0], k, methods,
                study.sae_steps, study.labels is not None)


def control_subject(kind: str, d: int) -> Subject:
    """The planted subject of a control at dimension d (readout on the sparse and Gaussian kinds)."""
    readout = None if kind == "rotation" else THRESHOLD
    return load_subject("synthetic", kind=kind, d=d, n_features=FEATURES_PER_DIM * d, seed=DICT_SEED,
                        readout_threshold=readout)


def planted_labels(subject: Subject, batches: list[torch.Tensor], independent: bool, seed: int) -> Labels:
    """Labels of the rows: the firing of the N_LABELS most frequent planted features, or (independent)
    Bernoulli draws at their firing probabilities that ignore the activations."""
    p = firing_probabilities(SyntheticConfig(**subject.config))[:N_LABELS]  # (L,) most frequent first
    if independent:
        g = torch.Generator().manual_seed(seed * 1_000_003 + 31)
        cols = [torch.rand(x.shape[0], len(p), generator=g) < p for x in batches]  # (n_b, L)
    else:
        cols = [x[:, : len(p)] != 0 for x in batches]
    return Labels([f"feature_{i}" for i in range(len(p))], torch.cat(cols).numpy())


def control_study(kind: str, spec: Spec, cfg: Any) -> Study:
    """The control study of one kind, drawn like a real toy study (`decompose.toy_study`)."""
    subject = control_subject(kind, spec.d)
    truth = labels = None
    if not spec.lm and kind in ("sparse", "rotation"):
        truth = subject.ground_truth["features"]
    if spec.lm and kind in ("sparse", "gaussian"):
        labels = lambda batches: planted_labels(subject, batches, kind == "gaussian", cfg.seed)  # noqa: E731
    return toy_study(f"control:{kind}", subject, list(spec.methods), spec.sae_steps, spec.n_train, spec.n_batches,
                     spec.batch_rows, cfg.seed, truth=truth, labels=labels, toy=not spec.lm)


def run_control(kind: str, spec: Spec, cfg: Any) -> dict[str, Evidence]:
    """study -> fit -> score -> evidence on one control, exactly as on a real subject."""
    study = control_study(kind, spec, cfg)
    fits = fit_study(study, spec.k, cfg)
    return evidence(score_study(study, fits, spec.k, cfg), cfg)


class Controls:
    """Control evidence per (spec, crux), computed at most once per kind and run, cached on disk."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self._runs: dict[tuple[Spec, str], dict[str, Evidence]] = {}

    def settings(self, spec: Spec, kind: str) -> dict[str, Any]:
        pipeline = {name: getattr(self.cfg, name) for name in PIPELINE}
        return {"spec": spec._asdict(), "kind": kind, "pipeline": pipeline, "features_per_dim": FEATURES_PER_DIM,
                "threshold": THRESHOLD, "n_labels": N_LABELS, "dict_seed": DICT_SEED}

    def _lazy(self, spec: Spec, kind: str, crux: str) -> Callable[[], Evidence]:
        def compute() -> Evidence:
            if (spec, kind) not in self._runs:
                self._runs[(spec, kind)] = run_control(kind, spec, self.cfg)
            return self._runs[(spec, kind)][crux]
        return compute

    def of(self, spec: Spec, cruxes: list[str]) -> dict[str, tuple[Evidence | None, Evidence | None]]:
        """{crux: (positive, negative)} for each of `cruxes` (those a real study was judged on)."""
        out: dict[str, tuple[Evidence | None, Evidence | None]] = {}
        for crux in cruxes:
            pos, neg = (cached_evidence(f"decompose/{crux}/{kind}", {**self.settings(spec, kind), "crux": crux},
                                        self._lazy(spec, kind, crux)) for kind in ROLES[crux])
            out[crux] = (pos, neg)
        return out
