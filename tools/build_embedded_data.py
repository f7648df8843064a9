"""Build opsloop's embedded ASD dataset from the shared numpy pickles.

Run from the repository root::

    python tools/build_embedded_data.py [DATA_DIR]

DATA_DIR is the shared data folder holding ``asd/`` (default: ``../shared/data``
relative to the repository root). The script:

1. checks every file it reads against ``asd/SHA256SUMS`` before using it;
2. unpickles the arrays with `RestrictedUnpickler`, which resolves only the
   three numpy globals these files reference (never ``pickle.load`` or
   ``pd.read_pickle``, which would run whatever a pickle asks for);
3. keeps the labelled test period of the 12 servers (omi-1 .. omi-12) and
   writes one long table to ``core/datasets/asd.parquet`` (zstd), with the
   authors' MIT license copied to ``core/datasets/LICENSE-ASD``;
4. reads the file back, compares it with the arrays element for element and
   prints rows, positives per entity and the file size.

The data has no real timestamps (the authors removed them), so the
``timestamp`` column is synthetic: 5-minute steps from 2024-01-01 00:00, the
same clock for every entity.

`RestrictedUnpickler` and `load_array` are imported by
``tests/core/test_datasets.py`` to compare the shipped file with the pickles.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
OUT_DIR = REPO_ROOT / "core" / "datasets"
PARQUET = OUT_DIR / "asd.parquet"
LICENSE_OUT = OUT_DIR / "LICENSE-ASD"

SOURCE_REPO = "https://github.com/zhhlee/InterFusion"
SOURCE_COMMIT = "8c85d511c1f070669ba8c5cf097b8fa4a202d15b"

ENTITIES = [f"omi-{i}" for i in range(1, 13)]
ROWS_PER_ENTITY = 4320  # 15 days of 5-minute steps
METRICS = [f"m{j:02d}" for j in range(1, 20)]
COLUMNS = ["entity", "timestamp", *METRICS, "label"]
START = pd.Timestamp("2024-01-01 00:00")
STEP = pd.Timedelta(minutes=5)
# Test-period positives per entity, from /work/shared/data/README.md.
EXPECTED_POSITIVES = dict(
    zip(ENTITIES, [441, 55, 146, 151, 74, 198, 87, 188, 297, 373, 250, 132], strict=True)
)
EXPECTED_TOTAL_POSITIVES = 2392
ZSTD_LEVEL = 19  # about 13% smaller than the default (1); built once, reads as fast

NOTICE = (
    "ASD (Application Server Dataset), labelled test period of servers omi-1..omi-12, "
    f"from {SOURCE_REPO} at {SOURCE_COMMIT} (data/processed/*_test.pkl, *_test_label.pkl). "
    "MIT License, Copyright (c) 2021 zhhlee: see LICENSE-ASD. "
    "Timestamps are SYNTHETIC (the authors removed the real ones): 5-minute steps from "
    "2024-01-01 00:00, the same clock for every entity. Metric values were scaled to [0, 1] "
    "by the authors; metric names are unknown (m01..m19 keep the original column order)."
)


class DataError(Exception):
    """An input file is missing, altered or not what the README describes."""


# --- restricted unpickling ----------------------------------------------------


def _reconstruct() -> Any:
    # numpy 2 moved numpy.core to numpy._core; importing numpy.core there warns.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a plain numpy array needs.

    Every global a pickle references goes through `find_class`; anything but
    ``numpy.core.multiarray._reconstruct`` (or its numpy 2 spelling
    ``numpy._core.multiarray._reconstruct``), ``numpy.ndarray`` and
    ``numpy.dtype`` raises `pickle.UnpicklingError` naming it.
    """

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)
            raise pickle.UnpicklingError(
                f"forbidden global {module}.{name} in pickle (allowed: {allowed})"
            )
        return resolve()


