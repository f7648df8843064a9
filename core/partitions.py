"""Rows in partitions, for data beyond one process's memory (issue 10, item 3).

A source plugin's `load_data` may return a partitioned frame (opsloop-dask's
`dask-parquet` returns a Dask DataFrame) instead of a pandas one. The core
never imports the engine that holds it: it wraps the frame in a
`PartitionedDataset` and runs every piece of work on the partitions through
the `map_partitions` hook, which the engine's plugin implements. What runs
per partition is plain pandas, in functions of this module:

- the `[data]` queries (`periods`), per partition;
- the fingerprint: sha256 over the partitions' own fingerprints, in order;
- the statistics preprocess steps fit their states from (`moments`,
  `order_statistics`, `quantiles`, `median`, `value_counts`, `column_facts`),
  partial results per partition combined here, in as many rounds as the
  statistic needs, into the very numbers pandas gives on one frame;
- replaying a step (`replay`): its own `preprocess` hook with the state, on
  each partition behind the rows of every series its windows reach
  (`window_reach`) from the partitions before it, and ahead of the rows a
  look-ahead label (`label-horizon`) reads from the ones after it;
- scoring a fold's held-out rows, bringing back label, score, series, time.

`InProcessEngine` implements the hook over a list of pandas frames in this
process: the engine the core's tests use, and a reference for engine authors.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.errors import ConfigError, DataError
from opsloop.hookspecs import hookimpl
# The statistics steps' fit_partitions hooks use, where the hook's docs name them (opsloop.partitions.moments...).
from opsloop.partition_stats import column_facts, median, mode, moments, order_statistics, quantiles, value_counts

__all__ = ["Carry", "InProcessEngine", "PartitionedDataset", "column_facts", "is_partitioned", "median", "mode",
           "moments", "order_statistics", "quantiles", "value_counts"]

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.config import Config
    from opsloop.manager import PluginManager
    from opsloop.types import Dataset

#: Rows of the bounded sample registration and monitoring bring to the client (docs/scale.md).
SAMPLE_ROWS = 20_000
#: The message that ends every refusal of a built-in trainer given partitions.
TRAINER_HINT = 'select a trainer that takes partitions, such as "dask-xgboost" (pip install opsloop-dask)'


@attrs.frozen(kw_only=True)
class Carry:
    """What each partition is handed from its neighbours when a function runs on it.

    Attributes:
        rows: Previous rows of each series (the newest `rows`) from the partitions before.
        seconds: And every row of each series newer than its newest time minus `seconds`, plus one.
        ahead: Following rows of each series from the partitions after (a look-ahead label).
        series: The series column (None: all rows are one series).
        time: The time column.
    """

    rows: int = 0
    seconds: float = 0.0
    ahead: int = 0
    series: str | None = None
    time: str | None = None

    def behind(self, before: pd.DataFrame | None, part: pd.DataFrame, index: int = 0) -> pd.DataFrame | None:
        """The rows partition `index + 1` is handed from before it: from `part` (partition `index`) behind
        what `part` itself was handed. None when this carry reaches nothing behind."""
        if not (self.rows or self.seconds):
            return None
        import pandas as pd

        from opsloop.rowops import carried

        self.check_order(before, part, index)
        frame = part.reset_index(drop=True) if before is None or not len(before) else \
            pd.concat([before, part], ignore_index=True)
        return carried(frame, self.rows, self.seconds, self.series, self.time)

    def check_order(self, before: pd.DataFrame | None, part: pd.DataFrame, index: int) -> None:
        """DataError when partition `index` goes back in time within a series behind the rows carried to it:
        windows need each series' rows in time order across partitions."""
        time, series = self.time, self.series
        if before is None or not len(before) or not len(part) or not time or time not in part.columns:
            return
        if series and series in part.columns:
            last = before.groupby(series, sort=False, dropna=False)[time].max()
            first = part.groupby(series, sort=False, dropna=False)[time].min()
            both = first.index.intersection(last.index)
            late = [str(s) for s in both if first[s] < last[s]]
        else:
            late = ["(all rows)"] if part[time].min() < before[time].max() else []
        if late:
            raise DataError(f"partition {index} goes back in time within series {', '.join(late[:5])}: windowed "
                            f"features need each series' rows in time order across partitions; order the files "
                            f"(they are read in name order) or the rows by {time}")

    def after(self, part: pd.DataFrame, after: pd.DataFrame | None) -> pd.DataFrame | None:
        """The rows partition i - 1 is handed from after it: the first `ahead` rows of each series of `part`
        (partition i) and of what follows it. None when this carry reaches nothing ahead."""
        if not self.ahead:
            return None
        import pandas as pd

        frame = part.reset_index(drop=True) if after is None or not len(after) else \
            pd.concat([part, after], ignore_index=True)
        keyed = bool(self.series and self.series in frame.columns)
        head = frame.groupby(self.series, sort=False, dropna=False).head(self.ahead) if keyed \
            else frame.head(self.ahead)
        return head.reset_index(drop=True)

    def __bool__(self) -> bool:
        return bool(self.rows or self.seconds or self.ahead)


