"""A network as a flat list of operations that both sampling and propagation can walk.

`ops_of(model)` turns an `nn.Sequential` of supported layers, the `mlp` subject, or a `TMSModel`
(weights with a leading instance dimension) into a list of `Op`s:

    Op("linear", name, W, b)     W (out, in) or (inst, out, in)
    Op("act", name, fn="relu")   one of relu, heaviside, gelu, silu, tanh, sigmoid
    Op("site", name)             an identity whose output is reported (HookPoint, nn.Identity)

Every op's output is reported under its name; sites of a Subject get their canonical names.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from interplab.errors import UserError


class Heaviside(nn.Module):
    """1[x > 0] elementwise: turns a pre-activation into the indicator of a (rare) event."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype)


_ACTS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", Heaviside: "heaviside",
}


@dataclass(frozen=True)
class Op:
    """One step of a network: kind in {linear, act, site}, its reporting name, its parameters."""

    kind: str
    name: str
    W: torch.Tensor | None = None
    b: torch.Tensor | None = None
    fn: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The op on samples x (n, ..., d)."""
        if self.kind == "linear":
            assert self.W is not None
            y = (self.W.to(x.dtype) @ x.unsqueeze(-1)).squeeze(-1) if self.W.dim() == 3 else x @ self.W.to(x.dtype).T
            return y + self.b.to(x.dtype) if self.b is not None else y
        if self.kind == "act":
            from interplab.estimate.nonlin import NONLINEARITIES

            return NONLINEARITIES[self.fn].fn(x)
        return x

    def flops(self, n: int, batch: int = 1) -> float:
        """FLOPs of this op on n samples (times `batch` independent instances)."""
        if self.kind == "linear":
            assert self.W is not None
            o, i = self.W.shape[-2:]
            return float(n * batch * (2 * o * i + (o if self.b is not None else 0)))
        if self.kind == "act":
            from interplab.estimate.nonlin import NONLINEARITIES

            return float(n * batch * self.width * NONLINEARITIES[self.fn].cost)
        return 0.0

    width: int = 0  # output width, filled by ops_of


def _with_width(ops: list[Op]) -> list[Op]:
    out, width = [], 0
    for op in ops:
        if op.kind == "linear":
            assert op.W is not None
            width = int(op.W.shape[-2])
        out.append(Op(op.kind, op.name, op.W, op.b, op.fn, width))
    return out


def _sequential(model: nn.Sequential, prefix: str = "") -> Iterator[Op]:
    for name, layer in model.named_children():
        full = prefix + name
        if isinstance(layer, nn.Linear):
            b = layer.bias.detach() if layer.bias is not None else None
            yield Op("linear", full, layer.weight.detach(), b)
        elif type(layer) in _ACTS:
            yield Op("act", full, fn=_ACTS[type(layer)])
        elif isinstance(layer, nn.Identity):
            yield Op("site", full)
        elif isinstance(layer, nn.Sequential):
            yield from _sequential(layer, full + ".")
        else:
            raise UserError(
                f"layer '{full}' ({type(layer).__name__}) has no propagation rule; supported: Linear, "
                f"{', '.join(t.__name__ for t in _ACTS)}, Identity and nested Sequential"
            )


def _tms(model: nn.Module) -> list[Op]:
    W, b = model.W.detach(), model.b.detach()  # (inst, m, n), (inst, n)
    ops = [Op("linear", "encode", W)]
    if model.variant == "neuron":
        ops.append(Op("act", "hidden_relu", fn="relu"))
    ops += [Op("site", "hidden"), Op("linear", "decode", W.transpose(1, 2).contiguous(), b)]
    if model.variant != "linear":
        ops.append(Op("act", "out_relu", fn="relu"))
    return ops + [Op("site", "out")]


def ops_of(model: object) -> list[Op]:
    """The op list of a Sequential, a Subject (its model, canonical site names) or a TMSModel."""
    names: dict[str, str] = {}
    if hasattr(model, "model") and hasattr(model, "sites"):  # a Subject
        names = {site.module: canon for canon, site in model.sites.items() if site.io == "output"}
        model = model.model
    if isinstance(model, nn.Sequential):
        ops = list(_sequential(model))
    elif hasattr(model, "W") and hasattr(model, "variant") and hasattr(model, "hidden"):
        ops = _tms(model)
    else:
        raise UserError(f"cannot propagate through {type(model).__name__}: give an nn.Sequential, "
                        "the mlp or tms subject, or a TMSModel")
    ops = [Op(o.kind, names.get(o.name, o.name), o.W, o.b, o.fn) for o in ops]
    return _with_width(ops)
