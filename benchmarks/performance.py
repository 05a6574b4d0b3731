"""hpsearch's speed and memory, each figure measured side by side in one run.

    python benchmarks/performance.py [--only FIGURE ...] [--rows 20000] [--repeats 3]
        [--quick] [--json FILE]

The full run takes about 24 minutes on 2 cores (time-to-quality about 14 of them, the other
figures a few each, as each prints); `--quick` runs every
figure at tiny sizes (a few trials of 1-3 epochs, one repetition) to check the script, in a
few minutes.

Figures (see the README's Performance section for the latest table):
  overhead         N fixed trainings through `hpsearch run` vs a bare PyTorch loop doing the
                   same trainings (same data, epochs, batch size, per-epoch train/dev metrics);
                   one thread each
  vs-naive         a 64-configuration log-uniform random search written as tutorials do
                   (benchmarks/tutorial_search.py: study.optimize, nn.Module + Adam +
                   DataLoader per trial) vs the same in hpsearch (`workers: auto`, stack auto
                   and off), against two baselines: the tutorial in 1 process (torch's default
                   threads, i.e. every core) and the tutorial in 2 processes sharing one Optuna
                   journal file (half the trials each, one thread each). hpsearch runs in this
                   process (its worker processes start, import and load within the timing);
                   so does the 1-process tutorial; the 2-process tutorial is timed from starting
                   its processes (imports and loading the splits count, as for hpsearch's
                   workers) to both exiting
  small-search     a 16-trial random search on digits (30 epochs, batch 32, hidden [64] or
                   [128, 64], lr log-uniform), each side a whole process timed from start to
                   exit: `python -m hpsearch run SPEC --quiet` (workers: auto, stack: auto) vs
                   the tutorial script in 1 process (loading digits with scikit-learn itself,
                   torch's default threads); the median of --repeats alternating repetitions.
                   Also hpsearch's time to first trial: from the process start to the first
                   trial's datetime_start in the run's journal (when a worker took the trial;
                   its training starts a few milliseconds later), less the time importing what
                   a run loads before it takes in one process (`python -c "import
                   hpsearch.cli, hpsearch.engine, hpsearch.objective, sklearn.datasets"`,
                   measured in the same repetition; a run splits these imports between the
                   planner and its workers' fork server, so the difference can be negative).
                   hpsearch `workers: auto` is one process per core, one thread each, in every
                   figure that does not pin it
  time-to-quality  on digits, a CSV with categorical columns (written here) and diabetes
                   (regression): hpsearch's default search (random, workers: auto, stack: auto,
                   early stopping on) vs the tutorial with TPE in 1 process (torch's default
                   threads) and in 2 processes (shared journal file, one thread each), all
                   whole processes with the same space, epochs, batch size and time budget
                   (each starts trials for 20 s: hpsearch's search.timeout, Optuna's
                   study.optimize(timeout=...)), on the same splits (the tutorial reads
                   hpsearch's splits from a file and reports each trial's best epoch's dev
                   loss, as hpsearch does). The quality
                   line is 1% above the best dev loss any of the three compared methods
                   (hpsearch's default, the tutorial in 1 and in 2 processes) reached in that
                   repetition; the figure is each method's wall-clock from its start until a
                   finished trial reaches the line (median of --repeats; "never" when it does
                   not). hpsearch with strategy: tpe runs too, timed to the same line and
                   shown beside the baselines, to tell the strategy's part from the tool's
  scaling          caviar with 2 workers vs 1 worker (one thread each) on the same search,
                   alternating, the median of 2 repetitions' ratios; beside each repetition
                   the bare loop with half as many trainings in 2 processes vs 1 (one thread
                   each), which says how far the machine itself scales at that moment
  stacked          K=16 same-shape trials trained stacked vs one at a time (1 thread), the
                   median of 5 alternating repetitions; also the share of the stacked time
                   spent evaluating every train and dev row after each epoch (the same work
                   per model on both sides) and the ratio without it
  bookkeeping      hpsearch's own cost per trial (storage, files, sampling) over 1000 no-op trials
  memory           peak RSS of a worker and its growth over 300 tiny trials
  pruning          random search with the asha, hyperband and median pruners vs without: best
                   dev loss and epochs trained

With a GPU (torch.cuda.is_available()), stacked adds K=16 and K=64 on cuda and time-to-quality
runs again on cuda (every side on the one GPU); without one, the table says they were skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
from optuna.trial import TrialState
from sklearn.datasets import make_classification
from torch import nn

# benchmarks/ is the script's folder, so it is on sys.path: the baseline lives beside us
from tutorial_search import Splits, make_objective, search

import hpsearch.objective as objective
import hpsearch.train as train_module
import hpsearch.workers as worker_module
from hpsearch.data import Dataset, load_dataset
from hpsearch.engine import RunOptions, run_spec
from hpsearch.model import build_mlp
from hpsearch.processes import prestart
from hpsearch.spec import Spec, load_spec, spec_from_dict
from hpsearch.train import Member, TrainResult, train, train_model

optuna.logging.set_verbosity(optuna.logging.ERROR)

FIGURES = (
    "overhead",
    "vs-naive",
    "small-search",
    "time-to-quality",
    "scaling",
    "stacked",
    "bookkeeping",
    "memory",
    "pruning",
)
TUTORIAL = Path(__file__).resolve().parent / "tutorial_search.py"


@dataclass(frozen=True)
class Sizes:
    """How large each figure's workload is (the full run's, or --quick's)."""

    rows: int = 20000
    repeats: int = 3  # small-search and time-to-quality
    overhead_trainings: int = 16
    naive_configurations: int = 64
    small_trials: int = 16
    small_epochs: int = 30
    quality_seconds: float = 20.0  # each method's time budget per data set
    quality_epochs: int = 20
    quality_csv_rows: int = 2000
    scaling_trials: int = 32
    scaling_epochs: int = 10
    scaling_repeats: int = 2
    stacked_repeats: int = 5
    bookkeeping_trials: int = 1000
    memory_trials: int = 300
    pruning_trials: int = 48
    pruning_epochs: int = 27


