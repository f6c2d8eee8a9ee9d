"""Model metrics: how good a class's decisions were once the ground truth is known.

A class's prediction field and label field (the monitoring config's ``model`` entry, else the fields
named ``prediction`` and ``label``, root first) are compared ARC by ARC. The label usually arrives
later, as a late export into the same ARC, so an ARC may have a prediction and no label yet: that is
counted (``label_share``), never an error.

- **classification** (binary or multi-class; values compared as class names, so the number ``1`` and
  the text ``"1"`` are one class): accuracy, and per class precision, recall and F1 with their macro
  and support-weighted averages over the classes seen in the predictions or the labels, and the
  confusion counts (rows: labels, columns: predictions). A ratio with a zero denominator is 0, as
  scikit-learn's ``zero_division=0`` gives it.
- **regression**: MAE, RMSE and the mean error (prediction - label, the bias).

The kind is the config's, else inferred: classification when either field holds text, or when both
hold only whole numbers with at most :data:`MAX_INFERRED_CLASSES` distinct values; regression otherwise.
Values of another type than their field's (a string where numbers are the rule) are counted as type
mismatches and left out, as the report does for every field.

Everything is computed from confusion counts (classification) or error sums (regression) kept per
time bucket, so a series and a segment cost a ``bincount`` each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .monitoring_config import METRIC_BUCKETS, ClassSettings
from .stats import FloatArray, IntArray
from .table import ColumnTable, number_label

CLASSIFICATION, REGRESSION = "classification", "regression"
#: Whole-number fields with more distinct values than this are inferred to be a regression's.
MAX_INFERRED_CLASSES = 20
#: Values of a dimension shown as segments of the metrics (the most labelled first).
MAX_SEGMENT_VALUES = 20
#: A series never has more buckets than this (longer periods use buckets of several days or hours).
MAX_SERIES_POINTS = 744
MISSING_LABEL = "(missing)"
#: The metric drawn per segment and shown in series, by kind.
HEADLINE = {CLASSIFICATION: "f1_macro", REGRESSION: "mae"}
DEFAULT_PREDICTION, DEFAULT_LABEL = "prediction", "label"


def find_field(names: Iterable[str], wanted: str) -> Optional[str]:
    """The field named ``wanted`` at the root, else the shallowest (then first by name) field whose
    last path component is ``wanted`` (``MODEL.prediction``, ``globals.label``)."""
    candidates = [name for name in names if name == wanted or name.rsplit(".", 1)[-1] == wanted]
    return min(candidates, key=lambda name: (name != wanted, name.count("."), name)) if candidates else None


@dataclass
class _Field:
    """One field as the metrics read it: a class code per ARC (-1: none) and a number (NaN: none)."""

    name: Optional[str]
    codes: IntArray
    numbers: FloatArray
    class_names: List[str]
    #: Per ARC: its value has another type than the field's (left out, counted).
    mismatch: Any
    textual: bool


def _read_field(table: ColumnTable, name: Optional[str]) -> _Field:
    rows = table.rows
    empty = _Field(name, np.full(rows, -1, dtype=np.int64), np.full(rows, np.nan), [], np.zeros(rows, np.bool_), False)
    if name is None:
        return empty
    info = next((info for info in table.fields if info.name == name), None)
    mismatch = info.mismatch if info is not None else empty.mismatch
    kapi = table.kapis.get(name)
    if kapi is not None:
        numbers = kapi.values
        finite = ~np.isnan(numbers)
        distinct, inverse = np.unique(numbers[finite], return_inverse=True)
        codes = np.full(rows, -1, dtype=np.int64)
        codes[finite] = inverse.reshape(-1)
        return _Field(name, codes, numbers, [number_label(float(v)) for v in distinct.tolist()], mismatch, False)
    dimension = table.dimensions.get(name)
    if dimension is not None:
        return _Field(name, dimension.codes, np.full(rows, np.nan), list(dimension.labels), mismatch, True)
    return _Field(name, empty.codes, empty.numbers, [], mismatch, False)


def infer_kind(prediction: _Field, label: _Field) -> str:
    """Classification when a field holds text or only a few whole numbers; regression otherwise."""
    if prediction.textual or label.textual:
        return CLASSIFICATION
    values = np.concatenate([prediction.numbers, label.numbers])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return CLASSIFICATION
    whole = bool(np.all(values == np.round(values)))
    return CLASSIFICATION if whole and np.unique(values).size <= MAX_INFERRED_CLASSES else REGRESSION


def _class_order(name: str) -> Tuple[int, float, str]:
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def _shared_codes(prediction: _Field, label: _Field) -> Tuple[IntArray, IntArray, List[str]]:
    """Both fields' codes into one list of class names (numbers in order, then text)."""
    names = sorted(set(prediction.class_names) | set(label.class_names), key=_class_order)
    index = {name: code for code, name in enumerate(names)}

    def recode(field: _Field) -> IntArray:
        lookup = np.array([index[name] for name in field.class_names] + [-1], dtype=np.int64)
        return lookup[field.codes]  # code -1 picks the appended -1

    return recode(prediction), recode(label), names


