"""Reports: one table of every variant (Markdown and self-contained HTML) with Pareto plots."""

from edgeopt.report.markdown import render_markdown, variant_rows, write_report
from edgeopt.report.merge import merge_results

__all__ = ["merge_results", "render_markdown", "variant_rows", "write_report"]
