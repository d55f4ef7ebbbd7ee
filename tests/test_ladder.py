"""The compute ladder: FLOP counts, the fitted L(C), and compute-equivalents of the rungs' own losses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from interplab.errors import UserError
from interplab.metrics import LadderPoint, compute_equivalent, fit_ladder
from interplab.metrics.splice_batch import plain_loss
from interplab.subjects import load_subject
from interplab.subjects.chartf import CharTFConfig
from interplab.subjects.ladder import LadderConfig, Rung, ladder_rungs, rung_subject, training_flops


def test_training_flops_count_6nd_plus_attention() -> None:
    c = CharTFConfig(n_layers=2, d_model=16, n_heads=4, d_mlp=64, context=8, steps=10, batch_size=4)
    per_block = (16 * 48 + 48) + (16 * 16 + 16) + 2 * 2 * 16 + (16 * 64 + 64) + (64 * 16 + 16)
    n = 2 * per_block + 2 * 16 + (16 * 64 + 64)  # blocks, final LayerNorm, unembedding; no embeddings
    d = 10 * 4 * 8
    assert training_flops(c) == (n, d, 6.0 * n * d + 6.0 * 2 * 8 * 16 * d)


def test_presets_rise_in_compute_and_steps_follow_tokens_per_param() -> None:
    for preset, ratio in (("small", 10), ("default", 20)):
        rungs = ladder_rungs(LadderConfig(preset=preset))
        assert len(rungs) >= 6
        flops = [r.flops for r in rungs]
        assert flops == sorted(flops) and flops[-1] / flops[0] > 100  # 1% of the top lies inside the ladder
        for r in rungs:
            assert r.tokens == pytest.approx(ratio * r.params, rel=0.02)
    explicit = ladder_rungs(LadderConfig(rungs=[Rung(d_model=8, n_layers=1, steps=7)] * 4))
    assert {r.cfg.steps for r in explicit} == {7}


def _law(C: np.ndarray) -> np.ndarray:
    return 1.5 * (C / 1e12) ** -0.3 + 0.9


def test_fit_recovers_a_planted_law_and_clamps_outside_the_ladder() -> None:
    C = np.logspace(8, 12, 6)
    ladder = fit_ladder([LadderPoint(f"r{i}", c, float(_law(c)), 1e-3) for i, c in enumerate(C)])
    a, b, c = ladder.theta
    assert (a, b, c) == pytest.approx((1.5, 0.3, 0.9), rel=1e-3)
    eq = compute_equivalent(float(_law(1e10)), ladder)
    assert eq.where == "inside" and eq.log10_fraction == pytest.approx(-2.0, abs=1e-3)
    worse = compute_equivalent(float(_law(1e6)), ladder)  # far below the smallest rung: not extrapolated
    assert worse.where == "below" and worse.log10_fraction == pytest.approx(-4.0)
    better = compute_equivalent(0.5, ladder)  # below the irreducible loss
    assert better.where == "above" and better.fraction == 1.0
    with pytest.raises(UserError, match="at least 4 rungs"):
        fit_ladder([LadderPoint("r", 1.0, 2.0)] * 3)


def test_the_compute_equivalent_of_a_rung_is_its_own_compute() -> None:
    """Rungs scattered about a law by their measurement noise: each rung's own loss maps back to its
    compute within the CI, in at least 95% of rungs over many ladders (the interval's coverage)."""
    rng = np.random.default_rng(0)
    C = np.logspace(9, 12, 6)
    hits = total = 0
    for _ in range(30):
        se = 0.01
        points = [LadderPoint(f"r{i}", c, float(_law(c)) + se * rng.standard_normal(), se) for i, c in enumerate(C)]
        ladder = fit_ladder(points, n_draws=100)
        for p in points:
            eq = compute_equivalent(p.loss, ladder, p.loss_se, n_draws=500)
            hits += eq.ci[0] - 1e-9 <= math.log10(p.compute / ladder.c_model) <= eq.ci[1] + 1e-9
            total += 1
    assert hits / total >= 0.95


@pytest.mark.slow
def test_a_chartf_ladder_trains_and_its_rungs_read_as_their_own_compute(quiet_single_thread: None,
                                                                        tmp_cache: Path) -> None:
    """Real English text (a few repeated sentences would be memorised, not learnt with a power law)."""
    cfg = LadderConfig(rungs=[Rung(d_model=d, n_layers=1) for d in (8, 12, 16, 24, 32, 40)], context=16,
                       tokens_per_param=8, max_chars=200_000)
    subjects = [rung_subject(cfg, i) for i in range(6)]
    assert subjects[-1].config["rung"] == 5 and load_subject("ladder", **cfg.model_dump()).config["rung"] == 5
    batches = [subjects[-1].sample(16, torch.Generator().manual_seed(b), split="test") for b in range(8)]
    points = []
    for r, s in zip(ladder_rungs(cfg), subjects):
        sums = np.array([plain_loss(s, x) for x in batches])
        per = sums[:, 0] / sums[:, 1]
        points.append(LadderPoint(r.name, r.flops, float(sums[:, 0].sum() / sums[:, 1].sum()),
                                  float(per.std(ddof=1) / math.sqrt(len(per)))))
    assert points[-1].loss < points[0].loss
    ladder = fit_ladder(points)
    for p in points:
        eq = compute_equivalent(p.loss, ladder, p.loss_se)
        assert eq.ci[0] - 1e-9 <= math.log10(p.compute / ladder.c_model) <= eq.ci[1] + 1e-9, (p, eq)
