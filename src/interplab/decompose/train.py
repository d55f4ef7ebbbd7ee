"""The SAE trainer: resumable, normalising, and fast on a CPU.

    sae = train_sae("sae-topk", acts, TrainConfig(steps=300))          # a fitted decomposer
    module = train_sae(TopKSAE(576, 4608, 32), store, cfg, "ckpt/")   # a module, its weights as start

Data come from a tensor, an ActivationStore or any iterable of batches (`streams.py`); batch i is a
function of (seed, i), so a checkpoint (every `checkpoint_every` steps: safetensors for weights,
Adam state and counters, then a JSON that commits it) lets a killed run resume to bit-identical
final weights. Inputs are scaled so that E||x||^2 = d_in (estimated on the first batches) and the
scale is folded back into the biases at the end, so the result acts on raw activations. Adam's
learning rate warms up linearly and decays linearly to zero over the last `decay` of the steps
(SAELens's "constant" schedule with warm-up and decay steps). A latent is dead after
`dead_tokens` tokens without firing; AuxK then trains the dead ones on the residual. TopK, BatchTopK,
JumpReLU (L0 penalty) and ReLU SAEs take the fast step of `fast.py` on the CPU, anything else (and
every architecture off the CPU, or with `fast=False`) the autograd `ReferenceStep` (`steps.py`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from pydantic import Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from interplab import ui
from interplab.config import Config
from interplab.decompose.base import create
from interplab.parallel import World
from interplab.decompose.sae import SAE, BatchTopKSAE, SAEDecomposer, TopKSAE
from interplab.decompose.fast import FastStep
from interplab.decompose.steps import ReferenceStep
from interplab.decompose.timing import RunEstimate
from interplab.decompose.streams import Stream, generator, make_stream
from interplab.errors import UserError
from interplab.runtime import device

FORMAT = "interplab-sae-checkpoint/1"


class TrainConfig(Config):
    """How an SAE is trained; the architecture (width, k, ...) lives in the decomposer's settings."""

    steps: int | None = Field(default=None, ge=1)
    """Optimizer steps (None: `epochs` passes over a tensor or store, one pass over an iterable)."""
    epochs: float = Field(default=10.0, gt=0)
    """Passes over a tensor or store when `steps` is None."""
    batch_size: int = Field(default=4096, ge=2)
    """Tokens per step from a tensor or store (an iterable's batches are used as they come)."""
    lr: float | None = Field(default=None, gt=0)
    """Adam learning rate (None: 2e-4 / sqrt(width / 2^14), Gao et al.'s fitted rule, at most 1e-2)."""
    adam_beta1: float = Field(default=0.9, ge=0, lt=1)
    """Adam's first-moment decay."""
    adam_beta2: float = Field(default=0.999, ge=0, lt=1)
    """Adam's second-moment decay."""
    adam_eps: float = Field(default=1e-8, gt=0)
    """Adam's epsilon."""
    warmup: float = Field(default=0.0, ge=0, le=1)
    """Fraction of the steps over which the learning rate rises linearly from lr/W to lr (W steps)."""
    decay: float = Field(default=0.2, ge=0, le=1)
    """Fraction of the steps, at the end, over which the learning rate falls linearly to lr/D at the
    last step. Warm-up and decay need a known number of steps; an iterable without `steps` gets neither."""
    decoder_norm: Literal["unit", "free"] | None = None
    """'unit': decoder rows held at norm 1, the gradient along each row removed (Gao et al.,
    sparsify); 'free': rows of any norm, TopK and BatchTopK ranking pre-activations times the row
    norm (SAELens's `rescale_acts_by_decoder_norm`), folded into the encoder at the end so the saved
    rows are unit (a ReLU code then comes out times its row's norm, what its L1 weighed); None:
    the architecture's default (`SAE.default_decoder_norm`: free for ReLU, whose L1 it weights;
    unit for TopK, BatchTopK and JumpReLU)."""
    grad_clip: float | None = Field(default=None, gt=0)
    """Clip the gradient's global norm at this, in SAELens's units (the gradient of the per-token
    summed squared error on normalised inputs), before Adam; SAELens clips at 1. None: no clipping."""
    aux_coefficient: float = Field(default=1 / 32, ge=0)
    """Weight of the AuxK loss (TopK, BatchTopK) that trains dead latents on the residual."""
    dead_tokens: int | None = Field(default=None, ge=1)
    """A latent is dead after this many tokens without firing (None: a tenth of the run, at least
    10 batches, at most 10M tokens)."""
    sparsity_coefficient: float = Field(default=0.0, ge=0)
    """Weight of the sparsity penalty (ReLU: L1, JumpReLU: L0 or tanh), in SSE units."""
    sparsity_warmup: float = Field(default=0.05, ge=0, le=1)
    """Fraction of the steps over which the sparsity coefficient ramps up linearly from 0."""
    target_l0: float | None = Field(default=None, gt=0)
    """Steer the sparsity coefficient until the mean L0 reaches this (None: keep it fixed)."""
    normalize: bool = True
    """Scale inputs so that E||x||^2 = d_in during training; the scale is folded back at the end."""
    norm_batches: int = Field(default=8, ge=1)
    """Batches from the start of the stream that estimate the scale (and the mean that b_dec starts at)."""
    seed: int = 0
    """Seed of the initialisation and of the data order."""
    checkpoint_every: int = Field(default=1000, ge=1)
    """Steps between checkpoints, when a checkpoint folder is given."""
    fast: bool = True
    """Use the sparse hand-written step where one exists (False: autograd, for checking)."""
    threads: int | None = Field(default=None, ge=1)
    """torch threads while training (None: leave torch's setting). On a machine whose cores are
    busy with other work, 1 avoids OpenMP threads waiting on each other."""
    log_every: int = Field(default=10, ge=1)
    """Steps between updates of the progress line (FVU, L0, dead fraction)."""
    device: str = "cpu"
    """Where the steps run ("cpu", "cuda", "cuda:N", "mps"). Off the CPU every architecture takes the
    autograd step (the fast TopK step is built for CPU sparse kernels); the trained SAE comes back
    on the CPU. Resuming is bit-identical on the CPU only (GPU kernels need not be deterministic)."""


