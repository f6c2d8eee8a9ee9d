"""Send the current context id with every request of a ``requests`` session.

::

    import requests
    from mona_client.integrations.requests import instrument_session

    session = instrument_session(requests.Session())
    with client.new_mona_context(arc_class="CHECKOUT"):
        session.post("http://scorer/score", json=...)  # carries Mona-Context-Id

``requests`` is not a dependency of mona-client: this module imports it when first used, and says
plainly when it is missing.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ..propagation import inject

if TYPE_CHECKING:
    import requests
    from requests.adapters import HTTPAdapter

__all__ = ["instrument_session", "mona_adapter"]


@functools.lru_cache(maxsize=None)
def _adapter_class() -> type[HTTPAdapter]:
    """The adapter class, made on first use: defining it needs ``requests`` itself."""
    try:
        from requests.adapters import HTTPAdapter
    except ImportError as exc:
        raise ImportError("mona_client.integrations.requests needs the requests package: pip install requests") from exc

    class MonaHTTPAdapter(HTTPAdapter):
        """An ``HTTPAdapter`` adding ``Mona-Context-Id`` (the context current at send time) to each request."""

        def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
            inject(request.headers)
            return super().send(request, *args, **kwargs)

    return MonaHTTPAdapter


def mona_adapter(**adapter_options: Any) -> HTTPAdapter:
    """An ``HTTPAdapter`` that adds ``Mona-Context-Id`` to each request it sends; ``adapter_options``
    as for ``HTTPAdapter`` (``pool_maxsize``, ``max_retries``...). Mount it where you need it."""
    return _adapter_class()(**adapter_options)


def instrument_session(session: requests.Session, **adapter_options: Any) -> requests.Session:
    """Mount a :func:`mona_adapter` for ``http://`` and ``https://`` on ``session`` and return it."""
    adapter = mona_adapter(**adapter_options)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
