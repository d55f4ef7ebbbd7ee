"""ActivationStore: harvest activations to fixed-size safetensors shards, stream them back.

Layout of a store folder:

    manifest.json            settings, per-site shapes, and for each complete shard its rows + sha256
    shard_00000.safetensors  one tensor per site, `shard_tokens` rows each (the last shard may be short)

Shard i always holds rows [i * shard_tokens, (i + 1) * shard_tokens) of one deterministic stream:
input batch b is drawn from a generator seeded by (seed, b). A shard is written under a temporary
name and renamed when complete, and the manifest is rewritten atomically after every shard, so a
harvest killed at any point resumes from the first missing shard and ends with byte-identical files.

Under torchrun (several ranks, `interplab.parallel.World`) each rank harvests a contiguous range of
shards, records them in its own `part-R-of-N.json`, and rank 0 writes the one manifest once every
rank is done: the shards are byte-identical to a single process's, and a rerun resumes every range.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from interplab import cache, ui
from interplab.cache import sha256_file
from interplab.config import Config
from interplab.errors import UserError
from interplab.hooks import activations, capture
from interplab.parallel import World
from interplab.subjects.base import Subject

FORMAT = "interplab-activations/1"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class HarvestConfig(Config):
    """What to harvest; everything except `tokens` must match to resume into an existing folder."""

    subject: str
    """Registered subject name (or hf:<path>)."""
    subject_config: dict[str, Any] = {}
    """Config overrides of the subject."""
    sites: list[str]
    """Sites to record, canonical names or raw module paths."""
    tokens: int
    """Rows to record per site (tokens for language models, samples for toy models)."""
    batch_size: int = 16
    """Model inputs per forward pass (sequences for language models)."""
    shard_tokens: int = 32768
    """Rows per shard; every shard but the last holds exactly this many."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Storage dtype of activations."""
    seed: int = 0
    """Seed of the input stream: batch b is drawn with seed (seed, b)."""
    split: Literal["train", "test"] = "train"
    """Which part of the subject's data to draw from."""
    skip_bos: bool = True
    """Drop position 0 of each sequence when the subject prepends BOS (its activations are outliers)."""
    early_stop: bool = True
    """Stop each forward pass after the last requested site (layers beyond it are never computed)."""


def _identity(cfg: HarvestConfig) -> dict[str, Any]:
    d = cfg.model_dump(mode="json")
    d.pop("tokens")
    d.pop("early_stop")  # same activations either way
    return d


def _shard_rows(cfg: HarvestConfig, i: int) -> int:
    return min(cfg.shard_tokens, cfg.tokens - i * cfg.shard_tokens)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


class _Stream:
    """The deterministic row stream of one harvest: rows from batch b, flattened per site."""

    def __init__(self, subject: Subject, cfg: HarvestConfig):
        self.subject, self.cfg = subject, cfg
        self.drop_first = cfg.skip_bos and subject.token_dims == 2 and bool(subject.config.get("prepend_bos"))
        self._first: dict[str, torch.Tensor] | None = None  # batch 0, kept once computed for its row count

    @torch.no_grad()
    def batch(self, b: int) -> dict[str, torch.Tensor]:
        if b == 0 and self._first is not None:
            return self._first
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + b)
        x = self.subject.sample(self.cfg.batch_size, gen, split=self.cfg.split)
        sites = self.subject.sites
        if self.cfg.early_stop:
            acts = activations(self.subject.model, x, self.cfg.sites, sites=sites)
        else:
            with capture(self.subject.model, self.cfg.sites, sites=sites) as acts:
                self.subject.model(x)
        out = {}
        for name, a in acts.items():
            if self.drop_first:
                a = a[:, 1:]  # (batch, seq - 1, ...)
            out[name] = a.reshape(-1, *a.shape[self.subject.token_dims :]).to(DTYPES[self.cfg.dtype])  # (rows, ...)
        return out

    def rows_per_batch(self) -> int:
        self._first = self.batch(0)
        return next(iter(self._first.values())).shape[0]


