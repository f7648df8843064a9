"""The built-in preprocess steps' `fit_partitions`: their states fitted over partitions (docs/scale.md).

Each gives the state its step's `preprocess(state=None)` gives on the same rows as one frame, from the
statistics of `opsloop.partitions` (per-partition results combined on the client):

- `schema-check`: dtypes from the meta; missing rates, minimums, maximums and categories combined (exact);
- `impute`: medians exactly (order statistics), means merged (float64's last bits), most frequent values
  from summed value counts (ties: the smallest, as pandas' `mode`);
- `scale`: minmax and robust exactly, standard to float64's last bits;
- `clip`: exact quantiles;
- `rolling-features`, `label-horizon`: nothing to count, their states come from the columns and options.
"""

from __future__ import annotations

import math
from typing import Any

from opsloop import partitions as P


def schema_check(data: P.PartitionedDataset, options: Any) -> tuple[dict[str, Any], list[str]]:
    from opsloop.plugins.schema_check import Options, _number, kind_of

    options = options if options is not None else Options()
    columns = data.feature_columns
    facts = P.column_facts(data, columns)
    n = facts["rows"]
    learned: dict[str, Any] = {}
    issues: list[str] = []
    for c in columns:
        kind = kind_of(data.meta[c].dtype)
        fact = facts["columns"][c]
        info: dict[str, Any] = {"dtype": str(data.meta[c].dtype), "kind": kind,
                                "missing_rate": float(fact["missing"]) / n if n else 0.0}
        distinct = None
        if kind == "numeric":
            info["min"], info["max"] = _number(fact.get("min")), _number(fact.get("max"))
            if info["min"] is not None and info["min"] == info["max"]:
                distinct = 1
        elif kind in ("text", "bool"):
            values = fact.get("values", [])
            distinct = len(values)
            cats = sorted({str(v) for v in values})
            info["categories"] = cats if len(cats) <= options.max_categories else None
            info["n_categories"] = len(cats)
        learned[c] = info
        if n and fact["missing"] == n:
            issues.append(f'column "{c}" is entirely missing in the training rows')
        elif distinct == 1:
            issues.append(f'column "{c}" is constant in the training rows: it carries no information')
    state = {"columns": learned, "target": data.target, "time": data.time, "series": data.series, "rows": n}
    return state, issues


def impute(data: P.PartitionedDataset, options: Any) -> tuple[dict[str, Any], list[str]]:
    import numpy as np
    from pandas.api import types as pt

    from opsloop.plugins.impute import Options, _encode, _is_number

    options = options if options is not None else Options()
    features = data.feature_columns
    dtypes = data.meta.dtypes
    numeric = [c for c in features if _is_number(dtypes[c])]
    other = [c for c in features if c not in numeric]
    facts = P.column_facts(data, other) if other and options.add_indicator else {"columns": {}}
    stats = P.moments(data, numeric)
    medians = (P.median(data, numeric, {c: stats[c]["count"] for c in numeric})
               if options.strategy == "median" and numeric else {})
    counts = P.value_counts(data, other)
    fill: dict[str, Any] = {}
    tags: dict[str, str] = {}
    issues: list[str] = []
    for c in features:
        if c in numeric:
            if options.strategy == "constant":
                value: Any = float(options.fill_value)
            elif stats[c]["count"]:
                value = float(medians[c] if options.strategy == "median" else stats[c]["mean"])
            else:
                value = None
            if value is not None and pt.is_integer_dtype(dtypes[c]):
                value = round(value)
            elif value is not None and dtypes[c] == np.float32:
                value = float(np.float32(value))
        else:
            top = P.mode(counts.get(c))
            value = None
            if top is not None:
                value, tag = _encode(top)
                if tag:
                    tags[c] = tag
        if value is None:
            issues.append(f'column "{c}" is entirely missing in the training rows: left unfilled')
        fill[c] = value
    gaps = {c: stats[c]["missing"] > 0 for c in numeric}
    gaps.update({c: facts["columns"][c]["missing"] > 0 for c in facts["columns"]})
    indicators = [c for c in features if gaps.get(c)] if options.add_indicator else []
    return {"strategy": options.strategy, "fill": fill, "tags": tags, "indicators": indicators}, issues


def scale(data: P.PartitionedDataset, options: Any) -> tuple[dict[str, Any], list[str]]:
    from opsloop.plugins.scale import Options, _clean, numeric_features

    options = options if options is not None else Options()
    columns = numeric_features(data.empty)
    method = options.method
    stats = P.moments(data, columns)
    if method == "standard":
        center = {c: stats[c]["mean"] for c in columns}
        spread = {c: math.sqrt(stats[c]["var"]) if stats[c]["count"] else math.nan for c in columns}
    elif method == "minmax":
        center = {c: stats[c]["min"] for c in columns}
        spread = {c: stats[c]["max"] - stats[c]["min"] for c in columns}
    else:
        q = P.quantiles(data, columns, [0.25, 0.5, 0.75], {c: stats[c]["count"] for c in columns})
        center = {c: q[c][0.5] for c in columns}
        spread = {c: q[c][0.75] - q[c][0.25] for c in columns}
    return {"method": method, "center": {c: _clean(center[c], 0.0) for c in columns},
            "scale": {c: _clean(spread[c], 1.0, zero_ok=False) for c in columns}}, []


def clip(data: P.PartitionedDataset, options: Any) -> tuple[dict[str, Any], list[str]]:
    from pandas.api import types as pt

    from opsloop.plugins.clip import Options, _bound
    from opsloop.plugins.scale import numeric_features

    options = options if options is not None else Options()
    columns = numeric_features(data.empty)
    if not columns:
        return {"lower": {}, "upper": {}}, []
    stats = P.moments(data, columns)
    low, high = options.lower_quantile, options.upper_quantile
    q = P.quantiles(data, columns, [low, high], {c: stats[c]["count"] for c in columns})
    ints = {c: pt.is_integer_dtype(data.meta[c].dtype) for c in columns}
    return {"lower": {c: _bound(q[c][low], ints[c], math.floor) for c in columns},
            "upper": {c: _bound(q[c][high], ints[c], math.ceil) for c in columns}}, []


def rolling_features(data: P.PartitionedDataset, options: Any) -> tuple[dict[str, Any], list[str]]:
    from opsloop.plugins.rolling_features import Options, fit

    return fit(data.empty, options if options is not None else Options()), []


def label_horizon(data: P.PartitionedDataset, options: Any) -> tuple[dict[str, Any], list[str]]:
    from opsloop.errors import DataError
    from opsloop.plugins.label_horizon import Options

    options = options if options is not None else Options()
    if not data.target or data.target not in data.meta.columns:
        raise DataError(f"label-horizon needs a target column to fit; {data.name or 'the rows'} have none "
                        "(set [data] target)")
    return {"horizon": options.horizon}, []
