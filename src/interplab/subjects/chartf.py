"""Small character-level transformers trained by interplab on the offline English text.

Subjects `chartf` (any depth; `n_layers` 1, 2 or 4 are the ones the `lpe` experiment uses). The
vocabulary has 64 symbols: space, a-z, A-Z, 0-9 and one punctuation symbol "." that stands for every
other printable character; runs of whitespace become one space. Models are pre-LayerNorm GPT blocks
(causal softmax attention, GELU MLP, learned positions) small enough that the exact probability of an
output event can be enumerated over millions of inputs on one CPU thread.

Module names follow GPT-2 (`h.0.attn`, `h.0.mlp.c_proj`, ...) so `canonical_sites` gives
`resid_post.L`, `attn_out.L`, `mlp_out.L` and `mlp_hidden.L`; the HookPoint `final` is the input of
the unembedding (after the final LayerNorm), where activation-extrapolation methods read.

    model = train_chartf(CharTFConfig(n_layers=2))
    model.test_loss, model.unigram_loss   # nats per character, held-out text
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from interplab import cache, ui
from interplab.config import Config
from interplab.runtime import single_thread
from interplab.subjects.base import SUBJECTS, Subject
from interplab.subjects.sites import HookPoint

_CACHE_VERSION = 1  # bump when training or the vocabulary changes
PUNCT = "."
VOCAB = " " + "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "0123456789" + PUNCT  # 64 symbols
_INDEX = {c: i for i, c in enumerate(VOCAB)}


def encode_chars(text: str) -> torch.Tensor:
    """Symbol ids (n,) uint8: whitespace runs -> one space, other characters outside VOCAB -> '.'."""
    text = re.sub(r"\s+", " ", text)
    table = np.full(128, _INDEX[PUNCT], dtype=np.uint8)
    for c, i in _INDEX.items():
        table[ord(c)] = i
    codes = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)  # non-ASCII -> '?'
    return torch.from_numpy(table[np.minimum(codes, 127)].copy())  # (n,)


def decode_chars(ids: Any) -> str:
    return "".join(VOCAB[int(i)] for i in ids)


class CharTFConfig(Config):
    """A character transformer and how it is trained."""

    n_layers: int = Field(1, ge=1, le=8)
    """Transformer blocks."""
    d_model: int = Field(64, ge=8)
    """Residual stream width."""
    n_heads: int = Field(4, ge=1)
    """Attention heads (d_model must be divisible by it)."""
    d_mlp: int = Field(256, ge=8)
    """MLP hidden width."""
    context: int = Field(16, ge=2, le=64)
    """Training window length (and the largest position the model has)."""
    steps: int = Field(1000, ge=0)
    """AdamW steps, one fresh batch of windows each."""
    batch_size: int = Field(64, ge=1)
    """Windows per step."""
    lr: float = Field(3e-3, gt=0)
    """Peak learning rate (linear warm-up over 5% of steps, cosine decay to 10%)."""
    text: str = "stdlib"
    """Text source (see interplab.subjects.text.load_text)."""
    max_chars: int = Field(2_000_000, ge=10_000)
    """Characters of the text used (the last 5% are held out for the test loss)."""
    seed: int = 0
    """Seed of the initialisation and of the training windows."""


class Block(nn.Module):
    """Pre-LN block: x + attn(ln_1 x), then + mlp(ln_2 x)."""

    def __init__(self, d: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, n_heads)
        self.mlp = MLP(d, d_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # (batch, L, d)
        return x + self.mlp(self.ln_2(x))  # (batch, L, d)


class Attention(nn.Module):
    """Causal multi-head softmax attention; `c_attn` makes q, k, v, `c_proj` mixes the heads."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.c_attn(x).view(B, L, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, L, d_head)
        return self.c_proj(z.transpose(1, 2).reshape(B, L, d))  # (B, L, d)


class MLP(nn.Module):
    def __init__(self, d: int, d_mlp: int):
        super().__init__()
        self.c_fc = nn.Linear(d, d_mlp)
        self.act = nn.GELU()
        self.c_proj = nn.Linear(d_mlp, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))  # (B, L, d)


