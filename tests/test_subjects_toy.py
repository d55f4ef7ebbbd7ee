"""Toy subjects: the registry contract over tms, synthetic, maxofk and mlp, then each one's own facts.

Trained subjects cache into the real user cache (first run trains, later runs load), so the slow
part of this file, max-of-k training, happens once per machine.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from interplab import ui
from interplab.config import Config
from interplab.errors import UserError
from interplab.hooks import activations
from interplab.subjects import SUBJECTS, HookPoint, load_subject
from interplab.subjects import maxofk as maxofk_mod
from interplab.subjects import tms as tms_mod
from interplab.subjects.synthetic import SyntheticConfig, firing_probabilities, sample_activations

TOY = ["tms", "synthetic", "maxofk", "mlp"]
SMALL = {
    "tms": dict(n_features=5, n_hidden=2, density=[1.0, 0.1, 0.01], steps=50, batch_size=64),
    "synthetic": dict(n_features=32, d=8, mean_active=3.0),
    "maxofk": {},  # the default model: trained once, shared with the accuracy test
    "mlp": dict(width=16, depth=3, d_in=5, d_out=7),
}
# (subject, input shape for a batch of 8, output shape)
SHAPES = {
    "tms": ((8, 3, 5), (8, 3, 5)),
    "synthetic": ((8, 32), (8, 8)),
    "maxofk": ((8, 4), (8, 64)),
    "mlp": ((8, 5), (8, 7)),
}


@pytest.fixture(autouse=True)
def quiet():
    before = ui.is_quiet()
    ui.set_quiet(True)
    yield
    ui.set_quiet(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def state(subject) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in subject.model.state_dict().items()}


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("name", TOY)
def test_registered_with_documented_config(name):
    factory = SUBJECTS.get(name)
    assert SUBJECTS.help(name)
    assert issubclass(factory.Config, Config)
    for field, info in factory.Config.model_fields.items():
        assert info.description, f"{name}.{field} has no docstring"
    with pytest.raises(UserError, match="unknown config key"):
        load_subject(name, not_a_key=1)


@pytest.mark.parametrize("name", TOY)
def test_sample_and_forward_shapes(name):
    subject = load_subject(name, **SMALL[name])
    x = subject.sample(8, gen())
    x_shape, out_shape = SHAPES[name]
    assert tuple(x.shape) == x_shape
    assert tuple(subject.forward(x).shape) == out_shape
    if subject.loss is not None:
        assert torch.isfinite(subject.loss(x))


@pytest.mark.parametrize("name", TOY)
def test_every_site_is_captured(name):
    subject = load_subject(name, **SMALL[name])
    x = subject.sample(8, gen())
    assert subject.sites
    acts = activations(subject.model, x, list(subject.sites), sites=subject.sites)
    lead = tuple(x.shape[: subject.token_dims])
    for site, a in acts.items():
        assert tuple(a.shape[: subject.token_dims]) == lead, site


@pytest.mark.parametrize("name", TOY)
def test_deterministic_from_seed(name):
    a = load_subject(name, **SMALL[name])
    b = load_subject(name, **SMALL[name])
    other = load_subject(name, **{**SMALL[name], "seed": 1})
    sa, sb, so = state(a), state(b), state(other)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], so[k]) for k in sa if sa[k].is_floating_point())
    assert torch.equal(a.sample(16, gen(3)), b.sample(16, gen(3)))
    assert not torch.equal(a.sample(16, gen(3)), a.sample(16, gen(4)))


def test_bad_config_values_are_user_errors():
    with pytest.raises(UserError, match="density"):
        load_subject("tms", density=[0.0])
    with pytest.raises(UserError, match="importance"):
        load_subject("tms", n_features=3, importance=[1.0, 0.5])
    with pytest.raises(UserError, match="mean_active"):
        load_subject("synthetic", n_features=4, mean_active=5.0)
    with pytest.raises(UserError, match="depth"):
        load_subject("mlp", depth=0)


# ---------------------------------------------------------------- tms


def test_tms_training_lowers_loss():
    cfg = dict(n_features=5, n_hidden=2, density=[1.0, 0.1], batch_size=256)
    untrained = load_subject("tms", **cfg, steps=0)
    trained = load_subject("tms", **cfg, steps=300)
    x = untrained.sample(4096, gen(1))
    before = untrained.model.loss_per_instance(x)  # (inst,)
    after = trained.model.loss_per_instance(x)
    assert (after < 0.8 * before).all()
    assert torch.isfinite(trained.model.final_loss).all()


@pytest.mark.parametrize("variant", ["linear", "relu", "neuron"])
def test_tms_hand_written_gradient_matches_autograd(variant):
    cfg = tms_mod.TMSConfig(variant=variant, n_features=6, n_hidden=3, density=[1.0, 0.3, 0.05])
    model = tms_mod._model_for(cfg).double()
    model.reset_parameters(gen())
    with torch.no_grad():
        model.b.normal_(0, 0.3, generator=gen(1))  # so that the output ReLU is on both sides of 0
    xt = tms_mod._sample_t(512, model.density, 6, gen(2)).double()  # (inst, n, batch)
    ref = model._loss_t(xt)
    ref.sum().backward()
    gW, gb = model.W.grad.clone(), model.b.grad.clone()
    model.W.grad = model.b.grad = None
    model._backward_t(xt)
    torch.testing.assert_close(model.W.grad, gW)
    torch.testing.assert_close(model.b.grad, gb)


def test_tms_instances_train_independently():
    """An instance's weights do not depend on what the other instances are doing."""
    common = dict(n_features=5, n_hidden=2, steps=200, batch_size=128)
    a = tms_mod._fit(tms_mod.TMSConfig(density=[0.1, 1.0], **common))
    b = tms_mod._fit(tms_mod.TMSConfig(density=[0.1, 0.3], **common))
    torch.testing.assert_close(a.W[0], b.W[0])
    assert not torch.allclose(a.W[1], b.W[1])


