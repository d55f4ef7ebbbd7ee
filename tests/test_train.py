"""interplab.decompose.train: fast step against the reference step, resume after a kill to identical
weights, schedule, dead-latent tracking, normalisation folding, and training from a store."""

from __future__ import annotations

import copy
import runpy
import signal
import subprocess
import sys
import time

import pytest
import torch

import interplab.decompose as D
from interplab import ui
from interplab.decompose.sae import BatchTopKSAE, JumpReLUSAE, ReLUSAE, TopKSAE
from interplab.decompose.fast import DENSE_FRACTION, FastStep
from interplab.decompose.steps import ReferenceStep
from interplab.decompose.streams import IterStream, StoreStream, TensorStream
from interplab.decompose.train import TrainConfig, load_checkpoint, lr_scale, train_sae
from interplab.errors import UserError
from interplab.store import ActivationStore, HarvestConfig, harvest
from interplab.subjects import load_subject

WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec")


pytestmark = pytest.mark.usefixtures("quiet_single_thread")


def planted(n: int, m: int = 48, d: int = 16, seed: int = 0) -> torch.Tensor:
    """Sparse non-negative combinations of m random unit directions in d dims, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1)  # (m, d)
    on = torch.rand(n, m, generator=g) < 4 / m  # (n, m)
    return (torch.rand(n, m, generator=g) * on) @ feats + 0.3  # (n, d)


def weights(module) -> dict[str, torch.Tensor]:
    return {n: getattr(module, n).detach().clone() for n in WEIGHTS}


# --- fast step == reference step ---------------------------------------------------------------------
@pytest.mark.parametrize("n_dead", [0, 5, 20, 40, 64])
def test_fast_step_matches_reference_step(n_dead):
    """Same start, same batches, same dead masks: the two steps agree to float64 rounding."""
    torch.manual_seed(0)
    sae = TopKSAE(16, 64, k=4).double()
    sae.init_(torch.zeros(16, dtype=torch.float64), torch.Generator().manual_seed(1))
    ref_sae = copy.deepcopy(sae)
    fast = FastStep(sae, 1e-2, (0.9, 0.999), 1e-8, aux_coefficient=0.5)
    ref = ReferenceStep(ref_sae, 1e-2, (0.9, 0.999), 1e-8, aux_coefficient=0.5)
    dead = torch.zeros(64, dtype=torch.bool)
    # k_aux = 8: 5 dead scale AuxK down; up to 32 dead AuxK is dense over the dead columns, beyond sparse
    dead[torch.randperm(64)[:n_dead]] = True
    for i in range(6):
        x = planted(200, m=48, d=16, seed=i).double() * 2  # (200, 16)
        a, b = fast(x, dead, 0.5 + 0.1 * i, 0.0), ref(x, dead, 0.5 + 0.1 * i, 0.0)
        assert torch.allclose(a.fvu, b.fvu, rtol=1e-12) and torch.equal(a.l0, b.l0)
        assert torch.equal(a.fired, b.fired)
    fast.finish()
    for name in WEIGHTS:
        assert torch.allclose(getattr(sae, name), getattr(ref_sae, name), rtol=1e-9, atol=1e-12), name


def _pair(module, aux: float = 0.5, lr: float = 1e-2):
    module.init_(torch.zeros(module.d_in, dtype=torch.float64), torch.Generator().manual_seed(1))
    ref_module = copy.deepcopy(module)
    return (module, FastStep(module, lr, (0.9, 0.999), 1e-8, aux_coefficient=aux),
            ref_module, ReferenceStep(ref_module, lr, (0.9, 0.999), 1e-8, aux_coefficient=aux))


def _agree(module, fast, ref_module, ref, coef: float, dead: torch.Tensor, steps: int = 6, scale: float = 2.0):
    for i in range(steps):
        x = planted(200, m=48, d=16, seed=i).double() * scale  # (200, 16)
        a, b = fast(x, dead, 0.5 + 0.1 * i, coef), ref(x, dead, 0.5 + 0.1 * i, coef)
        assert torch.allclose(a.fvu, b.fvu, rtol=1e-12), i
        assert torch.equal(a.l0, b.l0) and torch.equal(a.fired, b.fired), i
    fast.finish()
    names = WEIGHTS + (("log_threshold",) if isinstance(module, JumpReLUSAE) else ("threshold",)
                       if isinstance(module, BatchTopKSAE) else ())
    for name in names:
        assert torch.allclose(getattr(module, name), getattr(ref_module, name), rtol=1e-9, atol=1e-12), name


@pytest.mark.parametrize("n_dead", [0, 5, 40])
def test_fast_batchtopk_step_matches_reference_step(n_dead):
    torch.manual_seed(0)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[torch.randperm(64)[:n_dead]] = True
    _agree(*_pair(BatchTopKSAE(16, 64, k=4).double()), coef=0.0, dead=dead)


@pytest.mark.parametrize(("coef", "scale"), [(0.0, 2.0), (3.0, 2.0), (30.0, 6.0)])
def test_fast_jumprelu_step_matches_reference_step(coef, scale, monkeypatch):
    """The thresholds' straight-through gradients (reconstruction and L0) included; both the sparse
    and the dense path (the share of entries near or above θ decides which runs)."""
    sae = JumpReLUSAE(16, 64, bandwidth=0.5, init_threshold=0.3, threshold_lr_scale=5.0).double()
    dead = torch.zeros(64, dtype=torch.bool)
    _agree(*_pair(sae, aux=0.0), coef=coef, dead=dead, scale=scale)
    monkeypatch.setattr("interplab.decompose.fast.DENSE_FRACTION", 1.01)  # the sparse path whatever the density
    sae = JumpReLUSAE(16, 64, bandwidth=0.5, init_threshold=0.3, threshold_lr_scale=5.0).double()
    _agree(*_pair(sae, aux=0.0), coef=coef, dead=dead, scale=scale)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("coef", [0.0, 5.0])
def test_fast_relu_step_matches_reference_step(coef, sparse, monkeypatch):
    """The L1 penalty weighted by the decoder norms (and its gradient into the decoder) included."""
    if sparse:
        monkeypatch.setattr("interplab.decompose.fast.DENSE_FRACTION", 1.01)
    dead = torch.ones(64, dtype=torch.bool)  # ReLU SAEs have no AuxK: dead latents change nothing
    _agree(*_pair(ReLUSAE(16, 64).double(), aux=0.5), coef=coef, dead=dead)


def test_fast_path_is_taken_only_where_it_applies():
    assert FastStep.applies(TopKSAE(4, 8, 2)) and FastStep.applies(BatchTopKSAE(4, 8, 2))
    assert FastStep.applies(ReLUSAE(4, 8)) and FastStep.applies(JumpReLUSAE(4, 8))
    assert not FastStep.applies(JumpReLUSAE(4, 8, sparsity="tanh"))  # the tanh penalty: autograd
    rescaled = TopKSAE(4, 8, 2, rescale_acts_by_decoder_norm=True)
    assert not FastStep.applies(rescaled)
    assert 0 < DENSE_FRACTION < 1


@pytest.mark.parametrize("name", ["sae-topk", "sae-batchtopk", "sae-jumprelu", "sae-relu"])
def test_fast_and_reference_training_end_close(name):
    """float32 training over 60 steps: the two steps differ only by rounding, so they end close."""
    x = planted(2048, seed=3)
    fast = D.create(name, k=4, width=64, steps=60, batch_size=128).fit(x)
    slow = train_sae(D.create(name, k=4, width=64, steps=60, batch_size=128), x, {"fast": False})
    assert abs(float(fast.forward(x).fvu) - float(slow.forward(x).fvu)) < 0.02


def test_device_setting_trains_on_the_cpu_and_refuses_a_missing_gpu():
    x = planted(512, seed=4)
    dev = D.create("sae-topk", k=4, width=64, steps=5, batch_size=128, device="cpu").fit(x)
    plain = D.create("sae-topk", k=4, width=64, steps=5, batch_size=128).fit(x)
    assert torch.equal(dev.codec_.W_enc, plain.codec_.W_enc)  # the device changes where, not what
    missing = "cuda:99" if torch.cuda.is_available() else "cuda"
    with pytest.raises(UserError, match="not available on this machine"):
        D.create("sae-topk", k=4, width=64, steps=5, device=missing).fit(x)
    with pytest.raises(UserError, match="not a device name"):
        D.create("sae-topk", k=4, width=64, steps=5, device="gpu-please").fit(x)


# --- resume after a kill ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sae-topk", "sae-batchtopk", "sae-jumprelu", "sae-relu"])
def test_resume_after_stop_gives_identical_weights(name, tmp_path):
    """Stop after 17 steps (last checkpoint at 14), resume from the folder: the final weights equal
    those of an uninterrupted run bit for bit (AuxK, thresholds and the L0 controller included)."""
    x = planted(3000, seed=4)
    settings = {"k": 4, "width": 64, "steps": 40, "batch_size": 256, "dead_tokens": 512}
    cfg = {"checkpoint_every": 7}
    whole = train_sae(D.create(name, **settings), x, cfg)
    train_sae(D.create(name, **settings), x, cfg, tmp_path / "ckpt", stop_after=17)
    meta, _ = load_checkpoint(tmp_path / "ckpt")
    assert meta["step"] == 14
    resumed = train_sae(D.create(name, **settings), x, cfg, tmp_path / "ckpt")
    for n in WEIGHTS:
        assert torch.equal(getattr(resumed.codec_, n), getattr(whole.codec_, n)), n
    assert load_checkpoint(tmp_path / "ckpt")[0]["step"] == 40
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_000000040.json",
                                                                     "step_000000040.safetensors"]


def test_resume_from_a_plain_iterable(tmp_path):
    batches = list(planted(2400, seed=5).split(200))  # 12 batches, one pass
    whole = D.create("sae-topk", k=4, width=32, batch_size=200).fit(iter(batches))
    train_sae(D.create("sae-topk", k=4, width=32), iter(batches), {"checkpoint_every": 5}, tmp_path, stop_after=7)
    resumed = train_sae(D.create("sae-topk", k=4, width=32), iter(batches), {"checkpoint_every": 5}, tmp_path)
    assert all(torch.equal(getattr(resumed.codec_, n), getattr(whole.codec_, n)) for n in WEIGHTS)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    x = planted(1000, seed=6)
    train_sae(D.create("sae-topk", k=4, width=32, steps=6, batch_size=100), x, {"checkpoint_every": 3}, tmp_path)
    with pytest.raises(UserError, match=r"different run \(.*lr"):
        train_sae(D.create("sae-topk", k=4, width=32, steps=6, batch_size=100, lr=0.1), x, None, tmp_path)


KILLED_RUN = """
import sys, torch
from interplab import ui
import interplab.decompose as D
from interplab.decompose.train import train_sae
ui.set_quiet(True)
def run(ckpt):
    x = torch.rand(8000, 32, generator=torch.Generator().manual_seed(0)) ** 4
    return train_sae(D.create("sae-topk", k=8, width=128, steps=300, batch_size=256), x,
                     {"checkpoint_every": 10, "threads": 1}, ckpt)