class CharTransformer(nn.Module):
    """Token ids (batch, L) -> logits (batch, L, V). `forward_onehot` takes (batch, L, V) one-hots."""

    def __init__(self, cfg: CharTFConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        V = len(VOCAB)
        self.wte = nn.Embedding(V, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context, cfg.d_model)
        self.h = nn.ModuleList(Block(cfg.d_model, cfg.n_heads, cfg.d_mlp) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.final = HookPoint()
        self.unembed = nn.Linear(cfg.d_model, V)
        self.register_buffer("test_loss", torch.tensor(float("nan")))
        self.register_buffer("unigram_loss", torch.tensor(float("nan")))

    @property
    def vocab_size(self) -> int:
        return self.unembed.out_features

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.wte(ids) + self.wpe(pos)  # (batch, L, d)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Residual stream after the embedding -> input of the unembedding (batch, L, d)."""
        for block in self.h:
            x = block(x)  # (batch, L, d)
        return self.final(self.ln_f(x))  # (batch, L, d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.body(self.embed(ids)))  # (batch, L, V)

    def forward_onehot(self, onehot: torch.Tensor) -> torch.Tensor:
        """Logits (batch, L, V) of soft or one-hot inputs (batch, L, V): gradients w.r.t. the one-hots."""
        x = onehot @ self.wte.weight + self.wpe.weight[: onehot.shape[1]]  # (batch, L, d)
        return self.unembed(self.body(x))  # (batch, L, V)


def load_chars(cfg: CharTFConfig) -> torch.Tensor:
    """Encoded characters of the configured text, cached (n,) uint8."""
    from interplab.subjects.text import load_text, source_key

    key = {"source": source_key(cfg.text), "max_chars": cfg.max_chars, "vocab": VOCAB}
    folder = cache.entry("chartf-text", key)
    tensors = cache.load_tensors(folder)
    if tensors is not None:
        return tensors["ids"]
    ids = encode_chars(load_text(cfg.text)[: cfg.max_chars])  # (n,)
    cache.save_tensors(folder, {"ids": ids}, key)
    return ids


def _split(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n_train = int(len(ids) * 0.95)
    return ids[:n_train].long(), ids[n_train:].long()


def _windows(part: torch.Tensor, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(part) - length, (n,), generator=gen)  # (n,)
    return part[starts[:, None] + torch.arange(length)]  # (n, length)


@torch.no_grad()
def char_losses(model: CharTransformer, ids: torch.Tensor, context: int, n: int = 2048) -> tuple[float, float]:
    """(model loss, unigram loss) in nats per character on held-out windows; unigram fitted on train."""
    train, test = _split(ids)
    counts = torch.bincount(train, minlength=len(VOCAB)).double() + 1.0  # (V,) add-one smoothing
    logp = (counts / counts.sum()).log()  # (V,)
    w = _windows(test, n, context + 1, torch.Generator().manual_seed(12345))  # (n, context + 1)
    logits = model(w[:, :-1])  # (n, context, V)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1)).item()
    return loss, float(-logp[w[:, 1:]].mean())


def _lr(step: int, cfg: CharTFConfig) -> float:
    warm = max(1, cfg.steps // 20)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


@single_thread()
def _fit(cfg: CharTFConfig, ids: torch.Tensor) -> CharTransformer:
    """Train from cfg.seed; the caller's global RNG is left as it was (forked, not reseeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # initialisation (nn.Linear / nn.Embedding defaults)
        model = CharTransformer(cfg)
    train, _ = _split(ids)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    every, done = max(1, cfg.steps // 20), 0
    with ui.progress(f"training chartf ({cfg.n_layers} layers)", cfg.steps) as advance:
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = _lr(step, cfg)
            w = _windows(train, cfg.batch_size, cfg.context + 1, gen)  # (batch, context + 1)
            logits = model(w[:, :-1])  # (batch, context, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if (step + 1) % every == 0 or step + 1 == cfg.steps:
                advance(step + 1 - done, loss=loss.item())
                done = step + 1
    model.eval()
    test, unigram = char_losses(model, ids, cfg.context)
    model.test_loss.fill_(test)
    model.unigram_loss.fill_(unigram)
    return model


def train_chartf(cfg: CharTFConfig) -> CharTransformer:
    """The trained model for `cfg`, from the cache when it is there (deterministic from the seed)."""
    key = {**cfg.model_dump(mode="json"), "cache_version": _CACHE_VERSION, "vocab": VOCAB}
    folder = cache.entry("chartf", key)
    model = CharTransformer(cfg)
    tensors = cache.load_tensors(folder)
    if tensors is not None and set(tensors) == set(model.state_dict()):
        model.load_state_dict(tensors)
        return model.eval()
    start = time.perf_counter()
    model = _fit(cfg, load_chars(cfg))
    meta = {**key, "seconds": time.perf_counter() - start, "test_loss": model.test_loss.item(),
            "unigram_loss": model.unigram_loss.item()}
    cache.save_tensors(folder, model.state_dict(), meta)
    return model.eval()


def model_hash(model: nn.Module) -> str:
    """Hash of the weights (for ground-truth caches): identical weights give identical keys."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@SUBJECTS.register("chartf", help="small character-level transformer trained on the offline English text")
class CharTF:
    """Factory for the `chartf` subject (`n_layers` 1, 2, 4 are the LPE models)."""

    Config = CharTFConfig

    @staticmethod
    def build(cfg: CharTFConfig) -> Subject:
        model = train_chartf(cfg)
        ids = load_chars(cfg)
        train, test = _split(ids)

        def sample(n: int, generator: torch.Generator | None = None, split: str = "train") -> torch.Tensor:
            gen = generator or torch.Generator().manual_seed(0)
            return _windows(train if split == "train" else test, n, cfg.context, gen)  # (n, context)

        def loss(x: torch.Tensor) -> torch.Tensor:
            logits = model(x[:, :-1])  # (n, L-1, V)
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))

        return Subject("chartf", model, sample, loss, cfg.model_dump(), token_dims=2)
