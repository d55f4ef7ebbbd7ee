"""Low-probability estimation (Wu & Hilton 2024) on character transformers, below the sampling floor.

Every method estimates P_{x ~ D}[argmax of the last-position logits = t] for every target t whose exact
probability (by enumeration of D's support) satisfies p x budget < 1 at every scored budget (and
p >= p_low), so naive sampling is below its floor throughout, as in the published study. Scores:
Itakura–Saito loss and squared error in log10 space, raw and after a per-method affine calibration
in log10 space fitted leave-one-group-out (never on a target that shares the scored target's sample).
The samplers' temperatures were chosen on distributions that are never scored (`interplab.lpe.TUNING`,
bench/lpe_tune.py). The three cruxes compare methods fixed in advance (ITGIS for importance
sampling, QLD for activation extrapolation) with a cluster bootstrap over (model, distribution)
groups, through `interplab.verdicts.judge`, with planted positive and negative controls run by the
same pipeline (`lpe_controls`). Propagation is a sixth contender in the tables (no crux). Rows whose
cost exceeds the budget (propagation when neither variant fits) are not scored; they are counted.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from interplab import ui
from interplab.config import Config
from interplab.experiments.base import Experiment, Result, register
from interplab.experiments.lpe_controls import CONTROLS, control_evidence
from interplab.experiments.lpe_figures import captions, loss_table, metrics_of, scatter_figure, summary
from interplab.experiments.lpe_pipeline import Group, crux_evidence, pipeline
from interplab.lpe.methods import ITGIS_DECAY, ITGIS_SCORE, ITGIS_TEMPERATURE, MHIS_TEMPERATURE
from interplab.runtime import single_thread
from interplab.verdicts import Verdict, judge


MIN_GROUPS = 6
"""Fewer (model, distribution) groups than this and the controls are not run, so no verdict is counted:
a cluster bootstrap over 2-5 units gives CIs too ragged to calibrate (the crux's unit says at least 6)."""


class LPEConfig(Config):
    """Settings of the low-probability-estimation experiment."""

    layers: list[int] = Field(default_factory=lambda: [1, 2, 4])
    """Depths of the chartf models studied."""
    distributions: list[str] = Field(
        default_factory=lambda: ["hex", "capitals", "mixed", "camel", "upper", "digits_punct"])
    """Named input distributions scored (interplab.lpe.DISTRIBUTIONS, never one of the tuning ones)."""
    positions: int = Field(5, ge=2, le=8)
    """Input length L; supports of 12-16 symbols give 12^L-16^L inputs to enumerate."""
    budgets: list[Annotated[int, Field(ge=3)]] = Field(default_factory=lambda: [1024, 4096, 16384, 65536])
    """Budgets in forward-pass equivalents (a backward pass counts two); each at least 3 (one forward and
    backward pass). Targets satisfy p x budget < 1 at the largest."""
    methods: list[str] = Field(default_factory=lambda: ["naive", "itgis", "mhis", "qld", "gld", "propagate"])
    """Methods compared (interplab.lpe.METHODS)."""
    p_low: float = Field(1e-9, gt=0)
    """Targets are the symbols whose exact probability lies in [p_low, 1 / max(budgets))."""
    max_targets: int = Field(12, ge=1)
    """At most this many targets per (model, distribution), evenly spread over the sorted ones."""
    floor: float = Field(1e-12, gt=0, lt=1e-9)
    """Estimates below this (zeros of naive sampling) are raised to it before scoring; counted."""
    itgis_temperature: float = Field(ITGIS_TEMPERATURE, gt=0)
    """ITGIS temperature T, chosen on the tuning distributions only (bench/lpe_tune.py, docs/lpe.md)."""
    itgis_score: Literal["logit", "logprob"] = ITGIS_SCORE
    """What ITGIS's gradient climbs: the target logit (as published) or its log-probability."""
    itgis_decay: float = Field(ITGIS_DECAY, gt=0, le=1)
    """Decay of ITGIS's moving average of gradients (0.9 as published; 1 = running mean)."""
    mhis_temperature: float = Field(MHIS_TEMPERATURE, gt=0)
    """MHIS temperature T of p(x) exp(s(x) / T), chosen on the tuning distributions only."""
    mhis_chains: int = Field(16, ge=1)
    """Parallel MHIS chains."""
    train_steps: int = Field(1000, ge=1)
    """Training steps of each chartf model (cached)."""
    text: str = "stdlib"
    """Text the chartf models train on (interplab.subjects.text.load_text: stdlib, shakespeare or a folder)."""
    is_representative: Literal["itgis", "mhis"] = "itgis"
    """Method that stands for importance sampling in the verdicts, fixed in advance (choosing the better
    of ITGIS / MHIS on the scored targets would bias the verdict); both are in the loss table."""
    extrapolation_representative: Literal["qld", "gld"] = "qld"
    """Method that stands for activation extrapolation in the verdicts, fixed in advance likewise."""
    controls: bool = True
    """Run the planted positive and negative controls (without them no verdict is counted)."""
    seed: int = 0
    """Seed of the samplers and of the planted controls (models train from seed 0)."""

    @model_validator(mode="after")
    def _check(self) -> LPEConfig:
        if self.p_low * max(self.budgets) >= 1:
            raise ValueError(f"p_low ({self.p_low:g}) x the largest budget must be below 1: targets lie in "
                             "[p_low, 1 / max(budgets))")
        missing = {self.is_representative, self.extrapolation_representative, "naive"} - set(self.methods)
        if missing:
            raise ValueError(f"methods must include the verdicts' representatives: add {', '.join(sorted(missing))}")
        return self

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        from interplab.lpe import METHODS

        for m in v:
            METHODS.get(m)  # raises UserError with the choices
        return v

    @field_validator("distributions")
    @classmethod
    def _known_dists(cls, v: list[str]) -> list[str]:
        from interplab.lpe import TUNING, distribution

        for name in v:
            distribution(name, 2)
            if name in TUNING:
                raise ValueError(f"'{name}' is a tuning distribution (the samplers' settings were chosen on it) "
                                 "and is never scored; choose others")
        return v


def chartf_groups(cfg: LPEConfig) -> tuple[list[Group], dict[str, dict[str, float]]]:
    """The scored (model, distribution) groups with their exact truths, and each model's losses."""
    from interplab.lpe import Problem, distribution, event_probs, pick_targets
    from interplab.lpe.groundtruth import spread
    from interplab.subjects.chartf import CharTFConfig, train_chartf

    groups, subjects = [], {}
    high = (1 - 1e-9) / max(cfg.budgets)  # p x budget < 1 at every budget
    for n_layers in cfg.layers:
        model = train_chartf(CharTFConfig(n_layers=n_layers, steps=cfg.train_steps, text=cfg.text))
        subjects[f"{n_layers}L"] = {"char_loss": model.test_loss.item(), "unigram_loss": model.unigram_loss.item()}
        for dname in cfg.distributions:
            dists = distribution(dname, cfg.positions)  # (L, V)
            probs = event_probs(model, dists)  # (V,) exact
            targets = spread(pick_targets(probs, cfg.p_low, high), cfg.max_targets)
            ui.info(f"{n_layers}-layer model, {dname}: {len(targets)} targets below 1/{max(cfg.budgets)}")
            if targets:
                groups.append(Group(f"{n_layers}L", dname, Problem(model, dists, targets[0], dname), targets,
                                    {t: float(probs[t]) for t in targets}))
    return groups, subjects


@register
class LPE(Experiment):
    """Estimate rare outputs of character transformers far below the sampling floor, against exact truth."""

    name = "lpe"
    order = 5
    title = "Low-probability estimation: importance sampling vs activation extrapolation vs propagation"
    Config = LPEConfig
    small: ClassVar[dict[str, Any]] = {"layers": [1], "positions": 4, "budgets": [1024, 4096], "max_targets": 6}

    def run(self, cfg: LPEConfig) -> Result:
        with single_thread():
            groups, subjects = chartf_groups(cfg)
            scored, over = pipeline(groups, cfg, set(cfg.methods))
            calibratable = cfg.controls and len(groups) >= MIN_GROUPS
            if cfg.controls and not calibratable:
                ui.info(f"lpe: {len(groups)} groups < {MIN_GROUPS}: controls not run, no verdict is counted")
            controls = control_evidence(cfg, len(groups)) if calibratable else {}
        metrics = metrics_of(scored, over, cfg, subjects)
        metrics["controls"] = {c: {role: ev.to_dict() for role, ev in d.items()} for c, d in controls.items()}
        vs = self.verdicts(scored, groups, controls, cfg)
        return Result(
            experiment=self.name, title=self.title, config=cfg.model_dump(mode="json"), seed=cfg.seed,
            metrics=metrics, verdicts=vs,
            tables={"is_loss": loss_table(metrics, cfg), "targets": _targets_table(groups),
                    "models": _models_table(subjects)},
            figures={"scatter": scatter_figure(scored, cfg)}, captions=captions(cfg), summary=summary(metrics, vs, cfg),
        )

    def verdicts(self, scored: list[dict], groups: list[Group], controls: dict, cfg: LPEConfig) -> list[Verdict]:
        out = []
        models = sorted({g.model for g in groups})
        for crux, ev in crux_evidence(scored, cfg).items():
            x = ev.extra
            ctl = controls.get(crux, {})
            what = "log(1 + fitted IS loss)" if x["transform"] == "log1p" else "fitted IS loss"
            note = (f"{x['loser']} {what} minus {x['winner']}'s at budget {x['budget']}, mean over "
                    f"{x['targets']} targets in {x['groups']} groups (> 0 favours {x['winner']}); raw (unfitted) IS loss "
                    f"difference {x['raw_difference']:.3g}; {x['winner']} has the lower fitted loss on {x['wins']} "
                    f"of {x['targets']} targets. Controls: planted '{CONTROLS[crux][0]}' (positive) and "
                    f"'{CONTROLS[crux][1]}' (negative) groups through the same pipeline.")
            out.append(judge(crux, ev, subject=f"chartf {'/'.join(models)}, {x['groups']} (model, distribution) groups",
                             positive=ctl.get("positive"), negative=ctl.get("negative"), scale=self.scale,
                             note=note))
        return out


def _targets_table(groups: list[Group]) -> dict[str, list]:
    from interplab.subjects.chartf import VOCAB

    rows = [[g.model, g.dist, repr(VOCAB[t]), g.truths[t]] for g in groups for t in sorted(g.targets, key=g.truths.get)]
    return {"columns": ["model", "distribution", "target", "exact probability"], "rows": rows}


def _models_table(subjects: dict) -> dict[str, list]:
    return {"columns": ["model", "held-out loss (nats/char)", "unigram loss (nats/char)"],
            "rows": [[m, v["char_loss"], v["unigram_loss"]] for m, v in subjects.items()]}
