"""Serving throughput and latency: raw model, a minimal ASGI server, opsloop's server, `mlflow models serve`.

Usage: python benchmarks/serving.py [--quick] [--seconds 10] [--rounds 3] [--connections 8]
                                    [--legs raw,minimal,opsloop,opsloop-default,mlflow] [--protocols json,v2]
                                    [--threads 1]
                                    [--opsloop-args "--no-fast-path"] [--workdir DIR] [--json OUT]

Trains two XGBoost models through opsloop's lifecycle (`opsloop run` on the
embedded ASD data: preprocess, train, validate, register, deploy, which sets
the `production` alias), each in its own project: the raw-metrics model
(`schema-check`, `impute`: the 19 metrics in, what every leg can serve) and
the shipped default's (its `rolling-features` too, which `opsloop serve`
scores statefully: it keeps each series' last hour, so its leg streams one
row per series per request, series in time order, through wrk's
serving/stream.lua). Then it measures, in the same run,
single-row and 1,000-row requests against:

  raw              the raw-metrics estimator in-process (`predict_proba` on a float32 array): the floor
  minimal          a raw ASGI callable around the same estimator (uvicorn + httptools, 1 worker)
  opsloop          `opsloop serve` of the raw-metrics model (schema checks, fast path, prediction log on)
  opsloop-default  `opsloop serve` of the shipped default's model, streaming: each request the next row of
                   one of 64 series (1,000 rows: the next step of 1,000 of 32,000 series); JSON only
  mlflow           `mlflow models serve` of the raw-metrics model, from the benchmark's own venv

HTTP legs are driven by `wrk` (a closed loop of N keep-alive connections, one
client thread) in a separate process, on 127.0.0.1 only; legs are interleaved
round by round and the medians are reported. Issue 5's target: opsloop's
single-row throughput >= 0.7x the minimal server's. Everything stops by itself;
servers are stopped on exit (SIGTERM, SIGKILL after 60 s), Ctrl-C and `kill`
included. See the serving section of benchmarks/README.md.

For each `opsloop serve` leg it also prints the rows answered and the rows
not logged (issue 9: none may be, at these loads): a request whose rows do
not fit in the log's queue waits for room while the writer works, so the
1,000-row legs run at the rate the prediction log is written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "serving"))

import legs  # benchmarks/serving/legs.py
import loadgen

TARGET = 0.7
SIZES = (1, 1000)
MODEL_NAME = "asd-serving"
SHIPPED_NAME = "asd-serving-default"
#: Servers that are `opsloop serve` (their prediction log is read from /metrics).
OPSLOOP = ("opsloop", "opsloop-default")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per leg, 1 s warm-up, 1 round")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per leg and size (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--connections", type=int, default=8, help="concurrent keep-alive connections")
    parser.add_argument("--legs", default="raw,minimal,opsloop,opsloop-default,mlflow",
                        help="comma-separated legs to run")
    parser.add_argument("--protocols", default="json,v2",
                        help="json (records; MLflow: dataframe_split) and/or v2 (KServe v2 infer, opsloop and minimal)")
    parser.add_argument("--opsloop-args", default="", help='extra `opsloop serve` options, e.g. "--no-fast-path"')
    parser.add_argument("--threads", type=int, default=1,
                        help="XGBoost threads in every leg (opsloop serve's default is 1); 0: the library default")
    parser.add_argument("--workdir", type=Path,
                        help="project dir, kept (a model trained there is reused; the shipped default's in "
                             "DIR/shipped-default); default: a temp dir, removed")
    parser.add_argument("--mlflow-env", type=Path, default=Path(__file__).resolve().parent / ".env",
                        help="the venv with MLflow (created with pip when missing, unless --no-install)")
    parser.add_argument("--no-install", action="store_true", help="never create the MLflow venv")
    parser.add_argument("--client", choices=["wrk", "python"], help="load generator (default: wrk if installed)")
    parser.add_argument("--json", type=Path, help="write every measurement to this file")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.rounds = 3.0, 1.0, 1
    return args


def summarize(runs: list[dict], rows: int) -> dict[str, Any]:
    """Medians over rounds."""
    med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms")}
    for k in ("server_cpu", "client_cpu", "server_rss_mb"):
        vals = [r[k] for r in runs if r.get(k) is not None]
        med[k] = statistics.median(vals) if vals else None
    med["rows_s"] = med["rps"] * rows
    # Requests per second of server CPU: less sensitive than req/s to other load on a shared machine.
    per_cpu = [r["rps"] / r["server_cpu"] for r in runs if r.get("server_cpu")]
    med["per_cpu"] = statistics.median(per_cpu) if per_cpu else None
    med["errors"] = sum(r.get("errors", 0) + r.get("status_errors", 0) for r in runs)
    med["spread"] = (min(r["rps"] for r in runs), max(r["rps"] for r in runs))
    return med


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


W = max(len(label) for label in legs.LABELS.values())  # the leg column's width


def report(results: dict[tuple[str, int], list[dict]], notes: list[str], args: argparse.Namespace) -> dict:
    order = list(legs.LABELS)
    keys = sorted(results, key=lambda k: (k[1], order.index(k[0]) if k[0] in order else len(order)))
    summary = {key: summarize(results[key], key[1]) for key in keys}
    print()
    print(f"{'rows':>5} {'leg':<{W}} {'req/s':>9} {'rows/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'err':>4} {'srv CPU':>7} {'req/CPU-s':>9} {'cli CPU':>7} {'srv MiB':>7}  req/s min-max")
    for (leg, size), s in summary.items():
        def opt(value: float | None, form: Any) -> str:
            return "" if value is None else form(value)

        spread = f"{fmt_rate(s['spread'][0])}-{fmt_rate(s['spread'][1])}" if len(results[leg, size]) > 1 else ""
        print(f"{size:>5} {legs.LABELS.get(leg, leg):<{W}} {fmt_rate(s['rps']):>9} {fmt_rate(s['rows_s']):>11} "
              f"{s['p50_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['errors']:>4} {opt(s['server_cpu'], '{:.2f}'.format):>7} "
              f"{opt(s['per_cpu'], fmt_rate):>9} {opt(s['client_cpu'], '{:.2f}'.format):>7} "
              f"{opt(s['server_rss_mb'], '{:.0f}'.format):>7}  {spread}")
    print(f"\n(CPU: cores used on average during the measurement, out of {legs.cores()} shared by server and client;"
          "\n req/CPU-s: requests per second of server CPU time, the figure least moved by other load;"
          "\n srv MiB: the server's resident memory after the measurement)")
    ratios: dict[str, float] = {}

    def ratio(a: str, b: str, size: int, label: str) -> None:
        if (a, size) in summary and (b, size) in summary:
            ratios[f"{label} {size}-row"] = summary[a, size]["rps"] / summary[b, size]["rps"]
            if summary[a, size]["per_cpu"] and summary[b, size]["per_cpu"]:
                ratios[f"{label} {size}-row per CPU-s"] = summary[a, size]["per_cpu"] / summary[b, size]["per_cpu"]

    for size in SIZES:
        ratio("opsloop", "minimal", size, "opsloop/minimal")
        ratio("opsloop-v2", "minimal-v2", size, "opsloop/minimal v2")
        # Not the same model: the shipped default's rolling features, served statefully (each request a series'
        # next row, its last hour kept by the server), against the minimal server's 19 raw metrics.
        ratio("opsloop-default", "minimal", size, "shipped default streaming/minimal")
        ratio("opsloop-default-v2", "minimal-v2", size, "shipped default/minimal v2")
        ratio("opsloop-default", "opsloop", size, "shipped default/raw-metrics model")
        ratio("opsloop", "mlflow", size, "opsloop/mlflow")
        ratio("minimal", "mlflow", size, "minimal/mlflow")
        ratio("raw", "opsloop", size, "raw/opsloop")
        ratio("raw", "minimal", size, "raw/minimal")
    if ratios:
        print("\nthroughput ratios: median req/s (wall), and requests per second of server CPU time where both are "
              "servers (CPU); opsloop = the raw-metrics model, shipped default = the shipped default's model, "
              "another model than the minimal server's:")
        for name, value in ratios.items():
            if not name.endswith("per CPU-s"):
                per_cpu = ratios.get(f"{name} per CPU-s")
                print(f"  {name:<44} wall x{value:.2f}" + ("" if per_cpu is None else f"   CPU x{per_cpu:.2f}"))
    print()
    for key in ("opsloop/minimal 1-row", "opsloop/minimal v2 1-row"):
        if key in ratios:
            verdict = "MEETS" if ratios[key] >= TARGET else "MISSES"
            print(f"issue 5 target, {key} throughput >= {TARGET}: x{ratios[key]:.2f} {verdict}")
    key = "shipped default streaming/minimal 1-row"
    if key in ratios:
        verdict = "MEETS" if ratios[key] >= TARGET else "MISSES"
        cpu = ratios.get(f"{key} per CPU-s")
        print(f"issue 13 item 5 target, {key} throughput >= {TARGET}: x{ratios[key]:.2f} wall"
              + ("" if cpu is None else f", x{cpu:.2f} CPU") + f" {verdict}")
    logged = [(leg, size, runs) for (leg, size), runs in results.items() if runs and "log_not_logged" in runs[-1]]
    if logged:
        print("\nopsloop prediction log, per leg (summed over its rounds): rows answered in the measurements, rows "
              "not logged (answered while the log's queue was full), rows the log wrote meanwhile (warm-up "
              "backlog included), and the requests still queued at the end of the last round:")
        for leg, size, runs in logged:
            answered = sum(r["requests"] * size for r in runs)
            dropped = sum(r["log_not_logged"] for r in runs)
            written = sum(r["log_written"] for r in runs)
            share = f" ({dropped / answered:.0%})" if answered and dropped else ""
            print(f"  {size:>5}-row {legs.LABELS.get(leg, leg):<{W}} answered {answered:,.0f}  "
                  f"not logged {dropped:,.0f}{share}  written {written:,.0f}  queued {runs[-1]['log_queue']:,.0f}")
    for note in notes:
        print(f"note: {note}")
    return {"summary": {f"{leg} {size}": s for (leg, size), s in summary.items()}, "ratios": ratios,
            "notes": notes, "runs": {f"{leg} {size}": r for (leg, size), r in results.items()},
            "args": {k: str(v) for k, v in vars(args).items()}}


#: The next row number of each streaming leg's rows (by rows per request): every run goes on from the last.
STREAMED: dict[int, int] = {}


def measure(server: legs.Server, url: str, body: Path, args: argparse.Namespace, size: int = 1) -> dict:
    from opsloop_leg import log_state

    def load(seconds: float) -> dict:
        if server.name != "opsloop-default":
            return loadgen.run(url, body, connections=args.connections, seconds=seconds, which=args.client)
        start = STREAMED.get(size, 0)
        # each size streams series of its own: their steps differ
        out = loadgen.run(url, body, connections=args.connections, seconds=seconds, which=args.client,
                          stream=(legs.STREAM_SERIES[size], size, start, f"{legs.RUN}{size}r-"))
        # wrk counts answered requests; a few more may have been sent when it stopped: leave room for them
        STREAMED[size] = start + (out["requests"] + 100 * args.connections) * size
        return out

    load(args.warmup)
    is_opsloop = server.name in OPSLOOP
    before = log_state(server) if is_opsloop else {}
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    result = load(args.seconds)
    result["server_cpu"] = (server.cpu_seconds() - cpu0) / (time.perf_counter() - t0)
    result["server_rss_mb"] = server.rss_mb()
    if is_opsloop:  # is the prediction log keeping up? The server's counters, differenced over this measurement
        after = log_state(server)
        result["log_queue"] = after.get("log_queue", 0.0)
        result["log_written"] = after.get("log_rows", 0.0) - before.get("log_rows", 0.0)
        result["log_not_logged"] = after.get("log_dropped", 0.0) - before.get("log_dropped", 0.0)
    return result


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the servers too, like Ctrl-C
    signal.signal(signal.SIGINT, _interrupt)  # even when started in the background with SIGINT ignored
    wanted = [w.strip() for w in args.legs.split(",") if w.strip()]
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    args.client = args.client or loadgen.tool()
    notes: list[str] = []
    if args.client == "python":
        notes.append("the Python fallback client was used (wrk missing: apt-get install wrk, or --client python); "
                     "compare the noop ceiling with the fastest leg before trusting the figures")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="opsloop-serving-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logdir = workdir / "logs"
    logdir.mkdir(exist_ok=True)
    print(f"machine: {platform.machine()}, {legs.cores()} cores (shared by servers and load generator), "
          f"python {platform.python_version()}; client {args.client}, {args.connections} connections, "
          f"{args.seconds:g} s per leg (+{args.warmup:g} s warm-up), {args.rounds} round(s), "
          f"XGBoost threads {args.threads or 'default'}; workdir {workdir}")

    model = legs.trained_model(workdir, MODEL_NAME)
    print(f"raw-metrics model: {model.ref} @production, {model.describe}")
    shipped = None
    if "opsloop-default" in wanted:
        shipped = legs.trained_model(workdir / "shipped-default", SHIPPED_NAME, shipped=True)
        print(f"shipped default's model: {shipped.ref} @production, {shipped.describe}")
    data = legs.sample_rows(model, max(SIZES))
    results: dict[tuple[str, int], list[dict]] = {}
    servers: list[legs.Server] = []
    try:
        if "raw" in wanted:
            for size in SIZES:
                calls = legs.raw_calls(model, data, size, args.threads)
                if shipped is not None:
                    calls.update(legs.shipped_calls(shipped, data, size))
                for leg, fn in calls.items():
                    results.setdefault((leg, size), []).append(legs.time_calls(fn, args.seconds))
        candidates = {"minimal": lambda: legs.minimal_server(model, args.threads),
                      "opsloop": lambda: legs.opsloop_server(model, workdir, args.threads, args.opsloop_args),
                      "opsloop-default": lambda: legs.opsloop_server(shipped, workdir / "shipped-default",
                                                                     args.threads, args.opsloop_args,
                                                                     name="opsloop-default"),
                      "mlflow": lambda: legs.mlflow_server(model, workdir, args.mlflow_env, not args.no_install,
                                                           args.threads)}
        for name in [n for n in candidates if n in wanted]:
            started, server = time.perf_counter(), None
            try:
                server = candidates[name]()
                servers.append(server)
                server.start(logdir)
                server.endpoints = {p: e for p, e in server.endpoints.items() if p in protocols}
                if name == "opsloop-default":  # it keeps series history: one row per series per request
                    server.endpoints = {p: e for p, e in server.endpoints.items() if p == "json"}
                    legs.check_stream(server, shipped)
                else:
                    legs.check_answers(server, data)
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                notes.append(f"{name}: not available: {str(exc).strip()}")
                print(f"{name}: NOT AVAILABLE: {exc}", file=sys.stderr)
                if server is not None:
                    servers.remove(server)
                    server.stop()
                continue
            print(f"{name}: ready on port {server.port} in {time.perf_counter() - started:.1f} s, answers checked")
            if name in OPSLOOP:
                from opsloop_leg import describe

                notes.append(f"{name}: opsloop serve {args.opsloop_args or '(defaults)'}: {describe(server)}")
        template = legs.stream_template(data, workdir)
        plan = [(s, p, size, template if s.name == "opsloop-default" else legs.write_body(s, p, data, size, workdir))
                for size in SIZES for s in servers for p in s.endpoints]
        noop = next((s for s in servers if s.name == "minimal"), None)
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}/{args.rounds} (load average {os.getloadavg()[0]:.2f}) ...", flush=True)
            if noop is not None:
                results.setdefault(("noop", 1), []).append(
                    measure(noop, noop.url("/noop"), legs.write_body(noop, next(iter(noop.endpoints)), data, 1, workdir), args))
            for server, protocol, size, body in (plan if rnd % 2 == 0 else plan[::-1]):  # drifting load hits all
                leg = server.name if protocol == "json" else f"{server.name}-{protocol}"
                results.setdefault((leg, size), []).append(
                    measure(server, server.url(server.endpoints[protocol].path), body, args, size))
    except KeyboardInterrupt:
        print("interrupted: stopping servers", file=sys.stderr)
        return 130
    finally:
        for server in servers:
            took = server.stop()
            if server.name in OPSLOOP:
                notes.append(f"{server.name}: clean stop (SIGTERM, prediction log drained) took {took:.1f} s"
                             if took is not None else f"{server.name}: no clean stop within 60 s, killed")
        if args.workdir is None:  # the prediction log alone grows by hundreds of MB
            shutil.rmtree(workdir, ignore_errors=True)
    for leg in (*OPSLOOP, "mlflow"):
        if leg in wanted and not any(k[0] in (leg, f"{leg}-v2") for k in results):
            notes.append(f"{leg}: no figures (see above)")
    out = report(results, notes + legs.NOTES, args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"all measurements: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
