"""Planted controls of the loss-explained cruxes: readout toys run through the very same pipeline.

Each crux has a positive control (its claim true by construction) and a negative one (false by
construction), both `readout` toys (`interplab.subjects.readout`) built here and passed to
`run_study` with the run's own settings (SAE width factor, k, steps and refits, splits, batch
sizes, bootstrap), then to the crux's own evidence function. Toys that the compute cruxes read
come with their own ladder: the same readout trained for LADDER_STEPS steps, the subject on top.
Results are cached with `cached_evidence` (keyed by the toy, the settings and the code).
"""

from __future__ import annotations

import json
from typing import Any

from interplab.experiments.loss_explained_study import (
    Study,
    StudyResult,
    compute_evidence,
    run_study,
    sae_pca_evidence,
    share_evidence,
    toy_study,
)
from interplab.metrics.feature_basis import TrueFeatures
from interplab.subjects.readout import ReadoutConfig, build, readout_ladder
from interplab.verdicts import Evidence, cached_evidence

LADDER_STEPS = [4, 16, 64, 256, 1024, 4096]
TOYS: dict[str, dict[str, Any]] = {
    # a few sparse features carry the loss; PCA's components mix all 128 features
    "few": {"codes": "sparse", "n_features": 128, "d": 96, "important": 8, "mean_active": 3.0},
    # the loss reads the 16 highest-variance directions of a Gaussian site: PCA's own basis
    "dense": {"codes": "gaussian", "n_features": 72, "d": 72, "important": 16, "decay": 0.97, "noise": 0.3},
    # the loss reads every direction of an isotropic Gaussian site: each direction ~1/72 of it
    "flat": {"codes": "gaussian", "n_features": 72, "d": 72, "decay": 1.0, "noise": 0.3},
    # two features in two dimensions, each ~1/2 of the loss
    "two": {"codes": "sparse", "n_features": 2, "d": 2, "mean_active": 1.0, "noise": 0.1},
}
WITH_LADDER = {"few", "flat"}
CONTROLS: dict[str, tuple[str, str]] = {  # crux -> (positive toy, negative toy)
    "lx-sae-pca-8": ("few", "dense"),
    "lx-sae-pca-64": ("few", "dense"),
    "lx-share": ("flat", "two"),
    "lx-compute-64": ("flat", "few"),
    "lx-compute-full": ("flat", "few"),
}
PIPELINE_KEYS = ("sae_k", "width_factor", "sae_max_width", "sae_steps", "sae_batch_size", "sae_lr", "refits", "rank_batches",
                 "score_batches", "toy_batch_size", "toy_train_rows", "singles", "singles_top", "n_boot", "seed",
                 "max_rows")
_RESULTS: dict[str, StudyResult] = {}


def toy_config(name: str) -> ReadoutConfig:
    return ReadoutConfig(**TOYS[name], steps=LADDER_STEPS[-1], batch_size=128, lr=0.02)


def control_study(name: str, cfg: Any) -> Study:
    """The toy `name` as a study of its site `hidden`, with its ladder where a compute crux reads it."""
    rcfg = toy_config(name)
    subject = build(rcfg)
    m = rcfg.n_features
    truth = TrueFeatures(subject.ground_truth["features"], lambda z: z[:, :m])
    rungs = None
    if name in WITH_LADDER:
        ladder = readout_ladder(rcfg, LADDER_STEPS)  # (model, training FLOPs) per number of steps
        rungs = [(f"{s} steps", model, flops) for s, (model, flops) in zip(LADDER_STEPS, ladder)]
    return toy_study(f"control/{name}", subject, truth, cfg, rungs)


def toy_result(name: str, cfg: Any) -> StudyResult:
    """The pipeline's result on toy `name`, computed once per process and settings."""
    key = json.dumps({"toy": name, **settings(cfg)}, sort_keys=True, default=str)
    if key not in _RESULTS:
        _RESULTS[key] = run_study(control_study(name, cfg), cfg)
    return _RESULTS[key]


def settings(cfg: Any) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in PIPELINE_KEYS}


def crux_evidence(crux: str, result: StudyResult, cfg: Any, method: str = "sae") -> Evidence | None:
    """The crux's statistic on a study result: the one function real subjects and controls share.
    `method` is whose reading the compute cruxes score ("sae" or "pca"); the other cruxes compare
    the SAE with PCA and take only "sae"."""
    if crux in ("lx-compute-64", "lx-compute-full"):
        return compute_evidence(result, "n64" if crux == "lx-compute-64" else "full", method, cfg)
    if method != "sae":
        raise ValueError(f"{crux} compares the SAE with PCA: it has no per-method statistic ({method!r})")
    if crux.startswith("lx-sae-pca-"):
        return sae_pca_evidence(result, int(crux.rsplit("-", 1)[1]), cfg)
    if crux == "lx-share":
        return share_evidence(result, cfg)
    raise KeyError(crux)


def controls(crux: str, cfg: Any, method: str = "sae") -> tuple[Evidence | None, Evidence | None]:
    """(positive, negative) evidence of a crux read with `method`, cached by toy, method, settings
    and code. A control whose statistic is undefined on its toy (`crux_evidence` gives None) is not
    run: None, so `judge` calls the verdict uncalibrated."""
    out = []
    for role, name in zip(("positive", "negative"), CONTROLS[crux]):
        spec = {"role": role, "method": method, "toy": TOYS[name],
                "ladder": LADDER_STEPS if name in WITH_LADDER else None, **settings(cfg)}
        try:
            out.append(cached_evidence(f"loss-explained/{crux}/{method}/{role}", spec,
                                       lambda name=name: crux_evidence(crux, toy_result(name, cfg), cfg, method)
                                       or _missing(crux, method, name)))
        except _NotApplicable:
            out.append(None)
    return out[0], out[1]


class _NotApplicable(Exception):
    pass


def _missing(crux: str, method: str, toy: str) -> Evidence:
    raise _NotApplicable(f"{crux} read with {method} is undefined on the toy {toy!r}")
