"""The Jinja2 environments of the render package: HTML (autoescaped) and markdown (not).

Templates live in ``worker/render/templates/`` and the page's stylesheet in
``worker/render/report.css``; both are package data, read through the package (so an installed
wheel finds them as well as a checkout).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from worker.render import formatting as f

PACKAGE = "worker.render"

FILTERS = {
    "fmt": f.fmt,
    "fmt_p": f.fmt_p,
    "fmt_share": f.fmt_share,
    "dash": f.dash,
    "bar_width": f.percent_width,
    "short": f.short,
    "method_label": f.method_label,
    "metric_label": f.metric_label,
    "num": f.plain_number,
    "cell": f.md_cell,
}
GLOBALS = {"fmt_delta": f.fmt_delta}


def _environment(*, autoescape: bool) -> Environment:
    env = Environment(
        loader=PackageLoader(PACKAGE, "templates"),
        autoescape=select_autoescape(["html", "j2"], default=True) if autoescape else False,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    env.globals.update(GLOBALS)
    return env


@cache
def html_environment() -> Environment:
    """Every ``{{ value }}`` escaped by the engine; charts come in as :class:`Markup`."""
    return _environment(autoescape=True)


@cache
def markdown_environment() -> Environment:
    """No HTML escaping: markdown is plain text (table cells escape pipes with ``cell``)."""
    return _environment(autoescape=False)


@cache
def stylesheet() -> Markup:
    """The page's CSS, inlined in its ``<style>`` (trusted: a file of this package)."""
    text = resources.files(PACKAGE).joinpath("report.css").read_text(encoding="utf-8")
    return Markup(text)
