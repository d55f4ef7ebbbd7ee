"""`interplab eval PATH --subject S --site SITE`: your SAE on the yardstick, beside PCA and interplab's SAE.

    result = evaluate_folder("my-sae", EvalConfig(subject="smollm2", site="resid_post.6"), Path("runs/eval"))

The folder is an SAELens folder (cfg.json + sae_weights.safetensors, as SAELens and interplab save
them) or one hookpoint of a sparsify checkpoint (cfg.json + sae.safetensors). Its mean L0 on the
site's training-split activations sets the budget k; sign-split PCA at that k and interplab's
sae-topk at that k and width are fitted on the same activations. All of them are then scored by
`interplab.metrics.evaluate_many` on the same held-out batches, so your SAE's numbers are exactly
those `interplab.metrics.evaluate` gives it with the same settings. Each method also gets its loss
curve (`interplab.metrics.loss_curve`: loss recovered against the number of features read), all on
the same ranking and scoring inputs. The run folder gets results.json, figures/ and index.html like
any experiment's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from pydantic import Field

from interplab import ui
from interplab.config import Config
from interplab.decompose import Decomposer, create, load
from interplab.decompose.saelens import CFG_FILE, WEIGHTS_FILE
from interplab.decompose.sparsify import hookpoints, is_sparsify_folder, load_sparsify
from interplab.errors import UserError
from interplab.experiments.base import Result, write_result
from interplab.hooks import activations
from interplab.metrics import evaluate_many
from interplab.metrics.loss_curve import loss_curves as curves_of
from interplab.report.html import fmt, fmt_ci
from interplab.store import harvest_rows
from interplab.subjects import load_subject
from interplab.subjects.base import Subject
from interplab.subjects.sites import resolve

SHOWN = ["fvu", "l0", "dead_frac", "dense_frac", "ce_score_zero", "ce_score_mean", "delta_ce_nats", "kl_score",
         "bits_per_token", "interp_score", "probe_f1_k1", "mmcs", "mcc", "f1"]


class EvalConfig(Config):
    """Which site your SAE is scored at, and how the yardstick and the baselines are taken."""

    subject: str
    """Subject the SAE was trained on (see `interplab list subjects`)."""
    subject_config: dict[str, Any] = {}
    """Settings of the subject (`--set key=value` on the command line)."""
    site: str
    """Site the SAE reads (see `interplab list sites SUBJECT`)."""
    train_tokens: int = Field(16_384, ge=64)
    """Training-split activations: they measure your SAE's L0 and fit the baselines."""
    n_batches: int = Field(8, ge=1)
    """Held-out evaluation batches (CIs resample them)."""
    batch_size: int | None = Field(None, ge=1)
    """Model inputs per evaluation batch (None: evaluate's default)."""
    n_boot: int = Field(1000, ge=0)
    """Bootstrap resamples of the evaluation batches."""
    baselines: bool = True
    """Fit and score sign-split PCA and interplab's sae-topk at your SAE's L0 beside it."""
    sae_steps: int = Field(2000, ge=1)
    """Optimizer steps of the built-in sae-topk."""
    sae_width: int | None = Field(None, ge=1)
    """Latents of the built-in sae-topk (None: as many as yours)."""
    loss_curve: bool = True
    """Also draw each method's loss curve (loss recovered against the n features read, `metrics.loss_curve`)."""
    curve_rank_batches: int = Field(4, ge=1)
    """Training-split batches the loss curve ranks features on (its scoring batches are the n_batches held-out ones)."""
    curve_singles: int = Field(16, ge=0)
    """Features per method spliced in alone for the loss curve's single-feature shares (a sample of the live ones)."""
    seed: int = 0
    """Seed of the activations drawn, the baselines' fits and the evaluation batches."""


def load_folder(path: Path) -> tuple[Decomposer, str]:
    """The decomposition saved in `path` and its format ("saelens" or "sparsify")."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"'{path}' does not exist; pass the folder of a saved SAE ({CFG_FILE} with "
                        f"{WEIGHTS_FILE} for SAELens or interplab, or sae.safetensors for sparsify)")
    if not path.is_dir():
        raise UserError(f"'{path}' is a file; pass the folder that holds {CFG_FILE} and the SAE's weights")
    if (path / WEIGHTS_FILE).is_file():
        return load(path), "saelens"
    if is_sparsify_folder(path) or hookpoints(path):
        return load_sparsify(path), "sparsify"
    raise UserError(f"'{path}' holds no SAE: expected {CFG_FILE} with {WEIGHTS_FILE} (SAELens, interplab) or "
                    "with sae.safetensors (sparsify)")


def check_site(subject: Subject, site: str, d_in: int, where: Path) -> None:
    """The site exists and its activations have the SAE's width, or one UserError says which."""
    resolve(subject.model, site, dict(subject.sites))
    with torch.no_grad():
        x = subject.sample(1, torch.Generator().manual_seed(0))
        width = activations(subject.model, x, [site], sites=subject.sites)[site].shape[-1]
    if width != d_in:
        raise UserError(f"the SAE in '{where}' reads d_in={d_in} but site '{site}' of {subject.name} has width "
                        f"{width}; pass the site (or subject settings) it was trained on")


