"""One optimizer step of SAE training: the reference definition, and the sparse products and AuxK
gradients the fast steps (`fast.py`) share.

`ReferenceStep` is the definition: the module's own forward (`ForwardOutput`), autograd, Adam,
the parallel-gradient removal and the decoder renormalisation. It serves every architecture.
`interplab.decompose.fast.FastStep` computes the same step with the backward pass written out, so
that everything sparse stays sparse (after EleutherAI sparsify's fused encoder, rebuilt for the
CPU): the decoder is a gather of the active rows (`embedding_bag`), the gradient of each active
code a sampled dot product (SDDMM), and the weight gradients one sparse-transpose product each (CSR
· dense). A dense decoder would add four products as large as the encoder (forward, two backward,
and the encoder's weight gradient), which is what a plain autograd SAE costs.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from interplab.parallel import World, batch_moments
from interplab.decompose.sae import SAE


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix, built without torch's beta warning (the three CSR ops used here are tested)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def row_pointers(rows: torch.Tensor, n: int) -> torch.Tensor:
    """(n + 1,) CSR row pointers of entries grouped by row, `rows` (E,) each entry's row in [0, n):
    the entries of row t are crow[t]:crow[t + 1]."""
    crow = rows.new_zeros(n + 1)  # (n + 1,)
    torch.cumsum(torch.bincount(rows, minlength=n), 0, out=crow[1:])
    return crow


class StepOutput(NamedTuple):
    """What the training loop needs from a step, measured on the batch before the update."""

    fvu: torch.Tensor  # () batch FVU
    l0: torch.Tensor  # () mean number of active latents per token
    fired: torch.Tensor  # (d_sae,) bool: latents active on at least one token of the batch


def adam_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Adam's per-parameter state as flat safetensors names: adam.<param index>.<key>."""
    return {f"adam.{i}.{key}": value for i, state in opt.state_dict()["state"].items() for key, value in state.items()}


