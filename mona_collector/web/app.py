"""The dashboard's Flask application: the pages, their assets, the API and ``/metrics``.

Every page is the same small HTML shell (static/index.html) whose script reads the address (path and
query: the state lives in the URL) and draws the page from the JSON API. Assets come from the package
(static/, uPlot vendored in static/vendor/uplot); nothing is loaded from the network.
"""

from __future__ import annotations

import logging
from html import escape
from pathlib import Path
from typing import Callable, Optional

from flask import Flask, Response, request, send_from_directory
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.exceptions import HTTPException

from .api import api, json_response
from .auth import install_token_check
from .explorer import find_arc
from .metrics import CollectorMetrics
from .reports import DashboardError, Reports

log = logging.getLogger("mona_collector")

STATIC = Path(__file__).resolve().parent / "static"
#: Scripts, styles, images and requests only from the dashboard itself.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _error_page(message: str, status: int) -> Response:
    text = (
        '<!doctype html><meta charset="utf-8"><title>mona dashboard</title>'
        f'<link rel="stylesheet" href="/static/app.css"><main class="error"><h1>{status}</h1>'
        f'<p>{escape(message)}</p><p><a href="/">Back to the overview</a></p></main>\n'
    )
    return Response(text, status, content_type="text/html; charset=utf-8")


def _problem(message: str, status: int) -> Response:
    if request.path.startswith("/api/"):
        return json_response({"error": message}, status)
    return _error_page(message, status)


def _shell() -> Response:
    response = send_from_directory(STATIC, "index.html")
    response.headers["Cache-Control"] = "no-store"
    return response


def _add_pages(app: Flask, reports: Reports) -> None:
    @app.get("/")
    def overview() -> Response:
        return _shell()

    @app.get("/arcs")
    def explorer() -> Response:
        return _shell()

    @app.get("/alerts")
    def alerts() -> Response:
        return _shell()

    @app.get("/class/<path:arc_class>")
    def class_page(arc_class: str) -> Response:
        if arc_class not in reports.classes():
            return _error_page(f"No ARC of class {arc_class[:100]!r} in this database.", 404)
        return _shell()

    @app.get("/arc/<path:context_id>")
    def arc_page(context_id: str) -> Response:
        if len(context_id) > 500 or not find_arc(reports.db_path, context_id):
            return _error_page(f"No ARC with id {context_id[:100]!r} in this database.", 404)
        return _shell()


def _add_metrics(app: Flask, reports: Reports, open_connections: Optional[Callable[[], int]]) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CollectorMetrics(reports, open_connections))

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), 200, content_type=CONTENT_TYPE_LATEST)


def _add_error_handlers(app: Flask) -> None:
    @app.errorhandler(DashboardError)
    def dashboard_error(exc: DashboardError) -> Response:
        return _problem(str(exc), exc.status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return _problem(exc.description or exc.name, exc.code or 400)

    @app.errorhandler(Exception)
    def failure(exc: Exception) -> Response:
        # A fault of the server, not of the request: logged here, one line for the client.
        log.exception("dashboard: %s %s failed", request.method, request.path)
        return _problem("the server failed to answer this request; its log says why", 500)


def create_app(
    reports: Reports, token: Optional[str] = None, open_connections: Optional[Callable[[], int]] = None
) -> Flask:
    """The dashboard of ``reports``' database; ``token`` (when set) is checked on every request."""
    app = Flask("mona_collector.web", static_folder=str(STATIC), static_url_path="/static")
    app.config["MONA_REPORTS"] = reports
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    install_token_check(app, token)
    app.register_blueprint(api)
    _add_pages(app, reports)
    _add_metrics(app, reports, open_connections)
    _add_error_handlers(app)

    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return app