# --- the metrics of a set of ARCs, from their counts ------------------------------------------------


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def classification_metrics(confusion: IntArray, names: Sequence[str]) -> Dict[str, Any]:
    """Accuracy, per-class precision, recall and F1, their macro and weighted means and the confusion
    counts, from a confusion matrix (rows: labels, columns: predictions) over the classes ``names``.
    The classes taken are those seen in the labels or the predictions (scikit-learn's default)."""
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    seen = np.flatnonzero((support > 0) | (predicted > 0)).tolist()
    total = int(confusion.sum())
    rows: List[Dict[str, Any]] = []
    for code in seen:
        hits = int(confusion[code, code])
        true, made = int(support[code]), int(predicted[code])
        rows.append(
            {
                "class": names[code],
                "precision": _ratio(hits, made),
                "recall": _ratio(hits, true),
                "f1": _ratio(2 * hits, made + true),
                "support": true,
                "predicted": made,
            }
        )
    out: Dict[str, Any] = {"accuracy": _ratio(float(np.trace(confusion)), total) if total else None}
    for key in ("precision", "recall", "f1"):
        values: List[float] = [row[key] for row in rows]
        weights: List[int] = [row["support"] for row in rows]
        out[f"{key}_macro"] = sum(values) / len(values) if values else None
        out[f"{key}_weighted"] = _ratio(sum(v * w for v, w in zip(values, weights)), sum(weights)) if total else None
    out["classes"] = rows
    out["confusion"] = {"classes": [names[code] for code in seen], "counts": confusion[np.ix_(seen, seen)].tolist()}
    return out


def regression_metrics(count: int, error_sum: float, abs_sum: float, square_sum: float) -> Dict[str, Any]:
    """MAE, RMSE and mean error (prediction - label) from the sums of the errors over ``count`` pairs."""
    if count == 0:
        return {"mae": None, "rmse": None, "mean_error": None}
    return {"mae": abs_sum / count, "rmse": math.sqrt(square_sum / count), "mean_error": error_sum / count}


# --- the section -------------------------------------------------------------------------------------


@dataclass
class _Pairs:
    """The two fields ready to compare: per ARC a prediction and a label (codes or numbers)."""

    kind: str
    prediction: _Field
    label: _Field
    predicted: Any  # bool per ARC: a usable prediction
    labelled: Any  # bool per ARC: a usable label
    pred_codes: IntArray
    label_codes: IntArray
    names: List[str]
    errors: FloatArray  # prediction - label (NaN where either is missing), regression only
    #: Label classes the predictions never name, over every ARC read.
    unseen: List[str]


def _pairs(prediction: _Field, label: _Field, kind: str) -> _Pairs:
    if kind == CLASSIFICATION:
        pred_codes, label_codes, names = _shared_codes(prediction, label)
        predicted, labelled = pred_codes >= 0, label_codes >= 0
        errors = np.full(pred_codes.size, np.nan)
        unseen_codes = sorted(set(label_codes[labelled].tolist()) - set(pred_codes[predicted].tolist()))
        unseen = [names[code] for code in unseen_codes]
    else:
        predicted, labelled = ~np.isnan(prediction.numbers), ~np.isnan(label.numbers)
        pred_codes = label_codes = np.zeros(0, dtype=np.int64)
        names, unseen = [], []
        errors = prediction.numbers - label.numbers
    return _Pairs(kind, prediction, label, predicted, labelled, pred_codes, label_codes, names, errors, unseen)


def _counts(pairs: _Pairs, rows: IntArray) -> Dict[str, Any]:
    predicted, labelled = pairs.predicted[rows], pairs.labelled[rows]
    with_prediction = int(predicted.sum())
    both = int((predicted & labelled).sum())
    return {
        "arcs": int(rows.size),
        "predicted": with_prediction,
        "labelled": int(labelled.sum()),
        "pairs": both,
        "label_share": both / with_prediction if with_prediction else None,
        "label_without_prediction": int((labelled & ~predicted).sum()),
        "prediction_type_mismatch": int(pairs.prediction.mismatch[rows].sum()),
        "label_type_mismatch": int(pairs.label.mismatch[rows].sum()),
    }


def _block(pairs: _Pairs, rows: IntArray) -> Dict[str, Any]:
    """Counts and metrics of the ARCs ``rows``."""
    out = _counts(pairs, rows)
    both = rows[pairs.predicted[rows] & pairs.labelled[rows]]
    if pairs.kind == CLASSIFICATION:
        k = len(pairs.names)
        flat = pairs.label_codes[both] * k + pairs.pred_codes[both]
        confusion = np.bincount(flat, minlength=k * k).reshape(k, k) if k else np.zeros((0, 0), np.int64)
        out.update(classification_metrics(confusion, pairs.names))
        labels = pairs.label_codes[rows][pairs.labelled[rows]]
        out["unseen_label_classes"] = {
            name: int((labels == pairs.names.index(name)).sum()) for name in pairs.unseen if name in pairs.names
        }
    else:
        errors = pairs.errors[both]
        out.update(
            regression_metrics(
                int(errors.size), float(errors.sum()), float(np.abs(errors).sum()), float((errors**2).sum())
            )
        )
    return out


