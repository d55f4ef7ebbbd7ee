"""Shared fixtures: language-model subjects (built once per session) and throwaway caches and texts.

The SmolLM2 conversion (about 35 s) happens once into the real user cache and is reused by later
runs, so `smollm2` deliberately does not redirect INTERPLAB_CACHE; `tmp_cache` does, for tests that
write entries nobody should keep (corpora of temporary folders).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from interplab import ui
from interplab.runtime import single_thread

PARAGRAPHS = [
    "The river ran slowly past the mill, carrying leaves and small branches toward the sea.",
    "In the spring the farmers planted wheat and barley, and in the autumn they brought in the harvest.",
    "She opened the window, looked at the grey sky and decided to take an umbrella to work.",
    "A good map shows the roads, the rivers and the towns, and it tells you how far apart they are.",
]


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M subject on the stdlib text (converted on first use, then 0.3 s)."""
    from interplab.subjects import load_subject

    return load_subject("smollm2", seq_len=16)


@pytest.fixture(scope="session")
def text_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of a few small .txt files (plus a .md that must be ignored)."""
    folder = tmp_path_factory.mktemp("texts")
    for i, para in enumerate(PARAGRAPHS):
        (folder / f"{i:02d}.txt").write_text((para + "\n") * 40)
    (folder / "notes.md").write_text("not text: ignored")
    return folder


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the user cache at a temporary folder for the duration of one test."""
    monkeypatch.setenv("INTERPLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def quiet_single_thread():
    """No progress bars and one torch thread: small tensors on a busy 2-core machine, where two
    OpenMP threads wait on each other (10x slower matmuls were measured)."""
    was = ui.is_quiet()
    ui.set_quiet(True)
    with single_thread():
        yield
    ui.set_quiet(was)
