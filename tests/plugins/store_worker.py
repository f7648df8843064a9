"""A process that registers versions in a store, for the concurrency and SIGKILL tests.

    python store_worker.py URI NAME COUNT [--go FILE] [--pause-after-rename S] [--die-after-rename N]

URI names the store as `[store] uri` would: a directory for the local store,
`postgresql://...?bundles=DIR&schema=S` for the PostgreSQL one. Registers
COUNT versions of NAME (COUNT 0: until killed), printing one line per
registered version. With `--go`, it prints `ready` and waits for FILE to
exist, so that several workers open the store and register at the same moment.
`--pause-after-rename` sleeps up to S seconds after a bundle is renamed into
place (inside the transaction), widening the window a SIGKILL must survive;
`--die-after-rename N` kills this process with SIGKILL right after the Nth
rename, before the commit. Bundles are real: a manifest.json listing the
sha256 of one small file, as `opsloop.bundle` writes them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from opsloop.bundle import FORMAT, MANIFEST, sha256_file


def make_bundle(directory: Path, *, tag: str, metrics: dict[str, float] | None = None) -> dict[str, Any]:
    """Write a minimal, verifiable bundle into `directory` and return its manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.txt").write_text(f"estimator {tag}\n", encoding="utf-8")
    manifest = {
        "format": FORMAT,
        "flavor": "test",
        "task": "classification",
        "metrics": metrics if metrics is not None else {"f1": 0.5},
        "params": {"tag": tag},
        "lineage": {"user": "worker", "tag": tag, "pid": os.getpid()},
        "files": {"model.txt": sha256_file(directory / "model.txt")},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("name")
    parser.add_argument("count", type=int)
    parser.add_argument("--go")
    parser.add_argument("--pause-after-rename", type=float, default=0.0)
    parser.add_argument("--die-after-rename", type=int, default=0)
    args = parser.parse_args(argv)

    from opsloop.plugins import local_store, postgres_store

    if args.pause_after_rename or args.die_after_rename:
        real_rename, renames = os.rename, itertools.count(1)

        def rename(src: Any, dst: Any) -> None:
            real_rename(src, dst)
            if f"{os.sep}bundles{os.sep}" not in str(dst):
                return
            if args.die_after_rename and next(renames) == args.die_after_rename:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(random.uniform(0, args.pause_after_rename))

        os.rename = rename  # type: ignore[assignment]  # what the store moves bundles with, in this process only

    if args.go:  # wait before opening: workers also race to create a new registry
        print("ready", flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(args.go):
            if time.monotonic() > deadline:
                return 2
            time.sleep(0.005)
    store = local_store.open_store(args.uri, Path.cwd()) or postgres_store.open_store(args.uri, Path.cwd())
    assert store is not None, args.uri
    numbers = range(args.count) if args.count else itertools.count()
    for i in numbers:
        staged = store.staging_dir()
        manifest = make_bundle(staged, tag=f"{os.getpid()}-{i}")
        version = store.register(args.name, staged, manifest)
        print(version.version, manifest["params"]["tag"], flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
