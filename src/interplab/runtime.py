"""Process-wide compute settings that several layers share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch ops, and numpy/scipy BLAS (scikit-learn's FastICA, PCA), on one thread inside the
    block (usable as a decorator too).

    Training steps of toy models are many ops on small tensors, where intra-op threads gain
    little, and when the cores are shared with other processes OpenMP's spinning threads slow
    each op down many times over (measured: 1000 TMS steps 8 s on one thread, 81 s on two;
    FastICA of 8192 x 64, 1.3 s on one BLAS thread, 4.2 s on two).
    """
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def device(name: str) -> torch.device:
    """The torch device called `name` ("cpu", "cuda", "cuda:1", "mps"), refused with a clear
    message when it does not exist on this machine."""
    from interplab.errors import UserError

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"'{name}' is not a device name; use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"device '{name}' is not available on this machine (torch sees "
                        f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} CUDA GPUs); use device=cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{name}' is not available on this machine; use device=cpu")
    return dev
