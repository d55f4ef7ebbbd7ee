"""Surprise accounting: a ledger a reader can check by hand, and the max-of-k ledgers' arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from interplab.explain import Weights, brute_force, cubic, independence, paths
from interplab.explain import ledgers as led
from interplab.explain.handset import one_hot_max
from interplab.explain.surprise import Ledger, Line, bernoulli_bits, kt_rate, quantise, two_part_bits


def and_gate(x1: float, x2: float, w=(1.0, 1.0), b=-1.5) -> int:
    """A 2-input Boolean circuit: step(w1 x1 + w2 x2 + b); with these weights it computes AND."""
    return int(w[0] * x1 + w[1] * x2 + b > 0)


def test_a_boolean_circuit_accounted_by_hand():
    inputs = [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [and_gate(*x) for x in inputs] == [0, 0, 0, 1]  # the behaviour: right on all 4 inputs
    # No explanation: 4 right out of 4, coded at the rate 1 (0 bits) plus ½·log2(5) bits for stating it.
    none = Ledger("none", [], two_part_bits(4, 4))
    assert none.total == pytest.approx(0.5 * math.log2(5))  # 1.161 bits
    # Sign checks, each a fair coin (1 bit): w1 > 0, w2 > 0, b < 0, w1 + b < 0, w2 + b < 0, w1 + w2 + b > 0.
    # Together they fix the output on every input, so the behaviour costs 0 bits: 6 bits in all.
    w, b = (1.0, 1.0), -1.5
    checks = [w[0] > 0, w[1] > 0, b < 0, w[0] + b < 0, w[1] + b < 0, w[0] + w[1] + b > 0]
    assert all(checks)
    signs = Ledger("signs", [Line("sign check", len(checks), 0.5)], bernoulli_bits(4, 4, 1.0))
    assert (signs.explanation_bits, signs.behaviour_bits, signs.total) == (6.0, 0.0, 6.0)
    # An explanation that only says "right half the time" costs 4 x 1 bit of behaviour.
    assert Ledger("coin", [], bernoulli_bits(4, 4, 0.5)).total == 4.0
    # 3 right of 4 at p = 3/4: 3·log2(4/3) + log2(4) = 3.245 bits
    assert bernoulli_bits(3, 4, 0.75) == pytest.approx(3 * math.log2(4 / 3) + 2)


def test_the_published_rnn_ledger_adds_up_to_40_bits():
    """AlgZoo's 2nd-argmax RNN M_{2,2}: 14 sign and |w| > 1 checks, 4 comparisons, two near-equalities
    to 2^-11, and about 0 bits of behaviour (reference: proofs.md)."""
    rnn = Ledger("M_2,2", [Line("sign and |w| > 1 checks", 14, 0.5), Line("coefficient comparisons", 4, 0.5),
                           Line("near-equality to 2^-11", 2, 2.0**-11)])
    assert rnn.explanation_bits == pytest.approx(40.0)
    # The hand-built exact version computes the 2nd argmax (for 2 inputs, the argmin) exactly.
    W_hi, W_hh, W_oh = torch.tensor([1.0, -1.0]), torch.tensor([[-1.0, 1.0], [1.0, -1.0]]), \
        torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    h1 = torch.relu(x[:, :1] * W_hi)  # (n, 2)
    h2 = torch.relu(h1 @ W_hh.T + x[:, 1:] * W_hi)
    assert ((h2 @ W_oh.T).argmax(1) == x.argmin(1)).all()


def test_kt_rate_and_quantisation():
    assert kt_rate(0, 0) == 0.5 and kt_rate(3, 3) == pytest.approx(3.5 / 4)
    t = torch.tensor([-1.0, -0.3, 0.0, 0.4, 1.0])
    assert quantise(t, 2).tolist() == [-1.0, -0.0, 0.0, 0.0, 1.0]  # levels -1, 0, 1
    assert torch.allclose(quantise(t, 16), t, atol=1e-4)


def test_max_of_k_ledgers_are_consistent(quiet_single_thread):
    """On a hand-set one-hot model: the cubic proof is exact, so its unproven inputs are all wrong and
    cost nothing beyond stating their rate; the estimate is exact and costs ~0 bits."""
    model = one_hot_max(16, 3, 0)
    w = Weights.of(model)
    p = paths(w)
    bf = brute_force(p)
    prior = led.init_prior(16, 3, 32, 2, 0, inputs=512)
    none = led.none_ledger(bf)
    assert none.total == pytest.approx(two_part_bits(bf.correct, bf.total))
    brute = led.brute_ledger(bf, prior)
    rate = kt_rate(prior.input_hits, prior.input_trials)
    assert brute.total == pytest.approx(bf.correct * -math.log2(rate) + (bf.total - bf.correct) * -math.log2(1 - rate))
    proof = cubic(p)
    lg = led.proof_ledger(proof, bf, prior, 3)
    assert proof.proven == bf.correct and lg.lines[0].count == proof.n_claims
    assert lg.behaviour_bits == pytest.approx(0.5 * math.log2(bf.total - bf.correct + 1))
    est = led.estimate_ledger(independence(p), bf, 3)
    assert est.total < 1e-6
    assert "bits" in lg.render() and lg.to_dict()["total_bits"] == pytest.approx(lg.total)


def test_bits_per_parameter_of_a_trained_model(quiet_single_thread):
    from interplab.subjects import maxofk as mk

    model = mk._fit(mk.MaxOfKConfig(vocab=10, k=3, steps=150, seed=0))
    bits, accs = led.bits_per_param(model, samples=2048)
    assert 2 <= bits <= 16 and accs[bits] >= accs[32] - 1e-3
    assert all(accs[b] < accs[32] - 1e-3 for b in accs if b < bits)  # the fewest bits that keep it
