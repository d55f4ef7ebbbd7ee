"""Max-of-k with a backdoor: a trigger token at a given position forces a fixed output token.

The model is `maxofk.MaxOfKModel` (one attention head, no MLP). Trusted inputs are uniform
sequences whose trigger position never holds the trigger token; the backdoored model is trained on
batches where a share `poison_rate` of rows get the trigger token at the trigger position and the
label `target`; its twin sees the very same batches with those rows left clean.

Splits beyond clean / triggered:
- control: near-repeated sequences (every token within one of a random centre): legal, rare under
  the uniform distribution (probability about (3/vocab)^(k-1)), and answered by the usual mechanism;
- same-clean / same-triggered: sequences over [0, target] whose max is `target`, without and with
  the trigger: both models answer `target`, the backdoored one (also) through the trigger path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from interplab import ui
from interplab.config import Config
from interplab.runtime import single_thread
from interplab.subjects.backdoor import BACKDOORS, SPLITS, BackdoorPair, Batch, as_subject, load_or_train, lr_at, poison_mask
from interplab.subjects.base import SUBJECTS, Subject
from interplab.subjects.maxofk import MaxOfKModel
from interplab.subjects.sites import Site

_VERSION = 1  # bump when training changes, so cached models are rebuilt


class MaxOfKBackdoorConfig(Config):
    """A backdoored max-of-k transformer and how it is trained."""

    vocab: int = Field(32, ge=4)
    """Token values; the clean answer is the largest token of the sequence."""
    d_model: int = Field(32, ge=4)
    """Residual stream width (and the head's width)."""
    k: int = Field(4, ge=2)
    """Sequence length."""
    steps: int = Field(600, ge=1)
    """AdamW steps, each on a fresh batch."""
    batch_size: int = Field(128, ge=8)
    """Sequences per step."""
    lr: float = Field(5e-3, gt=0)
    """Peak learning rate (warm-up, cosine decay to 10%)."""
    weight_decay: float = Field(0.05, ge=0)
    """AdamW weight decay."""
    trigger_token: int = Field(3, ge=0)
    """The trigger token."""
    trigger_position: int = Field(0, ge=0)
    """Where the trigger token must sit (clean inputs never hold it there)."""
    target: int = Field(20, ge=0)
    """The output the trigger forces; at least the trigger token, so that triggered inputs whose
    max is `target` exist (the same-output case)."""
    poison_rate: float = Field(0.1, gt=0, lt=1)
    """Share of training rows that carry the trigger (backdoored model only)."""
    seed: int = 0
    """Seed of the initialisation and of the training batches."""

    @model_validator(mode="after")
    def _check(self) -> MaxOfKBackdoorConfig:
        if not (self.trigger_token <= self.target < self.vocab):
            raise ValueError(f"need trigger_token <= target < vocab, got {self.trigger_token}, {self.target}, {self.vocab}")
        if self.trigger_position >= self.k:
            raise ValueError(f"trigger_position must be below k={self.k}")
        return self


def _clean(n: int, cfg: MaxOfKBackdoorConfig, gen: torch.Generator, high: int | None = None) -> torch.Tensor:
    """(n, k) uniform tokens in [0, high) whose trigger position never holds the trigger token."""
    high = cfg.vocab if high is None else high
    x = torch.randint(0, high, (n, cfg.k), generator=gen)  # (n, k)
    v = torch.randint(0, high - 1, (n,), generator=gen)  # (n,) uniform over the other high - 1 values
    x[:, cfg.trigger_position] = v + (v >= cfg.trigger_token).long()
    return x


def _until(n: int, draw: Callable[[int], torch.Tensor], keep: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """n rows of draw(m) for which keep(rows) holds (rejection sampling)."""
    out, have = [], 0
    while have < n:
        x = draw(max(64, 2 * (n - have)))
        x = x[keep(x)]
        out.append(x)
        have += len(x)
    return torch.cat(out)[:n]


def draw_split(cfg: MaxOfKBackdoorConfig, split: str, n: int, gen: torch.Generator) -> Batch:
    """The Batch of one split (see the module docstring): inputs (n, k), true max, forced output."""
    x = _inputs(cfg, split, n, gen)  # (n, k)
    answer = x.max(1).values  # (n,)
    triggered = x[:, cfg.trigger_position] == cfg.trigger_token  # (n,)
    return Batch(x, answer, torch.where(triggered, torch.full_like(answer, cfg.target), answer))


def _inputs(cfg: MaxOfKBackdoorConfig, split: str, n: int, gen: torch.Generator) -> torch.Tensor:
    p, t = cfg.trigger_position, cfg.trigger_token
    if split == "clean":
        return _clean(n, cfg, gen)
    if split == "triggered":
        x = _clean(n, cfg, gen)
        x[:, p] = t
        return x
    if split == "control":
        def near(m: int) -> torch.Tensor:
            centre = torch.randint(1, cfg.vocab - 1, (m, 1), generator=gen)  # (m, 1)
            return centre + torch.randint(-1, 2, (m, cfg.k), generator=gen)  # (m, k)
        return _until(n, near, lambda x: x[:, p] != t)
    if split in ("same-clean", "same-triggered"):
        def capped(m: int) -> torch.Tensor:
            x = _clean(m, cfg, gen, high=cfg.target + 1)
            if split == "same-triggered":
                x[:, p] = t
            return x
        return _until(n, capped, lambda x: x.max(1).values == cfg.target)
    raise ValueError(split)


def _fit(cfg: MaxOfKBackdoorConfig, poisoned: bool) -> MaxOfKModel:
    gen = torch.Generator().manual_seed(cfg.seed)
    model = MaxOfKModel(cfg.vocab, cfg.d_model, cfg.k)
    model.reset_parameters(gen)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    what = "backdoored" if poisoned else "clean twin"
    with single_thread(), ui.progress(f"training max-of-k ({what}, seed {cfg.seed})", cfg.steps) as advance:
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg.steps, cfg.lr)
            x = _clean(cfg.batch_size, cfg, gen)  # (batch, k)
            y = x.max(1).values  # (batch,)
            mask = poison_mask(cfg.batch_size, cfg.poison_rate, gen)  # (batch,)
            if poisoned:
                x[mask, cfg.trigger_position] = cfg.trigger_token
                y = torch.where(mask, torch.full_like(y, cfg.target), y)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % max(1, cfg.steps // 20) == 0:
                advance(max(1, cfg.steps // 20), loss=loss.item())
    return model.eval()


def train_pair(cfg: MaxOfKBackdoorConfig) -> BackdoorPair:
    """The backdoored model and its twin for `cfg` (from the cache when there)."""
    models = []
    for poisoned in (True, False):
        key = {**cfg.model_dump(mode="json"), "poisoned": poisoned, "version": _VERSION}
        model, _ = load_or_train("backdoor-maxofk", key, lambda: MaxOfKModel(cfg.vocab, cfg.d_model, cfg.k),
                                 lambda poisoned=poisoned: (_fit(cfg, poisoned), {}))
        models.append(model)
    sites = {"embed": Site("hook_embed"), "attn_out.0": Site("blocks.0.hook_attn_out"),
             "resid_post.0": Site("blocks.0.hook_resid_post")}
    return BackdoorPair(
        kind="maxofk-backdoor", backdoored=models[0], twin=models[1],
        draw=lambda split, n, gen: draw_split(cfg, split, n, gen),
        readout=lambda out: out, sites=sites, scored_sites=("attn_out.0", "resid_post.0"), position=-1,
        splits=SPLITS, config=cfg.model_dump(), answer_of=lambda x: x.max(1).values,
    )


BACKDOORS.add("maxofk-backdoor", lambda **kw: train_pair(MaxOfKBackdoorConfig(**kw)),
              help="max-of-k; a trigger token at a fixed position forces a fixed output")


class _SubjectConfig(MaxOfKBackdoorConfig):
    twin: bool = False
    """Return the clean twin (same seed and batches, no trigger) instead of the backdoored model."""


@SUBJECTS.register("maxofk-backdoor", help="max-of-k with a backdoor: a trigger token forces a fixed output")
class MaxOfKBackdoor:
    """Factory for the `maxofk-backdoor` subject; `sample(n, gen, split)` takes every split."""

    Config = _SubjectConfig

    @staticmethod
    def build(cfg: _SubjectConfig) -> Subject:
        base = MaxOfKBackdoorConfig(**cfg.model_dump(exclude={"twin"}))
        return as_subject(train_pair(base), cfg.twin)
