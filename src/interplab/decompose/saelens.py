"""What SAELens defines: its encode/decode semantics (`Codec`) and its folder format.

Every decomposition in interplab, PCA and ICA included, is an affine encoder, an activation and an
affine decoder, so one module with SAELens's semantics serves them all and one file format stores
them all. Folders written by SAELens 6.x load here and encode exactly as SAELens does; folders
written here load in SAELens whenever the architecture is one SAELens knows (the signed `linear`
codes of rank-sparsified PCA/ICA/random/identity are the one interplab extension).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from interplab.errors import UserError

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
EXTRA_FILE = "interplab_state.safetensors"  # learned state SAELens has no slot for (kept apart so SAELens loads)

# SAELens's own architectures that encode per token with the four standard tensors (+ threshold),
# plus interplab's `linear` (identity activation: signed codes). `gated` and the CLT/transcoder
# families have other tensors and are not read.
ARCHITECTURES = ("standard", "topk", "jumprelu", "linear")
# Normalisations SAELens applies at inference. `expected_average_only_in` is folded into the
# weights when SAELens saves, so it is the identity here as it is there; the other two rescale
# each token and make `decode` depend on the last `encode`, which a stateless decoder cannot honour.
NORMALIZATIONS = ("none", "expected_average_only_in")


class ForwardOutput(NamedTuple):
    """What one pass through a decomposition gives; the training terms are 0 at inference."""

    recon: torch.Tensor  # (n, d_in) reconstruction
    codes: torch.Tensor  # (n, d_sae) latent activations after the nonlinearity
    pre: torch.Tensor  # (n, d_sae) pre-activations, before the nonlinearity
    fvu: torch.Tensor  # () batch FVU: sum of squared errors over the batch's total variance
    sparsity: torch.Tensor  # () unweighted sparsity penalty (L1, L0 ...), 0 where k enforces it
    aux_loss: torch.Tensor  # () unweighted auxiliary loss (AuxK against dead latents), else 0


def batch_fvu(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors over the batch's total variance about its mean (NaN below 2 rows)."""
    if x.shape[0] < 2:
        return x.new_tensor(float("nan"))
    total = (x - x.mean(0)).pow(2).sum()  # ()
    return (x - recon).pow(2).sum() / total.clamp_min(torch.finfo(x.dtype).tiny)


