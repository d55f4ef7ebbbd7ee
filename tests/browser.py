"""Open a report page in headless Chromium (playwright) and collect what the report tests check."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

_COLLECT = """() => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  return {
    title: document.title,
    text: document.body.innerText,
    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
    images: Array.from(document.images).map(i => ({src: i.getAttribute('src').slice(0, 30), w: i.complete ? i.naturalWidth : 0})),
    badges: Array.from(document.querySelectorAll('.badge[data-crux]')).map(b => ({
      crux: b.dataset.crux, subject: b.dataset.subject, status: b.dataset.status, text: b.textContent.trim(),
      cls: b.className, box: box(b)})),
    groups: Array.from(document.querySelectorAll('table.matrix tbody.group')).map(g => g.id),
    rows: Array.from(document.querySelectorAll('table.matrix tr.crux')).map(r => ({crux: r.dataset.crux, box: box(r)})),
    apart: Array.from(document.querySelectorAll('ul.apart li')).map(box),
    scroll_width: document.documentElement.scrollWidth,
  };
}"""


def require_browser():
    """Playwright's sync API, or skip (fail under CI) when it or Chromium is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("playwright and /usr/bin/chromium are required under CI")
        pytest.skip("playwright or /usr/bin/chromium not installed (apt-get install chromium)")
    return sync_playwright


PRINT_WIDTH = 1047  # CSS pixels across an A4 landscape page with 10 mm margins


def open_page(page: Path, profile: Path, width: int = 1280, height: int = 900,
              screenshot: Path | None = None) -> dict[str, Any]:
    """Load `page` from disk in a fresh profile; return what _COLLECT reads plus the console errors,
    every request that was not for a file: or data: URL, and the page's width when printed on A4
    landscape (`print_width`)."""
    sync_playwright = require_browser()
    errors: list[str] = []
    foreign: list[str] = []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=ARGS, headless=True,
                                                   viewport={"width": width, "height": height})
        try:
            tab = ctx.new_page()
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else foreign.append(r.url))
            tab.goto(page.resolve().as_uri())
            tab.wait_for_load_state("load")
            if screenshot is not None:
                tab.screenshot(path=str(screenshot))
            out = tab.evaluate(_COLLECT)
            tab.emulate_media(media="print")
            tab.set_viewport_size({"width": PRINT_WIDTH, "height": height})
            out["print_width"] = tab.evaluate("document.documentElement.scrollWidth")
        finally:
            ctx.close()
    return {**out, "errors": errors, "foreign": foreign}


def unresolved_links(page: Path, links: list[str], ids: list[str]) -> list[str]:
    """Links that do not resolve inside the page's folder: a fragment without its element, a file
    that is missing or outside the folder, or anything with a scheme."""
    root = page.parent.resolve()
    bad = []
    for href in links:
        if href.startswith("#"):
            if href[1:] not in ids:
                bad.append(href)
            continue
        if ":" in href.split("/")[0] or href.startswith("/"):
            bad.append(href)
            continue
        target = (root / href.split("#")[0]).resolve()
        if not target.is_file() or root not in target.parents:
            bad.append(href)
    return bad
