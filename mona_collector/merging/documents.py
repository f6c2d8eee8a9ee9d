"""Merging exported records into ARC documents, in memory.

One ARC document exists per ``(user_id, root context id)``. A record exported in context
``"root.a.b"`` updates the node of sub-context ``a.b``; :func:`public_document` shows it as
``sub_arcs["a"]["sub_arcs"]["b"]``. For every key the merge knows the export time that set it, so that
a later export wins by ``export_timestamp`` and, on a tie, by arrival order, even when an older export
arrives hours late.

The merger keeps an LRU cache of hot documents, bounded in documents and in bytes, and collects the
documents a batch touched, with the nodes it changed in each, so that the store can write each touched
document once per transaction instead of once per record, and only its changed nodes.

Sub-contexts deeper than ``max_depth`` levels below the root (``"run.a.b"`` is 2 levels deep) are
refused record by record (counted as rejected): the cost of a record stays linear in its size and
every document stays shallow enough to be shown and exported.

Internal form (what the store keeps, packed with msgpack; :func:`public_document` turns it into the
documented shape)::

    {"v": 2, "user_id", "context_id", "first_export", "last_export", "export_count",
     "globals": {...}, "globals_t": {key: time},
     "node": NODE,                     # the root context
     "subs": {"a": NODE, "a.b": NODE}} # every sub-context by its dotted path, parents first

Keys starting with ``_`` are bookkeeping of the store (e.g. :data:`SIZE_KEY`), never shown.

    NODE = [arc_class, arc_class_time, fields, field_times, newest]

``newest`` is the largest export time of the node's fields (None while it has none). ``field_times``
is None while every field was set at ``newest`` (a node written by one export, or by several with the
same time: the common case), else a dict with the time of each field, in the same key order as
``fields``. Keeping the path flat saves a dict walk per record, keeping times implicit saves a dict
per node and most of the packing.
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Set, Tuple

from mona_client.record import (
    ARC_CLASS_KEY,
    CONTEXT,
    CONTEXT_SEPARATOR,
    EXPORT_TIMESTAMP,
    GLOBALS_KEY,
    MESSAGE,
    RECORD_ID,
    USER_ID,
)

from .record_ids import LAST_SEQUENCE

ArcKey = Tuple[str, str]  # (user_id, root context id)
Document = Dict[str, Any]
Node = List[Any]
Loader = Callable[[List[ArcKey]], Dict[ArcKey, Document]]

FORMAT_VERSION = 2

#: The default and the largest allowed depth limit of sub-contexts (levels below the root context).
DEFAULT_MAX_DEPTH = 64
MAX_DEPTH_LIMIT = 256
#: The default bound of the merger's document cache, in bytes of the documents' stored form.
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
#: A document's approximate stored size in bytes, kept in it by the store (absent: unknown).
SIZE_KEY = "_bytes"

# Positions in a NODE list.
CLASS, CLASS_TIME, FIELDS, FIELD_TIMES, NEWEST = range(5)


#: Export timestamps are kept when finite and within this many seconds of the epoch (SQLite's REAL
#: columns and comparisons stay sane); others are replaced by the event time.
_TIME_LIMIT = 2**53
_EVENT_TIME = struct.Struct(">II")


def event_seconds(time: Any) -> float:
    """Seconds of an entry's time as the merger decodes it: an int, a finite float, or the EventTime
    extension left undecoded as ``slice(0, 8 bytes)`` (see :mod:`.merger`)."""
    if type(time) is slice:
        data = time.stop
        if time.start == 0 and type(data) is bytes and len(data) == 8:
            seconds, nanoseconds = _EVENT_TIME.unpack(data)
            return seconds + nanoseconds / 1e9
        raise RejectedRecord("an event time of an unknown extension type")
    if type(time) is int or type(time) is float:
        return time
    raise RejectedRecord(f"an event time of type {type(time).__name__}")


def _export_time(value: Any, time: Any) -> float:
    """The export time of a record whose ``export_timestamp`` is ``value`` and event time ``time``."""
    if (type(value) is int or type(value) is float) and -_TIME_LIMIT < value < _TIME_LIMIT:
        return value  # NaN fails the comparison
    value = event_seconds(time)
    if -_TIME_LIMIT < value < _TIME_LIMIT:
        return value
    raise RejectedRecord("neither the export timestamp nor the event time is a usable time")


class RejectedRecord(ValueError):
    """A record of the mona tag that cannot be merged into an ARC (it is still kept raw)."""


def new_node() -> Node:
    return [None, None, {}, None, None]


def new_document(user_id: str, context_id: str, export_time: float) -> Document:
    """An empty ARC document, before its first export is merged."""
    return {
        "v": FORMAT_VERSION,
        "user_id": user_id,
        "context_id": context_id,
        "first_export": export_time,
        "last_export": export_time,
        "export_count": 0,
        "globals": {},
        "globals_t": {},
        "node": new_node(),
        "subs": {},
    }


def _public_node(node: Node) -> Document:
    return {"arc_class": node[CLASS], "fields": node[FIELDS], "sub_arcs": {}}


def public_document(document: Document) -> Document:
    """The documented shape of ``document``, without the internal bookkeeping.

    Nodes are nested at most :data:`MAX_DEPTH_LIMIT` levels deep, so that any reader (JSON, CSV)
    can walk the result; a deeper node (only a database written before depths were limited has
    them) is shown in the ``sub_arcs`` of its ancestor at that depth, under the rest of its path.
    """
    root = _public_node(document["node"])
    out: Document = {
        "user_id": document["user_id"],
        "context_id": document["context_id"],
        "arc_class": root["arc_class"],
        "first_export": document["first_export"],
        "last_export": document["last_export"],
        "export_count": document["export_count"],
        "fields": root["fields"],
        "globals": document["globals"],
        "sub_arcs": root["sub_arcs"],
    }
    shown: Dict[str, Document] = {}
    for path, node in document["subs"].items():  # parents come before their children
        parent, separator, name = path.rpartition(CONTEXT_SEPARATOR)
        if separator and parent not in shown:  # below the deepest level shown
            names = path.split(CONTEXT_SEPARATOR)
            parent = CONTEXT_SEPARATOR.join(names[:MAX_DEPTH_LIMIT])
            name = CONTEXT_SEPARATOR.join(names[MAX_DEPTH_LIMIT:])
        siblings = shown[parent]["sub_arcs"] if separator else out["sub_arcs"]
        if path.count(CONTEXT_SEPARATOR) >= MAX_DEPTH_LIMIT:
            siblings[name] = _public_node(node)  # not a parent of anything shown
            continue
        shown[path] = siblings[name] = _public_node(node)
    return out


def upgrade_document(document: Document) -> Document:
    """A document in the current internal form, from any form a store may hold."""
    if document.get("v") == FORMAT_VERSION:
        return document

    # Version 1: nested nodes {"arc_class", "fields", "sub_arcs", "_t": {"fields", "arc_class"}}.
    def node_of(old: Document) -> Node:
        times = old["_t"]["fields"]
        return [old["arc_class"], old["_t"]["arc_class"], old["fields"], dict(times), max(times.values(), default=None)]

    subs: Dict[str, Node] = {}

    def walk(old: Document, prefix: str) -> None:
        for name, child in old["sub_arcs"].items():
            path = prefix + name
            subs[path] = node_of(child)
            walk(child, path + CONTEXT_SEPARATOR)

    walk(document, "")
    upgraded = new_document(document["user_id"], document["context_id"], document["first_export"])
    upgraded.update(
        last_export=document["last_export"],
        export_count=document["export_count"],
        globals=document["globals"],
        globals_t=document["_t"]["globals"],
        node=node_of(document),
        subs=subs,
    )
    return upgraded


def _key(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _add_path(document: Document, path: str, changed: Set[str]) -> Node:
    """The node of a sub-context seen for the first time, its missing parents created first (and
    all of them noted in ``changed``). Walks up only as far as the nearest existing parent."""
    subs = document["subs"]
    missing = [path]
    parent = path
    while True:
        parent, separator, _ = parent.rpartition(CONTEXT_SEPARATOR)
        if not separator or parent in subs:
            break
        missing.append(parent)
    for created in reversed(missing):
        subs[created] = new_node()
        changed.add(created)
    return subs[path]


def _merge_slowly(document: Document, node: Node, message: Dict[Any, Any], when: float) -> None:
    """Merge key by key: for exports older than what the node holds, MONA_GLOBALS, non-string keys."""
    fields = node[FIELDS]
    field_times = node[FIELD_TIMES]
    if field_times is None:
        field_times = node[FIELD_TIMES] = dict.fromkeys(fields, node[NEWEST])
    newest = node[NEWEST]
    for name, value in message.items():
        if name == ARC_CLASS_KEY:
            previous = node[CLASS_TIME]
            if previous is None or when >= previous:
                node[CLASS] = value if value is None else _key(value)
                node[CLASS_TIME] = when
            continue
        if name == GLOBALS_KEY and isinstance(value, dict):
            global_values = document["globals"]
            global_times = document["globals_t"]
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
            if newest is None or when > newest:
                newest = node[NEWEST] = when


def combine_documents(stored: Document, later: Document) -> Document:
    """``stored`` with ``later`` (merged from records that arrived after it) merged in, in place.

    The result equals merging every record of both, in arrival order, into one document.
    """
    stored["first_export"] = min(stored["first_export"], later["first_export"])
    stored["last_export"] = max(stored["last_export"], later["last_export"])
    stored["export_count"] += later["export_count"]
    global_values, global_times = stored["globals"], stored["globals_t"]
    for name, when in later["globals_t"].items():
        previous = global_times.get(name)
        if previous is None or when >= previous:
            global_values[name] = later["globals"][name]
            global_times[name] = when
    _combine_nodes(stored["node"], later["node"])
    subs = stored["subs"]
    for path, node in later["subs"].items():
        if path in subs:
            _combine_nodes(subs[path], node)
        else:
            subs[path] = node
    return stored


def _combine_nodes(node: Node, later: Node) -> None:
    when = later[CLASS_TIME]
    if when is not None and (node[CLASS_TIME] is None or when >= node[CLASS_TIME]):
        node[CLASS], node[CLASS_TIME] = later[CLASS], when
    later_times = later[FIELD_TIMES]
    if later_times is None:
        later_times = dict.fromkeys(later[FIELDS], later[NEWEST])
    if later_times:
        _merge_slowly_times(node, later[FIELDS], later_times)


def _merge_slowly_times(node: Node, values: Dict[str, Any], times: Dict[str, Any]) -> None:
    fields = node[FIELDS]
    field_times = node[FIELD_TIMES]
    if field_times is None:
        field_times = node[FIELD_TIMES] = dict.fromkeys(fields, node[NEWEST])
    for name, when in times.items():
        previous = field_times.get(name)
        if previous is None or when >= previous:
            fields[name] = values[name]
            field_times[name] = when
            if node[NEWEST] is None or when > node[NEWEST]:
                node[NEWEST] = when


class MergeResult:
    """What :meth:`ArcMerger.merge_events` did with one message's events."""

    __slots__ = ("dropped", "reject_reason", "rejected")

    def __init__(self) -> None:
        self.dropped: List[int] = []  # indices of the events dropped as duplicates
        self.rejected = 0
        self.reject_reason: Optional[str] = None


