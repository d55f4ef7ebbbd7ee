"""The comparative activation cruxes (2a, 2b-width): a sparse code against PCA, and a wide dictionary
against a narrow one, each on the real activations minus the same on their Gaussian twin.

    pairs = refit_tables(train, held, settings, seeds)       # one real/null pair per seed
    ev = gap_evidence([p.tables for p in pairs], settings, shared_eval=True, what="refit pairs")

A *pair* is one real SAE fit and one null SAE fit with the same seed, the null fitted on a fresh
Gaussian twin of the real training rows and scored on a fresh twin of the real held-out rows
(`gaussian_twin`: the sample mean and covariance equal the real ones exactly, so PCA scores the same
on both and only non-Gaussian structure separates them; a plain draw from the estimated moments has
a more spread spectrum than the real rows when rows/d is small, which biased the gap). Per pair:

    2a       = [FVU(PCA_k) - FVU(SAE_wide)]_real    - [FVU(PCA_k) - FVU(SAE_wide)]_null
    2b-width = [FVU(SAE_narrow) - FVU(SAE_wide)]_real - [same]_null          (k active latents each)

The verdict tests the mean of these differences against 0 (`from_refits`: t interval over pairs).
Both sides' uncertainty is in it: the fits' spread (real and null, each refitted per pair) and the
null's sampling (redrawn per pair) show in the pairs' spread; the real held-out rows are shared by
every pair (`shared_eval`), so their sampling variance does not show there and is added: the
variance of the pairs' mean real gap under a bootstrap of held-out blocks (`block` consecutive rows).
The round-1 rule compared the real gap's CI with the null's point estimate; a real gap below the
null gap can never read "supported" here, whatever the real CI alone says.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from interplab import cache, decompose
from interplab.errors import UserError
from interplab.metrics import hypotheses as H
from interplab.metrics.bootstrap import resample
from interplab.provenance import code_hash
from interplab.verdicts import Evidence, from_refits

GAP_CRUXES = ("2a", "2a-sparse", "2b-width")  # 2a and 2a-sparse share their statistic


class GapSettings(NamedTuple):
    """How the SAEs of one gap test are fitted and scored."""

    k: int  # active latents per row, and the PCA rank
    widths: tuple[int, ...]  # latents in multiples of d: (wide,) or (narrow, ..., wide)
    steps: int
    batch_size: int
    block: int  # held-out rows per bootstrap block
    n_boot: int


Tables = dict[str, dict[Any, torch.Tensor]]
"""{"real"|"null": {"pca" | width: fvu_rows (M, 2) on that kind's held-out rows}}"""


def split_eval(n: int, fraction: float, name: str) -> int:
    """Held-out row count: max(1, int(n * fraction)), refused unless training rows remain."""
    n_eval = max(1, int(n * fraction))
    if n_eval >= n:
        raise UserError(f"hypotheses: {name}: eval_fraction={fraction} of {n} rows holds out {n_eval}, "
                        "leaving no training rows; lower eval_fraction or raise the number of rows")
    return n_eval


def fit_sae(rows: torch.Tensor, width: int, s: GapSettings, seed: int,
            cache_key: dict[str, Any] | None = None) -> decompose.Decomposer:
    """An sae-topk fit on rows (N, d). With `cache_key`, cached under it plus a hash of the rows (so
    any change of the training rows gets its own fit) and of the code (`provenance.code_hash`: a fit
    of older code is never reused); SAELens folder. Controls pass None (their evidence is cached)."""
    def make() -> decompose.Decomposer:
        return decompose.create("sae-topk", k=s.k, width=width, steps=s.steps, batch_size=s.batch_size,
                                seed=seed).fit(rows.float())

    if cache_key is None:
        return make()
    digest = hashlib.sha256(rows.float().contiguous().numpy().tobytes()).hexdigest()[:16]
    folder = cache.entry("hypotheses-sae", {**cache_key, "rows": digest, "shape": list(rows.shape), "width": width,
                                            "k": s.k, "steps": s.steps, "batch_size": s.batch_size, "seed": seed,
                                            "code": code_hash()})
    if (folder / "cfg.json").exists():
        try:
            return decompose.load(folder)
        except (UserError, OSError, ValueError):
            pass
    dec = make()
    dec.save(folder)
    return dec


Fit = Callable[[torch.Tensor, int, GapSettings, int, str], decompose.Decomposer]
"""fit(train rows, width in latents, settings, seed, kind) -> a fitted SAE."""


def plain_fit(rows: torch.Tensor, width: int, s: GapSettings, seed: int, kind: str) -> decompose.Decomposer:
    return fit_sae(rows, width, s, seed)


class PairResult(NamedTuple):
    tables: Tables
    real_fits: dict[int, decompose.Decomposer]  # width multiple -> the real SAE (for 1a/1b/basis)


def _scores(tr: torch.Tensor, ev: torch.Tensor, s: GapSettings, seed: int, kind: str, fit: Fit,
            pca: torch.Tensor | None = None) -> tuple[dict[Any, torch.Tensor], dict[int, decompose.Decomposer]]:
    """fvu_rows on `ev` of PCA rank k (given or fitted on `tr`) and of an SAE per width fitted on `tr`."""
    d = tr.shape[1]
    table: dict[Any, torch.Tensor] = {"pca": pca if pca is not None else H.fvu_rows(ev, H.pca_reconstruction(tr, ev, s.k))}
    fits = {}
    for w in s.widths:
        fits[w] = fit(tr, w * d, s, seed, kind)
        table[w] = H.fvu_rows(ev, fits[w].inverse_transform(fits[w].transform(ev.float())))
    return table, fits


def refit_tables(train: torch.Tensor, held: torch.Tensor, s: GapSettings, seeds: list[int], fit: Fit = plain_fit,
                 kinds: tuple[str, ...] = ("real", "null")) -> list[PairResult]:
    """One real/null pair per seed: SAEs at every width of `s` and PCA rank k, each fitted on its kind's
    training rows and scored (`H.fvu_rows`) on its kind's held-out rows. The null rows are fresh
    `gaussian_twin`s of the real training and held-out rows, seeded by the pair's seed."""
    train, held = train.double(), held.double()  # (N, d), (M, d)
    real_pca = H.fvu_rows(held, H.pca_reconstruction(train, held, s.k))  # (M, 2) deterministic: once
    moments = (H.sample_moments(train), H.sample_moments(held)) if "null" in kinds else None
    out = []
    for seed in seeds:
        table, fits = _scores(train, held, s, seed, "real", fit, pca=real_pca)
        tables: Tables = {"real": table}
        if moments is not None:
            gen = torch.Generator().manual_seed(1_000_003 * (seed + 1) + 17)
            null_train = H.gaussian_twin(train, gen, moments[0])  # (N, d)
            null_held = H.gaussian_twin(held, gen, moments[1])  # (M, d)
            tables["null"] = _scores(null_train, null_held, s, seed, "null", fit)[0]
        out.append(PairResult(tables, fits))
    return out


def _gap(table: dict[Any, Any], crux: str, s: GapSettings, fvu: Callable[[Any], Any]) -> Any:
    wide = s.widths[-1]
    if crux in ("2a", "2a-sparse"):
        return fvu(table["pca"]) - fvu(table[wide])
    return fvu(table[s.widths[0]]) - fvu(table[wide])


def _pooled(rows: torch.Tensor) -> float:
    return H.pooled_fvu(rows)


def _ratio(sums: np.ndarray) -> np.ndarray:
    return sums[..., 0] / sums[..., 1]


def sampling_variance(tables: list[Tables], crux: str, s: GapSettings, seed: int) -> float:
    """Variance of the pairs' mean real gap under a bootstrap of held-out blocks shared by all pairs."""
    m = tables[0]["real"]["pca"].shape[0]
    nb = m // s.block
    if nb < 2:
        return float("nan")
    stacked = {}
    for i, t in enumerate(tables):
        for name, rows in t["real"].items():
            stacked[(i, name)] = rows[: nb * s.block].reshape(nb, s.block, 2).sum(1).numpy()  # (nb, 2)

    def mean_gap(sums: Any) -> np.ndarray:
        per = [_gap({name: sums[(i, name)] for name in t["real"]}, crux, s, _ratio) for i, t in enumerate(tables)]
        return np.mean(per, axis=0)

    boots = resample(stacked, mean_gap, s.n_boot, seed)
    return float(np.var(boots, ddof=1)) if boots.size > 1 else float("nan")


def gap_evidence(tables: list[Tables], s: GapSettings, shared_eval: bool, what: str, seed: int = 0,
                 cruxes: tuple[str, ...] = GAP_CRUXES) -> dict[str, Evidence]:
    """Evidence of (real gap - null gap) per crux from one `refit_tables` pair per unit."""
    out = {}
    for crux in cruxes:
        if crux == "2b-width" and len(s.widths) < 2:
            continue
        real = np.array([_gap(t["real"], crux, s, _pooled) for t in tables])
        null = np.array([_gap(t["null"], crux, s, _pooled) for t in tables])
        var = sampling_variance(tables, crux, s, seed) if shared_eval else 0.0
        how = f"t interval over {len(tables)} {what} (real minus null per pair)"
        if shared_eval:
            how += f" + block-bootstrap variance of the shared held-out rows ({s.block}-row blocks)"
        extra = {"real_gap": float(real.mean()), "null_gap": float(null.mean()),
                 "real_gap_per_unit": real.tolist(), "null_gap_per_unit": null.tolist(),
                 "sampling_var": var}
        out[crux] = from_refits(real - null, 0.0, how, sampling_var=0.0 if not np.isfinite(var) else var,
                                extra=extra)
    return out
