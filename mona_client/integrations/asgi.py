"""An ASGI middleware: every HTTP request runs in an ARC, continued from its ``Mona-Context-Id`` header
or new. Works with any ASGI server and framework (uvicorn, hypercorn; Starlette, FastAPI, Django)::

    from mona_client.integrations.asgi import MonaASGIMiddleware
    app = MonaASGIMiddleware(app, arc_class={"/score": "FRAUD_SCORER"})

The ARC is current in the task that runs the application, and in every task it creates (asyncio
tasks copy their creator's context). The response carries the ARC's id in ``Mona-Context-Id``.
Lifespan and websocket traffic pass through untouched.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, MutableMapping

from ..client import continue_mona_context
from ..propagation import HEADER, header_value
from . import ArcClassRule, arc_class_for_path

__all__ = ["MonaASGIMiddleware"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HEADER_BYTES = HEADER.lower().encode("ascii")


class MonaASGIMiddleware:
    """Wraps an ASGI application so that each HTTP request runs in its own ARC.

    ``arc_class``: one class, a mapping of path prefix to class (longest prefix wins) or a callable of
    the path. A malformed id in the header gets a fresh ARC (and one log line). ``response_header``
    adds ``Mona-Context-Id`` to the response (default on).
    """

    def __init__(self, app: ASGIApp, arc_class: ArcClassRule = None, *, response_header: bool = True) -> None:
        self.app = app
        self._arc_class = arc_class_for_path(arc_class)
        self._response_header = response_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("root_path", "")) + str(scope.get("path", ""))
        received = header_value(dict(scope.get("headers") or ()))
        with continue_mona_context(received, self._arc_class(path)) as context_id:
            if self._response_header and context_id:
                send = _with_header(send, context_id.encode("ascii"))
            await self.app(scope, receive, send)


def _with_header(send: Send, context_id: bytes) -> Send:
    async def send_with_header(message: Dict[str, Any]) -> None:
        if message.get("type") == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (_HEADER_BYTES, context_id)]}
        await send(message)

    return send_with_header