@attrs.frozen(kw_only=True)
class PartitionedDataset:
    """Rows in partitions that stay where the engine keeps them; the same columns and meaning as `Dataset`.

    Attributes:
        frame: The engine's partitioned frame (a Dask DataFrame), opaque to the core.
        meta: A zero-row pandas frame: the columns and their dtypes.
        engine: The plugin whose `map_partitions` runs work on `frame`.
        mapper: Calls that plugin's `map_partitions` (set by `wrap`).
        rows: Number of rows, once counted (`describe`); None before.
        partitions: Number of partitions, once counted.
        fingerprint: sha256 over the partitions' fingerprints, in order ("" before `describe`).
    """

    frame: Any = attrs.field(eq=False, repr=False)
    meta: pd.DataFrame = attrs.field(eq=False, repr=False)
    engine: str
    mapper: Callable[..., Any] = attrs.field(eq=False, repr=False)
    target: str | None = None
    time: str | None = None
    series: str | None = None
    fingerprint: str = ""
    name: str = ""
    rows: int | None = None
    partitions: int | None = None
    #: Per partition: rows, and (with a time column) the first and last time, from `describe`.
    spans: tuple[Any, ...] = attrs.field(default=(), eq=False, repr=False)

    @property
    def meta_columns(self) -> list[str]:
        return [c for c in (self.target, self.time, self.series) if c and c in self.meta.columns]

    @property
    def feature_columns(self) -> list[str]:
        meta = set(self.meta_columns)
        return [c for c in self.meta.columns if c not in meta]

    @property
    def empty(self) -> Dataset:
        """A zero-row `Dataset` of the same columns: what steps resolve their columns on."""
        from opsloop.types import Dataset

        return Dataset(frame=self.meta, target=self.target, time=self.time, series=self.series,
                       fingerprint="", name=self.name)

    def __len__(self) -> int:
        if self.rows is None:
            raise TypeError("the rows of a PartitionedDataset are counted by describe()")
        return self.rows

    def collect(self, function: Callable[[pd.DataFrame, Any], Any], argument: Any = None,
                carry: Carry | None = None) -> list[Any]:
        """`function(partition, argument)` on every partition, on the engine's workers: the results, in
        partition order, in this process (keep them small). With `carry`, the function is called as
        `function(partition, argument, before, after)`."""
        wrapped = _Call(function, bool(carry))
        return list(self.mapper(self.frame, wrapped, argument, carry, None, None))

    def transform(self, function: Callable[..., pd.DataFrame], argument: Any, meta: pd.DataFrame, *,
                  carry: Carry | None = None, keep: str = "lazy", name: str | None = None,
                  **changes: Any) -> PartitionedDataset:
        """A new partitioned dataset of `function(partition, argument[, before, after])` per partition, kept
        by the engine (`keep`: "lazy", recomputed when read, or "persist", held by the workers)."""
        frame = self.mapper(self.frame, _Call(function, bool(carry)), argument, carry, keep, meta)
        return attrs.evolve(self, frame=frame, meta=meta, fingerprint="", rows=None, spans=(),
                            name=self.name if name is None else name, **changes)

    def describe(self) -> PartitionedDataset:
        """Rows, partitions, spans and the fingerprint, counted in one pass."""
        facts = self.collect(_describe, self.time)
        digest = hashlib.sha256()
        digest.update(repr([(str(c), str(t)) for c, t in self.meta.dtypes.items()]).encode())
        for fact in facts:
            digest.update(fact["fingerprint"].encode())
        rows = sum(f["rows"] for f in facts)
        return attrs.evolve(self, rows=rows, partitions=len(facts), fingerprint="sha256:" + digest.hexdigest(),
                            spans=tuple((f["rows"], f["first"], f["last"]) for f in facts))

    def sample(self, rows: int = SAMPLE_ROWS, seed: int = 0) -> Dataset:
        """A bounded sample as a pandas `Dataset`: about `rows` rows drawn evenly from every partition,
        whole series-time order kept; its fingerprint is this dataset's (it stands for it in lineage)."""
        import pandas as pd

        from opsloop.types import Dataset

        data = self if self.rows is not None else self.describe()
        fraction = min(1.0, rows / max(data.rows or 1, 1))
        parts = data.collect(_sample, (fraction, seed, [c for c in (self.series, self.time) if c]))
        frame = pd.concat(parts, ignore_index=True) if parts else self.meta
        if self.time:
            frame = frame.sort_values([c for c in (self.series, self.time) if c], kind="stable", ignore_index=True)
        return Dataset(frame=frame, target=self.target, time=self.time, series=self.series,
                       fingerprint=data.fingerprint, name=f"{self.name} (sample of {len(frame):,} rows)")

    def head(self, rows: int = 64) -> pd.DataFrame:
        """The first rows of the first partition that has any."""
        for part in self.collect(_head, rows):
            if len(part):
                return part
        return self.meta


