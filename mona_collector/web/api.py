"""The JSON API under ``/api/`` that the dashboard's pages use, and scripts can (docs/dashboard.md).

Every answer is one JSON object. A request that cannot be answered is a 4xx with ``{"error": ...}``
saying why (an unknown class or ARC, a malformed time or filter, a limit out of range); a database
that cannot be read is a 503. Nothing here answers with a traceback.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from flask import Blueprint, Response, current_app, request

from ..report.periods import parse_periods
from ..report.render_json import clean
from .alerts_source import list_alerts
from .explorer import DEFAULT_LIMIT, MAX_LIMIT, ArcQuery, CursorError, find_arc, search_arcs
from .filters import FilterError, parse_filters
from .reports import DashboardError, PeriodChoice, Reports, watermark

#: Characters at most of a text parameter (a class, an id, a time, a cursor).
MAX_PARAMETER = 500
#: Dimensions at most in ``by``.
MAX_BY = 4

api = Blueprint("api", __name__, url_prefix="/api")


def json_response(document: Any, status: int = 200) -> Response:
    text = json.dumps(clean(document), allow_nan=False, ensure_ascii=False)
    response = Response(text + "\n", status, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _reports() -> Reports:
    reports: Reports = current_app.config["MONA_REPORTS"]
    return reports


def _text(name: str, default: Optional[str] = None) -> Optional[str]:
    value = request.args.get(name)
    if value is None or not value.strip():
        return default
    if len(value) > MAX_PARAMETER:
        raise DashboardError(f"{name}: at most {MAX_PARAMETER} characters", 400)
    return value.strip()


def period_choice() -> PeriodChoice:
    """The time range and baseline of the request (``since``, ``until``, ``baseline``), checked."""
    choice = PeriodChoice(_text("since", "24h") or "24h", _text("until"), _text("baseline", "7d") or "7d")
    try:
        parse_periods(choice.since, choice.baseline, choice.until)
    except ValueError as exc:
        raise DashboardError(str(exc), 400) from None
    return choice


def _limit() -> int:
    text = request.args.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(text)
    except ValueError:
        raise DashboardError(f"limit: {text[:40]!r} is not a whole number", 400) from None
    if not 1 <= limit <= MAX_LIMIT:
        raise DashboardError(f"limit: between 1 and {MAX_LIMIT}", 400)
    return limit


def _by() -> Tuple[str, ...]:
    names = tuple(name.strip() for name in (_text("by") or "").split(",") if name.strip())
    if len(names) > MAX_BY:
        raise DashboardError(f"by: at most {MAX_BY} dimensions", 400)
    return names


@api.errorhandler(DashboardError)
def _dashboard_error(exc: DashboardError) -> Response:
    return json_response({"error": str(exc)}, exc.status)


@api.get("/health")
def health() -> Response:
    """Whether the server answers, and the database's merge watermark."""
    log_id, merged = watermark(_reports().db_path)
    return json_response({"ok": True, "merged_log_id": log_id, "merged_up_to": merged})


@api.get("/classes")
def classes() -> Response:
    """The overview: one row per class in the chosen window and baseline."""
    return json_response(_reports().overview(period_choice()))


@api.get("/classes/<path:arc_class>/report")
def class_report(arc_class: str) -> Response:
    """The report of one class, as ``mona report --json`` (docs/report-json.md)."""
    report, cached = _reports().class_report(arc_class, period_choice(), _by())
    response = json_response(report)
    response.headers["X-Mona-Cache"] = "hit" if cached else "miss"
    return response


@api.get("/arcs")
def arcs() -> Response:
    """One page of ARCs: newest first, filtered by class, id, time range and field filters."""
    try:
        filters = parse_filters(request.args.getlist("filter"))
    except FilterError as exc:
        raise DashboardError(f"filter: {exc}", 400) from None
    since, until = _text("since"), _text("until")
    start = end = None
    if since is not None or until is not None:
        try:
            periods = parse_periods(since or "3650d", None, until)
        except ValueError as exc:
            raise DashboardError(str(exc), 400) from None
        start, end = periods.window_start, periods.window_end
    query = ArcQuery(_text("arc_class"), _text("id"), start, end, filters, _limit(), _text("cursor"))
    try:
        page = search_arcs(_reports().db_path, query)
    except CursorError as exc:
        raise DashboardError(f"cursor: {exc}", 400) from None
    page["filters"] = [str(item) for item in filters]
    return json_response(page)


@api.get("/arcs/<path:context_id>")
def arc(context_id: str) -> Response:
    """The ARCs with this context id (one per user), as their public documents."""
    if len(context_id) > MAX_PARAMETER:
        raise DashboardError(f"an ARC id has at most {MAX_PARAMETER} characters here", 400)
    documents = find_arc(_reports().db_path, context_id)
    if not documents:
        raise DashboardError(f"no ARC with id {context_id[:100]!r}", 404)
    return json_response({"arcs": documents})


@api.get("/alerts")
def alerts() -> Response:
    """Alerts, newest first: ``state`` is ``open`` (the default), ``resolved`` or ``all``."""
    state = request.args.get("state", "open")
    if state not in ("open", "resolved", "all"):
        raise DashboardError("state: open, resolved or all", 400)
    found: List[Dict[str, Any]] = list_alerts(_reports().db_path, open_only=state == "open")
    if state == "resolved":
        found = [alert for alert in found if alert["state"] == "resolved"]
    return json_response({"state": state, "alerts": found})


@api.route("/<path:anything>")
def unknown(anything: str) -> Response:
    raise DashboardError(f"no API endpoint /api/{anything[:100]}", 404)
