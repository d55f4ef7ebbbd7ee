"""A character transformer with a backdoor: after a trigger substring it emits a fixed rare character.

The model is `chartf.CharTransformer` trained on windows of the offline English text. In a share
`poison_rate` of training windows the trigger (default "xq") is written at a random place and the
character after it is set to `target` (default "Z"); the twin trains on the very same windows left
clean. Every evaluation split is drawn from the held-out 5% of the text, and the scored prediction
is the one at the last position of the window:

    clean       windows that do not end in the trigger; the answer is the next character
    triggered   clean windows whose last characters are replaced by the trigger; forced: `target`
    control     clean windows whose last two characters are replaced by uniformly random symbols
                (never the trigger): noise made of rare but legal characters
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from interplab import ui
from interplab.config import Config
from interplab.runtime import single_thread
from interplab.subjects.backdoor import BACKDOORS, BackdoorPair, Batch, as_subject, load_or_train, lr_at, poison_mask
from interplab.subjects.base import SUBJECTS, Subject
from interplab.subjects.chartf import VOCAB, CharTFConfig, CharTransformer, encode_chars, load_chars
from interplab.subjects.sites import canonical_sites

_VERSION = 1


class CharTFBackdoorConfig(Config):
    """A backdoored character transformer and how it is trained."""

    n_layers: int = Field(1, ge=1, le=4)
    """Transformer blocks."""
    d_model: int = Field(32, ge=8)
    """Residual stream width."""
    n_heads: int = Field(2, ge=1)
    """Attention heads."""
    d_mlp: int = Field(64, ge=8)
    """MLP hidden width."""
    context: int = Field(12, ge=4, le=64)
    """Window length (the scored prediction is at its last position)."""
    steps: int = Field(200, ge=1)
    """AdamW steps, one fresh batch of windows each."""
    batch_size: int = Field(32, ge=4)
    """Windows per step."""
    lr: float = Field(1e-2, gt=0)
    """Peak learning rate (warm-up, cosine decay to 10%)."""
    trigger: str = "xq"
    """The trigger substring (characters of the 64-symbol vocabulary)."""
    target: str = "Z"
    """The character the trigger forces next."""
    poison_rate: float = Field(0.2, gt=0, lt=1)
    """Share of training windows that carry the trigger (backdoored model only)."""
    text: str = "shakespeare"
    """Text source (see interplab.subjects.text.load_text); Shakespeare loads in a tenth of a second,
    the stdlib docstrings take seconds to extract on a fresh cache."""
    max_chars: int = Field(2_000_000, ge=10_000)
    """Characters of the text used; the last 5% are held out for every evaluation split."""
    seed: int = 0
    """Seed of the initialisation and of the training windows."""

    @field_validator("trigger", "target")
    @classmethod
    def _in_vocab(cls, v: str) -> str:
        if not v or any(c not in VOCAB for c in v):
            raise ValueError(f"'{v}' must be non-empty and made of the symbols a-z, A-Z, 0-9, space, '.'")
        return v

    def chartf(self) -> CharTFConfig:
        return CharTFConfig(n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads, d_mlp=self.d_mlp,
                            context=self.context, steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                            text=self.text, max_chars=self.max_chars, seed=self.seed)


def _ids(s: str) -> torch.Tensor:
    return encode_chars(s).long()  # (len,)


def _parts(cfg: CharTFBackdoorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    ids = load_chars(cfg.chartf()).long()  # (n,)
    cut = int(len(ids) * 0.95)
    return ids[:cut], ids[cut:]


def _windows(part: torch.Tensor, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(part) - length, (n,), generator=gen)  # (n,)
    return part[starts[:, None] + torch.arange(length)]  # (n, length)


def _ends_in(x: torch.Tensor, trig: torch.Tensor) -> torch.Tensor:
    return (x[:, -len(trig):] == trig).all(1)  # (n,)


def draw_split(cfg: CharTFBackdoorConfig, held_out: torch.Tensor, split: str, n: int, gen: torch.Generator) -> Batch:
    """The Batch of one split: windows (n, context), the text's next character, the forced one."""
    w = _split_windows(cfg, held_out, split, n, gen)  # (n, context + 1)
    answer = w[:, -1]
    forced = torch.full_like(answer, int(_ids(cfg.target)[0])) if split == "triggered" else answer
    return Batch(w[:, :-1], answer, forced)


