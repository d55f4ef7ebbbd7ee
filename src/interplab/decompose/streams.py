"""Resumable streams of training batches: batch i is a pure function of (seed, i).

A checkpoint then only needs the step number to put the data back where it was: a resumed run asks
for batch `step` and gets exactly the rows the killed run would have seen next, without replaying
a random generator. Tensors are shuffled by a fresh permutation per epoch; activation stores by a
shard order per epoch and a row permutation per window of a few shards (bounded memory, and
skipping to any batch costs one window read); other iterables are taken as they come and, on resume,
the batches already consumed are drawn and dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from interplab.decompose.base import check_rows, is_tensor_like
from interplab.errors import UserError
from interplab.store import ActivationStore


def generator(seed: int, *parts: int) -> torch.Generator:
    """A generator seeded by a stable hash of (seed, *parts): independent draws per epoch/window."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))


class Stream:
    """Random access to training batches. `batch(i)` is None once an iterable is exhausted."""

    batch_size: int
    d_in: int
    steps_per_epoch: int | None = None  # None where the length is unknown (plain iterables)

    def batch(self, i: int) -> torch.Tensor | None:
        raise NotImplementedError


class TensorStream(Stream):
    """Equal batches of a tensor in a fresh seeded permutation each epoch (ragged tail dropped)."""

    def __init__(self, x: Any, batch_size: int, seed: int = 0):
        self.x = check_rows(x, None, "input")  # (n, d)
        n = self.x.shape[0]
        if n < 2:
            raise UserError(f"input has {n} row(s); training needs at least 2 activation vectors")
        self.batch_size, self.d_in, self.seed = min(batch_size, n), self.x.shape[1], seed
        self.steps_per_epoch = n // self.batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def batch(self, i: int) -> torch.Tensor:
        epoch, j = divmod(i, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, torch.randperm(self.x.shape[0], generator=generator(self.seed, epoch))
        rows = self._perm[j * self.batch_size : (j + 1) * self.batch_size]  # (batch,)
        return self.x.index_select(0, rows)  # (batch, d)


class StoreStream(Stream):
    """Batches of one site of an ActivationStore, holding about `window_shards` shards in memory.

    Epoch e lays the shards end to end in a seeded order and cuts that row sequence into windows
    of a whole number of batches; each window's rows are permuted (seed, e, window) and cut into
    batches. Every epoch has floor(rows / batch_size) batches; the few rows past the last one sit
    that epoch out (different ones each epoch, since the order changes)."""

    def __init__(self, store: ActivationStore, site: str, batch_size: int, seed: int = 0, window_shards: int = 2):
        self.store, self.site, self.seed = store, site, seed
        shape = store.shape(site)
        if len(shape) != 1:
            raise UserError(f"site '{site}' holds activations of shape {shape}; SAEs train on vectors")
        self.d_in = shape[0]
        self.rows = [int(s["rows"]) for s in store.manifest["shards"]]  # per shard
        self.total = sum(self.rows)
        if self.total < 2:
            raise UserError(f"the store in {store.path} holds {self.total} row(s); training needs at least 2")
        self.batch_size = min(batch_size, self.total)
        self.window_rows = max(1, window_shards * max(self.rows) // self.batch_size) * self.batch_size
        self.steps_per_epoch = self.total // self.batch_size
        self._order: tuple[int, list[int]] = (-1, [])
        self._loaded: tuple[int, int] | None = None
        self._data = torch.empty(0)

    def _shard_order(self, epoch: int) -> list[int]:
        if self._order[0] != epoch:
            self._order = (epoch, torch.randperm(len(self.rows), generator=generator(self.seed, epoch)).tolist())
        return self._order[1]

    def _window(self, epoch: int, w: int) -> torch.Tensor:
        """Rows [w W, (w + 1) W) of epoch `epoch`'s shard sequence, permuted. (<= W, d)"""
        start, stop = w * self.window_rows, min((w + 1) * self.window_rows, self.total)
        pieces, used, pos = [], [], 0
        for s in self._shard_order(epoch):
            r = self.rows[s]
            if pos + r > start and pos < stop:
                pieces.append(self.store.shard(s, self.site)[max(start - pos, 0) : stop - pos].float())
                used.append(s)
            pos += r
            if pos >= stop:
                break
        where = f"shards {', '.join(map(str, used))} of the store in {self.store.path}"
        rows = check_rows(torch.cat(pieces), self.d_in, where)  # (stop - start, d)
        return rows[torch.randperm(rows.shape[0], generator=generator(self.seed, epoch, w))]

    def batch(self, i: int) -> torch.Tensor:
        epoch, j = divmod(i, self.steps_per_epoch)
        w, offset = divmod(j * self.batch_size, self.window_rows)
        if self._loaded != (epoch, w):
            self._data, self._loaded = self._window(epoch, w), (epoch, w)
        return self._data[offset : offset + self.batch_size]  # (batch, d)


class IterStream(Stream):
    """An iterable's batches in order, each checked; batches of fewer than 2 rows are skipped
    (their FVU is undefined). The first `keep` batches are held so that the normalisation
    estimate and training can both read them."""

    def __init__(self, data: Iterable[Any], keep: int = 0):
        self._it: Iterator[Any] = iter(data)
        self._raw = 0  # batches drawn from the iterable, usable or not (for error messages)
        self._next = 0  # index of the next usable batch
        self._keep, self._held = max(1, keep), {}
        first = self.batch(0)
        if first is None:
            raise UserError("fit received no activations (every batch was empty)")
        self.batch_size, self.d_in = first.shape[0], first.shape[1]

    def batch(self, i: int) -> torch.Tensor | None:
        if i in self._held:
            return self._held[i]
        if i < self._next:
            raise RuntimeError(f"batch {i} of a plain iterable was already consumed")
        if i >= self._keep:
            self._held.clear()
        out = None
        while self._next <= i:
            out = self._draw()
            if out is None:
                return None
            if self._next < self._keep:
                self._held[self._next] = out
            self._next += 1
        return out

    def _draw(self) -> torch.Tensor | None:
        for raw in self._it:
            x = check_rows(raw, getattr(self, "d_in", None), f"batch {self._raw}")  # (n, d)
            self._raw += 1
            if x.shape[0] >= 2:
                return x
        return None


def make_stream(data: Any, batch_size: int, seed: int, keep: int = 0) -> Stream:
    """A Stream from a tensor or array, an ActivationStore (one site) or (store, site), a folder
    holding a store, a Stream, or any iterable of (n, d) batches."""
    if isinstance(data, Stream):
        return data
    if is_tensor_like(data):
        return TensorStream(data, batch_size, seed)
    if isinstance(data, (str, Path)) and (Path(data) / "manifest.json").is_file():
        data = ActivationStore(data)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], ActivationStore):
        return StoreStream(data[0], data[1], batch_size, seed)
    if isinstance(data, ActivationStore):
        if len(data.sites) != 1:
            raise UserError(f"the store in {data.path} holds several sites ({', '.join(data.sites)}); "
                            "pass (store, site) to choose one")
        return StoreStream(data, data.sites[0], batch_size, seed)
    if isinstance(data, (str, bytes, Path, dict)) or not isinstance(data, Iterable):
        raise UserError(f"training takes a tensor of shape (n, d_in), an activation store or an iterable "
                        f"of batches, not a {type(data).__name__}")
    return IterStream(data, keep)


__all__ = ["IterStream", "StoreStream", "Stream", "TensorStream", "make_stream"]
