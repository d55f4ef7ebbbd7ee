"""Fast SAE training steps with the backward pass written out, one per architecture.

Every step here computes exactly what `ReferenceStep` (autograd through `SAE.forward`) computes,
tested equal to float64 rounding in tests/test_train.py, but keeps what is sparse sparse: only the
encoder product (n, d_in) x (d_in, d_sae) is always dense. The active codes of a batch are a list of
entries (token, latent, pre-activation); the decoder is a gather of their rows (`embedding_bag`),
each entry's code gradient a sampled dot product (SDDMM) and the weight gradients one CSR product
each, all O(entries x d_in). When a batch's candidate entries are many (a ReLU or JumpReLU SAE early
in training, half its codes active), sparse kernels lose to BLAS: above `DENSE_FRACTION` of the
(n, d_sae) grid the same formulas run on dense tensors.

What differs between architectures is which entries are candidates and four elementwise rules:
the code of an entry, its gate (d code / d pre), its sparsity penalty's gradient, and the threshold
gradient (JumpReLU's straight-through estimators). Those are the methods of the `Rules` classes.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from interplab.parallel import World, batch_moments
from interplab.decompose.sae import SAE, BatchTopKSAE, JumpReLUSAE, ReLUSAE, TopKSAE
from interplab.decompose.steps import (Scatter, StepOutput, _csr, adam_tensors, aux_gradients, clip_gradients,
                                       load_adam, row_pointers)
from interplab.decompose.topk import shared_cut, top_positive

DENSE_FRACTION = 0.08  # above this share of active candidate entries, dense products beat CSR ones


class Entries(NamedTuple):
    """Candidate entries of a batch, ordered by token."""

    rows: torch.Tensor  # (E,) token
    lat: torch.Tensor  # (E,) latent
    pre: torch.Tensor  # (E,) pre-activation
    crow: torch.Tensor  # (n + 1,) CSR row pointers: entries of token t are crow[t]:crow[t+1]


def _entries_from_mask(pre: torch.Tensor, mask: torch.Tensor) -> Entries:
    rows, lat = mask.nonzero(as_tuple=True)  # row-major: tokens ascending
    return Entries(rows, lat, pre[rows, lat], row_pointers(rows, pre.shape[0]))


def sampled_dots(e: Entries, g: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """out[i] = g[rows[i]] · W[lat[i]] for every entry (SDDMM), without the dense (n, d_sae) product."""
    if e.lat.numel() == 0:
        return g.new_zeros(0)
    pattern = _csr(e.crow, e.lat, g.new_zeros(e.lat.numel()), (g.shape[0], W.shape[0]))
    return torch.sparse.sampled_addmm(pattern, g, W.T, beta=0.0).values()  # (E,)


class Rules:
    """Elementwise rules of one architecture; `th` is the threshold of each entry's latent."""

    def __init__(self, module: SAE):
        self.module = module

    def codes(self, pre: torch.Tensor, th: torch.Tensor | None) -> torch.Tensor:
        return pre.clamp_min(0)

    def gate(self, pre: torch.Tensor, th: torch.Tensor | None) -> torch.Tensor:
        return (pre > 0).to(pre.dtype)

    def active(self, pre: torch.Tensor, th: torch.Tensor | None) -> torch.Tensor:
        """Which entries count as firing (L0, dead-latent tracking)."""
        return pre > 0

    def code_penalty(self, codes: torch.Tensor, norms: torch.Tensor, scale: float) -> torch.Tensor | None:
        """d (coef · sparsity) / d code per entry, `scale` = coef / (n · d_in); None when there is none."""
        return None

    def theta_grad(self, pre: torch.Tensor, th: torch.Tensor, g_code: torch.Tensor,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-entry contributions to d loss / d threshold (JumpReLU), from the reconstruction and from
        the penalty, kept apart because autograd rounds each to the threshold's float32; else None."""
        return None

    def threshold(self) -> torch.Tensor | None:
        return None


class TopKRules(Rules):
    pass


class BatchTopKRules(Rules):
    pass


class ReLURules(Rules):
    def code_penalty(self, codes: torch.Tensor, norms: torch.Tensor, scale: float) -> torch.Tensor | None:
        return norms * scale  # L1 weighted by the decoder row norm


class JumpReLURules(Rules):
    """pre · H(pre - θ); θ's gradient by the rectangle kernel of width h (Rajamanoharan et al. 2024),
    from the reconstruction (-θ/h · rect · g_code) and from the L0 penalty (-1/h · rect · coef/(n d_in))."""

    def __init__(self, module: JumpReLUSAE):
        super().__init__(module)
        self.h = module.bandwidth

    def threshold(self) -> torch.Tensor:
        return self.module.threshold  # (d_sae,) float32, as the reference's forward sees it

    def codes(self, pre: torch.Tensor, th: torch.Tensor | None) -> torch.Tensor:
        return pre * (pre > th).to(pre.dtype)

    def gate(self, pre: torch.Tensor, th: torch.Tensor | None) -> torch.Tensor:
        return (pre > th).to(pre.dtype)

    def active(self, pre: torch.Tensor, th: torch.Tensor | None) -> torch.Tensor:
        return pre > th

    def theta_grad(self, pre: torch.Tensor, th: torch.Tensor, g_code: torch.Tensor,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        u = (pre - th) / self.h
        rect = ((u > -0.5) & (u < 0.5)).to(pre.dtype)
        return -(th / self.h) * rect * g_code, -(1.0 / self.h) * rect * scale


RULES: dict[type, type[Rules]] = {TopKSAE: TopKRules, BatchTopKSAE: BatchTopKRules, ReLUSAE: ReLURules,
                                  JumpReLUSAE: JumpReLURules}


class FastStep:
    """The step of `ReferenceStep` for TopK, BatchTopK, JumpReLU (L0 penalty) and ReLU SAEs.

    It trains its own copies of the weights, with the encoder stored transposed (d_sae, d_in) so
    that each latent's gradient is a contiguous row, and writes them back in `finish`."""

    NAMES: ClassVar[tuple[str, ...]] = ("W_encT", "b_enc", "W_dec", "b_dec")

    @staticmethod
    def applies(module: SAE) -> bool:
        if type(module) not in RULES or not module.apply_b_dec_to_input:
            return False
        if module.rescale_acts_by_decoder_norm and not isinstance(module, (TopKSAE, BatchTopKSAE)):
            return False
        return not (isinstance(module, JumpReLUSAE) and module.sparsity != "l0")

    def __init__(self, module: SAE, lr: float, betas: tuple[float, float], eps: float, aux_coefficient: float,
                 world: World | None = None, grad_clip: float | None = None):
        self.module, self.aux, self.rules = module, aux_coefficient, RULES[type(module)](module)
        self.clip, self.rescale = grad_clip, module.rescale_acts_by_decoder_norm
        self.world = world or World()
        self.uses_aux = isinstance(module, (TopKSAE, BatchTopKSAE))  # AuxK revives their dead latents
        self.k = int(module.k or 1)
        self.k_aux = max(1, module.d_in // 2)  # Gao et al.'s heuristic, as in `auxk_loss`
        self.dense_aux = 7.0  # dense AuxK up to this many times k_aux dead latents (measured: 2000 of 4608)
        with torch.no_grad():
            self.params = [module.W_enc.detach().T.contiguous(),  # (m, d)
                           *(p.detach().clone() for p in (module.b_enc, module.W_dec, module.b_dec))]
        self.opts = [torch.optim.Adam(self.params, lr=lr, betas=betas, eps=eps, fused=True)]
        self.base = [lr]
        if isinstance(module, JumpReLUSAE):  # float64 thresholds: an optimizer of their own
            self.opts.append(torch.optim.Adam([module.log_threshold], lr=lr * module.threshold_lr_scale,
                                              betas=betas, eps=eps, foreach=False))
            self.base.append(lr * module.threshold_lr_scale)
        self._pre = torch.empty(0)

    def _buffer(self, n: int, m: int, dtype: torch.dtype) -> torch.Tensor:
        """The (n, m) pre-activations, written into one buffer kept across steps: a fresh 75 MB
        tensor each step costs ~40 ms of page faults on a CPU (measured at n 4096, m 4608)."""
        if self._pre.shape[0] < n or self._pre.shape[1:] != (m,) or self._pre.dtype != dtype:
            self._pre = torch.empty(n, m, dtype=dtype)
        return self._pre[:n]

    # --- which entries -----------------------------------------------------------------------
    def _select(self, pre: torch.Tensor, n_all: int) -> Entries | None:
        """The candidate entries, or None when they are too many for sparse kernels (dense path)."""
        n, m = pre.shape
        if isinstance(self.module, TopKSAE):
            vals, idx = pre.topk(self.k, dim=1, sorted=False)  # (n, k)
            return Entries(torch.arange(n).repeat_interleave(self.k), idx.reshape(-1), vals.reshape(-1),
                           torch.arange(0, n * self.k + 1, self.k))
        if isinstance(self.module, BatchTopKSAE):
            return self._batch_topk(pre) if self.world.size == 1 else self._batch_topk_shared(pre, n_all)
        th = self.rules.threshold()
        cut = pre > (th - self.rules.h / 2) if th is not None else pre > 0  # active or inside θ's kernel
        count = cut.sum().reshape(1)
        self.world.sum_(count)  # every rank takes the same path
        if int(count) > DENSE_FRACTION * n_all * m:
            return None
        return _entries_from_mask(pre, cut)

    @torch.no_grad()
    def _batch_topk(self, pre: torch.Tensor) -> Entries:
        """The k·n largest ReLU'd pre-activations of the batch; the threshold's EMA as the module does."""
        n, m = pre.shape
        vals, flat = top_positive(pre.view(-1), min(self.k * n, pre.numel()))  # (E,), (E,)
        self.module.update_threshold(vals)
        flat = flat.sort().values  # (E,) token-major
        rows, lat = flat // m, flat % m
        return Entries(rows, lat, pre.view(-1)[flat], row_pointers(rows, n))

    @torch.no_grad()
    def _batch_topk_shared(self, pre: torch.Tensor, n_all: int) -> Entries:
        """BatchTopK over a batch split across ranks: the whole batch's cut (`topk.shared_cut`)."""
        cut = shared_cut(pre, self.k * n_all, self.world)
        self.module.update_threshold(cut.low)
        return _entries_from_mask(pre, cut.keep)

    # --- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, x: torch.Tensor, dead: torch.Tensor, lr_scale: float, coef: float) -> StepOutput:
        Wt, be, Wd, bd = self.params
        n, m = x.shape[0], Wt.shape[0]
        xc = x - bd  # (n, d)
        row_norms = Wd.norm(dim=1) if self.rescale else None  # (m,)
        if row_norms is None:
            pre = torch.addmm(be, xc, Wt.T, out=self._buffer(n, m, x.dtype))  # (n, m): the one dense product
        else:  # SAELens's rescaling, latents ranked by pre·||W_dec,i||: scaling W_enc costs m d, not n m
            pre = torch.addmm(be * row_norms, xc, (Wt * row_norms.unsqueeze(1)).T, out=self._buffer(n, m, x.dtype))
        total, n_all = batch_moments(x, self.world)  # of the global batch, whichever rank holds its rows
        total = total.clamp_min(torch.finfo(x.dtype).tiny)  # ()
        e = self._select(pre, n_all)
        if e is not None and row_norms is not None:  # code/||W_dec,i|| on the free-norm row = pre on it
            e = e._replace(pre=e.pre / row_norms[e.lat])
        scale = coef / (n_all * self.module.d_in)
        if e is None:
            sse, err, g_rec, active, fired = self._dense(x, xc, pre, total, scale)
        else:
            sse, err, g_rec, active, fired = self._sparse(x, xc, e, total, scale)
        if self.uses_aux and bool(dead.any()):
            aux_gradients(self.params, pre, xc, err, dead, self.aux, self.k_aux, self.dense_aux, self.world,
                          row_norms)
        g_bias = g_rec.sum(0)  # (d,)
        stats = torch.stack([sse, active.to(sse.dtype)])  # (2,)
        log_t = self.module.log_threshold if isinstance(self.module, JumpReLUSAE) else None
        self.world.sum_(Wd.grad, Wt.grad, be.grad, g_bias, stats, *([log_t.grad] if log_t is not None else []))
        self.world.max_(fired)
        bd.grad = g_bias - be.grad @ Wt  # (d,): the output bias, and -b_dec inside the encoder
        if self.module.unit_decoder:
            Wd.grad -= (Wd.grad * Wd).sum(1, keepdim=True) * Wd  # remove the part parallel to each row
        if self.clip is not None:
            clip_gradients([Wt.grad, be.grad, Wd.grad, bd.grad, *([log_t.grad] if log_t is not None else [])],
                           self.clip, float(total) / n_all)
        for opt, base in zip(self.opts, self.base, strict=True):
            opt.param_groups[0]["lr"] = base * lr_scale
            opt.step()
        if self.module.unit_decoder:
            Wd /= Wd.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return StepOutput(stats[0] / total, stats[1] / n_all, fired)

    def _sparse(self, x: torch.Tensor, xc: torch.Tensor, e: Entries, total: torch.Tensor,
                scale: float) -> tuple[torch.Tensor, ...]:
        """This rank's squared error, err (n, d), g_rec (n, d), active count and fired mask (m,); local
        gradients set (the caller reduces them across ranks)."""
        Wt, be, Wd, bd = self.params
        m = Wt.shape[0]
        th = self.rules.threshold()
        th_e = th[e.lat] if th is not None else None  # (E,)
        codes = self.rules.codes(e.pre, th_e)  # (E,)
        recon = F.embedding_bag(e.lat, Wd, e.crow[:-1], per_sample_weights=codes, mode="sum")  # (n, d)
        err = recon.add_(bd).sub_(x)  # (n, d) recon - x
        g_rec = err * (2 / total)  # (n, d): d fvu / d recon
        g_code = sampled_dots(e, g_rec, Wd)  # (E,)
        self._theta_grad(e.pre, th_e, g_code, scale, e.lat)
        norms = Wd.norm(dim=1)  # (m,)
        pen = self.rules.code_penalty(codes, norms[e.lat], scale)
        g_pre = (g_code + pen if pen is not None else g_code) * self.rules.gate(e.pre, th_e)  # (E,)
        scatter = Scatter(e.lat, m)
        Wd.grad = scatter(e.rows, codes, g_rec)  # (m, d)
        if pen is not None:  # d/dW_i of scale · Σ_t f_ti ||W_i||
            Wd.grad += (torch.zeros(m, dtype=x.dtype).index_add_(0, e.lat, codes) * scale
                        / norms.clamp_min(1e-30)).unsqueeze(1) * Wd
        Wt.grad = scatter(e.rows, g_pre, xc)  # (m, d)
        be.grad = torch.zeros_like(be).index_add_(0, e.lat, g_pre)  # (m,)
        on = self.rules.active(e.pre, th_e) & (codes != 0)  # (E,)
        fired = torch.zeros(m, dtype=torch.bool)
        fired[e.lat[on]] = True
        return err.pow(2).sum(), err, g_rec, on.sum(), fired

    def _dense(self, x: torch.Tensor, xc: torch.Tensor, pre: torch.Tensor, total: torch.Tensor,
               scale: float) -> tuple[torch.Tensor, ...]:
        """As `_sparse`, with every entry of the (n, m) grid."""
        Wt, be, Wd, bd = self.params
        th = self.rules.threshold()
        codes = self.rules.codes(pre, th)  # (n, m)
        err = torch.addmm(bd, codes, Wd).sub_(x)  # (n, d)
        g_rec = err * (2 / total)  # (n, d)
        g_code = g_rec @ Wd.T  # (n, m)
        self._theta_grad(pre, th, g_code, scale, None)
        norms = Wd.norm(dim=1)  # (m,)
        pen = self.rules.code_penalty(codes, norms, scale)
        g_pre = (g_code + pen if pen is not None else g_code) * self.rules.gate(pre, th)  # (n, m)
        Wd.grad = codes.T @ g_rec  # (m, d)
        if pen is not None:
            Wd.grad += (codes.sum(0) * scale / norms.clamp_min(1e-30)).unsqueeze(1) * Wd
        Wt.grad = g_pre.T @ xc  # (m, d)
        be.grad = g_pre.sum(0)  # (m,)
        on = self.rules.active(pre, th) & (codes != 0)  # (n, m)
        return err.pow(2).sum(), err, g_rec, on.sum(), on.any(0)

    def _theta_grad(self, pre: torch.Tensor, th: torch.Tensor | None, g_code: torch.Tensor, scale: float,
                    lat: torch.Tensor | None) -> None:
        """JumpReLU: d loss / d log θ as autograd computes it: the forward reads the float32 threshold
        twice (gate and penalty), each a cast of exp(log θ) of its own, so each part's gradient is
        rounded to float32, then carried back to log θ in float64."""
        if th is None or not isinstance(self.module, JumpReLUSAE):
            return
        m = self.module.d_sae
        log_t = self.module.log_threshold
        theta = log_t.detach().exp()  # (m,) float64
        grad = torch.zeros(m, dtype=torch.float64)
        for per in self.rules.theta_grad(pre, th, g_code, scale):
            part = per.sum(0) if lat is None else per.new_zeros(m).index_add_(0, lat, per)  # (m,)
            grad += part.to(torch.float32).to(torch.float64) * theta
        log_t.grad = grad

    # --- state ---------------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        out = {f"param.{n}": p for n, p in zip(self.NAMES, self.params, strict=True)} | adam_tensors(self.opts[0])
        if len(self.opts) > 1:
            out |= {f"thr_{k}": v for k, v in adam_tensors(self.opts[1]).items()}
        if isinstance(self.module, JumpReLUSAE):
            out["param.log_threshold"] = self.module.log_threshold.detach()
        elif isinstance(self.module, BatchTopKSAE):
            out["param.threshold"] = self.module.threshold
        return out

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, p in zip(self.NAMES, self.params, strict=True):
            p.copy_(tensors[f"param.{name}"])
        if isinstance(self.module, JumpReLUSAE):
            self.module.log_threshold.copy_(tensors["param.log_threshold"])
        elif isinstance(self.module, BatchTopKSAE):
            self.module.threshold.copy_(tensors["param.threshold"])
        load_adam(self.opts[0], {k: v for k, v in tensors.items() if not k.startswith("thr_")})
        if len(self.opts) > 1:
            load_adam(self.opts[1], {k[4:]: v for k, v in tensors.items() if k.startswith("thr_")})

    @torch.no_grad()
    def finish(self) -> None:
        Wt, be, Wd, bd = self.params
        self.module.W_enc.copy_(Wt.T)
        self.module.b_enc.copy_(be)
        self.module.W_dec.copy_(Wd)
        self.module.b_dec.copy_(bd)
        self.module.eval()
