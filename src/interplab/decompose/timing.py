"""The estimate before a long SAE training run: a few of its own steps timed, then, if the rest
would take long, one line saying how long and what would be faster (a GPU, or torchrun).

    train sae-topk: estimated 41 min for the remaining 11996 steps (0.21 s a step on cpu, timed on
    the first steps); faster: --set device=cuda (a GPU) or torchrun --nproc_per_node N (...)
"""

from __future__ import annotations

import time

from interplab import ui
from interplab.parallel import World

LONG_RUN_SECONDS = 120.0  # a run expected to take longer than this is announced with its estimate
ESTIMATE_STEPS = 3  # steps timed (after one warm-up step) for the estimate


class RunEstimate:
    """Times the first steps of a run (after one warm-up step, which pays for allocations) and,
    when the rest would take longer than LONG_RUN_SECONDS, says how long and what would be faster.
    The timed steps are the run's own: the estimate costs nothing."""

    def __init__(self, start: int, total: int | None, label: str, device: str, world: World):
        self.start, self.total, self.label, self.device, self.world = start, total, label, device, world
        self.t0: float | None = None
        self.done = total is None or not world.main

    def after_step(self, step: int) -> None:
        if self.done:
            return
        if step == self.start + 1:
            self.t0 = time.perf_counter()
        elif step == self.start + 1 + ESTIMATE_STEPS and self.t0 is not None and self.total is not None:
            self.done = True
            per_step = (time.perf_counter() - self.t0) / ESTIMATE_STEPS
            left = per_step * (self.total - step)
            if left > LONG_RUN_SECONDS:
                ui.info(self.message(per_step, left, self.total - step))

    def message(self, per_step: float, left: float, steps: int) -> str:
        where = f"{self.world.size} processes" if self.world.size > 1 else self.device
        faster = [] if self.device.startswith("cuda") else ["--set device=cuda (a GPU)"]
        faster.append("torchrun --nproc_per_node N (data-parallel processes, `interplab train-sae`)")
        return (f"train {self.label}: estimated {_duration(left)} for the remaining {steps} steps "
                f"({per_step:.2f} s a step on {where}, timed on the first steps); faster: {' or '.join(faster)}")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
