"""Request and response bodies: the Open Inference Protocol (KServe v2) and plain JSON records.

Open Inference Protocol `infer`: one input tensor per input column, named
after it, shape `[n]` or `[n, 1]`, the datatype the model metadata gives
(numbers of another width are accepted), data as a flat or nested JSON array
or, with the binary tensor data extension (what `tritonclient` sends by
default), as raw little-endian bytes after the JSON header
(`Inference-Header-Content-Length`). Outputs: `prediction` and, for
classifiers and anomaly detectors, `score`; returned in binary when the
request asks (`binary_data_output`, or `binary_data` per output).

Plain JSON: `{"instances": [{feature: value, ...}, ...]}` answered with
`{"predictions": [{"prediction": ..., "score": ...}, ...]}`.
"""

from __future__ import annotations

import json
import math
import struct
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np  # once, here: the server scores with it anyway, and requests must not pay an import
from opsloop.serving.schema import ACCEPTS, InputSchema, RequestError, json_type

if TYPE_CHECKING:
    from opsloop.serving.schema import Batch

#: numpy dtypes of fixed-size protocol datatypes (little-endian).
NUMPY = {"BOOL": "|b1", "UINT8": "|u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "|i1",
         "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
_DTYPES = {name: np.dtype(code) for name, code in NUMPY.items()}
REQUEST_ID_MAX = 200


def loads(body: bytes, what: str = "request body") -> Any:
    """JSON from bytes; a 400 naming the problem otherwise."""
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"malformed JSON in the {what}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise RequestError(400, f"malformed JSON in the {what}: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to read
        raise RequestError(400, f"malformed JSON in the {what}: {exc}") from None


#: `json.dumps(obj, separators=(",", ":"))` builds an encoder per call; this one is built once.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def dumps(obj: Any) -> bytes:
    return _ENCODE(obj).encode()


def request_id(value: Any, where: str) -> str | None:
    """A client's request id: a short string, or None when not given."""
    if value is None or value == "":
        return None
    if type(value) is not str or len(value) > REQUEST_ID_MAX or not value.isprintable():
        raise RequestError(400, f"{where} must be a printable string of at most {REQUEST_ID_MAX} characters")
    return value


# ---------------------------------------------------------------------------
# Plain JSON records
# ---------------------------------------------------------------------------


def parse_instances(body: bytes, schema: InputSchema) -> tuple[Batch, str | None]:
    """`{"instances": [...], "id": optional}` -> checked rows and the client's id."""
    obj = loads(body)
    if type(obj) is not dict:
        raise RequestError(400, f'expected a JSON object {{"instances": [...]}}, got a {json_type(obj)}')
    if "instances" not in obj:
        raise RequestError(400, f'the body has no "instances" (keys: {", ".join(map(repr, list(obj)[:10]))})')
    if len(obj) > 1 and not obj.keys() <= {"instances", "id"}:
        extra = sorted(k for k in obj if k not in ("instances", "id"))
        raise RequestError(400, f'unknown key(s) {", ".join(map(repr, extra[:10]))}: the body takes "instances" '
                                'and an optional "id"')
    batch = schema.from_instances(obj["instances"])
    if not _keys_once(body, obj, batch):
        batch.records = None  # the log rebuilds the rows from what was scored, not from the body's text
    return batch, request_id(obj.get("id"), '"id"')


def _keys_once(body: bytes, obj: dict[str, Any], batch: Batch) -> bool:
    """Whether no object in the body repeats a key, so that every JSON reader (SQLite's too) reads its rows as we did.

    Python keeps the last of repeated keys, SQLite the first (`{"entity": "A", "entity": "B"}` is scored as B):
    the prediction log must not read the body again then (issue 8). A cheap count first, for every request:
    each key and each string is two quotes in the text, so a body with exactly as many quotes as the objects
    read hold keys and strings has no key twice. More quotes (a repeated key, or an escaped quote in a string)
    is settled by reading it again, keeping every key.
    """
    keys = len(obj) + batch.rows * (batch.numeric.shape[1] + len(batch.other))  # every row has every column
    strings = sum(len(values) - values.count(None) for values in batch.other.values()) + (type(obj.get("id")) is str)
    if body.count(b'"') == 2 * (keys + strings):
        return True
    repeated = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeated
        out = dict(items)
        repeated = repeated or len(out) != len(items)
        return out

    json.loads(body, object_pairs_hook=pairs)
    return not repeated


def instances_response(predictions: list[Any], scores: list[float] | None, *, model: str, version: str,
                       request: str) -> bytes:
    if scores is None:
        rows = [{"prediction": p} for p in predictions]
    elif len(predictions) == 1 == len(scores) and type(predictions[0]) is int and type(scores[0]) is float \
            and math.isfinite(scores[0]):
        # one row, the streaming client's request: the bytes `dumps` gives, written out (floats as repr, as json)
        return (b'{"predictions":[{"prediction":%d,"score":%s}],"model_name":%s,"model_version":%s,"request_id":%s}'
                % (predictions[0], repr(scores[0]).encode(), _ENCODE(model).encode(), _ENCODE(version).encode(),
                   _ENCODE(request).encode()))
    else:
        rows = [{"prediction": p, "score": s} for p, s in zip(predictions, scores, strict=True)]
    return dumps({"predictions": rows, "model_name": model, "model_version": version, "request_id": request})


# ---------------------------------------------------------------------------
# Open Inference Protocol
# ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class InferRequest:
    """A checked `infer` request: rows, the client's id, and how to answer."""

    batch: Batch
    id: str | None
    outputs: tuple[str, ...] | None
    binary: dict[str, bool]


def _header_length(value: bytes | None, size: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise RequestError(400, f"Inference-Header-Content-Length is not a number: {value[:20]!r}") from None
    if not 0 < length <= size:
        raise RequestError(400, f"Inference-Header-Content-Length is {length}, the body has {size} bytes")
    return length


# The helpers of `parse_infer` take the input's name and say `input 'NAME'` only in
# their errors: the happy path formats no message.


def _where(name: str) -> str:
    return f"input {name!r}"


def _shape_rows(spec: dict[str, Any], name: str) -> tuple[int, int]:
    shape = spec.get("shape")
    if type(shape) is list and len(shape) == 1 and type(shape[0]) is int and shape[0] >= 0:  # the usual [n]
        return shape[0], 1
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise RequestError(400, f"{_where(name)}: \"shape\" must be an array of non-negative integers, "
                                f"got {shape!r:.60}")
    if len(shape) == 1 or len(shape) == 2 and shape[1] == 1:
        return shape[0], len(shape)
    raise RequestError(422, f"{_where(name)}: shape {shape} is not one value per row: send [n] or [n, 1]")


def _flat(data: Any, rows: int, rank: int, name: str) -> list[Any]:
    if type(data) is not list:
        raise RequestError(400, f'{_where(name)}: "data" must be an array, got a {json_type(data)}')
    if rank == 2 and data and type(data[0]) is list:  # nested, row major: [[v], [v], ...]
        if not all(type(d) is list and len(d) == 1 for d in data):
            raise RequestError(422, f"{_where(name)}: nested data must hold one value per row")
        data = [d[0] for d in data]
    if len(data) != rows:
        raise RequestError(400, f"{_where(name)}: shape says {rows} values, data has {len(data)}")
    return data


def _bytes_elements(raw: bytes, rows: int, name: str) -> list[str]:
    """BYTES tensor data: each element a 4-byte little-endian length, then UTF-8 bytes."""
    out, pos, size = [], 0, len(raw)
    while pos < size:
        if pos + 4 > size:
            raise RequestError(400, f"{_where(name)}: BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > size:
            raise RequestError(400, f"{_where(name)}: BYTES element {len(out)} runs past the data")
        try:
            out.append(raw[pos:pos + length].decode())
        except UnicodeDecodeError:
            raise RequestError(422, f"{_where(name)}: BYTES element {len(out)} is not UTF-8 text") from None
        pos += length
    if len(out) != rows:
        raise RequestError(400, f"{_where(name)}: shape says {rows} values, the BYTES data holds {len(out)}")
    return out


def _binary_values(raw: bytes, datatype: str, rows: int, name: str) -> np.ndarray | list[str]:
    if datatype == "BYTES":
        return _bytes_elements(raw, rows, name)
    dtype = _DTYPES[datatype]
    if len(raw) != rows * dtype.itemsize:
        raise RequestError(400, f"{_where(name)}: shape says {rows} {datatype} values "
                                f"({rows * dtype.itemsize} bytes), binary_data_size is {len(raw)}")
    if datatype == "BOOL":
        flags = np.frombuffer(raw, dtype=np.uint8)
        if (flags > 1).any():
            raise RequestError(422, f"{_where(name)}: BOOL bytes must be 0 or 1")
        return flags.astype(bool)
    return np.frombuffer(raw, dtype=dtype)


def _wants_binary(obj: dict[str, Any], outputs: Any) -> tuple[tuple[str, ...] | None, dict[str, bool]]:
    params = obj.get("parameters")
    if params is not None and type(params) is not dict:
        raise RequestError(400, '"parameters" must be an object')
    default = bool((params or {}).get("binary_data_output", False))
    if outputs is None:
        return None, {"prediction": default, "score": default}
    if type(outputs) is not list or not all(type(o) is dict and type(o.get("name")) is str for o in outputs):
        raise RequestError(400, '"outputs" must be an array of objects with a "name"')
    binary = {}
    for o in outputs:
        p = o.get("parameters") or {}
        if type(p) is not dict:
            raise RequestError(400, f'output {o["name"]!r}: "parameters" must be an object')
        binary[o["name"]] = bool(p.get("binary_data", default))
    return tuple(o["name"] for o in outputs), binary


def parse_infer(body: bytes, header_length: bytes | None, schema: InputSchema) -> InferRequest:
    """An `infer` request body (JSON, or JSON plus binary tensors) -> checked rows."""
    length = _header_length(header_length, len(body))
    obj = loads(body[:length] if length else body, "inference request")
    if type(obj) is not dict:
        raise RequestError(400, f"the inference request must be a JSON object, got a {json_type(obj)}")
    inputs = obj.get("inputs")
    if type(inputs) is not list or not inputs:
        raise RequestError(400, '"inputs" must be a non-empty array of tensors (one per feature)')
    outputs, binary = _wants_binary(obj, obj.get("outputs"))
    offset = length or len(body)
    columns: dict[str, Any] = {}
    for k, spec in enumerate(inputs):
        if type(spec) is not dict or type(spec.get("name")) is not str:
            raise RequestError(400, f"input {k} must be an object with a \"name\"")
        name = spec["name"]
        if name in columns:
            raise RequestError(400, f"{_where(name)} is given twice")
        column = schema.by_name.get(name)
        if column is None:
            columns[name] = None  # reported with every other unknown or missing name below
            continue
        datatype = spec.get("datatype")
        if type(datatype) is not str or datatype not in ACCEPTS[column.kind]:
            if type(datatype) is not str or datatype not in NUMPY and datatype != "BYTES":  # ([] would be a 500)
                raise RequestError(400, f"{_where(name)}: unknown datatype {datatype!r:.40}")
            raise RequestError(422, f"{_where(name)}: datatype {datatype}, the feature is {column.dtype} "
                                    f"(send {column.datatype})")
        rows, rank = _shape_rows(spec, name)
        params = spec.get("parameters")
        size = params.get("binary_data_size") if type(params) is dict else None
        if size is None:
            columns[name] = _flat(spec.get("data"), rows, rank, name)
            continue
        if type(size) is not int or size < 0 or offset + size > len(body):
            raise RequestError(400, f"{_where(name)}: binary_data_size {size!r:.20} does not fit the body "
                                    f"({len(body) - offset} bytes left)")
        columns[name] = _binary_values(body[offset:offset + size], datatype, rows, name)
        offset += size
    if offset != len(body):
        raise RequestError(400, f"{len(body) - offset} bytes after the JSON header belong to no input "
                                "(check binary_data_size)")
    return InferRequest(batch=schema.from_columns(columns), id=request_id(obj.get("id"), '"id"'), outputs=outputs,
                        binary=binary)


def infer_response(outputs: dict[str, tuple[str, Any]], request: InferRequest, *, model: str, version: str,
                   request_id: str) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary tensors, its JSON header's length.

    Args:
        outputs: name -> (datatype, numpy array), in the model metadata's order.
    """
    names = request.outputs or tuple(outputs)
    unknown = [n for n in names if n not in outputs]
    if unknown:
        raise RequestError(400, f"unknown output(s) {', '.join(map(repr, unknown))}; this model gives "
                                f"{', '.join(outputs)}")
    tensors, blobs = [], []
    for name in names:
        datatype, values = outputs[name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [len(values)]}
        if request.binary.get(name):
            blob = np.ascontiguousarray(values, dtype=NUMPY[datatype]).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = values.tolist()
        tensors.append(tensor)
    header = dumps({"model_name": model, "model_version": version, "id": request.id or request_id,
                    "outputs": tensors})
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
