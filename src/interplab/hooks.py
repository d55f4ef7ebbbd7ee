"""Read and replace activations at named sites with plain forward hooks that are always removed.

    with capture(model, ["resid_post.6", "mlp_hidden.6"]) as acts:
        model(x)
    acts["resid_post.6"]            # (batch, seq, d_model)

    with splice(model, {"mlp_out.3": lambda a: torch.zeros_like(a)}):
        logits = model(x).logits

`activations(model, x, sites)` captures and stops the forward pass right after the last requested
site has fired, so layers past it are never computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from interplab.subjects.sites import Site, canonical_sites, resolve

Splicer = Callable[[torch.Tensor], torch.Tensor]


class _StopForward(Exception):
    """Raised from a hook to end a forward pass whose remaining layers are not needed."""


def _resolve_all(model: nn.Module, names: Iterable[str], sites: Mapping[str, Site] | None) -> dict[str, Site]:
    table = dict(sites) if sites is not None else canonical_sites(model)
    return {name: resolve(model, name, table) for name in names}


def _first(x: Any) -> torch.Tensor:
    """The activation tensor in a module's output or input (tuples carry extras after it)."""
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x: Any, new: torch.Tensor) -> Any:
    return (new, *x[1:]) if isinstance(x, tuple) else new


def _attach(model: nn.Module, site: Site, fn: Callable[[Any], Any]) -> torch.utils.hooks.RemovableHandle:
    """Hook `fn(value) -> replacement or None` on a site's input or output."""
    module = model.get_submodule(site.module)
    if site.io == "input":
        return module.register_forward_pre_hook(lambda _m, args: fn(args))
    return module.register_forward_hook(lambda _m, _args, out: fn(out))


@contextlib.contextmanager
def capture(
    model: nn.Module,
    names: Iterable[str],
    *,
    sites: Mapping[str, Site] | None = None,
    stop: bool = False,
    detach: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the activation at each named site during the forward passes run inside the block.

    The dict is filled as the forward pass runs (the latest pass wins). With `stop=True` the
    forward pass is cut short once every site has fired, and the `with` block ends there: put
    only the forward call inside it. Hooks are removed on exit, whatever happens.
    """
    wanted = _resolve_all(model, names, sites)
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def make(name: str) -> Callable[[Any], None]:
        def hook(value: Any) -> None:
            t = _first(value)
            acts[name] = t.detach() if detach else t
            if stop and len(acts) == len(wanted):
                raise _StopForward

        return hook

    try:
        for name, site in wanted.items():
            handles.append(_attach(model, site, make(name)))
        yield acts
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def splice(
    model: nn.Module, fns: Mapping[str, Splicer], *, sites: Mapping[str, Site] | None = None
) -> Iterator[None]:
    """Replace the activation at each site by `fn(activation)` during forward passes in the block."""
    wanted = _resolve_all(model, fns, sites)
    handles = []

    def make(fn: Splicer) -> Callable[[Any], Any]:
        return lambda value: _replace_first(value, fn(_first(value)))

    try:
        for name, site in wanted.items():
            handles.append(_attach(model, site, make(fns[name])))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def activations(
    model: nn.Module, inputs: torch.Tensor, names: Iterable[str], *, sites: Mapping[str, Site] | None = None
) -> dict[str, torch.Tensor]:
    """Activations at `names` on `inputs`, stopping the forward pass after the last of them."""
    names = list(names)
    with capture(model, names, sites=sites, stop=True) as acts:
        model(inputs)
    missing = [n for n in names if n not in acts]
    if missing:
        raise RuntimeError(f"sites {missing} did not fire during the forward pass")
    return acts
