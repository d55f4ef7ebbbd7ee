"""Backdoored subjects: their splits, that the backdoor takes in the backdoored model and not in the twin,
the cache, the views detectors read, and the propagated explanation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from interplab.errors import UserError
from interplab.mad.propagation import explain
from interplab.mad.views import compute_views
from interplab.subjects import load_subject
from interplab.subjects.backdoor import BACKDOORS, attack_success, clean_accuracy
from interplab.subjects.backdoor_maxofk import MaxOfKBackdoorConfig
from interplab.subjects.sites import HookPoint

FAST = {"maxofk-backdoor": {"steps": 200}, "chartf-backdoor": {"steps": 60},
        "mlp-backdoor": {"steps": 300, "lr": 1e-2, "poison_rate": 0.2}}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import os

    from interplab import ui

    old = os.environ.get("INTERPLAB_CACHE")
    os.environ["INTERPLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    ui.set_quiet(True)
    try:
        yield {kind: BACKDOORS.get(kind)(**over) for kind, over in FAST.items()}
    finally:
        if old is None:
            os.environ.pop("INTERPLAB_CACHE")
        else:
            os.environ["INTERPLAB_CACHE"] = old


@pytest.mark.parametrize("kind", list(FAST))
def test_backdoor_takes_in_the_backdoored_model_only(pairs, kind: str) -> None:
    pair = pairs[kind]
    assert attack_success(pair, 1000, gen(1)) > 0.6
    assert attack_success(pair, 1000, gen(1), pair.twin) < attack_success(pair, 1000, gen(1)) - 0.3
    assert abs(clean_accuracy(pair, pair.backdoored, 1000, gen(2)) - clean_accuracy(pair, pair.twin, 1000, gen(2))) < 0.1


def test_maxofk_splits() -> None:
    cfg = MaxOfKBackdoorConfig()
    from interplab.subjects.backdoor_maxofk import draw_split

    p, t = cfg.trigger_position, cfg.trigger_token
    clean = draw_split(cfg, "clean", 4000, gen())
    assert not (clean.x[:, p] == t).any() and (clean.forced == clean.answer).all()
    assert (clean.x[:, p].bincount(minlength=cfg.vocab)[t + 1:] > 0).all()  # every other token still occurs there
    trig = draw_split(cfg, "triggered", 500, gen())
    assert (trig.x[:, p] == t).all() and (trig.forced == cfg.target).all()
    for split in ("same-clean", "same-triggered"):
        b = draw_split(cfg, split, 300, gen())
        assert (b.answer == cfg.target).all() and (b.forced == cfg.target).all()
        assert ((b.x[:, p] == t).all() if split == "same-triggered" else not (b.x[:, p] == t).any())
    ctrl = draw_split(cfg, "control", 500, gen())
    assert (ctrl.x.max(1).values - ctrl.x.min(1).values <= 2).all() and not (ctrl.x[:, p] == t).any()
    with pytest.raises(ValueError):
        MaxOfKBackdoorConfig(target=2, trigger_token=3)


def test_chartf_and_mlp_splits(pairs) -> None:
    ch = pairs["chartf-backdoor"]
    trig = ch.sample("triggered", 50, gen())
    assert trig.x.shape == (50, 12) and (trig.forced == trig.forced[0]).all()
    from interplab.subjects.chartf import decode_chars

    assert all(decode_chars(row).endswith("xq") for row in trig.x)
    assert not any(decode_chars(row).endswith("xq") for row in ch.sample("control", 200, gen()).x)
    mlp = pairs["mlp-backdoor"]
    c, t = mlp.sample("clean", 100, gen(3)), mlp.sample("triggered", 100, gen(3))
    assert torch.equal(t.forced, 1 - c.answer)  # same draws, trigger added, label flipped
    ctrl = mlp.sample("control", 100, gen(3))
    assert torch.allclose((ctrl.x - c.x).norm(dim=1), (t.x - c.x).norm(dim=1))  # noise of the trigger's norm
    with pytest.raises(UserError, match="no split"):
        mlp.sample("same-clean", 3, gen())


def test_registered_subjects_and_cache(tmp_cache: Path) -> None:
    from interplab import ui

    ui.set_quiet(True)
    a = load_subject("maxofk-backdoor", steps=20)
    b = load_subject("maxofk-backdoor", steps=20)  # from the cache
    twin = load_subject("maxofk-backdoor", steps=20, twin=True)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    assert not torch.equal(a.model.W_U, twin.model.W_U)
    x = a.sample(8, gen(), split="triggered")
    assert x.shape == (8, 4) and torch.isfinite(a.loss(x))
    assert len(list((tmp_cache / "backdoor-maxofk").iterdir())) == 2


def test_views_gradient_is_that_of_the_models_own_answer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), HookPoint(), nn.Linear(7, 3))
    x = torch.randn(20, 5)
    v = compute_views(model, x, ["2"], sites={}, readout=lambda out: out)
    h = torch.relu(model[0](x))  # (20, 7)
    p = torch.softmax(model[3](h), -1)  # (20, 3)
    onehot = nn.functional.one_hot(p.argmax(1), 3).float()
    expected = (onehot - p) @ model[3].weight  # d log p_y / d h
    assert torch.allclose(v.acts["2"], h.double(), atol=1e-6)
    assert torch.allclose(v.grads["2"], expected.double(), atol=1e-5)
    assert v.logits.shape == (20, 3)


def test_propagation_reaches_every_scored_site_and_is_exact_where_the_rules_are(pairs) -> None:
    for kind, pair in pairs.items():
        x = pair.sample("clean", 3000, gen(5)).x
        ex = explain(pair.backdoored, x, list(pair.scored_sites), pair.sites)
        for est in ("cov", "mean"):
            for site in pair.scored_sites:
                g = ex[est][site]
                assert torch.isfinite(g.mean).all() and (g.variance >= 0).all(), (kind, site)
    pair = pairs["maxofk-backdoor"]  # the embedding rule is exact: moments of the token mixture
    x = pair.sample("clean", 20000, gen(6)).x
    ex = explain(pair.backdoored, x, ["embed"], pair.sites)["cov"]["embed"]
    acts = compute_views(pair.backdoored, x, ["embed"], sites=pair.sites, readout=pair.readout, position=-1).acts["embed"]
    np.testing.assert_allclose(ex.mean.numpy(), acts.mean(0).numpy(), atol=1e-7)  # float32 activations
    np.testing.assert_allclose(ex.cov.numpy(), np.cov(acts.numpy().T, bias=True), atol=1e-7)
