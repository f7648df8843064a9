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

Every value is checked here, before it is queued: whatever SQLite cannot
store (an integer beyond 64 bits, a string with a lone UTF-16 surrogate,
which JSON's `\\ud800` escapes allow) is refused with the entry and the key
named, so that one bad entry is a 422 for its sender and never reaches the
log writer (issue 8).
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

from opsloop.errors import DataError
from opsloop.serving.predlog import Feedback
from opsloop.serving.schema import RequestError, json_type, utf8

#: A number as CSV cells write one: plain ASCII decimal, optional sign, point and exponent.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?")
KEYS = frozenset(("request_id", "row", "series", "time", "label", "model"))
REQUEST_ID_MAX = 200  # as `opsloop.serving.protocol.REQUEST_ID_MAX`: no prediction has a longer id
TEXT_MAX = 1000       # characters of a series, time or model name
INT_MIN, INT_MAX = -2 ** 63, 2 ** 63 - 1  # SQLite's INTEGER


def _text(value: str) -> bool:
    """Whether SQLite can store a string: UTF-8 encodable (no lone surrogate) and not too long."""
    return len(value) <= TEXT_MAX and utf8(value)


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
    if type(label) is int and not INT_MIN <= label <= INT_MAX:  # (before isfinite, which overflows on them)
        raise ValueError(f"{where}: \"label\" {label!r:.40} is beyond a 64-bit integer (send it as a float)")
    if type(label) not in (int, float) or not math.isfinite(label):
        raise ValueError(f"{where}: \"label\" must be a finite number or true/false, got {label!r:.40}")
    request_id, row = obj.get("request_id"), obj.get("row")
    if request_id is not None and (type(request_id) is not str or not 0 < len(request_id) <= REQUEST_ID_MAX
                                   or not request_id.isprintable()):
        raise ValueError(f"{where}: \"request_id\" must be a printable string of 1 to {REQUEST_ID_MAX} "
                         f"characters, got {_show(request_id)}")
    if row is not None and (type(row) is not int or not 0 <= row <= INT_MAX):
        raise ValueError(f"{where}: \"row\" must be an integer from 0 to {INT_MAX}, got {row!r:.40}")
    series, time = obj.get("series"), obj.get("time")
    if request_id is None:
        if time is None:
            raise ValueError(f"{where}: give \"request_id\" (and optionally \"row\"), or \"time\" (and \"series\")")
        if row is not None:
            raise ValueError(f"{where}: \"row\" goes with \"request_id\"")
        for key, value in (("series", series), ("time", time)):
            if value is None or type(value) is int or type(value) is float and math.isfinite(value):
                continue
            if type(value) is not str or not _text(value):
                raise ValueError(f"{where}: \"{key}\" must be a UTF-8 string of at most {TEXT_MAX} characters "
                                 f"or a finite number, got {_show(value)}")
    elif series is not None or time is not None:
        raise ValueError(f"{where}: give either \"request_id\" or \"series\"/\"time\", not both")
    name = obj.get("model", model)
    if name is not None and (type(name) is not str or not _text(name)):
        raise ValueError(f"{where}: \"model\" must be a UTF-8 string of at most {TEXT_MAX} characters, "
                         f"got {_show(name)}")
    return Feedback(label=label, request_id=request_id, row=row, model=name if request_id is None else None,
                    series=None if series is None else str(series), time=None if time is None else str(time),
                    source=source)


def _show(value: Any) -> str:
    """A value for a message: a JSON type and a short repr (which escapes surrogates and control characters)."""
    text = repr(value)
    return f"a {json_type(value)} ({text if len(text) <= 40 else text[:37] + '...'})"


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
    """Entries from a CSV file (header: request_id[,row],label or [series,]time,label) or JSON lines.

    A bad line is a DataError naming the file and the line (and the key), never a traceback.
    """
    if not path.is_file():
        raise DataError(f"feedback file not found: {path}")
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return _read(fh, path, model=model)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not CSV: {exc}") from None


def _read(fh: Any, path: Path, *, model: str | None) -> list[Feedback]:
    out: list[Feedback] = []
    source = "file:" + path.name.encode(errors="replace").decode()  # a name from argv may hold surrogates
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:  # JSONDecodeError, and integers too long to read
                raise DataError(f"{path}:{n}: not JSON: {exc}") from None
            except RecursionError:
                raise DataError(f"{path}:{n}: not a feedback entry: JSON nested too deeply") from None
            try:
                out.append(entry(obj, model=model, source=source, where=f"{path}:{n}"))
            except ValueError as exc:
                raise DataError(str(exc)) from None
        return out
    reader = csv.DictReader(fh)
    if not reader.fieldnames or "label" not in reader.fieldnames:
        raise DataError(f"{path}: the first line must name the columns, with label and request_id or time "
                        f"(found: {', '.join(reader.fieldnames or []) or 'nothing'})")
    for record in reader:
        if None in record:  # cells beyond the header's columns: a shifted row, whose label may be the wrong cell
            raise DataError(f"{path}:{reader.line_num}: {len(record[None])} cell(s) more than the header's "
                            f"{len(reader.fieldnames)} columns ({', '.join(reader.fieldnames)})")
        n = reader.line_num  # the line the row ends on (a quoted cell may span lines)
        try:
            out.append(entry(_typed(record, f"{path}:{n}"), model=model, source=source, where=f"{path}:{n}"))
        except ValueError as exc:
            raise DataError(str(exc)) from None
    return out


def _typed(record: dict[str, Any], where: str) -> dict[str, Any]:
    """A CSV row with numbers where JSON would have them; empty cells left out."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if value is None or value == "":  # (cells beyond the header were refused before)
            continue
        if key == "label":
            text = value.strip().lower()
            out[key] = {"true": 1, "false": 0}.get(text)
            if out[key] is None:
                if not _NUMBER.fullmatch(text):  # int() and float() also read "1_0" as 10 and "١" as 1
                    raise ValueError(f"{where}: label {value!r:.40} is not a number (digits 0-9, an optional "
                                     "sign, point and exponent; or true/false)")
                out[key] = int(text) if text.lstrip("+-").isdigit() else float(text)
        elif key == "row":
            text = value.strip()
            if not (text.isascii() and text.isdecimal()):
                raise ValueError(f"{where}: row {value!r:.40} is not a whole number >= 0")
            out[key] = int(text)
        else:
            out[key] = value
    return out
