"""Reading `[data]`: the source, its columns, and the train and monitor periods."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.errors import ConfigError, DataError, closest
from opsloop.types import Dataset

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.config import Config, DataSection
    from opsloop.session import Session

EMBEDDED_PREFIX = "embedded:"

#: `[data] unlabelled`: what the training period's rows without a label are (issue 13, item 6).
UNLABELLED = {
    "error": "validation and supervised trainers refuse them (the default)",
    "normal": "they are normal rows, label 0",
    "drop": "they are left out of training and validation",
    "keep": "an unsupervised trainer (isolation-forest) trains on them; validation and the alert threshold "
            "judge the labelled rows only",
}


def one_class_error(plugin: str, dataset: Dataset, classes: Sequence[Any]) -> DataError:
    """The error for classifier training rows whose target holds fewer than two classes.

    Such a model learns nothing, and an XGBoost one cannot even be loaded back
    (issue 8): trainers refuse it with this message, which names the column and
    the class it saw.
    """
    if not len(classes):
        return DataError(f"{plugin}: dataset {dataset.name or '?'} has no training rows")
    seen = classes[0].item() if hasattr(classes[0], "item") else classes[0]
    return DataError(f"{plugin}: target column {dataset.target!r} holds one class only ({seen!r}) in the "
                     f"{len(dataset.frame):,} training rows of dataset {dataset.name or '?'}; a classifier needs "
                     "at least two: train on a period that has both (with incidents), or check [data] target")


def missing_labels_error(plugin: str, dataset: Dataset, *, mode: str = "error", supervised: bool = False
                         ) -> DataError:
    """The error for rows without a label where a label is needed: names the column, how many rows, and what
    `[data] unlabelled` can do about it (`mode` is its value; `supervised`: the refusing plugin is a
    supervised trainer, which no value but "normal" and "drop" can satisfy)."""
    frame = dataset.frame
    missing = int(frame[dataset.target].isna().sum()) if dataset.target in frame.columns else len(frame)
    where = (f"{plugin}: {missing:,} of {len(frame):,} rows of dataset {dataset.name or '?'} have no label "
             f"(target column {dataset.target!r} is missing there)")
    if supervised and mode == "keep":
        return DataError(f'{where}; [data] unlabelled = "keep" leaves them unlabelled for an unsupervised '
                         'trainer (isolation-forest), and a supervised one needs a label on every row: set it to '
                         '"normal" (they are label 0) or "drop" (train on the labelled rows)')
    return DataError(f'{where}; set [data] unlabelled to "normal" (they are label 0), "drop" (leave them out) or '
                     '"keep" (an unsupervised trainer such as isolation-forest trains on them; validation and '
                     "the alert threshold judge the labelled rows)")


def unlabelled(train: Dataset, config: Config) -> Dataset:
    """The training period with `[data] unlabelled` applied to its rows without a label (`UNLABELLED`).

    Only the training period: a monitoring period's rows without a label are
    rows whose label has not arrived yet, and monitors leave them out.

    Raises:
        ConfigError: "normal" on a target that is not 0/1.
        DataError: "normal" or "drop" on a period none of whose rows is labelled.
    """
    import numpy as np
    import pandas as pd

    mode, target, frame = config.data.unlabelled, train.target, train.frame
    if mode in ("error", "keep") or not target or target not in frame.columns:
        return train
    missing = frame[target].isna().to_numpy()
    count = int(missing.sum())
    if not count:
        return train
    if count == len(frame):
        raise DataError(f'[data] unlabelled = "{mode}": none of the {len(frame):,} rows of {train.name} has a '
                        f"label in target column {target!r}, so nothing would be left to learn incidents from "
                        f"or to judge by" + ("" if mode == "drop" else " (every row would be normal)")
                        + '; label some of them, or train an unsupervised trainer (isolation-forest) with '
                        'unlabelled = "keep" and no validator')
    if mode == "drop":
        kept = frame[~missing].reset_index(drop=True)
        return train.derive(kept, name=f"{train.name} ({count:,} unlabelled rows dropped)")
    labels = pd.to_numeric(frame[target][~missing], errors="coerce")
    if not labels.isin((0, 1)).all():
        seen = ", ".join(map(str, pd.unique(frame[target][~missing])[:5]))
        raise ConfigError(f'"normal" makes a row without a label a 0 (no incident), and target column {target!r} '
                          f"is not 0/1 (it holds {seen}); use \"drop\" or label the rows",
                          section="data", key="unlabelled", source=config.source)
    filled = labels.reindex(frame.index).fillna(0).to_numpy().astype(np.int8)
    return train.derive(frame.assign(**{target: filled}),
                        name=f"{train.name} ({count:,} unlabelled rows as normal)")


#: A URI scheme: two or more characters, so that a Windows drive (`C:\\data.csv`) stays a path.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9.-]+)(?:\+[A-Za-z0-9.+-]*)?:")
#: The built-in source plugins (plugins/file_source.py, plugins/embedded_source.py).
FILES, EMBEDDED = "files", "embedded"


def source_plugin(spec: DataSection) -> str:
    """The source plugin that reads `[data] source`: `[data] plugin`, else the one the URI's scheme names.

    `prometheus://host:9090` and `prometheus+https://host` are read by `prometheus`, `embedded:asd` by
    `embedded`; a path or a `file:` URI by `files` (docs/data-sources.md).
    """
    if spec.plugin:
        return spec.plugin
    match = _SCHEME.match(spec.source)
    if match is None:
        return FILES
    scheme = match.group(1).lower()
    return FILES if scheme == "file" else scheme


def read_table(path_text: str, workdir: Path | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file, or a folder of Parquet files, into a frame (the built-in `files` source).

    `path_text` is a path or a `file:` URI; a relative path resolves against `workdir` (the config file's folder).
    """
    import pandas as pd

    if path_text.startswith("file:"):
        from urllib.parse import unquote, urlparse

        path_text = unquote(urlparse(path_text).path)
    path = Path(path_text).expanduser()
    if not path.is_absolute() and workdir is not None:
        path = Path(workdir) / path
    if path.is_dir():
        if not any(path.rglob("*.parquet")):
            raise DataError(f"data folder {path} holds no .parquet file (a folder source is a Parquet dataset)")
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many kinds; all mean "unreadable"
            raise DataError(f"cannot read the Parquet dataset {path}: {exc}") from exc
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet") or suffix.endswith(".pq"):
            return pd.read_parquet(path)
        if ".csv" in suffix or ".tsv" in suffix:
            return pd.read_csv(path, sep="\t" if ".tsv" in suffix else ",")
    except Exception as exc:  # pandas/pyarrow raise many kinds; all mean "unreadable"
        raise DataError(f"cannot read {path}: {exc}") from exc
    raise DataError(f"unsupported data file {path}: use .csv, .tsv or .parquet (optionally .gz), or a folder "
                    "of Parquet files")


