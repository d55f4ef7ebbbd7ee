"""Interpretability without an LLM judge: automatic token labels, monosemanticity, sparse probing.

Labels (`token_labels`) need no annotation: they come from the tokenizer's text of each token and
its place in the window (see `RULES` for the exact tests). A label is kept when it has at least
`min_count` positive tokens and covers at most `max_rate` of the tokens: against a label with
base rate q, a latent that fires on every token already gets F1 = 2q / (1 + q) (0.86 for a
"second half of the window" label), which would credit dense codes for nothing.

Monosemanticity of a latent = the best F1, over labels, between "the latent fires" (code != 0)
and "the token has the label". Its distribution over latents is weighted by activation mass
(sum over tokens of |code| x decoder-row norm, i.e. how much of x the latent writes), so a latent
that barely fires barely counts; `interp_score` is the mass-weighted mean. `interp_score_adjusted`
corrects each F1 for chance, (F1 - F1_0) / (1 - F1_0) with F1_0 = 2pq / (p + q) the F1 of a
latent firing at its rate p independently of a label of rate q: 0 for firing unrelated to the
labels however dense, 1 for a perfect match. Signed codes (rank-
sparsified linear methods) are split into their positive and negative parts first, each a latent
of its own, as sign-split PCA does: a direction whose + side means one thing and - side another
is not penalised for it.

Sparse probing, per label and k in {1, 2, 5}: tokens of even-numbered windows train, odd-numbered
windows test (tokens of one window are correlated, so the split is by window); the k latents with
the largest |mean over positives - mean over negatives| on the training tokens are selected, and a
class-balanced logistic regression on their standardised codes is scored on the test tokens
(accuracy and F1 of the positive class), then averaged over labels.
"""

from __future__ import annotations

import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from interplab.metrics.bootstrap import BatchStats, Stats, safe_div

POSITION_BUCKETS = tuple((2**i, 2 ** (i + 1)) for i in range(12))  # [1, 2), [2, 4), [4, 8), ...
PROBE_KS = (1, 2, 5)
HIST_BINS = 10


@dataclass(frozen=True)
class Labels:
    """Boolean token labels: `matrix` (n_tokens, n_labels), one column per name."""

    names: list[str]
    matrix: np.ndarray  # (n, L) bool


@dataclass(frozen=True)
class Token:
    """One token and its context, what a label rule looks at."""

    text: str
    prev: str  # text of the previous token in the window ("" at the start)
    position: int  # position in the window (BOS, when present, is 0)
    quoted: bool  # a quotation opened before this token is still open


def _stripped(t: Token) -> str:
    return t.text.strip()


RULES: dict[str, Callable[[Token], bool]] = {
    "capitalized": lambda t: bool(s := t.text.lstrip()) and s[0].isupper(),
    "digit": lambda t: _stripped(t).isdigit(),
    "punctuation": lambda t: bool(s := _stripped(t)) and all(unicodedata.category(c).startswith("P") for c in s),
    "whitespace_led": lambda t: t.text[:1].isspace() and bool(_stripped(t)),
    "newline": lambda t: "\n" in t.text,
    "after_newline": lambda t: t.prev.endswith("\n"),
    "mid_word": lambda t: t.text[:1].isalpha() and t.prev[-1:].isalpha(),
    "inside_quotes": lambda t: t.quoted,  # within the window: a quote opened before it is not seen
    **{f"position_{lo}-{hi - 1}": (lambda t, lo=lo, hi=hi: lo <= t.position < hi) for lo, hi in POSITION_BUCKETS},
}


def _quote_state(quoted: bool, text: str) -> bool:
    """Quotation state after `text`: '"' toggles, curly quotes open and close."""
    for c in text:
        quoted = (not quoted) if c == '"' else True if c == "\u201c" else False if c == "\u201d" else quoted
    return quoted


def _tokens(ids: torch.Tensor, first: int, text_of: Callable[[int], str]) -> list[Token]:
    """Tokens at positions first.. of every window in `ids` (batch, T), in row-major order."""
    out = []
    for row in ids.tolist():
        texts = [text_of(i) for i in row]
        quoted = False
        for pos, text in enumerate(texts):
            if pos >= first:
                out.append(Token(text, texts[pos - 1] if pos else "", pos, quoted))
            quoted = _quote_state(quoted, text)
    return out


