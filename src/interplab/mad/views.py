"""From a model and its inputs to the `Views` detectors read: activations, logits, gradients.

    v = compute_views(model, x, ["hidden.0", "hidden.1"], sites=table, readout=lambda out: out)

Activations are taken at the prediction position (`position`, e.g. -1 for the last token of a
sequence) and stored in float64; the gradient is that of log p(the model's own answer) with respect
to each site's activation at that position (one backward pass per chunk of inputs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from interplab.hooks import capture
from interplab.mad.base import Views
from interplab.subjects.sites import Site


def compute_views(model: nn.Module, x: torch.Tensor, names: Sequence[str], *, sites: Mapping[str, Site],
                  readout: Callable[[torch.Tensor], torch.Tensor], position: int | None = None,
                  grads: bool = True, chunk: int = 2048) -> Views:
    """Views of inputs x (n, ...) at sites `names`."""
    acts: dict[str, list[torch.Tensor]] = {s: [] for s in names}
    grad: dict[str, list[torch.Tensor]] = {s: [] for s in names}
    logits: list[torch.Tensor] = []

    def at(t: torch.Tensor) -> torch.Tensor:
        return t if position is None else t[:, position]

    for part in x.split(chunk):
        with torch.enable_grad(), capture(model, names, sites=sites, detach=False) as got:
            out = readout(model(part))  # (chunk, n_out)
        logits.append(out.detach().to(torch.float64))
        if grads:
            logp = torch.log_softmax(out, -1)  # (chunk, n_out)
            own = logp.gather(1, logp.argmax(1, keepdim=True)).sum()
            for s, g in zip(names, torch.autograd.grad(own, [got[s] for s in names]), strict=True):
                grad[s].append(at(g).detach().to(torch.float64))
        for s in names:
            acts[s].append(at(got[s]).detach().to(torch.float64))
    return Views(acts={s: torch.cat(v) for s, v in acts.items()}, logits=torch.cat(logits),
                 grads={s: torch.cat(v) for s, v in grad.items()} if grads else {})
