"""Ready-made propagation for HTTP: middlewares that open (or continue) an ARC per request, and
clients that send the current context id along.

* :mod:`mona_client.integrations.wsgi`: :class:`~mona_client.integrations.wsgi.MonaWSGIMiddleware`
* :mod:`mona_client.integrations.asgi`: :class:`~mona_client.integrations.asgi.MonaASGIMiddleware`
* :mod:`mona_client.integrations.requests`: :func:`~mona_client.integrations.requests.instrument_session`
* :mod:`mona_client.integrations.httpx`: :func:`~mona_client.integrations.httpx.instrument_client`

Each module imports its framework only when used; none is a dependency of mona-client.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Tuple, Union

__all__ = ["ArcClassRule", "arc_class_for_path"]

#: How a middleware picks the arc class of a request's ARC: one class for every request, a mapping of
#: path prefix to class (the longest matching prefix wins; no match: no class), or a callable of the
#: path returning the class (or None).
ArcClassRule = Union[None, str, Mapping[str, Optional[str]], Callable[[str], Optional[str]]]


def arc_class_for_path(rule: ArcClassRule) -> Callable[[str], Optional[str]]:
    """A function of a request's path giving its arc class, made once from ``rule``."""
    if rule is None or isinstance(rule, str):
        fixed = rule
        return lambda path: fixed
    if isinstance(rule, Mapping):
        # Longest first, so "/api/score" wins over "/api" for "/api/score/7".
        prefixes: Tuple[Tuple[str, Optional[str]], ...] = tuple(
            sorted(rule.items(), key=lambda item: len(item[0]), reverse=True)
        )

        def by_prefix(path: str) -> Optional[str]:
            for prefix, arc_class in prefixes:
                if path.startswith(prefix):
                    return arc_class
            return None

        return by_prefix
    if callable(rule):
        return rule
    raise TypeError(f"arc_class must be a str, a mapping of path prefix to class or a callable, not {rule!r}")
