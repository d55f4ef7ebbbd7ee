"""Loss curves: batched splices against one pass per variant, planted truth, splits, user errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from interplab.decompose import create
from interplab.errors import UserError
from interplab.hooks import splice
from interplab.metrics import loss_curve, loss_curves
from interplab.metrics.downstream import _replacing
from interplab.metrics.feature_basis import TrueFeatures
from interplab.metrics.loss_curve import Splits, draw_splits
from interplab.metrics.splice_batch import BatchSplicer
from interplab.store import harvest_rows
from interplab.subjects import load_subject
from interplab.subjects.base import Subject


def _reference(subject: Subject, site: str, x: torch.Tensor, rows: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Summed next-token CE with `rows` spliced in by one plain pass, and its gradient w.r.t. rows."""
    leaf = rows.clone().requires_grad_(True)
    with splice(subject.model, {site: _replacing(lambda _a: leaf, subject)}, sites=subject.sites):
        logits = subject.forward(x)
    skip = 1 if subject.config.get("prepend_bos") else 0
    loss = F.cross_entropy(logits[:, skip:-1].flatten(0, 1).float(), x[:, skip + 1 :].flatten(), reduction="sum")
    (g,) = torch.autograd.grad(loss, leaf)
    return float(loss.detach()), g


@pytest.fixture(scope="module")
def chartf(tmp_path_factory: pytest.TempPathFactory, text_folder: Path) -> Subject:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INTERPLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        return load_subject("chartf", n_layers=2, d_model=16, d_mlp=32, context=12, steps=5, text=str(text_folder),
                            max_chars=10_000)


@pytest.mark.parametrize("site", ["resid_post.0", "mlp_hidden.1", "attn_out.1"])
def test_batched_splices_match_one_pass_per_variant(chartf: Subject, site: str, quiet_single_thread: None) -> None:
    x = chartf.sample(3, torch.Generator().manual_seed(0))
    sp = BatchSplicer(chartf, site, max_rows=80)  # forces several passes of variants
    rows = sp.rows(x)
    variants = torch.stack([rows, rows.mean(0).expand_as(rows), torch.zeros_like(rows),
                            rows + 0.5 * torch.randn(rows.shape, generator=torch.Generator().manual_seed(1))])
    out = sp.losses(x, variants)
    ref = [_reference(chartf, site, x, v) for v in variants]
    assert out.loss.tolist() == pytest.approx([r[0] for r in ref], rel=1e-5)
    assert out.clean_loss == pytest.approx(ref[0][0], rel=1e-5)
    assert out.kl[0] == pytest.approx(0.0, abs=1e-4) and float(out.kl[3]) > 0
    g = sp.grads(x, variants)
    for k in range(len(variants)):
        assert torch.allclose(g[k], ref[k][1], atol=1e-4, rtol=1e-3)


def test_batched_splices_on_a_hf_model_with_bos(quiet_single_thread: None, text_folder: Path) -> None:
    lm = load_subject("tiny-llama", seq_len=10, d_model=32, text=str(text_folder))
    x = lm.sample(2, torch.Generator().manual_seed(0))
    for site in ["resid_post.0", "mlp_hidden.1"]:
        sp = BatchSplicer(lm, site)
        rows = sp.rows(x)  # (2 * 9, d): BOS dropped
        variants = torch.stack([rows.mean(0).expand_as(rows), rows * 0.5])
        out = sp.losses(x, variants)
        assert out.n == 2 * 8
        for k, v in enumerate(variants):
            assert float(out.loss[k]) == pytest.approx(_reference(lm, site, x, v)[0], rel=1e-5)


def _readout(K: int = 12, d: int = 24, steps: int = 300) -> Subject:
    return load_subject("readout", n_features=K, d=d, mean_active=2.0, steps=steps, batch_size=256)


def test_true_features_reach_the_whole_loss_and_a_random_basis_stays_below(quiet_single_thread: None,
                                                                        tmp_cache: Path) -> None:
    subject = _readout()
    rows = harvest_rows(subject, ["hidden"], 4096, 0, 4096, cached=False)["hidden"]
    truth = TrueFeatures(subject.ground_truth["features"], lambda z: z)
    curves = loss_curves({"truth": truth, "random": create("random", seed=3).fit(rows)}, subject, "hidden",
                         ns={"truth": [1, 2, 4, 8, 12], "random": [1, 2, 4, 8, 12]}, score_batches=4,
                         batch_size=512, singles=4)
    t, r = curves["truth"].summary(100), curves["random"].summary(100)
    assert t["frac_mean"][-1] == pytest.approx(1.0, abs=1e-4)  # all 12 true features read: x_12 = x
    assert t["recon"]["frac_mean"] == pytest.approx(1.0, abs=1e-4)
    assert all(rv < tv for rv, tv in zip(r["frac_mean"], t["frac_mean"]))
    assert t["frac_mean"] == sorted(t["frac_mean"])  # ranked features: each adds loss recovered here
    assert t["n90"] is not None and t["n90"] <= 12


