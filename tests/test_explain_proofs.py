"""Certified bounds on max-of-k: exact brute force, sound proofs, tight where the mechanism is known."""

from __future__ import annotations

import itertools

import pytest
import torch

from interplab.explain import Weights, brute_force, cubic, independence, path_logits, paths, sampling, subcubic, \
    subcubic_rank1
from interplab.explain.handset import copy_position, one_hot_max, one_hot_wrong, poison, query_push
from interplab.subjects import maxofk as mk


def _all(p, w):
    return [cubic(p), subcubic(p), subcubic_rank1(w)]


def _exhaustive_correct(p) -> int:
    """Correct inputs by the per-input formula (softmax per input), the reference brute force."""
    toks = torch.tensor(list(itertools.product(range(p.vocab), repeat=p.n_ctx)))
    logits = path_logits(p, toks)
    label = toks.max(1).values
    right = logits.gather(1, label[:, None]).squeeze(1)
    return int((right > logits.scatter(1, label[:, None], -torch.inf).amax(1)).sum())


@pytest.fixture(scope="module")
def trained():
    """Ten training seeds of a small max-of-4 (vocabulary 12), trained briefly, uncached."""
    return [mk._fit(mk.MaxOfKConfig(vocab=12, k=4, steps=150, seed=s)) for s in range(10)]