def mean_l0(dec: Decomposer, rows: torch.Tensor) -> float:
    """Mean number of nonzero codes per row."""
    with torch.no_grad():
        codes = dec.transform(rows)  # (n, d_sae)
    return float((codes != 0).sum(1).double().mean())


def baselines(dec: Decomposer, rows: torch.Tensor, cfg: EvalConfig) -> tuple[dict[str, Decomposer], dict[str, Any]]:
    """Sign-split PCA and sae-topk at the SAE's L0 (rounded, at least 1), fitted on `rows`."""
    k = max(1, round(mean_l0(dec, rows)))
    width = cfg.sae_width or dec.n_components_
    fits, info = {}, {}
    for name, make in (("pca", lambda: create("pca", k=k, sparsify="topk", seed=cfg.seed)),
                       ("sae-topk", lambda: create("sae-topk", k=k, width=width, steps=cfg.sae_steps, seed=cfg.seed))):
        ui.info(f"eval: fitting {name} at k={k}")
        start = time.perf_counter()
        fits[name] = make().fit(rows)
        info[name] = {"k": k, "n_components": fits[name].n_components_, "fit_seconds": time.perf_counter() - start}
    return fits, info


def loss_curves(decs: dict[str, Decomposer], subject: Subject, site: str, cfg: EvalConfig) -> dict[str, Any]:
    """Each method's loss curve (`interplab.metrics.loss_curves`, issue 12): features ranked by
    first-order attribution on training-split inputs, the top n spliced in on held-out inputs
    (n = 1, 2, 4, ... up to the width), all methods on the same inputs; {} when `cfg.loss_curve` is off."""
    if not cfg.loss_curve:
        return {}
    ui.info(f"eval: loss curves of {', '.join(decs)}")
    curves = curves_of(decs, subject, site, rank_batches=cfg.curve_rank_batches, score_batches=max(2, cfg.n_batches),
                       batch_size=cfg.batch_size, singles=cfg.curve_singles, seed=cfg.seed)
    return {name: c.summary(cfg.n_boot, cfg.seed) for name, c in curves.items()}


def evaluate_folder(path: Path, cfg: EvalConfig, out_dir: Path) -> Result:
    """Score the SAE in `path` (and the baselines) and write the run folder `out_dir`."""
    start = time.perf_counter()
    dec, kind = load_folder(path)
    subject = load_subject(cfg.subject, **cfg.subject_config)
    check_site(subject, cfg.site, dec.d_in_, Path(path))
    ui.info(f"eval: harvesting {cfg.train_tokens} training activations at {cfg.site}")
    rows = harvest_rows(subject, [cfg.site], cfg.train_tokens, cfg.seed, 16, cached=False)[cfg.site]  # (n, d)
    yours = Path(path).resolve().name or "yours"
    if yours in ("pca", "sae-topk"):  # a folder named like a baseline keeps its own column
        yours += " (yours)"
    decs: dict[str, Decomposer] = {yours: dec}
    setup = {yours: {"format": kind, "k": round(mean_l0(dec, rows), 3), "n_components": dec.n_components_}}
    if cfg.baselines:
        fits, info = baselines(dec, rows, cfg)
        decs.update(fits)
        setup.update(info)
    ui.info(f"eval: scoring {', '.join(decs)} on {cfg.n_batches} held-out batches")
    settings = {"n_batches": cfg.n_batches, "batch_size": cfg.batch_size, "seed": cfg.seed, "n_boot": cfg.n_boot}
    scores = evaluate_many(decs, subject, cfg.site, **settings)
    curves = loss_curves(decs, subject, cfg.site, cfg)
    result = Result(
        experiment="eval", title=f"{yours} on {subject.name} {cfg.site}", config=cfg.model_dump(mode="json"),
        seed=cfg.seed, metrics={"scores": scores, "setup": setup, "evaluate_settings": settings, "path": str(path),
                                **({"loss_curve": curves} if curves else {})},
        tables={"yardstick": _table(scores), "setup": _setup_table(setup)},
        figures={"yardstick": _figure(scores), **({"loss_curve": _curve_figure(curves)} if curves else {})},
        key_figure="yardstick",
        captions={"yardstick": "Each metric with its 95% CI over evaluation batches, per method",
                  "loss_curve": "Fraction of the mean-ablation loss gap recovered with the top-n features (ranked by "
                                "first-order attribution on training text) spliced in on held-out text, every other "
                                "feature at its mean; 95% CI over scoring batches",
                  "setup": "What was scored: L0 (k) on training rows; baselines fitted at your SAE's L0"},
        summary=_summary(yours, kind, setup, subject.name, cfg, curves),
        scale="",  # not an experiment's small/default scale: the settings above say what ran
    )
    result.seconds = time.perf_counter() - start
    write_result(result, out_dir)
    return result


