"""The legs of benchmarks/serving.py: the trained model, request bodies, the raw loop, and each server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import Endpoint, Server

HERE = Path(__file__).resolve().parent
NOTES: list[str] = []
#: Two models are served. "raw": the default lifecycle without `rolling-features`, 19 raw metrics in, what the
#: minimal server and MLflow serve too. "shipped default": the shipped default config's preprocessing
#: (`rolling-features` included), which `opsloop serve` scores statefully: it keeps each series' last hour and
#: takes one row per series per request (issue 13, item 4), so its requests stream series in time order.
LABELS = {
    "raw": "raw predict_proba (floor)",
    "raw-inplace": "raw booster.inplace_predict",
    "raw-json": "raw + JSON decode/encode",
    "opsloop-inproc": "LoadedModel.predict in-proc, raw-metrics model",
    "opsloop-default-inproc": "LoadedModel.predict in-proc, shipped default",
    "noop": "client ceiling (/noop)",
    "minimal": "minimal ASGI, JSON records",
    "minimal-v2": "minimal ASGI, v2 infer",
    "opsloop": "opsloop serve, raw-metrics model, JSON",
    "opsloop-v2": "opsloop serve, raw-metrics model, v2",
    "opsloop-default": "opsloop serve, shipped default, streaming",
    "opsloop-default-v2": "opsloop serve, shipped default, streaming, v2",
    "mlflow": "mlflow serve, dataframe_split",
}
#: The shipped default's preprocessing, read from opsloop's own defaults so that the leg follows them.
SHIPPED = "shipped"
CONFIG = """\
# Written by benchmarks/serving.py: the default lifecycle without monitoring and retraining;
# preprocessing: {preprocess_note}.
[project]
name = "{name}"
seed = 42

[data]
source = "embedded:asd"
target = "label"
time = "timestamp"
series = "entity"
train = "timestamp < '2024-01-08 12:00'"
monitor = "timestamp >= '2024-01-08 12:00'"

[store]
uri = ".opsloop"
plugins = ["local-store"]

{preprocess}

{train}

[validate]
plugins = ["kfold"]

[deploy]
plugins = ["batch"]   # deploying sets the `production` alias

[monitor]
plugins = []

[retrain]
plugins = []
"""


def cores() -> int:
    return len(os.sched_getaffinity(0))


@dataclass
class Model:
    """The registered version behind `production`, loaded from its bundle."""

    ref: str
    name: str
    loaded: Any  # opsloop.bundle.LoadedModel
    ubj: Path
    features: list[str]
    columns: list[str]  # every raw input column of the bundle's schema

    @property
    def describe(self) -> str:
        steps = f"steps {', '.join(s['plugin'] for s in self.loaded.manifest['steps'])}"
        estimator = self.loaded.estimator
        if not hasattr(estimator, "get_booster"):  # the shipped default's ensemble
            return f"{estimator!r}, {len(self.features)} features; {steps}"
        return (f"XGBoost {estimator.__class__.__name__}, {estimator.get_booster().num_boosted_rounds()} trees, "
                f"max_depth {self.loaded.manifest['params'].get('max_depth')}, {len(self.features)} features; "
                f"{steps}")


def default_section(section: str) -> tuple[str, list[str]]:
    """The shipped default's `[section]` and its plugins' tables, as TOML (values are lists of strings and
    numbers: JSON is TOML), and the plugins it selects."""
    from opsloop import config as config_mod

    table = config_mod.default_table()[section]
    lines = [f"[{section}]", f"plugins = {json.dumps(table['plugins'])}"]
    for plugin, options in table.items():
        if isinstance(options, dict):
            lines += ["", f"[{section}.{plugin}]", *(f"{k} = {json.dumps(v)}" for k, v in options.items())]
    return "\n".join(lines), list(table["plugins"])


def preprocess_toml(shipped: bool) -> tuple[str, str]:
    """The `[preprocess]` tables of the config, and a note saying what they are."""
    if not shipped:
        return '[preprocess]\nplugins = ["schema-check", "impute"]', "schema-check, impute (raw metrics in)"
    toml, plugins = default_section("preprocess")
    return toml, f"the shipped default's ({', '.join(plugins)})"


def train_toml(shipped: bool) -> str:
    """The `[train]` tables: XGBoost alone for the raw-metrics model (every leg serves it), the shipped default's
    own (its ensemble) for the default's model."""
    return default_section("train")[0] if shipped else '[train]\nplugins = ["xgboost"]'


