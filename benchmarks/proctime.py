"""Whole-process timing shared by help_time.py and startup_time.py: wall and CPU, interleaved, medians.

CPU time is the child's user + system time (`getrusage(RUSAGE_CHILDREN)`
before and after each run): on a shared machine it moves much less than wall
time, which also counts the time the process waited for a core.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


#: The environment of every timed process; `bytecode_cache()` may change it.
ENV = dict(os.environ)


def bytecode_cache(directory: Path | None) -> str:
    """Let timed processes cache compiled modules in `directory` (None: leave the environment as it is).

    With PYTHONDONTWRITEBYTECODE set (as on the development machine) an editable
    install compiles every opsloop module from source at each start, which an
    installed wheel, or an editable install without that variable, does not:
    about 70 ms of `plugins list`. The cache goes to a directory of its own
    (PYTHONPYCACHEPREFIX), never into the source tree. Returns a line saying which.
    """
    if directory is None:
        return (f"bytecode cache: as the environment has it (PYTHONDONTWRITEBYTECODE="
                f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r})")
    ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    ENV["PYTHONPYCACHEPREFIX"] = str(directory)
    return f"bytecode cache: on, in {directory} (as an installed package has it); --no-bytecode-cache: off"


def timed(cmd: Sequence[str], cwd: Path | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of `cmd`, output discarded."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(list(cmd), cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def check(commands: Mapping[str, Sequence[str]], cwd: Path | None = None) -> None:
    """Run each command once (warming the file cache); exit with its stderr if one fails."""
    for name, cmd in commands.items():
        done = subprocess.run(list(cmd), cwd=cwd, env=ENV, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{name} failed (exit {done.returncode}); is opsloop installed?\n{done.stderr[-2000:]}")


def measure(commands: Mapping[str, Sequence[str]], runs: int, cwd: Path | None = None) -> dict[str, dict[str, float]]:
    """Every command `runs` times, interleaved (round-robin, the order reversed every other round).

    Returns per command: median wall and CPU seconds, and the wall IQR.
    """
    walls: dict[str, list[float]] = {k: [] for k in commands}
    cpus: dict[str, list[float]] = {k: [] for k in commands}
    names = list(commands)
    for i in range(runs):
        for name in names if i % 2 == 0 else names[::-1]:  # drifting load hits every command alike
            wall, cpu = timed(commands[name], cwd)
            walls[name].append(wall)
            cpus[name].append(cpu)
    out = {}
    for name in names:
        q1, _, q3 = statistics.quantiles(walls[name], n=4) if runs > 1 else (walls[name][0],) * 3
        out[name] = {"wall": statistics.median(walls[name]), "cpu": statistics.median(cpus[name]), "q1": q1, "q3": q3}
    return out


def report(results: Mapping[str, Mapping[str, float]], base: str, runs: int) -> None:
    """A table of medians, with wall and CPU ratios to `base`."""
    print(f"{runs} runs each, interleaved; load average {os.getloadavg()[0]:.2f} at the end; "
          f"{len(os.sched_getaffinity(0))} cores")
    width = max(len(n) for n in results) + 2
    print(f"{'command':<{width}} {'wall ms':>8} {'(IQR)':>15} {'CPU ms':>8}   {'wall x':>7} {'CPU x':>7}"
          f"  (x: of {base})")
    b = results[base]
    for name, r in results.items():
        iqr = f"{r['q1'] * 1000:.0f}-{r['q3'] * 1000:.0f}"
        print(f"{name:<{width}} {r['wall'] * 1000:8.1f} {iqr:>15} {r['cpu'] * 1000:8.1f}   "
              f"{r['wall'] / b['wall']:7.2f} {r['cpu'] / b['cpu']:7.2f}")
