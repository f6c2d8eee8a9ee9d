"""The columnar table the engine computes on: the time of each ARC and one numpy array per field.

Each field is typed on its own from the values seen in it, never a row as a whole: numbers (not
booleans) make a KAPI, strings and booleans a dimension, lists, maps and anything else are only
counted. A field whose values disagree takes the type most of its values have (numbers win a tie, then
text); the other values are *type mismatches*: counted, and treated as missing in the statistics, so
one stray string never turns a KAPI into a dimension nor stops the report. The monitoring config can
declare a field's kind, give a numeric field bucket boundaries (it is then a dimension too), or ignore it.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import numpy.typing as npt

from ..report_rows import text_label
from .monitoring_config import ClassSettings

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

KAPI = "kapi"
DIMENSION = "dimension"
COUNTED = "counted"


@dataclass
class KapiColumn:
    """A numeric field: its value per ARC, NaN where it has none (absent, null, not finite or mismatched)."""

    name: str
    values: FloatArray


@dataclass
class DimensionColumn:
    """A categorical field: a code per ARC into ``labels``, -1 where it has none."""

    name: str
    codes: IntArray
    labels: List[str]


@dataclass
class FieldInfo:
    """What the table knows of one field, whatever its kind."""

    name: str
    kind: str
    #: The ARCs that carry the field with a value that is not null.
    present: BoolArray
    #: The ARCs whose value has another type than the field's (see the module's docstring).
    mismatch: BoolArray
    #: How many values of each type were seen: ``number``, ``text`` (strings and booleans), ``other``.
    types: Dict[str, int]
    #: Set when the field's kind comes from the monitoring config rather than from its values.
    declared: bool = False


@dataclass
class ColumnTable:
    """The ARCs of one class: their times (first export, epoch seconds) and their fields as columns."""

    times: FloatArray
    fields: List[FieldInfo] = field(default_factory=list)
    kapis: Dict[str, KapiColumn] = field(default_factory=dict)
    dimensions: Dict[str, DimensionColumn] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.times.size)


def number_label(value: float) -> str:
    """A number used as a dimension value (a field declared a dimension without buckets)."""
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def bucket_labels(bounds: Sequence[float]) -> List[str]:
    """The labels of the buckets ``bounds`` cut: below the first, each ``[a, b)``, from the last on."""
    shown = [number_label(float(bound)) for bound in bounds]
    middle = [f"[{low}, {high})" for low, high in zip(shown, shown[1:])]
    return [f"< {shown[0]}", *middle, f">= {shown[-1]}"]


class _FieldValues:
    """The values of one field as they are read, kept by type (row numbers and compact arrays)."""

    __slots__ = ("labels", "number_rows", "numbers", "other_rows", "text_codes", "text_rows")

    def __init__(self) -> None:
        self.number_rows = array("q")
        self.numbers = array("d")
        self.text_rows = array("q")
        self.text_codes = array("q")
        self.labels: Dict[str, int] = {}
        self.other_rows = array("q")

    def add(self, row: int, value: object) -> None:
        if isinstance(value, float):
            self.number_rows.append(row)
            self.numbers.append(value)
        elif isinstance(value, (str, bool, bytes)):  # bool before int: it is one
            code = self.labels.setdefault(text_label(value), len(self.labels))
            self.text_rows.append(row)
            self.text_codes.append(code)
        elif isinstance(value, int):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond the float range
                number = float("inf")
            self.number_rows.append(row)
            self.numbers.append(number)
        elif value is not None:
            self.other_rows.append(row)


@dataclass
class FieldArrays:
    """The values of one field read as columns: the rows (ascending) of each type and the values;
    ``text_codes`` index ``labels``, numbered in the order the labels first appear."""

    number_rows: IntArray
    numbers: FloatArray
    text_rows: IntArray
    text_codes: IntArray
    labels: List[str]
    other_rows: IntArray

    def values(self) -> _FieldValues:
        values = _FieldValues()
        values.number_rows.frombytes(self.number_rows.astype(np.int64).tobytes())
        values.numbers.frombytes(self.numbers.astype(np.float64).tobytes())
        values.text_rows.frombytes(self.text_rows.astype(np.int64).tobytes())
        values.text_codes.frombytes(self.text_codes.astype(np.int64).tobytes())
        values.labels = {label: code for code, label in enumerate(self.labels)}
        values.other_rows.frombytes(self.other_rows.astype(np.int64).tobytes())
        return values


def table_from_arrays(
    times: FloatArray,
    names: Sequence[str],
    field: Callable[[str], FieldArrays],
    settings: Optional[ClassSettings] = None,
) -> ColumnTable:
    """The typed table of columns read as arrays (the same typing as :meth:`TableBuilder.finish`):
    ``field(name)`` gives each field's arrays, asked for one at a time in name order, so that only
    one field is held twice at any moment."""
    settings = settings or ClassSettings()
    table = ColumnTable(times=np.ascontiguousarray(times, dtype=np.float64))
    for name in sorted(names):
        values = field(name).values()  # asked for even when ignored: the reader drops its parts then
        if name not in settings.ignore:
            _add_field(table, name, values, settings)
    return table


class TableBuilder:
    """Builds a :class:`ColumnTable` one ARC at a time: ``add(time, flat_fields)`` then ``finish``."""

    def __init__(self) -> None:
        self._times = array("d")
        self._fields: Dict[str, _FieldValues] = {}

    def add(self, time: float, values: Mapping[str, object]) -> None:
        row = len(self._times)
        self._times.append(time)
        fields = self._fields
        for name, value in values.items():
            column = fields.get(name)
            if column is None:
                column = fields[name] = _FieldValues()
            column.add(row, value)

    def finish(self, settings: Optional[ClassSettings] = None) -> ColumnTable:
        """The typed table; ``settings`` declare kinds and buckets and name the fields to ignore."""
        settings = settings or ClassSettings()
        times: FloatArray = np.frombuffer(self._times, dtype=np.float64).copy()
        table = ColumnTable(times=times)
        for name in sorted(self._fields):
            if name in settings.ignore:
                continue
            _add_field(table, name, self._fields[name], settings)
        return table


def _rows(indices: array[int]) -> IntArray:
    return np.frombuffer(indices, dtype=np.int64) if len(indices) else np.zeros(0, dtype=np.int64)


def _kind_of(values: _FieldValues, name: str, settings: ClassSettings) -> str:
    if name in settings.kapis:
        return KAPI
    if name in settings.dimensions:
        return DIMENSION
    numbers, texts, others = len(values.numbers), len(values.text_rows), len(values.other_rows)
    if numbers and numbers >= texts and numbers >= others:
        return KAPI
    if texts and texts >= others:
        return DIMENSION
    return COUNTED


def _add_field(table: ColumnTable, name: str, values: _FieldValues, settings: ClassSettings) -> None:
    rows = table.rows
    number_rows, text_rows, other_rows = _rows(values.number_rows), _rows(values.text_rows), _rows(values.other_rows)
    kind = _kind_of(values, name, settings)
    present = np.zeros(rows, dtype=np.bool_)
    for indices in (number_rows, text_rows, other_rows):
        present[indices] = True
    mismatch = np.zeros(rows, dtype=np.bool_)
    mismatch[other_rows] = True
    bounds = settings.buckets.get(name)
    numbers: FloatArray = np.frombuffer(values.numbers, dtype=np.float64) if len(values.numbers) else np.zeros(0)
    if kind == KAPI:
        mismatch[text_rows] = True
        column = np.full(rows, np.nan)
        column[number_rows] = numbers
        column[~np.isfinite(column)] = np.nan  # infinities have no mean: treated as missing
        table.kapis[name] = KapiColumn(name, column)
        if bounds is not None:  # a KAPI segmented by the buckets the config declares
            table.dimensions[name] = _bucketed(name, rows, number_rows, numbers, bounds)
    elif kind == DIMENSION:
        declared = name in settings.dimensions
        if not declared and bounds is None:  # numbers in a field typed by its text: mismatches
            mismatch[number_rows] = True
            number_rows, numbers = number_rows[:0], numbers[:0]
        table.dimensions[name] = _dimension(name, rows, values, number_rows, numbers, text_rows, bounds)
    else:
        mismatch[number_rows] = True
        mismatch[text_rows] = True
        mismatch[other_rows] = False
    types = {"number": len(number_rows), "text": len(text_rows), "other": len(other_rows)}
    declared = name in settings.kapis or name in settings.dimensions
    table.fields.append(FieldInfo(name, kind, present, mismatch, types, declared))


def _bucketed(
    name: str, rows: int, number_rows: IntArray, numbers: FloatArray, bounds: Sequence[float]
) -> DimensionColumn:
    codes = np.full(rows, -1, dtype=np.int64)
    finite = np.isfinite(numbers)
    edges = np.asarray(bounds, dtype=np.float64)
    # side="right": a value equal to a bound opens the next bucket, as the labels "[a, b)" say
    codes[number_rows[finite]] = np.searchsorted(edges, numbers[finite], side="right")
    return DimensionColumn(name, codes, bucket_labels(bounds))


def _dimension(
    name: str,
    rows: int,
    values: _FieldValues,
    number_rows: IntArray,
    numbers: FloatArray,
    text_rows: IntArray,
    bounds: Optional[Sequence[float]],
) -> DimensionColumn:
    """A dimension's codes: its text values, and its numbers too when the config declares it one
    (bucketed when it gives boundaries, else each number its own value)."""
    labels = list(values.labels)
    codes = np.full(rows, -1, dtype=np.int64)
    codes[text_rows] = np.frombuffer(values.text_codes, dtype=np.int64) if len(text_rows) else 0
    if number_rows.size and bounds is not None:
        bucketed = _bucketed(name, rows, number_rows, numbers, bounds)
        inside = bucketed.codes >= 0
        codes[inside] = bucketed.codes[inside] + len(labels)
        labels.extend(bucketed.labels)
    elif number_rows.size:
        index = {label: code for code, label in enumerate(labels)}
        for row, number in zip(number_rows.tolist(), numbers.tolist()):
            codes[row] = index.setdefault(number_label(number), len(index))
        labels = list(index)
    return DimensionColumn(name, codes, labels)
