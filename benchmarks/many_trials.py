"""A study of thousands of trials on PostgreSQL: does a trial's bookkeeping stay flat?

`hpsearch run` with `workers: 4` on a database searches a model so small that its training
is almost free (one epoch of a 2-unit network on 60 rows), so what is timed is the
bookkeeping around each trial: asking under the budget lock, heartbeats, telling, the live
summary. Reported: trials per second over the first and the last 1,000 (from the trials'
own start and end times in the study), their ratio, and how long the summary and
`hpsearch report` of the finished study take, read from the database alone.

Needs a PostgreSQL server (default postgresql+psycopg://postgres@127.0.0.1:5432); makes and
drops its own database. Usage: python benchmarks/many_trials.py [--trials 10000] [--workers 4]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from scratch_database import scratch_database

WINDOW = 1000


def spec(path: Path, trials: int, workers: int) -> Path:
    raw = {
        "name": "many",
        "device": "cpu",
        "data": {
            "source": "synthetic:classification",
            "synthetic": {"samples": 60, "features": 4, "informative": 2, "classes": 2},
        },
        "model": {"hidden": [2]},
        "train": {"epochs": 1, "batch_size": 64, "early_stopping": None},
        "search": {
            "strategy": "random",
            "trials": trials,
            "workers": workers,
            "stack": "off",  # one trial at a time: each pays its whole bookkeeping
            "space": {"train.lr": {"low": 1e-4, "high": 1e-1, "log": True}},
        },
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def per_second(trials: list[optuna.trial.FrozenTrial]) -> float:
    """Trials finished per second of wall time across `trials` (all workers together)."""
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    return len(trials) / max(1e-9, (end - start).total_seconds())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    with scratch_database() as url, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = spec(folder / "many.yaml", args.trials, args.workers)
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "hpsearch",
                "run",
                str(path),
                "--storage",
                url,
                "--study",
                "many",
                "--runs-dir",
                str(folder / "runs"),
                "--quiet",
            ],
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        wall = time.perf_counter() - started
        trials = optuna.load_study(study_name="many", storage=url).get_trials()
        done = sorted(
            (t for t in trials if t.datetime_complete is not None), key=lambda t: t.number
        )
        first, last = per_second(done[:WINDOW]), per_second(done[-WINDOW:])
        seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
        timed = {}
        for label, command in (
            (
                "report (json, from the database)",
                ["report", "--storage", url, "--study", "many", "--format", "json"],
            ),
            ("report (table)", ["report", "--storage", url, "--study", "many"]),
        ):
            began = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "hpsearch", *command],
                check=True,
                stdout=subprocess.DEVNULL,
                cwd=folder,
            )
            timed[label] = time.perf_counter() - began
    print(f"# many trials, {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores")
    print(f"{len(done)} trials, {args.workers} workers, PostgreSQL: {wall:.0f} s in all")
    print(
        f"first {WINDOW}: {first:.1f} trials/s; last {WINDOW}: {last:.1f} trials/s; "
        f"the last cost {first / last:.2f}x the first (target <= 1.5x)"
    )
    early = statistics.median(seconds[:WINDOW]) * 1000
    late = statistics.median(seconds[-WINDOW:]) * 1000
    print(
        f"a trial's own time (ask to tell): median {early:.0f} ms in the first {WINDOW}, "
        f"{late:.0f} ms in the last"
    )
    for label, took in timed.items():
        print(f"{label}: {took:.1f} s")


if __name__ == "__main__":
    main()
