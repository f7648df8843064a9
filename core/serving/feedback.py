"""Ground truth that arrives later: feedback entries from JSON (the endpoint) or a file (the CLI).

An entry names what it labels in one of two ways:

- by request: `{"request_id": "...", "label": 1}` labels every row of that
  request, `{"request_id": "...", "row": 3, "label": 1}` one row of it;
- by key: `{"series": "omi-1", "time": "2024-01-08T12:05:00", "label": 1}`
  labels the prediction for that series at that time (the bundle's series
  and time columns), for incident tickets that know the machine and the
  moment but not the request.

`label` is a number (or true/false): the class for classifiers and anomaly
detectors, the value for regressors.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from opsloop.errors import DataError
from opsloop.serving.predlog import Feedback
from opsloop.serving.schema import RequestError, json_type

KEYS = frozenset(("request_id", "row", "series", "time", "label", "model"))


def entry(obj: Any, *, model: str | None, source: str, where: str) -> Feedback:
    """One feedback entry; ValueError with the reason."""
    if type(obj) is not dict:
        raise ValueError(f"{where} is a {json_type(obj)}, expected an object with a label")
    extra = sorted(str(k) for k in obj if k not in KEYS)
    if extra:
        raise ValueError(f"{where}: unknown key(s) {', '.join(extra[:5])} (takes: {', '.join(sorted(KEYS))})")
    label = obj.get("label")
    if type(label) is bool:
        label = int(label)
    if type(label) not in (int, float) or not math.isfinite(label):
        raise ValueError(f"{where}: \"label\" must be a finite number or true/false, got {label!r:.40}")
    request_id, row = obj.get("request_id"), obj.get("row")
    if request_id is not None and (type(request_id) is not str or not 0 < len(request_id) <= 200):
        raise ValueError(f"{where}: \"request_id\" must be a string of 1 to 200 characters")
    if row is not None and (type(row) is not int or row < 0):
        raise ValueError(f"{where}: \"row\" must be an integer >= 0, got {row!r:.40}")
    series, time = obj.get("series"), obj.get("time")
    if request_id is None:
        if time is None:
            raise ValueError(f"{where}: give \"request_id\" (and optionally \"row\"), or \"time\" (and \"series\")")
        if row is not None:
            raise ValueError(f"{where}: \"row\" goes with \"request_id\"")
        for key, value in (("series", series), ("time", time)):
            if value is not None and (type(value) not in (str, int, float) or type(value) is bool):
                raise ValueError(f"{where}: \"{key}\" must be a string or a number")
    elif series is not None or time is not None:
        raise ValueError(f"{where}: give either \"request_id\" or \"series\"/\"time\", not both")
    name = obj.get("model", model)
    if name is not None and type(name) is not str:
        raise ValueError(f"{where}: \"model\" must be a string")
    return Feedback(label=label, request_id=request_id, row=row, model=name if request_id is None else None,
                    series=None if series is None else str(series), time=None if time is None else str(time),
                    source=source)


def parse_feedback(obj: Any, *, model: str | None, source: str) -> list[Feedback]:
    """Entries from a request body: one entry, a list, or `{"feedback": [...]}`; RequestError (422) otherwise."""
    items = obj.get("feedback") if type(obj) is dict and "feedback" in obj else obj
    if type(items) is not list:
        items = [items]
    if not items:
        raise RequestError(422, "no feedback entries")
    try:
        return [entry(item, model=model, source=source, where=f"feedback entry {i}") for i, item in enumerate(items)]
    except ValueError as exc:
        raise RequestError(422, str(exc)) from None


def read_file(path: Path, *, model: str | None) -> list[Feedback]:
    """Entries from a CSV file (header: request_id[,row],label or [series,]time,label) or JSON lines."""
    if not path.is_file():
        raise DataError(f"feedback file not found: {path}")
    out: list[Feedback] = []
    source = f"file:{path.name}"
    with open(path, encoding="utf-8", newline="") as fh:
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    out.append(entry(json.loads(line), model=model, source=source, where=f"{path}:{n}"))
                except ValueError as exc:  # JSONDecodeError is one
                    raise DataError(f"{path}:{n}: {exc}") from None
            return out
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "label" not in reader.fieldnames:
            raise DataError(f"{path}: the first line must name the columns, with label and request_id or time "
                            f"(found: {', '.join(reader.fieldnames or []) or 'nothing'})")
        for n, record in enumerate(reader, start=2):
            try:
                out.append(entry(_typed(record), model=model, source=source, where=f"{path}:{n}"))
            except ValueError as exc:
                raise DataError(str(exc)) from None
    return out


def _typed(record: dict[str, Any]) -> dict[str, Any]:
    """A CSV row with numbers where JSON would have them; empty cells left out."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if value is None or value == "" or key is None:
            continue
        if key == "label":
            text = value.strip().lower()
            out[key] = {"true": 1, "false": 0}.get(text)
            if out[key] is None:
                try:
                    out[key] = float(text) if any(ch in text for ch in ".en") else int(text)
                except ValueError:
                    raise ValueError(f"label {value!r} is not a number") from None
        elif key == "row":
            if not value.strip().isdigit():
                raise ValueError(f"row {value!r} is not a whole number >= 0")
            out[key] = int(value)
        else:
            out[key] = value
    return out