def token_labels(batches: Sequence[torch.Tensor], tokenizer: Any, first: int = 1, n_frequent: int = 20,
                 min_count: int = 10, max_rate: float = 0.25) -> Labels:
    """Labels of the tokens at positions `first`.. of token-id batches (batch, T), in the order
    the activation rows come (batch after batch, window after window, position after position)."""
    cache: dict[int, str] = {}

    def text_of(i: int) -> str:
        if i not in cache:
            cache[i] = tokenizer.decode([i], skip_special_tokens=True)
        return cache[i]

    tokens = [t for ids in batches for t in _tokens(ids, first, text_of)]
    ids_flat = [i for ids in batches for i in ids[:, first:].reshape(-1).tolist()]
    columns: dict[str, np.ndarray] = {name: np.fromiter((rule(t) for t in tokens), bool, len(tokens))
                                      for name, rule in RULES.items()}
    ids_arr = np.asarray(ids_flat)
    for tok_id, _ in Counter(ids_flat).most_common(n_frequent):
        columns[f"token={text_of(tok_id)!r}"] = ids_arr == tok_id
    n = len(tokens)
    kept = {k: v for k, v in columns.items() if min_count <= v.sum() <= min(max_rate * n, n - min_count)}
    matrix = np.stack(list(kept.values()), axis=1) if kept else np.zeros((n, 0), bool)  # (n, L)
    return Labels(list(kept), matrix)


# --- codes as a sparse matrix -----------------------------------------------------------------------
def as_sparse(codes: torch.Tensor | np.ndarray | sp.spmatrix) -> sp.csr_matrix:
    """Codes (n, m) as a float32 CSR matrix (the zeros of sparse codes are not stored)."""
    if sp.issparse(codes):
        return sp.csr_matrix(codes, dtype=np.float32)
    arr = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    return sp.csr_matrix(arr.astype(np.float32, copy=False))


