"""Send the current context id with every request of a ``requests`` session.

::

    import requests
    from mona_client.integrations.requests import instrument_session

    session = instrument_session(requests.Session())
    with client.new_mona_context(arc_class="CHECKOUT"):
        session.post("http://scorer/score", json=...)   # carries Mona-Context-Id

``requests`` is imported when this module is; it is not a dependency of mona-client.
"""

from __future__ import annotations

from typing import Any

try:
    import requests
    from requests.adapters import HTTPAdapter
except ImportError as exc:  # said plainly rather than as a bare ModuleNotFoundError deep in a call
    raise ImportError("mona_client.integrations.requests needs the requests package: pip install requests") from exc

from ..propagation import inject

__all__ = ["MonaHTTPAdapter", "instrument_session"]


class MonaHTTPAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` that adds ``Mona-Context-Id`` (the context current at send time) to each request."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        inject(request.headers)
        return super().send(request, *args, **kwargs)


def instrument_session(session: requests.Session, **adapter_options: Any) -> requests.Session:
    """Mount a :class:`MonaHTTPAdapter` for ``http://`` and ``https://`` on ``session`` and return it.

    ``adapter_options`` go to the adapter (``pool_maxsize``, ``max_retries``...), as for ``HTTPAdapter``.
    """
    adapter = MonaHTTPAdapter(**adapter_options)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
