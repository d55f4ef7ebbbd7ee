"""The Decomposer contract every method follows, input checks, the registry, `create` and `load`.

scikit-learn conventions: `__init__` only validates and stores settings; `fit` learns everything,
and learned state ends in `_`. The learned state of every method is one `Codec` (an affine
encoder, an activation, an affine decoder with SAELens's semantics), which is why PCA, ICA and
every SAE share `transform`, `inverse_transform`, `forward`, `save` and `load`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from pydantic import Field

from interplab.config import Config, build
from interplab.decompose.saelens import (
    Codec,
    Folder,
    ForwardOutput,
    codec_from_cfg,
    read_folder,
    saelens_cfg,
    write_folder,
)
from interplab.errors import UserError
from interplab.registry import Registry

Data = torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray]


class Settings(Config):
    """Settings every decomposition takes."""

    k: int | None = Field(default=None, ge=1)
    """Budget of active codes per token (None: no budget). Linear methods keep k codes per token;
    TopK SAEs keep k per token; BatchTopK keeps k per token on average over a batch; ReLU and
    JumpReLU SAEs adapt their sparsity coefficient during fit until the mean L0 reaches k."""
    seed: int = 0
    """Seed of every random draw in fit (initialisation, shuffling, random directions)."""


# --- input checks -----------------------------------------------------------------------------
def check_rows(x: Any, d_in: int | None, where: str, keep_float64: bool = False) -> torch.Tensor:
    """`x` as a finite (n, d) float tensor: leading dimensions are flattened into rows.

    float32 unless `keep_float64` and `x` is float64 (moment accumulation wants the precision).
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise UserError(f"{where} is a {type(x).__name__}, not an array of numbers; pass a "
                            "torch tensor or numpy array of shape (n, d_in)") from None
    if x.ndim < 2:
        raise UserError(f"{where} has shape {tuple(x.shape)}; pass a 2-D array of shape (n, d_in)")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
        raise UserError(f"{where} has dtype {x.dtype}; pass real-valued activations")
    x = x.detach().cpu().reshape(-1, x.shape[-1])  # (n, d)
    dtype = torch.float64 if keep_float64 and x.dtype == torch.float64 else torch.float32
    x = x.to(dtype)
    if d_in is not None and x.shape[1] != d_in:
        raise UserError(f"{where} has {x.shape[1]} features per row but the decomposition expects "
                        f"d_in={d_in}; pass activations from the site it was fitted on")
    bad = ~torch.isfinite(x)
    if bad.any():
        row = int(bad.any(1).nonzero()[0])
        raise UserError(f"{where} holds {int(bad.sum())} NaN or infinite value(s) (first in row {row}); "
                        "drop or repair those activations and run again")
    return x


def is_tensor_like(X: Any) -> bool:
    return isinstance(X, (torch.Tensor, np.ndarray))


def iter_batches(X: Data, chunk: int = 65536, keep_float64: bool = False) -> Iterator[torch.Tensor]:
    """Checked batches of `X`: a tensor is cut into chunks; an iterable is taken batch by batch."""
    if is_tensor_like(X):
        x = check_rows(X, None, "input", keep_float64)
        if x.shape[0] == 0:
            raise UserError("input has no rows; fit needs at least one activation vector")
        yield from x.split(chunk)
        return
    if isinstance(X, (str, bytes, Path)) or not isinstance(X, Iterable):
        raise UserError(f"fit takes a tensor of shape (n, d_in) or an iterable of such batches, "
                        f"not a {type(X).__name__}")
    d_in: int | None = None
    for i, batch in enumerate(X):
        x = check_rows(batch, d_in, f"batch {i}", keep_float64)
        d_in = x.shape[1]
        if x.shape[0]:
            yield x