def restricted_loads(data: bytes) -> Any:
    """Unpickle bytes with `RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


# --- checksums ----------------------------------------------------------------


def read_sha256sums(asd_dir: Path) -> dict[str, str]:
    """Map relative path -> expected sha256 hex digest from ``asd/SHA256SUMS``."""
    sums_file = asd_dir / "SHA256SUMS"
    if not sums_file.is_file():
        raise DataError(f"{sums_file}: not found (is the data folder right?)")
    sums: dict[str, str] = {}
    for line in sums_file.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        # sha256sum writes "<digest>  <name>" (text) or "<digest> *<name>" (binary).
        sums[name.lstrip(" *")] = digest.lower()
    return sums


def read_verified(asd_dir: Path, relpath: str, sums: dict[str, str]) -> bytes:
    """Read a file once and return its bytes if they match ``SHA256SUMS``."""
    path = asd_dir / relpath
    if relpath not in sums:
        raise DataError(f"{path}: not listed in {asd_dir / 'SHA256SUMS'}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sums[relpath]:
        raise DataError(
            f"{path}: sha256 mismatch (expected {sums[relpath]}, got {actual}); "
            "the file differs from the published one, refusing to read it"
        )
    return data


def load_array(asd_dir: Path, relpath: str, sums: dict[str, str]) -> np.ndarray:
    """Verify one ``.pkl`` against ``SHA256SUMS`` and unpickle it, restricted.

    Args:
        asd_dir: The ``asd/`` folder of the shared data.
        relpath: Path inside ``asd_dir``, as listed in ``SHA256SUMS``.
        sums: The parsed ``SHA256SUMS`` (see `read_sha256sums`).

    Returns:
        The numeric array the pickle holds.

    Raises:
        DataError: The file is missing, unlisted, altered or not a numeric array.
        pickle.UnpicklingError: The pickle references a forbidden global.
    """
    arr = restricted_loads(read_verified(asd_dir, relpath, sums))
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise DataError(f"{asd_dir / relpath}: expected a numeric numpy array, got {type(arr)}")
    return arr


def load_entity(asd_dir: Path, entity: str, sums: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Load and check one entity's test values (4320 x 19 float32) and labels (4320, 0/1)."""
    values = load_array(asd_dir, f"processed/{entity}_test.pkl", sums)
    labels = load_array(asd_dir, f"processed/{entity}_test_label.pkl", sums)
    where = asd_dir / "processed" / entity
    if values.shape != (ROWS_PER_ENTITY, len(METRICS)) or values.dtype != np.float32:
        raise DataError(
            f"{where}_test.pkl: {values.shape} {values.dtype}, expected (4320, 19) float32"
        )
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise DataError(f"{where}_test.pkl: values outside [0, 1] or not finite")
    if labels.shape != (ROWS_PER_ENTITY,) or not np.isin(labels, (0, 1)).all():
        raise DataError(f"{where}_test_label.pkl: shape {labels.shape}, expected (4320,) of 0/1")
    return values, labels


def smd_frame(smd_dir: Path, machine: str = "machine-1-6") -> pd.DataFrame:
    """One SMD machine's labelled half (its `_test` arrays), checked against SHA256SUMS and read with the
    restricted unpickler: entity, timestamp (synthetic, one row a minute from 2024-01-01), m01..m38, label.
    What the tests (tests/conftest.py) and the benchmarks read."""
    sums = read_sha256sums(smd_dir)
    values = load_array(smd_dir, f"processed/{machine}_test.pkl", sums)
    labels = load_array(smd_dir, f"processed/{machine}_test_label.pkl", sums)
    frame = pd.DataFrame(values.astype("float32"), columns=[f"m{j:02d}" for j in range(1, values.shape[1] + 1)])
    frame.insert(0, "timestamp", pd.date_range("2024-01-01", periods=len(frame), freq="min"))
    frame.insert(0, "entity", machine)
    frame["label"] = labels.astype("int8")
    return frame


# --- build, write, check ------------------------------------------------------


