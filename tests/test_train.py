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


def _free(module, seed: int = 2):
    """SAELens's parametrisation: decoder rows of any norm (here scattered in [0.5, 2]), TopK and
    BatchTopK ranking pre·||W_dec,i||."""
    module.unit_decoder = False
    module.rescale_acts_by_decoder_norm = isinstance(module, (TopKSAE, BatchTopKSAE))
    fast, ref = copy.deepcopy(module), module
    for m in (fast, ref):
        with torch.no_grad():
            m.W_dec *= 0.5 + 1.5 * torch.rand(m.d_sae, 1, generator=torch.Generator().manual_seed(seed),
                                              dtype=torch.float64)
    return fast, ref


@pytest.mark.parametrize("clip", [None, 0.05])
@pytest.mark.parametrize("n_dead", [0, 5, 40])
@pytest.mark.parametrize("cls", [TopKSAE, BatchTopKSAE])
def test_fast_step_matches_reference_step_with_a_free_decoder_norm(cls, n_dead, clip):
    """decoder_norm='free' (rows of any norm, rescaled ranking, AuxK on the rescaled codes) and
    SAELens's gradient clipping: still equal to float64 rounding."""
    torch.manual_seed(0)
    sae = cls(16, 64, k=4).double()
    sae.init_(torch.zeros(16, dtype=torch.float64), torch.Generator().manual_seed(1))
    module, ref_module = _free(sae)
    fast = FastStep(module, 1e-2, (0.9, 0.999), 1e-8, aux_coefficient=0.5, grad_clip=clip)
    ref = ReferenceStep(ref_module, 1e-2, (0.9, 0.999), 1e-8, aux_coefficient=0.5, grad_clip=clip)
    assert FastStep.applies(module)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[torch.randperm(64)[:n_dead]] = True
    _agree(module, fast, ref_module, ref, coef=0.0, dead=dead)
    assert not torch.allclose(module.W_dec.norm(dim=1), torch.ones(64, dtype=torch.float64))  # left free


@pytest.mark.parametrize("clip", [None, 0.05])
def test_fast_jumprelu_and_relu_steps_match_with_clipping_and_a_free_decoder(clip):
    sae = JumpReLUSAE(16, 64, bandwidth=0.5, init_threshold=0.3, threshold_lr_scale=5.0).double()
    sae.init_(torch.zeros(16, dtype=torch.float64), torch.Generator().manual_seed(1))
    module, ref_module = _free(sae)
    _agree(module, FastStep(module, 1e-2, (0.9, 0.999), 1e-8, 0.0, grad_clip=clip), ref_module,
           ReferenceStep(ref_module, 1e-2, (0.9, 0.999), 1e-8, 0.0, grad_clip=clip), coef=3.0,
           dead=torch.zeros(64, dtype=torch.bool))
    module, fast, ref_module, ref = _pair(ReLUSAE(16, 64).double(), aux=0.0)
    fast.clip = ref.clip = clip
    _agree(module, fast, ref_module, ref, coef=5.0, dead=torch.zeros(64, dtype=torch.bool))


