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

The merger encodes the rows where it merges, while the previous transaction is written, and the
write inserts the new names and labels with the rows (see :class:`RowEncoder` and :func:`write_rows`).
This module needs no numpy: the merger uses it too.
"""

from __future__ import annotations

import re
import struct
from operator import itemgetter
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from mona_client.record import CONTEXT_SEPARATOR

from .merging.documents import CLASS, FIELDS, Document, public_document
from .sql import LOCK_REPORT_CODES, Statements

GLOBALS_PREFIX = "globals."
#: The name of a sub-ARC with no class whose id the client made up (``new_mona_sub_context()`` without
#: ``sub_context_id``): such an id is new in every ARC, so as a name it would make a field per ARC that
#: no two ARCs share, and nothing to compare. Their fields are named ``(unnamed).<field>``.
UNNAMED_SUB_ARC = "(unnamed)"
#: The ids the client makes: a random per-process prefix of 16 hex digits, "-", and a counter.
_GENERATED_ID = re.compile(r"[0-9a-f]{16}-[0-9]+")

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

# --- flattening -------------------------------------------------------------------------------------


def _name(key: Any) -> str:
    return key if isinstance(key, str) else str(key)


def node_name(sub_id: Any, arc_class: Any) -> str:
    """How a sub-ARC is named in field names: its class; without one, its sub-context id, unless the
    client made that id up (:data:`UNNAMED_SUB_ARC`)."""
    if arc_class is not None:
        return _name(arc_class)
    if isinstance(sub_id, str) and _GENERATED_ID.fullmatch(sub_id):
        return UNNAMED_SUB_ARC
    return _name(sub_id)


def flatten_arc(document: Mapping[str, Any]) -> Dict[str, Any]:
    """The named values of one public ARC document (see docs/arc-document.md).

    Root fields keep their name; a sub-ARC's fields are named ``<sub-ARC class>.<field>`` (the
    sub-context id when the node has no class, ``(unnamed)`` when the client made that id up),
    recursively, so a field two levels down reads
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
        name = prefix + node_name(sub_id, arc_class) + "."
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
        flat.update(zip(_prefixed(node_name(path, arc_class), tuple(fields)), fields.values()))
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
#: A function picking some values of an ARC's value list, as a tuple.
_Picker = Callable[[Sequence[Any]], Tuple[Any, ...]]
#: What identifies the shape of an ARC: the names of its nodes and fields, and the types of its values.
_ShapeKey = Tuple[Tuple[Any, ...], Tuple[type, ...]]


def _records(count: int) -> struct.Struct:
    packer = _RECORDS.get(count)
    if packer is None:
        packer = _RECORDS[count] = struct.Struct("<" + "Id" * count)
    return packer


def _none(values: Sequence[Any]) -> Tuple[Any, ...]:
    return ()


def _picker(indexes: Sequence[int]) -> _Picker:
    """A C-level function of a value list giving the values at ``indexes`` (itemgetter, always a tuple)."""
    if not indexes:
        return _none
    if len(indexes) == 1:
        single = itemgetter(indexes[0])
        return lambda values: (single(values),)
    return itemgetter(*indexes)


class _Shape:
    """How the ARCs of one shape are encoded: their number values, their text values (as label codes)
    and 0 for the fields only counted or null, each picked from the ARC's values by index, then put in
    the order of flattening (``order``), each after its key (``template``)."""

    __slots__ = ("numbers", "order", "packer", "template", "texts", "zeros")

    def __init__(self, fields: List[Tuple[int, int, int]]) -> None:
        """``fields``: the (kind, key, index of the value) of each field, in flattening order."""
        grouped = sorted(range(len(fields)), key=lambda position: _GROUP[fields[position][0]])  # stable
        self.numbers = _picker([fields[position][2] for position in grouped if fields[position][0] == NUMBER])
        self.texts = _picker([fields[position][2] for position in grouped if fields[position][0] == TEXT])
        self.zeros = (0.0,) * sum(1 for kind, _, _ in fields if _GROUP[kind] == 2)
        where = {position: place for place, position in enumerate(grouped)}
        self.order = _picker([where[position] for position in range(len(fields))])
        self.template: List[Any] = [TIME_KEY, 0.0]
        for _, key, _ in fields:
            self.template += (key, 0.0)
        self.packer = _records(len(fields) + 1)


#: Where the value of each kind of field is in a shape's payload before it is put in order: the
#: numbers, then the label codes, then the zeros.
_GROUP = {NUMBER: 0, TEXT: 1, COUNTED: 2, NULL: 2}