class Codec(nn.Module):
    """x -> act((x - b_dec·[apply_b_dec_to_input]) W_enc + b_enc) -> codes W_dec + b_dec.

    `architecture` names the activation used at inference, as SAELens spells it: `standard`
    (ReLU), `topk` (top-k of the pre-activations, then ReLU), `jumprelu` (ReLU gated by a
    per-latent threshold), or interplab's `linear` (no activation). Subclasses that train provide
    `threshold` for `jumprelu`; a plain Codec keeps it as a buffer.
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        architecture: str,
        k: int | None = None,
        apply_b_dec_to_input: bool = True,
        rescale_acts_by_decoder_norm: bool = False,
    ):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}")
        if architecture == "topk" and k is None:
            raise ValueError("the topk architecture needs k")
        self.d_in, self.d_sae, self.architecture = d_in, d_sae, architecture
        self.k = k
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.rescale_acts_by_decoder_norm = rescale_acts_by_decoder_norm
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))  # (d_in, d_sae)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))  # (d_sae,)
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))  # (d_sae, d_in)
        self.b_dec = nn.Parameter(torch.zeros(d_in))  # (d_in,)
        if architecture == "jumprelu" and not hasattr(type(self), "threshold"):
            self.register_buffer("threshold", torch.zeros(d_sae))  # (d_sae,)

    # --- inference semantics ---------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations (n, d_sae); with `rescale_acts_by_decoder_norm` scaled as SAELens does."""
        sae_in = x - self.b_dec if self.apply_b_dec_to_input else x  # (n, d_in)
        pre = sae_in @ self.W_enc + self.b_enc  # (n, d_sae)
        if self.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)  # (n, d_sae)
        return pre

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The inference nonlinearity of `architecture`."""
        if self.architecture == "linear":
            return pre
        if self.architecture == "standard":
            return torch.relu(pre)
        if self.architecture == "topk":
            return topk_relu(pre, self.k)
        return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)  # jumprelu, (n, d_sae)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_acts(x))  # (n, d_sae)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        if self.rescale_acts_by_decoder_norm:
            codes = codes / self.W_dec.norm(dim=-1)  # (n, d_sae)
        return codes @ self.W_dec + self.b_dec  # (n, d_in)

    def forward(self, x: torch.Tensor) -> ForwardOutput:
        pre = self.pre_acts(x)  # (n, d_sae)
        codes = self.activate(pre)  # (n, d_sae)
        recon = self.decode(codes)  # (n, d_in)
        zero = x.new_zeros(())
        return ForwardOutput(recon, codes, pre, batch_fvu(x, recon), zero, zero)

    # --- tensors as SAELens names them -----------------------------------------------------
    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of `sae_weights.safetensors`, float32 and contiguous."""
        out = {n: getattr(self, n) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        if self.architecture == "jumprelu":
            out["threshold"] = self.threshold
        return {n: t.detach().to(torch.float32).contiguous().cpu() for n, t in out.items()}

    @torch.no_grad()
    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        """Copy SAELens-named tensors in, checking every shape against d_in and d_sae."""
        shapes = {
            "W_enc": (self.d_in, self.d_sae),
            "b_enc": (self.d_sae,),
            "W_dec": (self.d_sae, self.d_in),
            "b_dec": (self.d_in,),
        }
        if self.architecture == "jumprelu":
            shapes["threshold"] = (self.d_sae,)
        missing = [n for n in shapes if n not in tensors]
        if missing:
            raise UserError(f"{where}/{WEIGHTS_FILE} lacks the tensors {', '.join(missing)}; "
                            f"a '{self.architecture}' SAE needs {', '.join(shapes)}")
        for name, shape in shapes.items():
            t = tensors[name]
            if tuple(t.shape) != shape:
                raise UserError(f"{where}/{WEIGHTS_FILE}: '{name}' has shape {tuple(t.shape)} but "
                                f"cfg.json (d_in={self.d_in}, d_sae={self.d_sae}) implies {shape}")
            self._set_tensor(name, t.to(torch.float32))

    def _set_tensor(self, name: str, value: torch.Tensor) -> None:
        getattr(self, name).copy_(value)


def topk_relu(pre: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest pre-activations of each row, then ReLU (SAELens's order of the two)."""
    if k is None or k >= pre.shape[-1]:
        return torch.relu(pre)
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))  # (n, d_sae)


# --- the folder format ---------------------------------------------------------------------
@dataclass
class Folder:
    """The parsed contents of a SAELens folder."""

    cfg: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def saelens_cfg(codec: Codec, metadata: dict[str, Any], interplab: dict[str, Any]) -> dict[str, Any]:
    """cfg.json for `codec`: SAELens's keys, plus an `interplab` object for what SAELens lacks."""
    cfg: dict[str, Any] = {
        "d_in": codec.d_in,
        "d_sae": codec.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": bool(codec.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": dict(metadata),
        "architecture": codec.architecture,
    }
    if codec.architecture == "topk":
        cfg["k"] = codec.k
        cfg["rescale_acts_by_decoder_norm"] = bool(codec.rescale_acts_by_decoder_norm)
    cfg["interplab"] = interplab
    return cfg


def write_folder(path: str | Path, folder: Folder) -> Path:
    """Write cfg.json and the safetensors files; each lands under a temporary name, then renamed."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise UserError(f"cannot save into '{root}': it is a file, not a folder; choose another path")
    root.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, Any]] = [(WEIGHTS_FILE, folder.tensors)]
    if folder.extra:
        files.append((EXTRA_FILE, folder.extra))
    for name, tensors in files:
        tmp = root / (name + ".tmp")
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, root / name)
    if not folder.extra and (root / EXTRA_FILE).exists():
        (root / EXTRA_FILE).unlink()  # stale state of an earlier save must not be read back
    tmp = root / (CFG_FILE + ".tmp")
    tmp.write_text(json.dumps(folder.cfg, indent=2))
    os.replace(tmp, root / CFG_FILE)
    return root


def read_folder(path: str | Path) -> Folder:
    """Read and check a SAELens folder; every way it can be wrong ends in one UserError."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"'{root}' is not a folder; pass a SAELens folder holding {CFG_FILE} and {WEIGHTS_FILE}")
    missing = [n for n in (CFG_FILE, WEIGHTS_FILE) if not (root / n).is_file()]
    if missing:
        raise UserError(f"'{root}' is not a SAELens folder: it lacks {' and '.join(missing)} "
                        f"(a SAELens folder holds {CFG_FILE} and {WEIGHTS_FILE})")
    try:
        cfg = json.loads((root / CFG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"'{root / CFG_FILE}' is not valid JSON ({e}); re-save the SAE") from None
    if not isinstance(cfg, dict):
        raise UserError(f"'{root / CFG_FILE}' must hold a JSON object of SAE settings")
    cfg = _check_cfg(_upgrade_cfg(cfg), root)
    tensors = _read_tensors(root / WEIGHTS_FILE)
    extra = _read_tensors(root / EXTRA_FILE) if (root / EXTRA_FILE).is_file() else {}
    return Folder(cfg, tensors, extra)


def _upgrade_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """Older SAELens files: no `architecture` meant standard; TopK was an activation_fn of it."""
    cfg = dict(cfg)
    cfg.setdefault("architecture", "standard")
    act = cfg.get("activation_fn_str") or cfg.get("activation_fn")
    if cfg["architecture"] == "standard" and act == "topk":
        cfg["architecture"] = "topk"
        cfg.setdefault("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    return cfg


def _check_cfg(cfg: dict[str, Any], root: Path) -> dict[str, Any]:
    where = root / CFG_FILE
    missing = [k for k in ("d_in", "d_sae") if k not in cfg]
    if missing:
        raise UserError(f"'{where}' lacks the key(s) {', '.join(missing)}; a SAELens cfg.json names d_in and d_sae")
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise UserError(f"'{where}': {key} must be a positive integer, got {cfg[key]!r}")
    arch = cfg["architecture"]
    if arch not in ARCHITECTURES:
        raise UserError(f"'{where}' names the unknown architecture '{arch}'; "
                        f"interplab reads: {', '.join(ARCHITECTURES)}")
    if arch == "topk" and not (isinstance(cfg.get("k"), int) and cfg["k"] >= 1):
        raise UserError(f"'{where}': a topk SAE needs a positive integer 'k', got {cfg.get('k')!r}")
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm not in NORMALIZATIONS:
        raise UserError(f"'{where}': normalize_activations '{norm}' rescales each token at run time, which "
                        f"interplab does not support; supported: {', '.join(NORMALIZATIONS)}")
    return cfg


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"'{path}' is not a readable safetensors file ({e}); re-save or re-download it") from None


def codec_from_cfg(cfg: dict[str, Any]) -> Codec:
    """A plain Codec shaped and configured as `cfg` says (tensors still to be loaded)."""
    return Codec(
        cfg["d_in"],
        cfg["d_sae"],
        cfg["architecture"],
        k=cfg.get("k"),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
    )
