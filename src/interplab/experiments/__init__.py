"""Experiments: each composes subjects, methods and metrics into verdicts. Importing registers them.

Every module of this package is imported here, so an experiment registers itself by existing:
adding one is adding a file, with no list to keep in step.
"""

import importlib
import pkgutil

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

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")  # registration

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