class _Codes:
    """The codes an encoder knows in one epoch: those read from the database (committed) and those it
    gave (provisional until the transaction that inserts them commits), and the shapes made with them.

    A frozen transaction keeps the epoch's ``given_*`` maps (code -> text as bound), so that the write
    can translate its rows when its codes turn out to be unusable (see :func:`write_rows`).
    """

    def __init__(self, epoch: int, next_name: int, next_label: int) -> None:
        self.epoch = epoch
        self.names: Dict[str, int] = {}
        self.labels: Dict[Any, float] = {}  # by the value as merged: a str, bytes or bool
        self.shapes: Dict[_ShapeKey, Optional[_Shape]] = {}  # None: encoded the slow way
        self.given_names: Dict[int, Any] = {}
        self.given_labels: Dict[int, Any] = {}
        self.next_name = next_name
        self.next_label = next_label


class NewCodes(NamedTuple):
    """The codes a transaction's rows may refer to that the write must insert, and their epoch."""

    epoch: int
    names: List[Tuple[int, Any]]
    labels: List[Tuple[int, Any]]
    given_names: Dict[int, Any]
    given_labels: Dict[int, Any]


#: A ``report_rows`` row: user, context (as bound), class, time, the record blob.
Row = Tuple[Any, Any, Any, float, bytes]


class EncodedRows(NamedTuple):
    """A transaction's side-table rows, encoded where it was merged, and the codes to insert with them."""

    rows: List[Row]
    codes: NewCodes


