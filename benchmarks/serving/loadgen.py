"""Load generator: `wrk` (preferred) or a threaded http.client fallback, always a separate process.

`run(...)` starts one of them for a fixed duration against one URL with N
keep-alive connections, each POSTing the same JSON body in a closed loop, and
returns throughput, latency percentiles, errors and the client's own CPU time.

Fallback client (when `wrk` is not installed; `apt-get install wrk`):
    python loadgen.py URL BODY_FILE CONNECTIONS SECONDS
prints the same `WRK_JSON {...}` line as post.lua. It is Python with a GIL:
check its ceiling with the `noop` leg before trusting it on fast servers.
"""

from __future__ import annotations

import http.client
import json
import resource
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARK = "WRK_JSON "


def tool() -> str:
    """`wrk` when installed, else `python`."""
    return "wrk" if shutil.which("wrk") else "python"


def run(url: str, body: Path, *, connections: int, seconds: float, threads: int = 1,
        which: str | None = None, stream: tuple[int, int, int, str] | None = None) -> dict:
    """One closed-loop load run; the parsed result plus `client_cpu` (cores used on average).

    `stream`: (series, rows per request, first row number, series name prefix): `body` is a template of rows for `stream.lua`,
    which sends every series' rows in time order (for a server that keeps series history); wrk only.
    """
    which = which or tool()
    if stream is not None and which != "wrk":
        raise RuntimeError("streaming requests need wrk (apt-get install wrk)")
    if which == "wrk":
        script, extra = ("post.lua", []) if stream is None else ("stream.lua", [str(v) for v in stream])
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
               "--latency", "-s", str(HERE / script), url, "--", str(body), *extra]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), url, str(body), str(connections), str(seconds)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{which} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    result = json.loads(lines[-1][len(MARK):])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.update(client=which, client_cpu=cpu / wall, rps=result["requests"] / result["seconds"])
    return result


def _worker(url: urllib.parse.SplitResult, body: bytes, deadline: float, out: list[float], errors: list[int]) -> None:
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    while (now := time.perf_counter()) < deadline:
        try:
            conn.request("POST", url.path or "/", body, headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status >= 400:
                errors[1] += 1
        except (OSError, http.client.HTTPException):
            errors[0] += 1
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            continue
        out.append(time.perf_counter() - now)
    conn.close()


def main() -> None:
    url, body, connections, seconds = sys.argv[1], Path(sys.argv[2]).read_bytes(), int(sys.argv[3]), float(sys.argv[4])
    parts = urllib.parse.urlsplit(url)
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0, 0]
    start = time.perf_counter()
    workers = [threading.Thread(target=_worker, args=(parts, body, start + seconds, latencies[i], errors))
               for i in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    lat = sorted(x for per in latencies for x in per) or [0.0]

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

    print(MARK + json.dumps({"requests": len(lat) if lat != [0.0] else 0, "seconds": elapsed, "bytes": 0,
                             "errors": errors[0], "status_errors": errors[1], "p50_ms": pct(0.5),
                             "p90_ms": pct(0.9), "p99_ms": pct(0.99), "max_ms": lat[-1] * 1000,
                             "mean_ms": sum(lat) / len(lat) * 1000}))


if __name__ == "__main__":
    main()
