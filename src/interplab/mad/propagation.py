"""The explanation behind `explain-*` detectors: the trusted inputs' distribution pushed through the network.

    states = explain(model, trusted_x, sites)     # {"cov": {site: Gaussian}, "mean": {site: Gaussian}}

Nothing here looks at an activation: the trusted inputs are summarised (per-position token
frequencies for the transformers, a moment-matched Gaussian for the MLP) and propagated with the
per-layer rules of `interplab.estimate` — embedding mixtures, first-order attention (the pattern at
the mean input, positions independent), first-order LayerNorm, Gaussian closure through GELU and
ReLU (Mehler series up to `order`), residual sums with their cross-covariance. `cov` keeps full
covariances, `mean` presumes every unit independent. Each state is taken at the prediction
position. Supported models: `MaxOfKModel`, `CharTransformer`, and `nn.Sequential` MLPs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from interplab.errors import UserError
from interplab.estimate import Gaussian, ops_of, propagate, rules
from interplab.estimate.attention import attention, embedding
from interplab.subjects.chartf import CharTransformer
from interplab.subjects.maxofk import MaxOfKModel
from interplab.subjects.sites import Site

ESTIMATORS = ("cov", "mean")


def _last(g: Gaussian) -> Gaussian:
    """The state of the last position of a (seq, d) state."""
    if g.cov is not None:
        return Gaussian(g.mean[-1], g.cov[-1])
    return Gaussian(g.mean[-1], var=g.variance[-1])


def _token_probs(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """(seq, vocab) empirical token frequencies per position of ids (n, seq)."""
    return nn.functional.one_hot(ids.long(), vocab).to(torch.float64).mean(0)


def _maxofk(model: MaxOfKModel, ids: torch.Tensor, full: bool) -> dict[str, Gaussian]:
    k = ids.shape[1]
    W = {n: p.detach().double() for n, p in model.named_parameters()}
    s0 = embedding(_token_probs(ids, W["W_E"].shape[0]), W["W_E"], W["W_pos"][:k], full=full)

    def attn(s: Gaussian) -> Gaussian:
        b = "blocks.0."
        return attention(s, W[b + "W_Q"].T, W[b + "W_K"].T, W[b + "W_V"].T, W[b + "W_O"].T, n_heads=1)

    return {"embed": _last(s0), "attn_out.0": _last(attn(s0)), "resid_post.0": _last(rules.residual(s0, attn))}


def _chartf(model: CharTransformer, ids: torch.Tensor, full: bool, order: int) -> dict[str, Gaussian]:
    L = ids.shape[1]
    P = {n: p.detach().double() for n, p in model.named_parameters()}
    state = embedding(_token_probs(ids, model.vocab_size), P["wte.weight"], P["wpe.weight"][:L], full=full)
    out = {}
    for i, blk in enumerate(model.h):
        h, d = f"h.{i}.", blk.ln_1.normalized_shape[0]
        Wqkv, bqkv = P[h + "attn.c_attn.weight"], P[h + "attn.c_attn.bias"]

        def attn(s: Gaussian, h: str = h, d: int = d, Wqkv: torch.Tensor = Wqkv, bqkv: torch.Tensor = bqkv,
                 heads: int = blk.attn.n_heads) -> Gaussian:
            x = rules.layernorm(s, P[h + "ln_1.weight"], P[h + "ln_1.bias"])
            return attention(x, Wqkv[:d], Wqkv[d:2 * d], Wqkv[2 * d:], P[h + "attn.c_proj.weight"], heads,
                             b_q=bqkv[:d], b_k=bqkv[d:2 * d], b_v=bqkv[2 * d:], b_o=P[h + "attn.c_proj.bias"])

        def mlp(s: Gaussian, h: str = h) -> Gaussian:
            x = rules.layernorm(s, P[h + "ln_2.weight"], P[h + "ln_2.bias"])
            x = rules.gelu(rules.linear(x, P[h + "mlp.c_fc.weight"], P[h + "mlp.c_fc.bias"]), order=order)
            return rules.linear(x, P[h + "mlp.c_proj.weight"], P[h + "mlp.c_proj.bias"])

        out[f"attn_out.{i}"] = _last(attn(state))
        state = rules.residual(rules.residual(state, attn), mlp)
        out[f"resid_post.{i}"] = _last(state)
    return out


def _sequential(model: nn.Sequential, x: torch.Tensor, full: bool, order: int,
                sites: Mapping[str, Site]) -> dict[str, Gaussian]:
    names = {site.module: canon for canon, site in sites.items()}
    states = propagate(ops_of(model), Gaussian.fit(x.to(torch.float64), full=full), order=order)
    return {names.get(k, k): v for k, v in states.items()}


def explain(model: nn.Module, x: torch.Tensor, names: Sequence[str], sites: Mapping[str, Site] | None = None,
            order: int = 4, estimators: Sequence[str] = ESTIMATORS) -> dict[str, dict[str, Gaussian]]:
    """{estimator: {site: Gaussian}}: what propagating the distribution of inputs x predicts at `names`."""
    run: Callable[[bool], dict[str, Gaussian]]
    if isinstance(model, MaxOfKModel):
        run = lambda full: _maxofk(model, x, full)  # noqa: E731
    elif isinstance(model, CharTransformer):
        run = lambda full: _chartf(model, x, full, order)  # noqa: E731
    elif isinstance(model, nn.Sequential):
        run = lambda full: _sequential(model, x, full, order, sites or {})  # noqa: E731
    else:
        raise UserError(f"no propagation rules for {type(model).__name__}; explain-* detectors support max-of-k, "
                        "the character transformer and nn.Sequential MLPs")
    out = {}
    with torch.no_grad():
        for est in estimators:
            states = run(est == "cov")
            missing = [s for s in names if s not in states]
            if missing:
                raise UserError(f"propagation does not reach site '{missing[0]}'; it reaches: {', '.join(states)}")
            out[est] = {s: states[s] for s in names}
    return out
