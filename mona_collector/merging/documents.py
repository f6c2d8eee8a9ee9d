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

from collections import OrderedDict, deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Set, Tuple

from mona_client.forward import ForwardProtocolError
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

from ..event_time import time_seconds
from .record_ids import RecordIdFilter

ArcKey = Tuple[str, str]  # (user_id, root context id)
Document = Dict[str, Any]
Node = List[Any]
Loader = Callable[[List[ArcKey]], Dict[ArcKey, Document]]

FORMAT_VERSION = 2

#: The default and the largest allowed depth limit of sub-contexts (levels below the root context).
DEFAULT_MAX_DEPTH = 64
MAX_DEPTH_LIMIT = 256
#: The default bound of the merger's document cache, in bytes of memory (as estimated from the
#: documents' stored sizes, see :data:`MEMORY_PER_STORED_BYTE`).
DEFAULT_CACHE_BYTES = 16 * 1024 * 1024
#: A document's approximate stored size in bytes, kept in it by the store (absent: unknown).
SIZE_KEY = "_bytes"
#: What a cached document takes in memory per byte of its stored (msgpack) form: dicts, their entries
#: and boxed numbers take several times what msgpack packs. Measured with ``tracemalloc`` on documents
#: read back from the store: 6.0 (100 number-valued fields in 20 nodes), 6.5 (10 fields in 2 nodes), 7.3
#: (8 fields in 8 nodes); long strings take about what they are stored in, so string-heavy documents are
#: over-counted, never under-counted.
MEMORY_PER_STORED_BYTE = 8

# Positions in a NODE list.
CLASS, CLASS_TIME, FIELDS, FIELD_TIMES, NEWEST = range(5)


#: Export timestamps are kept when finite and within this many seconds of the epoch (SQLite's REAL
#: columns and comparisons stay sane); others are replaced by the event time.
_TIME_LIMIT = 2**53


def is_later_or_same(when: float, previous: Optional[float]) -> bool:
    """The merge rule: a value exported at ``when`` replaces the one exported at ``previous`` (None:
    there is none) unless that one is later. On equal times the later arrival wins: records are
    merged in arrival order, so the one merged now is the one that arrived later."""
    return previous is None or when >= previous


def _export_time(value: Any, time: Any) -> float:
    """The export time of a record whose ``export_timestamp`` is ``value`` and event time ``time``."""
    if (type(value) is int or type(value) is float) and -_TIME_LIMIT < value < _TIME_LIMIT:
        exported: float = value  # an int or a finite float (NaN fails the comparison)
        return exported
    try:
        seconds = time_seconds(time)
    except ForwardProtocolError as exc:
        raise RejectedRecordError(f"no usable export timestamp, and {exc}") from None
    if -_TIME_LIMIT < seconds < _TIME_LIMIT:
        return seconds
    raise RejectedRecordError("neither the export timestamp nor the event time is a usable time")


class RejectedRecordError(ValueError):
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