def read_source(config: Config, session: Session | None = None) -> pd.DataFrame:
    """`[data] source` as the source plugin (`source_plugin`) reads it, through the `load_data` hook.

    Raises:
        ConfigError: No plugin reads this source, or its `[data.<plugin>]` options are wrong.
        DataError: The source cannot be read; a built-in source's own words, a third-party one's behind
            its plugin's name and distribution.
    """
    import pandas as pd

    from opsloop.errors import PluginCallError

    if session is None:
        from opsloop.session import Session

        session = Session.open(config, sections=("data",))
    name = source_plugin(config.data)
    if ("data", name) not in session.options:
        session._check_section("data")
    try:
        frame = session.plugins.call(name, "load_data", source=config.data.source,
                                     options=session.options_for("data", name), data=config.data,
                                     workdir=Path(config.workdir))
    except PluginCallError as exc:
        if name in (FILES, EMBEDDED) and isinstance(exc.cause, (DataError, ConfigError)):
            raise exc.cause from None  # a built-in source speaking about the file: its words alone
        raise
    if not isinstance(frame, pd.DataFrame):
        from opsloop import partitions

        if partitions.engine_for(frame, session.plugins) is not None:  # rows in partitions (docs/scale.md)
            return frame
        info = session.plugins.known.get(name)
        raise DataError(f'plugin "{name}"{f" ({info.label})" if info else ""} returned '
                        f"{type(frame).__name__} from load_data, not a pandas DataFrame")
    return frame


def kept_columns(config: Config, columns: list[str]) -> list[str] | None:
    """The columns `[data] features` keeps (with the target, time and series columns), None for all of them.

    Raises:
        ConfigError: A column `[data]` names (target, time, series, a feature) is not among `columns`.
    """
    spec = config.data
    for key in ("target", "time", "series"):
        column = getattr(spec, key)
        if column is not None and column not in columns:
            raise ConfigError(f"column {column!r} is not in {spec.source} (columns: {', '.join(map(str, columns))})",
                              section="data", key=key, source=config.source,
                              suggestion=closest(column, map(str, columns)))
    if spec.features is None:
        return None
    missing = [c for c in spec.features if c not in columns]
    if missing:
        raise ConfigError(f"feature column(s) not in {spec.source}: {', '.join(missing)}",
                          section="data", key="features", source=config.source)
    return [*spec.features, *[c for c in (spec.target, spec.time, spec.series) if c]]


