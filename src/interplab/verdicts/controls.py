"""Controls are expensive and depend only on the pipeline, its settings and the code: cache them.

    pos = cached_evidence("hypotheses/1a/tms", {"role": "positive", **settings}, lambda: run(...))

The key holds the settings the control ran with and `provenance.code_hash()`, so an edit anywhere in
the computing code makes every stored control stale (it is recomputed, never shown as current).
Entries are JSON, written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

from interplab import cache
from interplab.provenance import code_hash
from interplab.verdicts.evidence import Evidence


def cached_evidence(name: str, settings: dict[str, Any], compute: Callable[[], Evidence]) -> Evidence:
    """`compute()` once per (name, settings, code); later calls read the stored JSON."""
    key = {"name": name, "settings": settings, "code": code_hash()}
    folder = cache.entry("controls", key)
    path = folder / "evidence.json"
    try:
        return Evidence.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass
    ev = compute()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".evidence.", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "w") as fh:
        json.dump({"key": key, **_jsonable(ev.to_dict())}, fh, indent=1, default=str)
    os.replace(tmp, path)
    return ev


def _jsonable(obj: Any) -> Any:
    """NaN and infinities become None (strict JSON), numpy scalars Python numbers."""
    import math

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
