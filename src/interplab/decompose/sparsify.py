"""Folders written by EleutherAI's sparsify (`SparseCoder.save_to_disk`), read without its package.

A sparsify checkpoint holds one folder per hookpoint, each with `cfg.json` (the fields of its
`SparseCoderConfig`: activation, expansion_factor, normalize_decoder, num_latents, k, multi_topk,
skip_connection, transcode; plus d_in) and `sae.safetensors` (the module's state dict:
`encoder.weight` (M, d_in), `encoder.bias` (M,), `W_dec` (M, d_in), `b_dec` (d_in,), and `W_skip`
(d_in, d_in) with a skip connection). Its inference is

    codes = top_k(relu((x - b_dec) @ encoder.weight.T + encoder.bias)),   x_hat = codes @ W_dec + b_dec

which is SAELens's `topk` architecture with W_enc = encoder.weight.T (SAELens takes the top k and
then applies the ReLU; both keep the same nonzero values, since a ReLU never reorders), so a sparsify
SAE loads as interplab's `sae-topk` holding the same tensors. Not read, each with its own error:
transcoders (they map one site onto another), skip connections, and the `groupmax` activation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from interplab.decompose.base import DECOMPOSITIONS, Decomposer
from interplab.decompose.saelens import Folder, _read_tensors
from interplab.errors import UserError

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


def is_sparsify_folder(path: str | Path) -> bool:
    """Whether `path` holds one sparsify SAE (cfg.json beside sae.safetensors)."""
    root = Path(path)
    return (root / CFG_FILE).is_file() and (root / WEIGHTS_FILE).is_file()


def hookpoints(path: str | Path) -> list[str]:
    """The sub-folders of a multi-hookpoint sparsify checkpoint that each hold one SAE."""
    root = Path(path)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and is_sparsify_folder(p))


def _cfg(root: Path) -> dict[str, Any]:
    where = root / CFG_FILE
    try:
        cfg = json.loads(where.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"'{where}' is not valid JSON ({e}); re-save the SAE") from None
    if not isinstance(cfg, dict):
        raise UserError(f"'{where}' must hold a JSON object of SAE settings")
    if not (isinstance(cfg.get("d_in"), int) and cfg["d_in"] >= 1):
        raise UserError(f"'{where}': a sparsify cfg.json needs a positive integer d_in, got {cfg.get('d_in')!r}")
    if not (isinstance(cfg.get("k"), int) and cfg["k"] >= 1):
        raise UserError(f"'{where}': a sparsify cfg.json needs a positive integer k, got {cfg.get('k')!r}")
    if cfg.get("activation", "topk") != "topk":
        raise UserError(f"'{where}': activation '{cfg['activation']}' is not read by interplab; only 'topk' SAEs are")
    if cfg.get("transcode"):
        raise UserError(f"'{where}' is a transcoder (it predicts one site from another); interplab evaluates "
                        "autoencoders of one site")
    return cfg


def _tensors(root: Path, d_in: int) -> dict[str, torch.Tensor]:
    """The state dict renamed as SAELens names it, float32, every shape checked."""
    where = root / WEIGHTS_FILE
    t = _read_tensors(where)
    need = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
    missing = [n for n in need if n not in t]
    if missing:
        raise UserError(f"'{where}' lacks the tensors {', '.join(missing)}; a sparsify SAE holds {', '.join(need)}")
    m = t["encoder.weight"].shape[0]
    shapes = {"encoder.weight": (m, d_in), "encoder.bias": (m,), "W_dec": (m, d_in), "b_dec": (d_in,)}
    for name, shape in shapes.items():
        if tuple(t[name].shape) != shape:
            raise UserError(f"'{where}': '{name}' has shape {tuple(t[name].shape)} but cfg.json (d_in={d_in}) "
                            f"and encoder.weight imply {shape}")
    if "W_skip" in t and bool(t["W_skip"].ne(0).any()):
        raise UserError(f"'{where}' has a skip connection (W_skip), which interplab does not evaluate")
    f32 = {name: t[name].to(torch.float32) for name in need}
    return {"W_enc": f32["encoder.weight"].T.contiguous(), "b_enc": f32["encoder.bias"],  # (d_in, M), (M,)
            "W_dec": f32["W_dec"], "b_dec": f32["b_dec"]}  # (M, d_in), (d_in,)


def load_sparsify(path: str | Path) -> Decomposer:
    """A sparsify SAE folder as interplab's `sae-topk` (same tensors, same codes)."""
    root = Path(path)
    if not is_sparsify_folder(root):
        subs = hookpoints(root)
        if subs:
            shown = ", ".join(subs[:6]) + (", ..." if len(subs) > 6 else "")
            raise UserError(f"'{root}' holds sparsify SAEs for {len(subs)} hookpoints ({shown}); pass one of "
                            f"those folders, e.g. '{root / subs[0]}'")
        raise UserError(f"'{root}' is not a sparsify SAE folder: it needs {CFG_FILE} and {WEIGHTS_FILE}")
    cfg = _cfg(root)
    tensors = _tensors(root, cfg["d_in"])
    d_sae = tensors["W_dec"].shape[0]
    saelens_cfg = {"d_in": cfg["d_in"], "d_sae": d_sae, "architecture": "topk", "k": cfg["k"],
                   "apply_b_dec_to_input": True, "rescale_acts_by_decoder_norm": False,
                   "normalize_activations": "none", "metadata": {"format": "sparsify"}}
    cls = DECOMPOSITIONS.get("sae-topk")
    dec = cls(**cls.settings_from_saelens(saelens_cfg))
    dec._restore(Folder(saelens_cfg, tensors), str(root))
    return dec