def build_frame(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One long frame: entity, timestamp, m01..m19, label; entities in numeric order."""
    clock = pd.date_range(START, periods=ROWS_PER_ENTITY, freq=STEP, unit="ns")
    frame = pd.DataFrame(
        np.concatenate([arrays[e][0] for e in ENTITIES]), columns=METRICS, copy=False
    )
    frame.insert(0, "entity", np.repeat(ENTITIES, ROWS_PER_ENTITY))
    frame.insert(1, "timestamp", np.tile(clock.to_numpy(), len(ENTITIES)))
    frame["label"] = np.concatenate([arrays[e][1] for e in ENTITIES]).astype(np.int8)
    return frame


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write with pyarrow (zstd, no index), atomically, with a provenance note.

    The pandas schema metadata is dropped on purpose: there is no index to
    restore, and without it pandas 2 (object) and pandas 3 (str) each read
    ``entity`` as their own default string type; the other dtypes come from
    the Arrow types alone. It also keeps the pandas version out of the file.
    """
    schema = pa.schema(
        [("entity", pa.string()), ("timestamp", pa.timestamp("ns"))]
        + [(m, pa.float32()) for m in METRICS]
        + [("label", pa.int8())]
    )
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    source = {
        "repository": SOURCE_REPO, "commit": SOURCE_COMMIT, "license": "MIT",
        "copyright": "Copyright (c) 2021 zhhlee", "timestamps": "synthetic",
    }
    table = table.replace_schema_metadata(
        {"opsloop.notice": NOTICE, "opsloop.source": json.dumps(source)}
    )
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd", compression_level=ZSTD_LEVEL)
    os.replace(tmp, path)


def check_written(path: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """Read the file back and compare it with the source arrays element for element."""
    frame = pd.read_parquet(path)
    if list(frame.columns) != COLUMNS or len(frame) != ROWS_PER_ENTITY * len(ENTITIES):
        raise DataError(f"{path}: read back {len(frame)} rows of columns {list(frame.columns)}")
    problems: list[str] = []
    dtypes = {"timestamp": "datetime64[ns]", "label": "int8", **dict.fromkeys(METRICS, "float32")}
    problems += [f"{c} is {frame[c].dtype}" for c, d in dtypes.items() if str(frame[c].dtype) != d]
    if not pd.api.types.is_string_dtype(frame["entity"]):
        problems.append(f"entity is {frame['entity'].dtype}")
    clock = pd.date_range(START, periods=ROWS_PER_ENTITY, freq=STEP, unit="ns").to_numpy()
    for i, entity in enumerate(ENTITIES):
        part = frame.iloc[i * ROWS_PER_ENTITY : (i + 1) * ROWS_PER_ENTITY]
        values, labels = arrays[entity]
        if not (part["entity"] == entity).all():
            problems.append(f"{entity}: rows out of place")
        if not np.array_equal(part["timestamp"].to_numpy(), clock):
            problems.append(f"{entity}: timestamps differ")
        if not np.array_equal(part[METRICS].to_numpy(), values):
            problems.append(f"{entity}: metric values differ")
        if not np.array_equal(part["label"].to_numpy(), labels):
            problems.append(f"{entity}: labels differ")
    if problems:
        raise DataError(f"{path}: read-back check failed: " + "; ".join(problems))
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "data_dir", nargs="?", type=Path, default=DEFAULT_DATA_DIR,
        help="shared data folder holding asd/ (default: ../shared/data from the repo root)",
    )
    args = parser.parse_args(argv)
    asd_dir = args.data_dir / "asd"
    try:
        sums = read_sha256sums(asd_dir)
        arrays = {e: load_entity(asd_dir, e, sums) for e in ENTITIES}
        license_text = read_verified(asd_dir, "LICENSE", sums)

        OUT_DIR.mkdir(parents=True, exist_ok=True)
        write_parquet(build_frame(arrays), PARQUET)
        LICENSE_OUT.write_bytes(license_text)

        frame = check_written(PARQUET, arrays)
        if LICENSE_OUT.read_bytes() != license_text:
            raise DataError(f"{LICENSE_OUT}: differs from {asd_dir / 'LICENSE'}")
        positives = frame.groupby("entity", sort=False)["label"].sum()
        wrong = {e: int(positives[e]) for e in ENTITIES if positives[e] != EXPECTED_POSITIVES[e]}
        if wrong or int(positives.sum()) != EXPECTED_TOTAL_POSITIVES:
            raise DataError(f"{PARQUET}: positives {wrong} differ from the README table")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    print(f"inputs verified against {asd_dir / 'SHA256SUMS'} ({2 * len(ENTITIES) + 1} files)")
    print(f"wrote {PARQUET.relative_to(REPO_ROOT)} and {LICENSE_OUT.relative_to(REPO_ROOT)}")
    print(f"read back: equal to the pickles element for element; {len(frame):,} rows")
    print(f"columns: {', '.join(frame.columns)}")
    print("positives per entity (all match the README table):")
    for entity in ENTITIES:
        print(f"  {entity:<7}{int(positives[entity]):>5} of {ROWS_PER_ENTITY}")
    print(f"  {'total':<7}{int(positives.sum()):>5,} of {len(frame):,}")
    print(f"size: {PARQUET.stat().st_size:,} bytes")
    print(f"notice: {NOTICE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
