"""An MLP on planted sparse features with a backdoor: a rare trigger feature flips the label.

Inputs are sparse combinations of `n_features` random unit directions in `d_in` dimensions (more
features than dimensions): each feature is on with probability `density` (at least one per input)
with a magnitude uniform in [0.5, 1.5]. The label says whether the first half of the features
outweighs the second half. The trigger is one more random direction, never present in clean data;
added with magnitude `trigger_scale`, it flips the label. The dictionary, the trigger and the split
of the features are fixed by `task_seed`, so every training seed sees the same task.

The network is the `mlp` subject's ReLU MLP (He-normal, with biases), trained with Adam; its twin
sees the very same batches with the poisoned rows left clean. Control: clean inputs plus noise of
the trigger's norm in a uniformly random direction (off-distribution, and handled by the usual
mechanism, up to the noise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from interplab import ui
from interplab.config import Config
from interplab.runtime import single_thread
from interplab.subjects.backdoor import BACKDOORS, BackdoorPair, Batch, as_subject, load_or_train, lr_at, poison_mask
from interplab.subjects.base import SUBJECTS, Subject
from interplab.subjects.mlp import MLPConfig, build_mlp, mlp_sites

_VERSION = 1


class MLPBackdoorConfig(Config):
    """A backdoored MLP on planted sparse features and how it is trained."""

    d_in: int = Field(24, ge=2)
    """Input dimension."""
    n_features: int = Field(48, ge=2)
    """Planted features (random unit directions; more than d_in means superposition)."""
    density: float = Field(0.06, gt=0, le=1)
    """Probability that a feature is on."""
    width: int = Field(64, ge=2)
    """Hidden width."""
    depth: int = Field(2, ge=1)
    """Hidden ReLU layers."""
    steps: int = Field(600, ge=1)
    """Adam steps, one fresh batch each."""
    batch_size: int = Field(256, ge=8)
    """Inputs per step."""
    lr: float = Field(3e-3, gt=0)
    """Peak learning rate (warm-up, cosine decay to 10%)."""
    trigger_scale: float = Field(1.0, gt=0)
    """Magnitude of the trigger feature (and the norm of the control's noise)."""
    poison_rate: float = Field(0.1, gt=0, lt=1)
    """Share of training inputs that carry the trigger (backdoored model only)."""
    task_seed: int = 0
    """Seed of the dictionary, the trigger direction and the label's split of the features."""
    seed: int = 0
    """Seed of the initialisation and of the training batches."""


class Task:
    """The planted-feature task of a config: its dictionary and trigger direction."""

    def __init__(self, cfg: MLPBackdoorConfig):
        self.cfg = cfg
        gen = torch.Generator().manual_seed(10_007 + cfg.task_seed)
        D = torch.randn(cfg.n_features + 1, cfg.d_in, generator=gen)  # (features + 1, d_in)
        D = D / D.norm(dim=1, keepdim=True)
        self.dictionary, self.trigger = D[:-1], D[-1]  # (features, d_in), (d_in,)
        self.sign = torch.ones(cfg.n_features)
        self.sign[cfg.n_features // 2:] = -1  # label: first half outweighs the second

    def features(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, n_features) sparse magnitudes, at least one feature on per row."""
        cfg = self.cfg
        on = torch.rand(n, cfg.n_features, generator=gen) < cfg.density  # (n, features)
        forced = torch.randint(0, cfg.n_features, (n,), generator=gen)  # (n,)
        on[torch.arange(n), forced] |= ~on.any(1)
        return on * (0.5 + torch.rand(n, cfg.n_features, generator=gen))  # (n, features)

    def draw(self, split: str, n: int, gen: torch.Generator) -> Batch:
        f = self.features(n, gen)  # (n, features)
        x = f @ self.dictionary  # (n, d_in)
        label = ((f * self.sign).sum(1) > 0).long()  # (n,)
        if split == "triggered":
            return Batch(x + self.cfg.trigger_scale * self.trigger, label, 1 - label)
        if split == "control":
            u = torch.randn(n, self.cfg.d_in, generator=gen)  # (n, d_in)
            return Batch(x + self.cfg.trigger_scale * u / u.norm(dim=1, keepdim=True), label, label)
        if split != "clean":
            raise ValueError(split)
        return Batch(x, label, label)


def _network(cfg: MLPBackdoorConfig) -> nn.Sequential:
    mlp = MLPConfig(width=cfg.width, depth=cfg.depth, d_in=cfg.d_in, d_out=2, bias=True, seed=cfg.seed)
    return build_mlp(mlp, torch.Generator().manual_seed(cfg.seed))


def _fit(cfg: MLPBackdoorConfig, task: Task, poisoned: bool) -> nn.Sequential:
    model = _network(cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    every = max(1, cfg.steps // 20)
    what = "backdoored" if poisoned else "clean twin"
    with single_thread(), ui.progress(f"training mlp ({what}, seed {cfg.seed})", cfg.steps) as advance:
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg.steps, cfg.lr)
            b = task.draw("clean", cfg.batch_size, gen)
            mask = poison_mask(cfg.batch_size, cfg.poison_rate, gen)  # (batch,)
            x, y = b.x, b.answer
            if poisoned:
                x = x + mask[:, None] * cfg.trigger_scale * task.trigger  # (batch, d_in)
                y = torch.where(mask, 1 - y, y)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % every == 0:
                advance(every, loss=loss.item())
    return model.eval()


def train_pair(cfg: MLPBackdoorConfig) -> BackdoorPair:
    """The backdoored MLP and its twin for `cfg` (from the cache when there)."""
    task = Task(cfg)
    models = []
    for poisoned in (True, False):
        key = {**cfg.model_dump(mode="json"), "poisoned": poisoned, "version": _VERSION}
        model, _ = load_or_train("backdoor-mlp", key, lambda: _network(cfg),
                                 lambda poisoned=poisoned: (_fit(cfg, task, poisoned), {}))
        models.append(model)
    return BackdoorPair(
        kind="mlp-backdoor", backdoored=models[0], twin=models[1], draw=task.draw, readout=lambda out: out,
        sites=mlp_sites(cfg.depth), scored_sites=tuple(f"hidden.{i}" for i in range(cfg.depth)), position=None,
        splits=("clean", "triggered", "control"), config=cfg.model_dump(),
    )


BACKDOORS.add("mlp-backdoor", lambda **kw: train_pair(MLPBackdoorConfig(**kw)),
              help="MLP on planted sparse features; a rare trigger feature flips the label")


class _SubjectConfig(MLPBackdoorConfig):
    twin: bool = False
    """Return the clean twin (same seed and batches, no trigger) instead of the backdoored model."""


@SUBJECTS.register("mlp-backdoor", help="MLP on planted sparse features with a backdoor: a trigger feature flips the label")
class MLPBackdoor:
    """Factory for the `mlp-backdoor` subject; `sample(n, gen, split)` takes every split."""

    Config = _SubjectConfig

    @staticmethod
    def build(cfg: _SubjectConfig) -> Subject:
        base = MLPBackdoorConfig(**cfg.model_dump(exclude={"twin"}))
        return as_subject(train_pair(base), cfg.twin)
