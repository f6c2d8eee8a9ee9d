"""The embedded collector: a Fluentd Forward server that merges mona records into ARC documents.

Run it with ``mona collect`` or embed it with :class:`Collector`; query it with ``mona arcs`` and
``mona stats``, or through :class:`SQLiteStore`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .service import Collector
    from .store import ArcStore, SQLiteStore, StoreError, default_db_path

__all__ = ["ArcStore", "Collector", "SQLiteStore", "StoreError", "default_db_path"]

# Where each name of the API lives. They are imported when first used, so that the collector's
# worker processes (the merger, its writer) load what they run and not the network server.
_HOMES = {
    "Collector": ".service",
    "ArcStore": ".store",
    "SQLiteStore": ".store",
    "StoreError": ".store",
    "default_db_path": ".store",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
