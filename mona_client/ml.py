"""Prediction logging for model-serving code: one ARC per prediction, the label when it arrives.

::

    from mona_client import ml

    context_id = ml.log_prediction({"amount": 120.5, "country": "de"}, 1, arc_class="FRAUD", model="v3")
    ids = ml.log_predictions(frame, model.predict(frame), arc_class="FRAUD", ids="request_id")
    ...
    ml.log_ground_truth(context_id, 0)  # hours later, into the same ARC

The ARC of a prediction holds, as root fields: every feature under its own name, ``prediction``,
``label`` when known, and the keyword dimensions (``model="v3"``). Flat root fields are what
``mona report`` types one by one (numbers: KAPIs, strings and booleans: dimensions to segment by), and
``prediction`` and ``label`` are the names its model metrics look for. See docs/prediction-logging.md.

Inputs: a dict, a pandas Series or a 1-D numpy array (with ``feature_names``) for one prediction; a
pandas DataFrame, a 2-D numpy array (with ``feature_names``, or a structured array), a list of dicts
or a dict of lists for a batch. numpy and pandas are optional: this module imports neither, and only
looks at an input's type when the package that made it is loaded already.

Values: numbers and strings go as they are (numpy values as Python values, converted column by
column). A value that is None, NaN, infinite, ``pandas.NA`` or ``NaT`` is left out of its row: the
field is missing in that ARC, which is how the report counts it. NaN and infinities are counted in one
rate-limited line per call. Column names that are not strings are converted with ``str()``.

Errors follow the client's policy: a call that cannot be carried out (batch columns of different
lengths, an input of an unknown kind) is one rate-limited error line and an empty result, or a
:class:`~mona_client.export.MonaExportException` with ``MONA_SHOULD_RAISE_EXCEPTIONS=true``. A row
that cannot be encoded is refused alone, and the rest of the batch is delivered before anything is
raised.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import operator
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from . import client
from . import context as _ctx
from .export import MonaExportException
from .logs import rate_limited
from .record import EXCEPTION_MESSAGE_KEY, EXCEPTION_TYPE_KEY, RESERVED_PREFIX
from .runtime import RUN_FACTS_REFUSED, exception_text, exception_type_name
from .runtime import runtime as _runtime
from .sampling import SampledOutStack

__all__ = [
    "LABEL",
    "PREDICTION",
    "log_exception",
    "log_ground_truth",
    "log_ground_truths",
    "log_prediction",
    "log_predictions",
]

#: The field of an ARC that holds the model's prediction (the name ``mona report`` looks for).
PREDICTION = "prediction"
#: The field of an ARC that holds the ground truth (the name ``mona report`` looks for).
LABEL = "label"

#: The type recorded by :func:`log_exception` called with a message and no exception.
_NO_EXCEPTION_TYPE = "Exception"

# What a value is to a row: kept, left out as missing (None, NA, NaT), left out as not finite (NaN, inf).
_KEPT, _MISSING, _NOT_FINITE = 0, 1, 2


# --- the user's values ----------------------------------------------------------------------------


def _value_kind(value: Any) -> int:
    """Whether ``value`` is kept in its row, or left out as missing or as a number that is not finite."""
    if value is None:
        return _MISSING
    kind = type(value)
    if kind is str or kind is int or kind is bool:
        return _KEPT
    if isinstance(value, float):
        return _KEPT if math.isfinite(value) else _NOT_FINITE
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)):
        return _KEPT
    try:
        # numpy numbers, Decimal, Fraction: anything float() takes. A numpy array of more than one value
        # raises here and is kept (it travels as a list).
        return _KEPT if math.isfinite(value) else _NOT_FINITE
    except (TypeError, ValueError, OverflowError):
        pass
    try:
        # NaT (numpy's or pandas') is the one value here that is not equal to itself.
        return _MISSING if bool(value != value) else _KEPT
    except Exception:  # pandas.NA refuses to be a bool, a user's object may raise anything
        # pandas' missing marker, by name: pandas is not imported here.
        return _MISSING if kind.__name__ == "NAType" else _KEPT


def _all_finite_numbers(values: Sequence[Any]) -> bool:
    """True when every value is a finite number, told by one ``sum`` in C rather than a test per value.

    The sum of finite numbers is finite unless it overflows (then the values are looked at one by one,
    which finds nothing to leave out); a NaN or an infinity makes it not finite; a string or None makes
    ``sum`` raise at once.
    """
    try:
        total = sum(values)
    except Exception:  # any value that is not a number: the caller looks at each
        return False
    return isinstance(total, (int, float)) and math.isfinite(total)


@dataclass
class _Column:
    """One field over the rows of a batch: its values, and the rows that leave it out."""

    name: str
    values: Sequence[Any]
    left_out: List[int] = field(default_factory=list)
    not_finite: int = 0


def _scanned(name: str, values: Sequence[Any]) -> _Column:
    """A column of Python values, its missing and non-finite values found one by one when needed."""
    column = _Column(name, values)
    if _all_finite_numbers(values):
        return column
    for row, value in enumerate(values):
        if type(value) is str:
            continue
        kind = _value_kind(value)
        if kind:
            column.left_out.append(row)
            column.not_finite += kind == _NOT_FINITE
    return column


def _numpy() -> Any:
    """The numpy module if the program loaded it, else None: an input cannot be an array without it.

    Typed ``Any``: numpy is optional and not imported here, so its types are not known statically.
    """
    return sys.modules.get("numpy")


def _pandas() -> Any:
    """The pandas module if the program loaded it, else None (``Any`` for the reason of :func:`_numpy`)."""
    return sys.modules.get("pandas")


def _is_array(value: Any) -> bool:
    np = _numpy()
    return np is not None and isinstance(value, np.ndarray)


def _is_frame(value: Any) -> bool:
    pd = _pandas()
    return pd is not None and isinstance(value, pd.DataFrame)


def _is_series(value: Any) -> bool:
    pd = _pandas()
    return pd is not None and isinstance(value, pd.Series)


def _array_column(name: str, array: Any) -> _Column:
    """A 1-D numpy array as a column: converted whole by ``tolist()``, checked by numpy's own tests."""
    np = _numpy()
    kind = array.dtype.kind
    if kind in "iub":
        return _Column(name, array.tolist())
    if kind == "f":
        column = _Column(name, array.tolist())
        bad = ~np.isfinite(array)
        if bad.any():
            column.left_out = np.flatnonzero(bad).tolist()
            column.not_finite = len(column.left_out)
        return column
    if kind == "M":  # datetime64: ISO text, as export() sends a datetime
        column = _Column(name, np.datetime_as_string(array, unit="auto").tolist())
        column.left_out = np.flatnonzero(np.isnat(array)).tolist()
        return column
    if kind == "m":  # timedelta64: seconds
        column = _Column(name, (array / np.timedelta64(1, "s")).tolist())
        column.left_out = np.flatnonzero(np.isnat(array)).tolist()
        return column
    return _scanned(name, array.tolist())