def _series_point(pairs: _Pairs, rows: IntArray) -> Dict[str, Any]:
    block = _block(pairs, rows)
    keys = (
        ("accuracy", "precision_macro", "recall_macro", "f1_macro")
        if pairs.kind == CLASSIFICATION
        else ("mae", "rmse", "mean_error")
    )
    return {"n": block["pairs"], "label_share": block["label_share"], **{key: block[key] for key in keys}}


def series_buckets(start: float, end: float, bucket: str) -> Tuple[float, float, int]:
    """The first bucket's start (aligned on the UTC day or hour), the bucket length in seconds (a
    whole number of days or hours, so that there are at most :data:`MAX_SERIES_POINTS`), and how many."""
    unit = METRIC_BUCKETS[bucket]
    first = math.floor(start / unit) * unit
    units = max(1, math.ceil((end - first) / unit))
    seconds = unit * max(1, math.ceil(units / MAX_SERIES_POINTS))
    return first, seconds, max(1, math.ceil((end - first) / seconds))


def _series(pairs: _Pairs, rows: IntArray, bucket_of: IntArray, count: int) -> List[Dict[str, Any]]:
    order = np.argsort(bucket_of[rows], kind="stable")
    rows = rows[order]
    bounds = np.searchsorted(bucket_of[rows], np.arange(count + 1))
    return [_series_point(pairs, rows[start:end]) for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist())]


def _segments(
    table: ColumnTable,
    pairs: _Pairs,
    window: IntArray,
    baseline: IntArray,
    everything: IntArray,
    bucket_of: IntArray,
    count: int,
    by: Sequence[str],
) -> List[Dict[str, Any]]:
    skip = {pairs.prediction.name, pairs.label.name}
    names = [name for name in (by or sorted(table.dimensions)) if name not in skip and name in table.dimensions]
    both = pairs.predicted & pairs.labelled
    out = []
    for name in names:
        column = table.dimensions[name]
        labels = [*column.labels, MISSING_LABEL]
        codes = np.where(column.codes >= 0, column.codes, len(column.labels))
        labelled = np.bincount(codes[everything][both[everything]], minlength=len(labels))
        ranked = sorted((code for code in range(len(labels)) if labelled[code]), key=lambda c: (-labelled[c], c))
        for code in ranked[:MAX_SEGMENT_VALUES]:
            mine = codes == code
            out.append(
                {
                    "dimension": name,
                    "value": labels[code],
                    "window": _block(pairs, window[mine[window]]),
                    "baseline": _block(pairs, baseline[mine[baseline]]),
                    "series": _series(pairs, everything[mine[everything]], bucket_of, count),
                }
            )
    return out


def metrics_section(
    table: ColumnTable,
    window: IntArray,
    baseline: IntArray,
    span: Tuple[float, float],
    settings: ClassSettings,
    by: Sequence[str] = (),
) -> Optional[Dict[str, Any]]:
    """The ``metrics`` section of a report (docs/report-json.md), or None when the class has no
    prediction field. ``span`` is the time range the series cover (both periods)."""
    model = settings.model
    names = [info.name for info in table.fields]
    prediction_name = model.prediction if model.prediction is not None else find_field(names, DEFAULT_PREDICTION)
    if prediction_name is None or prediction_name not in names:
        return None
    label_name = model.label if model.label is not None else find_field(names, DEFAULT_LABEL)
    if label_name is not None and label_name not in names:
        label_name_found: Optional[str] = None
    else:
        label_name_found = label_name
    prediction = _read_field(table, prediction_name)
    label = _read_field(table, label_name_found)
    kind = model.kind or infer_kind(prediction, label)
    pairs = _pairs(prediction, label, kind)
    everything = np.sort(np.concatenate([window, baseline]))
    first, seconds, count = series_buckets(span[0], span[1], model.bucket)
    bucket_of = np.clip(((table.times - first) // seconds).astype(np.int64), 0, count - 1)
    return {
        "prediction": prediction_name,
        "label": label_name if label_name is not None else DEFAULT_LABEL,
        "label_found": label_name_found is not None,
        "kind": kind,
        "kind_declared": model.kind is not None,
        "headline": HEADLINE[kind],
        "classes": pairs.names,
        "unseen_label_classes": pairs.unseen,
        "window": _block(pairs, window),
        "baseline": _block(pairs, baseline),
        "series": {
            "bucket": model.bucket,
            "start": first,
            "bucket_seconds": seconds,
            "points": _series(pairs, everything, bucket_of, count),
        },
        "segments": _segments(table, pairs, window, baseline, everything, bucket_of, count, by),
    }
