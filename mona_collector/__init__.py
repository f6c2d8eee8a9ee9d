"""The embedded collector: a Fluentd Forward server that merges mona records into ARC documents.

Run it with ``mona collect`` or embed it with :class:`Collector`; query it with ``mona arcs`` and
``mona stats``, or through :class:`SQLiteStore`.
"""

from .service import Collector
from .store import ArcStore, SQLiteStore, StoreError, default_db_path

__all__ = ["ArcStore", "Collector", "SQLiteStore", "StoreError", "default_db_path"]