@pytest.mark.parametrize(("shift", "count"), [(0.0, 500), (-2.5, 500), (-4.0, 500), (0.0, 40000)])
def test_top_positive_keeps_what_topk_keeps(shift, count):
    """BatchTopK's cut by a guessed threshold equals topk's (less zeros), also when the first guess
    leaves too few candidates or fewer than `count` entries are positive."""
    from interplab.decompose.fast import top_positive

    flat = torch.randn(200 * 300, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + shift
    got = top_positive(flat, count)
    ref = flat.clamp_min(0).topk(count)
    assert set(got.indices.tolist()) == set(ref.indices[ref.values > 0].tolist())
    assert torch.equal(flat[got.indices], got.values)


def test_fast_path_is_taken_only_where_it_applies():
    assert FastStep.applies(TopKSAE(4, 8, 2)) and FastStep.applies(BatchTopKSAE(4, 8, 2))
    assert FastStep.applies(ReLUSAE(4, 8)) and FastStep.applies(JumpReLUSAE(4, 8))
    assert not FastStep.applies(JumpReLUSAE(4, 8, sparsity="tanh"))  # the tanh penalty: autograd
    assert FastStep.applies(TopKSAE(4, 8, 2, rescale_acts_by_decoder_norm=True))  # decoder_norm='free'
    rescaled = ReLUSAE(4, 8)
    rescaled.rescale_acts_by_decoder_norm = True
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
    thresholds = {"sae-batchtopk": "threshold", "sae-jumprelu": "log_threshold"}.get(name)
    if thresholds:  # BatchTopK's EMA buffer, JumpReLU's trained log thresholds
        assert torch.equal(getattr(resumed.codec_, thresholds), getattr(whole.codec_, thresholds)), thresholds
    assert whole.codec_.state_dict().keys() == set(WEIGHTS) | ({thresholds} if thresholds else set())
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


def test_checkpoint_of_the_other_step_is_refused(tmp_path, monkeypatch):
    """FastStep (CPU, fast=True) and ReferenceStep (any other device) save different tensors: a run
    resumed on the other step is refused in one line that says what to do, both ways round."""
    x = planted(1000, seed=6)
    sae = D.create("sae-topk", k=4, width=32, steps=6, batch_size=100)
    train_sae(sae, x, {"checkpoint_every": 2}, tmp_path / "fast", stop_after=3)
    with monkeypatch.context() as m:  # the reference step, as off the CPU
        m.setattr(FastStep, "applies", staticmethod(lambda module: False))
        with pytest.raises(UserError, match=r"different run \(step differ\); it was trained by FastStep and this "
                                            r"run takes ReferenceStep .*resume on the device it started on"):
            train_sae(D.create("sae-topk", k=4, width=32, steps=6, batch_size=100), x, None, tmp_path / "fast")
        train_sae(D.create("sae-topk", k=4, width=32, steps=6, batch_size=100), x, {"checkpoint_every": 2},
                  tmp_path / "ref", stop_after=3)
    with pytest.raises(UserError, match=r"trained by ReferenceStep and this run takes FastStep"):
        train_sae(D.create("sae-topk", k=4, width=32, steps=6, batch_size=100), x, None, tmp_path / "ref")


def test_checkpoint_without_a_recorded_step_still_resumes(tmp_path):
    """Checkpoints written before the step class joined the identity: the tensors tell which it was."""
    import json

    x = planted(1000, seed=6)
    settings = {"k": 4, "width": 32, "steps": 6, "batch_size": 100}
    whole = train_sae(D.create("sae-topk", **settings), x)
    train_sae(D.create("sae-topk", **settings), x, {"checkpoint_every": 2}, tmp_path, stop_after=3)
    info = next(tmp_path.glob("step_*.json"))
    meta = json.loads(info.read_text())
    del meta["identity"]["step"]
    info.write_text(json.dumps(meta))
    resumed = train_sae(D.create("sae-topk", **settings), x, {"checkpoint_every": 2}, tmp_path)
    assert all(torch.equal(getattr(resumed.codec_, n), getattr(whole.codec_, n)) for n in WEIGHTS)
    with pytest.raises(UserError, match="trained by FastStep"):
        train_sae(D.create("sae-topk", **settings), x, {"fast": False}, tmp_path)


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


@pytest.mark.parametrize("cls", [ReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE])
def test_folding_the_decoder_norm_leaves_outputs_unchanged(cls):
    """Exact where it is used: TopK and BatchTopK ranking pre·||W_dec,i|| (decoder_norm='free'),
    ReLU and JumpReLU as they are (positively homogeneous)."""
    rescale = cls in (TopKSAE, BatchTopKSAE)
    args = (8, 24) if cls in (ReLUSAE, JumpReLUSAE) else (8, 24, 3)
    sae = cls(*args)
    sae.init_(torch.randn(8), torch.Generator().manual_seed(0))
    sae.rescale_acts_by_decoder_norm = rescale
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.W_dec *= 0.2 + 3 * torch.rand(24, 1)
        if cls is JumpReLUSAE:
            sae.log_threshold.uniform_(-3, 0)
        if cls is BatchTopKSAE:
            sae.threshold.fill_(0.1)
    sae.eval()
    x = torch.randn(50, 8) * 3
    before = sae(x)
    sae.fold_decoder_norm_()
    after = sae(x)
    assert not sae.rescale_acts_by_decoder_norm
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(24), atol=1e-6)
    assert torch.allclose(after.recon, before.recon, rtol=1e-5, atol=1e-4)
    assert torch.equal(after.codes != 0, before.codes != 0)