def test_tms_superposition_appears_when_sparse():
    """Dense: the two most important features get the two dimensions; sparse: more than two."""
    subject = load_subject("tms", density=[1.0] * 6 + [0.05] * 6, steps=1000, lr=1e-2)
    represented = (subject.model.W.norm(dim=1) > 0.5).sum(-1).float()  # (inst,)
    assert represented[:6].median() == 2
    assert (represented[6:] > 2).all()


def test_tms_second_build_loads_from_cache(monkeypatch):
    cfg = dict(n_features=4, n_hidden=2, density=[0.2, 0.5], steps=100, batch_size=64, seed=7)
    first = load_subject("tms", **cfg)

    def no_training(_cfg):
        raise AssertionError("retrained although the cache holds this model")

    monkeypatch.setattr(tms_mod, "_fit", no_training)
    start = time.perf_counter()
    second = load_subject("tms", **cfg)
    assert time.perf_counter() - start < 1.0
    assert torch.equal(first.model.W, second.model.W)
    assert torch.equal(first.model.final_loss, second.model.final_loss)


def test_tms_neuron_hidden_is_non_negative():
    subject = load_subject("tms", variant="neuron", n_features=6, n_hidden=3, density=[0.3], steps=50)
    x = subject.sample(256, gen())
    h = activations(subject.model, x, ["hidden"])["hidden"]
    assert h.shape == (256, 1, 3)
    assert (h >= 0).all()


def test_sample_tms_density_and_values():
    density = torch.tensor([1.0, 0.3, 0.02])
    x = tms_mod.sample_tms(20_000, density, 4, gen())  # (n, inst, n_features)
    assert x.shape == (20_000, 3, 4)
    assert x.min() >= 0 and x.max() <= 1
    active = (x > 0).float().mean(dim=(0, 2))  # (inst,)
    se = (density * (1 - density) / 80_000).sqrt()
    assert ((active - density).abs() <= 4 * se + 1e-6).all()
    nz = x[:, 1][x[:, 1] > 0]
    assert abs(nz.mean().item() - 0.5) < 0.02  # uniform on [0, 1] when active


def test_tms_per_instance_importance():
    subject = load_subject(
        "tms", n_features=2, n_hidden=1, density=[0.5, 0.5], importance=[[1.0, 0.5], [0.5, 1.0]], steps=1
    )
    torch.testing.assert_close(subject.ground_truth["importance"], torch.tensor([[1.0, 0.5], [0.5, 1.0]]))


# ---------------------------------------------------------------- synthetic


@pytest.mark.parametrize("firing", ["geometric", "zipf", "uniform"])
def test_synthetic_firing_matches_probabilities(firing):
    subject = load_subject("synthetic", n_features=64, d=16, firing=firing, mean_active=4.0, zipf_exponent=1.5)
    p = subject.ground_truth["firing_prob"]
    assert p.max() <= 1 and abs(p.sum().item() - 4.0) < 1e-4
    n = 40_000
    _, codes = sample_activations(subject, n, gen())
    rate = (codes > 0).float().mean(0)  # (n_features,)
    se = (p * (1 - p) / n).sqrt()
    assert ((rate - p).abs() <= 5 * se + 1e-6).all()
    active = (codes > 0).float().sum(1)  # (n,)
    assert abs(active.mean().item() - 4.0) < 4 * active.std().item() / math.sqrt(n)


