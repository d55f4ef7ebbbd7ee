"""Finished units of work of one run, kept on disk so that a rerun of the same command continues.

A long study is many units (one SAE fit, one (subject, site, method, seed) score, one trained toy):

    fitted = self.units.decomposer({"site": site, "method": name, "seed": s}, lambda: create(...).fit(rows))
    scores = self.units.json({"site": site, "method": name, "seed": s}, lambda: evaluate(...))

Each unit lands in `<run folder>/units/<hash>/` under a temporary name and is renamed when complete,
so a run killed at any point (even by SIGKILL) leaves only whole units behind. The key of a unit is
the caller's key plus the experiment, its config and the hash of the computing source
(`provenance.code_hash`): after a code or config change the old units are not reused. Files are JSON
and safetensors (a decomposition in its SAELens folder format), never pickles.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from interplab.cache import config_hash
from interplab.provenance import code_hash

T = TypeVar("T")


class Units:
    """The unit store of one run; `Units(None)` stores nothing (every unit is computed)."""

    def __init__(self, folder: Path | None, salt: dict[str, Any] | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.salt = {**(salt or {}), "code": code_hash()}
        self.computed = 0  # units computed by this process (the rest were read back)
        self.reused = 0

    def _path(self, kind: str, key: dict[str, Any]) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{kind}-{config_hash({'key': key, **self.salt})}"

    def _commit(self, path: Path, write: Callable[[Path], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            write(tmp)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def json(self, key: dict[str, Any], compute: Callable[[], T]) -> T:
        """A JSON-able result (numbers, lists, dicts): read back if this unit finished before."""
        path = self._path("json", key)
        if path is not None and (path / "unit.json").is_file():
            try:
                value = json.loads((path / "unit.json").read_text())["value"]
                self.reused += 1
                return value
            except (OSError, ValueError, KeyError):
                pass
        value = compute()
        self.computed += 1
        if path is not None:
            text = json.dumps({"key": key, "value": value}, default=_jsonable)
            self._commit(path, lambda tmp: (tmp / "unit.json").write_text(text))
            return json.loads(text)["value"]  # what a rerun would read: the same types either way
        return value

    def tensors(self, key: dict[str, Any], compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """A dict of tensors (safetensors)."""
        path = self._path("tensors", key)
        if path is not None and (path / "unit.safetensors").is_file():
            try:
                out = load_file(str(path / "unit.safetensors"))
                self.reused += 1
                return out
            except Exception:  # a damaged unit is recomputed, never trusted
                pass
        out = compute()
        self.computed += 1
        if path is not None:
            data = {k: v.detach().contiguous().cpu() for k, v in out.items()}
            self._commit(path, lambda tmp: save_file(data, str(tmp / "unit.safetensors")))
        return out

    def decomposer(self, key: dict[str, Any], fit: Callable[[], Any]) -> Any:
        """A fitted decomposition, saved in its SAELens folder format and loaded back on a rerun."""
        from interplab.decompose import load

        path = self._path("decomposer", key)
        if path is not None and (path / "cfg.json").is_file():
            try:
                out = load(path)
                self.reused += 1
                return out
            except Exception:  # a damaged unit is refitted, never trusted
                pass
        dec = fit()
        self.computed += 1
        if path is not None:
            self._commit(path, lambda tmp: dec.save(tmp))
        return dec


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"a unit's result must be JSON-able, not {type(obj).__name__}")