@attrs.frozen
class _Call:
    """What the engine calls: the function, with or without the neighbours a carry hands it."""

    function: Callable[..., Any]
    carried: bool

    def __call__(self, part: pd.DataFrame, argument: Any, before: Any = None, after: Any = None) -> Any:
        if self.carried:
            return self.function(part, argument, before, after)
        return self.function(part, argument)


def _describe(part: pd.DataFrame, time: str | None) -> dict[str, Any]:
    from opsloop.types import fingerprint_frame

    frame = part.reset_index(drop=True)
    has = bool(time and time in frame.columns and len(frame))
    return {"rows": len(frame), "fingerprint": fingerprint_frame(frame),
            "first": frame[time].min() if has else None, "last": frame[time].max() if has else None}


def _head(part: pd.DataFrame, rows: int) -> pd.DataFrame:
    return part.head(rows).reset_index(drop=True)


def _sample(part: pd.DataFrame, job: tuple[float, int, list[str]]) -> pd.DataFrame:
    fraction, seed, _ = job
    if fraction >= 1.0:
        return part.reset_index(drop=True)
    return part.sample(frac=fraction, random_state=seed).sort_index(kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------
# Wrapping what a source returned, and the [data] periods
# ---------------------------------------------------------------------------

def is_partitioned(data: Any) -> bool:
    return isinstance(data, PartitionedDataset)


def engine_for(frame: Any, plugins: PluginManager) -> str | None:
    """The plugin whose `map_partitions` takes `frame` (asked with a no-op that computes nothing)."""
    name, _ = plugins.first("map_partitions", frame=frame, function=None, argument=None, carry=None,
                            keep=None, meta=None)
    return name


def wrap(frame: Any, config: Config, plugins: PluginManager, source: str) -> PartitionedDataset:
    """`frame`, which a source returned and which is not a pandas DataFrame, as a `PartitionedDataset`;
    a DataError when no installed engine takes it. Its columns are checked against `[data]` (the target, time,
    series, feature and sensitive columns it names), as `opsloop.data.load` checks a frame's."""
    engine = engine_for(frame, plugins)
    if engine is None:
        raise DataError(f"{source}: the source returned a {type(frame).__module__}.{type(frame).__name__}, which is "
                        "neither a pandas DataFrame nor a partitioned frame an installed engine takes "
                        "(map_partitions); install the engine's package (opsloop-dask for a Dask DataFrame)")

    def mapper(frame: Any, function: Any, argument: Any, carry: Carry | None, keep: str | None,
               meta: Any) -> Any:
        return plugins.call(engine, "map_partitions", frame=frame, function=function, argument=argument,
                            carry=carry, keep=keep, meta=meta)

    meta = plugins.call(engine, "map_partitions", frame=frame, function=None, argument=None, carry=None,
                        keep="meta", meta=None)
    from opsloop.data import kept_columns

    spec = config.data
    keep = kept_columns(config, list(meta.columns))
    if spec.sensitive:  # as a frame's (opsloop.data.load): a misspelt one would leave the real column written
        from opsloop.sensitive import check_columns

        check_columns(config, list(meta.columns))
    data = PartitionedDataset(frame=frame, meta=meta, engine=engine, mapper=mapper, target=spec.target,
                              time=spec.time, series=spec.series, name=spec.source)
    return data if keep is None else data.transform(_columns, keep, meta[keep])


def _columns(part: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return part[columns]


def _query(part: pd.DataFrame, query: str) -> pd.DataFrame:
    return part.query(query)


def _unlabelled(part: pd.DataFrame, job: tuple[str, str]) -> pd.DataFrame:
    import numpy as np

    unlabelled, target = job
    missing = part[target].isna().to_numpy()
    if not missing.any():
        return part
    if unlabelled == "drop":
        return part[~missing]
    return part.assign(**{target: part[target].fillna(0).to_numpy().astype(np.int8)})


def _count_missing(part: pd.DataFrame, target: str) -> int:
    return int(part[target].isna().sum())


def period(data: PartitionedDataset, query: str, key: str, config: Config) -> PartitionedDataset:
    """The rows a `[data]` query selects, partition by partition; never empty."""
    try:
        data.meta.query(query)  # the column names and the syntax, before any work
    except Exception as exc:  # pandas raises SyntaxError, UndefinedVariableError, TypeError...
        raise ConfigError(f"query {query!r} failed: {exc}", section="data", key=key, source=config.source) from None
    selected = data.transform(_query, query, data.meta, name=f"{data.name} [{key}: {query}]").describe()
    if not selected.rows:
        raise ConfigError(f"query {query!r} selects no rows of {data.name}", section="data", key=key,
                          source=config.source)
    return selected


def periods(data: PartitionedDataset, config: Config) -> tuple[PartitionedDataset, PartitionedDataset | None]:
    """The training and monitoring periods of partitioned rows (`opsloop.data.periods`): the `[data]`
    queries run per partition; `[data] unlabelled` applied to the training rows."""
    spec = config.data
    if spec.train is None and spec.monitor is None:
        if spec.monitor_fraction > 0:
            raise ConfigError("a partitioned source needs [data] train and monitor queries to split off a "
                              "monitoring period (monitor_fraction would sort every row by time in one process); "
                              "set them, or monitor_fraction = 0", section="data", key="monitor_fraction",
                              source=config.source)
        train = data.describe()
        monitor = None
    else:
        train = period(data, spec.train, "train", config) if spec.train else data.describe()
        monitor = period(data, spec.monitor, "monitor", config) if spec.monitor else None
    unlabelled, target = spec.unlabelled, train.target
    if target and target in train.meta.columns:
        missing = sum(train.collect(_count_missing, target))
        if missing and unlabelled in ("normal", "drop"):
            train = train.transform(_unlabelled, (unlabelled, target), train.meta,
                                    name=f"{train.name} ({missing:,} unlabelled rows {unlabelled})").describe()
        elif missing and unlabelled == "error":
            raise DataError(f"{train.name}: {missing:,} of {train.rows:,} rows have no label (target column "
                            f"{target!r} is missing there); set [data] unlabelled to \"normal\" (they are label "
                            "0) or \"drop\" (leave them out)")
    return train, monitor


# ---------------------------------------------------------------------------
# Preprocessing: fit over partitions, replay per partition
# ---------------------------------------------------------------------------

def check_steps(names: Sequence[str], plugins: PluginManager) -> None:
    """ConfigError naming the first step that cannot be fitted over partitions (no `fit_partitions`)."""
    for name in names:
        if not plugins.implements(name, "fit_partitions"):
            info = plugins.known.get(name)
            raise ConfigError(f'preprocess step "{name}"{f" ({info.label})" if info else ""} cannot be fitted over '
                              "partitions (it does not implement the fit_partitions hook), and [data] source is "
                              "partitioned; remove the step, or ask its author for fit_partitions "
                              "(docs/hooks.md)", section="preprocess", key="plugins")


def check_trainer(name: str, options: Any) -> None:
    """ConfigError when trainer `name` does not take partitions (`partitioned = True` on its options)."""
    if not getattr(type(options), "partitioned", False) and not getattr(options, "partitioned", False):
        raise ConfigError(f'trainer "{name}" trains on one pandas frame in this process, and [data] source is '
                          f"partitioned (rows beyond one machine's memory); {TRAINER_HINT}",
                          section="train", key="plugins")


def step_reach(name: str, state: dict[str, Any], options: Any, plugins: PluginManager,
               series: str | None, time: str | None) -> Carry | None:
    """What a step's replay needs from neighbouring partitions: its `window_reach` behind (previous rows
    plus one, as batch scoring carries), and `horizon` rows ahead for `label-horizon`."""
    rows, seconds, ahead = 0, 0.0, 0
    if plugins.implements(name, "window_reach"):
        reach = plugins.call(name, "window_reach", state=state, options=options)
        if reach:
            rows, seconds = (reach.rows + 1 if reach.rows else 0), reach.seconds
    if name == "label-horizon" and "horizon" in state:
        ahead = int(state["horizon"])
    carry = Carry(rows=rows, seconds=seconds, ahead=ahead, series=series, time=time)
    return carry if carry else None


@attrs.frozen
class Step:
    """One step's replay, shipped to the workers: its plugin object (a module pickles by name), state, options."""

    name: str
    plugin: Any
    state: dict[str, Any]
    options: Any
    target: str | None
    time: str | None
    series: str | None


def call_hook(plugin: Any, hook: str, **kwargs: Any) -> Any:
    """A plugin object's hook implementation, called with the arguments it names (as pluggy does)."""
    function = getattr(plugin, hook)
    names = inspect.signature(function).parameters
    return function(**{k: v for k, v in kwargs.items() if k in names})


def _worker_run() -> Any:
    from pathlib import Path

    from opsloop.types import RunContext

    return RunContext(run_id="partition", workdir=Path("."), model_name="", config=None)


def replay_frame(frame: pd.DataFrame, step: Step) -> pd.DataFrame:
    """One step replayed with its state on one frame (its own `preprocess` hook)."""
    from opsloop.types import Dataset

    dataset = Dataset.from_frame(frame, target=step.target, time=step.time, series=step.series, name=step.name)
    out = call_hook(step.plugin, "preprocess", dataset=dataset, state=step.state, options=step.options,
                    run=_worker_run())
    return out.dataset.frame


def _replay(part: pd.DataFrame, step: Step, before: pd.DataFrame | None = None,
            after: pd.DataFrame | None = None) -> pd.DataFrame:
    """`part` replayed behind `before` and ahead of `after`; only `part`'s own rows come back."""
    import pandas as pd

    own = part.reset_index(drop=True)
    pieces = [p for p in (before, own, after) if p is not None and len(p)]
    if len(pieces) == 1 or not len(own):
        return replay_frame(own, step).reset_index(drop=True)
    start = len(before) if before is not None else 0
    out = replay_frame(pd.concat(pieces, ignore_index=True), step)
    return out.iloc[start:start + len(own)].reset_index(drop=True)


def _json_state(state: Any, name: str) -> dict[str, Any]:
    from opsloop.errors import PluginCallError

    try:
        return json.loads(json.dumps(dict(state), allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise PluginCallError(name, "fit_partitions", TypeError(f"state is not JSON-able: {exc}")) from exc


def fit_step(name: str, data: PartitionedDataset, options: Any, plugins: PluginManager, run: Any
             ) -> tuple[dict[str, Any], list[str]]:
    """Step `name`'s state and issues, fitted over the partitions of `data` (its `fit_partitions` hook)."""
    from opsloop.errors import PluginCallError

    result = plugins.call(name, "fit_partitions", data=data, options=options, run=run)
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], dict)):
        raise PluginCallError(name, "fit_partitions", TypeError("expected (state, issues)"))
    return _json_state(result[0], name), [str(i) for i in result[1]]


def replay_step(name: str, state: dict[str, Any], data: PartitionedDataset, options: Any,
                plugins: PluginManager, *, keep: str = "lazy") -> PartitionedDataset:
    """`data` with step `name` replayed on every partition, windows carried across partition boundaries."""
    step = Step(name=name, plugin=plugins.load(name), state=state, options=options, target=data.target,
                time=data.time, series=data.series)
    carry = step_reach(name, state, options, plugins, data.series, data.time)
    meta = replay_frame(data.head(), step).iloc[:0]
    return data.transform(_replay, step, meta, carry=carry, keep=keep)


# ---------------------------------------------------------------------------
# The engine the core's tests use: a list of pandas frames in this process
# ---------------------------------------------------------------------------

class FrameList(list):
    """Partitions as a list of pandas frames, for `InProcessEngine`."""


def run_partitions(parts: Sequence[Any], function: Callable[..., Any], argument: Any,
                   carry: Carry | None) -> list[Any]:
    """The engine contract, sequentially: `function(part_i, argument, before_i, after_i)`, where `before_i`
    comes from partition i - 1 behind what it was handed (`Carry.behind`) and `after_i` from partition
    i + 1 ahead of what it was handed (`Carry.after`). Engines may run the calls in parallel; the chains of
    carried rows are small."""
    n = len(parts)
    befores: list[Any] = [None] * n
    afters: list[Any] = [None] * n
    if carry:
        for i in range(1, n):
            befores[i] = carry.behind(befores[i - 1], parts[i - 1], i - 1)
        for i in range(n - 2, -1, -1):
            afters[i] = carry.after(parts[i + 1], afters[i + 1])
    return [function(p, argument, befores[i], afters[i]) for i, p in enumerate(parts)]


class InProcessEngine:
    """`map_partitions` over a `FrameList`, in this process (register it as a plugin)."""

    @hookimpl
    def map_partitions(self, frame: Any, function: Any, argument: Any, carry: Carry | None, keep: str | None,
                       meta: Any) -> Any:
        if not isinstance(frame, FrameList):
            return None
        if keep == "meta":
            return frame[0].iloc[:0] if frame else None
        if function is None:
            return True
        results = run_partitions(list(frame), function, argument, carry)
        return FrameList(results) if keep else results


def lineage_data(data: PartitionedDataset, sampled: int) -> dict[str, Any]:
    """What lineage records of partitioned training rows: all rows counted, their time span, the partitions,
    and how many rows the schema, probe rows and drift profile were taken from."""
    import numpy as np
    import pandas as pd

    firsts = [s[1] for s in data.spans if s[1] is not None]
    lasts = [s[2] for s in data.spans if s[2] is not None]
    out: dict[str, Any] = {"source": data.name, "fingerprint": data.fingerprint, "rows": data.rows,
                           "partitions": data.partitions, "engine": data.engine, "profile_sample_rows": sampled}
    if firsts and lasts and all(isinstance(t, (pd.Timestamp, np.datetime64)) for t in (*firsts, *lasts)):
        first = pd.to_datetime(min(firsts), utc=True)
        last = pd.to_datetime(max(lasts), utc=True)
        out["start"] = first.isoformat().replace("+00:00", "Z")
        out["end"] = last.isoformat().replace("+00:00", "Z")
    return out