def test_a_complete_basis_reaches_the_clean_run_whatever_mean_ablation_uses(quiet_single_thread: None,
                                                                            tmp_cache: Path) -> None:
    subject = _readout()
    rows = harvest_rows(subject, ["hidden"], 4096, 0, 4096, cached=False)["hidden"]  # (4096, 24)
    pca = create("pca").fit(rows)
    splits = draw_splits(subject, rank_batches=2, score_batches=3, batch_size=256)
    rank_mean = torch.cat([BatchSplicer(subject, "hidden").rows(x) for x in splits.rank]).double().mean(0)  # (24,)
    other = (rank_mean + 0.5).float()  # (24,) a mean-ablation point off the ranking rows' mean
    s = loss_curves({"pca": pca}, subject, "hidden", splits=splits, mean=other, singles=0)["pca"].summary(20)
    assert s["ns"][-1] == 24 and s["frac_mean"][-1] == pytest.approx(1.0, abs=1e-4)
    assert s["loss_mean_ablated"] > s["loss_clean"]


def test_ranking_and_scoring_splits_are_disjoint(quiet_single_thread: None, tmp_cache: Path) -> None:
    subject = load_subject("readout", codes="gaussian", n_features=24, d=24, steps=10)  # continuous inputs
    calls: list[tuple[str, int]] = []

    def spy(n: int, generator: torch.Generator | None = None, split: str = "train") -> torch.Tensor:
        calls.append((split, generator.initial_seed()))
        return subject.sample(n, generator, split)

    spied = Subject("spy", subject.model, spy, subject.loss, subject.config)
    splits = draw_splits(spied, rank_batches=3, score_batches=4, batch_size=64, seed=5)
    assert [c[0] for c in calls] == ["train"] * 3 + ["test"] * 4
    assert not {c[1] for c in calls[:3]} & {c[1] for c in calls[3:]}  # no generator draws twice
    rank_rows = {tuple(r.tolist()) for x in splits.rank for r in x}
    assert not any(tuple(r.tolist()) in rank_rows for x in splits.score for r in x)
    same = Splits(splits.rank, [splits.rank[0], splits.score[0]], {})
    with pytest.raises(UserError, match="also a ranking batch"):
        loss_curves({"pca": create("pca").fit(torch.randn(256, 24))}, subject, "hidden", splits=same)


def test_text_splits_come_from_disjoint_parts_of_the_corpus(chartf: Subject) -> None:
    from interplab.subjects.chartf import CharTFConfig, _split, load_chars

    splits = draw_splits(chartf, rank_batches=2, score_batches=2, batch_size=8)
    train, test = (t.numpy().tobytes() for t in _split(load_chars(CharTFConfig(**chartf.config))))
    for x in splits.score:
        assert all(bytes(w.numpy().astype(np.int64).tobytes()) in test for w in x)
    for x in splits.rank:
        assert all(bytes(w.numpy().astype(np.int64).tobytes()) in train for w in x)


def test_a_saelens_folder_goes_on_the_curve(quiet_single_thread: None, tmp_cache: Path, tmp_path: Path) -> None:
    subject = _readout(steps=50)
    rows = harvest_rows(subject, ["hidden"], 4096, 0, 4096, cached=False)["hidden"]
    sae = create("sae-topk", k=4, width=48, steps=30, batch_size=512, lr=5e-3).fit(rows)
    sae.save(tmp_path / "sae")
    c = loss_curve(str(tmp_path / "sae"), subject, "hidden", score_batches=2, batch_size=256, singles=3)
    s = c.summary(50)
    assert s["width"] == 48 and s["ns"] == [1, 2, 4, 8, 16, 32, 48]
    assert len(s["frac_mean"]) == 7 and all(np.isfinite(s["frac_mean"]))
    assert s["singles"]["n"] == 3 and len(c.singles) <= 3 + 4


def test_user_errors_are_one_line(quiet_single_thread: None, tmp_cache: Path) -> None:
    subject = _readout(steps=10)
    pca = create("pca").fit(torch.randn(128, 24))
    with pytest.raises(UserError, match="ns must lie in 1..24"):
        loss_curve(pca, subject, "hidden", ns=[1, 100], score_batches=2, batch_size=64)
    with pytest.raises(UserError, match="d_in=8"):
        loss_curve(create("pca").fit(torch.randn(64, 8)), subject, "hidden", score_batches=2, batch_size=64)
    with pytest.raises(UserError, match="has no loss"):
        loss_curve(pca, load_subject("synthetic", d=24), "hidden")
    with pytest.raises(UserError, match="not a int"):
        loss_curve(3, subject, "hidden")


@pytest.mark.parametrize("name", ["identity", "random", "pca", "ica", "sae-relu", "sae-topk", "sae-batchtopk",
                                  "sae-jumprelu"])
def test_every_registered_decomposition_goes_on_the_curve(name: str, quiet_single_thread: None,
                                                          tmp_cache: Path) -> None:
    from interplab.decompose import DECOMPOSITIONS
    from interplab.decompose.sae import SAEDecomposer

    subject = _readout(K=48, steps=50)  # 48 features in 24 dims: a full-rank site (ICA needs one)
    rows = harvest_rows(subject, ["hidden"], 2048, 0, 2048, cached=False)["hidden"]
    extra = {"width": 48, "steps": 10, "batch_size": 256, "k": 4} if issubclass(DECOMPOSITIONS.get(name),
                                                                               SAEDecomposer) else {}
    dec = create(name, **extra).fit(rows)
    s = loss_curve(dec, subject, "hidden", score_batches=2, batch_size=128, singles=2).summary(20)
    assert s["ns"][-1] == dec.n_components_ and all(np.isfinite(s["frac_mean"]))
    if name in ("identity", "random", "pca", "ica"):  # full-rank linear bases rebuild the site exactly
        assert s["frac_mean"][-1] == pytest.approx(1.0, abs=1e-3)
