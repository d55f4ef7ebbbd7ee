"""Settings of the `hypotheses` experiment (one module, so that its pipelines can share them)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from interplab.config import Config

TMS_SETUP: dict[str, Any] = {"n_features": 10, "n_hidden": 5, "variant": "neuron", "importance_decay": 0.75}
"""The neuron model of Toy Models of Superposition (10 features, 5 ReLU neurons, importance 0.75^i)."""


class HypothesesConfig(Config):
    """Settings of the `hypotheses` experiment."""

    tms_densities: list[float] = [1.0, 0.05]
    """Feature densities (1 - S) of the tms neuron models studied, one subject each."""
    tms_seeds: int = Field(6, ge=2)
    """Independently trained neuron models per density: the resampling unit of every tms verdict."""
    tms_steps: int = Field(10_000, ge=1)
    """Training steps of the neuron models (the dense one needs ~10k to become monosemantic)."""
    tms_batch_size: int = Field(1024, ge=1)
    """Training batch size of the neuron models."""
    tms_samples: int = Field(20_000, ge=100)
    """Inputs drawn per tms instance: E[x_i^2] for 1a, and the hidden activations the 2a test fits."""
    toy_sae_k: int = Field(1, ge=1)
    """Active latents per row of the 2a test on the 5-neuron hidden layer (and the PCA rank it faces)."""
    toy_sae_width: int = Field(4, ge=1)
    """Latents of that SAE, in multiples of the layer's width."""
    toy_sae_steps: int = Field(300, ge=1)
    """Optimizer steps of each toy SAE fit."""
    toy_sae_batch_size: int = Field(256, ge=1)
    """Rows per toy SAE step."""
    toy_control_density: float = Field(0.05, gt=0, le=1)
    """Firing probability of each of the 10 planted features of the toy 2a positive control (5 dims)."""
    synthetic: dict[str, Any] = {"n_features": 256, "d": 64, "mean_active": 4.0}
    """Settings of the `synthetic` subject, whose n/d and firing are harness checks."""
    synthetic_samples: int = Field(20_000, ge=100)
    """Samples of the synthetic subject for its firing harness check."""
    lm: bool = True
    """Include the real LM (SAE latents as a proxy for features)."""
    lm_name: str = "smollm2"
    """Registered LM subject."""
    lm_layer: int = Field(6, ge=0)
    """Layer of the LM sites (a middle layer of SmolLM2-135M's 30)."""
    lm_sites: list[str] = ["mlp_hidden", "resid_post"]
    """Site kinds studied at `lm_layer`."""
    lm_tokens: int = Field(24_000, ge=512)
    """Activations harvested per site; the last `eval_fraction` are held out."""
    eval_fraction: float = Field(0.25, gt=0, lt=1)
    """Held-out share of the rows of every SAE test (FVU is measured there), LM and toy alike."""
    sae_k: int = Field(16, ge=1)
    """Active latents per token of the LM sae-topk fits (the L0 at which PCA and widths are compared)."""
    sae_widths: list[int] = [1, 8]
    """LM dictionary widths in multiples of d: the last is the SAE of 1a/1b/basis/2a; with two or
    more, 2b-width compares the first (narrow) with the last (wide). One width skips 2b-width."""
    sae_refits: int = Field(5, ge=2)
    """SAE refits per kind (real, null) and width, with different seeds: the LM's resampling unit."""
    sae_steps: int = Field(1000, ge=1)
    """Optimizer steps of every LM SAE fit (real, null and controls alike)."""
    sae_batch_size: int = Field(1024, ge=1)
    """Tokens per LM SAE step."""
    control_features_per_dim: int = Field(4, ge=2)
    """Features of the LM controls' planted dictionary, in multiples of d (2b-width's positive: > 1)."""
    control_active: float = Field(8.0, gt=0)
    """Mean active features per row of the LM controls' planted activations."""
    block: int = Field(64, ge=1)
    """Consecutive held-out tokens per bootstrap block (tokens of one window are correlated)."""
    n_rotations: int = Field(30, ge=1)
    """Random rotations of the neuron basis averaged within each unit (basis crux, 1a/1b-frac nulls)."""
    n_boot: int = Field(1000, ge=100)
    """Bootstrap resamples of the held-out blocks (the sampling variance of the LM gaps)."""
    seed: int = 0
    """Seed of training, sampling, nulls and bootstraps."""

    @field_validator("sae_widths")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if not v or any(w < 1 for w in v):
            raise ValueError("sae_widths needs at least one positive multiple of d")
        return v
