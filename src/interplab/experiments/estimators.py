"""Heuristic estimators against sampling at equal FLOPs, and which basis makes independence most accurate.

(a) Random He-initialised ReLU MLPs without biases on x ~ N(0, I), every (width, depth): the
    variance-normalised MSE of the final-layer mean, nmse = Σ_u (G_u - μ_u)² / Σ_u Var_u (Var: the
    single-sample variance, so Monte Carlo with N samples scores 1/N), against the FLOPs each
    estimator counts, for `mean`, `cov` (orders 1 and `order`), `cumulant` and Monte Carlo.
(b) The rare-event variant: 3 ReLU layers, a linear layer with bias -3, a Heaviside (P ≈ 0.02 measured).
(c) Independence in a basis (see `estimators_basis.py`): tms hidden layer, an LM's residual stream.

Verdicts (definitions in `interplab.verdicts.catalog.estimators`, pipeline in `estimators_score`):
est-mlp per (width, depth) and est-rare per width: the unit is the random network. Ranking
networks pick the propagation estimator; each scored network gives log10(baseline / nmse_up), the
baseline being the better of Monte Carlo at the estimator's FLOPs and the estimate 0, nmse_up the
network's nmse plus twice its SE from the finite ground truth (a lower bound on the advantage where
the truth cannot resolve the estimator's error); t interval over the scored networks. The planted
controls (a linear network: positive; the paired network: negative) run through the same
function. Holm's correction runs over the settings (family "estimators"). Calibration over the
ensemble of networks (mean error, slope of Y on G) is reported, not judged.

results.json: metrics["mlp"]["w{width}_d{depth}"][method] = {nmse, se, flops, advantage} (means over
the scored networks), [montecarlo_N] = {nmse, flops}, ["best"] = {method, log10_advantage, ci, ...};
metrics["rare"][same]; metrics["calibration"][...][method] = {mean_error, slope, intercept};
metrics["basis"][subject][basis] = {mean_error, delta_loss, ...} (means over draws).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from interplab import ui
from interplab.config import Config
from interplab.errors import did_you_mean
from interplab.experiments import estimators_figures as figs
from interplab.experiments.base import Experiment, Result, Verdict, register
from interplab.experiments.estimators_nets import (  # noqa: F401  (mlp_network, methods: used by bench/)
    linear_network,
    linear_rare_network,
    methods,
    mlp_network,
    paired_network,
    rare_network,
)
from interplab.experiments.estimators_score import calibration, network_evidence
from interplab.runtime import single_thread
from interplab.verdicts import Evidence, cached_evidence, judge

PosInt = Annotated[int, Field(ge=1)]
Log2 = Annotated[int, Field(ge=0, le=26)]


class EstimatorsConfig(Config):
    """Settings of the estimators experiment; `interplab cruxes` runs `EstimatorsExperiment.small`."""

    widths: list[PosInt] = Field([32, 64, 128, 256], min_length=1)
    """Widths of the random MLPs in part (a)."""
    depths: list[PosInt] = Field([2, 4, 8], min_length=1)
    """Hidden ReLU layers of the random MLPs in part (a)."""
    networks: int = Field(6, ge=3)
    """Scored random networks per (width, depth): the units of the verdict's t interval."""
    ranking_networks: int = Field(2, ge=1)
    """Further random networks per setting on which the best propagation estimator is picked (not scored)."""
    truth_log2: int = Field(20, ge=8, le=34)
    """Ground truth from 2^truth_log2 samples per network."""
    truth_chunks: int = Field(16, ge=4, le=1024)
    """Independent chunks of the ground truth: the nmse is a U-statistic over them, its SE a jackknife."""
    mc_log2: list[Log2] = Field([4, 6, 8, 10, 12, 14, 16], min_length=1)
    """Monte Carlo sample counts (powers of two) measured on the ranking networks, for the figure."""
    mc_repeats: int = Field(2, ge=1)
    """Independent Monte Carlo runs per sample count (their nmse is averaged)."""
    order: int = Field(4, ge=1, le=20)
    """Highest Mehler order of the `cov` and `cumulant` estimators (order 1 is always run too)."""
    control_width: int = Field(64, ge=2)
    """Width of the planted control networks (linear positive at depth 4, paired negative)."""
    rare: bool = True
    """Run part (b), the rare-event variant."""
    rare_widths: list[PosInt] = Field([64, 256], min_length=1)
    """Widths of the rare-event networks (3 ReLU layers, then bias -3 and a Heaviside)."""
    basis: bool = True
    """Run part (c), the basis study."""
    basis_subjects: list[str] = ["tms", "smollm2"]
    """Subjects of the basis study: tms (hidden layer of a neuron model) and/or an LM name
    (smollm2, tiny-llama, hf:...), studied at resid_post of its middle layer."""
    basis_draws: int = Field(4, ge=3)
    """Independent draws per subject: tms instances trained side by side (an LM: token samples), each
    with its own basis fits; the units of the basis verdict's t interval."""
    basis_samples: int = Field(8192, ge=64)
    """Activation samples of the toy subject the bases are fitted on, and as many evaluated."""
    lm_samples: int = Field(2048, ge=16)
    """Tokens of the LM the bases are fitted on, and as many evaluated (each evaluation is a forward pass)."""
    basis_repeats: int = Field(8, ge=8)
    """Independent permutations per basis and draw (averaged); the round-1 statistic ranks the bases on the
    first third of the first draw's repeats and scores the difference on the rest."""
    tms: dict[str, Any] = {"n_features": 20, "n_hidden": 8, "variant": "neuron", "density": [0.05],
                           "importance_decay": 1.0, "steps": 3000, "lr": 3e-3}
    """Config of the tms subject of the basis study (its first density is used by every instance)."""
    lm_seq_len: int = Field(64, ge=4)
    """Tokens per window for the LM basis study."""
    sae_steps: int = Field(400, ge=1)
    """Steps of the TopK SAE fitted for the basis study."""
    seed: int = 0
    """Seed of the networks, samples and permutations."""

    @field_validator("basis_subjects")
    @classmethod
    def _basis_subjects(cls, v: list[str]) -> list[str]:
        choices = basis_subject_choices()
        shown = ["tms", *(c if c != "hf" else "hf:<local folder or hub id>" for c in choices)]
        for name in v:
            if name == "tms" or (name.startswith("hf:") and len(name) > 3) or (name != "hf" and name in choices):
                continue
            near = did_you_mean(name, [c for c in ["tms", *choices] if c != "hf" and c != name])
            raise ValueError(f"basis subject '{name}' is not supported{near}; choose tms or an LM subject, one of: "
                             f"{', '.join(shown)}")
        return v

    @model_validator(mode="after")
    def _chunks_fit_the_truth(self) -> EstimatorsConfig:
        if (1 << self.truth_log2) < 8 * self.truth_chunks:
            raise ValueError(f"truth_chunks={self.truth_chunks} needs at least {8 * self.truth_chunks} truth "
                             f"samples; raise truth_log2 (now {self.truth_log2}) or lower truth_chunks")
        return self