QUICK = Sizes(
    rows=2000,
    repeats=1,
    overhead_trainings=2,
    naive_configurations=4,
    small_trials=4,
    small_epochs=2,
    quality_seconds=4.0,
    quality_epochs=2,
    quality_csv_rows=600,
    scaling_trials=4,
    scaling_epochs=1,
    scaling_repeats=1,
    stacked_repeats=1,
    bookkeeping_trials=60,
    memory_trials=60,
    pruning_trials=8,
    pruning_epochs=3,
)


# --- specs and data ---------------------------------------------------------------------------


def base_spec(rows: int, epochs: int = 3, search: dict | None = None, **train: Any) -> dict:
    """The reference workload: 20 features -> 64 -> 64 -> 2, batch 64, `rows` training rows."""
    raw: dict[str, Any] = {
        "name": "bench",
        "seed": 0,
        "device": "cpu",
        # 60% of the samples become the train split
        "data": {
            "source": "synthetic:classification",
            "synthetic": {"samples": math.ceil(rows / 0.6), "features": 20, "noise": 0.05},
        },
        "model": {"hidden": [64, 64], "init": "default"},  # torch's, as the bare loops use
        "train": {"epochs": epochs, "batch_size": 64, "early_stopping": None, **train},
        "objective": {"metric": "dev_loss"},
    }
    if search is not None:
        raw["search"] = search
    return raw


def write_spec(folder: Path, raw: dict) -> Path:
    path = folder / f"spec-{len(list(folder.glob('spec-*')))}.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return path


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def search_run(folder: Path, raw: dict) -> tuple[float, dict]:
    """Time one `hpsearch run` (in this process; caviar workers are spawned as usual)."""
    spec_path = write_spec(folder, raw)
    seconds, result = timed(lambda: run_spec(spec_path, RunOptions(runs_dir=folder / "runs")))
    return seconds, result.summary


def tutorial_splits(data: Dataset) -> Splits:
    """hpsearch's train and dev splits as the tutorial script reads them, so losses compare
    (a regression target stays standardized, as hpsearch trains on it)."""
    train_split, dev = data.splits["train"], data.splits["dev"]
    regression = data.task == "regression"
    return Splits(
        train_split.X,
        train_split.y,
        dev.X,
        dev.y,
        "regression" if regression else "classification",
        1 if regression else len(data.classes or []),
    )


def write_splits(path: Path, splits: Splits) -> Path:
    arrays = dataclasses.asdict(splits)
    arrays["task"], arrays["n_out"] = np.array(splits.task), np.array(splits.n_out)
    np.savez(path, **arrays)
    return path


def write_categorical_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """A 3-class table with 5 numeric and 3 string categorical columns (binned informative
    features, so the categories carry signal) and 3% label noise."""
    X, y = make_classification(
        n_samples=rows,
        n_features=8,
        n_informative=6,
        n_redundant=0,
        n_classes=3,
        flip_y=0.03,
        random_state=seed,
    )
    frame = pd.DataFrame(X[:, :5], columns=[f"x{i}" for i in range(5)])
    categorical = {
        "colour": ["red", "green", "blue", "grey"],
        "size": ["S", "M", "L"],
        "region": ["north", "south", "east", "west", "centre"],
    }
    for column, (name, labels) in enumerate(categorical.items(), start=5):
        frame[name] = pd.qcut(X[:, column], len(labels), labels=labels).astype(str)
    frame["label"] = np.array(["alpha", "beta", "gamma"])[y]
    frame.to_csv(path, index=False)
    return path


# --- whole processes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """Processes timed from their start to the last one's exit."""

    at: float  # time.time() just before the first process started (journal times compare)
    seconds: float


def run_processes(folder: Path, commands: list[list[str]]) -> Started:
    """Start `commands` together and wait for all; stderr goes to a file, shown on failure."""
    logs = [folder / f"stderr-{uuid.uuid4().hex[:8]}.txt" for _ in commands]
    at, clock = time.time(), time.perf_counter()
    processes = []
    for command, log in zip(commands, logs, strict=True):
        with log.open("w") as handle:
            processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle))
    codes = [process.wait() for process in processes]
    seconds = time.perf_counter() - clock
    for command, code, log in zip(commands, codes, logs, strict=True):
        if code != 0:
            raise SystemExit(f"{' '.join(command)} exited {code}:\n{log.read_text()[-3000:]}")
    return Started(at, seconds)


