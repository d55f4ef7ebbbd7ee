"""Data parallelism on torch.distributed: SAE training (each rank a slice of every global batch) and
harvests (each rank a range of shards).

    torchrun --nproc_per_node 2 $(which interplab) train-sae STORE --site resid_post.6 --out my-sae

`World` is this process's place among the ranks (a world of one when torch.distributed is not
initialised, and then every method is free). The steps reduce what the batch defines globally — the
batch mean and total variance that FVU divides by, the residual's for AuxK, BatchTopK's cut over
the whole batch, the gradients, the fired latents — so N ranks compute the step one process would
on the whole batch, up to float32 summation order. torch's DistributedDataParallel wrapper would
only reduce gradients of autograd; the fast steps write their backward out, so they call
`all_reduce` themselves (one flat buffer per reduction), on gloo (CPU) or NCCL (GPU).
"""

from __future__ import annotations

import atexit
import os
import time
import weakref
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """Rank and size of the data-parallel group; World() is a single process."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints, results and progress."""
        return self.rank == 0

    @classmethod
    def current(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @classmethod
    def from_env(cls, device: str = "cpu") -> World:
        """Join the group torchrun describes in the environment (WORLD_SIZE > 1), else a world of one."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
            atexit.register(_leave)  # a rank that raised still tears gloo down before the interpreter does
            if device.startswith("cuda"):
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return cls.current()

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (n, d): rows [r n / N, (r + 1) n / N)."""
        if self.size == 1:
            return x
        n = x.shape[0]
        return x[self.rank * n // self.size:(self.rank + 1) * n // self.size]

    def sum_(self, *tensors: torch.Tensor) -> None:
        """All-reduce (sum) the tensors in place, as one flat buffer."""
        self._reduce(tensors, dist.ReduceOp.SUM)

    def max_(self, *tensors: torch.Tensor) -> None:
        self._reduce(tensors, dist.ReduceOp.MAX)

    def min_(self, *tensors: torch.Tensor) -> None:
        self._reduce(tensors, dist.ReduceOp.MIN)

    def _reduce(self, tensors: tuple[torch.Tensor, ...], op: dist.ReduceOp) -> None:
        if self.size == 1 or not tensors:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, op=op)
            pos = 0
            for t in group:
                t.copy_(flat[pos:pos + t.numel()].view_as(t))
                pos += t.numel()

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's 1-D tensor concatenated (ranks may hold different lengths)."""
        if self.size == 1:
            return t
        n = torch.tensor([t.numel()], dtype=torch.long, device=t.device)  # NCCL gathers GPU tensors only
        sizes = [torch.zeros_like(n) for _ in range(self.size)]
        dist.all_gather(sizes, n)
        longest = int(max(int(s) for s in sizes))
        padded = torch.cat([t, t.new_zeros(longest - t.numel())])
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:int(s)] for p, s in zip(parts, sizes, strict=True)])

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def close(self, timeout: float = 30.0) -> None:
        """Leave the group once every rank is done. gloo runs each collective on a worker thread that
        drops its tensors only after the caller has returned; if that happens while the interpreter
        is shutting down, the thread cannot take the GIL and the process aborts ("terminate called
        without an active exception"). So the last collective is on a probe tensor, and this waits
        until the worker has let go of it before tearing the group down."""
        if self.size > 1 and dist.is_initialized():
            probe = torch.zeros(1)
            held = weakref.ref(probe)
            dist.all_reduce(probe)  # also the barrier: every rank has finished its own work
            del probe
            deadline = time.monotonic() + timeout
            while held() is not None and time.monotonic() < deadline:
                time.sleep(0.001)
        _leave()


def _leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def batch_moments(x: torch.Tensor, world: World) -> tuple[torch.Tensor, int]:
    """Total variance sum_t ||x_t - mean||^2 of the global batch and its row count, from this rank's rows.

    A world of one computes it exactly as `batch_fvu` does; N ranks reduce the sums and the count first.
    """
    if world.size == 1:
        return (x - x.mean(0)).pow(2).sum(), x.shape[0]
    s = torch.cat([x.sum(0), x.new_tensor([x.shape[0]])])  # (d + 1,)
    world.sum_(s)
    n = int(s[-1].item())
    total = (x - s[:-1] / n).pow(2).sum().reshape(1)  # (1,)
    world.sum_(total)
    return total[0], n
