"""Process-wide compute settings that several layers share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch ops on one thread inside the block (usable as a decorator too).

    Training steps of toy models are many ops on small tensors, where intra-op threads gain
    little, and when the cores are shared with other processes OpenMP's spinning threads slow
    each op down many times over (measured: 1000 TMS steps 8 s on one thread, 81 s on two).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