def import_seconds(folder: Path) -> float:
    """What starting Python and importing what a run loads before its first trial takes, one
    module after another in a fresh process: hpsearch's command line and engine, its training
    (torch) and scikit-learn's bundled data sets. A run splits these between the planner and
    the fork server its workers start from, side by side."""
    code = "import hpsearch.cli, hpsearch.engine, hpsearch.objective, sklearn.datasets"
    return run_processes(folder, [[sys.executable, "-c", code]]).seconds


def hpsearch_process(folder: Path, spec_path: Path) -> tuple[Started, list]:
    """`python -m hpsearch run SPEC --quiet` as a whole process; the run's trials as its
    journal recorded them (each trial's datetime_start and datetime_complete)."""
    runs = folder / f"runs-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "hpsearch", "run", str(spec_path), "--quiet"]
    started = run_processes(folder, [[*command, "--runs-dir", str(runs)]])
    (run_root,) = runs.iterdir()
    # the run's study is named in summary.json ("study"); the journal is study.log
    study_name = json.loads((run_root / "summary.json").read_text())["study"]
    backend = optuna.storages.journal.JournalFileBackend(str(run_root / "study.log"))
    study = optuna.load_study(
        study_name=study_name, storage=optuna.storages.JournalStorage(backend)
    )
    return started, study.get_trials(deepcopy=False)