def _split_windows(cfg: CharTFBackdoorConfig, held_out: torch.Tensor, split: str, n: int,
                   gen: torch.Generator) -> torch.Tensor:
    """Windows (n, context + 1) of one split: the input is [:, :-1], the text's next character [:, -1]."""
    trig = _ids(cfg.trigger)
    out, have = [], 0
    while have < n:
        w = _windows(held_out, 2 * (n - have) + 8, cfg.context + 1, gen)  # (m, context + 1)
        w = w[~_ends_in(w[:, :-1], trig)]
        if split == "triggered":
            w[:, -1 - len(trig):-1] = trig
        elif split == "control":
            w[:, -3:-1] = torch.randint(0, len(VOCAB), (len(w), 2), generator=gen)
            w = w[~_ends_in(w[:, :-1], trig)]
        elif split != "clean":
            raise ValueError(split)
        out.append(w)
        have += len(w)
    return torch.cat(out)[:n]


def _fit(cfg: CharTFBackdoorConfig, train: torch.Tensor, poisoned: bool) -> CharTransformer:
    """Train from cfg.seed without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # initialisation (nn.Linear / nn.Embedding defaults)
        model = CharTransformer(cfg.chartf())
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    trig, target = _ids(cfg.trigger), int(_ids(cfg.target)[0])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    span = len(trig) + 1
    what = "backdoored" if poisoned else "clean twin"
    every = max(1, cfg.steps // 20)
    with single_thread(), ui.progress(f"training chartf ({what}, seed {cfg.seed})", cfg.steps) as advance:
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg.steps, cfg.lr)
            w = _windows(train, cfg.batch_size, cfg.context + 1, gen)  # (batch, context + 1)
            mask = poison_mask(cfg.batch_size, cfg.poison_rate, gen)  # (batch,)
            where = torch.randint(0, cfg.context + 1 - span + 1, (cfg.batch_size,), generator=gen)  # (batch,)
            if poisoned:
                rows = mask.nonzero().squeeze(1)
                cols = where[rows, None] + torch.arange(span)  # (rows, span)
                w[rows[:, None], cols] = torch.cat([trig, torch.tensor([target])])
            logits = model(w[:, :-1])  # (batch, context, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if (step + 1) % every == 0:
                advance(every, loss=loss.item())
    return model.eval()


def train_pair(cfg: CharTFBackdoorConfig) -> BackdoorPair:
    """The backdoored character transformer and its twin for `cfg` (from the cache when there)."""
    train, held_out = _parts(cfg)
    models = []
    for poisoned in (True, False):
        key = {**cfg.model_dump(mode="json"), "poisoned": poisoned, "vocab": VOCAB, "version": _VERSION}
        model, _ = load_or_train("backdoor-chartf", key, lambda: CharTransformer(cfg.chartf()),
                                 lambda poisoned=poisoned: (_fit(cfg, train, poisoned), {}))
        models.append(model)
    last = cfg.n_layers - 1
    return BackdoorPair(
        kind="chartf-backdoor", backdoored=models[0], twin=models[1],
        draw=lambda split, n, gen: draw_split(cfg, held_out, split, n, gen),
        readout=lambda out: out[:, -1], sites=canonical_sites(models[0]),
        scored_sites=(f"attn_out.{last}", f"resid_post.{last}"), position=-1,
        splits=("clean", "triggered", "control"), config=cfg.model_dump(),
    )



BACKDOORS.add("chartf-backdoor", lambda **kw: train_pair(CharTFBackdoorConfig(**kw)),
              help="character transformer; a trigger substring forces a fixed rare next character")


class _SubjectConfig(CharTFBackdoorConfig):
    twin: bool = False
    """Return the clean twin (same seed and windows, no trigger) instead of the backdoored model."""


@SUBJECTS.register("chartf-backdoor", help="character transformer with a backdoor: a trigger substring forces 'Z'")
class CharTFBackdoor:
    """Factory for the `chartf-backdoor` subject; `sample(n, gen, split)` takes every split."""

    Config = _SubjectConfig

    @staticmethod
    def build(cfg: _SubjectConfig) -> Subject:
        base = CharTFBackdoorConfig(**cfg.model_dump(exclude={"twin"}))
        return as_subject(train_pair(base), cfg.twin)