class ArcMerger:
    """Merges records into ARC documents held in an LRU cache backed by ``loader``.

    Documents not in the cache are started empty and looked up in the store all at once by
    :meth:`take_dirty` (one query per transaction instead of one per new ARC); a stored one is then
    combined with what this transaction merged.

    The cache holds at most ``cache_size`` documents and about ``cache_bytes`` bytes of them (as the
    store measured them, see :data:`SIZE_KEY`; the document used last always stays).
    ``on_pressure(cached_bytes, limit)`` is called when a document is evicted for the byte bound.
    Records of a context more than ``max_depth`` levels below its root are refused.
    """

    def __init__(
        self,
        loader: Loader,
        cache_size: int = 5000,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
        on_pressure: Optional[Callable[[int, int], None]] = None,
    ) -> None:
        self._loader = loader
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        self.max_depth = max_depth
        self._on_pressure = on_pressure
        self._cache: OrderedDict[ArcKey, Document] = OrderedDict()
        self._charged: Dict[ArcKey, int] = {}  # the size each cached document counts for
        self._cached_bytes = 0
        self._dirty: Dict[ArcKey, Document] = {}
        # The paths of the nodes each dirty document had changed or created ("" is the root).
        self._changed: Dict[ArcKey, Set[str]] = {}
        self._unresolved: List[ArcKey] = []  # dirty documents started without looking in the store
        # Documents taken for transactions that are not committed yet, oldest first: the store does
        # not have them yet, so they must not be looked up there even if the cache let them go.
        self._in_flight: Deque[Dict[ArcKey, Document]] = deque()

    def _touch(self, key: ArcKey, when: float) -> Document:
        """The document of ``key`` for this transaction (first touch of the key in it)."""
        document = self._cache.get(key)
        if document is not None:
            self._cache.move_to_end(key)  # the newest entry is the last one
        else:
            for taken in reversed(self._in_flight):
                document = taken.get(key)
                if document is not None:
                    break
            else:
                document = new_document(key[0], key[1], when)
                self._unresolved.append(key)
            self._remember(key, document)
        self._dirty[key] = document
        self._changed[key] = set()
        return document

    def _remember(self, key: ArcKey, document: Document) -> None:
        cache = self._cache
        cache[key] = document
        if SIZE_KEY in document:  # a new document has no size yet: nothing to charge
            self._charge(key, document)
        if len(cache) > self._cache_size or self._cached_bytes > self._cache_bytes:
            self._evict()

    def _charge(self, key: ArcKey, document: Document) -> None:
        size = document.get(SIZE_KEY, 0)
        self._cached_bytes += size - self._charged.get(key, 0)
        self._charged[key] = size

    def _evict(self) -> None:
        # An evicted document that is still dirty stays reachable through _dirty until written, and
        # through _in_flight until committed.
        cache = self._cache
        pressed = False
        while len(cache) > 1 and (len(cache) > self._cache_size or self._cached_bytes > self._cache_bytes):
            pressed = pressed or self._cached_bytes > self._cache_bytes
            key, _ = cache.popitem(last=False)
            self._cached_bytes -= self._charged.pop(key, 0)
        if pressed and self._on_pressure is not None:
            self._on_pressure(self._cached_bytes, self._cache_bytes)

    def sized(self, documents: Iterable[Tuple[ArcKey, Document]]) -> None:
        """The store measured these documents again (after :meth:`take_dirty`): count their new
        sizes against the byte bound, evicting the least recently used documents beyond it."""
        for key, document in documents:
            if key in self._cache:
                self._charge(key, document)
        self._evict()

    def merge_events(self, events: Iterable[Tuple[int, int, Any]], ids: Any) -> MergeResult:
        """:meth:`merge_entries` for decoded events ``(seconds, nanoseconds, record)``."""
        return self.merge_entries(
            [(seconds + nanos / 1e9 if nanos else seconds, record) for seconds, nanos, record in events], ids
        )

    def merge_entries(self, events: List[Any], ids: Any, owner: Optional[str] = None) -> MergeResult:
        """Drop duplicates (with ``ids``, a :class:`~.dedup.RecordIdFilter`) and merge the other
        records of one message of the mona tag, in order. ``events`` are its ``[time, record]``
        entries (see :func:`event_seconds` for the time); the time is only read when a record has no
        usable ``export_timestamp``.

        A record that cannot be merged (not a map, no context id, a message that is not a map, no
        usable time, a context nested deeper than :attr:`max_depth`, a ``user_id`` other than
        ``owner`` when the sender authenticated as ``owner``, anything unexpected) is counted as
        rejected and the others are merged. Duplicates are found per user, so a record refused for
        its user never takes an id of that user.

        This is the collector's hot loop (once per record): the checks, the duplicate test and the
        merge are written out inline with local variables. The fast paths: the next sequential id of
        the stream seen last, the same ARC as the record before, an export not older than what its node
        holds (merged with ``dict.update``). Everything else goes through small functions.
        """
        result = MergeResult()
        dropped = result.dropped
        dirty = self._dirty
        changed_nodes = self._changed
        max_depth = self.max_depth
        # A context with more separators than max_depth is at least this long: shorter ones are not
        # even counted (len() is nearly free, counting is not).
        deep_length = 2 * max_depth
        changed: Set[str] = set()
        admit = ids.admit
        ids.begin(events, 1)
        # The stream of sequential ids seen last: the id that would come next, from which user.
        expect_id = expect_user = expect_prefix = expect_ends = None
        expect_n = 0
        # The ARC of the record before.
        last_user = last_root = None
        document: Document = {}
        first = last = 0.0
        count = 0
        subs: Dict[str, Node] = {}
        root_node: Node = []
        index = -1
        for entry in events:
            index += 1
            record = entry[1]
            if type(record) is not dict:
                result.rejected += 1
                result.reject_reason = result.reject_reason or "the record is not a map"
                continue
            user = record.get(USER_ID)
            if type(user) is not str:
                user = "" if user is None else str(user)
            if owner is not None and user != owner:
                result.rejected += 1
                result.reject_reason = result.reject_reason or (
                    f"user_id {user[:100]!r} is not the user the sender authenticated as ({owner[:100]!r})"
                )
                continue

            # --- duplicates ---
            record_id = record.get(RECORD_ID)
            if type(record_id) is str:
                if record_id == expect_id and user == expect_user:
                    expect_n += 1
                    expect_ends[-1] = expect_n  # type: ignore[index]
                    expect_id = expect_prefix + str(expect_n + 1) if expect_n < LAST_SEQUENCE else None
                else:
                    admitted, run = admit(user, record_id, index)
                    if not admitted:
                        dropped.append(index)
                        continue
                    if run is not None:
                        expect_user, expect_prefix, expect_n, expect_ends = run
                        expect_id = expect_prefix + str(expect_n + 1)

            # --- checks ---
            context = record.get(CONTEXT)
            message = record.get(MESSAGE)
            if type(context) is not str or not context:
                result.rejected += 1
                result.reject_reason = result.reject_reason or "the record has no context id"
                continue
            if type(message) is not dict:
                result.rejected += 1
                result.reject_reason = result.reject_reason or "the record's message is not a map"
                continue
            if len(context) > deep_length and context.count(CONTEXT_SEPARATOR) > max_depth:
                result.rejected += 1
                result.reject_reason = result.reject_reason or (
                    f"its context is nested {context.count(CONTEXT_SEPARATOR)} levels deep, more than the "
                    f"limit of {max_depth}"
                )
                continue
            when = record.get(EXPORT_TIMESTAMP)
            if type(when) is not int or not -_TIME_LIMIT < when < _TIME_LIMIT:
                try:
                    when = _export_time(when, entry[0])
                except RejectedRecord as exc:
                    result.rejected += 1
                    result.reject_reason = result.reject_reason or str(exc)
                    continue

            try:
                # --- the document ---
                root, _, path = context.partition(CONTEXT_SEPARATOR)
                if root != last_root or user != last_user:
                    if last_root is not None:  # the export times and count of the previous ARC
                        document["first_export"], document["last_export"], document["export_count"] = first, last, count
                    last_root = None
                    key = (user, root)
                    document = dirty.get(key) or self._touch(key, when)
                    changed = changed_nodes[key]
                    subs = document["subs"]
                    root_node = document["node"]
                    first, last, count = document["first_export"], document["last_export"], document["export_count"]
                    last_root, last_user = root, user
                if when < first:
                    first = when
                elif when > last:
                    last = when
                count += 1

                # --- the node ---
                if not path:
                    node = root_node
                else:
                    node = subs.get(path)
                    if node is None:
                        if CONTEXT_SEPARATOR in path:
                            node = _add_path(document, path, changed)
                        else:
                            node = subs[path] = [None, None, {}, None, None]
                changed.add(path)
                newest = node[NEWEST]
                if (newest is not None and when < newest) or GLOBALS_KEY in message:
                    _merge_slowly(document, node, message, when)
                    continue
                try:
                    "".join(message)  # raises TypeError unless every key is a string
                except TypeError:
                    _merge_slowly(document, node, message, when)
                    continue
                fields = node[FIELDS]
                field_times = node[FIELD_TIMES]
                if field_times is None and newest is not None and when != newest and fields:
                    field_times = node[FIELD_TIMES] = dict.fromkeys(fields, newest)
                fields.update(message)
                if field_times is not None:
                    field_times.update(dict.fromkeys(message, when))
                node[NEWEST] = when
                if ARC_CLASS_KEY in message:
                    value = fields.pop(ARC_CLASS_KEY)
                    if field_times is not None:
                        del field_times[ARC_CLASS_KEY]
                    if node[CLASS_TIME] is None or when >= node[CLASS_TIME]:
                        node[CLASS] = value if value is None else _key(value)
                        node[CLASS_TIME] = when
                    if not fields:
                        node[NEWEST] = newest
            except Exception as exc:
                result.rejected += 1
                result.reject_reason = result.reject_reason or f"cannot be merged: {type(exc).__name__}: {exc}"
        if last_root is not None:
            document["first_export"], document["last_export"], document["export_count"] = first, last, count
        return result

    def take_dirty(self) -> List[Tuple[ArcKey, Document]]:
        """The documents changed since the last call, each once; the caller writes them.

        Documents started without a look in the store are looked up now, in one call, and combined
        with the stored ones that exist.
        """
        if self._unresolved:
            stored = self._loader(self._unresolved)
            for key, document in stored.items():
                merged = combine_documents(upgrade_document(document), self._dirty[key])
                self._dirty[key] = merged
                if key in self._cache:
                    self._cache[key] = merged
            self._unresolved = []
        dirty = list(self._dirty.items())
        self._in_flight.append(self._dirty)
        self._dirty = {}
        return dirty

    def take_changed_nodes(self) -> Dict[ArcKey, Set[str]]:
        """The paths of the nodes changed or created in each document :meth:`take_dirty` returned
        ("" is the root); call right after it."""
        changed, self._changed = self._changed, {}
        return changed

    def committed(self) -> None:
        """The oldest transaction taken by :meth:`take_dirty` is in the store now."""
        if self._in_flight:
            self._in_flight.popleft()

    def forget(self) -> None:
        """Drop every cached document (after a failed write, so that the store is the truth again)."""
        self._cache.clear()
        self._charged.clear()
        self._cached_bytes = 0
        self._dirty.clear()
        self._changed.clear()
        self._in_flight.clear()
        self._unresolved = []
