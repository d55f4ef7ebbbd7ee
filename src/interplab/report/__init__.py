"""Reports: self-contained HTML pages and terminal tables, rendered from results.json documents."""

from interplab.report.html import atomic_write, render_index, render_result, render_result_html
from interplab.report.terminal import print_result, print_verdicts

__all__ = ["atomic_write", "render_index", "render_result", "render_result_html", "print_result", "print_verdicts"]
