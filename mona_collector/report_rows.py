"""The report's side table: one row per ARC with its flattened fields, kept by the merger.

``mona report`` needs, for the ARCs of one class and period, every field's value; decoding each ARC
document for that costs far more than the statistics. So the merger keeps, in the same transaction
as the ARC documents it writes, one ``report_rows`` row per ARC it touched: the ARC's class and time
(its first export) as columns and its flattened fields (see :func:`flatten_arc`) as one blob of fixed
12-byte records ``(key: uint32, value: float64)``, little-endian, which the report turns into numpy
columns with a handful of vectorised calls:

* the first record is the ARC's time: key 0;
* each field is one record whose key is ``name code << 2 | kind``; the name code is the field name's
  row in ``report_names``; the kind says what the value is: :data:`NUMBER` (the value itself),
  :data:`TEXT` (a string or a boolean: the code of its label in ``report_labels``), :data:`COUNTED`
  (a list, a map or anything else: only counted) or :data:`NULL` (the field is there, its value null).

Codes are given in the write transaction, so a transaction that fails gives none (see
:class:`RowEncoder`). This module needs no numpy: the merger uses it too.
"""

from __future__ import annotations

import sqlite3
import struct
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from mona_client.record import CONTEXT_SEPARATOR

from .merging.documents import CLASS, FIELDS, Document, public_document

GLOBALS_PREFIX = "globals."

#: The kinds of a field's record (the two low bits of its key).
NUMBER, TEXT, COUNTED, NULL = range(4)
#: Bits of a record's key below the name code.
KIND_BITS = 2
#: The key of the record that holds the ARC's time.
TIME_KEY = 0
#: Name codes must fit the 30 bits a key leaves them.
MAX_NAME_CODE = (1 << (32 - KIND_BITS)) - 1
#: The version of the rows' form; ``meta`` holds it once every ARC has its row (see :data:`ROWS_COMPLETE`).
ROWS_VERSION = "1"
#: The ``meta`` key saying that every ARC has its up-to-date row.
ROWS_COMPLETE = "report_rows_version"

SCHEMA = """
CREATE TABLE IF NOT EXISTS report_rows (
    user_id TEXT NOT NULL,
    context_id TEXT NOT NULL,
    arc_class TEXT,
    arc_time REAL NOT NULL,  -- the ARC's first export
    fields BLOB NOT NULL,    -- 12-byte records, see mona_collector/report_rows.py
    PRIMARY KEY (user_id, context_id)
);
CREATE INDEX IF NOT EXISTS report_rows_by_class_time ON report_rows (arc_class, arc_time);
CREATE TABLE IF NOT EXISTS report_names (code INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS report_labels (code INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE);
"""

UPSERT_ROW = """
INSERT INTO report_rows (user_id, context_id, arc_class, arc_time, fields) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (user_id, context_id) DO UPDATE SET
    arc_class = excluded.arc_class, arc_time = excluded.arc_time, fields = excluded.fields
"""

#: A flattened ARC as the store freezes it: key columns and class as bound, time, named values.
FlatRow = Tuple[Any, Any, Any, float, Dict[str, Any]]


# --- flattening -------------------------------------------------------------------------------------


def _name(key: Any) -> str:
    return key if isinstance(key, str) else str(key)


def flatten_arc(document: Mapping[str, Any]) -> Dict[str, Any]:
    """The named values of one public ARC document (see docs/arc-document.md).

    Root fields keep their name; a sub-ARC's fields are named ``<sub-ARC class>.<field>`` (the
    sub-context id when the node has no class), recursively, so a field two levels down reads
    ``MODEL.CALIBRATION.x``; globals are ``globals.<key>``. When two sub-contexts of one ARC share a
    class, their fields share names and the one shown last (depth first) gives the value.
    """
    flat: Dict[str, Any] = {}
    for key, value in (document.get("fields") or {}).items():
        flat[_name(key)] = value
    for key, value in (document.get("globals") or {}).items():
        flat[GLOBALS_PREFIX + _name(key)] = value
    _add_sub_arcs(flat, document.get("sub_arcs") or {}, "")
    return flat


def _add_sub_arcs(flat: Dict[str, Any], sub_arcs: Mapping[Any, Any], prefix: str) -> None:
    for sub_id, node in sub_arcs.items():
        if not isinstance(node, Mapping):
            continue
        arc_class = node.get("arc_class")
        name = prefix + _name(arc_class if arc_class is not None else sub_id) + "."
        for key, value in (node.get("fields") or {}).items():
            flat[name + _name(key)] = value
        _add_sub_arcs(flat, node.get("sub_arcs") or {}, name)


