"""A WSGI middleware: every request runs in an ARC, continued from its ``Mona-Context-Id`` header or new.

::

    from mona_client.integrations.wsgi import MonaWSGIMiddleware
    app = MonaWSGIMiddleware(app, arc_class={"/score": "FRAUD_SCORER", "/": "WEB"})

The ARC spans the whole request: the application call and the iteration of its response, until the
server closes the response. The response carries the ARC's id in ``Mona-Context-Id`` so the caller can
send late facts (ground truth) into the same ARC.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from ..client import continue_mona_context
from ..propagation import HEADER, WSGI_ENVIRON_KEY
from . import ArcClassRule, arc_class_for_path

__all__ = ["MonaWSGIMiddleware"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[Dict[str, Any], StartResponse], Iterable[bytes]]


class MonaWSGIMiddleware:
    """Wraps a WSGI application so that each request runs in its own ARC (see the module's docstring).

    ``arc_class``: one class, a mapping of path prefix to class (longest prefix wins) or a callable of
    the path. A request whose header holds a malformed id gets a fresh ARC (and one log line).
    ``response_header`` adds ``Mona-Context-Id`` to the response (default on).
    """

    def __init__(self, app: WSGIApp, arc_class: ArcClassRule = None, *, response_header: bool = True) -> None:
        self.app = app
        self._arc_class = arc_class_for_path(arc_class)
        self._response_header = response_header

    def __call__(self, environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
        block = continue_mona_context(environ.get(WSGI_ENVIRON_KEY), self._arc_class(path))
        context_id = block.__enter__()
        try:
            if self._response_header and context_id:
                start_response = _with_header(start_response, context_id)
            result = self.app(environ, start_response)
        except BaseException as exc:
            block.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return _ClosingResponse(result, block)


def _with_header(start_response: StartResponse, context_id: str) -> StartResponse:
    def start(status: str, headers: List[Tuple[str, str]], exc_info: Optional[Any] = None) -> Any:
        return start_response(status, [*headers, (HEADER, context_id)], exc_info)

    return start


class _ClosingResponse:
    """The application's response, leaving the request's ARC when the server closes it (PEP 3333)."""

    def __init__(self, result: Iterable[bytes], block: continue_mona_context) -> None:
        self._result = result
        self._block = block
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._result
        except BaseException as exc:
            self._leave(exc)
            raise

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._leave(None)

    def _leave(self, exc: Optional[BaseException]) -> None:
        if not self._closed:
            self._closed = True
            self._block.__exit__(type(exc) if exc is not None else None, exc, exc.__traceback__ if exc else None)
