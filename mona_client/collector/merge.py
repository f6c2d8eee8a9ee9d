"""Merging exported records into ARC documents, in memory.

One ARC document exists per ``(user_id, root context id)``. A record exported in context
``"root.a.b"`` updates the root document's ``sub_arcs["a"]["sub_arcs"]["b"]`` node. For every key the
merge remembers the export time that set it, so that a later export wins by ``export_timestamp`` and,
on a tie, by arrival order, even when an older export arrives hours late.

The merger keeps a bounded LRU cache of hot documents and collects the documents a batch touched, so
the store can write each touched document once per transaction instead of once per record. What
``loader`` returns must be a document previously produced here (the store keeps them as given).

Internal bookkeeping (the per-key export times) lives under the ``"_t"`` key of every node and is
removed by :func:`public_document` before a document is shown.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ..record import (
    ARC_CLASS_KEY,
    CONTEXT,
    CONTEXT_SEPARATOR,
    EXPORT_TIMESTAMP,
    GLOBALS_KEY,
    MESSAGE,
    USER_ID,
)

ArcKey = Tuple[str, str]  # (user_id, root context id)
Document = Dict[str, Any]
Loader = Callable[[List[ArcKey]], Dict[ArcKey, Document]]

_TIMES = "_t"


class RejectedRecord(ValueError):
    """A record of the mona tag that cannot be merged into an ARC (it is still kept raw)."""


def _new_node() -> Document:
    return {"arc_class": None, "fields": {}, "sub_arcs": {}, _TIMES: {"fields": {}, "arc_class": None}}


def new_document(user_id: str, context_id: str, export_time: float) -> Document:
    """An empty ARC document, before its first export is merged."""
    document = _new_node()
    document.update(
        {
            "user_id": user_id,
            "context_id": context_id,
            "first_export": export_time,
            "last_export": export_time,
            "export_count": 0,
            "globals": {},
        }
    )
    document[_TIMES]["globals"] = {}
    return document


def public_document(document: Document) -> Document:
    """A copy of ``document`` without the internal bookkeeping, in a stable key order."""
    out: Document = {}
    for key in ("user_id", "context_id", "arc_class", "first_export", "last_export", "export_count"):
        if key in document:
            out[key] = document[key]
    out["fields"] = document["fields"]
    if "globals" in document:
        out["globals"] = document["globals"]
    out["sub_arcs"] = {name: public_document(node) for name, node in document["sub_arcs"].items()}
    return out


def _key(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


class ArcMerger:
    """Merges records into ARC documents held in an LRU cache backed by ``loader``."""

    def __init__(self, loader: Loader, cache_size: int = 5000) -> None:
        self._loader = loader
        self._cache_size = cache_size
        self._cache: "OrderedDict[ArcKey, Document]" = OrderedDict()
        self._dirty: Dict[ArcKey, Document] = {}

    def prefetch(self, keys: Iterable[ArcKey]) -> None:
        """Load, in one go, the documents of ``keys`` that are not cached (missing ones stay absent)."""
        missing = [key for key in set(keys) if key not in self._cache and key not in self._dirty]
        if missing:
            for key, document in self._loader(missing).items():
                self._remember(key, document)

    def _remember(self, key: ArcKey, document: Document) -> None:
        cache = self._cache
        cache[key] = document
        cache.move_to_end(key)
        while len(cache) > self._cache_size:
            # An evicted document that is still dirty stays reachable through _dirty until written.
            cache.popitem(last=False)

    def _document(self, key: ArcKey, when: float) -> Document:
        document = self._cache.get(key)
        if document is None:
            document = self._loader([key]).get(key) or new_document(key[0], key[1], when)
        self._remember(key, document)
        return document

    def merge(self, record: Any, event_time: float) -> ArcKey:
        """Merge one record of the mona tag; raises :class:`RejectedRecord` for a malformed one."""
        # This runs once per record: the checks of record_key() and export_time() are inlined.
        if type(record) is not dict:
            raise RejectedRecord("the record is not a map")
        context = record.get(CONTEXT)
        message = record.get(MESSAGE)
        if type(context) is not str or not context:
            raise RejectedRecord("the record has no context id")
        if type(message) is not dict:
            raise RejectedRecord("the record's message is not a map")
        user_id = record.get(USER_ID)
        if type(user_id) is not str:
            user_id = "" if user_id is None else str(user_id)
        when = record.get(EXPORT_TIMESTAMP)
        if type(when) is not int and type(when) is not float:
            when = event_time
        root, _, path = context.partition(CONTEXT_SEPARATOR)
        key = (user_id, root)
        document = self._dirty.get(key)
        if document is None:
            document = self._dirty[key] = self._document(key, when)
        if when < document["first_export"]:
            document["first_export"] = when
        if when > document["last_export"]:
            document["last_export"] = when
        document["export_count"] += 1
        node = document
        if path:
            for name in path.split(CONTEXT_SEPARATOR):
                children = node["sub_arcs"]
                child = children.get(name)
                if child is None:
                    child = children[name] = _new_node()
                node = child
        self._apply(document, node, message, when)
        return key

    @staticmethod
    def _apply(document: Document, node: Document, message: Dict[Any, Any], when: float) -> None:
        fields = node["fields"]
        times = node[_TIMES]
        field_times = times["fields"]
        for name, value in message.items():
            if name == ARC_CLASS_KEY:
                previous = times["arc_class"]
                if previous is None or when >= previous:
                    node["arc_class"] = value if value is None else _key(value)
                    times["arc_class"] = when
                continue
            if name == GLOBALS_KEY and isinstance(value, dict):
                global_values = document["globals"]
                global_times = document[_TIMES]["globals"]
                for global_name, global_value in value.items():
                    global_name = _key(global_name)
                    previous = global_times.get(global_name)
                    if previous is None or when >= previous:
                        global_values[global_name] = global_value
                        global_times[global_name] = when
                continue
            name = _key(name)
            previous = field_times.get(name)
            if previous is None or when >= previous:
                fields[name] = value
                field_times[name] = when

    def take_dirty(self) -> List[Tuple[ArcKey, Document]]:
        """The documents changed since the last call, each once; the caller writes them."""
        dirty = list(self._dirty.items())
        self._dirty.clear()
        return dirty

    def forget(self) -> None:
        """Drop every cached document (after a failed write, so that the store is the truth again)."""
        self._cache.clear()
        self._dirty.clear()
