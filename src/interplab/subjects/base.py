"""The Subject contract: a model, a way to draw its inputs, its named sites and its loss."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from interplab.config import Config, build
from interplab.registry import Registry
from interplab.subjects.sites import Site, canonical_sites

Sampler = Callable[..., torch.Tensor]  # sample(n, generator, split="train") -> model inputs


@dataclass(frozen=True)
class Subject:
    """What is studied.

    `sample(n, generator, split="train")` returns a batch of `n` inputs ready for `model(x)`:
    feature vectors for toy models, token ids (n, seq_len) for language models; `split="test"`
    draws from held-out data where the subject has a finite corpus. `loss(x)` is the mean loss on
    a batch (None when the subject has no task). Activations at a site have `token_dims` leading
    dimensions that index data points (1 for toy models, 2 — batch and position — for LMs).
    """

    name: str
    model: nn.Module
    sample: Sampler
    loss: Callable[[torch.Tensor], torch.Tensor] | None
    config: Mapping[str, Any]
    token_dims: int = 1
    ground_truth: Mapping[str, torch.Tensor] = field(default_factory=dict)
    tokenizer: Any = None
    sites: Mapping[str, Site] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.sites:
            object.__setattr__(self, "sites", canonical_sites(self.model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's main output (logits for LMs) on inputs from `sample`."""
        out = self.model(x)
        return out.logits if hasattr(out, "logits") else out


class SubjectFactory(Protocol):
    """What a registered subject provides: its typed config and how to build it."""

    Config: type[Config]

    @staticmethod
    def build(cfg: Any) -> Subject: ...


SUBJECTS: Registry[type[SubjectFactory]] = Registry("subject")


def load_subject(name: str, **overrides: Any) -> Subject:
    """Build a registered subject by name with config overrides, e.g. `load_subject("tms", n_features=20)`.

    `hf:<local folder or hub id>` loads any Hugging Face causal LM.
    """
    import interplab.subjects  # noqa: F401  (registers the built-in subjects)

    if name.startswith("hf:"):
        overrides = {"path": name[3:], **overrides}
        name = "hf"
    factory = SUBJECTS.get(name)
    cfg = build(factory.Config, overrides, where=f" of subject '{name}'")
    return factory.build(cfg)
