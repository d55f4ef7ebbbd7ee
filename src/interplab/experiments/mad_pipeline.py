"""The mad pipeline: each seed's views -> AUROC table -> a crux's evidence; the same for every control.

    table = score_table(case, probes, fits)        # AUROCs, seeds x (detector, site)
    ev = EVIDENCE["mad-works"](table)              # Evidence: t interval over seeds

A case is one subject's list of `SeedData` (one per backdoor training seed that took). Controls are
cases planted from the real one (`planted_positive`, `planted_negative`, `contaminated`) and go
through exactly these two functions. Every "best detector" is chosen leave-one-seed-out (`loso`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from interplab.estimate import Gaussian
from interplab.mad import DETECTORS, OUTPUT_SITE, Detector, Views, auroc, create, fpr_at_recall
from interplab.mad.mahalanobis import moments
from interplab.verdicts import Evidence, from_refits


@dataclass(frozen=True)
class SeedData:
    """One backdoor training seed: trusted views (with the explanation) and the test splits."""

    seed: int
    trusted: Views
    normal: Views
    anomalous: Views
    control: Views
    fresh: Views
    """Another draw of the normal split: the negative control's "anomalies"."""


@dataclass(frozen=True)
class Probe:
    """One detector at one site, with its settings."""

    detector: str
    site: str
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.detector}@{self.site}"

    @property
    def family(self) -> str:
        return "output" if self.site == OUTPUT_SITE else DETECTORS.get(self.detector).family

    def make(self) -> Detector:
        return create(self.detector, site=self.site, **dict(self.settings))


def probes(sites: list[str], detectors: list[str], output_detectors: list[str],
           settings: dict[str, dict[str, Any]]) -> list[Probe]:
    """Every internal detector at every site, then the output-only ones on the logits."""
    def opts(name: str) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted(settings.get(name, {}).items()))

    out = [Probe(d, s, opts(d)) for s in sites for d in detectors]
    return out + [Probe(d, OUTPUT_SITE, opts(d)) for d in output_detectors]


class Fits:
    """Fitted detectors and their scores, shared by every case whose trusted (and test) views are the
    same objects: a planted case that replaces only the anomalies re-scores only the anomalies."""

    def __init__(self) -> None:
        self._fits: dict[tuple[int, str], tuple[Views, Detector]] = {}
        self._scores: dict[tuple[int, str, int], tuple[Views, np.ndarray]] = {}

    def get(self, probe: Probe, trusted: Views) -> Detector:
        key = (id(trusted), probe.key)
        if key not in self._fits:
            self._fits[key] = (trusted, probe.make().fit(trusted))  # holding `trusted` keeps its id unique
        return self._fits[key][1]

    def score(self, probe: Probe, trusted: Views, views: Views) -> np.ndarray:
        key = (id(trusted), probe.key, id(views))
        if key not in self._scores:
            self._scores[key] = (views, self.get(probe, trusted).score(views))
        return self._scores[key][1]


@dataclass
class Table:
    """AUROCs (seeds, probes) of one case: triggered vs clean, triggered vs control, control vs clean."""

    keys: list[str]
    families: list[str]
    seeds: list[int]
    clean: np.ndarray
    control: np.ndarray
    ctrl_clean: np.ndarray
    fpr: np.ndarray
    """FPR at 95% recall, triggered vs clean."""
    scores: dict[tuple[int, str], dict[str, np.ndarray]] = field(default_factory=dict)

    def column(self, key: str) -> int:
        return self.keys.index(key)


def score_table(case: list[SeedData], plan: list[Probe], fits: Fits, keep_scores: bool = False) -> Table:
    """Fit every probe on each seed's trusted views and score that seed's splits."""
    S, K = len(case), len(plan)
    arrays = {k: np.full((S, K), math.nan) for k in ("clean", "control", "ctrl_clean", "fpr")}
    kept: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for i, data in enumerate(case):
        for j, probe in enumerate(plan):
            n, a, c = (fits.score(probe, data.trusted, v) for v in (data.normal, data.anomalous, data.control))
            arrays["clean"][i, j], arrays["control"][i, j] = auroc(n, a), auroc(c, a)
            arrays["ctrl_clean"][i, j], arrays["fpr"][i, j] = auroc(n, c), fpr_at_recall(n, a)
            if keep_scores:
                kept[(data.seed, probe.key)] = {"normal": n, "anomalous": a, "control": c}
    return Table([p.key for p in plan], [p.family for p in plan], [d.seed for d in case], **arrays, scores=kept)