def test_synthetic_features_and_activations():
    subject = load_subject("synthetic", n_features=48, d=12)
    F = subject.ground_truth["features"]
    torch.testing.assert_close(F.norm(dim=1), torch.ones(48))
    x = subject.sample(500, gen())
    acts = activations(subject.model, x, ["hidden"])["hidden"]
    torch.testing.assert_close(acts, x @ F)


def test_synthetic_noise_is_isotropic_and_forward_is_pure():
    subject = load_subject("synthetic", n_features=48, d=12, noise=0.3)
    acts, codes = sample_activations(subject, 20_000, gen())
    resid = acts - codes @ subject.ground_truth["features"]  # (n, d)
    assert abs(resid.std().item() - 0.3) < 0.01
    x = subject.sample(10, gen(5))
    assert torch.equal(subject.model(x), subject.model(x))


def test_synthetic_correlated_firing_keeps_marginals():
    cfg = dict(n_features=32, d=8, firing="uniform", mean_active=8.0, correlation=0.8, group_size=4)
    subject = load_subject("synthetic", **cfg)
    n = 40_000
    _, codes = sample_activations(subject, n, gen())
    on = (codes > 0).float()  # (n, n_features)
    assert ((on.mean(0) - 0.25).abs() < 5 * math.sqrt(0.25 * 0.75 / n)).all()
    corr = torch.corrcoef(on.T)  # (n_features, n_features)
    off_diag = corr[~torch.eye(32, dtype=torch.bool)]
    assert off_diag.max() > 0.3  # features in one group fire together
    assert off_diag.min() > -0.05


def test_firing_probabilities_clip_and_still_hit_the_mean():
    p = firing_probabilities(SyntheticConfig(n_features=100, firing="geometric", decay=0.7, mean_active=5.0))
    assert p.max() == 1.0 and abs(p.sum().item() - 5.0) < 1e-4
    assert (p[1:] <= p[:-1]).all()


# ---------------------------------------------------------------- maxofk


def test_maxofk_is_accurate():
    subject = load_subject("maxofk")
    assert maxofk_mod.accuracy(subject, 2048, gen(123)) >= 0.99
    assert subject.loss(subject.sample(512, gen(1))) < 0.1


def test_maxofk_sites_and_pattern():
    subject = load_subject("maxofk")
    for name in ["embed", "attn_out.0", "resid_post.0", "attn_pattern.0", "blocks.0.hook_resid_post"]:
        assert name in subject.sites
    x = subject.sample(32, gen())
    acts = activations(subject.model, x, ["attn_pattern.0", "resid_post.0"], sites=subject.sites)
    pattern = acts["attn_pattern.0"]  # (batch, q, k)
    assert pattern.shape == (32, 4, 4) and acts["resid_post.0"].shape == (32, 4, 32)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(32, 4))
    assert (pattern.triu(1) == 0).all()  # causal


def test_maxofk_training_is_deterministic():
    cfg = maxofk_mod.MaxOfKConfig(steps=20)
    a, b = maxofk_mod._fit(cfg), maxofk_mod._fit(cfg)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_maxofk_refuses_an_undertrained_model(monkeypatch):
    monkeypatch.setattr(maxofk_mod.cache, "save_tensors", lambda *a, **k: None)
    monkeypatch.setattr(maxofk_mod.cache, "load_tensors", lambda *a, **k: None)
    with pytest.raises(UserError, match="accuracy"):
        load_subject("maxofk", steps=5)


# ---------------------------------------------------------------- mlp


def test_mlp_he_init_preserves_second_moments():
    subject = load_subject("mlp", width=256, depth=5)
    x = subject.sample(4096, gen())
    acts = activations(subject.model, x, list(subject.sites), sites=subject.sites)
    for i in range(5):
        h = acts[f"hidden.{i}"]
        assert (h >= 0).all()
        assert 0.75 < h.square().mean().item() < 1.33, i


def test_mlp_is_a_plain_sequential_with_named_sites():
    subject = load_subject("mlp", width=8, depth=3, bias=True)
    model = subject.model
    assert isinstance(model, nn.Sequential)
    assert all(isinstance(m, (nn.Linear, nn.ReLU, HookPoint)) for m in model)
    assert list(subject.sites) == ["hidden.0", "hidden.1", "hidden.2", "out"]
    assert all(m.bias is not None and m.bias.abs().sum() > 0 for m in model if isinstance(m, nn.Linear))
    acts = activations(model, subject.sample(4, gen()), ["out"], sites=subject.sites)
    torch.testing.assert_close(acts["out"], model(subject.sample(4, gen())))