class RowEncoder:
    """Encodes ARCs as ``report_rows`` rows where they are merged, giving new names and labels codes.

    Encoding runs in the merging thread (the thread that calls :meth:`begin`, :meth:`row`,
    :meth:`take`), while the previous transaction is written: what it does not know yet it looks up in
    ``lookup`` (a connection that sees committed data) and else gives a provisional code, the next
    after every code it knows of. The write inserts the codes a transaction gave with its rows
    (:func:`write_rows`). Provisional codes cannot be guaranteed free (another process, a filling
    ``mona report``, may insert codes meanwhile; a transaction may roll back), so the write checks that
    each inserted; when one did not, or the epoch was invalidated (:meth:`invalidate`, from the write
    thread: a transaction rolled back), the rows are translated to the codes the database holds, under
    the write lock, and the merging side starts a new epoch from the database at its next
    :meth:`begin`. ``bind`` turns a name or a label into what the database stores (SQLite: the store's
    ``db_text``; PostgreSQL: its bytes).
    """

    #: Labels cached at most; beyond, a new epoch starts (a field of unique strings must not grow the
    #: merger without bound).
    MAX_CACHED_LABELS = 200_000
    #: Shapes (names of nodes and fields, types of values) cached at most.
    MAX_CACHED_SHAPES = 10_000

    def __init__(self, bind: Callable[[str], Any], lookup: Statements) -> None:
        self._bind = bind
        self._lookup = lookup
        #: Epochs before this one are invalid (written by the write thread, read by both).
        self.invalid_before = 0
        self._codes = _Codes(-1, 1, 1)  # invalid: the first begin() starts epoch 0 from the database
        self._new_names: List[Tuple[int, Any]] = []
        self._new_labels: List[Tuple[int, Any]] = []

    # --- the merging thread ---

    def begin(self) -> None:
        """Start a transaction's rows: a new epoch when the codes known are invalid or too many."""
        codes = self._codes
        if (
            codes.epoch < self.invalid_before
            or len(codes.labels) >= self.MAX_CACHED_LABELS
            or len(codes.shapes) >= self.MAX_CACHED_SHAPES
        ):
            self._codes = _Codes(
                max(self.invalid_before, codes.epoch + 1),
                max(codes.next_name, self._max_code("report_names") + 1),
                max(codes.next_label, self._max_code("report_labels") + 1),
            )
            self._new_names, self._new_labels = [], []  # given in an epoch that is gone

    def take(self) -> NewCodes:
        """The codes given since the last call, to insert with the rows encoded since."""
        codes = self._codes
        taken = NewCodes(codes.epoch, self._new_names, self._new_labels, codes.given_names, codes.given_labels)
        self._new_names, self._new_labels = [], []
        return taken

    def row(self, key_columns: Tuple[Any, Any], arc_class: Any, document: Document) -> Row:
        """The ``report_rows`` row of an internal document (``key_columns`` as bound)."""
        arc_time = float(document["first_export"])
        return (key_columns[0], key_columns[1], arc_class, arc_time, self.encode_document(arc_time, document))

    def encode_document(self, arc_time: float, document: Document) -> bytes:
        """The record blob of an internal document: :func:`flatten_document` then :meth:`encode`, in one.

        Once per ARC and transaction in the merger, so the work per ARC is a few C-level calls: the
        ARC's values in one list, its shape (the names of its nodes and fields, the types of its
        values) as the key of what was worked out for the first ARC of that shape (names, codes,
        which values are texts), and the texts' codes from a dict.
        """
        root = document["node"][FIELDS]
        values = list(root.values())
        names: List[Any] = [tuple(root)]
        extra = document["globals"]
        if extra:
            values += extra.values()
            names.append(tuple(extra))
        else:
            names.append(())
        for path, node in document["subs"].items():
            fields = node[FIELDS]
            # A child of the root by its name (ids the client made up share one, so ARCs that differ
            # only by those share a shape); a deeper node by its path, which sends it the slow way.
            names += (path if CONTEXT_SEPARATOR in path else node_name(path, node[CLASS]), node[CLASS], tuple(fields))
            values += fields.values()
        key = (tuple(names), tuple(map(type, values)))
        shapes = self._codes.shapes
        shape = shapes.get(key)
        if shape is None:
            if key in shapes:  # this shape is encoded the slow way
                return self.encode(arc_time, flatten_document(document))
            shape = shapes[key] = self._document_shape(key)
            if shape is None:
                return self.encode(arc_time, flatten_document(document))
        return self._pack(shape, arc_time, values)

    def encode(self, arc_time: float, values: Mapping[str, Any]) -> bytes:
        """The record blob of an ARC of time ``arc_time`` with these flattened values."""
        items = list(values.values())
        key = (tuple(values), tuple(map(type, items)))
        shapes = self._codes.shapes
        shape = shapes.get(key)
        if shape is None:
            shape = shapes[key] = self._shape(list(values), key[1])
            if shape is None:  # a type msgpack does not decode
                return self._encode_any(arc_time, values)
        return self._pack(shape, arc_time, items)

    def _pack(self, shape: _Shape, arc_time: float, values: List[Any]) -> bytes:
        texts = shape.texts(values)
        try:
            codes = tuple(map(self._codes.labels.__getitem__, texts))
        except KeyError:  # a label first seen
            codes = tuple([self._label_code(value) for value in texts])
        payload = shape.order(shape.numbers(values) + codes + shape.zeros)
        record = shape.template.copy()
        record[1] = arc_time
        record[3::2] = payload
        try:
            packed: bytes = shape.packer.pack(*record)
        except OverflowError:  # an integer beyond the float range
            record[3::2] = [_number(value) if type(value) is int else value for value in payload]
            packed = shape.packer.pack(*record)
        return packed

    def _document_shape(self, key: _ShapeKey) -> Optional[_Shape]:
        """The shape of the documents with this key, named as :func:`flatten_document` names their
        fields (None: it cannot be cached, the document is flattened first)."""
        names, types = key
        root, extra, subs = names[0], names[1], names[2:]
        flat = [_name(name) for name in root] + [GLOBALS_PREFIX + _name(name) for name in extra]
        for start in range(0, len(subs), 3):
            path, arc_class, fields = subs[start : start + 3]
            if CONTEXT_SEPARATOR in path:  # a deeper node: the public form decides the order
                return None
            flat += _prefixed(node_name(path, arc_class), tuple(_name(name) for name in fields))
        return self._shape(flat, types)

    def _shape(self, names: Sequence[str], types: Tuple[type, ...]) -> Optional[_Shape]:
        """The shape of ARCs whose values, in order, have these names (a name given twice keeps its
        last value, as in a dict) and types; None if a type is not one msgpack decodes."""
        last: Dict[str, int] = {}
        for index, name in enumerate(names):
            last[name] = index
        fields: List[Tuple[int, int, int]] = []
        for name, index in last.items():
            kind = _KINDS.get(types[index])
            if kind is None:
                return None
            fields.append((kind, (self._name_code(name) << KIND_BITS) | kind, index))
        return _Shape(fields)

    def _encode_any(self, arc_time: float, values: Mapping[str, Any]) -> bytes:
        record: List[Any] = [TIME_KEY, arc_time]
        for name, value in values.items():
            kind = kind_of(value)
            record += ((self._name_code(name) << KIND_BITS) | kind, self._payload(kind, value))
        packed: bytes = _records(len(record) // 2).pack(*record)
        return packed

    def _payload(self, kind: int, value: Any) -> float:
        """The float a record holds for ``value``: the number, a text's label code, else 0."""
        if kind == NUMBER:
            return value if type(value) is float else _number(value)
        if kind == TEXT:
            return self._label_code(value)
        return 0.0

    def _name_code(self, name: str) -> int:
        codes = self._codes
        code = codes.names.get(name)
        if code is None:
            bound = self._bind(name)
            code = self._known("report_names", "name", bound)
            if code is None:
                code = codes.next_name
                if code > MAX_NAME_CODE:
                    raise ValueError(f"more than {MAX_NAME_CODE} distinct field names")
                codes.next_name += 1
                codes.given_names[code] = bound
                self._new_names.append((code, bound))
            codes.names[name] = code
        return code

    def _label_code(self, value: Any) -> float:
        codes = self._codes
        code = codes.labels.get(value)
        if code is None:
            bound = self._bind(value if type(value) is str else text_label(value))
            known = self._known("report_labels", "label", bound)
            if known is None:
                known = codes.next_label
                codes.next_label += 1
                codes.given_labels[known] = bound
                self._new_labels.append((known, bound))
            code = codes.labels[value] = float(known)
        return code

    def _known(self, table: str, column: str, bound: Any) -> Optional[int]:
        row = self._lookup.execute(f"SELECT code FROM {table} WHERE {column} = ?", (bound,)).fetchone()
        return None if row is None else int(row[0])

    def _max_code(self, table: str) -> int:
        (code,) = self._lookup.execute(f"SELECT coalesce(max(code), 0) FROM {table}").fetchone()
        return int(code)

    # --- the write thread ---

    def invalidate(self) -> None:
        """The codes of every epoch begun so far may be unusable (a transaction that inserted some
        rolled back, or one could not be inserted): rows encoded with them are translated when
        written, and the merging side starts a new epoch."""
        self.invalid_before = self._codes.epoch + 1


def write_rows(db: Statements, encoder: RowEncoder, encoded: EncodedRows) -> None:
    """Insert the codes given for ``encoded`` and its rows, in ``db``'s transaction (which holds the
    write lock, or on PostgreSQL takes the codes' lock here). When a code cannot be inserted as given
    (its text or its number taken meanwhile) or the rows' epoch was invalidated, the rows are
    translated to the database's codes first."""
    db.lock(LOCK_REPORT_CODES)
    codes = encoded.codes
    if codes.epoch >= encoder.invalid_before and _inserted(db, codes):
        db.executemany(UPSERT_ROW, encoded.rows)
        return
    encoder.invalidate()
    db.executemany(UPSERT_ROW, _Translation(db, codes).rows(encoded.rows))


def _inserted(db: Statements, codes: NewCodes) -> bool:
    """Insert the new codes; whether every one was (none taken by another text or number)."""
    inserted = 0
    if codes.names:
        inserted += db.executemany(
            "INSERT INTO report_names (code, name) VALUES (?, ?) ON CONFLICT DO NOTHING", codes.names
        )
    if codes.labels:
        inserted += db.executemany(
            "INSERT INTO report_labels (code, label) VALUES (?, ?) ON CONFLICT DO NOTHING", codes.labels
        )
    return inserted == len(codes.names) + len(codes.labels)


class _Translation:
    """Rows whose provisional codes are replaced by the codes their texts have in the database (added
    when missing), in the caller's transaction. Codes an epoch did not give were read from the
    database, committed: they stay."""

    def __init__(self, db: Statements, codes: NewCodes) -> None:
        self._db = db
        self._given = {"report_names": codes.given_names, "report_labels": codes.given_labels}
        self._done: Dict[Tuple[str, int], int] = {}

    def rows(self, rows: List[Row]) -> Iterator[Row]:
        for user, context, arc_class, arc_time, blob in rows:
            record: List[Any] = []
            for key, value in struct.iter_unpack("<Id", blob):
                if key != TIME_KEY:
                    kind = key & ((1 << KIND_BITS) - 1)
                    key = (self._code("report_names", "name", key >> KIND_BITS) << KIND_BITS) | kind
                    if kind == TEXT:
                        value = float(self._code("report_labels", "label", int(value)))
                record += (key, value)
            yield (user, context, arc_class, arc_time, _records(len(record) // 2).pack(*record))

    def _code(self, table: str, column: str, code: int) -> int:
        done = self._done.get((table, code))
        if done is None:
            bound = self._given[table].get(code)
            done = self._done[(table, code)] = code if bound is None else _code(self._db, table, column, bound)
        return done


def _code(db: Statements, table: str, column: str, bound: Any) -> int:
    """The code of the text ``bound`` in ``table``, added when missing (in the caller's transaction,
    which holds the codes' lock: the next free code stays free until it commits)."""
    select = f"SELECT code FROM {table} WHERE {column} = ?"
    row = db.execute(select, (bound,)).fetchone()
    if row is None:
        db.execute(f"INSERT INTO {table} (code, {column}) SELECT coalesce(max(code), 0) + 1, ? FROM {table}", (bound,))
        row = db.execute(select, (bound,)).fetchone()
    return int(row[0])
