"""Verdicts arranged for display: the crux matrix, the rows kept apart, and each crux's protocol.

One run's results.json (or every run of `interplab cruxes`) is a flat list of verdict dicts. The
index page, the per-experiment page, the terminal summary and the Markdown table all show the same
arrangement, built here from plain JSON (never from live objects, so a copied run folder renders):

- findings: groups (one per experiment, in the order given), rows = cruxes, columns = the group's
  subjects, each cell one verdict;
- apart: harness checks and superseded definitions, shown separately and never counted;
- protocols: each crux's definition once, with every verdict's numbers, controls, Holm correction
  and notes (each distinct note printed once, cited by number).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from interplab.verdicts.judge import COUNTED, HARNESS, NEEDS_SCALE, SUPERSEDED, UNCALIBRATED, summary_counts

# What a verdict's status means, in the words the pages and the terminal use.
STATUS_HELP = {
    COUNTED: "counted: both controls passed",
    UNCALIBRATED: "not counted: a control failed or was not run, so the pipeline could not be "
                  "trusted to come out the other way",
    NEEDS_SCALE: "not counted: too small a run to decide; rerun with --scale default",
    HARNESS: "not counted: a property of the set-up (harness check)",
    SUPERSEDED: "not counted: an older definition, kept beside the one that replaced it",
}


def slug(text: str) -> str:
    """A fragment-safe id part: letters, digits and dashes."""
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower() or "x"


def word_class(word: str | None) -> str:
    """CSS class of a verdict word: supported, not-supported, inconclusive or needs-scale."""
    if word == NEEDS_SCALE:
        return "needs-scale"
    return slug(word or "inconclusive")


def controls_state(controls: Mapping[str, Any] | None) -> dict[str, str]:
    """{"positive": "pass" | "fail" | "none", "negative": ...} from a verdict's controls record."""
    out = {}
    for role in ("positive", "negative"):
        c = (controls or {}).get(role) or {}
        out[role] = "none" if not c.get("ran") else ("pass" if c.get("passed") else "fail")
    return out


@dataclass
class Cell:
    """One verdict: a crux on one subject."""

    v: dict[str, Any]  # the verdict dict as in results.json
    experiment: str
    anchor: str  # the id of its line in the protocol section
    notes: list[int] = field(default_factory=list)  # numbers of its notes in the crux's protocol

    @property
    def word(self) -> str:
        return str(self.v.get("verdict") or "inconclusive")

    @property
    def status(self) -> str:
        return str(self.v.get("status") or UNCALIBRATED)

    @property
    def counted(self) -> bool:
        return self.status == COUNTED

    @property
    def subject(self) -> str:
        return "—" if self.v.get("subject") in (None, "") else str(self.v["subject"])

    @property
    def controls(self) -> dict[str, str]:
        return controls_state(self.v.get("controls"))


@dataclass
class Row:
    """A crux: its verdicts by subject (a subject may be missing from a row)."""

    crux: str
    question: str
    protocol_anchor: str
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass
class Group:
    """One experiment's findings: a matrix of cruxes by subjects."""

    name: str
    title: str
    href: str | None  # its own page, relative to the page showing the group
    subjects: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    thumb: str | None = None  # data URI of its key figure's thumbnail
    thumb_caption: str = ""


@dataclass
class Protocol:
    """A crux's definition (None when the run recorded none) and all its verdicts."""

    crux: str
    experiment: str
    anchor: str
    definition: dict[str, Any] | None
    cells: list[Cell] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Board:
    groups: list[Group]
    apart: list[Cell]  # harness checks and superseded definitions
    protocols: list[Protocol]
    counts: dict[str, int]

    @property
    def cells(self) -> list[Cell]:
        """Every verdict once, findings first, in display order."""
        return [c for g in self.groups for r in g.rows for c in r.cells.values()] + self.apart


def is_apart(v: Mapping[str, Any], definition: Mapping[str, Any] | None) -> bool:
    """Harness checks and superseded (non-primary) definitions are shown apart from findings."""
    d = definition or {}
    return (v.get("status") in (HARNESS, SUPERSEDED) or d.get("kind") == "harness"
            or v.get("primary") is False or d.get("primary") is False)


def build_board(entries: Sequence[Mapping[str, Any]], link_pages: bool = True) -> Board:
    """The arrangement of `entries`: each has `name`, `title`, `verdicts`, `cruxes` (the protocols,
    {crux id: definition}) and optionally `thumb` / `thumb_caption`. `link_pages`: groups link to
    `name/index.html` (the cruxes index), else to nothing (a run's own page)."""
    groups: list[Group] = []
    apart: list[Cell] = []
    protocols: dict[tuple[str, str], Protocol] = {}
    every: list[Mapping[str, Any]] = []
    for e in entries:
        name = str(e.get("name") or "run")
        definitions = e.get("cruxes") or {}
        group = Group(name, str(e.get("title") or name), f"{name}/index.html" if link_pages else None,
                      thumb=e.get("thumb"), thumb_caption=str(e.get("thumb_caption") or ""))
        rows: dict[str, Row] = {}
        for i, v in enumerate(e.get("verdicts") or []):
            v = dict(v)
            every.append(v)
            crux = str(v.get("crux", ""))
            definition = definitions.get(crux)
            key = (name, crux)
            if key not in protocols:
                protocols[key] = Protocol(crux, name, f"crux-{slug(name)}-{slug(crux)}", definition)
            proto = protocols[key]
            cell = Cell(v, name, f"v-{slug(name)}-{i}")
            how = str(v.get("how") or "").strip()
            for note in (str(v.get("note") or "").strip(), f"95% CI: {how}" if how else ""):
                if note:  # each distinct note once per crux, cited by number
                    if note not in proto.notes:
                        proto.notes.append(note)
                    cell.notes.append(proto.notes.index(note) + 1)
            proto.cells.append(cell)
            if is_apart(v, definition):
                apart.append(cell)
                continue
            question = str(v.get("question") or (definition or {}).get("question") or "")
            row = rows.setdefault(crux, Row(crux, question, proto.anchor))
            subject = cell.subject
            while subject in row.cells:  # one crux twice on one subject: keep both, apart by a mark
                subject += "′"
            row.cells[subject] = cell
            if subject not in group.subjects:
                group.subjects.append(subject)
        group.rows = list(rows.values())
        if group.rows:
            groups.append(group)
    return Board(groups, apart, list(protocols.values()), summary_counts(every))