if __name__ == "__main__":
    run(sys.argv[1]).save(sys.argv[2])
"""


def test_sigkilled_run_resumes_to_identical_weights(tmp_path):
    """A real SIGKILL mid-run (in a subprocess), then the same command again."""
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    ref = runpy.run_path(str(script))["run"](tmp_path / "ref_ckpt")  # uninterrupted, in this process
    cmd = [sys.executable, str(script), str(tmp_path / "ckpt"), str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((tmp_path / "ckpt").glob("step_0000000[1-9]*.json")) and time.time() < deadline:
        assert proc.poll() is None, "the run finished before it could be killed; make it longer"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed").exists()
    subprocess.run(cmd, check=True, capture_output=True)
    back = D.load(tmp_path / "killed")
    assert all(torch.equal(getattr(back.codec_, n), getattr(ref.codec_, n)) for n in WEIGHTS)


# --- schedule, constraint, dead latents, normalisation --------------------------------------------------
def test_learning_rate_schedule():
    got = [lr_scale(s, 10, warmup=0.3, decay=0.2) for s in range(10)]
    assert got == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1, 1, 1, 1, 0.5])
    assert [lr_scale(s, 5, 0.0, 0.0) for s in range(5)] == [1.0] * 5
    assert lr_scale(3, None, 0.5, 0.5) == 1.0  # unknown length: neither warm-up nor decay


@pytest.mark.parametrize("fast", [True, False])
def test_decoder_rows_are_unit_norm_after_training(fast):
    dec = train_sae(D.create("sae-topk", k=4, width=32, steps=30, batch_size=128), planted(2000) * 50, {"fast": fast})
    assert torch.allclose(dec.components_.norm(dim=1), torch.ones(32), atol=1e-5)


def test_dead_latents_are_counted_in_tokens(tmp_path):
    """`since` counts tokens since each latent last fired: replayed here from the batches with the
    initial weights (the learning rate is too small to change which latents fire)."""
    sae = TopKSAE(16, 32, k=4)
    sae.init_(torch.zeros(16), torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc[:6] = -1e6  # these can never win a top-k slot
    start = copy.deepcopy(sae).eval()
    x = planted(1200, seed=7)
    cfg = TrainConfig(steps=12, batch_size=100, dead_tokens=500, lr=1e-12, checkpoint_every=12)
    train_sae(sae, x, cfg, tmp_path)
    since = load_checkpoint(tmp_path)[1]["since"]  # (32,)
    expected = torch.zeros(32, dtype=torch.long)
    stream = TensorStream(x, 100, seed=0)
    for i in range(12):
        expected += 100
        expected[(start(stream.batch(i)).codes != 0).any(0)] = 0
    assert torch.equal(since, expected)
    assert torch.equal(since[:6], torch.full((6,), 1200)) and int((since >= 500).sum()) >= 6


@pytest.mark.parametrize("cls", [ReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE])
def test_folding_the_scale_leaves_outputs_unchanged(cls):
    args = (8, 24) if cls in (ReLUSAE, JumpReLUSAE) else (8, 24, 3)
    sae = cls(*args)
    sae.init_(torch.randn(8), torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc.normal_()
        if cls is JumpReLUSAE:
            sae.log_threshold.uniform_(-3, 0)
        if cls is BatchTopKSAE:
            sae.threshold.fill_(0.1)
    sae.eval()
    x, s = torch.randn(50, 8), 7.5
    before = sae(x * s)
    sae.fold_scale_(s)
    after = sae(x)
    assert torch.allclose(after.recon * s, before.recon, rtol=1e-5, atol=1e-4)
    assert torch.allclose(after.codes * s, before.codes, rtol=1e-5, atol=1e-4)


def test_normalisation_makes_training_scale_free():
    """Inputs 1000x larger give the same dictionary and 1000x the biases: the scale is estimated,
    trained away and folded back, so the saved SAE acts on raw activations."""
    x = planted(2000, seed=8)
    a = D.create("sae-topk", k=4, width=32, steps=25, batch_size=200).fit(x)
    b = D.create("sae-topk", k=4, width=32, steps=25, batch_size=200).fit(x * 1000)
    assert torch.allclose(a.components_, b.components_, atol=1e-3)
    assert torch.allclose(a.codec_.b_dec * 1000, b.codec_.b_dec, rtol=1e-3, atol=1e-2)
    assert torch.allclose(a.forward(x).recon * 1000, b.forward(x * 1000).recon, rtol=1e-3, atol=1.0)


# --- data streams ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ActivationStore:
    out = tmp_path_factory.mktemp("store")
    cfg = HarvestConfig(subject="mlp", subject_config={"width": 16, "depth": 2}, sites=["hidden.1", "out"],
                        tokens=1000, batch_size=50, shard_tokens=128)
    was = ui.is_quiet()
    ui.set_quiet(True)
    harvest(load_subject("mlp", width=16, depth=2), cfg, out)
    ui.set_quiet(was)
    return ActivationStore(out)


def test_store_stream_is_random_access_and_covers_rows(store):
    a, b = StoreStream(store, "hidden.1", 64, seed=3), StoreStream(store, "hidden.1", 64, seed=3)
    first = [a.batch(i) for i in range(a.steps_per_epoch * 2)]
    assert torch.equal(b.batch(a.steps_per_epoch + 2), first[a.steps_per_epoch + 2])  # jump straight there
    assert torch.equal(b.batch(1), first[1])
    epoch = torch.cat(first[: a.steps_per_epoch])  # (rows, 16)
    assert len({tuple(r.tolist()) for r in epoch}) == epoch.shape[0] == 1000 // 64 * 64  # no row twice
    assert not torch.equal(first[0], first[a.steps_per_epoch])  # a new order each epoch


def test_training_from_an_activation_store(store, tmp_path):
    dec = train_sae(D.create("sae-topk", k=4, width=64, steps=40, batch_size=100), (store, "hidden.1"))
    x = store.all("hidden.1")
    assert float(dec.forward(x).fvu) < 0.8
    with pytest.raises(UserError, match="several sites"):
        train_sae("sae-topk", store)
    whole = train_sae(D.create("sae-topk", k=4, width=64, steps=30, batch_size=100), (store, "out"))
    train_sae(D.create("sae-topk", k=4, width=64, steps=30, batch_size=100), (store, "out"),
              {"checkpoint_every": 10}, tmp_path, stop_after=15)
    back = train_sae(D.create("sae-topk", k=4, width=64, steps=30, batch_size=100), (store, "out"),
                     {"checkpoint_every": 10}, tmp_path)
    assert all(torch.equal(getattr(back.codec_, n), getattr(whole.codec_, n)) for n in WEIGHTS)


def test_tensor_and_iterable_streams():
    x = planted(1000, seed=9)
    s = TensorStream(x, 300, seed=0)
    assert s.steps_per_epoch == 3 and torch.equal(s.batch(4), TensorStream(x, 300, seed=0).batch(4))
    it = IterStream(iter([x[:1], x[1:101], x[101:102], x[102:200]]), keep=2)
    assert it.batch_size == 100 and torch.equal(it.batch(0), x[1:101]) and torch.equal(it.batch(1), x[102:200])
    assert it.batch(2) is None
    with pytest.raises(UserError, match="not a int"):
        train_sae("sae-topk", 3)
    with pytest.raises(UserError, match="d_in=16"):
        train_sae(TopKSAE(16, 32, 4), torch.randn(100, 8))
