"""Reports: the crux matrix and the run pages render in a real browser, offline, self-contained, with
one badge per verdict, the protocol and controls of each, and counted verdicts kept apart from the rest;
the terminal summary fits 100 columns; the Markdown table and `interplab report` rebuild from disk."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from browser import PRINT_WIDTH, open_page, unresolved_links
from cruxes_fixture import write_cruxes_run
from matplotlib.figure import Figure

from interplab import ui
from interplab.experiments.base import Result, Verdict, write_result
from interplab.report.board import build_board
from interplab.report.html import fmt
from interplab.report.markdown import verdicts_markdown
from interplab.report.runs import rebuild
from interplab.report.terminal import print_result, print_summary, print_verdicts


def _figure(kind: str) -> Figure:
    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    if kind == "line":
        ax.plot(np.arange(10), np.arange(10) ** 2)
    else:
        ax.imshow(np.eye(4), cmap="RdBu")
    return fig


def make_result() -> Result:
    return Result(
        experiment="demo-experiment",
        title="A demo of the report page",
        config={"steps": 10, "seed": 3, "names": ["a", "b"]},
        seed=3,
        seconds=1.25,
        metrics={"outer": {"inner": 1.5, "nan": float("nan")}, "count": 4},
        verdicts=[
            Verdict("claims hold up", 2.5, (1.0, 4.0), 0.0, "supported", subject="toy", note="a note", status="counted"),
            Verdict("the other claim", 0.1, (-1.0, 1.0), 0.0, "inconclusive"),
        ],
        tables={"per_point": {"columns": ["point", "value"], "rows": [["alpha-row", 0.125], ["beta-row", 7]]}},
        figures={"line_plot": _figure("line"), "heatmap": _figure("heat")},
        captions={"line_plot": "A parabola"},
        key_figure="heatmap",
        summary="Summary text of the demo.",
    )


@pytest.fixture
def report(tmp_path: Path) -> Path:
    write_result(make_result(), tmp_path / "run")
    return tmp_path / "run" / "index.html"


@pytest.fixture
def cruxes_run(tmp_path: Path) -> tuple[Path, list[dict], int]:
    """A cruxes folder as `interplab cruxes` writes it (8 experiments, ~65 verdicts), rendered."""
    root = tmp_path / "cruxes"
    entries, n = write_cruxes_run(root)
    rebuild(root)
    return root, entries, n


def test_html_has_no_network_references(report: Path) -> None:
    html = report.read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, flags=re.I)
    assert refs, "expected the inlined figures to appear as src attributes"
    assert not [r for r in refs if re.match(r"https?:|//", r, flags=re.I)]
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "@import" not in html and "url(" not in html
    assert html.count("data:image/png;base64,") == 2


def test_report_files_beside_json(report: Path) -> None:
    run = report.parent
    data = json.loads((run / "results.json").read_text())
    assert data["key_figure"] == "heatmap"
    assert sorted(p.name for p in (run / "figures").iterdir()) == ["heatmap.png", "line_plot.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in (run / "figures").iterdir())


def test_fmt() -> None:
    assert fmt(None) == "—" and fmt(float("nan")) == "—" and fmt(3.0) == "3" and fmt(0.123456) == "0.1235"


def test_report_renders_in_browser(report: Path, tmp_path: Path) -> None:
    page = open_page(report, tmp_path / "profile")
    assert page["title"] == "A demo of the report page"
    for expected in ("A demo of the report page", "Summary text of the demo.", "alpha-row", "beta-row",
                     "claims hold up", "supported", "inconclusive", "[1, 4]", "A parabola", "Heatmap", "Protocols"):
        assert expected in page["text"]
    assert len(page["images"]) == 2 and all(i["w"] > 0 for i in page["images"])
    assert len(page["badges"]) == 2
    assert unresolved_links(report, page["links"], page["ids"]) == []
    assert page["errors"] == [] and page["foreign"] == []


def test_board_keeps_findings_and_the_rest_apart(cruxes_run) -> None:
    _, entries, n = cruxes_run
    board = build_board(entries)
    assert len(board.cells) == n
    apart = {c.status for c in board.apart}
    assert apart == {"harness check", "superseded"}
    found = {c.status for g in board.groups for r in g.rows for c in r.cells.values()}
    assert found <= {"counted", "uncalibrated", "needs --scale default"}
    assert [g.name for g in board.groups] == [e["name"] for e in entries]  # the debate's order
    counted = [v for e in entries for v in e["verdicts"] if v["status"] == "counted"]
    assert sum(board.counts[w] for w in ("supported", "not supported", "inconclusive")) == len(counted)
    # one protocol per crux, each distinct note once however many subjects share it
    p = next(p for p in board.protocols if p.crux == "1a")
    assert len(p.cells) == 3 and sum(1 for note in p.notes if "proxy" in note) == 1


def test_cruxes_index_in_browser(cruxes_run, tmp_path: Path) -> None:
    root, entries, n = cruxes_run
    index = root / "index.html"
    shot = root / "index-1280x900.png"
    page = open_page(index, tmp_path / "profile", 1280, 900, screenshot=shot)
    assert page["errors"] == [] and page["foreign"] == []
    assert unresolved_links(index, page["links"], page["ids"]) == []
    # one badge per verdict, each with its crux, subject and status; dashed exactly when not counted
    assert len(page["badges"]) == n
    verdicts = [v for e in entries for v in e["verdicts"]]
    assert sorted((b["crux"], b["subject"]) for b in page["badges"]) == sorted((v["crux"], v["subject"]) for v in verdicts)
    for b in page["badges"]:
        assert ("muted" in b["cls"]) == (b["status"] not in ("counted", "needs --scale default"))
    # structure: a group per experiment in order, a row per finding crux, a thumbnail per experiment
    assert page["groups"] == [f"group-{e['name']}" for e in entries]
    findings = {(e["name"], v["crux"]) for e in entries for v in e["verdicts"] if v["status"] not in ("harness check", "superseded")}
    assert len(page["rows"]) == len(findings)
    thumbs = [i for i in page["images"] if i["src"].startswith("data:image/png")]
    assert len(thumbs) == len(entries) and all(i["w"] > 0 for i in thumbs)
    assert "Protocols" in page["text"] and "resampling unit" in page["text"] and "Holm p" in page["text"]
    # every crux row, and every harness/superseded line, on the first 1280 x 900 screen
    assert page["scroll_width"] <= 1280
    assert page["print_width"] <= PRINT_WIDTH  # printed on A4 landscape, nothing is cut off
    for box in [r["box"] for r in page["rows"]] + page["apart"]:
        assert box[2] <= 1280 and box[3] <= 900, box
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_index_page_links_each_run(tmp_path: Path, report: Path) -> None:
    entries = [
        {"name": "run", "title": "The demo run", "seconds": 1.2, **{k: v for k, v in make_result().to_dict().items()
                                                                   if k in ("verdicts", "figures", "key_figure")}},
        {"name": "other", "title": "No verdicts here", "verdicts": []},
    ]
    from interplab.report.html import render_index

    (report.parent.parent / "other").mkdir()
    (report.parent.parent / "other" / "index.html").write_text("<html></html>")
    index = render_index(entries, report.parent.parent)
    html = index.read_text()
    assert 'href="run/index.html"' in html and "https://" not in html and "http://" not in html
    page = open_page(index, tmp_path / "profile")
    assert "The demo run" in page["text"] and "claims hold up" in page["text"] and "1 supported" in page["text"]
    assert "run/index.html" in page["links"] and "other/index.html" in page["links"]
    assert unresolved_links(index, page["links"], page["ids"]) == []
    assert page["errors"] == [] and page["foreign"] == []


def test_terminal_summary_fits_100_columns(cruxes_run, capsys, monkeypatch) -> None:
    _, entries, n = cruxes_run
    monkeypatch.setenv("COLUMNS", "240")  # a wide terminal still gets at most 100 columns
    print_summary(entries)
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 100
    verdicts = [v for e in entries for v in e["verdicts"]]
    body = [ln for ln in lines if re.match(r"  \S", ln) and not ln.startswith("  Does")]
    assert len(body) == n  # one line per crux x subject
    for ln in body:
        assert ln.split()[0] in {v["crux"] for v in verdicts}
        assert re.search(r"[+][✓✗·]−[✓✗·]", ln)
    questions = [ln for ln in lines if ln.startswith("  Does the claim of 1a ")]
    assert len(questions) == 1  # the question once per crux, however many subjects
    counted = [v for v in verdicts if v["status"] == "counted"]
    m = re.search(r"counted: (\d+) supported, (\d+) not supported, (\d+) inconclusive", "\n".join(lines))
    assert m and sum(int(x) for x in m.groups()) == len(counted)
    assert sum(int(x) for x in m.groups()) < n


def test_terminal_tables_print_even_when_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    ui.set_quiet(True)
    try:
        print_result(make_result())
        print_verdicts([{"experiment": "x", **v} for v in make_result().to_dict()["verdicts"]])
    finally:
        ui.set_quiet(False)
    out = capsys.readouterr().out
    assert "claims hold up" in out and "supported" in out and "alpha-row" in out and "counted" in out


def test_markdown_table(cruxes_run) -> None:
    _, entries, n = cruxes_run
    md = verdicts_markdown(entries)
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| experiment")]
    assert len(rows) == n
    for ln in rows:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert cells[6].startswith("**") == (cells[-1] == "counted")
    assert "## Questions" in md and "`1a` (hypotheses)" in md


def test_rebuild_a_single_run(report: Path) -> None:
    report.unlink()
    assert rebuild(report.parent) == report
    assert "A demo of the report page" in report.read_text()
