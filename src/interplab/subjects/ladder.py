"""A compute ladder: character transformers of one recipe trained on the same text at rising compute.

Subject `ladder`: rung `rung` (default: the largest) of a family of `chartf` models (same text,
vocabulary, context, batch and schedule; width, depth and steps grow together). Each rung trains
and caches like any `chartf` model. Its training compute is counted as

    C = 6 N D + 6 n_layers n_ctx d_model D   FLOPs

with N the parameters outside the token and position embeddings (blocks, final LayerNorm and the
unembedding, which is a matrix multiply per token) and D = steps x batch x context training tokens;
the second term is the attention scores and their weighted sum (Kaplan et al.'s count, forward and
backward). `ladder_rungs(cfg)` gives every rung with its compute, for `metrics.compute.fit_ladder`.

Presets (width and depth grow, training tokens = tokens_per_param x N): `small`, 6 one-layer rungs
of width 16 to 64 at 10 tokens per parameter (compute 1.2e9 to 1.8e11, the largest about 5 s on one
thread), and `default`, 7 two-layer rungs of width 16 to 128 at 20 tokens per parameter (compute
7e9 to 2e13, the largest about 5 minutes on one thread).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field

from interplab.config import Config
from interplab.subjects.base import SUBJECTS, Subject
from interplab.subjects.chartf import CharTFConfig, CharTransformer, _split, _windows, load_chars, train_chartf


class Rung(Config):
    """One model of the ladder."""

    d_model: int = Field(ge=8)
    """Residual width (the MLP is 4x wider; 4 heads)."""
    n_layers: int = Field(ge=1, le=8)
    """Transformer blocks."""
    steps: int | None = Field(None, ge=1)
    """Training steps (None: enough for `tokens_per_param` training tokens per parameter)."""


# (d_model, n_layers) of each preset's rungs, smallest first, and its training tokens per parameter
PRESETS: dict[str, tuple[list[tuple[int, int]], float]] = {
    "small": ([(16, 1), (24, 1), (32, 1), (40, 1), (48, 1), (64, 1)], 10.0),
    "default": ([(16, 2), (24, 2), (32, 2), (48, 2), (64, 2), (96, 2), (128, 2)], 20.0),
}


class LadderConfig(Config):
    """Which ladder, which of its rungs is the subject, and the recipe every rung shares."""

    preset: Literal["small", "default"] = "default"
    """The rungs when `rungs` is not given (see the module doc)."""
    rungs: list[Rung] | None = None
    """Explicit rungs (d_model, n_layers, steps), smallest compute first; overrides `preset`."""
    tokens_per_param: float | None = Field(None, gt=0)
    """Training tokens per parameter N of rungs without explicit steps (None: the preset's, 10 or 20)."""
    rung: int = -1
    """Which rung the subject is (Python index; -1: the largest)."""
    context: int = Field(32, ge=2, le=64)
    """Window length in characters (training and evaluation)."""
    batch_size: int = Field(32, ge=1)
    """Windows per training step."""
    lr: float = Field(3e-3, gt=0)
    """Peak learning rate (chartf's schedule: warm-up, cosine to 10%)."""
    text: str = "stdlib"
    """Text source (see interplab.subjects.text.load_text)."""
    max_chars: int = Field(2_000_000, ge=10_000)
    """Characters of the text used (the last 5% are held out)."""
    seed: int = 0
    """Seed of every rung's initialisation and training windows."""


class RungModel(NamedTuple):
    name: str
    cfg: CharTFConfig
    params: int  # N: parameters outside the embeddings
    tokens: int  # D: training tokens
    flops: float  # 6 N D + attention


def rung_list(cfg: LadderConfig) -> list[Rung]:
    """The rungs with their steps: given, or tokens_per_param x N training tokens."""
    shapes, ratio = PRESETS[cfg.preset]
    rungs = list(cfg.rungs) if cfg.rungs else [Rung(d_model=d, n_layers=L) for d, L in shapes]
    ratio = cfg.tokens_per_param or ratio
    out = []
    for r in rungs:
        if r.steps is None:
            n, _, _ = training_flops(rung_config(cfg, r.model_copy(update={"steps": 1})))
            r = r.model_copy(update={"steps": max(1, round(ratio * n / (cfg.batch_size * cfg.context)))})
        out.append(r)
    return out


def rung_config(cfg: LadderConfig, rung: Rung) -> CharTFConfig:
    return CharTFConfig(n_layers=rung.n_layers, d_model=rung.d_model, n_heads=4, d_mlp=4 * rung.d_model,
                        context=cfg.context, steps=rung.steps, batch_size=cfg.batch_size, lr=cfg.lr, text=cfg.text,
                        max_chars=cfg.max_chars, seed=cfg.seed)


def training_flops(c: CharTFConfig) -> tuple[int, int, float]:
    """(N, D, C) of a chartf config: see the module doc for what is counted."""
    model = CharTransformer(c)
    n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith(("wte.", "wpe.")))
    d = c.steps * c.batch_size * c.context
    return n, d, 6.0 * n * d + 6.0 * c.n_layers * c.context * c.d_model * d


def ladder_rungs(cfg: LadderConfig) -> list[RungModel]:
    """Every rung's config and compute, in the configured order (nothing is trained here)."""
    out = []
    for i, r in enumerate(rung_list(cfg)):
        c = rung_config(cfg, r)
        n, d, flops = training_flops(c)
        out.append(RungModel(f"r{i}: d{r.d_model} L{r.n_layers} {r.steps} steps", c, n, d, flops))
    return out


def rung_subject(cfg: LadderConfig, index: int, rungs: list[RungModel] | None = None) -> Subject:
    """The trained rung `index` as a subject (trained and cached on first use); pass `rungs`
    (`ladder_rungs(cfg)`) when building several rungs, so they are computed once."""
    rungs = ladder_rungs(cfg) if rungs is None else rungs
    if not -len(rungs) <= index < len(rungs):
        raise ValueError(f"rung {index} is out of range: the ladder has {len(rungs)} rungs")
    r = rungs[index]
    model = train_chartf(r.cfg)
    ids = load_chars(r.cfg)
    train, test = _split(ids)

    def sample(n: int, generator: torch.Generator | None = None, split: str = "train") -> torch.Tensor:
        gen = generator or torch.Generator().manual_seed(0)
        return _windows(train if split == "train" else test, n, cfg.context, gen)  # (n, context)

    def loss(x: torch.Tensor) -> torch.Tensor:
        logits = model(x)  # (n, L, V)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))

    info: dict[str, Any] = {**cfg.model_dump(mode="json"), "rung": index % len(rungs), "rung_name": r.name,
                            "params": r.params, "tokens": r.tokens, "flops": r.flops}
    return Subject("ladder", model, sample, loss, info, token_dims=2)


@SUBJECTS.register("ladder", help="a rung of a compute ladder of character transformers (known training FLOPs)")
class Ladder:
    """Factory for the `ladder` subject."""

    Config = LadderConfig

    @staticmethod
    def build(cfg: LadderConfig) -> Subject:
        return rung_subject(cfg, cfg.rung)
