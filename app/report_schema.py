"""The shape of a `capnet eval` report.json, checked so that a bad upload gets a line naming the field."""

from __future__ import annotations

import math
from typing import Any

from app.limits import MAX_LABELS

GROUPS = ("head", "medium", "tail")
SETTINGS = ("single", "tta")


class ReportError(ValueError):
    """An uploaded report that does not follow the schema; the message names the field."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fail(where: str, field: str, wanted: str) -> ReportError:
    return ReportError(f"{where}: field '{field}' must be {wanted}")


def validate_report(report: Any, where: str) -> dict:
    """``report`` if it is a usable eval report; otherwise ReportError naming ``where`` and the field."""
    if not isinstance(report, dict):
        raise ReportError(f"{where}: not a capnet eval report (a JSON object is expected)")
    missing = [k for k in ("results", "per_class", "class_names") if k not in report]
    if missing:
        raise ReportError(f"{where}: not a capnet eval report (no {' / '.join(missing)})")
    for key in ("name", "produced_by"):
        if key in report and not isinstance(report[key], str):
            raise _fail(where, key, "text")
    if "threshold" in report and not (_number(report["threshold"]) and 0 <= report["threshold"] <= 1):
        raise _fail(where, "threshold", "a number between 0 and 1")
    names = report["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise _fail(where, "class_names", "a non-empty list of class names")
    if len(names) > MAX_LABELS:
        raise _fail(where, "class_names", f"at most {MAX_LABELS} classes (it has {len(names)})")
    results = report["results"]
    if not isinstance(results, dict) or not any(s in results for s in SETTINGS):
        raise _fail(where, "results", "an object with a 'single' or 'tta' entry")
    setting = "tta" if "tta" in results else "single"
    for s in (s for s in SETTINGS if s in results):
        if not isinstance(results[s], dict):
            raise _fail(where, f"results.{s}", "an object of mAP values")
        for group in ("total", *GROUPS):
            value = results[s].get(group)
            if value is not None and not (_number(value) and 0 <= value <= 1):
                raise _fail(where, f"results.{s}.{group}", "a number between 0 and 1, or null")
    rows = report["per_class"]
    if not isinstance(rows, list) or not rows:
        raise _fail(where, "per_class", "a non-empty list of per-class rows")
    if len(rows) > MAX_LABELS:
        raise _fail(where, "per_class", f"at most {MAX_LABELS} rows (it has {len(rows)})")
    for i, row in enumerate(rows):
        _check_row(row, f"per_class[{i}]", f"ap_{setting}", where)
    return report


def _check_row(row: Any, field: str, ap_key: str, where: str) -> None:
    if not isinstance(row, dict):
        raise _fail(where, field, "an object")
    if not isinstance(row.get("class"), str) or not row["class"]:
        raise _fail(where, f"{field}.class", "a class name")
    for key in ("train_count", "test_positives"):
        value = row.get(key)
        if not (_number(value) and value >= 0 and float(value).is_integer()):
            raise _fail(where, f"{field}.{key}", "a whole number, 0 or more")
    if row.get("group") not in (*GROUPS, None):
        raise _fail(where, f"{field}.group", "head, medium, tail or null")
    if ap_key not in row:
        raise ReportError(f"{where}: field '{field}.{ap_key}' is missing")
    value = row[ap_key]
    if value is not None and not (_number(value) and 0 <= value <= 1):
        raise _fail(where, f"{field}.{ap_key}", "a number between 0 and 1, or null")
