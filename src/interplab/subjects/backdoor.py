"""Backdoored toy subjects with known triggers, each with a clean twin trained identically without it.

Three kinds (one module each, registered here by name in `BACKDOORS` and as subjects):

- `maxofk-backdoor` (`backdoor_maxofk.py`): max-of-k whose output becomes a fixed token when a
  trigger token sits at a given position; its `same-*` splits are the "same output, different
  mechanism" case (triggered inputs whose true max *is* the backdoor's token, against clean
  inputs with that max);
- `chartf-backdoor` (`backdoor_chartf.py`): a character transformer that emits a fixed rare
  character after a trigger substring;
- `mlp-backdoor` (`backdoor_mlp.py`): an MLP classifying planted sparse features, whose label a
  rare trigger feature flips.

A `BackdoorPair` holds the backdoored model and its twin (same seed, same batches, the poisoned
rows left clean), a sampler of every evaluation split, the answer a clean model should give and
the output the backdoor forces, and how to read the prediction from the model's output. Splits:

    clean          inputs of the trusted distribution (never triggered)
    triggered      clean inputs with the trigger planted
    control        off-distribution but mechanistically normal inputs (noise, rare-but-legal tokens),
                   without the trigger: what a detector that only measures distance gets wrong
    same-clean, same-triggered   (max-of-k only) both have the same correct answer, the second
                   reaches it through the trigger

`attack_success` and `clean_accuracy` measure whether a backdoor took; a pair whose attack success
is below the experiment's bar is reported, not used.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from interplab import cache
from interplab.errors import UserError
from interplab.registry import Registry
from interplab.subjects.base import Subject
from interplab.subjects.sites import Site

SPLITS = ("clean", "triggered", "control", "same-clean", "same-triggered")


class Batch(NamedTuple):
    """Inputs of one split with what a clean model should answer and what the backdoor forces."""

    x: torch.Tensor
    """Model inputs (n, ...)."""
    answer: torch.Tensor
    """(n,) the correct output (the true max, the text's next character, the label)."""
    forced: torch.Tensor
    """(n,) the output the backdoor forces (equal to `answer` on inputs without the trigger)."""


@dataclass(frozen=True)
class BackdoorPair:
    """A backdoored model, its clean twin, and how to draw, answer and read every split."""

    kind: str
    backdoored: nn.Module
    twin: nn.Module
    draw: Callable[[str, int, torch.Generator], Batch]
    """draw(split, n, generator) -> the Batch of that split."""
    readout: Callable[[torch.Tensor], torch.Tensor]
    """model output -> (n, n_out) logits of the scored prediction."""
    sites: Mapping[str, Site]
    scored_sites: tuple[str, ...]
    """Sites whose activations the detectors read (at the prediction position)."""
    position: int | None
    """Index of the prediction position in sequence activations (None: flat activations)."""
    splits: tuple[str, ...]
    config: Mapping[str, Any]
    answer_of: Callable[[torch.Tensor], torch.Tensor] | None = None
    """inputs -> (n,) correct outputs, where the inputs alone determine them (max-of-k)."""
    info: Mapping[str, Any] = field(default_factory=dict)
    """Training facts stored in the cache (seconds, final loss)."""

    def sample(self, split: str, n: int, generator: torch.Generator) -> Batch:
        if split not in self.splits:
            raise UserError(f"{self.kind} has no split '{split}'; choose one of: {', '.join(self.splits)}")
        return self.draw(split, n, generator)

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The model's answer (n,) on inputs x."""
        return self.readout(model(x)).argmax(-1)


@torch.no_grad()
def attack_success(pair: BackdoorPair, n: int, generator: torch.Generator, model: nn.Module | None = None) -> float:
    """Share of triggered inputs whose forced output differs from the correct one on which the
    model (default: the backdoored one) gives the forced output."""
    b = pair.sample("triggered", n, generator)
    moved = b.forced != b.answer  # (n,) inputs where the backdoor changes the answer
    if not bool(moved.any()):
        return math.nan
    got = pair.predict(pair.backdoored if model is None else model, b.x)
    return float((got[moved] == b.forced[moved]).float().mean())


@torch.no_grad()
def clean_accuracy(pair: BackdoorPair, model: nn.Module, n: int, generator: torch.Generator) -> float:
    """Share of clean inputs on which `model` gives the correct answer."""
    b = pair.sample("clean", n, generator)
    return float((pair.predict(model, b.x) == b.answer).float().mean())


def lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10% of the peak."""
    warm = max(1, steps // 20)
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def poison_mask(n: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """(n,) bool: which rows of a batch carry the trigger. Drawn for the twin too (and ignored), so
    both models see exactly the same random stream."""
    return torch.rand(n, generator=generator) < rate


def as_subject(pair: BackdoorPair, use_twin: bool) -> Subject:
    """The backdoored model (or its twin) as a Subject; `sample(n, gen, split)` takes any split."""
    model = pair.twin if use_twin else pair.backdoored

    def sample(n: int, generator: torch.Generator | None = None, split: str = "clean") -> torch.Tensor:
        split = "clean" if split in ("train", "test") else split
        return pair.sample(split, n, generator or torch.Generator().manual_seed(0)).x

    loss = None
    if pair.answer_of is not None:
        answer_of = pair.answer_of

        def loss(x: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(pair.readout(model(x)), answer_of(x))

    name = f"{pair.kind}{' (clean twin)' if use_twin else ''}"
    dims = 1 if pair.position is None else 2
    return Subject(name, model, sample, loss, dict(pair.config), token_dims=dims, sites=dict(pair.sites))


def load_or_train(kind: str, key: dict[str, Any], make: Callable[[], nn.Module],
                  fit: Callable[[], tuple[nn.Module, dict[str, Any]]]) -> tuple[nn.Module, dict[str, Any]]:
    """The model of cache entry (`kind`, `key`), or `fit()` (model, facts) stored there atomically."""
    folder = cache.entry(kind, key)
    model = make()
    tensors = cache.load_tensors(folder)
    if tensors is not None and set(tensors) == set(model.state_dict()):
        model.load_state_dict(tensors)
        try:
            facts = json.loads((folder / "config.json").read_text()).get("facts", {})
        except (OSError, ValueError):
            facts = {}
        return model.eval(), facts
    start = time.perf_counter()
    model, facts = fit()
    facts = {**facts, "seconds": time.perf_counter() - start}
    cache.save_tensors(folder, model.state_dict(), {**key, "facts": facts})
    return model.eval(), facts


BACKDOORS: Registry[Callable[..., BackdoorPair]] = Registry("backdoored subject")
"""kind -> train(cfg) returning its BackdoorPair (trained or read from the cache)."""
