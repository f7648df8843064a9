"""The Dask engine of partitioned data: opsloop's `map_partitions` hook over a Dask DataFrame.

opsloop's core never imports Dask. When `[data] source` is read by `dask-parquet` (opsloop_dask.source),
the core wraps the Dask DataFrame it returns and runs every piece of work on the partitions through this
hook: the `[data]` queries, the statistics preprocess steps fit their states from, the steps' replay,
the folds' scoring. Each call becomes one task per partition (`to_delayed`), on the cluster the source
connected to; with a carry, partition i's carried rows come from partition i - 1 and its own carry by a
chain of small tasks (and the rows ahead from i + 1 backwards), while the work itself runs in parallel.
"""

from __future__ import annotations

import threading
from typing import Any

from opsloop import hookimpl

_lock = threading.Lock()
_client: list[Any] = []


def use(client: Any) -> None:
    """The client partitioned work runs on from now (the source's cluster)."""
    with _lock:
        _client[:] = [client]


def client() -> Any:
    """The client `use` set, else distributed's default one."""
    with _lock:
        if _client and _client[0].status == "running":
            return _client[0]
    from distributed import default_client

    return default_client()


def _is_dask(frame: Any) -> bool:
    if not type(frame).__module__.startswith("dask"):
        return False
    import dask.dataframe as dd

    return isinstance(frame, dd.DataFrame)


@hookimpl
def map_partitions(frame: Any, function: Any, argument: Any, carry: Any, keep: str | None, meta: Any) -> Any:
    """opsloop's engine hook (docs/hooks.md) for a Dask DataFrame; None for anything else."""
    if not _is_dask(frame):
        return None
    if keep == "meta":
        return frame._meta.iloc[:0]
    if function is None:
        return True
    import dask
    import dask.dataframe as dd

    parts = frame.to_delayed(optimize_graph=False)
    n = len(parts)
    arg = dask.delayed(argument, traverse=False)
    befores: list[Any] = [None] * n
    afters: list[Any] = [None] * n
    if carry:
        behind, ahead = dask.delayed(carry.behind, pure=True), dask.delayed(carry.after, pure=True)
        if carry.rows or carry.seconds:
            for i in range(1, n):
                befores[i] = behind(befores[i - 1], parts[i - 1], i - 1)
        if carry.ahead:
            for i in range(n - 2, -1, -1):
                afters[i] = ahead(parts[i + 1], afters[i + 1])
    call = dask.delayed(function, pure=True)
    results = [call(p, arg, befores[i], afters[i]) for i, p in enumerate(parts)]
    current = client()
    if keep is None:
        return list(current.gather(current.compute(results)))
    out = dd.from_delayed(results, meta=meta, verify_meta=False)
    return current.persist(out) if keep == "persist" else out
