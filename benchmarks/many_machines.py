"""Time one study's budget: `hpsearch run` alone vs `run` joined by two `hpsearch worker`s.

Both sides run the same spec with hpsearch's defaults (`workers: auto`, `stack: auto`) on one
PostgreSQL study:

- alone: `hpsearch run SPEC --storage URL --study NAME`, as a user runs it on one machine: one
  worker process per core, one thread each (hpsearch's own choice);
- joined: that same run, plus two `hpsearch worker --storage URL --study NAME --workers 1`
  started with it, each standing in for one more one-core machine (one process, one thread).

All processes run on this one machine, so the joined side has two more processes than cores:
it measures what joining costs and gains here, not the speed-up of workers that bring cores of
their own.

Needs a PostgreSQL server (default postgresql+psycopg://postgres@127.0.0.1:5432); makes and
drops its own database. Usage: python benchmarks/many_machines.py [--trials 24] [--epochs 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from scratch_database import scratch_database


def spec(path: Path, trials: int, epochs: int) -> Path:
    raw = {
        "name": "bench",
        "device": "cpu",
        "data": {"source": "sklearn:digits"},
        "model": {"hidden": [64]},
        "train": {"epochs": epochs, "early_stopping": None},
        "search": {
            "strategy": "random",
            "trials": trials,
            "space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}},
        },
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def hpsearch(*args: object, threads: int | None = None) -> subprocess.Popen:
    """An `hpsearch` command; `threads` pins a worker's torch threads (None: hpsearch's own)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    return subprocess.Popen(
        [sys.executable, "-m", "hpsearch", *map(str, args), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def timed(url: str, spec_path: Path, runs: Path, study: str, workers: int) -> float:
    started = time.perf_counter()
    # the run keeps its defaults on both sides: workers: auto sets each process's threads
    procs = [
        hpsearch(
            "run",
            spec_path,
            "--storage",
            url,
            "--study",
            study,
            "--runs-dir",
            runs,
        )
    ]
    procs += [
        hpsearch(
            "worker",
            "--storage",
            url,
            "--study",
            study,
            "--runs-dir",
            runs / f"w{i}",
            "--wait",
            5,
            "--workers",
            1,
            threads=1,  # a one-core machine
        )
        for i in range(workers)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a process failed: exit codes {codes}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    with scratch_database() as url, tempfile.TemporaryDirectory() as tmp:
        path = spec(Path(tmp) / "bench.yaml", args.trials, args.epochs)
        alone = timed(url, path, Path(tmp) / "a", "alone", workers=0)
        shared = timed(url, path, Path(tmp) / "b", "shared", workers=2)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}"
    )
    print(f"{args.trials} trials x {args.epochs} epochs (digits, MLP 64)")
    print(f"run alone (workers: auto):        {alone:6.1f} s")
    print(f"run + 2 workers (1 process each): {shared:6.1f} s")
    print(f"speed-up:                         {alone / shared:6.2f}x")


if __name__ == "__main__":
    main()
