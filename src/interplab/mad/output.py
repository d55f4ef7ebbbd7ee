"""Output-only baselines: they see the logits of the scored prediction and nothing inside the model.

`entropy` reads the entropy of the output distribution, `max-logit` the largest logit. Either can be
unusual in both directions (a backdoor often answers with more confidence than usual, noise with
less), so the score is two-sided: -log of twice the smaller tail probability of the statistic under
the trusted rows' empirical distribution (with add-one smoothing, so it is finite).
"""

from __future__ import annotations

import numpy as np
import torch

from interplab.mad.base import Detector, Views, register


class _TwoSided(Detector):
    family = "output"
    source = "logits"

    def statistic(self, logits: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def _fit(self, X: torch.Tensor, trusted: Views) -> None:
        self.sorted_ = np.sort(self.statistic(X))  # (n,)

    def _score(self, X: torch.Tensor) -> np.ndarray:
        t, n = self.sorted_, len(self.sorted_)
        s = self.statistic(X)  # (m,)
        below = (np.searchsorted(t, s, side="right") + 1) / (n + 1)  # P(T <= s)
        above = (n - np.searchsorted(t, s, side="left") + 1) / (n + 1)  # P(T >= s)
        return -np.log(np.minimum(1.0, 2 * np.minimum(below, above)))


@register("entropy", help="output-only: how unusual the entropy of the output distribution is")
class Entropy(_TwoSided):
    def statistic(self, logits: torch.Tensor) -> np.ndarray:
        logp = torch.log_softmax(logits, -1)  # (n, V)
        return -(logp.exp() * logp).sum(-1).numpy()  # (n,)


@register("max-logit", help="output-only: how unusual the largest logit is")
class MaxLogit(_TwoSided):
    def statistic(self, logits: torch.Tensor) -> np.ndarray:
        return logits.numpy().max(-1)  # (n,)
