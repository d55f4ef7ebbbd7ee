"""Many splices of one site scored in one forward pass: the clean prefix shared, the variants batched.

    sp = BatchSplicer(subject, "resid_post.6")
    rows = sp.rows(x)                              # (n, d) clean activation rows, BOS position dropped
    out = sp.losses(x, variants)                   # variants (K, n, d): what replaces the rows
    out.loss (K,), out.kl (K,), out.clean_loss     # summed loss and KL(p_clean || p_k) per variant

Sequence models whose output is next-token logits (language models, character transformers) run
once on the batch up to the transformer block that holds the site. There the hidden state is
repeated K + 1 times along the batch (variant-major: the clean run first), the site's activation
of copy k is replaced by variant k, and the rest of the model runs on (K + 1) B sequences. Where the
site is a block's own output nothing before it is recomputed; for sites inside a block (its MLP
hidden layer, its attention output) that one block runs K + 1 times. The pass stops at the input of
the unembedding; logits, cross-entropy and KL are computed in chunks of tokens, so (K + 1) B T
vocabulary-sized rows never sit in memory at once. Variants are split over several passes when
there are more than `max_rows` sequence positions in all.

Other subjects (toy models, whose `loss` is a batch mean) run one spliced forward per variant with
`interplab.metrics.downstream`'s runner; their passes are small. Losses follow `downstream`: for
sequence models, next-token CE summed over predictions at positions skip..T-2 (skip = 1 under a
prepended BOS, whose position is never replaced) and KL summed over positions skip..T-1; for toy
models the subject's own batch-mean loss, and KL only where the outputs are logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from interplab.hooks import activations, capture, splice
from interplab.metrics.downstream import _replacing, _run, first_position, site_rows
from interplab.subjects.base import Subject
from interplab.subjects.sites import resolve

IGNORE = -100  # target of positions without a next token
Variants = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]  # (K, n, d), or rows (n, d) -> that


class BatchLosses(NamedTuple):
    """What the variants of one batch cost: sums over the batch's predictions."""

    clean_loss: float  # summed loss of the clean run
    loss: torch.Tensor  # (K,) summed loss of each variant, float64
    kl: torch.Tensor  # (K,) summed KL(p_clean || p_k), float64 (zeros where undefined)
    n: float  # predictions the loss sums cover (1 per batch for toy models, whose loss is a batch mean)
    n_kl: float  # positions (or rows) the KL sums cover


class _Plan(NamedTuple):
    expand_block: int | None  # index of the block whose input is repeated (None: repeat at the site)
    blocks: list[nn.Module]  # the transformer's blocks (empty when none was found)
    first_block: int  # blocks from here on receive the repeated batch
    head: nn.Linear | None  # unembedding whose input is captured (None: take the full logits)
    head_path: str | None


def _block_of(model: nn.Module, path: str) -> tuple[str, int, nn.ModuleList] | None:
    """(block path, index, list) of the innermost ModuleList element holding module `path`."""
    parts = path.split(".") if path else []
    for i in range(len(parts), 0, -1):
        parent = ".".join(parts[: i - 1])
        try:
            container = model.get_submodule(parent)
        except AttributeError:
            continue
        if isinstance(container, nn.ModuleList) and parts[i - 1].isdigit():
            return ".".join(parts[:i]), int(parts[i - 1]), container
    return None