def _series_values(series: Any) -> Any:
    """A Series' values as a numpy array: a numpy dtype whole; pandas' own dtypes (nullable integers,
    categories, text, times with a zone) as objects, so that an integer stays an integer and
    ``pandas.NA`` stays missing."""
    return series.to_numpy() if isinstance(series.dtype, _numpy().dtype) else series.to_numpy(dtype=object)


def _any_column(name: str, values: Any) -> _Column:
    """A column from a numpy array, a pandas Series or any sequence."""
    if _is_series(values):
        values = _series_values(values)
    if _is_array(values):
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim == 1:
            return _array_column(name, values)
        return _Column(name, values.tolist())  # a vector per row (class probabilities): lists
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        values = list(values)
    return _scanned(name, values)


class _BadInputError(Exception):
    """An input this module cannot take: said once as the call's error, nothing exported."""


def _column_name(name: Any) -> str:
    return name if type(name) is str else str(name)


def _frame_columns(frame: Any) -> List[_Column]:
    return [_any_column(_column_name(name), frame.iloc[:, index]) for index, name in enumerate(frame.columns)]


def _matrix_columns(array: Any, feature_names: Optional[Sequence[Any]]) -> List[_Column]:
    """The columns of a 2-D array (named by ``feature_names``) or of a structured array (named by its dtype)."""
    if array.dtype.names is not None and array.ndim == 1:
        names = list(feature_names) if feature_names is not None else list(array.dtype.names)
        return [_any_column(_column_name(name), array[key]) for name, key in zip(names, array.dtype.names)]
    if array.ndim != 2:
        raise _BadInputError(f"a batch of features as a numpy array must be 2-D (rows, features), not {array.ndim}-D")
    if feature_names is None or len(feature_names) != array.shape[1]:
        raise _BadInputError(
            f"a 2-D numpy array of features needs feature_names=[...] with one name per column ({array.shape[1]})"
        )
    return [_any_column(_column_name(name), array[:, index]) for index, name in enumerate(feature_names)]


