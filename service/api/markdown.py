"""The report's markdown summary for ``?format=md``; rendered by :mod:`worker.render.markdown`,
which ``camdrift gate --markdown`` uses too, so both say the same thing."""

from __future__ import annotations

from typing import Any

from worker.render.markdown import render_markdown


def report_markdown(report: dict[str, Any], job_id: str) -> str:
    """Models, verdict, performance, subset counts, and method x metric mean [95% CI]."""
    return render_markdown(report, job_id=job_id)