def test_path_tables_reproduce_the_model(quiet_single_thread):
    model = mk.MaxOfKModel(10, 16, 4)
    model.reset_parameters(torch.Generator().manual_seed(3))
    toks = torch.randint(0, 10, (256, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(path_logits(paths(Weights.of(model)), toks), model(toks).double(), atol=1e-5,
                                   rtol=1e-5)


@pytest.mark.parametrize("vocab,k", [(7, 2), (6, 3), (5, 4), (4, 5)])
def test_brute_force_counts_exactly_what_enumeration_counts(vocab, k, quiet_single_thread):
    for seed in range(3):
        model = mk.MaxOfKModel(vocab, 8, k)
        model.reset_parameters(torch.Generator().manual_seed(seed))
        with torch.no_grad():
            for prm in model.parameters():
                prm.mul_(1 + 2 * seed)  # sharper attention as the seed grows
        p = paths(Weights.of(model))
        bf = brute_force(p)
        assert bf.correct == _exhaustive_correct(p)
        assert int(bf.class_correct.sum()) == bf.correct and bf.total == vocab**k


def test_brute_force_is_unchanged_when_boxes_are_cut_small(monkeypatch, quiet_single_thread):
    from interplab.explain import brute

    model = mk.MaxOfKModel(6, 8, 5)
    model.reset_parameters(torch.Generator().manual_seed(4))
    p = paths(Weights.of(model))
    whole = brute.brute_force(p)
    cut = brute._split
    monkeypatch.setattr(brute, "_split", lambda qs, ranges, limit=7: cut(qs, ranges, limit=7))
    pieces = brute.brute_force(p)
    assert pieces.correct == whole.correct == _exhaustive_correct(p)
    assert torch.equal(pieces.class_correct, whole.class_correct)


def test_brute_force_handles_near_infinite_score_gaps(quiet_single_thread):
    """A poison token 1000 above the max underflows a shared softmax scale: the per-input path takes over."""
    for model in (poison(9, 4, 0, step=1000.0), one_hot_max(9, 4, 1), copy_position(9, 4, 2)):
        p = paths(Weights.of(model))
        assert brute_force(p).correct == _exhaustive_correct(p)


def test_no_bound_exceeds_brute_force_on_seeds_other_tasks_and_perturbed_models(trained, quiet_single_thread):
    others = [mk._fit(mk.MaxOfKConfig(vocab=12, k=4, steps=150, seed=1, task=t)) for t in ("min", "first")]
    models = trained + others
    gen = torch.Generator().manual_seed(0)
    for base in trained[:4]:
        for scale in (0.05, 0.3, 1.0):
            noisy = mk.MaxOfKModel(12, 32, 4)
            noisy.load_state_dict(base.state_dict())
            with torch.no_grad():
                for prm in noisy.parameters():
                    prm.add_(torch.randn(prm.shape, generator=gen) * prm.std() * scale)
            models.append(noisy)
    tight = 0
    for model in models:
        w = Weights.of(model)
        p = paths(w)
        bf = brute_force(p)
        for proof in _all(p, w):
            assert proof.proven <= bf.correct, (proof.name, proof.proven, bf.correct)
            tight += proof.bound > 0.5 * bf.accuracy
    assert tight >= 20  # the bounds are not vacuous on the trained seeds


def test_cubic_equals_brute_force_when_attention_is_one_hot_on_the_max(quiet_single_thread):
    for unit in range(3):
        w = Weights.of(one_hot_max(32, 4, unit))
        p = paths(w)
        wrong = one_hot_wrong(32, unit)
        closed_form = sum((m + 1) ** 4 - m**4 for m in range(32) if m not in wrong)  # inputs whose max is copied
        assert len(wrong) == 3 and brute_force(p).correct == closed_form
        assert [r.proven for r in _all(p, w)] == [closed_form] * 3


def test_control_families_do_what_they_claim(quiet_single_thread):
    V = 16
    p = paths(Weights.of(copy_position(V, 4, 0)))
    bf, cb = brute_force(p), cubic(p)
    assert bf.correct == sum((m + 1) ** 3 for m in range(V))  # position 0 holds a max
    assert cb.bound < 0.01 < bf.accuracy / 10
    p = paths(Weights.of(poison(V, 4, 0)))
    assert cubic(p).proven == brute_force(p).correct  # exact: correct iff no poison below the max
    assert abs(independence(p).accuracy - brute_force(p).accuracy) > 0.3
    p = paths(Weights.of(query_push(V, 4, 0)))
    bf = brute_force(p)
    assert independence(p).accuracy == pytest.approx(bf.accuracy, abs=1e-9)
    assert bf.accuracy - cubic(p).bound > 0.05


def test_estimates_of_a_trained_model(trained, quiet_single_thread):
    p = paths(Weights.of(trained[0]))
    truth = brute_force(p).accuracy
    est = independence(p)
    assert abs(est.accuracy - truth) < 0.02 and est.class_prob.shape == (12, 12, 4)
    mc = sampling(p, est.flops, torch.Generator().manual_seed(0))
    per_sample = 3 * 4 * 12 + 2 * 12 + 6 * 4 + 1
    assert est.flops - per_sample < mc.flops <= est.flops and mc.n_samples > 100
    assert abs(mc.accuracy - truth) < 5 * (truth * (1 - truth) / mc.n_samples) ** 0.5 + 1e-3


def test_costs_and_unexplained_dimensions_follow_the_reference(quiet_single_thread):
    model = mk.MaxOfKModel(64, 32, 4)
    model.reset_parameters(torch.Generator().manual_seed(0))
    w = Weights.of(model)
    p = paths(w)
    cb, sc, r1 = _all(p, w)
    assert cb.unexplained_dim == 3 * 64**2 + 2 * 4 * 64 == 12_800
    assert sc.unexplained_dim < cb.unexplained_dim and r1.unexplained_dim < sc.unexplained_dim
    assert 64**3 * 4 < cb.flops < 64**3 * 4**2 * 20  # Θ(V³ k²)
    assert r1.flops < sc.flops < cb.flops


@pytest.mark.slow
def test_no_bound_exceeds_brute_force_on_the_real_subject(quiet_single_thread):
    """Vocabulary 64, k = 4: the experiment's ten small-scale seeds, two other tasks, perturbed copies."""
    models = [mk.train_maxofk(mk.MaxOfKConfig(steps=800, seed=s)) for s in range(10)]
    models += [mk.train_maxofk(mk.MaxOfKConfig(steps=800, seed=0, task=t)) for t in ("min", "first")]
    gen = torch.Generator().manual_seed(1)
    for base in models[:2]:
        noisy = mk.MaxOfKModel(64, 32, 4)
        noisy.load_state_dict(base.state_dict())
        with torch.no_grad():
            for prm in noisy.parameters():
                prm.add_(torch.randn(prm.shape, generator=gen) * prm.std() * 0.2)
        models.append(noisy)
    for model in models:
        w = Weights.of(model)
        p = paths(w)
        bf = brute_force(p)
        for proof in _all(p, w):
            assert proof.proven <= bf.correct, (proof.name, proof.proven, bf.correct)
