"""The yardstick: closed forms, hand cases, exact splices on a tiny LM, and evaluate() end to end."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from interplab import decompose
from interplab.errors import UserError
from interplab.metrics import (
    DescriptionLength,
    Labels,
    Reconstruction,
    dead_fraction,
    dense_fraction,
    description_length,
    dictionary_bits,
    evaluate,
    evaluate_many,
    fvu,
    fvu_per_token_ratio,
    fvu_squared_moment_bug,
    ground_truth_scores,
    headline_keys,
    l0,
    loss_recovered,
    mmcs,
    monosemanticity,
    random_floor,
    sparse_probing,
    token_labels,
)
from interplab.metrics.bootstrap import BatchStats
from interplab.metrics.description_length import binary_entropy
from interplab.metrics.interpretability import Monosemanticity, as_sparse
from interplab.subjects import load_subject
from interplab.subjects.synthetic import sample_activations

LM_KEYS = ["fvu", "l0", "dead_frac", "dense_frac", "ce_score_zero", "ce_score_mean", "delta_ce_nats",
           "kl_score", "bits_per_token", "interp_score"]
PLANTED_KEYS = ["fvu", "l0", "dead_frac", "bits_per_token", "mmcs", "mcc", "f1"]


@pytest.fixture(scope="module")
def tiny():
    return load_subject("tiny-llama", seq_len=24)


@pytest.fixture(scope="module")
def tiny_acts(tiny):
    from interplab.hooks import activations

    ids = tiny.sample(32, torch.Generator().manual_seed(0))  # (32, 24)
    return activations(tiny.model, ids, ["resid_post.0"], sites=tiny.sites)["resid_post.0"][:, 1:].reshape(-1, 64)


@pytest.fixture(scope="module")
def planted():
    return load_subject("synthetic", n_features=32, d=16, mean_active=2.0)


# ---------------------------------------------------------------- reconstruction
# Three tokens at the origin and one at (4, 4): mean (1, 1), variance about it 2+2+2+18 = 24.
# Reconstruct the three exactly and the outlier as the mean: SSE = 18, FVU = 18 / 24 = 0.75.
X = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [4.0, 4.0]])
RECON = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])


def test_fvu_matches_the_closed_form_and_the_published_mistakes_differ():
    assert fvu(X, RECON) == pytest.approx(0.75, abs=1e-12)
    assert fvu_per_token_ratio(X, RECON) == pytest.approx(0.25, abs=1e-12)  # mean of 0, 0, 0, 18/18
    # E||x||^2 = 8, E[x_d^2] = 4 in each dim: 8 - (16 + 16) = -24, and E||err||^2 = 4.5
    assert fvu_squared_moment_bug(X, RECON) == pytest.approx(4.5 / -24, abs=1e-12)
    acc = Reconstruction()
    for rows in ([0, 1], [2, 3]):  # streamed in two batches: pooled, not averaged per batch
        acc.update(X[rows], RECON[rows], torch.ones(2, 3))
    assert acc.result(n_boot=0)["fvu"].value == pytest.approx(0.75, abs=1e-12)
    assert acc.per_batch()["fvu"][0] != acc.per_batch()["fvu"][0]  # batch 1 has no variance: NaN


def test_fvu_keeps_float64_precision_under_a_large_mean():
    g = torch.Generator().manual_seed(0)
    x = (1e4 + torch.randn(4096, 8, generator=g)).float()  # (n, 8) float32, mean >> std
    acc = Reconstruction()
    for part in x.split(1024):
        acc.update(part, x.double().mean(0).expand_as(part), torch.ones(part.shape[0], 1))
    assert acc.result(n_boot=0)["fvu"].value == pytest.approx(1.0, abs=1e-9)


def test_l0_dead_and_dense_on_a_hand_case():
    codes = torch.zeros(20, 4)
    codes[:, 0] = 1.0  # fires on every token: dense
    codes[:2, 1] = -2.0  # 2/20 = 10%: not more than 10%, not dense; signed codes count
    codes[5:8, 2] = 0.5  # 3/20 = 15%: dense
    # latent 3 never fires: dead
    assert l0(codes) == pytest.approx(25 / 20)
    assert dead_fraction(codes) == 0.25 and dense_fraction(codes) == 0.5
    acc = Reconstruction()
    for part in codes.split(7):
        acc.update(torch.randn(part.shape[0], 2), torch.zeros(part.shape[0], 2), part)
    res = acc.result(n_boot=200)
    assert res["l0"].value == pytest.approx(1.25) and res["dead_frac"].value == 0.25
    assert res["dense_frac"].value == 0.5
    assert res["l0"].low <= 1.25 <= res["l0"].high


def test_bootstrap_pools_sums_and_brackets_the_value():
    stats = BatchStats()
    for num, den in [(1.0, 2.0), (3.0, 2.0), (2.0, 4.0), (6.0, 4.0)]:
        stats.add(num=num, den=den)
    est = stats.estimate(lambda s: s["num"] / s["den"], n_boot=500)
    assert est.value == pytest.approx(12 / 12) and est.low <= est.value <= est.high
    one = BatchStats()
    one.add(num=1.0)
    assert math.isnan(one.estimate(lambda s: s["num"]).low)  # one batch: no CI


# ---------------------------------------------------------------- loss recovered (tiny LM)
def _identity(acts: torch.Tensor) -> decompose.Decomposer:
    return decompose.create("identity").fit(acts)


def test_identity_splice_recovers_everything_and_zero_splice_nothing(tiny, tiny_acts):
    batches = [tiny.sample(4, torch.Generator().manual_seed(10 + i), split="test") for i in range(2)]
    mean = tiny_acts.double().mean(0)
    same = loss_recovered(_identity(tiny_acts), tiny, "resid_post.0", batches, mean=mean, n_boot=0)
    assert same["delta_ce_nats"].value == pytest.approx(0.0, abs=1e-6)
    assert same["ce_score_zero"].value == pytest.approx(1.0, abs=1e-4)
    assert same["ce_score_mean"].value == pytest.approx(1.0, abs=1e-4)
    assert same["kl_score"].value == pytest.approx(1.0, abs=1e-6)
    zero = _identity(tiny_acts)
    with torch.no_grad():
        zero.codec_.W_dec.zero_()  # reconstructs every activation as 0: a zero splice
    gone = loss_recovered(zero, tiny, "resid_post.0", batches, mean=mean, n_boot=0)
    assert gone["ce_score_zero"].value == pytest.approx(0.0, abs=1e-9)
    assert gone["kl_score"].value == pytest.approx(0.0, abs=1e-9)
    assert gone["delta_ce_nats"].value == pytest.approx(gone["ce_zero"].value - gone["ce_clean"].value)


def test_kl_is_from_the_clean_distribution_on_a_hand_case():
    """KL(p_clean || p): with p_clean = (0.9, 0.1) and p = (0.5, 0.5) it is 0.9 ln 1.8 + 0.1 ln 0.2 = 0.3681
    nats; the other direction would be 0.5 ln(5/9) + 0.5 ln 5 = 0.5108."""
    from interplab.metrics.downstream import _kl

    clean = torch.tensor([[0.9, 0.1]]).log()
    got = float(_kl(clean, torch.tensor([[0.0, 0.0]]))[0])  # logits of (0.5, 0.5)
    assert got == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), rel=1e-6)
    assert got == pytest.approx(0.36806, abs=1e-5) and abs(got - 0.51083) > 0.1


def test_scores_of_an_intermediate_splice_match_a_hand_computation(tiny, tiny_acts):
    """Splice 0.5 x (an identity whose decoder is halved) on two batches of different sizes, and recompute
    every score by hand from the four runs' log-probs: CE summed over predictions at positions 1..T-2,
    KL(clean || run) over positions 1..T-1, ratios of sums pooled over batches. The hand values that a
    wrong code would give (per-batch ratios averaged, KL the other way round) differ from the right
    ones by more than the tolerance, so the test tells them apart."""
    from interplab.hooks import splice

    batches = [tiny.sample(n, torch.Generator().manual_seed(10 + i), split="test") for i, n in enumerate((2, 5))]
    mean = tiny_acts.double().mean(0)
    half = _identity(tiny_acts)
    with torch.no_grad():
        half.codec_.W_dec.mul_(0.5)  # reconstructs every activation as 0.5 x
    got = loss_recovered(half, tiny, "resid_post.0", batches, mean=mean, n_boot=0)

    def logp(x, replace):  # log-probs (b, T-1, V) at positions 1.., position 0 (BOS) left alone
        fn = lambda a: torch.cat([a[:, :1], replace(a[:, 1:])], dim=1)
        with torch.no_grad(), splice(tiny.model, {"resid_post.0": fn}, sites=tiny.sites):
            return torch.log_softmax(tiny.forward(x).double(), dim=-1)[:, 1:]

    runs = {"clean": lambda a: a, "zero": torch.zeros_like, "mean": lambda a: mean.float().expand_as(a),
            "spliced": lambda a: 0.5 * a}
    ce = dict.fromkeys(runs, 0.0)
    kl = dict.fromkeys(runs, 0.0)
    kl_reverse, per_batch, n = 0.0, [], 0
    for x in batches:
        lp = {k: logp(x, fn) for k, fn in runs.items()}
        here = {k: -float(v[:, :-1].gather(-1, x[:, 2:, None]).sum()) for k, v in lp.items()}  # targets 2..T-1
        for k in runs:
            ce[k] += here[k]
            kl[k] += float((lp["clean"].exp() * (lp["clean"] - lp[k])).sum())
        kl_reverse += float((lp["spliced"].exp() * (lp["spliced"] - lp["clean"])).sum())
        per_batch.append((here["zero"] - here["spliced"]) / (here["zero"] - here["clean"]))
        n += x.shape[0] * (x.shape[1] - 2)
    ce_score_zero = (ce["zero"] - ce["spliced"]) / (ce["zero"] - ce["clean"])
    assert got["ce_score_zero"].value == pytest.approx(ce_score_zero, abs=1e-5)
    assert abs(np.mean(per_batch) - ce_score_zero) > 1e-3  # pooling matters on these batches
    # mean ablation moves this random LM's CE by 1e-4 nats only, so float32 CE (the code) against float64
    # (here) shows in this ratio at the 4e-4 level
    assert got["ce_score_mean"].value == pytest.approx((ce["mean"] - ce["spliced"]) / (ce["mean"] - ce["clean"]),
                                                       rel=2e-3)
    assert got["delta_ce_nats"].value == pytest.approx((ce["spliced"] - ce["clean"]) / n, rel=1e-4)
    assert got["kl_score"].value == pytest.approx(1 - kl["spliced"] / kl["zero"], abs=5e-6)
    assert abs(kl_reverse - kl["spliced"]) / kl["zero"] > 2e-5  # the reverse KL would miss by 4x the tolerance
    assert got["kl_score_mean"].value == pytest.approx(1 - kl["spliced"] / kl["mean"], abs=5e-6)
    assert got["kl_spliced_nats"].value == pytest.approx(kl["spliced"] / (n + sum(x.shape[0] for x in batches)),
                                                         rel=1e-4)


def test_splice_leaves_the_bos_position_untouched(tiny, tiny_acts):
    from interplab.metrics.downstream import LossRecovered

    ids = tiny.sample(3, torch.Generator().manual_seed(5))  # (3, 24)
    acc = LossRecovered(tiny, "resid_post.0", tiny_acts.double().mean(0))
    seen = acc.update(_identity(tiny_acts), ids)
    assert seen.acts.shape == (3 * 23, 64)  # positions 1.. only
    n = acc.stats.sums()
    assert n["n"] == 3 * 22 and n["n_kl"] == 3 * 23  # predictions at 1..T-2, KL at 1..T-1


# ---------------------------------------------------------------- ground truth
def test_ground_truth_is_perfect_for_the_truth_and_the_random_floor_is_far_below(planted):
    features = planted.ground_truth["features"]  # (32, 16)
    batch = sample_activations(planted, 2048, torch.Generator().manual_seed(0))
    assert mmcs(features, features) == pytest.approx(1.0)
    assert mmcs(features, -features) < 0.9 and mmcs(features, -features, signed=True) == pytest.approx(1.0)
    assert mmcs(features[:8], features) == pytest.approx(1.0)
    assert mmcs(features, features[:8]) < 0.75  # missing features count
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(1))
    for codes in (batch.codes, 2 * batch.codes[:, perm], -batch.codes[:, perm]):
        scores = ground_truth_scores(batch.codes, codes)
        assert scores["mcc"] == pytest.approx(1.0) and scores["f1"] == pytest.approx(1.0)
    floor = random_floor(features, 32)
    assert floor < 0.7
    wide = torch.cat([batch.codes, torch.rand(2048, 8)], dim=1)  # extra latents do not hurt
    assert ground_truth_scores(batch.codes, wide)["mcc"] == pytest.approx(1.0)
    half = ground_truth_scores(batch.codes, batch.codes[:, :16])  # half the features missing
    assert half["mcc"] == pytest.approx(0.5) and half["f1"] == pytest.approx(0.5)


# ---------------------------------------------------------------- description length
def test_a_perfect_one_sparse_code_is_shorter_than_a_dense_one():
    g = torch.Generator().manual_seed(0)
    n, d = 4000, 8
    which = torch.randint(0, d, (n,), generator=g)
    x = torch.zeros(n, d)
    x[torch.arange(n), which] = 1 + torch.rand(n, generator=g)  # (n, d) one active coordinate
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))  # (d, d) rotation
    sparse = description_length(x, x, x)  # codes = x, perfect reconstruction
    dense = description_length(x, x @ q, x)  # dense codes of the same, also perfect
    assert sparse["bits_residual"] == 0.0 and dense["bits_residual"] == 0.0
    assert dense["bits_index"] == 0.0  # every latent always fires: the pattern is free
    p = np.bincount(which.numpy(), minlength=d) / n
    assert sparse["bits_index"] == pytest.approx(binary_entropy(p).sum())
    assert sparse["bits_per_token"] < dense["bits_per_token"] - 20
    lossy = description_length(x, x, 0.5 * x)  # a worse reconstruction costs residual bits
    assert lossy["bits_residual"] > 0 and lossy["bits_per_token"] > sparse["bits_per_token"]


def test_description_length_bit_count_of_a_hand_case():
    """Four tokens x = (1,0), (-1,0), (0,1), (0,-1): per-dimension variance 1/2, so delta^2 = 0.01^2 / 2.
    Codes: latent 0 = x_0, latent 1 = x_1 (each fires on half the tokens, active values +-1), decoder
    norms (2, 1) so latent 0's values are +-2 in units of x. The residual is +-0.01 in dimension 0 only.
        index    = 2 H_b(1/2)                                    = 2 bits
        values   = 1/2 [1/2 log2(2 pi e 4 / delta^2)] + 1/2 [1/2 log2(2 pi e / delta^2)]
        residual = 1/2 log2(2 pi e 1e-4 / delta^2) + 0 (an exact dimension costs nothing)
        raw      = 2 x 1/2 log2(2 pi e (1/2) / delta^2)"""
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    recon = x.clone()
    recon[:, 0] -= torch.tensor([0.01, -0.01, 0.01, -0.01])
    got = description_length(x, x.clone(), recon, decoder_norms=torch.tensor([2.0, 1.0]))
    delta2 = 0.01**2 * 0.5
    bits = lambda var: 0.5 * math.log2(2 * math.pi * math.e * var / delta2)
    want = {"bits_index": 2.0, "bits_values": 0.5 * bits(4.0) + 0.5 * bits(1.0), "bits_residual": bits(1e-4),
            "bits_raw": 2 * bits(0.5)}
    want["bits_per_token"] = want["bits_index"] + want["bits_values"] + want["bits_residual"]
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key
    assert got["bits_values"] == pytest.approx(9.6910, abs=1e-3)
    assert got["bits_residual"] == pytest.approx(2.5471, abs=1e-3)


def test_dictionary_bits_count_a_sign_split_direction_once():
    w = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    assert dictionary_bits(torch.cat([w, -w])) == pytest.approx(dictionary_bits(w))
    acc = DescriptionLength(torch.ones(5))
    acc.update(torch.randn(10, 4), torch.rand(10, 5), torch.zeros(10, 4))
    res = acc.result(w, amortize_tokens=100, n_boot=0)
    assert res["dict_bits_per_token"].value == pytest.approx(dictionary_bits(w) / 100)


# ---------------------------------------------------------------- interpretability
def test_a_latent_equal_to_a_label_is_monosemantic_and_probes_perfectly():
    rng = np.random.default_rng(0)
    n = 400
    a = rng.random(n) < 0.3
    b = rng.random(n) < 0.5
    labels = Labels(["a", "b"], np.stack([a, b], axis=1))
    noise = (rng.random(n) < 0.2) * rng.random(n)  # an unrelated sparse latent
    codes = np.stack([a.astype(float), noise, 0 * noise], axis=1)  # (n, 3); latent 2 is dead
    mono = monosemanticity(codes, labels)
    assert mono[0] == pytest.approx(1.0) and mono[1] < 0.6 and mono[2] == 0.0
    always = Monosemanticity(labels)  # a latent firing on every token: F1 by chance, 0 adjusted
    always.update(as_sparse(np.ones((n, 1))), slice(None), np.ones(1))
    res = always.result(n_boot=0)
    assert res["per_latent"][0] > 0.6 and res["interp_score_adjusted"] == pytest.approx(0.0, abs=1e-12)
    groups = np.repeat(np.arange(n // 20), 20)  # windows of 20 tokens
    probes = sparse_probing(codes, labels, groups)
    assert probes["per_label"]["a"][1] == (1.0, 1.0)  # (accuracy, F1) at k = 1
    assert probes["per_label"]["b"][1][0] < 0.75


def test_token_labels_from_the_tokenizer(tiny):
    tok = tiny.tokenizer
    text = 'He said "hi"\nOk 42.'
    ids = torch.tensor([[tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]])  # (1, T)
    labels = token_labels([ids], tok, first=1, n_frequent=0, min_count=1, max_rate=1.0)
    chars = list(text)
    col = {name: labels.matrix[:, j] for j, name in enumerate(labels.names)}
    on = lambda name: "".join(c for c, f in zip(chars, col[name], strict=True) if f)
    assert on("capitalized") == "HO" and on("digit") == "42" and on("newline") == "\n"
    assert on("after_newline") == "O" and on("inside_quotes") == 'hi"'
    assert on("punctuation") == '"".' and on("mid_word") == "eaidik"
    assert labels.matrix.shape == (len(chars), len(labels.names))


# ---------------------------------------------------------------- evaluate
def test_evaluate_a_planted_subject_with_pca(planted):
    train = sample_activations(planted, 4096, torch.Generator().manual_seed(0))
    dec = decompose.create("pca", k=4, sparsify="topk").fit(train.acts)
    out = evaluate(dec, planted, "hidden", n_batches=4, batch_size=512, n_boot=100)
    assert set(PLANTED_KEYS) <= set(out) and set(out) - {"ci", "details"} == set(headline_keys(planted))
    assert out["l0"] <= 4 and 0 < out["fvu"] < 1 and out["mmcs"] > out["details"]["mmcs_random_floor"]
    for key in ("fvu", "mcc", "f1", "bits_per_token"):
        low, high = out["ci"][key]
        assert low <= out[key] <= high
    assert "ce_score_zero" not in out and "interp_score" not in out  # undefined without a loss, tokenizer


def test_evaluate_a_tiny_lm_with_a_small_topk_sae(tiny, tiny_acts):
    dec = decompose.create("sae-topk", k=4, width=128, steps=30, batch_size=256).fit(tiny_acts)
    out = evaluate(dec, tiny, "resid_post.0", n_batches=3, batch_size=4, n_boot=100, mean_batches=1)
    assert set(LM_KEYS) <= set(out) and all(f"probe_f1_k{k}" in out for k in (1, 2, 5))
    assert all(math.isfinite(out[k]) for k in LM_KEYS)
    assert out["l0"] == pytest.approx(4.0) and out["details"]["n_tokens"] == 3 * 4 * 23
    assert 0 <= out["interp_score"] <= 1 and out["details"]["labels"]
    # behaviour: the same SAE with noise (as large as its rows) added to its decoder reconstructs worse,
    # so it must score a higher FVU and a lower KL score on the same batches. (CE scores are left out:
    # this random LM's CE barely moves under any splice, and their CIs span both values.)
    worse = copy.deepcopy(dec)
    with torch.no_grad():
        W = worse.codec_.W_dec  # (m, d)
        noise = torch.randn(W.shape, generator=torch.Generator().manual_seed(1)) / W.shape[1] ** 0.5  # (m, d)
        W.add_(W.norm(dim=1, keepdim=True) * noise)
    both = evaluate_many({"sae": dec, "worse": worse}, tiny, "resid_post.0", n_batches=3, batch_size=4, n_boot=100,
                         mean_batches=1)
    assert both["sae"]["fvu"] == pytest.approx(out["fvu"]) and both["sae"]["kl_score"] == pytest.approx(out["kl_score"])
    assert both["worse"]["ci"]["fvu"][0] > both["sae"]["ci"]["fvu"][1]
    assert both["worse"]["ci"]["kl_score"][1] < both["sae"]["ci"]["kl_score"][0]


def test_evaluate_many_shares_the_baseline_runs_and_matches_one_at_a_time(tiny, tiny_acts):
    decs = {"identity": _identity(tiny_acts), "pca": decompose.create("pca", k=8).fit(tiny_acts)}
    settings = dict(n_batches=2, batch_size=3, n_boot=50, mean_batches=1)
    together = evaluate_many(decs, tiny, "resid_post.0", **settings)
    for name, dec in decs.items():
        alone = evaluate(dec, tiny, "resid_post.0", **settings)
        for key in LM_KEYS:
            assert together[name][key] == pytest.approx(alone[key], rel=1e-6, abs=1e-9), (name, key)
    assert together["identity"]["delta_ce_nats"] == pytest.approx(0.0, abs=1e-6)
    assert together["pca"]["delta_ce_nats"] > 1e-4  # a rank-8 PCA of 64 dims loses something


def test_evaluate_refuses_a_decomposer_of_another_width(planted):
    dec = decompose.create("pca").fit(torch.randn(100, 8))
    with pytest.raises(UserError, match="d_in=8"):
        evaluate(dec, planted, "hidden", n_batches=1, batch_size=16)


def test_evaluate_names_the_batch_that_holds_nan_activations(planted):
    dec = decompose.create("pca").fit(sample_activations(planted, 256).acts)
    good = planted.sample(16, torch.Generator().manual_seed(0))
    bad = good.clone()
    bad[3, :] = float("nan")
    with pytest.raises(UserError, match=r"evaluation batch 1 at site 'hidden' holds 16 NaN"):
        evaluate(dec, planted, "hidden", [good, bad])
