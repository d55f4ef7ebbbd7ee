"""One optimizer step of SAE training, written two ways that must agree (tests/test_train.py).

`ReferenceStep` is the definition: the module's own forward (`ForwardOutput`), autograd, Adam,
the parallel-gradient removal and the decoder renormalisation. It serves every architecture.

`FastTopKStep` computes the same step for a TopK SAE with the backward pass written out, so that
everything sparse stays sparse (after EleutherAI sparsify's fused encoder, rebuilt for the CPU):
only the encoder product is dense, 2·n·d_in·d_sae flops. The decoder is a gather of the k active
rows (`embedding_bag`), the gradient of each active code is a sampled dot product (SDDMM), and the
weight gradients are one sparse-transpose product each (CSR · dense); all are O(n·k·d_in). A dense
decoder would add four products as large as the encoder (forward, two backward, and the encoder's
weight gradient), which is what a plain autograd TopK costs.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from interplab.decompose.sae import SAE, TopKSAE


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix, built without torch's beta warning (the three CSR ops used here are tested)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


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
    """Autograd through `SAE.forward`: slow and plain, the definition the fast step must match."""

    def __init__(self, module: SAE, lr: float, betas: tuple[float, float], eps: float, aux_coefficient: float):
        self.module, self.aux = module.train(), aux_coefficient
        self.opt = torch.optim.Adam(module.param_groups(lr), betas=betas, eps=eps, foreach=False)
        self.base = [group["lr"] for group in self.opt.param_groups]

    def __call__(self, x: torch.Tensor, dead: torch.Tensor, lr_scale: float, coef: float) -> StepOutput:
        out = self.module(x, dead=dead)
        loss = out.fvu + coef * out.sparsity + self.aux * out.aux_loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.module.remove_parallel_grads_()
        for group, base in zip(self.opt.param_groups, self.base, strict=True):
            group["lr"] = base * lr_scale
        self.opt.step()
        self.module.normalize_decoder_()
        with torch.no_grad():
            active = out.codes != 0  # (n, d_sae)
            return StepOutput(out.fvu.detach(), active.sum(1).to(x.dtype).mean(), active.any(0))

    def state(self) -> dict[str, torch.Tensor]:
        params = {f"param.{n}": t.detach() for n, t in self.module.state_dict().items()}
        return params | adam_tensors(self.opt)

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict({n[6:]: t for n, t in tensors.items() if n.startswith("param.")})
        load_adam(self.opt, tensors)

    def finish(self) -> None:
        self.module.eval()


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
        self.crow = latents.new_zeros(m + 1)  # (m + 1,)
        torch.cumsum(torch.bincount(latents, minlength=m), 0, out=self.crow[1:])
        self.m = m

    def __call__(self, rows: torch.Tensor, weights: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        g = _csr(self.crow, rows[self.order], weights[self.order], (self.m, dense.shape[0]))
        return torch.sparse.mm(g, dense)  # (m, d)


class FastTopKStep:
    """The TopK step of `ReferenceStep` with a hand-written sparse backward (see the module doc).

    It trains its own copies of the weights, with the encoder stored transposed (d_sae, d_in) so
    that each latent's gradient is a contiguous row, and writes them back in `finish`."""

    @staticmethod
    def applies(module: SAE) -> bool:
        return (isinstance(module, TopKSAE) and module.apply_b_dec_to_input
                and not module.rescale_acts_by_decoder_norm)

    def __init__(self, module: TopKSAE, lr: float, betas: tuple[float, float], eps: float, aux_coefficient: float):
        self.module, self.k, self.aux = module, int(module.k or 1), aux_coefficient
        self.k_aux = max(1, module.d_in // 2)  # Gao et al.'s heuristic, as in `auxk_loss`
        self.dense_aux = 7.0  # dense AuxK up to this many times k_aux dead latents (measured: 2000 of 4608)
        with torch.no_grad():
            self.params = [module.W_enc.detach().T.contiguous(),  # (m, d)
                           *(p.detach().clone() for p in (module.b_enc, module.W_dec, module.b_dec))]
        self.opt = torch.optim.Adam(self.params, lr=lr, betas=betas, eps=eps, fused=True)
        self.base = lr
        self._pre = torch.empty(0)

    def _buffer(self, n: int, m: int, dtype: torch.dtype) -> torch.Tensor:
        """The (n, m) pre-activations, written into one buffer kept across steps: a fresh 75 MB
        tensor each step costs ~40 ms of page faults on a CPU (measured at n 4096, m 4608)."""
        if self._pre.shape[0] < n or self._pre.shape[1:] != (m,) or self._pre.dtype != dtype:
            self._pre = torch.empty(n, m, dtype=dtype)
        return self._pre[:n]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, dead: torch.Tensor, lr_scale: float, coef: float) -> StepOutput:
        Wt, be, Wd, bd = self.params
        n, m = x.shape[0], Wt.shape[0]
        xc = x - bd  # (n, d)
        pre = torch.addmm(be, xc, Wt.T, out=self._buffer(n, m, x.dtype))  # (n, m): the one dense product
        vals, idx = pre.topk(self.k, dim=1, sorted=False)  # (n, k)
        acts = vals.clamp_min(0)  # (n, k)
        err = F.embedding_bag(idx, Wd, per_sample_weights=acts, mode="sum").add_(bd).sub_(x)  # (n, d) recon - x
        total = (x - x.mean(0)).pow(2).sum().clamp_min(torch.finfo(x.dtype).tiny)  # ()
        fvu = err.pow(2).sum() / total
        g_rec = err * (2 / total)  # (n, d): d fvu / d recon
        g_pre = row_dots(idx, g_rec, Wd).mul_(vals > 0)  # (n, k)
        tokens = torch.arange(n).repeat_interleave(self.k)  # (n k,)
        scatter = Scatter(idx.reshape(-1), m)
        Wd.grad = scatter(tokens, acts.reshape(-1), g_rec)  # (m, d)
        Wt.grad = scatter(tokens, g_pre.reshape(-1), xc)  # (m, d)
        be.grad = torch.zeros_like(be).index_add_(0, idx.reshape(-1), g_pre.reshape(-1))  # (m,)
        if bool(dead.any()):
            self._auxk(pre, xc, err, dead)  # adds its gradients to all three
        bd.grad = g_rec.sum(0) - be.grad @ Wt  # (d,): the output bias, and -b_dec inside the encoder
        Wd.grad -= (Wd.grad * Wd).sum(1, keepdim=True) * Wd  # remove the part parallel to each row
        self.opt.param_groups[0]["lr"] = self.base * lr_scale
        self.opt.step()
        Wd /= Wd.norm(dim=1, keepdim=True).clamp_min(1e-12)
        positive = vals > 0  # (n, k)
        fired = torch.zeros(m, dtype=torch.bool)
        fired[idx[positive]] = True
        return StepOutput(fvu, positive.sum().to(x.dtype) / n, fired)

    def _auxk(self, pre: torch.Tensor, xc: torch.Tensor, err: torch.Tensor, dead: torch.Tensor) -> None:
        """AuxK as `auxk_loss` defines it (the top k_aux dead latents of each token reconstruct the
        residual), its gradients added to the main ones. k_aux = d_in/2 codes a token is too many
        for gathers to beat BLAS, so while the dead are few (up to `dense_aux` x k_aux) the codes
        stay dense over the dead columns and every product is a matmul; beyond that, sparse."""
        Wt, be, Wd, _ = self.params
        dead_idx = dead.nonzero().squeeze(1)  # (n_dead,)
        n_dead = dead_idx.numel()
        ka = min(self.k_aux, n_dead)
        candidates = pre.index_select(1, dead_idx)  # (n, n_dead)
        residual = -err  # (n, d) x - recon, a constant target
        r_total = (residual - residual.mean(0)).pow(2).sum().clamp_min(torch.finfo(err.dtype).tiny)
        coef = self.aux * min(n_dead / self.k_aux, 1.0) * 2 / r_total  # d (aux_coefficient · aux) / d e_hat, per diff
        if n_dead <= self.dense_aux * self.k_aux:
            a_acts = candidates.clamp_min(0)  # (n, n_dead)
            if ka < n_dead:  # keep each token's top ka
                top = candidates.topk(ka, dim=1, sorted=False)
                a_acts = torch.zeros_like(candidates).scatter_(1, top.indices, top.values.clamp_min(0))
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
        g_e = F.embedding_bag(a_idx, Wd, per_sample_weights=a_acts, mode="sum").sub_(residual).mul_(coef)  # (n, d)
        g_apre = row_dots(a_idx, g_e, Wd).mul_(a_vals > 0)  # (n, ka)
        tokens = torch.arange(pre.shape[0]).repeat_interleave(ka)  # (n ka,)
        scatter = Scatter(a_idx.reshape(-1), Wd.shape[0])
        Wd.grad += scatter(tokens, a_acts.reshape(-1), g_e)
        Wt.grad += scatter(tokens, g_apre.reshape(-1), xc)
        be.grad.index_add_(0, a_idx.reshape(-1), g_apre.reshape(-1))

    def state(self) -> dict[str, torch.Tensor]:
        names = ("W_encT", "b_enc", "W_dec", "b_dec")
        return {f"param.{n}": p for n, p in zip(names, self.params, strict=True)} | adam_tensors(self.opt)

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, p in zip(("W_encT", "b_enc", "W_dec", "b_dec"), self.params, strict=True):
            p.copy_(tensors[f"param.{name}"])
        load_adam(self.opt, tensors)

    @torch.no_grad()
    def finish(self) -> None:
        Wt, be, Wd, bd = self.params
        self.module.W_enc.copy_(Wt.T)
        self.module.b_enc.copy_(be)
        self.module.W_dec.copy_(Wd)
        self.module.b_dec.copy_(bd)
        self.module.eval()
