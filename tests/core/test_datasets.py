"""The embedded ASD dataset, tested against the Parquet file that ships in opsloop.

Facts (rows, positives per entity) come from the shared data README. When the
shared data folder is present, the file is also compared with the original
pickles, read through the build script's restricted unpickler.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from opsloop import datasets

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tools" / "build_embedded_data.py"

ENTITIES = [f"omi-{i}" for i in range(1, 13)]
METRICS = [f"m{j:02d}" for j in range(1, 20)]
COLUMNS = ["entity", "timestamp", *METRICS, "label"]
ROWS_PER_ENTITY = 4320
POSITIVES = dict(
    zip(ENTITIES, [441, 55, 146, 151, 74, 198, 87, 188, 297, 373, 250, 132], strict=True)
)


def _shared_data_dir() -> Path | None:
    for candidate in (Path("/work/shared/data"), REPO_ROOT.parent / "shared" / "data"):
        if (candidate / "asd" / "SHA256SUMS").is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def asd() -> pd.DataFrame:
    """The shipped frame, read once; tests must not modify it."""
    return datasets.load("asd")


@pytest.fixture(scope="module")
def build() -> ModuleType:
    """tools/build_embedded_data.py, imported from its file (tools/ is no package)."""
    spec = importlib.util.spec_from_file_location("build_embedded_data", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_asd_is_shipped_with_its_license() -> None:
    assert datasets.EMBEDDED == {"asd": "asd.parquet"}
    parquet = datasets.path("asd")
    assert isinstance(parquet, Path) and parquet.is_file() and parquet.name == "asd.parquet"
    license_text = (parquet.parent / "LICENSE-ASD").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License")
    assert "Copyright (c) 2021 zhhlee" in license_text


@pytest.mark.parametrize("function", [datasets.path, datasets.load])
def test_unknown_name_lists_the_available_ones(function) -> None:
    with pytest.raises(KeyError, match=r"'smd'.*available: asd"):
        function("smd")


def test_importing_datasets_does_not_import_pandas() -> None:
    code = "import sys, opsloop.datasets; sys.exit('pandas' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_rows_and_columns(asd: pd.DataFrame) -> None:
    assert len(asd) == 51_840
    assert list(asd.columns) == COLUMNS
    assert isinstance(asd.index, pd.RangeIndex)


def test_dtypes(asd: pd.DataFrame) -> None:
    assert pd.api.types.is_string_dtype(asd["entity"])
    assert asd["timestamp"].dtype == np.dtype("datetime64[ns]")
    assert (asd[METRICS].dtypes == np.float32).all()
    assert asd["label"].dtype == np.int8


def test_entities_in_numeric_order_with_4320_rows_each(asd: pd.DataFrame) -> None:
    # omi-10 comes after omi-9, not after omi-1.
    assert list(asd["entity"].unique()) == ENTITIES
    expected = np.repeat(ENTITIES, ROWS_PER_ENTITY)
    assert (asd["entity"].to_numpy() == expected).all()
    assert asd.groupby("entity", sort=False).size().to_dict() == dict.fromkeys(
        ENTITIES, ROWS_PER_ENTITY
    )


def test_positives_per_entity_match_the_source(asd: pd.DataFrame) -> None:
    positives = asd.groupby("entity", sort=False)["label"].sum()
    assert {e: int(n) for e, n in positives.items()} == POSITIVES
    assert int(asd["label"].sum()) == 2_392
    assert set(asd["label"].unique()) == {0, 1}


def test_timestamps_are_one_five_minute_clock_per_entity(asd: pd.DataFrame) -> None:
    clock = pd.date_range("2024-01-01 00:00", periods=ROWS_PER_ENTITY, freq="5min", unit="ns")
    for entity, part in asd.groupby("entity", sort=False):
        steps = part["timestamp"].diff().iloc[1:]
        assert (steps == pd.Timedelta(minutes=5)).all(), entity
        assert part["timestamp"].is_monotonic_increasing and part["timestamp"].is_unique
        assert (part["timestamp"].to_numpy() == clock.to_numpy()).all(), entity


def test_metric_values_are_within_unit_interval(asd: pd.DataFrame) -> None:
    values = asd[METRICS].to_numpy()
    assert np.isfinite(values).all()
    assert values.min() >= 0.0 and values.max() <= 1.0


def test_parquet_equals_the_source_pickles(asd: pd.DataFrame, build: ModuleType) -> None:
    data_dir = _shared_data_dir()
    if data_dir is None:
        pytest.skip("shared data folder (/work/shared/data or ../shared/data) is absent")
    asd_dir = data_dir / "asd"
    sums = build.read_sha256sums(asd_dir)
    for i, entity in enumerate(ENTITIES):
        # load_array checks SHA256SUMS, then unpickles with RestrictedUnpickler.
        values = build.load_array(asd_dir, f"processed/{entity}_test.pkl", sums)
        labels = build.load_array(asd_dir, f"processed/{entity}_test_label.pkl", sums)
        part = asd.iloc[i * ROWS_PER_ENTITY : (i + 1) * ROWS_PER_ENTITY]
        assert (part["entity"] == entity).all()
        assert values.dtype == np.float32
        np.testing.assert_array_equal(part[METRICS].to_numpy(), values, strict=True)
        np.testing.assert_array_equal(part["label"].to_numpy(), labels.astype(np.int8))
        assert np.array_equal(part["label"].to_numpy(), labels)  # float 0/1 vs int8


class _RunsACommand:
    def __reduce__(self):
        return (os.system, ("true",))


def test_restricted_unpickler_refuses_os_system(build: ModuleType) -> None:
    payload = pickle.dumps(_RunsACommand())  # never loaded with the normal pickle
    assert b"system" in payload
    # os.system pickles as posix.system (nt.system on Windows).
    with pytest.raises(pickle.UnpicklingError, match=r"forbidden global (os|posix|nt)\.system"):
        build.RestrictedUnpickler(io.BytesIO(payload)).load()


def test_restricted_unpickler_loads_a_plain_array(build: ModuleType) -> None:
    # Under numpy 2 this pickle names numpy._core.multiarray._reconstruct; the
    # shipped pickles name numpy.core.multiarray._reconstruct.
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    loaded = build.RestrictedUnpickler(io.BytesIO(pickle.dumps(array, protocol=3))).load()
    np.testing.assert_array_equal(loaded, array, strict=True)