def _records_columns(records: Sequence[Any]) -> List[_Column]:
    """The columns of a list of dicts: every key any row has; a row without a key leaves it out."""
    for record in records:
        if type(record) is not dict and not isinstance(record, Mapping):
            raise _BadInputError(f"a batch as a list takes one dict of features per row, not a {type(record).__name__}")
    names = list(dict.fromkeys(itertools.chain.from_iterable(records)))
    if not names:
        return []
    if all(len(record) == len(names) for record in records):
        # Every row has every key: one C call per row picks the values, one transposition makes columns.
        if len(names) == 1:
            rows = [(record[names[0]],) for record in records]
        else:
            rows = list(map(operator.itemgetter(*names), records))
        columns = list(zip(*rows)) if rows else [() for _ in names]
    else:
        columns = [tuple(record.get(name) for record in records) for name in names]
    return [_scanned(_column_name(name), values) for name, values in zip(names, columns)]


def _mapping_columns(features: Mapping[Any, Any]) -> List[_Column]:
    """The columns of a dict of lists (or arrays, or Series)."""
    columns = []
    for name, values in features.items():
        if isinstance(values, (str, bytes)) or not (
            isinstance(values, Sequence) or _is_array(values) or _is_series(values)
        ):
            raise _BadInputError(
                f"a batch as a dict takes a list of values per feature; {_column_name(name)!r} holds a "
                f"{type(values).__name__}"
            )
        columns.append(_any_column(_column_name(name), values))
    return columns


def _converted(features: Any) -> Any:
    """An array-like or table-like input of another library, as numpy or pandas gives it, or why not."""
    if hasattr(features, "to_pandas"):  # pyarrow tables, polars frames: they import pandas themselves
        try:
            return features.to_pandas()
        except ImportError:
            raise _BadInputError(f"a {type(features).__name__} needs the pandas package: pip install pandas") from None
    if hasattr(features, "__array__"):  # torch tensors, pyarrow arrays, anything numpy can take
        try:
            import numpy

            return numpy.asarray(features)
        except ImportError:
            raise _BadInputError(f"a {type(features).__name__} needs the numpy package: pip install numpy") from None
    return None


def _batch_columns(features: Any, feature_names: Optional[Sequence[Any]]) -> Tuple[List[_Column], Optional[int]]:
    """The feature columns of a batch, and its row count (None when no column tells it)."""
    if feature_names is not None and not _is_array(features):
        raise _BadInputError("feature_names= names the columns of a numpy array; other inputs name their own")
    if _is_frame(features):
        return _frame_columns(features), len(features)
    if _is_array(features):
        columns = _matrix_columns(features, feature_names)
        return columns, len(features)
    if isinstance(features, Mapping):
        columns = _mapping_columns(features)
        return columns, len(columns[0].values) if columns else None
    if isinstance(features, Sequence) and not isinstance(features, (str, bytes)):
        return _records_columns(features), len(features)
    converted = _converted(features)
    if converted is not None:
        return _batch_columns(converted, feature_names)
    raise _BadInputError(
        "features of a batch must be a pandas DataFrame, a 2-D numpy array, a list of dicts or a dict of "
        f"lists, not a {type(features).__name__}"
    )


