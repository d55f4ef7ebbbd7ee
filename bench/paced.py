"""Interleaved timing for the SAE training benches: interplab and its peers take turns, block by block.

On a machine shared with other jobs, the load changes from minute to minute, so two trainers timed
one after the other can see very different machines. Here they alternate: interplab trains a block
of steps (in this process, through the ordinary `train_sae` loop), then each peer trains the same
block of steps (in its own process, in the `.bench-peers` environment), then interplab again, and so
on. Every side's time is the sum of its own blocks, so each sees the same mix of load.

Nothing in the trainers changes: the pause points live in the data. interplab reads its batches
from a `PacedStream`, which hands over to the peers before every block's first batch; a peer's
batch generator (`PeerPacer.batches`) waits for its turn the same way. Only stdlib and torch are
imported here, so the peer side (which must not import interplab) can use it too.

    parent:  peers = [Peer(script, folder, "--saelens-side")]; stream = PacedStream(inner, peers, block, skip)
             train_sae(module, stream, cfg); finish_blocks(peers, stream); result = peers[0].finish()
    peer:    pacer = PeerPacer.from_argv(); for x in pacer.batches(make_batch, steps): ...; pacer.done(result)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch


class Peer:
    """A peer trainer in a subprocess that runs one block of steps each time it is told to."""

    def __init__(self, python: Path, script: str, folder: Path, flag: str, log: Path | None = None):
        read, write = os.pipe()
        out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in finish
        self._log = out if log else None
        self.proc = subprocess.Popen([str(python), script, flag, str(folder), str(write)], stdin=subprocess.PIPE,
                                     stdout=out, stderr=out, pass_fds=(write,), text=True)
        os.close(write)
        self._replies = os.fdopen(read, "r")
        self.folder, self.seconds, self.blocks = folder, 0.0, 0

    def _reply(self) -> str:
        line = self._replies.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"the peer process ended (exit code {code}); its log: {self._log.name if self._log else '-'}")
        return line.strip()

    def run_block(self) -> float:
        """Let the peer train its next block; returns that block's seconds (also added to `seconds`)."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        seconds = float(self._reply())
        self.seconds += seconds
        self.blocks += 1
        return seconds

    def finish(self) -> dict[str, Any]:
        """Tell the peer to evaluate and save; its result.json, with `seconds` the sum of its blocks."""
        self.proc.stdin.write("finish\n")
        self.proc.stdin.flush()
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            raise RuntimeError(f"the peer process failed; its log: {self._log.name if self._log else '-'}")
        if self._log:
            self._log.close()
        out = json.loads((self.folder / "result.json").read_text())
        return {**out, "seconds": self.seconds}


class PeerPacer:
    """The peer's side: wait for "go", train a block, report its seconds, repeat."""

    def __init__(self, folder: Path, fd: int, block: int):
        self.folder, self.block = folder, block
        self._out = os.fdopen(fd, "w")
        self._t0 = 0.0

    @classmethod
    def from_argv(cls) -> PeerPacer:
        folder, fd = Path(sys.argv[2]), int(sys.argv[3])
        job = json.loads((folder / "job.json").read_text())
        return cls(folder, fd, job["block"])

    def job(self) -> dict[str, Any]:
        return json.loads((self.folder / "job.json").read_text())

    def _wait(self) -> None:
        command = sys.stdin.readline().strip()
        if command != "go":
            raise SystemExit(f"expected 'go', got {command!r}")
        self._t0 = time.perf_counter()

    def _report(self) -> None:
        self._out.write(f"{time.perf_counter() - self._t0!r}\n")
        self._out.flush()

    def batches(self, make: Callable[[int], torch.Tensor], steps: int) -> Iterator[torch.Tensor]:
        """Batch i = make(i) for i < steps, pausing before every block; call `end_blocks` after the
        trainer has taken the last one and finished its step."""
        self._wait()
        for i in range(steps):
            if i and i % self.block == 0:
                self._report()
                self._wait()
            yield make(i)

    def end_blocks(self) -> None:
        """The last block ends when the trainer returns."""
        self._report()

    def step_blocks(self, step: Callable[[int], None], steps: int) -> None:
        """For a peer whose loop is written here: step(i) for every i, in paced blocks."""
        for i, _ in enumerate(self.batches(lambda i: torch.empty(0), steps)):
            step(i)
        self.end_blocks()

    def done(self, result: dict[str, Any]) -> None:
        command = sys.stdin.readline().strip()
        if command != "finish":
            raise SystemExit(f"expected 'finish', got {command!r}")
        (self.folder / "result.json").write_text(json.dumps(result))


class PacedStream:
    """interplab's side: a training Stream that lets every peer run a block before each of its own
    blocks after the first. The first `skip` calls (the scale estimate) are not training steps."""

    def __init__(self, inner: Any, peers: list[Peer], block: int, skip: int):
        self.inner, self.peers, self.block, self.skip = inner, peers, block, skip
        self.batch_size, self.d_in = inner.batch_size, inner.d_in
        self.steps_per_epoch = inner.steps_per_epoch
        self.calls, self.paused, self.started = 0, 0.0, None

    def batch(self, i: int) -> torch.Tensor | None:
        t = self.calls - self.skip  # training steps served so far
        self.calls += 1
        if t == 0:
            self.started = time.perf_counter()
        elif t > 0 and t % self.block == 0:
            self.hand_over()
        return self.inner.batch(i)

    def hand_over(self) -> None:
        t = time.perf_counter()
        for peer in self.peers:
            peer.run_block()
        self.paused += time.perf_counter() - t

    def seconds(self, end: float) -> float:
        """interplab's own time: from its first training batch to `end`, less the peers' turns."""
        return end - self.started - self.paused


def run_interleaved(train: Callable[[PacedStream], Any], stream: PacedStream) -> tuple[Any, float]:
    """Train interplab on `stream`, then let the peers run their last block; interplab's seconds."""
    out = train(stream)
    seconds = stream.seconds(time.perf_counter())
    stream.hand_over()
    return out, seconds