def tutorial_processes(
    folder: Path,
    data: str,
    processes: int,
    trials: int | None,
    seed: int,
    options: list[str],
    timeout: float | None = None,
) -> tuple[Started, list[dict]]:
    """The tutorial script in `processes` whole processes: one with torch's default threads,
    or several sharing one Optuna journal file, one thread and a share of the trials each (and
    a sampler seed each, or they would propose the same points); with `timeout`, each starts
    trials until that many seconds have passed (and `trials` None: no count). Returns each
    finished trial's record (number, wall-clock finish, value)."""
    tag = uuid.uuid4().hex[:8]
    records = [folder / f"record-{tag}-{i}.jsonl" for i in range(processes)]
    commands = []
    for i, record in enumerate(records):
        command = [sys.executable, str(TUTORIAL), data]
        if trials is not None:
            command += ["--trials", str(trials // processes + (i < trials % processes))]
        if timeout is not None:
            command += ["--timeout", str(timeout)]
        command += ["--seed", str(seed * processes + i), "--record", str(record), *options]
        if processes > 1:
            command += ["--journal", str(folder / f"journal-{tag}.log"), "--threads", "1"]
        commands.append(command)
    started = run_processes(folder, commands)
    texts = [record.read_text() for record in records if record.exists()]
    return started, [json.loads(line) for text in texts for line in text.splitlines()]


def tutorial_options(
    epochs: int, batch_size: int, lr: tuple[float, float], hidden: list[str]
) -> list[str]:
    return [
        *("--epochs", str(epochs), "--batch-size", str(batch_size)),
        *("--lr", str(lr[0]), str(lr[1]), "--hidden", *hidden),
    ]


def hidden_arg(shape: list[int]) -> str:
    """A hidden shape as the tutorial script's --hidden takes it: [128, 64] -> 128-64."""
    return "-".join(map(str, shape))


# --- the bare loop ----------------------------------------------------------------------------


def bare_mlp(n_in: int, n_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(n_in, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, n_out)
    )


@torch.inference_mode()
def bare_metrics(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    outputs = model(X)
    model.train()
    loss = nn.functional.cross_entropy(outputs, y).item()
    return loss, (outputs.argmax(1) == y).double().mean().item()


def bare_loop(spec: Spec, trainings: int) -> float:
    """What a careful hand-written script does: tensors in memory, a permutation per epoch,
    train and dev loss/accuracy after each epoch. Returns the last dev loss."""
    data = load_dataset(spec.data, spec.seed)
    train, dev = data.splits["train"], data.splits["dev"]
    X, y = torch.as_tensor(train.X), torch.as_tensor(train.y)
    X_dev, y_dev = torch.as_tensor(dev.X), torch.as_tensor(dev.y)
    dev_loss = math.nan
    for seed in range(trainings):
        torch.manual_seed(seed)
        model = bare_mlp(X.shape[1], 2)
        optimizer = torch.optim.Adam(model.parameters(), lr=spec.train.lr)
        for _ in range(spec.train.epochs):
            for index in torch.randperm(len(X)).split(spec.train.batch_size):
                loss = nn.functional.cross_entropy(model(X[index]), y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            bare_metrics(model, X, y)
            dev_loss, _ = bare_metrics(model, X_dev, y_dev)
    return dev_loss


# --- the figures ------------------------------------------------------------------------------

Row = dict[str, Any]


def row(figure: str, measured: str, baseline: str, ratio: float, target: str, met: bool) -> Row:
    return {
        "figure": figure,
        "hpsearch": measured,
        "baseline": baseline,
        "ratio": round(ratio, 3),
        "target": target,
        "met": met,
    }


def fig_overhead(folder: Path, sizes: Sizes) -> list[Row]:
    trainings = sizes.overhead_trainings
    torch.set_num_threads(1)
    search = {
        "strategy": "random",
        "trials": trainings,
        "workers": 1,
        "stack": "off",
        "space": {"train.lr": {"values": [1e-3]}},
    }
    raw = base_spec(sizes.rows, search=search)
    bare_loop(spec_from_dict(raw), 1)  # one-off start-up costs (imports) paid before timing
    bare_seconds, _ = timed(lambda: bare_loop(spec_from_dict(raw), trainings))
    ours, _ = search_run(folder, raw)
    ratio = ours / bare_seconds
    return [
        row(
            "overhead",
            f"{ours:.1f} s",
            f"{bare_seconds:.1f} s bare loop",
            ratio,
            "<= 1.10x",
            ratio <= 1.10,
        )
    ]


def fig_vs_naive(folder: Path, sizes: Sizes) -> list[Row]:
    """hpsearch (workers: auto) against the tutorial search in 1 process and in 2 processes,
    interleaved: tutorial 1, stack auto, tutorial 2, stack off."""
    configurations, lr = sizes.naive_configurations, (1e-4, 1e-1)
    raw = base_spec(sizes.rows)
    spec = spec_from_dict(raw)
    splits = tutorial_splits(load_dataset(spec.data, spec.seed))
    data_file = write_splits(folder / "vs-naive.npz", splits)
    hidden = [hidden_arg(raw["model"]["hidden"])]
    epochs, batch_size = spec.train.epochs, spec.train.batch_size

    def one_process() -> tuple[float, float]:
        torch.set_num_threads(os.cpu_count() or 1)  # torch's default: the whole machine
        torch.manual_seed(0)  # as the script seeds itself
        tutorial = make_objective(splits, epochs, batch_size, lr, hidden)
        sampler = optuna.samplers.RandomSampler(seed=0)
        return timed(lambda: search(tutorial, configurations, sampler))

    def two_processes() -> tuple[float, float]:
        options = tutorial_options(epochs, batch_size, lr, hidden)
        started, records = tutorial_processes(folder, str(data_file), 2, configurations, 0, options)
        return started.seconds, min(r["value"] for r in records if r["value"] is not None)

    def ours(stack: str) -> tuple[float, float]:
        search_section = {
            "strategy": "random",
            "trials": configurations,
            "stack": stack,
            "space": {"train.lr": {"low": lr[0], "high": lr[1], "log": True}},
        }
        seconds, summary = search_run(folder, base_spec(sizes.rows, search=search_section))
        return seconds, summary["best"]["value"]

    baselines, measured = {}, {}
    baselines["1 process"] = one_process()
    measured["auto"] = ours("auto")
    baselines["2 processes"] = two_processes()
    measured["off"] = ours("off")
    results = []
    for stack, target in (("auto", 5.0), ("off", 3.0)):
        seconds, best = measured[stack]
        for name, (naive_seconds, naive_best) in baselines.items():
            speedup = naive_seconds / seconds
            close = best <= 1.01 * naive_best  # as good, within 1% (better counts too)
            results.append(
                row(
                    f"vs-tutorial ({name}, stack {stack})",
                    f"{seconds:.1f} s, best dev loss {best:.4f}",
                    f"{naive_seconds:.1f} s, best dev loss {naive_best:.4f}",
                    speedup,
                    f">= {target:g}x faster, best no worse than +1%",
                    speedup >= target and close,
                )
            )
    return results


def rotated(steps: list[Callable[[], None]], by: int) -> Iterator[Callable[[], None]]:
    """The steps of one repetition, starting at a different one each time (drift spreads)."""
    by %= len(steps)
    yield from steps[by:] + steps[:by]


def fig_small_search(folder: Path, sizes: Sizes) -> list[Row]:
    """Whole processes, start to exit: hpsearch's default caviar search vs the tutorial."""
    lr, shapes = (1e-4, 1e-1), [[64], [128, 64]]
    raw = {
        "name": "small-search",
        "seed": 0,
        "device": "cpu",
        "data": {"source": "sklearn:digits"},
        "model": {"hidden": shapes[0]},
        # the tutorial trains every epoch: so does hpsearch here
        "train": {"epochs": sizes.small_epochs, "batch_size": 32, "early_stopping": None},
        "objective": {"metric": "dev_loss"},
        "search": {
            "strategy": "random",
            "trials": sizes.small_trials,
            "space": {
                "train.lr": {"low": lr[0], "high": lr[1], "log": True},
                "model.hidden": {"choices": shapes},
            },
        },
    }
    spec_path = write_spec(folder, raw)
    options = tutorial_options(sizes.small_epochs, 32, lr, [hidden_arg(s) for s in shapes])
    ours: list[float] = []
    tutorial: list[float] = []
    imports: list[float] = []
    first_trial: list[float] = []  # seconds from the process start to the first trial's start

    def run_ours() -> None:
        started, trials = hpsearch_process(folder, spec_path)
        ours.append(started.seconds)
        first = min(t.datetime_start for t in trials if t.datetime_start is not None)
        first_trial.append(first.timestamp() - started.at)

    def run_tutorial() -> None:
        started, _ = tutorial_processes(folder, "digits", 1, sizes.small_trials, 0, options)
        tutorial.append(started.seconds)

    steps = [lambda: imports.append(import_seconds(folder)), run_ours, run_tutorial]
    for repetition in range(sizes.repeats):
        for step in rotated(steps, repetition):
            step()
        print(
            f"  small-search {repetition + 1}: hpsearch {ours[-1]:.1f} s (first trial at "
            f"{first_trial[-1]:.2f} s, imports {imports[-1]:.2f} s), tutorial {tutorial[-1]:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    seconds, naive = statistics.median(ours), statistics.median(tutorial)
    # each repetition less its own import time
    to_first = statistics.median(f - i for f, i in zip(first_trial, imports, strict=True))
    speedup = naive / seconds
    repeats = f"median of {sizes.repeats}"
    return [
        row(
            f"small-search ({sizes.small_trials} trials, whole process, {repeats})",
            f"{seconds:.1f} s",
            f"{naive:.1f} s tutorial (1 process)",
            speedup,
            ">= 3x faster",
            speedup >= 3,
        ),
        row(
            f"time to first trial ({repeats})",
            f"{to_first:.2f} s after imports ({statistics.median(first_trial):.2f} s from start)",
            f"imports {statistics.median(imports):.2f} s",
            to_first,
            "<= 1 s",
            to_first <= 1,
        ),
    ]


def time_to_line(finished: list[tuple[float, float]], line: float) -> float:
    """Seconds until the best-so-far first reaches `line`: the first finished trial at or
    below it (inf: never)."""
    return min((at for at, value in finished if value <= line), default=math.inf)


def quality_datasets(folder: Path, sizes: Sizes) -> dict[str, dict]:
    """The data sections of time-to-quality: digits, a CSV with categorical columns, diabetes."""
    write_categorical_csv(folder / "categorical.csv", sizes.quality_csv_rows)
    return {
        "digits": {"source": "sklearn:digits"},
        "csv with categories": {"source": "categorical.csv", "target": "label"},
        "diabetes (regression)": {"source": "sklearn:diabetes"},
    }


# hpsearch's default (the figure's subject), hpsearch with TPE (shown, to tell the strategy's
# part from the tool's), and the tutorial baselines
QUALITY_METHODS = ("hpsearch", "hpsearch tpe", "TPE 1 process", "TPE 2 processes")
TUTORIALS = QUALITY_METHODS[2:]
# the methods the figure compares, whose best sets the line; hpsearch tpe is timed to it too
COMPARED = ("hpsearch", *TUTORIALS)


def quality_repetition(
    folder: Path, raw: dict, tutorial: list[str], budget: float, repetition: int, order: int
) -> dict[str, list[tuple[float, float]]]:
    """One repetition on one dataset: each method's finished trials as (seconds since its
    start, dev loss), the methods run one after another starting at `order`."""
    spec_path = write_spec(folder, raw)
    spec = load_spec(spec_path)  # the CSV's path becomes absolute, as `hpsearch run` reads it
    splits = tutorial_splits(load_dataset(spec.data, spec.seed))
    data_file = str(write_splits(folder / f"quality-{uuid.uuid4().hex[:8]}.npz", splits))
    finished: dict[str, list[tuple[float, float]]] = {}

    tpe_path = write_spec(folder, {**raw, "search": {**raw["search"], "strategy": "tpe"}})

    def run_ours(method: str, path: Path) -> None:
        started, done = hpsearch_process(folder, path)
        finished[method] = [
            (t.datetime_complete.timestamp() - started.at, t.value)
            for t in done
            if t.state == TrialState.COMPLETE
        ]

    def run_tutorial(processes: int) -> None:
        started, records = tutorial_processes(
            folder, data_file, processes, None, repetition, tutorial, timeout=budget
        )
        finished[TUTORIALS[processes - 1]] = [
            (r["finished"] - started.at, r["value"]) for r in records if r["value"] is not None
        ]

    steps = [
        lambda: run_ours("hpsearch", spec_path),
        lambda: run_tutorial(1),
        lambda: run_ours("hpsearch tpe", tpe_path),
        lambda: run_tutorial(2),
    ]
    for step in rotated(steps, order):
        step()
    return finished


def fig_time_to_quality(folder: Path, sizes: Sizes, device: str = "cpu") -> list[Row]:
    """Wall-clock until each method's best dev loss is within 1% of the best that
    hpsearch's default or a tutorial reached."""
    lr, shapes = (1e-4, 1e-1), [[64], [128, 64]]
    epochs, batch_size = sizes.quality_epochs, 32
    tutorial = tutorial_options(epochs, batch_size, lr, [hidden_arg(s) for s in shapes])
    tutorial += ["--sampler", "tpe", "--keep-best", "--device", device]
    datasets = quality_datasets(folder, sizes)
    reached = {name: {m: [] for m in QUALITY_METHODS} for name in datasets}
    for repetition in range(sizes.repeats):
        for index, (name, data_section) in enumerate(datasets.items()):
            # hpsearch's defaults (random, workers: auto, stack: auto, early stopping), with
            # the tutorial's space, epochs, batch size, time budget and objective
            raw = {
                "name": "quality",
                "seed": repetition,
                "device": device,
                "data": data_section,
                "model": {"hidden": shapes[0]},
                "train": {"epochs": epochs, "batch_size": batch_size},
                "objective": {"metric": "dev_loss"},
                "search": {
                    "trials": 100_000,  # as many as the time budget allows
                    "timeout": f"{sizes.quality_seconds:g}s",
                    "space": {
                        "train.lr": {"low": lr[0], "high": lr[1], "log": True},
                        "model.hidden": {"choices": shapes},
                    },
                },
            }
            finished = quality_repetition(
                folder, raw, tutorial, sizes.quality_seconds, repetition, repetition + index
            )
            best = min(value for m in COMPARED for _, value in finished[m])
            line = best + 0.01 * abs(best)
            for method in QUALITY_METHODS:
                reached[name][method].append(time_to_line(finished[method], line))
            print(
                f"  time-to-quality {repetition + 1} {name} ({device}): best {best:.4f}; "
                + ", ".join(
                    f"{m} {show_seconds(reached[name][m][-1])} (best "
                    f"{min((v for _, v in finished[m]), default=math.inf):.4f})"
                    for m in QUALITY_METHODS
                ),
                file=sys.stderr,
                flush=True,
            )
    results = []
    for name, times in reached.items():
        median = {method: statistics.median(times[method]) for method in QUALITY_METHODS}
        ours, rival = median["hpsearch"], min(median[m] for m in TUTORIALS)
        results.append(
            row(
                f"time-to-quality ({name}, {device}, median of {sizes.repeats})",
                f"{show_seconds(ours)} to the line",
                "; ".join(f"{m} {show_seconds(median[m])}" for m in QUALITY_METHODS[1:]),
                rival / ours if math.isfinite(ours) else 0.0,  # never: no speed
                "first within 1% of the best dev loss of default and tutorials",
                ours < rival,
            )
        )
    return results


def show_seconds(seconds: float) -> str:
    return "never" if math.isinf(seconds) else f"{seconds:.1f} s"


def bare_scaling_child(trainings: int, sizes: Sizes, start: Any) -> None:
    """One process of the bare-loop reference: its share of the trainings, one thread."""
    torch.set_num_threads(1)
    spec = spec_from_dict(base_spec(sizes.rows, epochs=sizes.scaling_epochs))
    start.wait()
    bare_loop(spec, trainings)


def bare_scaling_seconds(processes: int, trainings: int, sizes: Sizes) -> float:
    """Wall-clock of `trainings` bare-loop trainings split over `processes` processes, from
    the moment all of them have imported what they need (each then loads its data, as a
    script would) to the last one's exit."""
    context = multiprocessing.get_context("spawn")  # no torch state inherited from this one
    start = context.Barrier(processes + 1)
    children = [
        context.Process(target=bare_scaling_child, args=(trainings // processes, sizes, start))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    start.wait()
    began = time.perf_counter()
    for child in children:
        child.join()
    return time.perf_counter() - began


def fig_scaling(folder: Path, sizes: Sizes) -> list[Row]:
    """The same search with 1 worker and with 2, alternating; the median of the repetitions'
    ratios. Workers start from the fork server a run starts with its command line (here,
    before the first repetition), as `hpsearch run` has it ready by its first trial. Beside
    each repetition, a bare loop in 1 process and in 2 tells what the machine allows then."""
    torch.set_num_threads(1)  # the one-worker run trains in this process
    prestart()
    times: dict[int, list[float]] = {1: [], 2: []}
    bare: dict[int, list[float]] = {1: [], 2: []}
    bare_trainings = max(2, sizes.scaling_trials // 2)
    for repetition in range(sizes.scaling_repeats):
        for processes in (1, 2) if repetition % 2 == 0 else (2, 1):
            bare[processes].append(bare_scaling_seconds(processes, bare_trainings, sizes))
        for workers in (1, 2) if repetition % 2 == 0 else (2, 1):
            search = {
                "strategy": "random",
                "trials": sizes.scaling_trials,
                "workers": workers,
                "stack": "off",
                "space": {"train.lr": {"low": 1e-4, "high": 1e-1, "log": True}},
            }
            raw = base_spec(sizes.rows, epochs=sizes.scaling_epochs, search=search)
            seconds, _ = search_run(folder, raw)
            times[workers].append(seconds)
    ratio = statistics.median(a / b for a, b in zip(times[1], times[2], strict=True))
    bare_ratio = statistics.median(a / b for a, b in zip(bare[1], bare[2], strict=True))
    repeats = f"median of {sizes.scaling_repeats}"
    return [
        row(
            f"scaling (2 workers vs 1, {repeats})",
            f"{statistics.median(times[2]):.1f} s",
            f"{statistics.median(times[1]):.1f} s; a bare loop in 2 processes vs 1, "
            f"side by side: {bare_ratio:.2f}x",
            ratio,
            ">= 1.8x",
            ratio >= 1.8,
        )
    ]


def stacked_row(
    raw: dict, data: Dataset, members: int, repeats: int, device: str, target: float | None
) -> Row:
    """K same-shape trainings stacked vs one at a time, `repeats` alternating repetitions;
    the ratio is the median of the repetitions' ratios (each pair ran side by side)."""
    on = torch.device(device)
    specs = [
        spec_from_dict(
            {
                **raw,
                "device": device,
                "train": {**raw["train"], "lr": 10 ** (-4 + 3 * k / members)},
            }
        )
        for k in range(members)
    ]
    seeds = list(range(members))
    # a process's first training pays one-off start-up costs (and CUDA's warm-up); neither
    # side should carry them
    train_model(specs[0], data, 99, device=on)
    train_stack(specs[:2], data, [98, 99], device=on)

    def solo() -> float:
        seconds, _ = timed(
            lambda: [train_model(s, data, n, device=on) for s, n in zip(specs, seeds, strict=True)]
        )
        return seconds

    def stacked() -> float:
        seconds, _ = timed(lambda: train_stack(specs, data, seeds, device=on))
        return seconds

    # the evaluation after each epoch (every train and dev row) costs the same per model on
    # both sides, so it bounds the ratio; timed apart, to tell what stacking speeds up
    evaluating = [0.0]
    real_predict = train_module.predict

    def timed_predict(*args: Any, **kwargs: Any) -> torch.Tensor:
        seconds, outputs = timed(lambda: real_predict(*args, **kwargs))
        evaluating[0] += seconds
        return outputs

    solo_times, stacked_times, solo_eval, stacked_eval = [], [], [], []
    train_module.predict = timed_predict
    try:
        for repetition in range(repeats):
            pair = (solo, stacked) if repetition % 2 == 0 else (stacked, solo)
            for side in pair:
                evaluating[0] = 0.0
                (solo_times if side is solo else stacked_times).append(side())
                (solo_eval if side is solo else stacked_eval).append(evaluating[0])
    finally:
        train_module.predict = real_predict
    ratio = statistics.median(a / b for a, b in zip(solo_times, stacked_times, strict=True))
    steps_ratio = statistics.median(
        (a - ae) / (b - be)
        for a, ae, b, be in zip(solo_times, solo_eval, stacked_times, stacked_eval, strict=True)
    )
    one, together = statistics.median(solo_times), statistics.median(stacked_times)
    share = statistics.median(e / t for e, t in zip(stacked_eval, stacked_times, strict=True))
    return row(
        f"stacked (K={members}, {device}, median of {repeats})",
        f"{members / together:.2f} trials/s (evaluation {share:.0%} of it; "
        f"training alone {steps_ratio:.2f}x)",
        f"{members / one:.2f} trials/s",
        ratio,
        f">= {target:g}x" if target is not None else "recorded",
        ratio >= target if target is not None else True,
    )


def fig_stacked(sizes: Sizes) -> list[Row]:
    torch.set_num_threads(1)
    raw = base_spec(sizes.rows)
    data = load_dataset(spec_from_dict(raw).data, 0)
    results = [stacked_row(raw, data, 16, sizes.stacked_repeats, "cpu", 5.0)]
    if torch.cuda.is_available():
        for members in (16, 64):
            results.append(stacked_row(raw, data, members, sizes.stacked_repeats, "cuda", None))
    return results


def train_stack(specs: list[Spec], data: Any, seeds: list[int], **kwargs: Any) -> list:
    """Same-shape trials trained together by the one loop."""
    return train([Member(s, n) for s, n in zip(specs, seeds, strict=True)], data, **kwargs)


def _no_op_training(members: list[Member], data: Any, *args: Any, **kwargs: Any) -> list:
    """A training that does nothing: what is left of a trial is hpsearch's own work."""
    results = []
    for member in members:
        model = build_mlp(member.spec.model, data.n_features, data.n_outputs)
        value = (member.seed % 1000) / 1000
        metrics = {"train_loss": value, "dev_loss": value, "train_error": value, "dev_error": value}
        history = [{"epoch": 1, **metrics}]
        results.append(TrainResult(model, "complete", None, history, 1, 1, False, metrics))
    return results


def fig_bookkeeping(folder: Path, sizes: Sizes) -> list[Row]:
    """Time between consecutive finished trials when training costs nothing."""
    trials = sizes.bookkeeping_trials
    window = min(200, trials // 3)  # the first and last trials compared
    results = []
    real_tell = worker_module.tell_outcome
    stamps: list[float] = []

    def tell_and_stamp(*args: Any, **kwargs: Any) -> None:
        real_tell(*args, **kwargs)
        stamps.append(time.perf_counter())

    patches = {
        (objective, "train"): _no_op_training,
        (worker_module, "tell_outcome"): tell_and_stamp,
    }
    originals = {key: getattr(*key) for key in patches}
    space_of = {
        "grid": {"train.lr": {"low": 1e-4, "high": 1e-1, "log": True, "steps": trials}},
        "random": {"train.lr": {"low": 1e-4, "high": 1e-1, "log": True}},
        "evolution": {
            "train.lr": {"low": 1e-4, "high": 1e-1, "log": True},
            "model.dropout": {"low": 0.0, "high": 0.5},
        },
    }
    try:
        for (module, name), replacement in patches.items():
            setattr(module, name, replacement)
        for strategy, space in space_of.items():
            stamps.clear()
            search = {
                "strategy": strategy,
                "trials": trials,
                "workers": 1,
                "stack": "off",
                "space": space,
            }
            raw = base_spec(200, search=search)
            raw["data"]["synthetic"]["samples"] = 400
            search_run(folder, raw)
            gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
            first, last = statistics.mean(gaps[:window]), statistics.mean(gaps[-window:])
            mean_ms = statistics.mean(gaps) * 1000
            growth = last / first
            results.append(
                row(
                    f"bookkeeping ({strategy})",
                    f"{mean_ms:.2f} ms/trial, last {window} {last * 1000:.2f} ms",
                    f"first {window} {first * 1000:.2f} ms",
                    growth,
                    "<= 5 ms/trial, growth <= 1.5x",
                    mean_ms <= 5 and growth <= 1.5,
                )
            )
    finally:
        for (module, name), original in originals.items():
            setattr(module, name, original)
    return results


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(folder: Path, trials: int) -> dict[str, float]:
    """Run in a fresh process: RSS after each finished trial of a tiny in-process search."""
    torch.set_num_threads(1)
    samples: list[float] = []
    real_tell = worker_module.tell_outcome

    def tell_and_measure(*args: Any, **kwargs: Any) -> None:
        real_tell(*args, **kwargs)
        samples.append(_rss_mb())

    worker_module.tell_outcome = tell_and_measure
    search = {
        "strategy": "random",
        "trials": trials,
        "workers": 1,
        "stack": "off",
        "space": {"train.lr": {"low": 1e-4, "high": 1e-1, "log": True}},
    }
    raw = base_spec(200, epochs=2, search=search)
    raw["model"]["hidden"] = [16]
    search_run(folder, raw)
    warm = min(50, len(samples) // 2)  # after warm-up: imports, first allocations, caches
    return {
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "growth_mb_per_trial": (samples[-1] - samples[warm - 1]) / (len(samples) - warm),
    }


def fig_memory(folder: Path, sizes: Sizes) -> list[Row]:
    trials = sizes.memory_trials
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(folder), "--memory-trials", str(trials)],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    growth = figures["growth_mb_per_trial"]
    return [
        row(
            f"memory ({trials} tiny trials)",
            f"peak {figures['peak_mb']:.0f} MB, growth {growth * 1000:.1f} kB/trial",
            "",
            growth,
            "< 0.5 MB/trial growth",
            growth < 0.5,
        )
    ]


def fig_pruning(folder: Path, sizes: Sizes) -> list[Row]:
    torch.set_num_threads(1)
    results = {}
    pruners = ("asha", "hyperband", "median")
    for pruner in ("none", *pruners):
        search = {
            "strategy": "random",
            "trials": sizes.pruning_trials,
            "pruner": pruner,
            "space": {"train.lr": {"low": 1e-5, "high": 1e-1, "log": True}},
        }
        raw = base_spec(sizes.rows // 4, epochs=sizes.pruning_epochs, search=search)
        seconds, summary = search_run(folder, raw)
        epochs = sum(t["epochs_run"] for t in summary["trials"])
        results[pruner] = (seconds, summary["best"]["value"], epochs)
    _, best_full, epochs_full = results["none"]
    rows_out = []
    for pruner in pruners:
        _, best, epochs = results[pruner]
        fraction = epochs / epochs_full
        close = best <= 1.01 * best_full  # within 1% (better counts too)
        rows_out.append(
            row(
                f"pruning ({pruner} vs none)",
                f"{epochs} epochs, best dev loss {best:.4f}",
                f"{epochs_full} epochs, best dev loss {best_full:.4f}",
                fraction,
                "<= 1/3 of the epochs, best within 1%",
                fraction <= 1 / 3 and close,
            )
        )
    return rows_out


# --- the table --------------------------------------------------------------------------------


def machine() -> str:
    model = ""
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (
        f"{os.cpu_count()} cores {platform.machine()} {model}{gpu}; "
        f"python {platform.python_version()}, torch {torch.__version__}"
    )


def markdown(rows: list[Row]) -> str:
    lines = [
        "| figure | hpsearch | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "yes" if r["met"] else "**no**"
        lines.append(
            f"| {r['figure']} | {r['hpsearch']} | {r['baseline']} | {r['ratio']:.2f} "
            f"| {r['target']} | {met} |"
        )
    return "\n".join(lines)


def json_ready(rows: list[Row]) -> list[Row]:
    """Ratios as strict JSON: an infinite one (a baseline that never got there) as a string."""
    return [
        {**r, "ratio": r["ratio"] if math.isfinite(r["ratio"]) else str(r["ratio"])} for r in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--rows", type=int, help="training rows (default 20000; quick 2000)")
    parser.add_argument(
        "--repeats", type=int, help="repetitions of small-search and time-to-quality (default 3)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--memory-trials", type=int, default=300, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.memory_trials)))
        return
    sizes = QUICK if args.quick else Sizes()
    overrides = {"rows": args.rows, "repeats": args.repeats}
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def time_to_quality() -> list[Row]:
            devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
            return [r for device in devices for r in fig_time_to_quality(folder, sizes, device)]

        runners: dict[str, Callable[[], list[Row]]] = {
            "overhead": lambda: fig_overhead(folder, sizes),
            "vs-naive": lambda: fig_vs_naive(folder, sizes),
            "small-search": lambda: fig_small_search(folder, sizes),
            "time-to-quality": time_to_quality,
            "scaling": lambda: fig_scaling(folder, sizes),
            "stacked": lambda: fig_stacked(sizes),
            "bookkeeping": lambda: fig_bookkeeping(folder, sizes),
            "memory": lambda: fig_memory(folder, sizes),
            "pruning": lambda: fig_pruning(folder, sizes),
        }
        for name in args.only:
            started = time.perf_counter()
            figure_rows = runners[name]()
            rows += figure_rows
            for r in figure_rows:
                print(
                    f"{r['figure']}: {r['hpsearch']} vs {r['baseline']} -> {r['ratio']:.2f} "
                    f"({'met' if r['met'] else 'MISSED'}; {time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    quick = "; quick sizes (not for the README)" if args.quick else ""
    print(f"{datetime.date.today()} on {machine()}; {sizes.rows} training rows{quick}\n")
    print(markdown(rows))
    skipped = [f for f in ("stacked", "time-to-quality") if f in args.only]
    if skipped and not torch.cuda.is_available():
        print(f"\ncuda rows skipped (no GPU): {', '.join(skipped)}")
    if args.json:
        payload = {
            "machine": machine(),
            "sizes": dataclasses.asdict(sizes),
            "rows": json_ready(rows),
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