def _shown(scores: dict[str, dict[str, Any]]) -> list[str]:
    first = next(iter(scores.values()))
    return [k for k in SHOWN if k in first]


def _table(scores: dict[str, dict[str, Any]]) -> dict[str, list]:
    """Rows of metrics, one column per method: 'value [low, high]'."""
    rows = []
    for key in _shown(scores):
        row = [key]
        for s in scores.values():
            ci = s.get("ci", {}).get(key)
            row.append(fmt(s.get(key), 4) + (f" {fmt_ci(ci, 3)}" if ci else ""))
        rows.append(row)
    return {"columns": ["metric", *scores], "rows": rows}


def _setup_table(setup: dict[str, dict[str, Any]]) -> dict[str, list]:
    return {"columns": ["method", "k (L0 on training rows)", "latents", "fit seconds"],
            "rows": [[name, s["k"], s["n_components"], s.get("fit_seconds")] for name, s in setup.items()]}


def _figure(scores: dict[str, dict[str, Any]]) -> Figure:
    """One small panel per metric, a bar per method with its CI."""
    keys = _shown(scores)
    cols = min(5, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig = Figure(figsize=(2.3 * cols, 2.1 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    names = list(scores)
    colors = ["#0b5cad", "#8c959f", "#e36209"][: len(names)] + ["#6e7781"] * max(0, len(names) - 3)
    for ax, key in zip(axes, keys, strict=False):
        vals = [np.nan if scores[n].get(key) is None else float(scores[n][key]) for n in names]
        cis = [scores[n].get("ci", {}).get(key) for n in names]
        err = np.array([[v - c[0], c[1] - v] if c and None not in c else [0, 0] for v, c in zip(vals, cis, strict=True)]).T
        ax.bar(range(len(names)), vals, color=colors, yerr=np.abs(err), capsize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xticks(range(len(names)), [n[:10] for n in names], fontsize=7, rotation=20)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return fig


def _curve_figure(curves: dict[str, dict[str, Any]]) -> Figure:
    """Loss recovered against features read (log n), one line and CI band per method."""
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for name, c in curves.items():
        ns = np.asarray(c["ns"], dtype=float)
        frac = np.array([np.nan if v is None else v for v in c["frac_mean"]], dtype=float)
        ci = np.array([[np.nan if v is None else v for v in pair] for pair in c["frac_mean_ci"]], dtype=float)
        (line,) = ax.plot(ns, frac, marker="o", ms=3, label=name)
        if ci.size:
            ax.fill_between(ns, ci[:, 0], ci[:, 1], color=line.get_color(), alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.axhline(1.0, color="#8c959f", lw=0.8, ls="--")
    ax.set_xlabel("features read (n)")
    ax.set_ylabel("fraction of loss recovered")
    ax.legend(fontsize=8)
    return fig


def _summary(yours: str, kind: str, setup: dict[str, Any], subject: str, cfg: EvalConfig,
             curves: dict[str, dict[str, Any]]) -> str:
    s = setup[yours]
    text = (f"{yours} ({kind} format, {s['n_components']} latents, mean L0 {s['k']} on {cfg.train_tokens} training-split "
            f"activations) at site {cfg.site} of {subject}, scored on {cfg.n_batches} held-out batches")
    if cfg.baselines:
        k = setup["pca"]["k"]
        text += (f" beside sign-split PCA at k={k} and interplab's sae-topk at k={k} "
                 f"({setup['sae-topk']['n_components']} latents, {cfg.sae_steps} steps), fitted on the same activations")
    text += "."
    if curves:
        reads = "; ".join(f"{name} {c['n50'] or '>' + str(c['width'])} / {c['n90'] or '>' + str(c['width'])}"
                          for name, c in curves.items())
        text += f"\nFeatures needed for 50% / 90% of the loss recovered (loss curve): {reads}."
    return text
