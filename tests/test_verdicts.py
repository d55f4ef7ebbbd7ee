"""The verdict machinery: evidence and its intervals, statuses from controls, Holm, provenance, caching."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from interplab.provenance import code_hash, source_hash
from interplab.verdicts import (
    COUNTED,
    CRUXES,
    HARNESS,
    NEEDS_SCALE,
    SUPERSEDED,
    UNCALIBRATED,
    Evidence,
    boot_p,
    bootstrap_units,
    cached_evidence,
    exact,
    from_boots,
    from_refits,
    get,
    holm,
    judge,
)
from interplab.verdicts.crux import Crux


def test_every_crux_is_complete() -> None:
    get("1a")  # imports the catalog
    assert len(CRUXES) >= 20
    for name in CRUXES:
        c = CRUXES.get(name)
        assert isinstance(c, Crux) and c.id == name
        for text in (c.question, c.claim, c.statistic, c.null, c.unit, c.family):
            assert text.strip(), f"{name}: empty protocol field"
        assert c.direction in ("higher", "lower")
        if c.kind == "finding" and c.primary:
            assert c.positive_control.strip("—") and c.negative_control.strip("—"), name
        if c.supersedes:
            assert c.supersedes in CRUXES and c.why


def test_t_interval_over_refits_covers_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        x = rng.normal(1.0, 2.0, size=3)
        lo, hi = from_refits(x, 0.0, "t").ci
        hits += lo <= 1.0 <= hi
    assert 0.93 < hits / 2000 < 0.97  # a percentile bootstrap over 3 values covers far less


def test_refit_interval_adds_the_shared_sampling_variance() -> None:
    narrow = from_refits([1.0, 1.1, 0.9], 0.0, "t")
    wide = from_refits([1.0, 1.1, 0.9], 0.0, "t", sampling_var=0.04)
    assert wide.ci[0] < narrow.ci[0] and wide.ci[1] > narrow.ci[1]
    assert wide.p > narrow.p
    one = from_refits([2.0], 0.0, "one fit", sampling_var=0.25)  # normal quantile on the sampling part
    assert one.ci == pytest.approx((2 - 1.959964 * 0.5, 2 + 1.959964 * 0.5), rel=1e-5)
    assert math.isnan(from_refits([2.0], 0.0, "one fit").ci[0])  # nothing to go on: no interval


def test_bootstrap_p_and_interval() -> None:
    boots = np.linspace(-1, 3, 1001)
    assert boot_p(boots, 0.0) == pytest.approx(2 * (251 + 1) / 1002, rel=1e-9)  # 251 replicates <= 0, +1
    assert boot_p(boots, -5.0) == pytest.approx(2 / 1002)
    ev = from_boots(1.0, boots, 0.0, "b")
    assert ev.ci == pytest.approx((-0.9, 2.9), abs=1e-9)
    units = bootstrap_units(np.r_[np.ones(50), np.zeros(50)], 0.2, "units", seed=1)
    assert units.statistic == 0.5 and units.ci[0] > 0.35 and units.p < 0.01


PROBE = Crux(id="probe", experiment="tests", question="probe: does the statistic exceed 0?", claim="it does",
             statistic="a number", null="0", direction="higher", unit="draws", positive_control="planted yes",
             negative_control="planted no", family="probe")


@pytest.fixture(autouse=True)
def _probe_crux(monkeypatch: pytest.MonkeyPatch) -> None:
    """A primary crux of the tests' own, so they do not depend on the catalog's current definitions."""
    get("1a")  # the catalog first: the probe must not be overwritten by its import
    monkeypatch.setitem(CRUXES._entries, "probe", PROBE)
    monkeypatch.setitem(CRUXES._help, "probe", PROBE.question)


def _ev(lo: float, hi: float, null: float = 0.0) -> Evidence:
    return Evidence((lo + hi) / 2, (lo, hi), 0.01, null, "test")


def test_status_follows_the_controls_not_the_result() -> None:
    good_pos, good_neg = _ev(1, 2), _ev(-1, 1)
    assert judge("probe", _ev(0.1, 0.2), "s", good_pos, good_neg).status == COUNTED
    assert judge("probe", _ev(-0.3, -0.1), "s", good_pos, good_neg).status == COUNTED  # a loss counts too
    failed_pos = judge("probe", _ev(0.1, 0.2), "s", _ev(-1, 1), good_neg)
    assert failed_pos.status == UNCALIBRATED and failed_pos.verdict == "supported"
    assert not failed_pos.controls["positive"]["passed"]
    assert judge("probe", _ev(0.1, 0.2), "s", good_pos, _ev(0.5, 1)).status == UNCALIBRATED  # negative "supported"
    assert judge("probe", _ev(0.1, 0.2), "s").status == UNCALIBRATED  # no controls run
    assert judge("2b-planted", exact(4.0, 1.0), "s").status == HARNESS
    assert judge("1a-frac", _ev(0.1, 0.2), "s", good_pos, good_neg).status == SUPERSEDED


def test_below_the_minimum_scale_no_verdict_is_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    monkeypatch.setitem(CRUXES._entries, "probe", replace(PROBE, min_scale="default"))
    v = judge("probe", _ev(0.1, 0.2), "s", _ev(1, 2), _ev(-1, 1), scale="small")
    assert v.status == NEEDS_SCALE and v.verdict == NEEDS_SCALE and v.raw_verdict == "supported"
    assert judge("probe", _ev(0.1, 0.2), "s", _ev(1, 2), _ev(-1, 1), scale="default").status == COUNTED


def test_direction_lower_flips_the_word() -> None:
    v = judge("2a-input", Evidence(0.05, (0.04, 0.06), math.nan, 0.5, "x"), "tms")
    assert v.verdict == "supported"  # lower is support for 2a-input


def test_holm_matches_the_step_down_rule() -> None:
    ps = [0.01, 0.04, 0.03, 0.20]
    vs = [judge("probe", Evidence(1.0, (0.5, 1.5), p, 0.0, "x"), f"s{i}") for i, p in enumerate(ps)]
    holm(vs)
    # sorted 0.01, 0.03, 0.04, 0.20 -> 0.04, 0.09, 0.09 (monotone), 0.20
    assert [v.p_holm for v in vs] == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert [v.verdict_holm for v in vs] == ["supported", "inconclusive", "inconclusive", "inconclusive"]
    other = judge("sae-fvu", Evidence(1.0, (0.5, 1.5), 0.01, 0.0, "x"), "s")
    holm([other])
    assert other.p_holm == pytest.approx(0.01)  # a family of one is not corrected


def test_source_hash_changes_with_any_byte(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    h = source_hash([a, b], root=tmp_path)
    assert h == source_hash([a, b], root=tmp_path)
    b.write_text("y = 3\n")
    assert source_hash([a, b], root=tmp_path) != h
    assert len(code_hash()) == 16


def test_cached_evidence_is_computed_once_per_code(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def compute() -> Evidence:
        calls.append(1)
        return from_refits([1.0, 2.0, 3.0], 0.0, "t")

    first = cached_evidence("test/control", {"k": 1}, compute)
    again = cached_evidence("test/control", {"k": 1}, compute)
    assert len(calls) == 1 and again.ci == pytest.approx(first.ci) and again.extra["per_fit"] == [1.0, 2.0, 3.0]
    cached_evidence("test/control", {"k": 2}, compute)
    assert len(calls) == 2  # other settings: recomputed
    monkeypatch.setattr("interplab.verdicts.controls.code_hash", lambda: "other-code")
    cached_evidence("test/control", {"k": 1}, compute)
    assert len(calls) == 3  # other code: stale, recomputed