def _single_columns(features: Any, feature_names: Optional[Sequence[Any]]) -> List[_Column]:
    """The features of one prediction as columns of one row each."""
    if _is_series(features):
        if feature_names is not None:
            raise _BadInputError("feature_names= names the values of a numpy array; a Series names its own (its index)")
        return _one_row([_column_name(name) for name in features.index], _series_values(features))
    if _is_array(features):
        if features.ndim != 1 or feature_names is None or len(feature_names) != len(features):
            raise _BadInputError(
                "the features of one prediction as a numpy array must be 1-D, with feature_names=[...] naming "
                "each value"
            )
        return _one_row([_column_name(name) for name in feature_names], features)
    if feature_names is not None:
        raise _BadInputError("feature_names= names the values of a numpy array; a dict names its own")
    if isinstance(features, Mapping):
        return [_scanned(_column_name(name), (value,)) for name, value in features.items()]
    converted = _converted(features)
    if converted is not None:
        return _single_columns(converted.ravel() if _is_array(converted) else converted, feature_names)
    raise _BadInputError(
        "the features of one prediction must be a dict, a pandas Series or a 1-D numpy array, not a "
        f"{type(features).__name__}"
    )


def _one_row(names: List[str], array: Any) -> List[_Column]:
    values = array.tolist()  # Python values; a float NaN is found by the scan
    return [_scanned(name, (value,)) for name, value in zip(names, values)]


# --- from columns to ARCs -------------------------------------------------------------------------


@dataclass
class _Batch:
    """What one call exports: the columns of every field, the ids to use ("" for a fresh one)."""

    call: str
    rows: int
    columns: List[_Column]
    ids: List[str]


def _take_column(columns: List[_Column], name: str) -> Optional[_Column]:
    """Remove the feature column ``name`` (given as the column of ``ids=``, ``predictions=``...)."""
    for index, column in enumerate(columns):
        if column.name == name:
            return columns.pop(index)
    return None


def _argument_column(argument: str, value: Any, field_name: str, columns: List[_Column]) -> _Column:
    """The column of ``predictions=``, ``labels=`` or ``ids=``: a feature column's name, or the values."""
    if isinstance(value, str):
        taken = _take_column(columns, value)
        if taken is None:
            raise _BadInputError(f"{argument}={value!r} names no column of the features")
        taken.name = field_name
        return taken
    if _is_frame(value) and len(value.columns) == 1:
        value = value.iloc[:, 0]
    if isinstance(value, Mapping) or not (isinstance(value, Sequence) or _is_array(value) or _is_series(value)):
        raise _BadInputError(f"{argument}= takes a column name or a sequence of values, not a {type(value).__name__}")
    return _any_column(field_name, value)


def _context_id_text(value: Any) -> Any:
    """An id as text: strings as they are, integers (a numeric id column) by ``str()``; others unchanged,
    to be refused with their type named."""
    if type(value) is str:
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    return value


def _checked_ids(call: str, values: Sequence[Any]) -> List[str]:
    """The ids of the rows; an id that cannot name an ARC becomes "" (a fresh one), said once."""
    depth, chars = _runtime.max_context_depth, _runtime.max_context_id_chars
    ids: List[str] = []
    refused = 0
    first_reason = ""
    for value in values:
        text = _context_id_text(value)
        reason = _ctx.malformed_reason(text, depth, chars)
        if reason is None:
            ids.append(text)
        else:
            ids.append("")
            refused += 1
            first_reason = first_reason or reason
    if refused:
        rate_limited.log(
            logging.WARNING,
            f"ml-ids:{call}",
            "mona-client: %s(): %d id(s) refused (the first: %s); those rows are logged in fresh ARCs",
            call,
            refused,
            first_reason,
        )
    return ids


def _drop_clashing(call: str, columns: List[_Column], taken: Sequence[str]) -> List[_Column]:
    """Leave out the feature columns that cannot be fields: reserved ``MONA_`` names, a name given twice,
    and a name an argument fills (``prediction``, ``label``, a keyword dimension). Said once."""
    kept: List[_Column] = []
    seen = set(taken)
    left_out: List[str] = []
    for column in columns:
        if column.name.startswith(RESERVED_PREFIX) or column.name in seen:
            left_out.append(column.name)
            continue
        seen.add(column.name)
        kept.append(column)
    if left_out:
        rate_limited.log(
            logging.WARNING,
            f"ml-columns:{call}:{left_out}",
            "mona-client: %s(): feature columns %s left out: a name starting with MONA_ is reserved, and a "
            "name an argument fills (prediction, label, a keyword dimension) or a name repeated is taken once",
            call,
            left_out,
        )
    return kept


