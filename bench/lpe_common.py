"""What the LPE benches share: the chartf cases below the sampling floor, and their command-line options."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

from interplab.lpe import distribution, event_probs, pick_targets
from interplab.subjects.chartf import CharTFConfig, train_chartf


class Case(NamedTuple):
    n_layers: int
    dname: str
    model: Any
    dists: torch.Tensor  # (positions, vocab) the input distribution
    probs: torch.Tensor  # (vocab,) exact P(argmax = t)
    targets: list[int]  # symbols with 1e-9 <= p <= high, rarest first


def below_floor(layers: list[int], dist_names: list[str], positions: int, high: float) -> Iterator[Case]:
    """Every (model, distribution) pair with its exact probabilities and its targets below `high`."""
    for n_layers in layers:
        model = train_chartf(CharTFConfig(n_layers=n_layers))
        for dname in dist_names:
            dists = distribution(dname, positions)
            probs = event_probs(model, dists)
            yield Case(n_layers, dname, model, dists, probs, pick_targets(probs, 1e-9, high))


def add_case_args(ap: argparse.ArgumentParser) -> None:
    """--layers, --dists, --positions, --budget: the cases of `below_floor` (targets below 1 / budget)."""
    ap.add_argument("--layers", default="1,2,4")
    ap.add_argument("--dists", default="lower,tune_mix")
    ap.add_argument("--positions", type=int, default=4)
    ap.add_argument("--budget", type=int, default=4096)
