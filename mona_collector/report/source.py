"""Reading the ARCs a report needs from the collector's database, SQLite or PostgreSQL alike: every
query goes through a :class:`~mona_collector.readers.Reader` (see :func:`~mona_collector.databases.open_reader`).

The merger keeps the report's side table (:mod:`mona_collector.report_rows`): one row per ARC with
its class, its time and its flattened fields as fixed-width records, indexed by class and time. The
rows of one class and period are read in batches, each batch joined into one buffer and cut into
columns by numpy (:func:`read_table`), with no ARC document decoded. A database whose side table is
not complete yet (written before it existed) has it filled from the documents once, with a line on
stderr; when that cannot be written (a read-only file), the documents themselves are read, as
:func:`read_table_from_documents` does (much slower: each document is decoded and flattened).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from ..merging.documents import public_document
from ..readers import Reader
from ..report_rows import COUNTED, KIND_BITS, NUMBER, TEXT, TIME_KEY, flatten_arc
from ..sql import driver_errors
from ..store import StoreError
from .monitoring_config import ClassSettings
from .table import BoolArray, ColumnTable, FieldArrays, FloatArray, IntArray, TableBuilder, table_from_arrays

#: ARCs loaded per call of load_arcs: big enough to amortise the query, small enough to bound memory.
_BATCH = 2000
#: Side-table rows read per batch: about 2 MB of records for an ARC of 13 fields.
_ROW_BATCH = 100_000
#: Row numbers as the reader keeps them (half the memory of int64; a report reads fewer than 2**31 rows).
RowArray = npt.NDArray[np.int32]
#: One record of a side-table row: a key (name code and kind) and a value.
_RECORD = np.dtype([("key", "<u4"), ("value", "<f8")])


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


class ReportSourceError(StoreError):
    """The database cannot give the ARCs asked for."""


@contextmanager
def _reading(reader: Reader) -> Iterator[Reader]:
    """``reader``, its driver's errors raised as :class:`ReportSourceError`."""
    try:
        yield reader
    except driver_errors() as exc:
        raise ReportSourceError(f"cannot read {reader.name}: {' '.join(str(exc).split())}") from None