def load(config: Config, session: Session | None = None, *, partitioned: bool = False) -> Dataset:
    """The whole `[data] source`, read by its source plugin (`read_source`), with its columns checked.

    `session` gives the plugins (and in-process ones registered for tests); without it, the installed
    plugins are discovered. A source that returns partitions an engine takes gives an
    `opsloop.partitions.PartitionedDataset` instead (docs/scale.md) when the caller takes one
    (`partitioned`: `opsloop run` and `validate`), else a ConfigError saying so.
    """
    import pandas as pd

    if session is None:
        from opsloop.session import Session

        session = Session.open(config, sections=("data",))
    spec = config.data
    frame = read_source(config, session)
    if not isinstance(frame, pd.DataFrame):
        from opsloop import partitions

        if not partitioned:
            raise ConfigError(f"{spec.source} is read in partitions (rows beyond one machine's memory), and only "
                              "opsloop run and opsloop validate work on partitions; the loop, tune, backtest and "
                              "reproduce read one frame (docs/scale.md)", section="data", key="source",
                              source=config.source)
        return partitions.wrap(frame, config, session.plugins, spec.source)  # type: ignore[return-value]
    keep = kept_columns(config, list(frame.columns))
    if spec.sensitive:  # a misspelt one would leave the real column in snapshots and the log (issue 14)
        from opsloop.sensitive import check_columns

        check_columns(config, list(frame.columns))
    if keep is not None:
        frame = frame[keep]
    if spec.time is not None:
        import pandas as pd

        if not pd.api.types.is_datetime64_any_dtype(frame[spec.time]) and not pd.api.types.is_numeric_dtype(frame[spec.time]):
            try:
                frame = frame.assign(**{spec.time: pd.to_datetime(frame[spec.time])})
            except (ValueError, TypeError) as exc:
                raise DataError(f"[data] time column {spec.time!r} is neither numeric nor dates: {exc}") from None
    return Dataset.from_frame(frame, target=spec.target, time=spec.time, series=spec.series, name=spec.source)


def period(dataset: Dataset, query: str, key: str, config: Config) -> Dataset:
    """The rows a `[data] train`/`monitor` pandas query selects; never empty."""
    try:
        frame = dataset.frame.query(query)
    except Exception as exc:  # pandas raises SyntaxError, UndefinedVariableError, TypeError...
        raise ConfigError(f"query {query!r} failed: {exc}", section="data", key=key, source=config.source) from None
    if frame.empty:
        raise ConfigError(f"query {query!r} selects no rows of {dataset.name}", section="data", key=key,
                          source=config.source)
    return dataset.derive(frame.reset_index(drop=True), name=f"{dataset.name} [{key}: {query}]")


def periods(dataset: Dataset, config: Config) -> tuple[Dataset, Dataset | None]:
    """Training and monitoring periods, `[data] unlabelled` applied to the training one (`unlabelled`).

    With neither query set, the last `monitor_fraction` of the rows (by time
    when there is a time column) are the monitoring period.
    """
    from opsloop import partitions

    if partitions.is_partitioned(dataset):  # the queries run per partition (docs/scale.md)
        return partitions.periods(dataset, config)  # type: ignore[arg-type]
    spec = config.data
    if spec.train is None and spec.monitor is None:
        if spec.monitor_fraction <= 0:
            return unlabelled(dataset, config), None
        frame = dataset.frame
        if spec.time:
            frame = frame.sort_values(spec.time, kind="stable")
        cut = int(round(len(frame) * (1 - spec.monitor_fraction)))
        if cut < 1 or cut >= len(frame):
            raise DataError(f"{dataset.name}: {len(frame)} rows are too few to split off a monitoring period")
        if spec.time:  # all rows of one time step stay on one side
            boundary = frame[spec.time].iloc[cut]
            train_mask = frame[spec.time] < boundary
        else:
            train_mask = frame.index.isin(frame.index[:cut])
        return (unlabelled(dataset.derive(frame[train_mask].reset_index(drop=True), name=f"{dataset.name} [train]"),
                           config),
                dataset.derive(frame[~train_mask].reset_index(drop=True), name=f"{dataset.name} [monitor]"))
    train = period(dataset, spec.train, "train", config) if spec.train else dataset
    monitor = period(dataset, spec.monitor, "monitor", config) if spec.monitor else None
    return unlabelled(train, config), monitor
