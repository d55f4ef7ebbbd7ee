"""Decompositions of activations, all behind one scikit-learn style interface.

    dec = interplab.decompose.create("sae-topk", k=32, width=4608).fit(acts)   # (n, d) or batches
    codes = dec.transform(acts)                  # (n, n_components)
    recon = dec.inverse_transform(codes)         # (n, d)
    dec.save("out/sae")                          # SAELens folder: cfg.json + sae_weights.safetensors
    same = interplab.decompose.load("out/sae")   # also reads folders written by SAELens

Registered methods: identity, random, pca, ica (linear, sparsified to a budget k by rank or by
sign-split top-k) and sae-relu, sae-topk, sae-batchtopk, sae-jumprelu.
"""

from interplab.decompose import linear, sae  # noqa: F401  (registers the methods)
from interplab.decompose.base import DECOMPOSITIONS, Decomposer, Settings, create, load
from interplab.decompose.saelens import ARCHITECTURES, Codec, ForwardOutput

__all__ = [
    "ARCHITECTURES",
    "DECOMPOSITIONS",
    "Codec",
    "Decomposer",
    "ForwardOutput",
    "Settings",
    "create",
    "load",
]
