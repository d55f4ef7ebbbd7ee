"""Experiments: each composes subjects, methods and metrics into verdicts. Importing registers them."""

from interplab.experiments import superposition_intro  # noqa: F401  (registration)
from interplab.experiments.base import (
    CI,
    EXPERIMENTS,
    Experiment,
    Result,
    Verdict,
    bootstrap_ci,
    decide,
    load_result,
    register,
    run_experiment,
    write_result,
)
from interplab.experiments.cruxes import run_cruxes

__all__ = [
    "CI",
    "EXPERIMENTS",
    "Experiment",
    "Result",
    "Verdict",
    "bootstrap_ci",
    "decide",
    "load_result",
    "register",
    "run_cruxes",
    "run_experiment",
    "write_result",
]
