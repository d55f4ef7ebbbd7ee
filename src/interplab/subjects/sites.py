"""Canonical site names (`resid_post.6`, `mlp_hidden.6`, `hidden`, ...) mapped to module paths.

A site is a module path plus which side of the module to read: its output (forward hook) or the
first positional argument of its input (forward pre-hook; used for `mlp_hidden`, the input of the
MLP's down projection). Families are recognised by module structure, not by class name, so any
Llama-, GPT-2- or BERT-shaped model gets the same names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from torch import nn

from interplab.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Site:
    """Where an activation lives: `module` (dotted path) and whether to read its input or output."""

    module: str
    io: Literal["output", "input"] = "output"


class HookPoint(nn.Identity):
    """A named identity module in toy models, so that their sites are plain forward hooks too."""


# family -> (pattern of a layer's path, {canonical kind: (suffix under the layer, io)})
_FAMILIES: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "llama": (
        r"^(.*\.)?layers\.(\d+)$",
        {
            "resid_post": ("", "output"),
            "attn_out": (".self_attn", "output"),
            "mlp_out": (".mlp", "output"),
            "mlp_hidden": (".mlp.down_proj", "input"),
        },
    ),
    "gpt2": (
        r"^(.*\.)?h\.(\d+)$",
        {
            "resid_post": ("", "output"),
            "attn_out": (".attn", "output"),
            "mlp_out": (".mlp", "output"),
            "mlp_hidden": (".mlp.c_proj", "input"),
        },
    ),
    "bert": (
        r"^(.*\.)?encoder\.layer\.(\d+)$",
        {
            "resid_post": ("", "output"),
            "attn_out": (".attention.output.dense", "output"),
            "mlp_out": (".output.dense", "output"),
            "mlp_hidden": (".intermediate", "output"),
        },
    ),
}


def canonical_sites(model: nn.Module) -> dict[str, Site]:
    """Every canonical site of `model`, in forward order.

    Toy models name their `HookPoint`s directly (`hidden`, `out`, `hidden.0`, ...); transformer
    families get `resid_post.L`, `attn_out.L`, `mlp_out.L` and `mlp_hidden.L` for each layer L.
    """
    names = dict(model.named_modules())
    sites = {path: Site(path) for path, mod in names.items() if isinstance(mod, HookPoint)}
    for pattern, kinds in _FAMILIES.values():
        layers = [(m.group(0), int(m.group(2))) for p in names if (m := re.match(pattern, p))]
        if not layers or not all(p + kinds["mlp_hidden"][0] in names for p, _ in layers):
            continue
        for path, layer in sorted(layers, key=lambda t: t[1]):
            for kind, (suffix, io) in kinds.items():
                sites[f"{kind}.{layer}"] = Site(path + suffix, io)  # type: ignore[arg-type]
        break
    return sites


def resolve(model: nn.Module, name: str, sites: dict[str, Site] | None = None) -> Site:
    """The Site for a canonical name or a raw module path (e.g. `model.layers.3.mlp.act_fn`)."""
    sites = canonical_sites(model) if sites is None else sites
    if name in sites:
        return sites[name]
    modules = dict(model.named_modules())
    if name in modules and name:
        return Site(name)
    if name.endswith(":input") and name[: -len(":input")] in modules:
        return Site(name[: -len(":input")], "input")
    raise UserError(
        f"unknown site '{name}'{did_you_mean(name, list(sites) + list(modules))}; "
        f"canonical sites: {_summarise(list(sites))} (raw module paths also work)"
    )


def layer_sites(sites: dict[str, Site], kinds: list[str], layer: int, owner: str) -> list[str]:
    """The canonical names `{kind}.{layer}` of a subject's `sites`, refused in one message (naming
    `owner`, the subject) when the model has no such layer."""
    names = [f"{kind}.{layer}" for kind in kinds]
    missing = [n for n in names if n not in sites]
    if missing:
        raise UserError(f"{owner} has no site {missing[0]}; choose lm_layer below its number of layers")
    return names


def _summarise(names: list[str], limit: int = 12) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    kinds = sorted({n.rsplit(".", 1)[0] for n in names if n[-1].isdigit()})
    layers = sorted({int(n.rsplit(".", 1)[1]) for n in names if n[-1].isdigit()})
    return f"{', '.join(k + '.L' for k in kinds)} for L in {layers[0]}..{layers[-1]}"
