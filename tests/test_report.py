"""Reports: the HTML page renders in a real browser, offline, with every figure and table visible."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from interplab import ui
from interplab.experiments.base import Result, Verdict, write_result
from interplab.report.html import fmt, render_index
from interplab.report.terminal import print_result, print_verdicts

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


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
            Verdict("claims hold up", 2.5, (1.0, 4.0), 0.0, "supported", subject="toy", note="a note"),
            Verdict("the other claim", 0.1, (-1.0, 1.0), 0.0, "inconclusive"),
        ],
        tables={"per_point": {"columns": ["point", "value"], "rows": [["alpha-row", 0.125], ["beta-row", 7]]}},
        figures={"line_plot": _figure("line"), "heatmap": _figure("heat")},
        captions={"line_plot": "A parabola"},
        summary="Summary text of the demo.",
    )


@pytest.fixture
def report(tmp_path: Path) -> Path:
    write_result(make_result(), tmp_path / "run")
    return tmp_path / "run" / "index.html"


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
    assert (run / "results.json").is_file()
    assert sorted(p.name for p in (run / "figures").iterdir()) == ["heatmap.png", "line_plot.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in (run / "figures").iterdir())


def test_fmt() -> None:
    assert fmt(None) == "—" and fmt(float("nan")) == "—" and fmt(3.0) == "3" and fmt(0.123456) == "0.1235"


def _browser():
    """Playwright's sync API, or skip (fail under CI) when it or Chromium is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("playwright and /usr/bin/chromium are required under CI")
        pytest.skip("playwright or /usr/bin/chromium not installed")
    return sync_playwright


def _open(page_path: Path):
    """Open a file in headless Chromium; return (page text, image widths, console errors, foreign URLs, links)."""
    sync_playwright = _browser()
    errors: list[str] = []
    foreign: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else foreign.append(r.url))
            page.goto(page_path.resolve().as_uri())
            page.wait_for_load_state("load")
            title = page.title()
            text = page.inner_text("body")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            links = page.eval_on_selector_all("a", "as => as.map(a => a.getAttribute('href'))")
        finally:
            browser.close()
    return title, text, widths, errors, foreign, links


def test_report_renders_in_browser(report: Path) -> None:
    title, text, widths, errors, foreign, _ = _open(report)
    assert title == "A demo of the report page"
    for expected in ("A demo of the report page", "Summary text of the demo.", "alpha-row", "beta-row",
                     "claims hold up", "supported", "inconclusive", "[1, 4]", "A parabola", "Heatmap"):
        assert expected in text
    assert len(widths) == 2 and all(w > 0 for w in widths)
    assert errors == []
    assert foreign == []


def test_index_page_links_each_run(tmp_path: Path, report: Path) -> None:
    entries = [
        {"name": "run", "title": "The demo run", "seconds": 1.2, "verdicts": make_result().to_dict()["verdicts"]},
        {"name": "other", "title": "No verdicts here", "verdicts": []},
    ]
    index = render_index(entries, report.parent.parent)
    html = index.read_text()
    assert 'href="run/index.html"' in html and "https://" not in html and "http://" not in html
    title, text, widths, errors, foreign, links = _open(index)
    assert "The demo run" in text and "claims hold up" in text and "1 supported" in text
    assert links == ["run/index.html", "other/index.html"]
    assert (index.parent / links[0]).is_file()
    assert errors == [] and foreign == []


def test_terminal_tables_print_even_when_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    ui.set_quiet(True)
    try:
        print_result(make_result())
        print_verdicts([{"experiment": "x", **v} for v in make_result().to_dict()["verdicts"]])
    finally:
        ui.set_quiet(False)
    out = capsys.readouterr().out
    assert "claims hold up" in out and "supported" in out and "alpha-row" in out and "experiment" in out