def basis_subject_choices() -> list[str]:
    """The registered LM subjects (those of `interplab.subjects.lm`) the basis study can take."""
    from interplab.subjects import SUBJECTS

    return [n for n in SUBJECTS.names() if getattr(SUBJECTS.get(n), "__module__", "") == "interplab.subjects.lm"]


def _control_settings(cfg: EstimatorsConfig, role: str) -> dict[str, Any]:
    """Everything a network control's evidence depends on (its cache key, with the code hash)."""
    return {"role": role, "width": cfg.control_width, "truth_log2": cfg.truth_log2, "truth_chunks": cfg.truth_chunks,
            "networks": cfg.networks, "ranking_networks": cfg.ranking_networks, "order": cfg.order, "seed": cfg.seed}


def network_controls(cfg: EstimatorsConfig, rare: bool) -> tuple[Evidence, Evidence]:
    """The planted positive and negative controls of est-mlp (or est-rare), through `network_evidence`."""
    w, crux = cfg.control_width, "est-rare" if rare else "est-mlp"
    pos_net = (lambda s: linear_rare_network(w, s)) if rare else (lambda s: linear_network(w, 4, s))
    pos = cached_evidence(f"estimators/{crux}/positive", _control_settings(cfg, "positive"),
                          lambda: network_evidence(pos_net, w, cfg)[0])
    neg = cached_evidence(f"estimators/{crux}/negative", _control_settings(cfg, "negative"),
                          lambda: network_evidence(lambda s: paired_network(w, s, rare=rare), w, cfg)[0])
    return pos, neg


