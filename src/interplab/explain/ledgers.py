"""The surprise ledgers of the max-of-k explanations, priced under the initialisation prior.

The stated prior is the distribution the model's weights are drawn from before training
(`MaxOfKModel.reset_parameters`: every entry N(0, 1/d_model)). The prior probability of one kind of
claim (an input is correct; a cubic case passes; a subcubic check passes at the certificate's j) is
estimated by running the same checks on R models drawn from it, pooled over all claims of that kind
(claims of one kind presumed exchangeable), with the Krichevsky–Trofimov correction (hits + ½) /
(trials + 1), so no claim is ever priced at 0 or infinitely many bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from interplab.explain.cubic import case_passes
from interplab.explain.brute import BruteForce
from interplab.explain.heuristic import Estimate, class_sizes_by_copies
from interplab.explain.paths import Paths, Weights, path_logits, paths
from interplab.explain.proof import Proof
from interplab.explain.subcubic import Tables, claim_passes, exact_tables, rank1_tables
from interplab.explain.surprise import Ledger, Line, bernoulli_bits, kt_rate, quantise, two_part_bits
from interplab.subjects.maxofk import MaxOfKModel, labels, sample_tokens

PRIOR = "weights drawn from the initialisation, N(0, 1/d_model) per entry"


@dataclass
class InitPrior:
    """R models from the initialisation and what the ledgers need of them."""

    cubic_passes: list[torch.Tensor]
    tables: dict[str, list[Tables]]
    input_hits: int
    input_trials: int
    r: int


def init_prior(vocab: int, n_ctx: int, d_model: int, r: int, seed: int, inputs: int = 4096) -> InitPrior:
    """Draw R models from the initialisation; run every strategy's checks on them."""
    cubic_passes, tables, hits = [], {"subcubic": [], "subcubic-rank1": []}, 0
    gen = torch.Generator().manual_seed(seed)
    for _ in range(r):
        model = MaxOfKModel(vocab, d_model, n_ctx)
        model.reset_parameters(gen)
        w = Weights.of(model)
        p = paths(w)
        cubic_passes.append(case_passes(p))
        tables["subcubic"].append(exact_tables(p))
        tables["subcubic-rank1"].append(rank1_tables(w))
        hits += _correct(p, sample_tokens(inputs, vocab, n_ctx, gen))
    return InitPrior(cubic_passes, tables, hits, r * inputs, r)


def _correct(p: Paths, tokens: torch.Tensor) -> int:
    logits = path_logits(p, tokens)  # (batch, vocab)
    label = labels(tokens)
    wrong = logits.scatter(1, label.unsqueeze(1), -math.inf).amax(1)
    return int((logits.gather(1, label.unsqueeze(1)).squeeze(1) > wrong).sum())


def claim_rate(prior: InitPrior, proof: Proof, n_ctx: int) -> tuple[int, int]:
    """(passes, trials) of the proof's certificate claims on the prior's models."""
    hits = 0
    if proof.name == "cubic":
        for passes in prior.cubic_passes:
            hits += int(passes[proof.claims].sum())
    else:
        for t in prior.tables[proof.name]:
            hits += int(claim_passes(t, proof.extra["j_star"], n_ctx).view(-1)[proof.claims].sum())
    return hits, prior.r * proof.n_claims


def none_ledger(bf: BruteForce) -> Ledger:
    return Ledger("no explanation", [], two_part_bits(bf.correct, bf.total),
                  f"{bf.total:,} inputs coded at the accuracy {bf.accuracy:.6f}")


def brute_ledger(bf: BruteForce, prior: InitPrior) -> Ledger:
    rate = kt_rate(prior.input_hits, prior.input_trials)
    how = f"{PRIOR}: {prior.input_hits}/{prior.input_trials} sampled inputs right on {prior.r} models, KT"
    lines = [Line("input is classified correctly", bf.correct, rate, how),
             Line("input is classified wrongly", bf.total - bf.correct, 1 - rate, how)]
    return Ledger("brute force", lines, 0.0, "every input's outcome is a claim: nothing left to code")


def proof_ledger(proof: Proof, bf: BruteForce, prior: InitPrior, n_ctx: int) -> Ledger:
    if proof.proven > bf.correct:
        raise RuntimeError(f"{proof.name} proves {proof.proven} inputs correct but only {bf.correct} are: unsound")
    hits, trials = claim_rate(prior, proof, n_ctx)
    line = Line(proof.check, proof.n_claims, kt_rate(hits, trials),
                f"{PRIOR}: the same checks passed {hits}/{trials} times on {prior.r} models, KT")
    unproven = bf.total - proof.proven
    return Ledger(proof.name, [line], two_part_bits(bf.correct - proof.proven, unproven),
                  f"{unproven:,} unproven inputs coded at their rate")


def estimate_ledger(est: Estimate, bf: BruteForce, n_ctx: int, clip: float = 2.0**-40) -> Ledger:
    """Presumptions cost nothing; each class's inputs are coded with the estimate's probability
    (clipped to [clip, 1 - clip], so one wrong input never costs infinitely many bits)."""
    V, nf = bf.class_correct.shape[0], n_ctx - 1
    ones = torch.tensor([bin(s).count("1") for s in range(1 << nf)])
    k = torch.zeros(V, V, nf + 1, dtype=torch.float64)
    k.index_add_(2, nf - ones, bf.class_correct.to(torch.float64))  # (q, m, c) correct per class
    n = class_sizes_by_copies(V, n_ctx)
    p = est.class_prob.clamp(clip, 1 - clip)
    return Ledger(est.name, [], bernoulli_bits(k, n, p),
                  f"inputs of each (query, max, copies) class coded with the estimate, clipped to [2^-40, 1 - 2^-40]")


def bits_per_param(model: MaxOfKModel, tol: float = 1e-3, samples: int = 16384, seed: int = 0,
                   max_bits: int = 16) -> tuple[int, dict[int, float]]:
    """The fewest bits per parameter (per-tensor symmetric uniform quantisation) at which the
    accuracy on a fixed sample of inputs stays within `tol` of the unquantised model's."""
    V, n = model.W_U.shape[1], model.W_pos.shape[0]
    tokens = sample_tokens(samples, V, n, torch.Generator().manual_seed(seed))
    w = Weights.of(model)
    base = _correct(paths(w), tokens) / samples
    accs: dict[int, float] = {}
    for bits in range(2, max_bits + 1):
        qw = Weights(*(quantise(t, bits) for t in (w.W_E, w.W_pos, w.W_Q, w.W_K, w.W_V, w.W_O, w.W_U)))
        accs[bits] = _correct(paths(qw), tokens) / samples
        if accs[bits] >= base - tol:
            return bits, {**accs, 32: base}
    return 32, {**accs, 32: base}