def merged_ranges(ranges: Sequence[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """The half-open ranges with overlapping or touching ones joined, so no ARC is read twice."""
    merged: List[Tuple[float, float]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def read_table(
    reader: Reader,
    arc_class: str,
    ranges: Sequence[Tuple[float, float]],
    settings: Optional[ClassSettings] = None,
    say: Callable[[str], None] = _stderr,
) -> ColumnTable:
    """The columns of the ARCs of ``arc_class`` first exported in any of the half-open ``ranges``,
    from the side table (filled first when incomplete; ``say`` tells the user)."""
    if not _side_table_ready(reader, say):
        return read_table_from_documents(reader, arc_class, ranges, settings)
    with _reading(reader):
        columns = _Columns()
        for start, end in merged_ranges(ranges):
            for blobs in reader.row_batches(arc_class, start, end, _ROW_BATCH):
                columns.add(b"".join(blobs))
        return columns.table(reader, settings)


def _side_table_ready(reader: Reader, say: Callable[[str], None]) -> bool:
    """Whether the side table can be read: complete, or filled now (False: it cannot be written)."""
    with _reading(reader):
        if reader.rows_complete():
            return True
        arcs = reader.arc_count()
    if arcs:
        say(f"mona report: building the report table of {reader.name} from its {arcs:,} ARC documents (done once)")
    try:
        reader.fill_rows()
    except driver_errors(StoreError) as exc:
        say(f"mona report: cannot write the report table ({exc}); reading the ARC documents instead (slower)")
        return False
    return True


@dataclass
class _FieldParts:
    """The arrays of one field gathered batch by batch, by record kind: (rows, values) pairs."""

    parts: Dict[int, List[Tuple[RowArray, FloatArray]]] = field(default_factory=dict)

    def joined(self, kind: int) -> Tuple[IntArray, FloatArray]:
        pieces = self.parts.get(kind)
        if not pieces:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        rows = np.concatenate([rows for rows, _ in pieces]).astype(np.int64)
        return rows, np.concatenate([values for _, values in pieces])


class _Columns:
    """Side-table rows cut into per-field arrays, a batch of rows (one joined buffer) at a time."""

    def __init__(self) -> None:
        self.rows = 0
        self.times: List[FloatArray] = []
        self.fields: Dict[int, _FieldParts] = {}  # by name code

    def add(self, buffer: bytes) -> None:
        records = np.frombuffer(buffer, dtype=_RECORD)
        keys, values = records["key"], records["value"]
        is_time = keys == TIME_KEY
        count = int(np.count_nonzero(is_time))
        if not (count and records.size % count == 0 and self._add_alike(keys, values, count)):
            self._add_any(keys, values, is_time)
        self.rows += count

    def _add_alike(self, keys: npt.NDArray[np.uint32], values: FloatArray, count: int) -> bool:
        """The common batch, whose rows all have the same fields of the same kinds: a 2-d array whose
        columns are the fields, no sorting (False: the rows differ)."""
        grid = keys.reshape(count, -1)
        if not (grid == grid[0]).all():
            return False
        columns = values.reshape(count, -1)
        rows = np.arange(self.rows, self.rows + count, dtype=np.int32)  # shared by every field
        self.times.append(columns[:, 0].copy())
        for index, key in enumerate(grid[0, 1:].tolist(), start=1):
            self._part(key, rows, columns[:, index].copy())
        return True

    def _part(self, key: int, rows: RowArray, values: FloatArray) -> None:
        parts = self.fields.get(key >> KIND_BITS)
        if parts is None:
            parts = self.fields[key >> KIND_BITS] = _FieldParts()
        parts.parts.setdefault(key & ((1 << KIND_BITS) - 1), []).append((rows, values))

    def _add_any(self, keys: npt.NDArray[np.uint32], values: FloatArray, is_time: BoolArray) -> None:
        """Any batch: the records grouped by key, each row's number from the time records before."""
        rows = (np.cumsum(is_time) - 1 + self.rows).astype(np.int32)  # each row starts with its time record
        self.times.append(values[is_time])
        keys, values, rows = keys[~is_time], values[~is_time], rows[~is_time]
        if not keys.size:
            return
        # Group the records by key with a stable sort (so rows stay ascending) of dense small codes.
        counts = np.bincount(keys)
        present = np.flatnonzero(counts)
        dense = np.zeros(counts.size, dtype=np.uint16 if present.size < 2**16 else np.uint32)
        dense[present] = np.arange(present.size)
        order = np.argsort(dense[keys], kind="stable")
        bounds = np.concatenate(([0], np.cumsum(counts[present])))
        for key, start, end in zip(present.tolist(), bounds[:-1].tolist(), bounds[1:].tolist()):
            chosen = order[start:end]
            self._part(key, rows[chosen], values[chosen])

    def table(self, db: Reader, settings: Optional[ClassSettings]) -> ColumnTable:
        times = np.concatenate(self.times) if self.times else np.zeros(0, dtype=np.float64)
        names = _texts(db, "report_names", "name", list(self.fields))
        codes = {name: code for code, name in names.items()}
        return table_from_arrays(times, sorted(codes), lambda name: self._field(db, codes[name]), settings)

    def _field(self, db: Reader, code: int) -> FieldArrays:
        """One field's arrays, its parts dropped as they are joined (one field's copy at a time)."""
        parts = self.fields.pop(code)
        number_rows, numbers = parts.joined(NUMBER)
        text_rows, label_codes = parts.joined(TEXT)
        other_rows, _ = parts.joined(COUNTED)  # a null value (NULL) only says the field is there
        text_codes, labels = _local_labels(db, label_codes)
        return FieldArrays(number_rows, numbers, text_rows, text_codes, labels, other_rows)


def _local_labels(db: Reader, label_codes: FloatArray) -> Tuple[IntArray, List[str]]:
    """The field's codes renumbered in the order their labels first appear, and those labels."""
    if not label_codes.size:
        return np.zeros(0, dtype=np.int64), []
    codes = label_codes.astype(np.int64)
    unique, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    by_appearance = np.argsort(first, kind="stable")
    local = np.empty(unique.size, dtype=np.int64)
    local[by_appearance] = np.arange(unique.size)
    texts = _texts(db, "report_labels", "label", unique.tolist())
    return local[inverse.reshape(-1)], [texts[code] for code in unique[by_appearance].tolist()]


def _texts(db: Reader, table: str, column: str, codes: List[int]) -> Dict[int, str]:
    found = db.texts(table, column, codes)
    missing = [code for code in codes if code not in found]
    if missing:
        raise ReportSourceError(f"the report table refers to {table} code {missing[0]}, which is missing")
    return found


def read_table_from_documents(
    reader: Reader,
    arc_class: str,
    ranges: Sequence[Tuple[float, float]],
    settings: Optional[ClassSettings] = None,
) -> ColumnTable:
    """:func:`read_table` from the ARC documents themselves: each decoded and flattened."""
    builder = TableBuilder()
    with _reading(reader):
        for start, end in merged_ranges(ranges):
            for keys in reader.class_keys(arc_class, start, end, _BATCH):
                _add_documents(builder, reader, keys)
    return builder.finish(settings)


def _add_documents(builder: TableBuilder, reader: Reader, keys: List[Tuple[str, str]]) -> None:
    documents = reader.store().load_arcs(keys)
    for key in keys:
        document = documents.get(key)
        if document is None:  # gone between the two queries (a database replaced under us)
            continue
        public = public_document(document)
        builder.add(float(public["first_export"]), flatten_arc(public))


def class_span(reader: Reader, arc_class: str) -> Tuple[Optional[float], Optional[float]]:
    """The first and the last first-export time of the class's ARCs (None, None: it has none)."""
    with _reading(reader):
        return reader.class_span(arc_class)


def class_counts(reader: Reader, say: Callable[[str], None] = _stderr) -> Dict[str, int]:
    """How many ARCs each class has (the ARCs without a class are not reported), from the side table
    (its index on the class: no scan of the ARCs), filled first when incomplete."""
    side_table = _side_table_ready(reader, say)
    with _reading(reader):
        return reader.class_counts(side_table)