def trained_model(workdir: Path, name: str, *, shipped: bool = False) -> Model:
    """Run `opsloop run` in `workdir` unless `name@production` already exists there; load its bundle.

    `shipped`: preprocess as the shipped default config does (`rolling-features` included).
    """
    from opsloop import config as config_mod
    from opsloop.bundle import read_bundle
    from opsloop.cli import invoke
    from opsloop.errors import StoreError
    from opsloop.manager import PluginManager
    from opsloop.session import Session

    workdir.mkdir(parents=True, exist_ok=True)
    toml = workdir / "opsloop.toml"
    if not toml.exists():
        preprocess, note = preprocess_toml(shipped)
        toml.write_text(CONFIG.format(name=name, preprocess=preprocess, preprocess_note=note,
                                      train=train_toml(shipped)), encoding="utf-8")
    with contextlib.chdir(workdir):
        cfg = config_mod.read(toml)
        try:
            with Session.open(cfg, sections=("store",)).open_store() as store:
                store.resolve(f"{name}@production")
            print(f"reusing the model trained earlier in {workdir}")
        except StoreError:
            started = time.perf_counter()
            print("training through the lifecycle: opsloop run (preprocess, train, validate, register, deploy) ...")
            if invoke(["run", "--quiet"]) != 0:
                raise SystemExit("opsloop run failed")
            print(f"opsloop run took {time.perf_counter() - started:.0f} s")
        with Session.open(cfg, sections=("store",)).open_store() as store:
            version = store.resolve(f"{name}@production")
        loaded = read_bundle(Path(version.path).resolve(), PluginManager(), ref=version.ref, digest=version.digest)
    return Model(ref=version.ref, name=name, loaded=loaded, ubj=Path(version.path).resolve() / "model.ubj",
                 features=loaded.features, columns=[c["name"] for c in loaded.manifest["input_schema"]])


@dataclass
class Data:
    records: list[dict]  # raw rows as a client sends them: entity, ISO timestamp, features
    X: Any  # float32 features, the raw model's input
    frame: Any  # the raw rows as the bundle's schema types them
    scores: Any  # the raw model's P(label = 1) per row


def sample_rows(model: Model, n: int) -> Data:
    """`n` real rows of the monitoring period, as JSON-able records (float32 values in their shortest form)."""
    import numpy as np
    import pandas as pd
    from opsloop import datasets

    frame = datasets.load("asd")
    frame = frame[frame["timestamp"] >= pd.Timestamp("2024-01-08 12:00")].sample(n, random_state=7)
    frame = frame[model.columns].reset_index(drop=True)
    numeric = [c for c in model.columns if c not in ("entity", "timestamp")]
    records = [{c: (r[c].isoformat() if c == "timestamp" else float(str(r[c])) if c in numeric else r[c])
                for c in model.columns} for r in frame.to_dict("records")]
    X = np.ascontiguousarray(frame[model.features].to_numpy(dtype=np.float32))
    scores = model.loaded.estimator.predict_proba(X)[:, 1]
    return Data(records=records, X=X, frame=frame, scores=scores)


def instances(rows: list[dict]) -> bytes:
    """Plain JSON records: every raw column of the bundle's schema, by name."""
    return json.dumps({"instances": rows}).encode()


def v2_encoder(model: Model) -> Callable[[list[dict]], bytes]:
    """Open Inference Protocol (KServe v2) `infer` body: one [n] tensor per raw column, JSON data."""
    types = {c["name"]: ("FP32" if c["dtype"].startswith("float") else "BYTES")
             for c in model.loaded.manifest["input_schema"]}

    def encode(rows: list[dict]) -> bytes:
        return json.dumps({"inputs": [{"name": c, "shape": [len(rows)], "datatype": types[c],
                                       "data": [r[c] for r in rows]} for c in model.columns]}).encode()

    return encode