@pytest.mark.parametrize("name", ["sae-topk", "sae-batchtopk", "sae-jumprelu"])
def test_a_free_decoder_norm_trains_and_saves_unit_rows(name, tmp_path):
    """decoder_norm='free' trains with rows of any norm and saves an SAE with unit rows that
    encodes as the trained one did (checked through save and load)."""
    x = planted(2000, seed=8)
    dec = train_sae(D.create(name, k=4, width=32, steps=30, batch_size=200), x, {"decoder_norm": "free"})
    assert torch.allclose(dec.components_.norm(dim=1), torch.ones(32), atol=1e-5)
    assert not dec.codec_.rescale_acts_by_decoder_norm
    assert float(dec.forward(x).fvu) < 0.9
    dec.save(tmp_path / "sae")
    back = D.load(tmp_path / "sae")
    assert torch.allclose(back.forward(x).recon, dec.forward(x).recon, atol=1e-5)


def test_a_free_norm_relu_sae_saves_unit_rows_and_reconstructs_the_same(tmp_path, monkeypatch):
    """sae-relu trains with a free decoder norm (its default, the L1 weighs it); at the end the norms
    are folded into the encoder: the saved rows are unit, the reconstruction is the trained SAE's, and
    each code is the trained code times its row's norm."""
    trained = {}
    fold = ReLUSAE.fold_decoder_norm_

    def keep_then_fold(self):
        trained["sae"] = copy.deepcopy(self).eval()
        fold(self)

    monkeypatch.setattr(ReLUSAE, "fold_decoder_norm_", keep_then_fold)
    x = planted(2000, seed=8)
    dec = train_sae(D.create("sae-relu", k=4, width=32, steps=60, batch_size=200), x)
    before = trained["sae"]  # the trained SAE, on raw inputs, its rows free
    norms = before.W_dec.norm(dim=1).detach()  # (32,)
    assert not torch.allclose(norms, torch.ones(32), atol=1e-2)
    dec.save(tmp_path / "sae")
    back = D.load(tmp_path / "sae")
    assert torch.allclose(back.components_.norm(dim=1), torch.ones(32), atol=1e-5)
    with torch.no_grad():
        ref, out = before(x), back.forward(x)
    assert torch.allclose(out.recon, ref.recon, rtol=1e-5, atol=1e-5)
    assert torch.allclose(out.codes, ref.codes * norms, rtol=1e-4, atol=1e-6)


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


# --- the estimate before a long run -------------------------------------------------------------------
def test_a_long_run_prints_its_estimate_first(monkeypatch):
    """After a few timed steps, a run whose rest would take longer than LONG_RUN_SECONDS says so
    (and what would be faster); a short one says nothing. The estimate's value is not checked."""
    said: list[str] = []
    monkeypatch.setattr("interplab.decompose.timing.ui.info", said.append)
    x = planted(1000, seed=10)
    monkeypatch.setattr("interplab.decompose.timing.LONG_RUN_SECONDS", 1e9)
    train_sae(D.create("sae-topk", k=4, width=32, steps=12, batch_size=100), x)
    assert said == []
    monkeypatch.setattr("interplab.decompose.timing.LONG_RUN_SECONDS", 0.0)
    train_sae(D.create("sae-topk", k=4, width=32, steps=12, batch_size=100), x)
    assert len(said) == 1
    assert "train sae-topk: estimated" in said[0] and "remaining 8 steps" in said[0]
    assert "--set device=cuda" in said[0] and "torchrun" in said[0]
