"""The chartf subject: vocabulary, deterministic cached training, loss below the unigram baseline, sites."""

from __future__ import annotations

import torch

from interplab.subjects import load_subject
from interplab.subjects.chartf import (
    VOCAB,
    CharTFConfig,
    decode_chars,
    encode_chars,
    model_hash,
    train_chartf,
)

TINY = {"d_model": 32, "n_heads": 2, "d_mlp": 64, "context": 8, "steps": 150, "batch_size": 32, "lr": 1e-2}


def test_vocabulary_maps_every_character(quiet_single_thread):
    assert len(VOCAB) == 64 and len(set(VOCAB)) == 64
    ids = encode_chars("Hello,\n\t world 42!  é")
    assert decode_chars(ids) == "Hello. world 42. ."
    assert int(ids.max()) < 64


def test_training_beats_unigram_and_is_cached(tmp_cache, text_folder, quiet_single_thread):
    cfg = CharTFConfig(n_layers=1, text=str(text_folder), max_chars=10_000, **TINY)
    model = train_chartf(cfg)
    assert model.test_loss.item() < model.unigram_loss.item() - 0.3  # well below the unigram baseline
    again = train_chartf(cfg)  # from the cache
    assert model_hash(again) == model_hash(model)
    assert len(list((tmp_cache / "chartf").iterdir())) == 1


def test_training_is_deterministic(tmp_cache, text_folder, quiet_single_thread):
    from interplab.subjects import chartf

    cfg = CharTFConfig(n_layers=2, text=str(text_folder), max_chars=10_000, **{**TINY, "steps": 20})
    ids = chartf.load_chars(cfg)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    a = chartf._fit(cfg, ids)
    assert torch.equal(torch.rand(3), expected)  # the caller's global RNG is neither reseeded nor advanced
    torch.manual_seed(99)  # and the weights do not depend on it
    b = chartf._fit(cfg, ids)
    assert model_hash(a) == model_hash(b)


def test_subject_has_canonical_sites_and_onehot_path(tmp_cache, text_folder, quiet_single_thread):
    subject = load_subject("chartf", n_layers=2, text=str(text_folder), max_chars=10_000, **{**TINY, "steps": 5})
    for site in ("resid_post.0", "attn_out.1", "mlp_out.1", "mlp_hidden.1", "final"):
        assert site in subject.sites
    x = subject.sample(4, torch.Generator().manual_seed(0))  # (4, context)
    assert x.shape == (4, 8) and torch.isfinite(subject.loss(x))
    model = subject.model
    onehot = torch.nn.functional.one_hot(x, len(VOCAB)).float()  # (4, 8, V)
    torch.testing.assert_close(model.forward_onehot(onehot), model(x))
