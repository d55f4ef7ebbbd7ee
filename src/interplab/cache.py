"""The user cache: trained toy models, converted LMs and tokenised corpora, keyed by config hash.

Everything is written as safetensors + JSON under a temporary name and renamed when complete,
so an interrupted write never leaves a half-valid entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import platformdirs
import torch
from safetensors.torch import load_file, save_file


def cache_dir() -> Path:
    """`$INTERPLAB_CACHE`, or the platform's user cache directory (~/.cache/interplab on Linux)."""
    root = os.environ.get("INTERPLAB_CACHE") or platformdirs.user_cache_dir("interplab")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a JSON-able config."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def entry(kind: str, config: dict[str, Any]) -> Path:
    """Folder of the cache entry for `config` (may not exist yet)."""
    return cache_dir() / kind / config_hash(config)


def save_tensors(folder: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Atomically write `tensors.safetensors` + `config.json` into `folder`."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".tmp", dir=folder.parent))
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def load_tensors(folder: Path) -> dict[str, torch.Tensor] | None:
    """The tensors of a complete cache entry, or None if it is missing or unreadable."""
    f = folder / "tensors.safetensors"
    if not (f.is_file() and (folder / "config.json").is_file()):
        return None
    try:
        return load_file(str(f))
    except Exception:  # a damaged entry is rebuilt, never trusted
        return None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