def loso(values: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """(S,) for each seed, the column with the best mean on the *other* seeds (itself when S == 1)."""
    S, K = values.shape
    ok = np.ones(K, bool) if allowed is None else allowed
    picks = np.zeros(S, dtype=int)
    for s in range(S):
        rows = values if S == 1 else np.delete(values, s, axis=0)
        with np.errstate(all="ignore"):
            mean = np.where(ok & np.isfinite(rows).all(0), np.nanmean(rows, 0), -np.inf)
        picks[s] = int(np.argmax(mean))
    return picks


def _chosen(values: np.ndarray, picks: np.ndarray) -> np.ndarray:
    return values[np.arange(len(picks)), picks]


def _how(t: Table, what: str) -> str:
    return f"t over {len(t.seeds)} backdoor training seeds; {what}"


def ev_works(t: Table) -> Evidence:
    picks = loso(t.clean)
    return from_refits(_chosen(t.clean, picks), 0.9, _how(t, "detector chosen on the other seeds"),
                       extra={"chosen": [t.keys[p] for p in picks]})


def ev_explain(t: Table) -> Evidence:
    sites = [k.split("@", 1)[1] for k in t.keys if k.startswith("explain-cov@")]
    pairs = [(t.column(f"explain-cov@{s}"), t.column(f"mahalanobis@{s}")) for s in sites
             if f"mahalanobis@{s}" in t.keys]
    if not pairs:
        return from_refits([], 0.0, "no site has both explain-cov and mahalanobis")
    diff = np.mean([t.clean[:, e] - t.clean[:, m] for e, m in pairs], axis=0)  # (S,)
    return from_refits(diff, 0.0, _how(t, f"paired within seed, mean over {len(pairs)} sites"))


def ev_same_output(t: Table) -> Evidence:
    fam = np.array(t.families)
    inside, outside = loso(t.clean, fam != "output"), loso(t.clean, fam == "output")
    diff = _chosen(t.clean, inside) - _chosen(t.clean, outside)
    return from_refits(diff, 0.0, _how(t, "each best chosen on the other seeds, paired within seed"),
                       extra={"internal": [t.keys[p] for p in inside], "output": [t.keys[p] for p in outside]})


def ev_control(t: Table) -> Evidence:
    both = np.minimum(t.clean, t.control)
    picks = loso(both)
    return from_refits(_chosen(both, picks), 0.9, _how(t, "min of the two AUROCs, detector chosen on the other seeds"),
                       extra={"chosen": [t.keys[p] for p in picks]})


EVIDENCE: dict[str, Callable[[Table], Evidence]] = {
    "mad-works": ev_works, "mad-explain": ev_explain, "mad-same-output": ev_same_output, "mad-control": ev_control,
}


# ------------------------------------------------------------------ planted cases (the controls)

def _direction(data: SeedData, site: str, scale: float) -> torch.Tensor:
    """scale x (the trusted standard deviation along u) x u, u a random unit direction of this seed and site."""
    digest = hashlib.sha256(f"{data.seed}/{site}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:6], "little"))
    X = data.trusted.acts[site]  # (n, d)
    u = torch.randn(X.shape[1], generator=gen, dtype=torch.float64)
    u = u / u.norm()
    sd = float((X @ u).std())
    return scale * max(sd, 1e-12) * u  # (d,)


def _shifted(data: SeedData, views: Views, scale: float) -> Views:
    return views.map_acts(lambda site, a: a + _direction(data, site, scale))


def planted_positive(case: list[SeedData], scale: float) -> list[SeedData]:
    """Anomalies = the normal test inputs with every site's activations shifted far off (logits kept)."""
    return [dataclasses.replace(d, anomalous=_shifted(d, d.normal, scale)) for d in case]


def planted_negative(case: list[SeedData]) -> list[SeedData]:
    """Anomalies = another draw of the normal split: nothing to detect."""
    return [dataclasses.replace(d, anomalous=d.fresh) for d in case]


def _oracle(views: Views) -> dict[str, dict[str, Gaussian]]:
    """The exact moments of each site's activations, as an explanation would state them."""
    out: dict[str, dict[str, Gaussian]] = {"cov": {}, "mean": {}}
    for site, X in views.acts.items():
        m = moments(X)
        out["cov"][site] = Gaussian(m.mean, m.cov)
        out["mean"][site] = Gaussian(m.mean, var=torch.diagonal(m.cov).clone())
    return out


def contaminated(case: list[SeedData], share: float, scale: float) -> list[SeedData]:
    """A trusted set with a share of rows shifted along the anomalies' direction; an exact explanation of
    the uncontaminated rows; anomalies = the normal test inputs shifted the same way."""
    out = []
    for d in case:
        n = d.trusted.n
        gen = torch.Generator().manual_seed(d.seed)
        bad = torch.randperm(n, generator=gen)[: math.ceil(share * n)]
        mask = torch.zeros(n, dtype=torch.bool)
        mask[bad] = True

        def poison(site: str, a: torch.Tensor, d: SeedData = d, mask: torch.Tensor = mask) -> torch.Tensor:
            return a + mask[:, None] * _direction(d, site, scale)

        trusted = dataclasses.replace(d.trusted.map_acts(poison), explained=_oracle(d.trusted))
        out.append(dataclasses.replace(d, trusted=trusted, anomalous=_shifted(d, d.normal, scale)))
    return out