def _constant_columns(call: str, dimensions: Mapping[str, Any], rows: int) -> List[_Column]:
    """The keyword dimensions, one value for every row; reserved names and unusable values left out."""
    columns = []
    for name, value in dimensions.items():
        if name.startswith(RESERVED_PREFIX) or _value_kind(value) != _KEPT:
            rate_limited.log(
                logging.WARNING,
                f"ml-dimension:{call}:{name}",
                "mona-client: %s(): the dimension %r is left out (a MONA_ name, or a None, NaN or infinite value)",
                call,
                name,
            )
            continue
        columns.append(_Column(name, [value] * rows))
    return columns


def _rows(batch: _Batch) -> List[Dict[str, Any]]:
    """One message per row, from the columns: a dict built by ``zip`` in C, then the left-out cells removed."""
    names = [column.name for column in batch.columns]
    rows = [dict(zip(names, values)) for values in zip(*(column.values for column in batch.columns))]
    not_finite = 0
    for column in batch.columns:
        name = column.name
        for row in column.left_out:
            del rows[row][name]
        not_finite += column.not_finite
    if not_finite:
        rate_limited.log(
            logging.INFO,
            f"ml-not-finite:{batch.call}",
            "mona-client: %s(): %d NaN or infinite value(s) left out of their rows (the field is missing in that ARC)",
            batch.call,
            not_finite,
        )
    return rows


def _export_rows(batch: _Batch, arc_class: str, export_timestamp: Optional[float]) -> List[str]:
    """Each row into an ARC of its own; the ids of the ARCs. Refused rows are counted and said once;
    with raising on, the first refusal is raised after every other row was exported."""
    opened = client.new_mona_context
    export = client.export
    ids: List[str] = []
    refused = 0
    first_error: Optional[MonaExportException] = None
    for message, context_id in zip(_rows(batch), batch.ids):
        with opened(arc_class, context_id, export_timestamp) as opened_id:
            try:
                if not export(message, export_timestamp):
                    refused += 1
            except MonaExportException as exc:  # raising is on: raised once the batch is through
                refused += 1
                first_error = first_error or exc
        ids.append(opened_id)
    if first_error is not None:
        raise MonaExportException(f"{batch.call}(): {refused} of {batch.rows} row(s) refused; the first: {first_error}")
    if refused:
        rate_limited.log(
            logging.ERROR,
            f"ml-refused:{batch.call}",
            "mona-client: %s(): %d of %d row(s) not accepted (see the lines above); the others were exported",
            batch.call,
            refused,
            batch.rows,
        )
    return ids


def _fail(call: str, problem: str) -> bool:
    """The client's error policy for a call it cannot carry out: one rate-limited line, or raise."""
    return _runtime.pipeline.fail(f"ml:{call}", f"{call}(): {problem}")


def _check_arc_class(arc_class: Any) -> None:
    if not isinstance(arc_class, str) or not arc_class:
        raise _BadInputError(f"arc_class must be a non-empty string, not {arc_class!r}")


# --- the API ----------------------------------------------------------------------------------------


def log_prediction(
    features: Any,  # a dict, a pandas Series or a 1-D numpy array: optional packages, taken by duck type
    prediction: Any,
    *,
    arc_class: str,
    context_id: Optional[str] = None,
    label: Any = None,
    feature_names: Optional[Sequence[str]] = None,
    export_timestamp: Optional[float] = None,
    **dimensions: Any,
) -> str:
    """Log one prediction in an ARC of its own; returns the ARC's context id ("" when not logged).

    ``features``: a dict of feature values, a pandas Series (named by its index) or a 1-D numpy array
    named by ``feature_names``. ``prediction`` and ``label`` (when already known) become the fields
    ``prediction`` and ``label``; ``dimensions`` (``model="v3"``) become fields too. ``context_id``
    names the ARC (a request id, to join the label later), else a fresh id is made.
    ``export_timestamp`` (seconds) dates it, for predictions logged after the fact.

    The ARC is a new root context of ``arc_class``, also when called inside another context (which is
    current again afterwards). To put a prediction into the current context instead, pass
    ``context_id=client.get_full_context_id()``.
    """
    call = "log_prediction"
    if not client.is_active():
        return ""
    try:
        _check_arc_class(arc_class)
        columns = _single_columns(features, feature_names)
        fields = [_any_column(PREDICTION, [prediction])]
        if label is not None:
            fields.append(_any_column(LABEL, [label]))
        taken = [PREDICTION, *([LABEL] if label is not None else []), *dimensions]
        columns = _drop_clashing(call, columns, taken)
        ids = _checked_ids(call, [context_id]) if context_id is not None else [""]
    except _BadInputError as exc:
        _fail(call, str(exc))
        return ""
    batch = _Batch(call, 1, [*columns, *fields, *_constant_columns(call, dimensions, 1)], ids)
    return _export_rows(batch, arc_class, export_timestamp)[0]


