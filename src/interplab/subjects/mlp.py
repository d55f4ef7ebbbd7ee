"""A random ReLU MLP on Gaussian inputs: the test bed of heuristic estimators.

Nothing is trained. With He initialisation the second moment of every hidden layer stays near 1,
so a deep network neither explodes nor vanishes and estimates can be compared layer by layer.

The model is a plain `nn.Sequential` of `nn.Linear`, `nn.ReLU` and `HookPoint` (an identity) so
that propagation code can walk it layer by layer with per-layer rules:

    linear0 relu0 hidden0 linear1 relu1 hidden1 ... linear{depth} out

Module names cannot contain dots, so the hook modules are `hidden0`, `hidden1`, ... and the
subject maps the canonical names `hidden.0`, `hidden.1`, ... and `out` onto them.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from pydantic import Field
from torch import nn

from interplab.config import Config
from interplab.subjects.base import SUBJECTS, Subject
from interplab.subjects.sites import HookPoint, Site


class MLPConfig(Config):
    width: int = Field(64, ge=1)
    """Width of every hidden layer."""
    depth: int = Field(4, ge=1)
    """Number of hidden ReLU layers (the network has depth + 1 linear layers)."""
    d_in: int | None = Field(None, ge=1)
    """Input dimension (default: width)."""
    d_out: int | None = Field(None, ge=1)
    """Output dimension (default: width)."""
    bias: bool = False
    """Give every linear layer a bias."""
    bias_std: float = Field(0.1, ge=0)
    """Standard deviation of the Gaussian biases, when `bias` is on (zero biases would change nothing)."""
    seed: int = 0
    """Seed of the weights."""


def build_mlp(cfg: MLPConfig, generator: torch.Generator | None = None) -> nn.Sequential:
    """The random MLP; weights Kaiming-normal (fan_in, gain √2) drawn from `generator`."""
    d_in, d_out = cfg.d_in or cfg.width, cfg.d_out or cfg.width
    dims = [d_in] + [cfg.width] * cfg.depth + [d_out]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(cfg.depth + 1):
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global RNG
            linear = nn.Linear(dims[i], dims[i + 1], bias=cfg.bias)
        with torch.no_grad():
            nn.init.kaiming_normal_(linear.weight, mode="fan_in", nonlinearity="relu", generator=generator)
            if linear.bias is not None:
                linear.bias.copy_(cfg.bias_std * torch.randn(dims[i + 1], generator=generator))
        layers[f"linear{i}"] = linear
        if i < cfg.depth:
            layers[f"relu{i}"] = nn.ReLU()
            layers[f"hidden{i}"] = HookPoint()
    layers["out"] = HookPoint()
    return nn.Sequential(layers)


def mlp_sites(depth: int) -> dict[str, Site]:
    """Canonical names: `hidden.L` (post-ReLU, batch x width) for each layer, and `out`."""
    sites = {f"hidden.{i}": Site(f"hidden{i}") for i in range(depth)}
    return {**sites, "out": Site("out")}


@SUBJECTS.register("mlp", help="random He-initialised ReLU MLP on standard Gaussian inputs")
class MLP:
    """Factory for the `mlp` subject."""

    Config = MLPConfig

    @staticmethod
    def build(cfg: MLPConfig) -> Subject:
        model = build_mlp(cfg, torch.Generator().manual_seed(cfg.seed))
        d_in = cfg.d_in or cfg.width

        def sample(n: int, generator: torch.Generator | None = None, split: str = "train") -> torch.Tensor:
            return torch.randn(n, d_in, generator=generator)  # (n, d_in)

        return Subject("mlp", model, sample, None, cfg.model_dump(), sites=mlp_sites(cfg.depth))