# --- the contract -----------------------------------------------------------------------------
class Decomposer:
    """Base of every method: fit, then encode (`transform`) and decode (`inverse_transform`)."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type[Settings]] = Settings
    hard_k: ClassVar[bool] = True
    """True where `k` caps the nonzero codes of every token; False where it is a mean target."""

    codec_: Codec

    def __init__(self, **settings: Any):
        self.settings = build(self.Settings, settings, where=f" of decomposition '{self.name}'")

    def get_params(self) -> dict[str, Any]:
        return self.settings.model_dump()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def fit(self, X: Data) -> Self:
        """Learn the decomposition from (n, d) activations or an iterable of such batches."""
        raise NotImplementedError

    # --- learned state ------------------------------------------------------------------------
    def _fitted(self) -> Codec:
        codec = getattr(self, "codec_", None)
        if codec is None:
            raise UserError(f"this '{self.name}' decomposition is not fitted; call fit(X) first "
                            "or read a saved one with interplab.decompose.load(folder)")
        return codec

    @property
    def components_(self) -> torch.Tensor:
        """The dictionary: one direction per code, (n_components, d_in); rows of W_dec."""
        return self._fitted().W_dec.detach().clone()  # (m, d)

    @property
    def n_components_(self) -> int:
        return self._fitted().d_sae

    @property
    def d_in_(self) -> int:
        return self._fitted().d_in

    # --- encode / decode ----------------------------------------------------------------------
    def transform(self, X: Any) -> torch.Tensor:
        """Codes (n, n_components) of activations X (n, d_in)."""
        codec = self._fitted()
        x = check_rows(X, codec.d_in, "input")  # (n, d)
        with torch.no_grad():
            return codec.eval().encode(x)  # (n, m)

    def inverse_transform(self, codes: Any) -> torch.Tensor:
        """Reconstructions (n, d_in) from codes (n, n_components)."""
        codec = self._fitted()
        f = check_rows(codes, None, "codes")  # (n, m)
        if f.shape[1] != codec.d_sae:
            raise UserError(f"codes have {f.shape[1]} columns but this decomposition has "
                            f"{codec.d_sae} components; pass the output of transform")
        with torch.no_grad():
            return codec.eval().decode(f)  # (n, d)

    def forward(self, X: Any) -> ForwardOutput:
        """Encode and decode in one pass; `recon` equals inverse_transform(transform(X))."""
        codec = self._fitted()
        x = check_rows(X, codec.d_in, "input")  # (n, d)
        with torch.no_grad():
            return codec.eval()(x)

    # --- files --------------------------------------------------------------------------------
    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write a SAELens folder (cfg.json + sae_weights.safetensors); `metadata` goes in cfg.json
        (SAELens's model_name, hook_name, ... where known)."""
        from interplab import __version__

        codec = self._fitted()
        info = {"method": self.name, "settings": self.settings.model_dump(mode="json"), "version": __version__}
        cfg = saelens_cfg(codec, {**(metadata or {}), "interplab_version": __version__}, info)
        return write_folder(path, Folder(cfg, codec.saelens_tensors(), self._extra_state()))

    def _extra_state(self) -> dict[str, torch.Tensor]:
        """Learned tensors SAELens has no slot for (explained variance ...), saved beside."""
        return {}

    def _restore(self, folder: Folder, where: str) -> None:
        """Rebuild the learned state from a read folder."""
        codec = self._new_codec(folder.cfg)
        codec.load_saelens_tensors(folder.tensors, where)
        self.codec_ = codec.eval()
        for name, value in folder.extra.items():
            if name.endswith("_"):
                setattr(self, name, value)

    def _new_codec(self, cfg: dict[str, Any]) -> Codec:
        """An empty codec shaped as `cfg` says; SAEs return their trainable module."""
        return codec_from_cfg(cfg)

    @classmethod
    def settings_from_saelens(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        """Settings for a folder written by SAELens itself (no `interplab` object in cfg.json)."""
        return {}


DECOMPOSITIONS: Registry[type[Decomposer]] = Registry("decomposition")
# Which method reads a folder SAELens wrote, by its architecture.
FROM_SAELENS = {"standard": "sae-relu", "topk": "sae-topk", "jumprelu": "sae-jumprelu"}


def register(name: str, help: str = "") -> Callable[[type[Decomposer]], type[Decomposer]]:
    """Class decorator: register a Decomposer under `name` and tell the class its name."""

    def add(cls: type[Decomposer]) -> type[Decomposer]:
        cls.name = name
        DECOMPOSITIONS.add(name, cls, help)
        return cls

    return add


def create(name: str, **settings: Any) -> Decomposer:
    """A new, unfitted decomposition: `create("sae-topk", k=32, width=4608)`."""
    return DECOMPOSITIONS.get(name)(**settings)


def load(path: str | Path) -> Decomposer:
    """A fitted decomposition from a SAELens folder, written by interplab or by SAELens."""
    folder = read_folder(path)
    info = folder.cfg.get("interplab")
    if isinstance(info, dict) and "method" in info:
        cls = DECOMPOSITIONS.get(str(info["method"]))
        settings = info.get("settings") or {}
    else:
        arch = folder.cfg["architecture"]
        if arch not in FROM_SAELENS:
            raise UserError(f"'{path}': architecture '{arch}' is interplab's own, but cfg.json lacks the "
                            "'interplab' object that says which method wrote it; re-save the decomposition")
        cls = DECOMPOSITIONS.get(FROM_SAELENS[arch])
        settings = cls.settings_from_saelens(folder.cfg)
    obj = cls(**settings)
    obj._restore(folder, str(path))
    return obj
