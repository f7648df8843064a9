"""The Dask cluster a plugin works on: an existing scheduler, or a `LocalCluster` the plugin starts.

Both plugins of this package (`dask-xgboost`, `dask-batch`) take the same
cluster options (`ClusterOptions`). A client is opened once per process and
cluster and kept until the process ends, so the folds of a validation and the
final fit share one cluster instead of starting one each.
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
from typing import TYPE_CHECKING, Any

import attrs

from opsloop.errors import ConfigError, OpsloopError

if TYPE_CHECKING:
    from distributed import Client

#: What `scheduler` may be: a Dask address (tcp://, tls://, ucx://, inproc://, ws://) or host:port.
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ucx|inproc|ws|wss)://)?[^\s/]+(?::\d+)?/?$")


def _address(_: Any, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not _ADDRESS.match(value)):
        raise ValueError(f'{attribute.name}: expected a Dask scheduler address such as "tcp://host:8786", '
                         f"got {value!r}")


def _memory_limit(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    ok = (isinstance(value, str) and bool(value.strip())) or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0)
    if not ok:
        raise ValueError(f'{attribute.name}: expected "auto", a size such as "2GiB", or a number of bytes, '
                         f"got {value!r}")


#: An option that does not shape the model (docs/writing-plugins.md, "Options that do not shape the model").
NOT_SHAPING = {"shapes_model": False}


@attrs.frozen(kw_only=True)
class ClusterOptions:
    """Where the work runs (shared by `dask-xgboost` and `dask-batch`).

    Attributes:
        scheduler: Address of an existing Dask scheduler ("tcp://host:8786").
            None: the plugin starts a `LocalCluster` on this machine with the
            options below, once per process.
        connect_timeout: Seconds to wait for the scheduler before giving up
            with an error naming the address.
        workers: Workers of the local cluster (not used with `scheduler`).
        threads_per_worker: Threads per local worker; 0: Dask's choice (the
            cores shared out among the workers).
        memory_limit: Memory per local worker: "auto" (the machine's memory
            shared out), a size such as "2GiB", or 0 for no limit.
        processes: Local workers in their own processes (true, as on a real
            cluster: the memory limit is enforced) or threads of this process.
    """

    # Where the cluster is and how it is run do not shape the model: changing them reuses a version trained
    # on the same rows and config (opsloop's lineage leaves them out of the training key). The number of
    # workers and threads stays in: XGBoost's sketches depend on how the rows are spread.
    scheduler: str | None = attrs.field(default=None, validator=_address, metadata=NOT_SHAPING)
    connect_timeout: float = attrs.field(default=10.0, validator=[attrs.validators.gt(0),
                                                                   attrs.validators.le(600)], metadata=NOT_SHAPING)
    workers: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    threads_per_worker: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    memory_limit: Any = attrs.field(default="auto", validator=_memory_limit, metadata=NOT_SHAPING)
    processes: bool = attrs.field(default=True, metadata=NOT_SHAPING)


def documented(cls: type) -> type:
    """`cls` with `ClusterOptions`' attribute descriptions appended to the `Attributes:` section that ends its
    docstring, so that `opsloop plugins show` describes the cluster options too."""
    own = (cls.__doc__ or "").rstrip()
    shared = (ClusterOptions.__doc__ or "").split("Attributes:\n", 1)[1].rstrip()
    cls.__doc__ = f"{own}\n{shared}\n    "
    return cls


_lock = threading.Lock()
_clients: dict[Any, tuple[Client, Any]] = {}


def _key(options: ClusterOptions) -> tuple[Any, ...]:
    if options.scheduler:
        return ("scheduler", options.scheduler)
    return ("local", options.workers, options.threads_per_worker, str(options.memory_limit), options.processes)


def where(options: ClusterOptions) -> str:
    """The cluster in words, for messages and lineage."""
    if options.scheduler:
        return options.scheduler
    return (f"a local cluster of {options.workers} worker(s)"
            + (f" x {options.threads_per_worker} thread(s)" if options.threads_per_worker else "")
            + ("" if options.processes else " (threads)"))


def client_for(options: ClusterOptions, plugin: str) -> Client:
    """A connected client for the cluster `options` name, opened on first use and kept for the process.

    Raises:
        OpsloopError: The scheduler cannot be reached within `connect_timeout`
            seconds: one line naming the address and the option (the runner
            adds the plugin's name).
        ConfigError: The local cluster cannot start with these options.
    """
    key = _key(options)
    with _lock:
        known = _clients.get(key)
        if known is not None and known[0].status == "running":
            return known[0]
        client, cluster = _connect(options, plugin)
        _clients[key] = (client, cluster)
        return client


def _connect(options: ClusterOptions, plugin: str) -> tuple[Client, Any]:
    import dask
    from distributed import Client

    section = f"train.{plugin}" if plugin == "dask-xgboost" else f"deploy.{plugin}"
    timeout = f"{options.connect_timeout}s"
    if options.scheduler:
        try:
            # Both settings: `timeout` bounds the client's wait, `connect` each TCP attempt inside it.
            with dask.config.set({"distributed.comm.timeouts.connect": timeout}):
                client = Client(options.scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:  # distributed raises OSError("Timed out trying to connect ...")
            why = "" if "timed out" in str(exc).lower() else f" ({_first_line(exc)})"
            raise OpsloopError(f"cannot reach the Dask scheduler at {options.scheduler} ([{section}] scheduler) "
                               f"within {options.connect_timeout:g} s{why}: start it, or check the address and "
                               "the firewall") from None
        return client, None
    from distributed import LocalCluster

    # The scheduler of a local cluster runs in this process: its notes on every shuffle (XGBoost's Dask
    # interface shuffles to find a classifier's classes) are not news to an operator.
    logging.getLogger("distributed.shuffle._scheduler_plugin").setLevel(logging.ERROR)
    try:
        cluster = LocalCluster(n_workers=options.workers, threads_per_worker=options.threads_per_worker or None,
                               memory_limit=options.memory_limit, processes=options.processes,
                               dashboard_address=None,
                               # processes on loopback TCP; threads talk in-process (inproc://, no host)
                               **({"host": "127.0.0.1"} if options.processes else {}))
        client = Client(cluster, timeout=timeout, set_as_default=False)
    except Exception as exc:  # a bad memory_limit string, no free port, a worker that cannot start
        raise ConfigError(f"cannot start a local Dask cluster ({where(options)}, memory_limit "
                          f"{options.memory_limit!r}): {_first_line(exc)}", section=section) from None
    return client, cluster


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@atexit.register
def close_all() -> None:
    """Close every client and the local clusters this process started."""
    with _lock:
        for client, cluster in _clients.values():
            try:
                client.close()
                if cluster is not None:
                    cluster.close()
            except Exception:  # noqa: BLE001 - at exit, a cluster already gone is no news
                pass
        _clients.clear()
