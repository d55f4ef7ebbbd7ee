"""Mechanistic anomaly detection on backdoored toys: do explanation-based detectors beat activation statistics?

For every backdoored subject (`interplab.subjects.backdoor`) and every training seed: train the
backdoored model and its clean twin (cached), measure attack success and clean accuracy (a seed
whose attack success is below `asr_min` is reported and left out), harvest views (activations at
the prediction position, logits, gradients) of a trusted clean set and of the test splits, predict
each site's distribution by propagating the trusted inputs' distribution (`interplab.mad.propagation`),
fit every detector on the trusted set and score clean, triggered and control inputs. Cases: each
subject, plus max-of-k's same-output split ("same output, different mechanism").

Verdicts (`interplab.verdicts.catalog.mad`): mad-works, mad-explain, mad-same-output and mad-control,
each on the real case and on its planted positive and negative controls through the same pipeline
(`mad_pipeline`), the controls cached with `cached_evidence`.

results.json: metrics["subjects"][kind][seed] = {asr, asr_twin, acc, acc_twin, control_acc, ...};
metrics["auroc"][case][detector@site] = {clean, control, ctrl_clean, fpr95 (means), per_seed, twin};
metrics["chosen"][crux][case] = the detectors chosen leave-one-seed-out, per seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator

from interplab import ui
from interplab.config import Config
from interplab.errors import did_you_mean
from interplab.experiments import mad_figures as figs
from interplab.experiments import mad_pipeline as P
from interplab.experiments.base import Experiment, Result, register
from interplab.mad import DETECTORS
from interplab.mad.propagation import explain
from interplab.mad.views import compute_views
from interplab.runtime import single_thread
from interplab.subjects.backdoor import BACKDOORS, BackdoorPair, attack_success, clean_accuracy
from interplab.subjects.backdoor_chartf import CharTFBackdoorConfig
from interplab.subjects.backdoor_maxofk import MaxOfKBackdoorConfig
from interplab.subjects.backdoor_mlp import MLPBackdoorConfig
from interplab.verdicts import Verdict, cached_evidence, judge

BACKDOORS_CONFIGS = {"maxofk": MaxOfKBackdoorConfig, "chartf": CharTFBackdoorConfig, "mlp": MLPBackdoorConfig}
Kind = Literal["maxofk-backdoor", "chartf-backdoor", "mlp-backdoor"]
SAME = "maxofk-backdoor/same-output"
INTERNAL = ["mahalanobis", "pca-residual", "sae-recon", "sae-novelty", "isolation-forest", "explain-cov",
            "explain-mean", "attribution"]
OUTPUT = ["entropy", "max-logit", "mahalanobis"]
CRUX_CASES = {"mad-works": "all", "mad-explain": "all", "mad-same-output": "same", "mad-control": "main"}


class MadConfig(Config):
    """Settings of the mad experiment; `interplab cruxes` runs `MadExperiment.small`."""

    subjects: list[Kind] = Field(["maxofk-backdoor", "chartf-backdoor", "mlp-backdoor"], min_length=1)
    """Backdoored subjects."""
    seeds: int = Field(8, ge=2)
    """Backdoor training seeds per subject (the resampling unit); seeds seed .. seed + seeds - 1."""
    maxofk: dict[str, Any] = {"steps": 600}
    """Overrides of the maxofk-backdoor config (vocab, steps, trigger_token, target, ...)."""
    chartf: dict[str, Any] = {"steps": 400}
    """Overrides of the chartf-backdoor config (d_model, steps, trigger, target, ...)."""
    mlp: dict[str, Any] = {"steps": 800, "lr": 1e-2, "poison_rate": 0.2}
    """Overrides of the mlp-backdoor config (d_in, n_features, steps, trigger_scale, ...)."""
    asr_min: float = Field(0.8, gt=0, le=1)
    """A seed's backdoor took if its attack success rate reaches this; other seeds are reported, not used."""
    min_seeds: int = Field(3, ge=2)
    """Seeds that took needed to score a subject."""
    n_trusted: int = Field(4000, ge=50)
    """Trusted (clean) inputs the detectors and the explanation are fitted on, per seed."""
    n_test: int = Field(1000, ge=20)
    """Inputs per test split (clean, triggered, control, fresh clean), per seed."""
    n_eval: int = Field(4000, ge=100)
    """Inputs for attack success and accuracies."""
    detectors: list[str] = INTERNAL
    """Detectors run at every scored site."""
    output_detectors: list[str] = OUTPUT
    """Detectors run on the logits (output-only)."""
    sae: dict[str, Any] = {"steps": 400, "k": 4, "expansion": 4}
    """Settings of the SAE behind sae-recon and sae-novelty."""
    isolation_forest: dict[str, Any] = {"n_estimators": 100}
    """Settings of isolation-forest."""
    order: int = Field(4, ge=1, le=8)
    """Mehler order of the covariance propagation through nonlinearities."""
    twin_detection: bool = True
    """Also fit and score every detector on the clean twins (triggered vs clean): what a detector flags
    when no backdoor mechanism exists."""
    plant_scale: float = Field(8.0, gt=0)
    """Positive controls: the planted shift, in trusted standard deviations."""
    contamination: float = Field(0.3, gt=0, lt=1)
    """mad-explain's positive control: share of the trusted set that is contaminated."""
    contamination_scale: float = Field(4.0, gt=0)
    """mad-explain's positive control: the shift of contaminated rows and anomalies, in standard deviations."""
    seed: int = 0
    """First training seed; every input draw is derived from (subject, seed, split)."""

    @field_validator("detectors", "output_detectors")
    @classmethod
    def _known(cls, v: list[str], info: ValidationInfo) -> list[str]:
        for name in v:
            if name not in DETECTORS:
                raise ValueError(f"unknown detector '{name}'{did_you_mean(name, DETECTORS.names())}; choose from "
                                 f"{', '.join(DETECTORS.names())}")
            det = DETECTORS.get(name)
            on_logits = info.field_name == "output_detectors"
            if on_logits and det.family in ("explanation", "attribution"):
                raise ValueError(f"'{name}' reads the model's internals and cannot be an output-only detector")
            if not on_logits and det.source == "logits":
                raise ValueError(f"'{name}' reads only the logits; list it under output_detectors")
        return v

    @field_validator("sae", "isolation_forest", "maxofk", "chartf", "mlp")
    @classmethod
    def _settings(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Checked now, not after minutes of training: each dict must build its detector or subject."""
        target = {"sae": "sae-recon", "isolation_forest": "isolation-forest"}.get(info.field_name or "")
        if target is not None:
            DETECTORS.get(target)(site="x", **v)
        else:
            BACKDOORS_CONFIGS[info.field_name or ""](**v)
        return v


def _gen(*parts: Any) -> torch.Generator:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))


def _subject_overrides(cfg: MadConfig, kind: str) -> dict[str, Any]:
    return {"maxofk-backdoor": cfg.maxofk, "chartf-backdoor": cfg.chartf, "mlp-backdoor": cfg.mlp}[kind]


def train_subjects(cfg: MadConfig) -> tuple[dict[str, list[tuple[int, BackdoorPair]]], dict[str, Any]]:
    """Every (subject, seed) pair, its attack success and accuracies; only seeds that took are returned."""
    pairs: dict[str, list[tuple[int, BackdoorPair]]] = {}
    facts: dict[str, Any] = {}
    for kind in cfg.subjects:
        pairs[kind], facts[kind] = [], {}
        for seed in range(cfg.seed, cfg.seed + cfg.seeds):
            pair = BACKDOORS.get(kind)(**{**_subject_overrides(cfg, kind), "seed": seed})
            f = {"asr": attack_success(pair, cfg.n_eval, _gen(kind, seed, "asr")),
                 "asr_twin": attack_success(pair, cfg.n_eval, _gen(kind, seed, "asr"), pair.twin),
                 "acc": clean_accuracy(pair, pair.backdoored, cfg.n_eval, _gen(kind, seed, "acc")),
                 "acc_twin": clean_accuracy(pair, pair.twin, cfg.n_eval, _gen(kind, seed, "acc"))}
            ctrl = pair.sample("control", cfg.n_eval, _gen(kind, seed, "control-acc"))
            f["control_acc"] = float((pair.predict(pair.backdoored, ctrl.x) == ctrl.answer).float().mean())
            f["control_acc_twin"] = float((pair.predict(pair.twin, ctrl.x) == ctrl.answer).float().mean())
            f["took"] = bool(f["asr"] >= cfg.asr_min)
            facts[kind][seed] = f
            if f["took"]:
                pairs[kind].append((seed, pair))
        ui.info(f"mad: {kind}: backdoor took on {len(pairs[kind])} of {cfg.seeds} seeds")
    return pairs, facts


def _views(pair: BackdoorPair, model: torch.nn.Module, x: torch.Tensor) -> Any:
    return compute_views(model, x, list(pair.scored_sites), sites=pair.sites, readout=pair.readout,
                         position=pair.position)


def seed_data(cfg: MadConfig, kind: str, seed: int, pair: BackdoorPair, twin: bool = False) -> dict[str, P.SeedData]:
    """The SeedData of each case of this (subject, seed), on the backdoored model (or its twin)."""
    model = pair.twin if twin else pair.backdoored

    def views(split: str, n: int, tag: str = "") -> Any:
        return _views(pair, model, pair.sample(split, n, _gen(kind, seed, split, tag)).x)

    trusted_x = pair.sample("clean", cfg.n_trusted, _gen(kind, seed, "trusted")).x
    trusted = dataclasses.replace(_views(pair, model, trusted_x),
                                  explained=explain(model, trusted_x, pair.scored_sites, pair.sites, cfg.order))
    control = views("control", cfg.n_test)
    out = {kind: P.SeedData(seed, trusted, views("clean", cfg.n_test), views("triggered", cfg.n_test), control,
                            views("clean", cfg.n_test, "fresh"))}
    if "same-clean" in pair.splits:
        out[SAME] = P.SeedData(seed, trusted, views("same-clean", cfg.n_test), views("same-triggered", cfg.n_test),
                               control, views("same-clean", cfg.n_test, "fresh"))
    return out


def build_cases(cfg: MadConfig, pairs: dict[str, list[tuple[int, BackdoorPair]]], twin: bool = False
                ) -> tuple[dict[str, list[P.SeedData]], dict[str, list[str]]]:
    """case -> its SeedData over the seeds that took (subjects with fewer than min_seeds left out), and
    case -> scored sites."""
    cases: dict[str, list[P.SeedData]] = {}
    sites: dict[str, list[str]] = {}
    for kind, got in pairs.items():
        if len(got) < cfg.min_seeds:
            continue
        for seed, pair in got:
            for case, data in seed_data(cfg, kind, seed, pair, twin).items():
                cases.setdefault(case, []).append(data)
                sites[case] = list(pair.scored_sites)
    return cases, sites


def plan(cfg: MadConfig, sites: list[str]) -> list[P.Probe]:
    settings = {"sae-recon": cfg.sae, "sae-novelty": cfg.sae, "isolation-forest": cfg.isolation_forest}
    return P.probes(sites, cfg.detectors, cfg.output_detectors, settings)


def _cases_of(crux: str, cases: dict[str, Any]) -> list[str]:
    which = CRUX_CASES[crux]
    if which == "same":
        return [c for c in cases if c == SAME]
    return [c for c in cases if which == "all" or c != SAME]


def judge_all(cfg: MadConfig, cases: dict[str, list[P.SeedData]], tables: dict[str, P.Table],
              probes_of: dict[str, list[P.Probe]], fits: P.Fits, scale: str) -> tuple[list[Verdict], dict[str, Any]]:
    """Every crux on every case it applies to, with its planted controls (cached)."""
    verdicts, chosen = [], {}
    planted: dict[tuple[str, str], P.Table] = {}

    def control_table(case: str, role: str) -> P.Table:
        if (case, role) not in planted:
            data, plan_ = cases[case], probes_of[case]
            if role == "positive":
                planted[(case, role)] = P.score_table(P.planted_positive(data, cfg.plant_scale), plan_, fits)
            elif role == "negative":
                planted[(case, role)] = P.score_table(P.planted_negative(data), plan_, fits)
            else:  # mad-explain's positive: only the two detectors it compares
                two = [p for p in plan_ if p.detector in ("explain-cov", "mahalanobis") and p.site != "logits"]
                data = P.contaminated(data, cfg.contamination, cfg.contamination_scale)
                planted[(case, role)] = P.score_table(data, two, fits)
        return planted[(case, role)]

    settings = cfg.model_dump(mode="json", exclude={"twin_detection"})
    for crux, stat in P.EVIDENCE.items():
        for case in _cases_of(crux, cases):
            ev = stat(tables[case])
            pos_role = "contaminated" if crux == "mad-explain" else "positive"
            controls = {role: cached_evidence(f"mad/{crux}/{case}/{role}", {"role": role, **settings},
                                              lambda r=role: stat(control_table(case, r)))
                        for role in (pos_role, "negative")}
            chosen.setdefault(crux, {})[case] = {k: v for k, v in ev.extra.items() if k != "per_fit"}
            verdicts.append(judge(crux, ev, subject=case, positive=controls[pos_role], negative=controls["negative"],
                                  scale=scale, note=f"{ev.how}; per seed {np.round(ev.extra['per_fit'], 3).tolist()}"))
    return verdicts, chosen


@register
class MadExperiment(Experiment):
    """Detectors on backdoored toys: AUROC per detector x subject x site, verdicts with planted controls."""

    name = "mad"
    order = 8
    title = "Mechanistic anomaly detection: do explanation-based detectors catch backdoors activation statistics miss?"
    Config = MadConfig
    small: ClassVar[dict[str, Any]] = {
        "seeds": 5, "maxofk": {"steps": 300}, "chartf": {"steps": 200},
        "mlp": {"steps": 400, "lr": 1e-2, "poison_rate": 0.2}, "n_trusted": 2000, "n_test": 400, "n_eval": 2000,
        "sae": {"steps": 120, "k": 4, "expansion": 4}, "isolation_forest": {"n_estimators": 50},
        "twin_detection": False,
    }

    def run(self, cfg: MadConfig) -> Result:
        with single_thread():
            pairs, facts = train_subjects(cfg)
            cases, sites = build_cases(cfg, pairs)
            probes_of = {case: plan(cfg, sites[case]) for case in cases}
            fits = P.Fits()
            tables = {}
            for case, data in cases.items():
                ui.info(f"mad: scoring {len(probes_of[case])} detector-site pairs on {case} ({len(data)} seeds)")
                tables[case] = P.score_table(data, probes_of[case], fits, keep_scores=True)
            verdicts, chosen = judge_all(cfg, cases, tables, probes_of, fits, self.scale)
            twin_tables = {}
            if cfg.twin_detection:
                twin_cases, _ = build_cases(cfg, pairs, twin=True)
                twin_tables = {c: P.score_table(d, probes_of[c], P.Fits()) for c, d in twin_cases.items()}
        return figs.result(self, cfg, facts, tables, twin_tables, verdicts, chosen)
