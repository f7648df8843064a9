"""Where a server's time goes: drive an ASGI app in-process (no HTTP), timed, optionally under cProfile.

Usage: python benchmarks/serving/profile_app.py WORKDIR [--app opsloop|minimal] [--protocol json|v2]
                                                [--rows 1] [--requests 2000] [--profile] [--top 25]
                                                [--stream 64]

WORKDIR is a project `benchmarks/serving.py --workdir DIR` trained (it keeps
`bodies/` there too). Each request is one `await app(scope, receive, send)`
on one event loop: what the server does per request once uvicorn has parsed
HTTP, so two apps compare without the load generator or the kernel.

`--stream N` drives the shipped default's model as the `opsloop-default` leg
does (`WORKDIR/shipped-default`, model asd-serving-default, unless --model):
one row per request, the next step of one of N series in turn, each series
in time order (the bodies stream.lua sends, made up front).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def opsloop_app(workdir: Path, name: str, threads: int, **settings):
    from opsloop.serving.app import create_app

    app = create_app(model=name, workdir=workdir, threads=threads, **settings)
    app.start()
    return app, {"json": "/predict", "v2": f"/v2/models/{name}/infer"}


def minimal(workdir: Path, name: str, threads: int, **_):
    import legs
    from minimal_app import make_app

    model = legs.trained_model(workdir, name)
    return make_app(str(model.ubj), model.features, threads), {"json": "/predict", "v2": "/infer"}


def stream_bodies(workdir: Path, series: int, n: int, prefix: str) -> list[bytes]:
    """What stream.lua sends for `n` requests of one row each: row c is series c % `series` at step c // `series`
    (5 minutes apart), with the metrics of template line c % lines."""
    import datetime as dt

    lines = (workdir / "bodies" / "stream-template.txt").read_text(encoding="utf-8").splitlines()
    base = dt.datetime(2024, 1, 1)
    return [(f'{{"instances": [{{"entity": "{prefix}s{c % series}", "timestamp": '
             f'"{(base + dt.timedelta(seconds=300 * (c // series))).isoformat()}", {lines[c % len(lines)]}}}]}}')
            .encode() for c in range(n)]


async def drive(app, path: str, body: bytes | list[bytes], n: int) -> list[float]:
    bodies = body if isinstance(body, list) else None
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    statuses: list[int] = []

    current = [body]

    async def receive():
        return {"type": "http.request", "body": current[0], "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    times = []
    for i in range(n):
        if bodies is not None:
            current[0] = bodies[i]
            scope["headers"][1] = (b"content-length", str(len(bodies[i])).encode())
        t0 = time.perf_counter()
        await app(scope, receive, send)
        times.append(time.perf_counter() - t0)
    if set(statuses) != {200}:
        raise SystemExit(f"unexpected statuses: {sorted(set(statuses))}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--model", default="asd-serving")
    parser.add_argument("--app", choices=["opsloop", "minimal"], default="opsloop")
    parser.add_argument("--protocol", choices=["json", "v2"], default="json")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-log", action="store_true", help="opsloop: prediction log off")
    parser.add_argument("--no-fast-path", action="store_true", help="opsloop: replay through LoadedModel.predict")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--stream", type=int, metavar="SERIES",
                        help="the shipped default's model, one row per request of SERIES series in time order")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    bodies = None
    if args.stream:
        args.model = args.model if args.model != "asd-serving" else "asd-serving-default"
        prefix = f"profile{int(time.time())}-"  # new series each run: the log keeps the last run's
        # warm-up: every series' first rows (a series new to the server is looked up in the log, on a thread)
        bodies = stream_bodies(workdir, args.stream, 2 * args.stream + args.requests, prefix)
        workdir = workdir / "shipped-default"
    make = opsloop_app if args.app == "opsloop" else minimal
    app, paths = make(workdir, args.model, args.threads, log_predictions=not args.no_log,
                      fast_path=not args.no_fast_path)
    if bodies is None:
        names = [f"{leg}-{args.protocol}-{args.rows}.json" for leg in ("opsloop", "minimal")]  # the same rows
        body = next((p for p in (workdir / "bodies" / n for n in names) if p.exists()), workdir / names[0]).read_bytes()
        warm = measured = body
    else:
        warm, measured = bodies[:2 * args.stream], bodies[2 * args.stream:]
    asyncio.run(drive(app, paths[args.protocol], warm, 50 if bodies is None else len(warm)))  # warm up
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    start, cpu = time.perf_counter(), time.process_time()
    times = asyncio.run(drive(app, paths[args.protocol], measured, args.requests))
    served = time.perf_counter()
    if hasattr(app, "close"):
        app.close()  # drains the prediction log: its cost counts
    drained, cpu = time.perf_counter(), time.process_time() - cpu
    if profiler:
        profiler.disable()
    q = statistics.quantiles(times, n=100)
    print(json.dumps({"app": args.app, "protocol": args.protocol, "rows": args.rows, "requests": len(times),
                      "log": not args.no_log, "fast_path": not args.no_fast_path,
                      "per_s": round(len(times) / (drained - start), 1), "p50_ms": round(q[49] * 1000, 4),
                      "p99_ms": round(q[98] * 1000, 4), "drain_s": round(drained - served, 3),
                      "cpu_us": round(cpu / len(times) * 1e6, 1)}))  # every thread's, the log writer's too
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