def load_adam(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("adam."):
            _, i, key = name.split(".", 2)
            state.setdefault(int(i), {})[key] = value
    saved = opt.state_dict()
    opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


class ReferenceStep:
    """Autograd through `SAE.forward`: slow and plain, the definition the fast step must match.

    Under data parallelism (`world` of several ranks) each rank's loss is its share of the global
    batch's loss (its squared error over the global total variance, its rows' penalty over the
    global row count, AuxK over the global residual variance) and the gradients are summed across
    ranks before the update; BatchTopK cuts the whole batch across the ranks (`topk.shared_cut`), as
    the fast step does, so every rank moves its threshold by the same value."""

    def __init__(self, module: SAE, lr: float, betas: tuple[float, float], eps: float, aux_coefficient: float,
                 world: World | None = None, grad_clip: float | None = None):
        self.module, self.aux, self.clip = module.train(), aux_coefficient, grad_clip
        self.world = world or World()
        self.opt = torch.optim.Adam(module.param_groups(lr), betas=betas, eps=eps, foreach=False)
        self.base = [group["lr"] for group in self.opt.param_groups]

    def __call__(self, x: torch.Tensor, dead: torch.Tensor, lr_scale: float, coef: float) -> StepOutput:
        out = self.module(x, dead=dead, world=self.world)
        if self.world.size == 1:
            loss, fvu = out.fvu + coef * out.sparsity + self.aux * out.aux_loss, out.fvu.detach()
        else:
            loss, fvu = self._shared_loss(x, out, coef)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world.size > 1:
            params = list(self.module.parameters())
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self.world.sum_(*(p.grad for p in params))
        self.module.remove_parallel_grads_()
        if self.clip is not None:
            total, n_all = batch_moments(x.detach(), self.world)
            clip_gradients([p.grad for p in self.module.parameters() if p.grad is not None], self.clip,
                           float(total) / n_all)
        for group, base in zip(self.opt.param_groups, self.base, strict=True):
            group["lr"] = base * lr_scale
        self.opt.step()
        self.module.normalize_decoder_()
        with torch.no_grad():
            active = out.codes != 0  # (n, d_sae)
            stats = torch.stack([active.sum().to(x.dtype), x.new_tensor(float(x.shape[0]))])  # (2,)
            fired = active.any(0)
            self.world.sum_(stats)
            self.world.max_(fired)
            return StepOutput(fvu, stats[0] / stats[1], fired)

    def _shared_loss(self, x: torch.Tensor, out: Any, coef: float) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the global batch's loss, and the global FVU."""
        total, n_all = batch_moments(x.detach(), self.world)
        total = total.clamp_min(torch.finfo(x.dtype).tiny)
        sse = (x - out.recon).pow(2).sum()
        loss = sse / total + coef * out.sparsity * (x.shape[0] / n_all)
        if bool(out.aux_loss.detach() != 0):
            e = (x - out.recon).detach()  # (n, d)
            r_local = (e - e.mean(0)).pow(2).sum().clamp_min(torch.finfo(e.dtype).tiny)
            r_global = batch_moments(e, self.world)[0].clamp_min(torch.finfo(e.dtype).tiny)
            loss = loss + self.aux * out.aux_loss * (r_local / r_global)
        shared = sse.detach().reshape(1)
        self.world.sum_(shared)
        return loss, shared[0] / total

    def state(self) -> dict[str, torch.Tensor]:
        params = {f"param.{n}": t.detach() for n, t in self.module.state_dict().items()}
        return params | adam_tensors(self.opt)

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict({n[6:]: t for n, t in tensors.items() if n.startswith("param.")})
        load_adam(self.opt, tensors)

    def finish(self) -> None:
        self.module.eval()


def clip_gradients(grads: list[torch.Tensor], clip: float, units: float) -> None:
    """Scale the gradients down so that their global norm, in SAELens's units (the gradient of the
    per-token summed squared error, `units` = the batch's total variance per token times the FVU
    gradient), is at most `clip`, as SAELens's `clip_grad_norm_(..., 1.0)` does."""
    norm = float(torch.stack([torch.linalg.vector_norm(g).double() for g in grads]).norm()) * units
    if norm > clip:
        for g in grads:
            g.mul_(clip / norm)


# --- sparse products ------------------------------------------------------------------------------
def row_dots(idx: torch.Tensor, g: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """out[b, j] = g[b] · W[idx[b, j]]: the product g W^T sampled at c entries per row (SDDMM),
    without forming the dense (n, d_sae) product. idx (n, c), g (n, d), W (m, d) -> (n, c)."""
    n, c = idx.shape
    crow = torch.arange(0, n * c + 1, c, dtype=torch.long)  # (n + 1,)
    pattern = _csr(crow, idx.reshape(-1), g.new_zeros(n * c), (n, W.shape[0]))
    return torch.sparse.sampled_addmm(pattern, g, W.T, beta=0.0).values().view(n, c)


class Scatter:
    """G^T @ dense for a sparse G given as entries (latent, row, weight): the per-latent sum of
    weighted rows, as one CSR product. The latent order is sorted once and shared by the decoder
    and encoder gradients, whose entries differ only in rows and weights."""

    def __init__(self, latents: torch.Tensor, m: int):
        self.order = latents.argsort(stable=True)  # (E,)
        self.crow = row_pointers(latents, m)  # (m + 1,)
        self.m = m

    def __call__(self, rows: torch.Tensor, weights: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        g = _csr(self.crow, rows[self.order], weights[self.order], (self.m, dense.shape[0]))
        return torch.sparse.mm(g, dense)  # (m, d)


def aux_gradients(params: list[torch.Tensor], pre: torch.Tensor, xc: torch.Tensor, err: torch.Tensor,
                  dead: torch.Tensor, aux: float, k_aux: int, dense_aux: float, world: World | None = None,
                  norms: torch.Tensor | None = None) -> None:
    """AuxK as `auxk_loss` defines it (the top k_aux dead latents of each token reconstruct the
    residual), its gradients added to those of params = [W_enc^T, b_enc, W_dec, b_dec]. k_aux = d_in/2
    codes a token is too many for gathers to beat BLAS, so while the dead are few (up to `dense_aux`
    x k_aux) the codes stay dense over the dead columns and every product is a matmul; beyond that,
    sparse. err (n, d) is recon - x; xc (n, d) is x - b_dec; pre (n, d_sae). Under data parallelism the
    residual's total variance is the global batch's (`world`); the caller reduces the gradients.
    With `norms` (m,), the decoder-norm rescaling: `pre` holds pre·norms, which ranks the dead, and
    each code is that over its norm (the encoder's own pre-activation) on the free-norm decoder row."""
    Wt, be, Wd, _ = params
    dead_idx = dead.nonzero().squeeze(1)  # (n_dead,)
    n_dead = dead_idx.numel()
    ka = min(k_aux, n_dead)
    candidates = pre.index_select(1, dead_idx)  # (n, n_dead)
    residual = -err  # (n, d) x - recon, a constant target
    r_total = batch_moments(residual, world or World())[0].clamp_min(torch.finfo(err.dtype).tiny)
    coef = aux * min(n_dead / k_aux, 1.0) * 2 / r_total  # d (aux_coefficient · aux) / d e_hat, per diff
    if n_dead <= dense_aux * k_aux:
        a_acts = candidates.clamp_min(0)  # (n, n_dead)
        if ka < n_dead:  # keep each token's top ka
            top = candidates.topk(ka, dim=1, sorted=False)
            a_acts = torch.zeros_like(candidates).scatter_(1, top.indices, top.values.clamp_min(0))
        if norms is not None:
            a_acts /= norms[dead_idx]
        W_dead = Wd.index_select(0, dead_idx)  # (n_dead, d)
        g_e = (a_acts @ W_dead).sub_(residual).mul_(coef)  # (n, d)
        g_apre = (g_e @ W_dead.T).mul_(a_acts > 0)  # (n, n_dead)
        Wd.grad.index_add_(0, dead_idx, a_acts.T @ g_e)  # (n_dead, d) rows
        Wt.grad.index_add_(0, dead_idx, g_apre.T @ xc)  # (n_dead, d) rows
        be.grad.index_add_(0, dead_idx, g_apre.sum(0))
        return
    a_vals, a_pos = candidates.topk(ka, dim=1, sorted=False)  # (n, ka)
    a_idx = dead_idx[a_pos]  # (n, ka) latent ids
    a_acts = a_vals.clamp_min(0)  # (n, ka)
    if norms is not None:
        a_acts /= norms[a_idx]
    g_e = F.embedding_bag(a_idx, Wd, per_sample_weights=a_acts, mode="sum").sub_(residual).mul_(coef)  # (n, d)
    g_apre = row_dots(a_idx, g_e, Wd).mul_(a_vals > 0)  # (n, ka)
    tokens = torch.arange(pre.shape[0]).repeat_interleave(ka)  # (n ka,)
    scatter = Scatter(a_idx.reshape(-1), Wd.shape[0])
    Wd.grad += scatter(tokens, a_acts.reshape(-1), g_e)
    Wt.grad += scatter(tokens, g_apre.reshape(-1), xc)
    be.grad.index_add_(0, a_idx.reshape(-1), g_apre.reshape(-1))