def v2_scores(response: dict) -> list[float]:
    return next(o["data"] for o in response["outputs"] if o["name"] == "score")


def raw_calls(model: Model, data: Data, size: int, threads: int) -> dict[str, Callable[[], Any]]:
    """In-process calls, one request's worth of rows each, with `threads` XGBoost threads (0: its default)."""
    est, X, frame = model.loaded.estimator, data.X[:size], data.frame.iloc[:size]
    est.set_params(n_jobs=threads or None)
    booster = est.get_booster()
    body = instances(data.records[:size])
    features = model.features

    def json_and_raw() -> bytes:  # what the minimal server does, without HTTP
        import numpy as np

        rows = json.loads(body)["instances"]
        score = est.predict_proba(np.array([[r[f] for f in features] for r in rows], dtype=np.float32))[:, 1]
        return json.dumps({"predictions": score.tolist()}).encode()

    return {"raw": lambda: est.predict_proba(X), "raw-inplace": lambda: booster.inplace_predict(X),
            "raw-json": json_and_raw, "opsloop-inproc": lambda: model.loaded.predict(frame)}


def shipped_calls(model: Model, data: Data, size: int) -> dict[str, Callable[[], Any]]:
    """The shipped default's model in-process: `LoadedModel.predict`, what its server's replay path calls."""
    frame = data.frame.iloc[:size].reset_index(drop=True)
    return {"opsloop-default-inproc": lambda: model.loaded.predict(frame)}


def time_calls(fn: Callable[[], Any], seconds: float, max_calls: int = 500_000) -> dict:
    """Call `fn` back to back for `seconds` (or `max_calls`): calls per second and latency percentiles."""
    for _ in range(3):
        fn()
    lat: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    while len(lat) < max_calls:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        if t1 >= deadline:
            break
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
    return {"requests": len(lat), "seconds": elapsed, "rps": len(lat) / elapsed, "p50_ms": q[49] * 1000,
            "p99_ms": q[98] * 1000, "errors": 0, "status_errors": 0, "server_cpu": None, "client_cpu": None}


def check_answers(server: Server, data: Data, n: int = 50, scores: Any = None) -> None:
    """Every endpoint's answers for `n` rows equal the raw model's (scores to 1e-5, or labels), or `scores`."""
    import numpy as np

    expected = data.scores[:n] if scores is None else scores
    for protocol, end in server.endpoints.items():
        got = np.asarray(server.predict(protocol, data.records[:n]), dtype=np.float64)
        want = expected if end.answers == "score" else (expected > 0.5).astype(np.float64)
        if got.shape != want.shape or not np.allclose(got, want, atol=1e-5):
            raise ValueError(f"{server.name} ({protocol}) answers differ from the raw model's: {got[:5]} vs {want[:5]}")


#: Series the streaming leg cycles through, by rows per request: a series comes back 64 requests later (single
#: rows), or 32 requests later (1,000 rows: one step of 1,000 series), so that the 8 connections' requests for
#: one series never overtake each other.
STREAM_SERIES = {1: 64, 1000: 32_000}


