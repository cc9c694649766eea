"""The auditor's HTML report: one self-contained page per audit run.

Everything the page shows comes from :func:`models.report_view.report_view`; this module
adds the geometry of the horizontal bar charts (inline SVG, drawn server-side, so the page
needs no script, stylesheet, font or image from anywhere) and serves the page with a
Content-Security-Policy that forbids loading anything at all except inline styles, and
says the same policy in the page itself, so a saved copy opened from a file keeps it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Response, render_template
from sqlalchemy.orm import Session

from models.canonical import visible_text
from models.report_view import MAX_RUN_LEVEL_ROWS, report_view
from models.signing import KeyRing

TEMPLATE = "audit_report.html"
HTML_RESPONSE: dict[str, Any] = {
    "description": "the report as a self-contained HTML page",
    "content": {"text/html": {"schema": {"type": "string"}}},
}
# The page says it too (a <meta> in its head): a page saved with `plant report export --format
# html` and opened from a file has no HTTP header. frame-ancestors works only as a header.
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
SECURITY_HEADERS = {
    "Content-Security-Policy": PAGE_POLICY + "; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # A running audit's page changes from one request to the next, and it is behind a key.
    "Cache-Control": "private, no-store",
}

LABEL_WIDTH = 200
BAR_SPACE = 440
COUNT_SPACE = 70
ROW_HEIGHT = 26
BAR_HEIGHT = 18
LABEL_CHARS = 24  # what fits in LABEL_WIDTH at the 13px monospace of the labels


@dataclass(frozen=True)
class Bar:
    label: str  # as counted; shown in full in the bar's tooltip
    short_label: str  # as shown: visible_text, then cut to LABEL_CHARS
    count: int
    y: int
    width: int


@dataclass(frozen=True)
class BarChart:
    bars: tuple[Bar, ...]
    width: int
    height: int
    label_width: int = LABEL_WIDTH
    bar_height: int = BAR_HEIGHT


def bar_chart(counts: Mapping[str, int]) -> BarChart:
    """Horizontal bars, largest first, scaled to the largest count (a non-zero bar stays visible)."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    largest = max((count for _, count in ordered), default=0)
    bars = tuple(
        Bar(label, _shorten(visible_text(label)), count, index * ROW_HEIGHT, _bar_width(count, largest))
        for index, (label, count) in enumerate(ordered)
    )
    return BarChart(bars, LABEL_WIDTH + BAR_SPACE + COUNT_SPACE, max(1, len(bars)) * ROW_HEIGHT)


def _bar_width(count: int, largest: int) -> int:
    if count <= 0 or largest <= 0:
        return 0
    return max(2, round(BAR_SPACE * count / largest))


def _shorten(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def shown_text(value: Any) -> str:
    """``value`` as the page shows it: :func:`visible_text` of its text, "—" for none."""
    return "—" if value is None else visible_text(str(value))


def report_page(session: Session, *, run_id: uuid.UUID, keyring: KeyRing) -> Response:
    """The rendered page; ``NotFound`` for an unknown run propagates to the problem mapping."""
    view = report_view(session, run_id=run_id, keyring=keyring)
    session.commit()  # the record of the page's report signature
    html = render_template(TEMPLATE, view=view, page_policy=PAGE_POLICY, visible=shown_text,
                           rule_chart=bar_chart(view.by_rule), code_chart=bar_chart(view.by_code),
                           run_level_rows=MAX_RUN_LEVEL_ROWS)
    response = Response(html, mimetype="text/html")
    response.headers.update(SECURITY_HEADERS)
    return response