def _key(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _set_export_times(document: Document, first: float, last: float, count: int) -> None:
    document["first_export"], document["last_export"], document["export_count"] = first, last, count


def _add_path(document: Document, path: str, changed: Set[str]) -> Node:
    """The node of a sub-context seen for the first time, its missing parents created first (and
    all of them noted in ``changed``). Walks up only as far as the nearest existing parent."""
    subs = document["subs"]
    if CONTEXT_SEPARATOR not in path:  # a child of the root: the common case, kept cheap
        node: Node = [None, None, {}, None, None]  # new_node(), without the call
        subs[path] = node
        return node
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
    node = subs[path]
    return node


def _set_if_later(values: Dict[str, Any], times: Dict[str, Any], name: str, value: Any, when: float) -> bool:
    """Set ``values[name]`` exported at ``when``, by the merge rule; whether it was set."""
    if is_later_or_same(when, times.get(name)):
        values[name] = value
        times[name] = when
        return True
    return False


def _set_class(node: Node, value: Any, when: float) -> None:
    """Set the node's ARC class exported at ``when``, by the merge rule."""
    if is_later_or_same(when, node[CLASS_TIME]):
        node[CLASS] = value if value is None else _key(value)
        node[CLASS_TIME] = when


def _field_times(node: Node) -> Dict[str, Any]:
    """The node's time of each field, made explicit (it is implicit while all equal ``newest``)."""
    field_times: Optional[Dict[str, Any]] = node[FIELD_TIMES]
    if field_times is None:
        field_times = node[FIELD_TIMES] = dict.fromkeys(node[FIELDS], node[NEWEST])
    return field_times


def _set_field(node: Node, field_times: Dict[str, Any], name: str, value: Any, when: float) -> None:
    if _set_if_later(node[FIELDS], field_times, name, value, when) and (node[NEWEST] is None or when > node[NEWEST]):
        node[NEWEST] = when


def _all_strings(message: Dict[Any, Any]) -> bool:
    """Whether every key of ``message`` is a string (joining them is the cheapest test)."""
    try:
        "".join(message)
    except TypeError:
        return False
    return True


def _merge_into_node(document: Document, node: Node, message: Dict[Any, Any], when: float) -> None:
    """Merge an export's message into its node, by the merge rule.

    The common case, an export not older than anything the node holds, with string keys and no
    ``MONA_GLOBALS``, is one ``dict.update``; anything else is merged key by key.
    """
    newest = node[NEWEST]
    if not is_later_or_same(when, newest) or GLOBALS_KEY in message or not _all_strings(message):
        _merge_key_by_key(document, node, message, when)
        return
    fields = node[FIELDS]
    field_times = node[FIELD_TIMES]
    if field_times is None and newest is not None and when != newest and fields:
        field_times = node[FIELD_TIMES] = dict.fromkeys(fields, newest)
    fields.update(message)
    if field_times is not None:
        field_times.update(dict.fromkeys(message, when))
    node[NEWEST] = when
    if ARC_CLASS_KEY in message:  # merged as a field above: move it where the class goes
        value = fields.pop(ARC_CLASS_KEY)
        if field_times is not None:
            del field_times[ARC_CLASS_KEY]
        _set_class(node, value, when)
        if not fields:
            node[NEWEST] = newest


def _merge_key_by_key(document: Document, node: Node, message: Dict[Any, Any], when: float) -> None:
    """Merge key by key: for exports older than what the node holds, MONA_GLOBALS, non-string keys."""
    field_times = _field_times(node)
    for name, value in message.items():
        if name == ARC_CLASS_KEY:
            _set_class(node, value, when)
        elif name == GLOBALS_KEY and isinstance(value, dict):
            global_values, global_times = document["globals"], document["globals_t"]
            for global_name, global_value in value.items():
                _set_if_later(global_values, global_times, _key(global_name), global_value, when)
        else:
            _set_field(node, field_times, _key(name), value, when)


def combine_documents(stored: Document, later: Document) -> Document:
    """``stored`` with ``later`` (merged from records that arrived after it) merged in, in place.

    The result equals merging every record of both, in arrival order, into one document.
    """
    stored["first_export"] = min(stored["first_export"], later["first_export"])
    stored["last_export"] = max(stored["last_export"], later["last_export"])
    stored["export_count"] += later["export_count"]
    global_values, global_times = stored["globals"], stored["globals_t"]
    for name, when in later["globals_t"].items():
        _set_if_later(global_values, global_times, name, later["globals"][name], when)
    _combine_nodes(stored["node"], later["node"])
    subs = stored["subs"]
    for path, node in later["subs"].items():
        if path in subs:
            _combine_nodes(subs[path], node)
        else:
            subs[path] = node
    return stored


def _combine_nodes(node: Node, later: Node) -> None:
    """Merge the node ``later`` (merged from records that arrived after) into ``node``."""
    if later[CLASS_TIME] is not None:
        _set_class(node, later[CLASS], later[CLASS_TIME])
    later_times = later[FIELD_TIMES]
    if later_times is None:
        later_times = dict.fromkeys(later[FIELDS], later[NEWEST])
    if later_times:
        values = later[FIELDS]
        field_times = _field_times(node)
        for name, when in later_times.items():
            _set_field(node, field_times, name, values[name], when)


class MergeResult:
    """What :meth:`ArcMerger.merge_entries` did with one message's entries."""

    __slots__ = ("dropped", "reject_reason", "rejected")

    def __init__(self) -> None:
        self.dropped: List[int] = []  # indices of the entries dropped as duplicates
        self.rejected = 0
        self.reject_reason: Optional[str] = None

    def reject(self, reason: str) -> None:
        """Count a record that cannot be merged; the first reason is kept for the log line."""
        self.rejected += 1
        if self.reject_reason is None:
            self.reject_reason = reason


class ArcMerger:
    """Merges records into ARC documents held in an LRU cache backed by ``loader``.

    Documents not in the cache are started empty and looked up in the store all at once by
    :meth:`take_dirty` (one query per transaction instead of one per new ARC); a stored one is then
    combined with what this transaction merged.

    The cache holds at most ``cache_size`` documents and about ``cache_bytes`` bytes of memory for them
    (estimated from the size the store measured, see :data:`SIZE_KEY` and :data:`MEMORY_PER_STORED_BYTE`;
    the document used last always stays).
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
        # A context with more separators than max_depth is at least this long: shorter ones are not
        # even counted (len() is nearly free, counting is not).
        self._deep_length = 2 * max_depth
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
        size = document.get(SIZE_KEY, 0) * MEMORY_PER_STORED_BYTE
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

    def merge_entries(self, entries: List[Any], ids: RecordIdFilter, owner: Optional[str] = None) -> MergeResult:
        """Drop duplicates (found with ``ids``) and merge the other records of one message of the mona
        tag, in order. ``entries`` are its ``[time, record]`` entries; the time (see
        :func:`~mona_collector.event_time.time_seconds`) is only read when a record has no usable
        ``export_timestamp``.

        A record that cannot be merged (not a map, no context id, a message that is not a map, no
        usable time, a context nested deeper than :attr:`max_depth`, a ``user_id`` other than
        ``owner`` when the sender authenticated as ``owner``, anything unexpected) is counted as
        rejected and the others are merged. Duplicates are found per user, so a record refused for
        its user never takes an id of that user.

        This is the collector's hot loop (once per record): its steps are a few calls, each with a
        fast path for the common case: the next sequential id of the stream seen last, the same ARC
        (and the same context, whose node is then not looked up again) as the record before, an
        export of the same second as every field its node holds, merged inline as one ``dict.update``.
        """
        result = MergeResult()
        is_new = ids.for_message(entries).is_new
        deep_length = self._deep_length
        # The ARC of the record before (the common case is a run of records of one ARC), with its
        # export times and count as local numbers, written back when another ARC comes.
        arc_user = arc_root = None
        document: Document = {}
        changed: Set[str] = set()
        subs: Dict[str, Node] = {}
        first = last = 0.0
        count = 0
        # The context id of the record before and its node: a run of records of one context (the
        # common case) finds its node without splitting the id again.
        node_context: Optional[str] = None
        node: Node = []
        index = -1
        for entry in entries:
            index += 1
            record = entry[1]
            if type(record) is not dict:
                result.reject("the record is not a map")
                continue
            user = record.get(USER_ID)
            if type(user) is not str:
                user = "" if user is None else str(user)
            if owner is not None and user != owner:
                result.reject(f"user_id {user[:100]!r} is not the user the sender authenticated as ({owner[:100]!r})")
                continue
            record_id = record.get(RECORD_ID)
            if type(record_id) is str and not is_new(user, record_id, index):
                result.dropped.append(index)
                continue
            # Any: what a record holds is checked below, with type() (isinstance would take subclasses).
            context: Any = record.get(CONTEXT)
            message: Any = record.get(MESSAGE)
            when: Any = record.get(EXPORT_TIMESTAMP)
            # The checks every record passes cost a few comparisons; _problem_of says what failed.
            if type(context) is not str or not context or type(message) is not dict or len(context) > deep_length:
                problem = self._problem_of(context, message)
                if problem is not None:
                    result.reject(problem)
                    continue
            if type(when) is not int or not -_TIME_LIMIT < when < _TIME_LIMIT:
                try:
                    when = _export_time(when, entry[0])
                except RejectedRecordError as exc:
                    result.reject(str(exc))
                    continue
            try:
                if context != node_context or user != arc_user:  # another node than the record before
                    node_context = None  # until this record's node is found
                    root, _, path = context.partition(CONTEXT_SEPARATOR)
                    if root != arc_root or user != arc_user:
                        if arc_root is not None:
                            _set_export_times(document, first, last, count)
                            arc_root = None  # until the next one is open
                        document, changed = self._open(user, root, when)
                        subs = document["subs"]
                        first, last, count = document["first_export"], document["last_export"], document["export_count"]
                        arc_root, arc_user = root, user
                    changed.add(path)
                    node = document["node"] if not path else subs.get(path) or _add_path(document, path, changed)
                    node_context = context
                if when < first:
                    first = when
                elif when > last:
                    last = when
                count += 1
                newest = node[NEWEST]
                # The common case, inlined: every field of the node set at the time of this export
                # (or none yet), a message of fields only. update(**message) raises TypeError, the
                # node untouched, unless every key is a string (cheaper than testing them apart).
                if (
                    (when == newest or newest is None)
                    and node[FIELD_TIMES] is None
                    and ARC_CLASS_KEY not in message
                    and GLOBALS_KEY not in message
                ):
                    try:
                        node[FIELDS].update(**message)
                    except TypeError:
                        _merge_into_node(document, node, message, when)
                    else:
                        node[NEWEST] = when
                else:
                    _merge_into_node(document, node, message, when)
            except Exception as exc:
                result.reject(f"cannot be merged: {type(exc).__name__}: {exc}")
        if arc_root is not None:
            _set_export_times(document, first, last, count)
        return result

    def _problem_of(self, context: Any, message: Any) -> Optional[str]:
        """Why a record with this context id and message cannot be merged (None: it can)."""
        if type(context) is not str or not context:
            return "the record has no context id"
        if type(message) is not dict:
            return "the record's message is not a map"
        depth = context.count(CONTEXT_SEPARATOR) if len(context) > self._deep_length else 0
        if depth > self.max_depth:
            return f"its context is nested {depth} levels deep, more than the limit of {self.max_depth}"
        return None

    def _open(self, user: str, root: str, when: float) -> Tuple[Document, Set[str]]:
        """The document of the ARC ``(user, root)`` for this transaction, and the set of the paths of
        its nodes changed in it, for a record exported at ``when``."""
        key = (user, root)
        document = self._dirty.get(key) or self._touch(key, when)
        return document, self._changed[key]

    def take_dirty(self) -> List[Tuple[ArcKey, Document]]:
        """The documents changed since the last call, each once; the caller writes them.

        Documents started without a look in the store are looked up now, in one call, and combined
        with the stored ones that exist.
        """
        if self._unresolved:
            stored = self._loader(self._unresolved)
            for key, document in stored.items():
                merged = combine_documents(document, self._dirty[key])
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