def harvest(subject: Subject, cfg: HarvestConfig, out: Path, world: World | None = None) -> Path:
    """Record activations of `subject` at `cfg.sites` into shards under `out`, resuming if possible;
    under torch.distributed (`world`, default: the current group) each rank writes a range of shards."""
    world = world or World.current()
    out.mkdir(parents=True, exist_ok=True)
    if world.size > 1:
        return _harvest_range(subject, cfg, out, world)
    for tmp in out.glob("*.tmp"):
        tmp.unlink()
    manifest = _resume_manifest(cfg, out)
    n_shards = -(-cfg.tokens // cfg.shard_tokens)
    start = len(manifest["shards"])
    if start == n_shards:
        ui.info(f"harvest in {out} is already complete ({cfg.tokens} rows)")
        return out

    def record(i: int, shard: dict[str, torch.Tensor]) -> None:
        _add_record(manifest, _write_shard(out, i, shard), shard)
        _write_json(out / "manifest.json", manifest)

    _produce(_Stream(subject, cfg), cfg, range(start, n_shards), record, f"harvest {cfg.subject}", n_shards)
    manifest["complete"] = True
    _write_json(out / "manifest.json", manifest)
    return out


def _produce(stream: _Stream, cfg: HarvestConfig, shards: range, record: Any, label: str, n_shards: int) -> None:
    """Shards `shards` of the stream, each passed to record(i, {site: rows}) as it completes."""
    if not shards:
        return
    per_batch = stream.rows_per_batch()
    b, skip = divmod(shards.start * cfg.shard_tokens, per_batch)
    pending: dict[str, list[torch.Tensor]] = {}
    have = 0
    with ui.progress(label, n_shards) as advance:
        advance(shards.start)
        for i in shards:
            need = _shard_rows(cfg, i)
            while have < need:
                acts = stream.batch(b)
                b += 1
                for name, a in acts.items():
                    pending.setdefault(name, []).append(a[skip:])
                have += per_batch - skip
                skip = 0
            shard = {}
            for name in cfg.sites:
                cat = torch.cat(pending[name])  # (have, ...)
                shard[name], rest = cat[:need].clone(), cat[need:]
                pending[name] = [rest]
            have -= need
            record(i, shard)
            advance(1)


def _write_shard(out: Path, i: int, shard: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write shard i atomically; its manifest record."""
    path = out / shard_name(i)
    tmp = path.with_name(path.name + ".tmp")
    save_file(shard, str(tmp), metadata={"format": FORMAT})  # one key: safetensors orders keys at random
    os.replace(tmp, path)
    return {"file": path.name, "rows": next(iter(shard.values())).shape[0], "sha256": sha256_file(path)}


def _add_record(manifest: dict[str, Any], rec: dict[str, Any], shard: dict[str, torch.Tensor]) -> None:
    if not manifest["site_shapes"]:
        manifest["site_shapes"] = {k: list(v.shape[1:]) for k, v in shard.items()}
    manifest["shards"].append(rec)


def _harvest_range(subject: Subject, cfg: HarvestConfig, out: Path, world: World) -> Path:
    """This rank's contiguous range of shards, recorded in part-R-of-N.json; rank 0 writes the
    manifest when every rank is done. A shard already on disk with a matching record (in any part
    file or manifest) is kept, so a rerun resumes."""
    if (out / "manifest.json").exists():
        _resume_manifest(cfg, out)  # refuses a folder of another harvest
    n_shards = -(-cfg.tokens // cfg.shard_tokens)
    lo, hi = world.rank * n_shards // world.size, (world.rank + 1) * n_shards // world.size
    known = _known_records(out)
    part = {"format": FORMAT, "config": cfg.model_dump(mode="json"), "site_shapes": {}, "shards": []}
    start = lo
    while start < hi and _valid(out, known.get(shard_name(start)), _shard_rows(cfg, start)):
        part["shards"].append(known[shard_name(start)])
        start += 1
    path = out / f"part-{world.rank:03d}-of-{world.size:03d}.json"

    def record(i: int, shard: dict[str, torch.Tensor]) -> None:
        _add_record(part, _write_shard(out, i, shard), shard)
        _write_json(path, part)

    _produce(_Stream(subject, cfg), cfg, range(start, hi), record, f"harvest {cfg.subject} (rank {world.rank})",
             n_shards)
    _write_json(path, part)
    world.barrier()
    if world.main:
        manifest = {"format": FORMAT, "config": cfg.model_dump(mode="json"), "site_shapes": {}, "shards": [],
                    "complete": True}
        records = _known_records(out)
        manifest["shards"] = [records[shard_name(i)] for i in range(n_shards)]
        manifest["site_shapes"] = {k: list(v.shape[1:]) for k, v in  # from shard 0 itself
                                   load_bytes((out / shard_name(0)).read_bytes()).items()}
        _write_json(out / "manifest.json", manifest)
    world.barrier()
    return out


def _known_records(out: Path) -> dict[str, dict[str, Any]]:
    """Shard records from every part file and the manifest in `out`, by file name."""
    found: dict[str, dict[str, Any]] = {}
    for f in [*sorted(out.glob("part-*.json")), out / "manifest.json"]:
        try:
            for rec in json.loads(f.read_text()).get("shards", []):
                found[rec["file"]] = rec
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def _valid(out: Path, rec: dict[str, Any] | None, rows: int) -> bool:
    f = out / rec["file"] if rec else None
    return bool(rec and f.exists() and rec.get("rows") == rows and sha256_file(f) == rec.get("sha256"))


def _resume_manifest(cfg: HarvestConfig, out: Path) -> dict[str, Any]:
    """The manifest to continue from: valid complete shards kept, anything after the first gap redone."""
    fresh = {"format": FORMAT, "config": cfg.model_dump(mode="json"), "site_shapes": {}, "shards": [], "complete": False}
    path = out / "manifest.json"
    if not path.exists():
        if any(out.glob("shard_*.safetensors")):
            raise UserError(f"{out} holds shards but no manifest.json; choose an empty --out folder")
        return fresh
    try:
        old = json.loads(path.read_text())
        old_cfg = HarvestConfig.model_validate(old["config"])
    except Exception:
        raise UserError(f"{out}/manifest.json is unreadable; delete the folder or choose another --out") from None
    if _identity(old_cfg) != _identity(cfg):
        diff = [k for k, v in _identity(cfg).items() if _identity(old_cfg).get(k) != v]
        raise UserError(f"{out} holds a harvest with different settings ({', '.join(diff)}); use another --out")
    kept = []
    by_name = {s["file"]: s for s in old["shards"]}
    for i in range(-(-cfg.tokens // cfg.shard_tokens)):
        f = out / shard_name(i)
        if not f.exists():
            break
        rec = by_name.get(f.name) or {"file": f.name, "rows": None, "sha256": sha256_file(f)}
        if rec["rows"] is None:  # renamed into place just before a kill: complete by construction
            rec["rows"] = _rows_in(f)
        if rec["rows"] != _shard_rows(cfg, i) or sha256_file(f) != rec["sha256"]:
            break
        kept.append(rec)
    fresh["shards"], fresh["site_shapes"] = kept, old.get("site_shapes", {}) if kept else {}
    return fresh


def _rows_in(path: Path) -> int | None:
    try:
        t = load_bytes(path.read_bytes())
    except (SafetensorError, OSError):
        return None
    return next(iter(t.values())).shape[0]


class ActivationStore:
    """Read a harvested folder: shapes, single shards, and shuffled batches in bounded memory."""

    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.is_file():
            raise UserError(f"{self.path} is not an activation store (no manifest.json); run `interplab harvest` first")
        try:
            self.manifest = json.loads(mf.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{mf} is corrupted; delete the folder and harvest again") from None
        if not self.manifest.get("complete"):
            raise UserError(f"the harvest in {self.path} is incomplete; rerun the same `interplab harvest` command to finish it")
        self.verify = verify
        self.config = HarvestConfig.model_validate(self.manifest["config"])

    @property
    def sites(self) -> list[str]:
        return list(self.config.sites)

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    def shape(self, site: str) -> tuple[int, ...]:
        return tuple(self.manifest["site_shapes"][self._site(site)])

    def __len__(self) -> int:
        return len(self.manifest["shards"])

    def _site(self, site: str) -> str:
        if site not in self.sites:
            raise UserError(f"site '{site}' was not harvested in {self.path}; it holds: {', '.join(self.sites)}")
        return site

    def shard(self, i: int, site: str) -> torch.Tensor:
        """All rows of shard i at `site`, checksum-verified. (rows, *shape)"""
        rec = self.manifest["shards"][i]
        path = self.path / rec["file"]
        try:
            data = path.read_bytes()
        except OSError:
            raise UserError(f"shard {path} is missing; rerun the same `interplab harvest` command to regenerate it") from None
        bad = UserError(f"shard {path} is corrupted (checksum mismatch); delete it and rerun the same "
                        "`interplab harvest` command to regenerate it")
        if self.verify:
            if hashlib.sha256(data).hexdigest() != rec["sha256"]:
                raise bad
        try:
            return load_bytes(data)[self._site(site)]
        except SafetensorError:
            raise bad from None

    def batches(
        self, site: str, batch_size: int, *, shuffle: bool = True, seed: int = 0, buffer_shards: int = 2
    ) -> Iterator[torch.Tensor]:
        """Batches (batch_size, *shape) over one epoch; holds at most `buffer_shards` + 1 shards in memory.

        Shuffling permutes the shard order, then rows within a window of `buffer_shards` shards.
        The final partial batch is yielded too.
        """
        self._site(site)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=gen).tolist() if shuffle else list(range(len(self)))
        carry = torch.empty(0, *self.shape(site))
        for g in range(0, len(order), buffer_shards):
            window = torch.cat([carry, *(self.shard(i, site).float() for i in order[g : g + buffer_shards])])
            if shuffle:
                window = window[torch.randperm(window.shape[0], generator=gen)]
            full = window.shape[0] // batch_size * batch_size
            yield from window[:full].split(batch_size)
            carry = window[full:]
        if carry.shape[0]:
            yield carry

    def all(self, site: str) -> torch.Tensor:
        """Every row at `site` in order, as float32. (rows, *shape) — for stores that fit in memory."""
        return torch.cat([self.shard(i, site).float() for i in range(len(self))])


def harvest_rows(subject: Subject, sites: list[str], tokens: int, seed: int, batch_size: int,
                 cached: bool, split: str = "train") -> dict[str, torch.Tensor]:
    """Activations (tokens, d) per site, in memory, through a harvest (early-stopped forwards, BOS
    dropped). `cached`: the shards stay in the user cache, keyed by the harvest's settings, so a
    rerun reuses them (what LM experiments want); otherwise they go to a temporary folder."""
    hcfg = HarvestConfig(subject=subject.name, subject_config=dict(subject.config), sites=sites, tokens=tokens,
                         batch_size=batch_size, seed=seed, split=split)
    if cached:
        folder = cache.entry("decompose-activations", hcfg.model_dump(mode="json"))
        store = ActivationStore(harvest(subject, hcfg, folder))
        return {s: store.all(s).reshape(tokens, -1) for s in sites}
    with tempfile.TemporaryDirectory(prefix="interplab-harvest-") as tmp:
        store = ActivationStore(harvest(subject, hcfg, Path(tmp)))
        return {s: store.all(s).reshape(tokens, -1) for s in sites}