def flatten_document(document: Document) -> Dict[str, Any]:
    """:func:`flatten_arc` of the public form of an internal document, without making that form
    when every sub-context is a child of the root (the common case: the order is then the same)."""
    subs = document["subs"]
    for path in subs:
        if CONTEXT_SEPARATOR in path:
            return flatten_arc(public_document(document))
    # The merger keys fields and globals by strings only (documents.py): no conversion needed here.
    flat: Dict[str, Any] = dict(document["node"][FIELDS])
    if document["globals"]:
        flat.update({GLOBALS_PREFIX + key: value for key, value in document["globals"].items()})
    for path, node in subs.items():
        arc_class = node[CLASS]
        fields = node[FIELDS]
        flat.update(zip(_prefixed(path if arc_class is None else arc_class, tuple(fields)), fields.values()))
    return flat


#: The prefixed names of the fields of sub-context nodes, by the node's name and its field names: the
#: same few shapes recur in every ARC of a class, so the names are made once.
_PREFIXED: Dict[Tuple[str, Tuple[str, ...]], Tuple[str, ...]] = {}
_MAX_PREFIXED = 10_000


def _prefixed(node_name: str, keys: Tuple[str, ...]) -> Tuple[str, ...]:
    names = _PREFIXED.get((node_name, keys))
    if names is None:
        if len(_PREFIXED) >= _MAX_PREFIXED:
            _PREFIXED.clear()
        prefix = node_name + "."
        names = _PREFIXED[(node_name, keys)] = tuple([prefix + key for key in keys])
    return names


# --- encoding ---------------------------------------------------------------------------------------


