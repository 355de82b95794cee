"""Reports: one table of every variant (Markdown and self-contained HTML) with Pareto plots."""

from edgeopt.report.markdown import render_markdown, variant_rows, write_report

__all__ = ["render_markdown", "variant_rows", "write_report"]