def log_predictions(
    features: Any,  # a DataFrame, a 2-D numpy array, a list of dicts or a dict of lists: see log_prediction
    predictions: Any,
    *,
    arc_class: str,
    ids: Any = None,
    labels: Any = None,
    feature_names: Optional[Sequence[str]] = None,
    export_timestamp: Optional[float] = None,
    **dimensions: Any,
) -> List[str]:
    """Log a batch of predictions, one ARC per row; returns the rows' context ids, in order.

    ``features``: a pandas DataFrame, a 2-D numpy array with ``feature_names`` (or a structured array),
    a list of dicts (one per row) or a dict of lists (one per feature). ``predictions``, ``labels`` and
    ``ids`` are each a sequence (list, numpy array, pandas Series) with one value per row, or the name
    of a feature column, which is then taken out of the features. Without ``ids`` every row gets a
    fresh id; an id that cannot name an ARC (see docs/propagation.md) is replaced by a fresh one.
    ``dimensions`` are fields with one value for every row (``model="v3"``).

    Returns [] when nothing is logged: the client is disabled, the batch is empty, or it is refused
    (columns of different lengths, an input of an unknown kind: one error line, or an exception with
    raising on).
    """
    call = "log_predictions"
    if not client.is_active():
        return []
    try:
        _check_arc_class(arc_class)
        batch = _batch(call, features, predictions, ids, labels, feature_names, dimensions)
    except _BadInputError as exc:
        _fail(call, str(exc))
        return []
    if not batch.rows:
        return []
    return _export_rows(batch, arc_class, export_timestamp)


def _batch(
    call: str,
    features: Any,
    predictions: Any,
    ids: Any,
    labels: Any,
    feature_names: Optional[Sequence[str]],
    dimensions: Mapping[str, Any],
) -> _Batch:
    """The columns of a batch, every one as long as the features; raises :class:`_BadInputError`."""
    columns, rows = _batch_columns(features, feature_names)
    fields = [_argument_column("predictions", predictions, PREDICTION, columns)]
    if labels is not None:
        fields.append(_argument_column("labels", labels, LABEL, columns))
    id_column = _argument_column("ids", ids, "ids", columns) if ids is not None else None
    lengths = {column.name: len(column.values) for column in [*columns, *fields]}
    if id_column is not None:
        lengths["ids"] = len(id_column.values)
    if rows is None:
        rows = lengths[PREDICTION]
    wrong = {name: length for name, length in lengths.items() if length != rows}
    if wrong:
        raise _BadInputError(f"every column must have {rows} value(s), one per row of the features; not so: {wrong}")
    taken = [field.name for field in fields] + list(dimensions)
    columns = _drop_clashing(call, columns, taken)
    context_ids = _checked_ids(call, id_column.values) if id_column is not None else [""] * rows
    return _Batch(call, rows, [*columns, *fields, *_constant_columns(call, dimensions, rows)], context_ids)


def log_ground_truth(
    context_id: Union[str, int],
    label: Any,
    *,
    export_timestamp: Optional[float] = None,
    arc_class: Optional[str] = None,
) -> bool:
    """Export the ground truth of a logged prediction, as the field ``label`` of its ARC; True when accepted.

    ``context_id`` is what :func:`log_prediction` returned (or the id it was given; an integer id as
    :func:`log_predictions` takes it, by ``str()``). Nothing else is
    exported: not the arc class again, not the globals. ``arc_class`` is only read by sampling with
    per-class rates, to decide as the prediction's process did. An id that cannot name an ARC, or a
    label that is None or NaN, is refused (a line, or an exception with raising on).
    """
    return _ground_truths("log_ground_truth", [context_id], [label], export_timestamp, arc_class) == 1