def text_label(value: Any) -> str:
    """The dimension label of a text value: booleans as ``true``/``false``, bytes decoded."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _number(value: int) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond the float range
        return float("inf")


def kind_of(value: Any) -> int:
    """The record kind of a flattened value (booleans are text, not numbers)."""
    kind = type(value)
    if kind is float:
        return NUMBER
    if kind is str or kind is bool or kind is bytes:
        return TEXT
    if kind is int:
        return NUMBER
    if value is None:
        return NULL
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, (str, bool, bytes)):  # bool before int: it is one
        return TEXT
    if isinstance(value, int):
        return NUMBER
    return COUNTED


_RECORDS: Dict[int, struct.Struct] = {}
#: What encoding reuses for ARCs of one shape: the keys, the indexes of the text values and of the
#: values recorded as 0 (null, counted), and the struct.
_Shape = Tuple[List[int], List[int], List[int], struct.Struct]
#: The kinds of the exact types msgpack decodes (anything else goes through kind_of).
_KINDS: Dict[type, int] = {
    float: NUMBER,
    int: NUMBER,
    str: TEXT,
    bool: TEXT,
    bytes: TEXT,
    type(None): NULL,
    list: COUNTED,
    dict: COUNTED,
    tuple: COUNTED,  # an undecoded msgpack extension
}


def _records(count: int) -> struct.Struct:
    packer = _RECORDS.get(count)
    if packer is None:
        packer = _RECORDS[count] = struct.Struct("<" + "Id" * count)
    return packer


class RowEncoder:
    """Encodes flattened ARCs as ``report_rows`` rows, giving new names and labels their codes.

    The codes it knows are cached; :meth:`forget` must be called when the transaction the rows were
    encoded in is rolled back, since the codes it gave are then gone. ``bind`` turns a name or a
    label into what SQLite stores (the store's ``db_text``). Used by one thread at a time.
    """

    #: Labels cached at most; beyond, the cache starts again (a field of unique strings must not
    #: grow the merger without bound).
    MAX_CACHED_LABELS = 200_000
    #: Shapes (field names and kinds of values) cached at most.
    MAX_CACHED_SHAPES = 10_000

    def __init__(self, bind: Callable[[str], Any]) -> None:
        self._bind = bind
        self._names: Dict[str, int] = {}
        self._labels: Dict[str, int] = {}
        self._shapes: Dict[Tuple[Tuple[str, ...], Tuple[int, ...]], _Shape] = {}

    def forget(self) -> None:
        self._names.clear()
        self._labels.clear()
        self._shapes.clear()

    def row(self, db: sqlite3.Connection, flat: FlatRow) -> Tuple[Any, Any, Any, float, bytes]:
        user, context, arc_class, arc_time, values = flat
        return (user, context, arc_class, arc_time, self.encode(db, arc_time, values))

    def encode(self, db: sqlite3.Connection, arc_time: float, values: Mapping[str, Any]) -> bytes:
        """The record blob of an ARC of time ``arc_time`` with these flattened values.

        Once per ARC and transaction in the merger, so the work per value is kept to list operations
        (each runs in C): ARCs of one class mostly have the same field names with values of the same
        kinds, so the keys, where the texts are and the struct are cached per such shape, and only
        the text values are looked up one by one.
        """
        items = list(values.values())
        kinds = tuple([_KINDS.get(type(value), -1) for value in items])
        shape_key = (tuple(values), kinds)
        shape = self._shapes.get(shape_key)
        if shape is None:
            if -1 in kinds:  # a type msgpack does not decode: the slow way, not cached
                return self._encode_any(db, arc_time, values)
            shape = self._shape(db, shape_key)
        keys, texts, zeros, packer = shape
        labels = self._labels
        for index in texts:
            value = items[index]
            label = value if type(value) is str else text_label(value)
            code = labels.get(label)
            items[index] = float(self._label_code(db, label) if code is None else code)
        for index in zeros:
            items[index] = 0.0
        record: List[Any] = [None] * (2 * len(items) + 2)
        record[0], record[1] = TIME_KEY, arc_time
        record[2::2] = keys
        record[3::2] = items
        try:
            packed: bytes = packer.pack(*record)
        except OverflowError:  # an integer beyond the float range
            record[3::2] = [_number(value) if type(value) is int else value for value in items]
            packed = packer.pack(*record)
        return packed

    def _shape(self, db: sqlite3.Connection, shape_key: Tuple[Tuple[str, ...], Tuple[int, ...]]) -> _Shape:
        """What :meth:`encode` reuses for every ARC with these names and kinds of values."""
        if len(self._shapes) >= self.MAX_CACHED_SHAPES:
            self._shapes.clear()
        names, kinds = shape_key
        codes = [self._names.get(name) or self._name_code(db, name) for name in names]
        shape = (
            [(code << KIND_BITS) | kind for code, kind in zip(codes, kinds)],
            [index for index, kind in enumerate(kinds) if kind == TEXT],
            [index for index, kind in enumerate(kinds) if kind in (NULL, COUNTED)],
            _records(len(names) + 1),
        )
        self._shapes[shape_key] = shape
        return shape

    def _encode_any(self, db: sqlite3.Connection, arc_time: float, values: Mapping[str, Any]) -> bytes:
        record: List[Any] = [TIME_KEY, arc_time]
        for name, value in values.items():
            code = self._names.get(name) or self._name_code(db, name)
            kind = kind_of(value)
            record += ((code << KIND_BITS) | kind, self._payload(db, kind, value))
        packed: bytes = _records(len(record) // 2).pack(*record)
        return packed

    def _payload(self, db: sqlite3.Connection, kind: int, value: Any) -> float:
        """The float a record holds for ``value``: the number, a text's label code, else 0."""
        if kind == NUMBER:
            return value if type(value) is float else _number(value)
        if kind == TEXT:
            label = value if type(value) is str else text_label(value)
            code = self._labels.get(label)
            return float(self._label_code(db, label) if code is None else code)
        return 0.0

    def _name_code(self, db: sqlite3.Connection, name: str) -> int:
        code = _code(db, "report_names", "name", self._bind(name))
        if code > MAX_NAME_CODE:
            raise ValueError(f"more than {MAX_NAME_CODE} distinct field names")
        self._names[name] = code
        return code

    def _label_code(self, db: sqlite3.Connection, label: str) -> int:
        if len(self._labels) >= self.MAX_CACHED_LABELS:
            self._labels.clear()
        code = self._labels[label] = _code(db, "report_labels", "label", self._bind(label))
        return code


def _code(db: sqlite3.Connection, table: str, column: str, bound: Any) -> int:
    """The code of the text ``bound`` in ``table``, added when missing (in the caller's transaction)."""
    row = db.execute(f"SELECT code FROM {table} WHERE {column} = ?", (bound,)).fetchone()
    if row is not None:
        return int(row[0])
    cursor = db.execute(f"INSERT INTO {table} ({column}) VALUES (?)", (bound,))
    assert cursor.lastrowid is not None
    return int(cursor.lastrowid)


def flat_row(key_columns: Tuple[Any, Any], arc_class: Optional[Any], document: Document) -> FlatRow:
    """What :meth:`RowEncoder.row` needs of an internal document, taken while it is frozen."""
    return (key_columns[0], key_columns[1], arc_class, float(document["first_export"]), flatten_document(document))
