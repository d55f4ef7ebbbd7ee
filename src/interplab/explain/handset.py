"""Hand-set max-of-k models whose mechanism, and so what each explanation should find, is known.

Each family takes a `unit` index (0, 1, 2, ...) that varies it, so a control has several
independent units like the training seeds of the real subject. Scores are in units of the
attention logit (after the 1/√d_head scaling); a gap of 1000 makes float64 softmax exactly one-hot.
"""

from __future__ import annotations

import torch

from interplab.subjects.maxofk import MaxOfKModel, hand_set_model

ONE_HOT = 1000.0  # score gap per token: exp(-1000) underflows, so attention is exactly one-hot


def _angles(vocab: int) -> torch.Tensor:
    return torch.pi * torch.arange(vocab, dtype=torch.float64) / vocab


def one_hot_max(vocab: int, k: int, unit: int = 0, n_wrong: int = 3, d_model: int = 32) -> MaxOfKModel:
    """Attention exactly one-hot on the max; the max is copied, except for `n_wrong` tokens (chosen
    by `unit`) whose value points at the token below. Accuracy: the share of inputs whose max is
    not one of them; the cubic bound, and every subcubic one, equal it."""
    wrong = one_hot_wrong(vocab, unit, n_wrong)
    phi = _angles(vocab)
    for t in wrong:
        phi[t] = phi[t - 1]
    return hand_set_model(vocab, k, ONE_HOT * torch.arange(vocab, dtype=torch.float64), value_angle=phi,
                          d_model=d_model)


def one_hot_wrong(vocab: int, unit: int = 0, n_wrong: int = 3) -> list[int]:
    """The tokens `one_hot_max` copies wrongly for this unit."""
    gen = torch.Generator().manual_seed(1000 + unit)
    return sorted((torch.randperm(vocab - 1, generator=gen)[:n_wrong] + 1).tolist())


def copy_position(vocab: int, k: int, unit: int = 0, d_model: int = 32) -> MaxOfKModel:
    """Attention exactly one-hot on the non-query position `unit % (k - 1)`, whose token is copied:
    right exactly when that position holds a max (about 1/k of inputs and more), but a proof that
    pessimises over orderings certifies only inputs whose non-query positions all hold the max."""
    pos = torch.zeros(k, dtype=torch.float64)
    pos[unit % (k - 1)] = ONE_HOT
    return hand_set_model(vocab, k, torch.zeros(vocab, dtype=torch.float64), position_score=pos, d_model=d_model)


def poison(vocab: int, k: int, unit: int = 0, step: float = 10.0, d_model: int = 32) -> MaxOfKModel:
    """Attention on the max (score step·t), except that one token z (chosen by `unit`) outscores every
    other: an input holding z below its max copies z and is wrong. The cubic proof is tight (a case
    with z fails, every other passes, and correctness is exactly 'no z below the max'); a Gaussian
    over the non-max tokens misjudges the rare, large pull of z."""
    z = [vocab // 4, vocab // 2, (3 * vocab) // 4][unit % 3] + unit // 3
    score = step * torch.arange(vocab, dtype=torch.float64)
    score[z] = step * (vocab + 1)
    return hand_set_model(vocab, k, score, d_model=d_model)


def query_push(vocab: int, k: int, unit: int = 0, strength: float = 1.5, d_model: int = 32) -> MaxOfKModel:
    """Attention exactly one-hot on the max; the query position alone adds a push of `strength` x the
    angle between neighbouring outputs (π/vocab) towards a direction chosen by `unit`. Only inputs whose query is a max copy feel it (weight 1/copies);
    the proofs pessimise the positional value over every position, the query's included, and so
    certify little; an estimate that conditions on the query and the number of copies is exact."""
    psi = torch.pi * (0.2 + 0.3 * unit)
    push = torch.zeros(k, 2, dtype=torch.float64)
    push[-1] = strength * torch.pi / vocab * torch.tensor([torch.cos(torch.tensor(psi)), torch.sin(torch.tensor(psi))])
    return hand_set_model(vocab, k, ONE_HOT * torch.arange(vocab, dtype=torch.float64), position_push=push,
                          d_model=d_model)


FAMILIES = {"one-hot-max": one_hot_max, "copy-position": copy_position, "poison": poison, "query-push": query_push}
