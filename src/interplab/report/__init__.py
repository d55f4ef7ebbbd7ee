"""Reports: self-contained HTML pages and terminal summaries, rendered from results.json documents."""

from interplab.report.html import atomic_write, render_index, render_result, render_result_html
from interplab.report.runs import rebuild
from interplab.report.terminal import print_result, print_summary, print_verdicts

__all__ = ["atomic_write", "rebuild", "render_index", "render_result", "render_result_html", "print_result",
           "print_summary", "print_verdicts"]
