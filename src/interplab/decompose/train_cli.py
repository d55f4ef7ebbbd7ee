"""`interplab train-sae`: train one SAE on one site of an activation store and save it as SAELens does.

    interplab harvest smollm2 --site resid_post.6 --tokens 1000000 --out acts
    interplab train-sae acts --site resid_post.6 --sae sae-topk --set k=32 --set width=4608 --out my-sae
    torchrun --nproc_per_node 2 $(which interplab) train-sae acts --site resid_post.6 --out my-sae

`--set` takes the SAE's settings (`interplab.decompose.create(NAME, ...)`: width, k, lr, steps,
batch_size, device ...) and the trainer's (`TrainConfig`: decay, decoder_norm, grad_clip,
aux_coefficient, threads ...); a key both know goes to the SAE's settings, which imply the trainer's.
Under torchrun every rank reads the same global batches and trains its slice (`interplab.parallel`);
rank 0 writes the checkpoints and the SAE folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from interplab.decompose.base import DECOMPOSITIONS, create
from interplab.decompose.sae import SAEDecomposer
from interplab.decompose.train import TrainConfig, train_sae
from interplab.errors import UserError, did_you_mean
from interplab.parallel import World
from interplab.store import ActivationStore


def split_settings(name: str, sets: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`--set` values -> (the SAE's settings, TrainConfig overrides); an unknown key is a UserError."""
    cls = DECOMPOSITIONS.get(name)
    if not issubclass(cls, SAEDecomposer):
        sae_names = [n for n in DECOMPOSITIONS if issubclass(DECOMPOSITIONS.get(n), SAEDecomposer)]
        raise UserError(f"'{name}' is not an SAE; train-sae trains one of: {', '.join(sae_names)}")
    own, trainer = cls.Settings.model_fields, TrainConfig.model_fields
    unknown = [k for k in sets if k not in own and k not in trainer]
    if unknown:
        k, valid = unknown[0], [*own, *(f for f in trainer if f not in own)]
        raise UserError(f"unknown setting '{k}' for {name}{did_you_mean(k, valid)}; valid keys: {', '.join(valid)}")
    return ({k: v for k, v in sets.items() if k in own}, {k: v for k, v in sets.items() if k not in own})


def pick_site(store: ActivationStore, site: str | None) -> str:
    if site is None:
        if len(store.sites) != 1:
            raise UserError(f"the store in {store.path} holds several sites ({', '.join(store.sites)}); "
                            "choose one with --site")
        return store.sites[0]
    if site not in store.sites:
        raise UserError(f"site '{site}' was not harvested in {store.path}{did_you_mean(site, store.sites)}; "
                        f"it holds: {', '.join(store.sites)}")
    return site


def train_sae_on_store(data: str | Path, site: str | None, name: str, sets: dict[str, Any], out: str | Path,
                       checkpoint: str | Path | None = None) -> Path | None:
    """Train SAE `name` with `sets` on `site` of the store in `data`; rank 0 saves it in `out` and
    returns that path (other ranks return None). With `checkpoint`, a killed run resumes."""
    settings, overrides = split_settings(name, sets)
    sae = create(name, **settings)
    store = ActivationStore(data)
    site = pick_site(store, site)
    world = World.from_env(str(overrides.get("device", sae.settings.device)))
    train_sae(sae, (store, site), overrides or None, checkpoint)
    world.close()
    if not world.main:
        return None
    meta = {"hook_name": site, "model_name": store.config.subject}
    return sae.save(out, metadata=meta)
