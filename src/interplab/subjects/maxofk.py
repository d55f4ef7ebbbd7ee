"""Max-of-k: a one-layer attention-only transformer that outputs the largest of k tokens.

The model of Gross et al. 2024, "Compact proofs of model performance via mechanistic
interpretability": vocabulary 64, d_model 32, k = n_ctx = 4, one attention head with d_head 32,
learned positional embeddings, no MLP, no layer norm, no biases, causal attention. Its whole
algorithm (attend to the largest token, copy it) lives in a handful of small matrices, which makes
it the reference case for explanations that can be checked exhaustively.

The forward pass returns the logits at the last position only, (batch, vocab): that is the only
prediction the task scores, and computing the unembedding elsewhere would be wasted work. The
per-position residual stream is at the sites:

    embed / resid_pre.0   (batch, k, d_model)   token + position embedding
    attn_pattern.0        (batch, q, k)          attention probabilities of the single head
    attn_out.0            (batch, k, d_model)
    resid_post.0          (batch, k, d_model)
"""

from __future__ import annotations

import math
import time
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from interplab import cache, ui
from interplab.config import Config
from interplab.errors import UserError
from interplab.runtime import single_thread
from interplab.subjects.base import SUBJECTS, Subject
from interplab.subjects.sites import HookPoint, Site, canonical_sites

_CACHE_VERSION = 1  # bump when training or the parameter layout changes, so old entries are rebuilt
_EVAL_SEED = 15_485_863  # evaluation sequences apart from those of the usual small training seeds
_EVAL_SAMPLES = 8192
_MIN_ACCURACY = 0.99
Task = Literal["max", "min", "first"]


class MaxOfKConfig(Config):
    vocab: int = Field(64, ge=2)
    """Number of token values; the answer is the largest token id in the sequence."""
    d_model: int = Field(32, ge=1)
    """Width of the residual stream (and of the single head)."""
    k: int = Field(4, ge=1)
    """Sequence length n_ctx: how many tokens the max is taken over."""
    steps: int = Field(1500, ge=1)
    """Optimizer steps, each on a fresh batch of uniformly random sequences."""
    batch_size: int = Field(256, ge=1)
    """Sequences per step."""
    lr: float = Field(3e-3, gt=0)
    """AdamW peak learning rate (linear warm-up over the first 5% of steps, then cosine decay)."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW weight decay."""
    seed: int = 0
    """Seed of the initialisation and of the training sequences."""
    task: Task = "max"
    """What the model is trained to output: the largest token (the subject's task), or, for checks
    that need a model of the same architecture doing something else, the smallest or the first token."""


class AttentionBlock(nn.Module):
    """One causal attention head writing into the residual stream; weights as plain matrices
    (d_model, d_head) / (d_head, d_model), the form that compact-proof analyses multiply together."""

    def __init__(self, d_model: int, d_head: int):
        super().__init__()
        self.W_Q = nn.Parameter(torch.empty(d_model, d_head))
        self.W_K = nn.Parameter(torch.empty(d_model, d_head))
        self.W_V = nn.Parameter(torch.empty(d_model, d_head))
        self.W_O = nn.Parameter(torch.empty(d_head, d_model))
        self.hook_pattern = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        q, k, v = resid @ self.W_Q, resid @ self.W_K, resid @ self.W_V  # (batch, pos, d_head)
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # (batch, q, k)
        n = resid.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=resid.device).tril()  # (q, k)
        pattern = self.hook_pattern(scores.masked_fill(~causal, float("-inf")).softmax(-1))  # (batch, q, k)
        attn_out = self.hook_attn_out(pattern @ v @ self.W_O)  # (batch, pos, d_model)
        return self.hook_resid_post(resid + attn_out)  # (batch, pos, d_model)


class MaxOfKModel(nn.Module):
    """tokens (batch, k) long -> logits at the last position (batch, vocab).

    Parameters are created empty (no default init drawing on the global RNG); `reset_parameters`
    fills them from a generator.
    """

    def __init__(self, vocab: int, d_model: int, k: int):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(vocab, d_model))  # (vocab, d_model)
        self.W_pos = nn.Parameter(torch.empty(k, d_model))  # (k, d_model)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([AttentionBlock(d_model, d_model)])
        self.W_U = nn.Parameter(torch.empty(d_model, vocab))  # (d_model, vocab)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, 1/√d_model) everywhere (unit-scale residual stream), drawn from `generator`."""
        std = 1 / math.sqrt(self.W_pos.shape[1])
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        resid = self.hook_embed(self.W_E[tokens] + self.W_pos[: tokens.shape[1]])  # (batch, k, d_model)
        for block in self.blocks:
            resid = block(resid)  # (batch, k, d_model)
        return resid[:, -1] @ self.W_U  # (batch, vocab)


