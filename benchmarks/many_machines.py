"""Time one study's budget: `hpsearch run` alone vs `run` joined by two `hpsearch worker`s.

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
            "workers": 1,
            "space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}},
        },
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def hpsearch(*args: object, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(
        [sys.executable, "-m", "hpsearch", *map(str, args), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def timed(url: str, spec_path: Path, runs: Path, study: str, workers: int) -> float:
    started = time.perf_counter()
    # alone: the run may use every core; shared: each process gets one core's worth
    threads = os.cpu_count() if workers == 0 else 1
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
            threads=threads,
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
            threads=threads,
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
    print(f"run alone:               {alone:6.1f} s")
    print(f"run + 2 workers:         {shared:6.1f} s")
    print(f"speed-up:                {alone / shared:6.2f}x")


if __name__ == "__main__":
    main()