def _head(model: nn.Module) -> tuple[nn.Linear | None, str | None]:
    """The unembedding (a Linear whose output is the logits), when the model names one."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is None:
        head = getattr(model, "unembed", None)
    if not isinstance(head, nn.Linear) or getattr(getattr(model, "config", None), "final_logit_softcapping", None):
        return None, None
    path = next((p for p, m in model.named_modules() if m is head), None)
    return (head, path) if path is not None else (None, None)


class BatchSplicer:
    """Score K replacements of one site's activation on a batch of inputs (see the module doc)."""

    def __init__(self, subject: Subject, site: str, max_rows: int = 16_384, token_chunk: int = 256):
        self.subject, self.site = subject, site
        self.max_rows, self.token_chunk = max_rows, token_chunk
        self.skip = first_position(subject)
        self._sequence: bool | None = None
        self._plan: _Plan | None = None

    # --- what kind of subject -----------------------------------------------------------------
    def sequence(self, x: torch.Tensor) -> bool:
        """Whether the subject maps (batch, T) ids to (batch, T, vocab) next-token logits."""
        if self._sequence is None:
            seq = self.subject.token_dims == 2 and x.ndim == 2
            if seq:
                with torch.no_grad():
                    out = self.subject.forward(x[:1])
                seq = out.ndim == 3 and tuple(out.shape[:2]) == (1, x.shape[1])
            self._sequence = bool(seq)
        return self._sequence

    def plan(self) -> _Plan:
        if self._plan is None:
            model = self.subject.model
            site = resolve(model, self.site, dict(self.subject.sites))
            found = _block_of(model, site.module)
            head, head_path = _head(model)
            if found is None:
                self._plan = _Plan(None, [], 0, head, head_path)
            else:
                block_path, index, blocks = found
                at_site = site.module == block_path  # the block's own output (or input): repeat right there
                self._plan = _Plan(None if at_site else index, list(blocks),
                                   index + 1 if at_site and site.io == "output" else index, head, head_path)
        return self._plan

    # --- rows ---------------------------------------------------------------------------------
    @torch.no_grad()
    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The clean activation rows (n, d) at the site, float32, BOS position dropped."""
        a = activations(self.subject.model, x, [self.site], sites=self.subject.sites)[self.site]
        return site_rows(a, self.subject).float()

    # --- losses -------------------------------------------------------------------------------
    @torch.no_grad()
    def losses(self, x: torch.Tensor, variants: Variants, count: int | None = None) -> BatchLosses:
        """Summed losses and KL of each of K replacements of the site's rows on inputs x.

        `variants` is a tensor (K, n, d), or a function of the clean rows (n, d) returning one
        (with `count` = K): it is then called once, inside the pass, on the rows that pass
        computed, so the prefix up to the site runs once for the clean run and all variants.
        """
        if not callable(variants):
            count, made = variants.shape[0], variants
            variants = lambda _rows: made  # noqa: E731
        if count is None:
            raise ValueError("pass count= with a function of the rows")
        built: list[torch.Tensor] = []

        def part(start: int, stop: int) -> Callable[[torch.Tensor], torch.Tensor]:
            def get(rows: torch.Tensor) -> torch.Tensor:
                if not built:
                    built.append(variants(rows))
                return built[0][start:stop]

            return get

        if not self.sequence(x):
            return self._loop(x, part(0, count)(self.rows(x)))
        B = x.shape[0]
        per_pass = max(1, self.max_rows // max(1, x.numel()) - 1)  # variants per pass besides the clean one
        clean_h, clean_loss, loss, kl = None, 0.0, [], []
        for start in range(0, count, per_pass):
            first = clean_h is None
            stop = min(count, start + per_pass)
            h = self._forward(x, part(start, stop), stop - start, with_clean=first)  # ((k [+1]) B, T, ·)
            hs = h.reshape(-1, B, *h.shape[1:])  # (k [+1], B, T, d_model or vocab)
            clean_h = hs[0] if first else clean_h
            l_, k_ = self._score(x, clean_h, hs)
            if first:
                clean_loss, l_, k_ = float(l_[0]), l_[1:], k_[1:]
            loss.append(l_)
            kl.append(k_)
        n, n_kl = self.predictions(x), B * (x.shape[1] - self.skip)
        return BatchLosses(clean_loss, torch.cat(loss), torch.cat(kl), n, float(n_kl))

    def predictions(self, x: torch.Tensor) -> float:
        """What a summed loss on x adds over: next-token predictions for sequence models, samples
        for toy models (the unit of `grads`; their `losses` are batch means, counted once)."""
        if self.sequence(x) or self.subject.tokenizer is not None:
            return float(x.shape[0] * (x.shape[1] - 1 - self.skip))
        return float(x.shape[0])

    def _loop(self, x: torch.Tensor, variants: torch.Tensor) -> BatchLosses:
        """One spliced forward per variant (toy models, and outputs other than next-token logits)."""
        clean, clean_logp = _run(self.subject, self.site, x, None, None)
        loss, kl = [], []
        for v in variants:
            run, _ = _run(self.subject, self.site, x, lambda _a, v=v: v, clean_logp)
            loss.append(run.loss_sum)
            kl.append(run.kl_sum)
        n = 1.0 if self.subject.tokenizer is None else self.predictions(x)
        n_kl = float(x.shape[0]) if self.subject.tokenizer is None else float(x.shape[0] * (x.shape[1] - self.skip))
        return BatchLosses(clean.loss_sum, torch.tensor(loss, dtype=torch.float64),
                           torch.tensor(kl, dtype=torch.float64), n, n_kl)

    # --- the batched forward ------------------------------------------------------------------
    def _forward(self, x: torch.Tensor, make: Callable[[torch.Tensor], torch.Tensor], k: int,
                 with_clean: bool) -> torch.Tensor:
        """Final hidden states (or logits) of k variants [and the clean run], ((k [+1]) B, T, ·)."""
        K = k + int(with_clean)
        plan, B = self.plan(), x.shape[0]
        skip = self.skip

        def replace(a: torch.Tensor) -> torch.Tensor:  # (B or K B, T, ...) -> (K B, T, ...)
            base = a[:B]
            variants = make(site_rows(base, self.subject).float())  # (k, n, d)
            body = variants.to(a.dtype).reshape(k, B, a.shape[1] - skip, *a.shape[2:])
            if with_clean:
                body = torch.cat([base[None, :, skip:], body], 0)  # (K, B, T - skip, ...)
            if skip:
                body = torch.cat([base[None, :, :skip].expand(K, *base[:, :skip].shape), body], 2)
            return body.reshape(K * B, *a.shape[1:])

        with self._repeating(plan, B, K), splice(self.subject.model, {self.site: replace}, sites=self.subject.sites):
            return self._final(x, plan, detach=True)

    def _final(self, x: torch.Tensor, plan: _Plan, detach: bool) -> torch.Tensor:
        """Run the model on x (hooks in place): the unembedding's input, or the logits without one."""
        if plan.head_path is None:
            return self.subject.forward(x)
        name = plan.head_path + ":input"
        with capture(self.subject.model, [name], sites=self.subject.sites, stop=True, detach=detach) as acts:
            self.subject.forward(x)
        return acts[name]

    @contextlib.contextmanager
    def _repeating(self, plan: _Plan, B: int, K: int) -> Iterator[None]:
        """Repeat the hidden state at the expansion block's input, and every batch-shaped keyword
        argument (attention masks, position tensors) of the blocks that see the repeated batch."""

        def rep(v: Any) -> Any:
            if torch.is_tensor(v) and v.ndim and v.shape[0] == B and B > 1:
                return v.repeat(K, *([1] * (v.ndim - 1)))
            return tuple(rep(u) for u in v) if isinstance(v, tuple) else v

        def hook(index: int) -> Any:
            def pre(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                kwargs = {k: rep(v) for k, v in kwargs.items()}
                if index == plan.expand_block:
                    if args:
                        args = (args[0].repeat(K, *([1] * (args[0].ndim - 1))), *args[1:])
                    else:
                        h = kwargs["hidden_states"]
                        kwargs["hidden_states"] = h.repeat(K, *([1] * (h.ndim - 1)))
                else:
                    args = args[:1] + tuple(rep(a) for a in args[1:])
                return args, kwargs

            return pre

        handles = [b.register_forward_pre_hook(hook(i), with_kwargs=True)
                   for i, b in enumerate(plan.blocks) if i >= plan.first_block]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # --- scoring ------------------------------------------------------------------------------
    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        head = self.plan().head
        return (h if head is None else head(h)).float()  # (tokens, vocab)

    def _score(self, x: torch.Tensor, clean_h: torch.Tensor, hs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token CE (K,) and KL(p_clean || p_k) (K,) of final states hs (K, B, T, ·)."""
        skip = self.skip
        targets = torch.full_like(x, IGNORE)
        targets[:, :-1] = x[:, 1:]
        targets = targets[:, skip:].reshape(-1)  # (B (T - skip),)
        clean = clean_h[:, skip:].reshape(-1, clean_h.shape[-1])  # (B (T - skip), ·)
        flat = hs[:, :, skip:].reshape(hs.shape[0], -1, hs.shape[-1])  # (K, B (T - skip), ·)
        loss = torch.zeros(hs.shape[0], dtype=torch.float64)
        kl = torch.zeros(hs.shape[0], dtype=torch.float64)
        for s in range(0, targets.shape[0], self.token_chunk):
            t = targets[s : s + self.token_chunk]
            clean_logp = F.log_softmax(self._logits(clean[s : s + self.token_chunk]), -1)  # (c, vocab)
            clean_p = clean_logp.exp()  # (c, vocab)
            neg_entropy = (clean_p * clean_logp).sum().double()
            for k in range(hs.shape[0]):
                logp = F.log_softmax(self._logits(flat[k, s : s + self.token_chunk]), -1)  # (c, vocab)
                loss[k] += F.nll_loss(logp, t, ignore_index=IGNORE, reduction="sum").double()
                kl[k] += neg_entropy - (clean_p * logp).sum().double()  # KL(p_clean || p_k)
        return loss, kl

    # --- gradients ----------------------------------------------------------------------------
    def grads(self, x: torch.Tensor, variants: torch.Tensor) -> torch.Tensor:
        """Gradient (K, n, d) of each variant's summed loss with respect to its own rows.

        Sequence models: summed next-token CE over the batch's predictions. Toy models: the
        subject's batch-mean loss times the batch size (a sum over samples, like the sequences').
        """
        leaf = variants.detach().clone().requires_grad_(True)  # (K, n, d)
        if not self.sequence(x):
            return self._loop_grads(x, leaf)
        plan, B, K = self.plan(), x.shape[0], leaf.shape[0]
        skip = self.skip

        def replace(a: torch.Tensor) -> torch.Tensor:
            base = a[:B].detach()
            body = leaf.to(a.dtype).reshape(K, B, a.shape[1] - skip, *a.shape[2:])
            if skip:
                body = torch.cat([base[None, :, :skip].expand(K, *base[:, :skip].shape), body], 2)
            return body.reshape(K * B, *a.shape[1:])

        with torch.enable_grad():
            with self._repeating(plan, B, K), splice(self.subject.model, {self.site: replace}, sites=self.subject.sites):
                out = self._final(x, plan, detach=False)  # (K B, T, ·)
            targets = torch.full_like(x, IGNORE)
            targets[:, :-1] = x[:, 1:]
            targets = targets[:, skip:].repeat(K, 1).reshape(-1)  # (K B (T - skip),)
            flat = out[:, skip:].reshape(-1, out.shape[-1])
            if plan.head is None:
                loss = F.cross_entropy(flat.float(), targets, ignore_index=IGNORE, reduction="sum")
                (g,) = torch.autograd.grad(loss, leaf)
                return g
            g_out = torch.zeros_like(out)
            g_flat = g_out[:, skip:].reshape(-1, out.shape[-1]) if skip else g_out.view(-1, out.shape[-1])
            with torch.no_grad():
                for s in range(0, targets.shape[0], self.token_chunk):
                    t = targets[s : s + self.token_chunk]
                    p = F.softmax(self._logits(flat[s : s + self.token_chunk].detach()), -1)  # (c, vocab)
                    keep = t != IGNORE
                    p[keep.nonzero().flatten(), t[keep]] -= 1.0
                    p[~keep] = 0.0
                    g_flat[s : s + self.token_chunk] = p @ plan.head.weight.float()  # (c, d_model)
            if skip:
                g_out[:, skip:] = g_flat.reshape(g_out[:, skip:].shape)
            (g,) = torch.autograd.grad(out, leaf, grad_outputs=g_out)
        return g

    def _loop_grads(self, x: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
        grads = []
        with torch.enable_grad():
            for k in range(leaf.shape[0]):
                fns = {self.site: _rows_splicer(leaf[k], self.subject)}
                with splice(self.subject.model, fns, sites=self.subject.sites):
                    loss = self.subject.loss(x) * x.shape[0]
                (g,) = torch.autograd.grad(loss, leaf, retain_graph=False, allow_unused=True)
                grads.append(torch.zeros_like(leaf[k]) if g is None else g[k])
        return torch.stack(grads)


@torch.no_grad()
def plain_loss(subject: Subject, x: torch.Tensor) -> tuple[float, float]:
    """(summed loss, predictions) of an unspliced run, counted as `BatchSplicer.losses` counts:
    next-token CE over positions skip..T-2 for sequence models, the batch-mean loss (count 1) else."""
    skip = first_position(subject)
    if subject.token_dims == 2 and x.ndim == 2:
        logits = subject.forward(x)
        if logits.ndim == 3 and tuple(logits.shape[:2]) == tuple(x.shape):
            ce = F.cross_entropy(logits[:, skip:-1].flatten(0, 1).float(), x[:, skip + 1 :].flatten(), reduction="sum")
            return float(ce), float(x.shape[0] * (x.shape[1] - 1 - skip))
    return float(subject.loss(x)), 1.0


def _rows_splicer(rows: torch.Tensor, subject: Subject) -> Any:
    """A splice function putting `rows` (n, d) in place of the site's rows (BOS kept)."""
    return _replacing(lambda _a: rows, subject)