def lr_scale(step: int, total: int | None, warmup: float, decay: float) -> float:
    """Multiplier of the base learning rate for 0-based `step` of `total`."""
    if total is None:
        return 1.0
    f = 1.0
    w, d = round(warmup * total), round(decay * total)
    if w > 1 and step < w:
        f = 1 / w + (1 - 1 / w) * step / (w - 1)  # 1/W at step 0, 1 at step W-1 (as SAELens)
    if d > 0 and step >= total - d:
        f *= (total - step) / d  # 1 at step T-D, 1/D at the last step
    return f


def default_dead_tokens(batch_size: int, steps: int | None) -> int:
    """TrainConfig.dead_tokens when it is None: a tenth of the run's tokens, at least 10 batches, at
    most 10M tokens (a run of unknown length counts as 10^8 tokens)."""
    run_tokens = steps * batch_size if steps else 10**8
    return int(min(10_000_000, max(10 * batch_size, run_tokens // 10)))


def steer(coef: float, l0: float, k: float) -> float:
    """One step of the matched-budget controller: a gentle multiplicative correction (at most 2%
    a step), because L0 answers the coefficient with a lag and a stronger gain oscillates."""
    return coef * math.exp(max(-0.02, min(0.02, 0.01 * math.log(max(l0, 1e-3) / k))))


@contextlib.contextmanager
def _torch_settings(threads: int | None) -> Iterator[None]:
    """Full float32 matmul precision (no reduced-precision shortcuts) and the thread count, restored after."""
    precision, before = torch.get_float32_matmul_precision(), torch.get_num_threads()
    torch.set_float32_matmul_precision("highest")
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.set_num_threads(before)


class InputScale(NamedTuple):
    scale: float  # sqrt(d_in / E||x||^2): inputs times this have E||x||^2 = d_in
    mean: torch.Tensor  # (d_in,) mean of the raw inputs, where b_dec starts (times scale)


def input_scale(stream: Stream, n_batches: int) -> InputScale:
    """The scale and mean over the first `n_batches` batches, accumulated in float64."""
    sq, rows, total = 0.0, 0, torch.zeros(stream.d_in, dtype=torch.float64)
    for i in range(n_batches):
        x = stream.batch(i)
        if x is None:
            break
        x64 = x.double()  # (n, d)
        sq += float(x64.pow(2).sum())
        total += x64.sum(0)
        rows += x.shape[0]
    scale = math.sqrt(stream.d_in * rows / sq) if sq > 0 else 1.0
    return InputScale(scale, (total / max(rows, 1)).float())


# --- checkpoints ------------------------------------------------------------------------------------
def save_checkpoint(folder: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """step_N.safetensors, then step_N.json (the commit), each written under a temporary name and
    renamed; older checkpoints are removed only after the new one is complete."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"step_{step:09d}"
    weights, info = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    tmp = weights.with_name(weights.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"step": str(step)})
    os.replace(tmp, weights)
    tmp = info.with_name(info.name + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "step": step, **meta}, indent=1))
    os.replace(tmp, info)
    for old in folder.glob("step_*"):
        if not old.name.startswith(stem):
            old.unlink(missing_ok=True)


class Checkpoint(NamedTuple):
    meta: dict[str, Any]  # step, counters, the run's identity
    tensors: dict[str, torch.Tensor]  # weights, Adam state, `since`, torch's RNG state


def load_checkpoint(folder: Path) -> Checkpoint | None:
    """The newest complete checkpoint in `folder` (JSON and matching safetensors), or None."""
    for info in sorted(folder.glob("step_*.json"), reverse=True):
        try:
            meta = json.loads(info.read_text())
            tensors = load_file(str(info.with_suffix(".safetensors")))
        except (OSError, ValueError, SafetensorError):
            continue
        if meta.get("format") == FORMAT and tensors and meta.get("step") == int(_step_of(info)):
            return Checkpoint(meta, tensors)
    return None


def _step_of(path: Path) -> str:
    return path.stem.removeprefix("step_")


# --- the loop ---------------------------------------------------------------------------------------
@dataclass
class _Loop:
    step: int
    coef: float
    ema_l0: float
    since: torch.Tensor  # (d_sae,) tokens since each latent last fired


def _identity(module: SAE, cfg: TrainConfig, scale: float, step: str) -> dict[str, Any]:
    """What must match for a checkpoint to continue this run (settings that change no number are left out).
    `step` is the step class: FastStep and ReferenceStep save different tensors (the encoder
    transposed or not, Adam's state per parameter), and which one runs depends on the device too."""
    c = cfg.model_dump(mode="json", exclude={"checkpoint_every", "threads", "log_every", "device"})
    return {"module": type(module).__name__, "d_in": module.d_in, "d_sae": module.d_sae, "k": module.k,
            "scale": scale, "step": step, "config": c}


def _resume(folder: Path, step_fn: Any, loop: _Loop, identity: dict[str, Any]) -> None:
    found = load_checkpoint(folder)
    if found is None:
        return
    meta, tensors = found
    theirs = dict(meta.get("identity") or {})
    if theirs and "step" not in theirs:  # written before the step was recorded: its tensors tell
        theirs["step"] = FastStep.__name__ if "param.W_encT" in tensors else ReferenceStep.__name__
    if theirs != identity:
        diff = [k for k in identity if theirs.get(k) != identity[k]]
        if "config" in diff:
            diff += [k for k, v in identity["config"].items() if theirs.get("config", {}).get(k) != v]
        todo = "use another checkpoint folder or delete this one"
        if "step" in diff:  # the device (or `fast`) changed: the other step cannot read these tensors
            todo = (f"it was trained by {theirs.get('step')} and this run takes {identity['step']} (FastStep: "
                    f"CPU with fast=True); resume on the device it started on, or {todo}")
        raise UserError(f"the checkpoint in {folder} belongs to a different run ({', '.join(diff)} differ); {todo}")
    step_fn.load_state(tensors)
    loop.step, loop.coef, loop.ema_l0 = meta["step"], meta["coef"], meta["ema_l0"]
    loop.since.copy_(tensors["since"])
    torch.set_rng_state(tensors["rng"])


def train(module: SAE, stream: Stream, cfg: TrainConfig, scale: float, checkpoint_dir: str | Path | None = None,
          label: str = "sae", stop_after: int | None = None, world: World | None = None) -> SAE:
    """Train `module`, whose weights are in the units of inputs × `scale`, on `stream` (inputs are
    multiplied by `scale` here). `stop_after` ends the run early after that many steps, as a kill
    would (for tests). Returns the module in eval mode, still in scaled units.

    Under torch.distributed (`world`, default: the current group) every rank reads the same global
    batch and trains on its slice; the steps reduce across ranks, so every rank ends with the same
    weights; rank 0 alone writes checkpoints and shows progress."""
    world = world or World.current()
    per_epoch = stream.steps_per_epoch
    total = cfg.steps or (max(1, math.ceil(cfg.epochs * per_epoch)) if per_epoch else None)
    lr = cfg.lr or min(1e-2, 2e-4 / math.sqrt(module.d_sae / 2**14))
    dead_tokens = cfg.dead_tokens or default_dead_tokens(stream.batch_size, total)
    dev = device(cfg.device)
    module.to(dev)
    on_cpu = dev.type == "cpu"
    kind = FastStep if cfg.fast and on_cpu and FastStep.applies(module) else ReferenceStep
    step_fn = kind(module, lr, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_eps, cfg.aux_coefficient, world,
                   cfg.grad_clip)
    loop = _Loop(0, cfg.sparsity_coefficient, 0.0, torch.zeros(module.d_sae, dtype=torch.long))
    identity = _identity(module, cfg, scale, kind.__name__)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None:
        _resume(folder, step_fn, loop, identity)
    warm = max(1.0, cfg.sparsity_warmup * (total or 1000))
    bar = ui.progress(f"train {label}", total) if world.main else contextlib.nullcontext(lambda *a, **k: None)
    estimate = RunEstimate(loop.step, total, label, cfg.device, world)
    with bar as advance:
        advance(loop.step)
        while total is None or loop.step < total:
            if stop_after is not None and loop.step >= stop_after:
                break
            x = stream.batch(loop.step)
            if x is None:
                break
            ramp = min(1.0, (loop.step + 1) / warm)
            dead_now = (loop.since >= dead_tokens).to(dev)  # (d_sae,)
            out = step_fn(world.split(x).to(dev) * scale, dead_now,
                          lr_scale(loop.step, total, cfg.warmup, cfg.decay), loop.coef * ramp)
            loop.since += x.shape[0]
            loop.since[out.fired.cpu()] = 0
            l0 = float(out.l0)
            loop.ema_l0 = l0 if loop.step == 0 else 0.9 * loop.ema_l0 + 0.1 * l0
            if cfg.target_l0 is not None and ramp >= 1.0:
                loop.coef = steer(loop.coef, loop.ema_l0, cfg.target_l0)
            loop.step += 1
            estimate.after_step(loop.step)
            if loop.step % cfg.log_every == 0 or loop.step == total:
                dead = float((loop.since >= dead_tokens).float().mean())
                advance(1, fvu=float(out.fvu), l0=l0, dead=dead)
            else:
                advance(1)
            if world.main and folder is not None and (loop.step % cfg.checkpoint_every == 0 or loop.step == total):
                state = step_fn.state() | {"since": loop.since, "rng": torch.get_rng_state()}
                meta = {"coef": loop.coef, "ema_l0": loop.ema_l0, "identity": identity}
                save_checkpoint(folder, loop.step, state, meta)
    step_fn.finish()
    return module.cpu()


# --- entry points -----------------------------------------------------------------------------------
def config_from_settings(dec: SAEDecomposer) -> TrainConfig:
    """The TrainConfig that a decomposer's settings imply."""
    s = dec.settings
    return TrainConfig(
        steps=s.steps, epochs=s.epochs, batch_size=max(2, s.batch_size), lr=s.lr, dead_tokens=s.dead_tokens,
        seed=s.seed, aux_coefficient=getattr(s, "aux_coefficient", 0.0),
        sparsity_coefficient=getattr(s, "sparsity_coefficient", 0.0),
        sparsity_warmup=getattr(s, "sparsity_warmup", 0.0),
        target_l0=s.k if dec.adapts_coefficient and s.k is not None else None, device=s.device,
    )


def _train_module(module: SAE, stream: Stream, cfg: TrainConfig, checkpoint_dir: str | Path | None,
                  stop_after: int | None, init: bool, label: str) -> SAE:
    if stream.d_in != module.d_in:
        raise UserError(f"the training data have {stream.d_in} features per row but the SAE expects "
                        f"d_in={module.d_in}; pass activations from the site it was built for")
    scale, mean = input_scale(stream, cfg.norm_batches)
    if not cfg.normalize:
        scale = 1.0
    if init:
        module.init_(mean * scale, generator(cfg.seed, -1))
    else:
        module.fold_scale_(1 / scale)  # the given weights act on raw inputs: express them in scaled units
    free = _set_decoder_norm(module, cfg.decoder_norm or module.default_decoder_norm)
    train(module, stream, cfg, scale, checkpoint_dir, label, stop_after)
    module.fold_scale_(scale)
    if free:
        module.fold_decoder_norm_()
    return module


def _set_decoder_norm(module: SAE, choice: str) -> bool:
    """Apply TrainConfig.decoder_norm to `module`; True when its norms are to be folded at the end."""
    module.unit_decoder = choice == "unit"
    if choice == "unit":
        return False
    module.rescale_acts_by_decoder_norm = isinstance(module, (TopKSAE, BatchTopKSAE))
    return True


def train_sae(sae: SAE | SAEDecomposer | str, data: Any, cfg: TrainConfig | dict[str, Any] | None = None,
              checkpoint_dir: str | Path | None = None, *, stop_after: int | None = None) -> SAE | SAEDecomposer:
    """Train an SAE on `data` (tensor, ActivationStore, (store, site), or iterable of batches).

    `sae` is a registered name (`"sae-topk"`, default settings), an unfitted SAE decomposer
    (initialised here; `cfg` defaults to what its settings imply, a dict overrides parts of it), or
    an SAE module whose current weights are the starting point. Returns the fitted decomposer, or
    the trained module in eval mode. With `checkpoint_dir`, an interrupted run resumes from there."""
    if isinstance(sae, str):
        sae = create(sae)
    if isinstance(sae, SAEDecomposer):
        base = config_from_settings(sae)
        cfg = base if cfg is None else base.with_overrides(cfg) if isinstance(cfg, dict) else cfg
    elif isinstance(sae, SAE):
        cfg = TrainConfig() if cfg is None else TrainConfig(**cfg) if isinstance(cfg, dict) else cfg
    else:
        raise UserError(f"train_sae takes an SAE name, an SAE decomposer or an SAE module, not {type(sae).__name__}")
    with _torch_settings(cfg.threads):
        stream = make_stream(data, cfg.batch_size, cfg.seed, keep=cfg.norm_batches)
        if isinstance(sae, SAE):
            return _train_module(sae, stream, cfg, checkpoint_dir, stop_after, init=False, label=type(sae).__name__)
        s = sae.settings
        width = s.width or 8 * stream.d_in
        if s.k is not None and s.k > width:
            raise UserError(f"{sae.name}: k={s.k} exceeds width={width}; lower k or widen the SAE")
        module = sae._module(stream.d_in, width)
        _train_module(module, stream, cfg, checkpoint_dir, stop_after, init=True, label=sae.name)
        sae.codec_ = module.eval()
        return sae
