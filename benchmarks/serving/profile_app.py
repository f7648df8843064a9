"""Where a server's time goes: drive an ASGI app in-process (no HTTP), timed, optionally under cProfile.

Usage: python benchmarks/serving/profile_app.py WORKDIR [--app opsloop|minimal] [--protocol json|v2]
                                                [--rows 1] [--requests 2000] [--profile] [--top 25]

WORKDIR is a project `benchmarks/serving.py --workdir DIR` trained (it keeps
`bodies/` there too). Each request is one `await app(scope, receive, send)`
on one event loop: what the server does per request once uvicorn has parsed
HTTP, so two apps compare without the load generator or the kernel.
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


async def drive(app, path: str, body: bytes, n: int) -> list[float]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    statuses: list[int] = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    times = []
    for _ in range(n):
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
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    make = opsloop_app if args.app == "opsloop" else minimal
    app, paths = make(workdir, args.model, args.threads, log_predictions=not args.no_log,
                      fast_path=not args.no_fast_path)
    body = (workdir / "bodies" / f"opsloop-{args.protocol}-{args.rows}.json").read_bytes()  # minimal's are the same
    asyncio.run(drive(app, paths[args.protocol], body, 50))  # warm up
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    start = time.perf_counter()
    times = asyncio.run(drive(app, paths[args.protocol], body, args.requests))
    served = time.perf_counter()
    if hasattr(app, "close"):
        app.close()  # drains the prediction log: its cost counts
    drained = time.perf_counter()
    if profiler:
        profiler.disable()
    q = statistics.quantiles(times, n=100)
    print(json.dumps({"app": args.app, "protocol": args.protocol, "rows": args.rows, "requests": len(times),
                      "log": not args.no_log, "fast_path": not args.no_fast_path,
                      "per_s": round(len(times) / (drained - start), 1), "p50_ms": round(q[49] * 1000, 4),
                      "p99_ms": round(q[98] * 1000, 4), "drain_s": round(drained - served, 3)}))
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
