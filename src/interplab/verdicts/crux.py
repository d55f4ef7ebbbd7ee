"""A crux, defined once and before its result is seen: what is claimed, measured, and compared.

Every verdict interplab prints is computed against one of these definitions (`CRUXES`, filled by
the modules of `interplab.verdicts.catalog`). A definition names the statistic, the null it is set
against, which side of the null supports the claim, what varies between replications (the
resampling unit), the planted positive and negative controls that the very same pipeline runs on,
the family whose verdicts share a multiplicity correction, and the smallest scale at which the crux
can be decided. A definition is never edited because of a result: a new one is added (its own
commit, saying why) with `supersedes=` naming the old, and both are computed and shown, one primary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from interplab.registry import Registry

Direction = Literal["higher", "lower"]
Scale = Literal["small", "default"]
Kind = Literal["finding", "harness"]
SCALES: tuple[Scale, ...] = ("small", "default")


@dataclass(frozen=True)
class Crux:
    """One crux's protocol. `id` is short ("1a", "sae-fvu"); the rest is prose a reviewer reads."""

    id: str
    experiment: str
    """The experiment that computes it."""
    question: str
    """The debate's question, in one line."""
    claim: str
    """The side of the debate a "supported" verdict backs."""
    statistic: str
    """What is measured, precisely enough to recompute."""
    null: str
    """The value or model the statistic is compared with."""
    direction: Direction
    """Which side of the null supports the claim."""
    unit: str
    """What the CI resamples: what varies between replications (seeds, networks, groups)."""
    positive_control: str
    """A planted case where the claim is true by construction; it must read "supported"."""
    negative_control: str
    """A planted case where the claim is false; it must not read "supported"."""
    family: str
    """Verdicts of one family share a Holm correction."""
    min_scale: Scale = "small"
    """Smallest scale at which controls pass and the CI can exclude the null."""
    kind: Kind = "finding"
    """"harness": a statistic fixed by the set-up, shown apart and never counted as a finding."""
    primary: bool = True
    """False for a definition kept beside a newer one (computed and shown, not counted)."""
    supersedes: str | None = None
    """The id of the definition this one replaced, if any."""
    why: str = ""
    """For a superseding definition: why it replaced the old one."""

    @property
    def higher_is_support(self) -> bool:
        return self.direction == "higher"

    def protocol(self) -> dict[str, Any]:
        """The definition as JSON, written into results.json beside the verdicts it produced."""
        return asdict(self)


CRUXES: Registry[Crux] = Registry("crux")


def define(**fields: Any) -> Crux:
    """Register a crux definition (duplicates refused) and return it."""
    crux = Crux(**fields)
    if crux.min_scale not in SCALES:
        raise ValueError(f"crux {crux.id}: min_scale must be one of {SCALES}")
    if crux.supersedes is not None and not crux.why:
        raise ValueError(f"crux {crux.id} supersedes {crux.supersedes} and must say why")
    CRUXES.add(crux.id, crux, help=crux.question)
    return crux


def get(crux_id: str) -> Crux:
    """The registered definition (importing the catalog first, so every crux is known)."""
    import interplab.verdicts.catalog  # noqa: F401  (registration)

    return CRUXES.get(crux_id)