def split_signs(codes: sp.csr_matrix, norms: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """Signed codes become [positive part, negative part] (n, 2m); non-negative codes unchanged."""
    if codes.nnz == 0 or codes.data.min() >= 0:
        return codes, norms
    pos, neg = codes.maximum(0), (-codes).maximum(0)
    return sp.hstack([pos, neg], format="csr"), np.concatenate([norms, norms])


# --- monosemanticity ----------------------------------------------------------------------------------
def _mono(s: Stats, adjusted: bool = False) -> dict[str, np.ndarray]:
    """Best F1 per latent (..., m) and its mass-weighted mean (...,), optionally chance-corrected."""
    fires, count = s["fires"][..., :, None], s["count"][..., None, :]  # (..., m, 1), (..., 1, L)
    f1 = safe_div(2 * s["tp"], fires + count, fill=0.0)  # (..., m, L)
    if adjusted:
        n = s["n"][..., None, None]
        chance = safe_div(2 * fires * count / n, fires + count, fill=0.0)  # (..., m, L) F1 if independent
        f1 = np.clip(safe_div(f1 - chance, 1 - chance, fill=0.0), 0.0, 1.0)
    mono = f1.max(-1) if f1.shape[-1] else np.zeros(f1.shape[:-1])  # (..., m)
    return {"per_latent": mono, "score": safe_div((s["mass"] * mono).sum(-1), s["mass"].sum(-1))}


class Monosemanticity:
    """Per-batch firing/label overlaps of latents; `result` pools and bootstraps over batches."""

    def __init__(self, labels: Labels):
        self.labels = labels
        self.stats = BatchStats()

    def update(self, codes: sp.csr_matrix, rows: slice, norms: np.ndarray) -> None:
        """Codes (n_b, m) of one batch, whose tokens are `labels.matrix[rows]`."""
        fires = (codes != 0).astype(np.float64)  # (n_b, m)
        lab = self.labels.matrix[rows].astype(np.float64)  # (n_b, L)
        self.stats.add(
            n=codes.shape[0], tp=np.asarray(fires.T @ lab), fires=np.asarray(fires.sum(0)).ravel(),  # (m, L), (m,)
            count=lab.sum(0), mass=np.asarray(abs(codes).sum(0)).ravel() * norms,  # (L,), (m,)
        )

    def result(self, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
        """interp_score (mass-weighted mean, with CI), the unweighted mean over live latents, the
        mass-weighted histogram over [0, 1] in HIST_BINS bins and each latent's best label."""
        s = self.stats.sums()
        mono = _mono(s)["per_latent"]  # (m,)
        alive = s["fires"] > 0
        weights = s["mass"] / s["mass"].sum() if s["mass"].sum() > 0 else np.zeros_like(s["mass"])
        hist, _ = np.histogram(mono, bins=HIST_BINS, range=(0.0, 1.0), weights=weights)
        f1 = safe_div(2 * s["tp"], s["fires"][:, None] + s["count"][None, :], fill=0.0)  # (m, L)
        best = f1.argmax(1) if f1.shape[1] else np.zeros(len(mono), int)
        return {
            "interp_score": self.stats.estimate(lambda t: _mono(t)["score"], n_boot, seed, level),
            "interp_score_adjusted": float(_mono(s, adjusted=True)["score"]),
            "mono_mean": float(mono[alive].mean()) if alive.any() else float("nan"),
            "mono_hist": hist.tolist(),
            "per_latent": mono,
            "best_label": [self.labels.names[i] if self.labels.names else "" for i in best],
        }


def monosemanticity(codes: Any, labels: Labels, norms: np.ndarray | None = None) -> np.ndarray:
    """Each latent's best F1 against any label (m,), from codes (n, m) of the labelled tokens."""
    c = as_sparse(codes)
    acc = Monosemanticity(labels)
    acc.update(c, slice(None), np.ones(c.shape[1]) if norms is None else norms)
    return acc.result(n_boot=0)["per_latent"]


# --- sparse probing ----------------------------------------------------------------------------------
def _mean_difference(codes: sp.csr_matrix, y: np.ndarray) -> np.ndarray:
    """|mean code over positives - mean over negatives| per latent (m,)."""
    pos = np.asarray(codes[y].mean(0)).ravel()
    neg = np.asarray(codes[~y].mean(0)).ravel()
    return np.abs(pos - neg)


def _probe(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_tr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on separable toy cases
        clf = LogisticRegression(class_weight="balanced", max_iter=1000).fit(scaler.transform(x_tr), y_tr)
    pred = clf.predict(scaler.transform(x_te))
    return float((pred == y_te).mean()), float(f1_score(y_te, pred, zero_division=0.0))


def sparse_probing(codes: Any, labels: Labels, groups: np.ndarray, ks: Sequence[int] = PROBE_KS) -> dict[str, Any]:
    """Held-out accuracy and F1 of k-latent probes per label, and their means over labels.

    `groups` (n,) gives each token's window index: even windows train, odd windows test.
    """
    c = as_sparse(codes)
    train = np.asarray(groups) % 2 == 0
    c_tr, c_te = c[train], c[~train]
    per_label: dict[str, dict[int, tuple[float, float]]] = {}
    for j, name in enumerate(labels.names):
        y_tr, y_te = labels.matrix[train, j], labels.matrix[~train, j]
        if y_tr.all() or not y_tr.any() or y_te.all() or not y_te.any():
            continue  # a split without both classes cannot train or score a probe
        order = np.argsort(-_mean_difference(c_tr, y_tr), kind="stable")
        per_label[name] = {}
        for k in ks:
            sel = order[: min(k, c.shape[1])]
            per_label[name][k] = _probe(c_tr[:, sel].toarray(), y_tr, c_te[:, sel].toarray(), y_te)
    out: dict[str, Any] = {"per_label": per_label}
    for k in ks:
        scores = [v[k] for v in per_label.values()]
        out[f"probe_acc_k{k}"] = float(np.mean([a for a, _ in scores])) if scores else float("nan")
        out[f"probe_f1_k{k}"] = float(np.mean([f for _, f in scores])) if scores else float("nan")
    return out
