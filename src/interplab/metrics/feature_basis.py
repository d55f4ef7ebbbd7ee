"""What a loss curve reads from a decomposition: each feature's code and the direction it writes.

    basis = as_basis(sae)                 # any interplab decomposition, or the path of a SAELens folder
    basis.codes(rows, inputs)             # (n, m) codes of activation rows (n, d)
    basis.directions                      # (m, d): code i adds codes[:, i] * directions[i]
    basis.recon(rows, inputs)             # (n, d) the decomposition's own full reconstruction

Every interplab decomposition decodes linearly (x_hat = codes W_dec + b_dec; with SAELens's
`rescale_acts_by_decoder_norm` the codes are divided by the row norms first), so one feature's
contribution is its code times a fixed direction. `TrueFeatures` is the oracle of subjects whose
features are planted: codes taken from the model's inputs rather than inferred from activations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from interplab.decompose.base import Decomposer
from interplab.errors import UserError


class Basis:
    """Codes and directions of m features at a site of dimension d."""

    name: str = "basis"
    directions: torch.Tensor  # (m, d)

    @property
    def n_features(self) -> int:
        return int(self.directions.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.directions.shape[1])

    def codes(self, rows: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def recon(self, rows: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DecompositionBasis(Basis):
    """A fitted interplab decomposition (PCA, ICA, every SAE, identity, random, a loaded folder)."""

    def __init__(self, dec: Decomposer, name: str | None = None):
        codec = dec._fitted()
        self.dec, self.codec = dec, codec.eval()
        self.name = name or dec.name
        with torch.no_grad():
            W = codec.W_dec.detach().float()  # (m, d)
            if codec.rescale_acts_by_decoder_norm:
                W = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.directions = W.contiguous()

    @torch.no_grad()
    def codes(self, rows: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        self._check(rows)
        return self.codec.encode(rows.float())  # (n, m)

    @torch.no_grad()
    def recon(self, rows: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        self._check(rows)
        return self.codec(rows.float()).recon  # (n, d)

    def _check(self, rows: torch.Tensor) -> None:
        if rows.shape[-1] != self.codec.d_in:
            raise UserError(f"decomposition '{self.name}' was fitted on d_in={self.codec.d_in} but the site has "
                            f"d={rows.shape[-1]}; pass the site it was fitted on")


class TrueFeatures(Basis):
    """Planted features: `codes_of(inputs)` gives the true codes (n, m) of the rows, in row order,
    and row i of `directions` (m, d) is what feature i writes into the site per unit of code."""

    def __init__(self, directions: torch.Tensor, codes_of: Callable[[torch.Tensor], torch.Tensor], name: str = "truth"):
        self.directions = directions.detach().float().contiguous()  # (m, d)
        self.codes_of, self.name = codes_of, name

    def codes(self, rows: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        c = self.codes_of(inputs).float()  # (n, m)
        if c.shape != (rows.shape[0], self.n_features):
            raise ValueError(f"true codes have shape {tuple(c.shape)}, expected ({rows.shape[0]}, {self.n_features})")
        return c

    def recon(self, rows: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return self.codes(rows, inputs) @ self.directions  # (n, d)


def as_basis(obj: Any, name: str | None = None) -> Basis:
    """A Basis from a Basis, a fitted decomposition, or the path of a saved (SAELens) folder."""
    if isinstance(obj, Basis):
        return obj
    if isinstance(obj, Decomposer):
        return DecompositionBasis(obj, name)
    if isinstance(obj, (str, Path)):
        from interplab.decompose import load

        dec = load(obj)
        return DecompositionBasis(dec, name or Path(obj).name)
    raise UserError(f"a loss curve reads a fitted decomposition (interplab.decompose), a SAELens folder or a "
                    f"Basis, not a {type(obj).__name__}")