def log_ground_truths(
    context_ids: Any,  # a sequence, a numpy array or a pandas Series
    labels: Any,
    *,
    export_timestamp: Optional[float] = None,
    arc_class: Optional[str] = None,
) -> int:
    """:func:`log_ground_truth` for many ARCs at once; returns how many labels were accepted.

    A None or NaN label is skipped (no label yet), an id that cannot name an ARC is refused with one
    line for the call; the other labels are exported.
    """
    return _ground_truths("log_ground_truths", context_ids, labels, export_timestamp, arc_class)


def _ground_truths(
    call: str, context_ids: Any, labels: Any, export_timestamp: Optional[float], arc_class: Optional[str]
) -> int:
    if not client.is_active():
        return 0
    try:
        id_column = _any_column("ids", context_ids)
        label_column = _any_column(LABEL, labels)
        if len(id_column.values) != len(label_column.values):
            raise _BadInputError(f"{len(id_column.values)} id(s) and {len(label_column.values)} label(s)")
    except _BadInputError as exc:
        _fail(call, str(exc))
        return 0
    skipped = set(label_column.left_out)
    if skipped and call == "log_ground_truth":
        _fail(call, "the label is None, NaN or infinite; nothing is exported")
        return 0
    accepted = 0
    context_ids = [_context_id_text(value) for value in id_column.values]
    depth, chars = _runtime.max_context_depth, _runtime.max_context_id_chars
    for row, (context_id, label) in enumerate(zip(context_ids, label_column.values)):
        if row in skipped:
            continue
        reason = _ctx.malformed_reason(context_id, depth, chars)
        if reason is not None:
            _fail(call, f"a context id is refused ({reason}); its label is not exported")
            continue
        accepted += _export_label(context_id, label, export_timestamp, arc_class)
    return accepted


def _export_label(context_id: str, label: Any, export_timestamp: Optional[float], arc_class: Optional[str]) -> bool:
    """The label into the ARC ``context_id``; a refusal raised (raising on) after the block is left, so that
    the ARC does not record it as the block's exception."""
    error: Optional[MonaExportException] = None
    with client.continue_mona_context(context_id, arc_class):
        try:
            return client.export({LABEL: label}, export_timestamp)
        except MonaExportException as exc:
            error = exc
    raise error


def log_exception(exc: Optional[BaseException] = None, *, message: Optional[str] = None) -> bool:
    """Record a handled error in the current context: ``MONA_EXCEPTION_TYPE`` and ``MONA_EXCEPTION_MESSAGE``.

    The same fields, names and bounds as a context that exits by an exception (docs/arc-document.md):
    the type by its bare name for a builtin (``KeyError``) else ``module.QualName``, the message cut to
    ``MONA_EXCEPTION_MESSAGE_MAX_CHARS``. ``exc`` defaults to the exception being handled (call it in an
    ``except`` block); ``message`` replaces its text. With a ``message`` and no exception at all, the
    type is ``Exception``. It is recorded whatever ``MONA_EXPORT_EXCEPTIONS`` says: that setting is about
    contexts that exit by an exception, and this call is asked for. True when accepted.
    """
    call = "log_exception"
    if not client.is_active():
        return False
    stack = _ctx.current_stack()
    if not stack:
        if type(stack) is SampledOutStack:  # the ARC is not kept: nothing to record, and no error
            return True
        return _fail(call, "called outside any mona context; open one with new_mona_context()")
    if exc is None:
        exc = sys.exc_info()[1]
    if exc is not None and not isinstance(exc, BaseException):
        return _fail(call, f"takes an exception, not a {type(exc).__name__}")
    if exc is None and message is None:
        return _fail(call, "no exception is being handled here, and no message= was given; nothing is recorded")
    max_chars = _runtime.exception_message_max_chars
    if exc is None:
        record = {EXCEPTION_TYPE_KEY: _NO_EXCEPTION_TYPE, EXCEPTION_MESSAGE_KEY: str(message)[:max_chars]}
    else:
        text = exception_text(exc, max_chars) if message is None else str(message)[:max_chars]
        record = {EXCEPTION_TYPE_KEY: exception_type_name(exc), EXCEPTION_MESSAGE_KEY: text}
    # The client's own path for run facts: MONA_ keys are refused from a user's export().
    return _runtime.pipeline.export_to(stack[-1][0], record, None, RUN_FACTS_REFUSED)