def stream_template(data: Data, workdir: Path) -> Path:
    """The rows `stream.lua` sends, one per line: each record's members without series and time (it adds them)."""
    path = workdir / "bodies" / "stream-template.txt"
    path.parent.mkdir(exist_ok=True)
    lines = [json.dumps({k: v for k, v in r.items() if k not in ("entity", "timestamp")})[1:-1] for r in data.records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


#: A prefix of this run's series names: a project reused with --workdir keeps the last run's series in its
#: prediction log, from which the server reads them back (and refuses their earlier times).
RUN = f"run{os.getpid()}-{int(time.time())}-"


def check_stream(server: Server, model: Model, steps: int = 40) -> None:
    """One row per request of two real series, interleaved in time order: each answer must be, bit for bit,
    what `LoadedModel.predict` of the whole stretch gives that row (the server keeps each series' history)."""
    import pandas as pd
    from opsloop import datasets

    frame = datasets.load("asd")
    frame = frame[frame["entity"].isin(["omi-3", "omi-4"]) & (frame["timestamp"] >= pd.Timestamp("2024-01-09"))]
    frame = frame.sort_values(["timestamp", "entity"], kind="stable").head(2 * steps)[model.columns]
    frame = frame.reset_index(drop=True)
    frame["entity"] = RUN + frame["entity"].astype(str)
    want = model.loaded.predict(frame)["score"].tolist()
    for i, r in enumerate(frame.to_dict("records")):
        row = {c: (v.isoformat() if c == "timestamp" else v if c == "entity" else float(v)) for c, v in r.items()}
        got = server.predict("json", [row])
        if got != [want[i]]:
            raise ValueError(f"{server.name}: row {i} ({row['entity']} {row['timestamp']}) scored {got}, batch "
                             f"scoring of the whole stretch gives {want[i]}")


def write_body(server: Server, protocol: str, data: Data, size: int, workdir: Path) -> Path:
    path = workdir / "bodies" / f"{server.name}-{protocol}-{size}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(server.endpoints[protocol].encode(data.records[:size]))
    return path


def omp_env(threads: int) -> dict[str, str]:
    """OMP_NUM_THREADS for a server process: XGBoost's default thread count, when --threads is not 0."""
    return {"OMP_NUM_THREADS": str(threads)} if threads else {}


def minimal_server(model: Model, threads: int) -> Server:
    features = ",".join(model.features)
    return Server(name="minimal", cmd=[sys.executable, str(HERE / "minimal_app.py"), str(model.ubj), features, "{port}",
                                       str(threads)], env=omp_env(threads), ready_path="/",
                  endpoints={"json": Endpoint("/predict", instances, lambda r: r["predictions"]),
                             "v2": Endpoint("/infer", v2_encoder(model), v2_scores)})


def opsloop_server(model: Model, workdir: Path, threads: int, extra: str = "", name: str = "opsloop") -> Server:
    from opsloop_leg import opsloop_server as make

    return make(model, workdir, threads, extra, name=name)


def mlflow_env(env: Path, install: bool) -> Path:
    """The venv's Python with MLflow (and opsloop's XGBoost version), created with pip if allowed."""
    import xgboost

    python = env / "bin" / "python"
    if not python.exists():
        if not install:
            raise RuntimeError(f"no MLflow venv at {env} (run without --no-install to create it)")
        print(f"creating {env} with MLflow (pip, PyPI) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "mlflow", f"xgboost=={xgboost.__version__}",
                        "pandas"], check=True)
    probe = subprocess.run([str(python), "-c", "import mlflow, xgboost; print(mlflow.__version__, xgboost.__version__)"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise RuntimeError(f"MLflow does not import in {env}: {probe.stderr.strip().splitlines()[-1:]}")
    mlflow_version, xgb_version = probe.stdout.split()
    NOTES.append(f"mlflow {mlflow_version} (xgboost {xgb_version} in its venv, {xgboost.__version__} in opsloop's)")
    return python


def mlflow_server(model: Model, workdir: Path, env: Path, install: bool, threads: int) -> Server:
    python = mlflow_env(env, install)
    out = workdir / "mlflow-model"
    saved = subprocess.run([str(python), str(HERE / "mlflow_model.py"), str(model.ubj), ",".join(model.features),
                            str(out)], capture_output=True, text=True, check=False)
    if saved.returncode != 0:
        raise RuntimeError(f"mlflow.xgboost.save_model failed: {saved.stderr.strip()[-800:]}")
    features = model.features

    def encode(rows: list[dict]) -> bytes:  # MLflow's own columnar format, features only (its signature)
        return json.dumps({"dataframe_split": {"columns": features,
                                               "data": [[r[f] for f in features] for r in rows]}}).encode()

    mlflow = shutil.which("mlflow", path=str(python.parent)) or str(python.parent / "mlflow")
    return Server(name="mlflow", cmd=[mlflow, "models", "serve", "-m", str(out), "--env-manager", "local",
                                      "-h", "127.0.0.1", "-p", "{port}", "-w", "1"],
                  ready_path="/ping", cwd=workdir,
                  endpoints={"json": Endpoint("/invocations", encode, lambda r: r["predictions"], answers="label")},  # it execs `uvicorn` from PATH: the venv's
                  env={"PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(env),
                       **omp_env(threads)})