def sample_tokens(n: int, vocab: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniformly random sequences (n, k) of token ids in [0, vocab)."""
    return torch.randint(0, vocab, (n, k), generator=generator)


def labels(tokens: torch.Tensor, task: Task = "max") -> torch.Tensor:
    """The target of each sequence (n,) for `task`: its largest, smallest or first token."""
    if task == "max":
        return tokens.max(dim=1).values
    if task == "min":
        return tokens.min(dim=1).values
    return tokens[:, 0]


def _loss(model: MaxOfKModel, tokens: torch.Tensor, task: Task = "max") -> torch.Tensor:
    """Cross-entropy of the last-position logits against the task's label (the largest token by default)."""
    return F.cross_entropy(model(tokens), labels(tokens, task))


@torch.no_grad()
def accuracy(subject_or_model: Subject | MaxOfKModel, n: int = 2048, generator: torch.Generator | None = None,
             task: Task = "max") -> float:
    """Fraction of `n` fresh random sequences whose label (the max, by default) the model predicts
    (argmax of its logits)."""
    model = subject_or_model.model if isinstance(subject_or_model, Subject) else subject_or_model
    vocab, k = model.W_U.shape[1], model.W_pos.shape[0]
    tokens = sample_tokens(n, vocab, k, generator)  # (n, k)
    return (model(tokens).argmax(-1) == labels(tokens, task)).float().mean().item()


def _lr_at(step: int, cfg: MaxOfKConfig) -> float:
    """Linear warm-up then cosine decay to zero: reaches high accuracy in few steps reliably."""
    warm = max(1, cfg.steps // 20)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))


@single_thread()
def _fit(cfg: MaxOfKConfig) -> MaxOfKModel:
    gen = torch.Generator().manual_seed(cfg.seed)
    model = MaxOfKModel(cfg.vocab, cfg.d_model, cfg.k)
    model.reset_parameters(gen)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    every, done = max(1, cfg.steps // 20), 0
    with ui.progress("training max-of-k", cfg.steps) as advance:
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            loss = _loss(model, sample_tokens(cfg.batch_size, cfg.vocab, cfg.k, gen), cfg.task)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % every == 0 or step + 1 == cfg.steps:
                advance(step + 1 - done, loss=loss.item())
                done = step + 1
    return model


def _cache_key(cfg: MaxOfKConfig) -> dict:
    key = cfg.model_dump(mode="json")
    if key["task"] == "max":  # the key of every model cached before `task` existed stays valid
        del key["task"]
    return {**key, "cache_version": _CACHE_VERSION}


def train_maxofk(cfg: MaxOfKConfig) -> MaxOfKModel:
    """The trained model for `cfg`, from the cache when it is there; refuses one below 99% accuracy."""
    folder = cache.entry("maxofk", _cache_key(cfg))
    model = MaxOfKModel(cfg.vocab, cfg.d_model, cfg.k)
    tensors = cache.load_tensors(folder)
    if tensors is not None and set(tensors) == set(model.state_dict()):
        model.load_state_dict(tensors)
        return model
    start = time.perf_counter()
    model = _fit(cfg)
    acc = accuracy(model, _EVAL_SAMPLES, torch.Generator().manual_seed(_EVAL_SEED), cfg.task)
    if acc < _MIN_ACCURACY:
        raise UserError(
            f"max-of-k training reached only {acc:.2%} accuracy (< {_MIN_ACCURACY:.0%}) with {cfg.model_dump()}; "
            "train longer (--set steps=...) or try another seed"
        )
    meta = {**_cache_key(cfg), "accuracy": acc, "eval_samples": _EVAL_SAMPLES, "seconds": time.perf_counter() - start}
    cache.save_tensors(folder, model.state_dict(), meta)
    return model


HAND_SET_DIMS = 9  # residual dimensions a hand-set model uses; the rest stay zero


def hand_set_model(vocab: int, k: int, token_score: torch.Tensor, position_score: torch.Tensor | None = None,
                   value_angle: torch.Tensor | None = None, position_push: torch.Tensor | None = None,
                   d_model: int = 32) -> MaxOfKModel:
    """A max-of-k model whose mechanism is set by hand, for checks that need a known answer.

    From every query, the attention score of the key at position p holding token t is
    `token_score[t] + position_score[p]` (after the 1/√d_head scaling); token t's value is the unit
    vector at angle `value_angle[t]` (default θ_t = π t / vocab), position p adds the 2-vector
    `position_push[p]`, and output o reads the direction θ_o. There is no direct path. So with scores
    that rise steeply in t (gaps above ~750, where float64 softmax underflows) attention is exactly
    one-hot on the max, and output m wins when the attended value points at θ_m.

    Residual layout: [cos, sin of the value angle, token score, 1, out cos, out sin, position score,
    push x, push y] then zeros; d_model >= 9.
    """
    if d_model < HAND_SET_DIMS:
        raise UserError(f"a hand-set max-of-k model needs d_model >= {HAND_SET_DIMS}, got {d_model}")
    dt = torch.float32
    theta = torch.pi * torch.arange(vocab, dtype=torch.float64) / vocab  # (vocab,) output directions
    phi = theta if value_angle is None else value_angle.to(torch.float64)
    pos_score = torch.zeros(k) if position_score is None else position_score
    push = torch.zeros(k, 2) if position_push is None else position_push
    model = MaxOfKModel(vocab, d_model, k)
    W_E, W_pos = torch.zeros(vocab, d_model), torch.zeros(k, d_model)
    W_E[:, 0], W_E[:, 1], W_E[:, 2], W_E[:, 3] = phi.cos(), phi.sin(), token_score.to(dt), 1.0
    W_pos[:, 6], W_pos[:, 7], W_pos[:, 8] = pos_score.to(dt), push[:, 0].to(dt), push[:, 1].to(dt)
    W_Q, W_K = torch.zeros(d_model, d_model), torch.zeros(d_model, d_model)
    W_Q[3, 0] = math.sqrt(d_model)  # the query reads the constant: q = √d e_0, so q·k/√d = key[0]
    W_K[2, 0] = W_K[6, 0] = 1.0  # key[0] = token score + position score
    W_V, W_O = torch.zeros(d_model, d_model), torch.zeros(d_model, d_model)
    W_V[0, 1] = W_V[7, 1] = W_V[1, 2] = W_V[8, 2] = 1.0  # value = angle vector + position push
    W_O[1, 4] = W_O[2, 5] = 1.0
    W_U = torch.zeros(d_model, vocab)
    W_U[4], W_U[5] = theta.cos().to(dt), theta.sin().to(dt)
    block = model.blocks[0]
    with torch.no_grad():
        for param, value in [(model.W_E, W_E), (model.W_pos, W_pos), (model.W_U, W_U), (block.W_Q, W_Q),
                             (block.W_K, W_K), (block.W_V, W_V), (block.W_O, W_O)]:
            param.copy_(value)
    return model


def _sites(model: MaxOfKModel) -> dict[str, Site]:
    """Canonical transformer names on top of the raw HookPoint paths."""
    sites = {
        "embed": Site("hook_embed"),
        "resid_pre.0": Site("hook_embed"),
        "attn_pattern.0": Site("blocks.0.hook_pattern"),
        "attn_out.0": Site("blocks.0.hook_attn_out"),
        "resid_post.0": Site("blocks.0.hook_resid_post"),
    }
    return {**sites, **canonical_sites(model)}


@SUBJECTS.register("maxofk", help="1-layer attention-only transformer that outputs the max of k tokens")
class MaxOfK:
    """Factory for the `maxofk` subject."""

    Config = MaxOfKConfig

    @staticmethod
    def build(cfg: MaxOfKConfig) -> Subject:
        model = train_maxofk(cfg)

        def sample(n: int, generator: torch.Generator | None = None, split: str = "train") -> torch.Tensor:
            return sample_tokens(n, cfg.vocab, cfg.k, generator)  # (n, k)

        def loss(tokens: torch.Tensor) -> torch.Tensor:
            return _loss(model, tokens, cfg.task)

        return Subject("maxofk", model, sample, loss, cfg.model_dump(), token_dims=2, sites=_sites(model))
