"""Send the current context id with every request of an ``httpx`` client, sync or async.

::

    import httpx
    from mona_client.integrations.httpx import instrument_client

    http = instrument_client(httpx.AsyncClient())
    with client.new_mona_context(arc_class="CHECKOUT"):
        await http.post("http://scorer/score", json=...)  # carries Mona-Context-Id

A request event hook adds the header; it runs in the caller's thread or task, so it sees the caller's
context. ``httpx`` is not a dependency of mona-client: this module imports it when first used, and
says plainly when it is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from ..propagation import inject

if TYPE_CHECKING:
    import httpx

__all__ = ["add_context_header", "add_context_header_async", "instrument_client"]

C = TypeVar("C")


def add_context_header(request: httpx.Request) -> None:
    """Request hook of an ``httpx.Client``: adds ``Mona-Context-Id`` when a context is open."""
    inject(request.headers)


async def add_context_header_async(request: httpx.Request) -> None:
    """Request hook of an ``httpx.AsyncClient`` (its hooks must be coroutines)."""
    inject(request.headers)


def instrument_client(http: C) -> C:
    """Add the request hook to ``http`` (an ``httpx.Client`` or ``httpx.AsyncClient``) and return it."""
    try:
        import httpx
    except ImportError as exc:
        raise ImportError("mona_client.integrations.httpx needs the httpx package: pip install httpx") from exc
    if not isinstance(http, (httpx.Client, httpx.AsyncClient)):
        raise TypeError(f"instrument_client() takes an httpx.Client or httpx.AsyncClient, not {type(http).__name__}")
    hooks = http.event_hooks
    hook = add_context_header_async if isinstance(http, httpx.AsyncClient) else add_context_header
    hooks["request"] = [*hooks.get("request", []), hook]
    http.event_hooks = hooks
    return http
