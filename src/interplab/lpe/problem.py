"""Low-probability-estimation problems: a model, independent per-position input distributions, a target.

The event is "the argmax of the last-position logits equals `target`" for inputs x ~ D, where
D = prod_pos dists[pos] is a product of categorical distributions over the model's vocabulary.
Named distributions have small supports (12 to 16 symbols per position, so 12^5 to 16^5 inputs over
5 positions) so that the exact probability of every event is computable by enumerating them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from interplab.errors import UserError
from interplab.subjects.chartf import VOCAB

MAX_INPUTS = 2**24  # enumeration limit for exact ground truth


@dataclass(frozen=True, eq=False)
class Problem:
    """Estimate P_{x ~ prod_pos dists[pos]}[argmax logits(x)[-1] == target].

    `model` maps ids (batch, L) to logits (batch, L, V) and has `forward_onehot`, `embed`, `body`
    and `unembed` (interplab.subjects.chartf.CharTransformer does). `dists` is (L, V), rows sum to 1.
    """

    model: nn.Module
    dists: torch.Tensor  # (L, V) float64
    target: int
    name: str = ""

    def __post_init__(self) -> None:
        d = self.dists
        if d.ndim != 2 or (d < 0).any() or not torch.allclose(d.sum(-1), torch.ones(d.shape[0], dtype=d.dtype)):
            raise UserError("dists must be an (L, V) tensor of non-negative rows that sum to 1")
        if not 0 <= self.target < d.shape[1]:
            raise UserError(f"target {self.target} is outside the vocabulary of {d.shape[1]} symbols")

    @property
    def positions(self) -> int:
        return self.dists.shape[0]

    @property
    def n_inputs(self) -> int:
        """Size of the support of D (inputs with non-zero probability)."""
        return math.prod(int((row > 0).sum()) for row in self.dists)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n inputs from D: ids (n, L)."""
        return torch.multinomial(self.dists.float(), n, replacement=True, generator=generator).T.contiguous()


def _weights(symbols: str, decay: float) -> torch.Tensor:
    """A (V,) distribution over `symbols`, weight decay**rank (decay 1 = uniform)."""
    row = torch.zeros(len(VOCAB), dtype=torch.float64)
    for rank, c in enumerate(symbols):
        row[VOCAB.index(c)] = decay**rank
    return row / row.sum()


def _vowel_heavy() -> torch.Tensor:
    row = 0.8 * _weights("eaoiu", 0.8) + 0.2 * _weights("tnsrhld", 0.7)  # (V,)
    return row


# name -> (what it is, per-position row). Skewed rows give events far rarer than 1 / support size:
# a decay of 0.65-0.8 over 12-16 symbols puts targets from 1e-9 to 1e-4 at 4-5 positions.
DISTRIBUTIONS: dict[str, tuple[str, Callable[[], torch.Tensor]]] = {
    "hex": ("hexadecimal digits 0-9a-f, weight 0.7^rank", lambda: _weights("0123456789abcdef", 0.7)),
    "capitals": ("16 capitals, weight 0.65^rank", lambda: _weights("TSAICMPBDFRNEHLW", 0.65)),
    "mixed": ("16 letters, capitals, digits, '.' and space, weight 0.75^rank", lambda: _weights("eta oinsTAhr0.d1", 0.75)),
    "camel": ("8 lower-case and 8 capital letters alternating, weight 0.8^rank", lambda: _weights("eTaSoAiInCsMhPrB", 0.8)),
    "upper": ("the 16 most common letters as capitals, weight 0.8^rank", lambda: _weights("ETAOINSHRDLCUMWF", 0.8)),
    "digits_punct": ("digits, '.' and space, weight 0.65^rank", lambda: _weights("0123456789. ", 0.65)),
    "letters": ("uniform over 12 lower-case letters a-l", lambda: _weights("abcdefghijkl", 1.0)),
    "vowel_heavy": ("80% vowels aeiou, 20% consonants tnsrhld", _vowel_heavy),
    "lower": ("12 common lower-case letters, weight 0.7^rank (tuning only)", lambda: _weights("etaoinshrdlc", 0.7)),
    "tune_mix": ("16 letters, capitals, '.', '1' and space, weight 0.72^rank (tuning only)",
                 lambda: _weights("aeio nrstlATS.1h", 0.72)),
}
TUNING = ("lower", "tune_mix")
"""Distributions on which the samplers' settings were chosen (bench/lpe_tune.py): never scored."""


def distribution(name: str, positions: int) -> torch.Tensor:
    """The named distribution over `positions` positions: (L, V) float64, the same row at each position."""
    if name not in DISTRIBUTIONS:
        raise UserError(f"unknown input distribution '{name}'; choose from {', '.join(DISTRIBUTIONS)}")
    row = DISTRIBUTIONS[name][1]()  # (V,)
    dists = row.expand(positions, -1).clone()  # (L, V)
    n = int((row > 0).sum()) ** positions
    if n > MAX_INPUTS:
        raise UserError(f"distribution '{name}' over {positions} positions has {n} inputs, more than "
                        f"{MAX_INPUTS} (2^24); use fewer positions")
    return dists