def _note(ev: Evidence) -> str:
    x = ev.extra
    zero = sum(b == "zero" for b in x["baselines"])
    return (f"{x['method']} against the better of Monte Carlo at equal FLOPs and the estimate 0 (0 was the better "
            f"on {zero} of {ev.n_units} networks); {x['unresolved']} of {ev.n_units} scored networks below the "
            "truth's resolution (their value is a lower bound)")


def run_mlp(cfg: EstimatorsConfig, scale: str) -> tuple[dict, dict, list[Verdict]]:
    """Part (a): metrics per setting, calibration per setting, verdicts."""
    metrics, calib, verdicts = {}, {}, []
    ui.info("estimators: est-mlp controls (linear positive, paired negative)")
    pos, neg = network_controls(cfg, rare=False)
    for depth in cfg.depths:
        for width in cfg.widths:
            label = f"w{width}_d{depth}"
            ui.info(f"estimators: mlp {label}")
            ev, metrics[label], scored = network_evidence(lambda s: mlp_network(width, depth, s), width, cfg)
            calib[label] = calibration(scored, list(methods(cfg.order)))
            verdicts.append(judge("est-mlp", ev, f"mlp {label}", positive=pos, negative=neg, scale=scale,
                                  note=_note(ev)))
    return metrics, calib, verdicts


def run_rare(cfg: EstimatorsConfig, scale: str) -> tuple[dict, list[Verdict]]:
    """Part (b): the rare-event networks."""
    metrics, verdicts = {}, []
    ui.info("estimators: est-rare controls")
    pos, neg = network_controls(cfg, rare=True)
    for width in cfg.rare_widths:
        label = f"w{width}_d3"
        ui.info(f"estimators: rare-event {label}")
        ev, metrics[label], scored = network_evidence(lambda s: rare_network(width, s), width, cfg)
        metrics[label]["p_mean"] = float(sum(r["truth"].mean() for r in scored) / len(scored))
        verdicts.append(judge("est-rare", ev, f"rare-event {label}", positive=pos, negative=neg, scale=scale,
                              note=_note(ev) + f"; mean P(fire) {metrics[label]['p_mean']:.2g}"))
    return metrics, verdicts


@register
class EstimatorsExperiment(Experiment):
    """Mean / covariance / cumulant propagation against Monte Carlo at equal FLOPs; damage of independence per basis."""

    name = "estimators"
    order = 4
    title = "Heuristic estimators: presumed independence against sampling, at equal compute"
    Config = EstimatorsConfig
    small: ClassVar[dict[str, Any]] = {
        "widths": [32, 64, 128], "depths": [2, 4, 8], "networks": 3, "ranking_networks": 1, "truth_log2": 16,
        "truth_chunks": 16, "mc_log2": [4, 8, 12], "mc_repeats": 1, "rare_widths": [64], "basis_subjects": ["tms"],
        "basis_samples": 4096, "basis_draws": 3, "basis_repeats": 8,
        "tms": {"n_features": 20, "n_hidden": 8, "variant": "neuron", "density": [0.05],
                "importance_decay": 1.0, "steps": 1500, "lr": 3e-3},
        "sae_steps": 300,
    }

    def run(self, cfg: EstimatorsConfig) -> Result:
        with single_thread():
            mlp, calib, verdicts = run_mlp(cfg, self.scale)
            metrics: dict[str, Any] = {"mlp": mlp, "calibration": calib}
            if cfg.rare:
                metrics["rare"], rare_v = run_rare(cfg, self.scale)
                verdicts += rare_v
            if cfg.basis and cfg.basis_subjects:
                from interplab.experiments.estimators_basis import run_basis

                metrics["basis"], basis_v = run_basis(cfg, self.scale)
                verdicts += basis_v
        return figs.result(self, cfg, metrics, verdicts)
