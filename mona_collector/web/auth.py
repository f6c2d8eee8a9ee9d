"""The dashboard's token check: every page, API call, asset and scrape carries the token when one is set.

A client gives it as ``Authorization: Bearer TOKEN`` (scripts, Prometheus), as the password of HTTP
basic auth (any user name), or opens any page once with ``?token=TOKEN``: the server then sets it in
an HttpOnly cookie and sends the browser to the same address without it, so the token does not stay
in the address bar or the history.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Optional
from urllib.parse import urlencode

from flask import Flask, Response, redirect, request
from werkzeug.wrappers import Response as BaseResponse

COOKIE = "mona_token"
_OPEN_PATHS = ("/favicon.ico",)


def _given_token() -> Optional[str]:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return request.cookies.get(COOKIE)


def _same(given: Optional[str], token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def _refused() -> Response:
    if request.path.startswith(("/api/", "/metrics")):
        response = Response('{"error": "a token is required (Authorization: Bearer TOKEN)"}\n', 401)
        response.content_type = "application/json"
    else:
        response = Response(
            "<!doctype html><title>mona dashboard</title><p>This dashboard needs its token: open it as "
            "<code>http://HOST:PORT/?token=TOKEN</code>.</p>\n",
            401,
        )
        response.content_type = "text/html; charset=utf-8"
    response.headers["WWW-Authenticate"] = 'Bearer realm="mona", Basic realm="mona"'
    return response


def install_token_check(app: Flask, token: Optional[str]) -> None:
    """Refuse every request without ``token`` (nothing to check when it is None)."""
    if token is None:
        return

    @app.before_request
    def check_token() -> Optional[BaseResponse]:
        if request.path in _OPEN_PATHS:
            return None
        from_query = request.args.get("token")
        if from_query is not None and request.method == "GET" and not request.path.startswith("/api/"):
            if not _same(from_query, token):
                return _refused()
            rest = [(key, value) for key, value in request.args.items(multi=True) if key != "token"]
            target = request.path + (f"?{urlencode(rest)}" if rest else "")
            response = redirect(target, 303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
            return response
        return None if _same(_given_token(), token) else _refused()
