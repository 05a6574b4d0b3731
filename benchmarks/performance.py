"""hpsearch's speed and memory, each figure measured side by side in one run.

    python benchmarks/performance.py [--rows 20000] [--only overhead stacked ...] [--json FILE]

Figures (see the README's Performance section for the latest table):
  overhead     N fixed trainings through `hpsearch run` vs a bare PyTorch loop doing the same
               trainings (same data, epochs, batch size, per-epoch train/dev metrics, 1 thread)
  vs-naive     a 64-configuration log-uniform random search written as tutorials do (Optuna
               study.optimize, nn.Module + Adam + DataLoader per trial) vs the same in hpsearch
  scaling      caviar with 2 workers vs 1 worker (one thread each) on the same search
  stacked      K=16 same-shape trials trained stacked vs one at a time (1 thread)
  bookkeeping  hpsearch's own cost per trial (storage, files, sampling) over 1000 no-op trials
  memory       peak RSS of a worker and its growth over 300 tiny trials
  pruning      random search with the asha pruner vs without: best dev loss and epochs trained
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

import hpsearch.objective as objective
import hpsearch.workers as worker_module
from hpsearch.data import load_dataset
from hpsearch.engine import RunOptions, run_spec
from hpsearch.model import build_mlp
from hpsearch.spec import Spec, spec_from_dict
from hpsearch.train import Member, TrainResult, train, train_model

optuna.logging.set_verbosity(optuna.logging.ERROR)

FIGURES = ("overhead", "vs-naive", "scaling", "stacked", "bookkeeping", "memory", "pruning")


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


# --- the bare loops ---------------------------------------------------------------------------


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


def naive_search(spec: Spec, configurations: int, low: float, high: float) -> float:
    """The tutorial way: study.optimize, a fresh module + Adam + DataLoader per trial."""
    data = load_dataset(spec.data, spec.seed)
    train, dev = data.splits["train"], data.splits["dev"]
    dataset = torch.utils.data.TensorDataset(torch.as_tensor(train.X), torch.as_tensor(train.y))
    X_dev, y_dev = torch.as_tensor(dev.X), torch.as_tensor(dev.y)

    def objective_fn(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", low, high, log=True)
        model = bare_mlp(train.X.shape[1], 2)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=spec.train.batch_size, shuffle=True
        )
        for _ in range(spec.train.epochs):
            model.train()
            for xb, yb in loader:
                loss = nn.functional.cross_entropy(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                dev_loss = nn.functional.cross_entropy(model(X_dev), y_dev).item()
        return dev_loss

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective_fn, n_trials=configurations)
    return study.best_value


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


def fig_overhead(folder: Path, rows: int) -> list[Row]:
    trainings = 16
    torch.set_num_threads(1)
    search = {
        "strategy": "random",
        "trials": trainings,
        "workers": 1,
        "stack": "off",
        "space": {"train.lr": {"values": [1e-3]}},
    }
    raw = base_spec(rows, search=search)
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


def fig_vs_naive(folder: Path, rows: int) -> list[Row]:
    configurations, low, high = 64, 1e-4, 1e-1
    torch.set_num_threads(os.cpu_count() or 1)  # the tutorial script gets the whole machine
    raw = base_spec(rows)
    naive_seconds, naive_best = timed(
        lambda: naive_search(spec_from_dict(raw), configurations, low, high)
    )
    results = []
    for stack, target in (("auto", 5.0), ("off", 3.0)):
        search = {
            "strategy": "random",
            "trials": configurations,
            "stack": stack,
            "space": {"train.lr": {"low": low, "high": high, "log": True}},
        }
        seconds, summary = search_run(folder, base_spec(rows, search=search))
        best = summary["best"]["value"]
        speedup = naive_seconds / seconds
        close = best <= 1.01 * naive_best  # as good, within 1% (better counts too)
        results.append(
            row(
                f"vs-naive (stack {stack})",
                f"{seconds:.1f} s, best dev loss {best:.4f}",
                f"{naive_seconds:.1f} s, best dev loss {naive_best:.4f}",
                speedup,
                f">= {target:g}x faster, best no worse than +1%",
                speedup >= target and close,
            )
        )
    return results


def fig_scaling(folder: Path, rows: int) -> list[Row]:
    torch.set_num_threads(1)  # the one-worker run trains in this process
    times = {}
    for workers in (1, 2):
        search = {
            "strategy": "random",
            "trials": 32,
            "workers": workers,
            "stack": "off",
            "space": {"train.lr": {"low": 1e-4, "high": 1e-1, "log": True}},
        }
        times[workers], _ = search_run(folder, base_spec(rows, epochs=10, search=search))
    ratio = times[1] / times[2]
    return [
        row(
            "scaling (2 workers vs 1)",
            f"{times[2]:.1f} s",
            f"{times[1]:.1f} s",
            ratio,
            ">= 1.8x",
            ratio >= 1.8,
        )
    ]


def fig_stacked(rows: int, members: int = 16) -> list[Row]:
    torch.set_num_threads(1)
    raw = base_spec(rows)
    data = load_dataset(spec_from_dict(raw).data, 0)
    specs = [
        spec_from_dict({**raw, "train": {**raw["train"], "lr": 10 ** (-4 + 3 * k / members)}})
        for k in range(members)
    ]
    seeds = list(range(members))
    # a process's first training pays one-off start-up costs; neither side should carry them
    train_model(specs[0], data, 99)
    train_stack(specs[:2], data, [98, 99])
    solo, _ = timed(
        lambda: [train_model(s, data, seed) for s, seed in zip(specs, seeds, strict=True)]
    )
    stacked, _ = timed(lambda: train_stack(specs, data, seeds))
    ratio = solo / stacked
    results = [
        row(
            f"stacked (K={members}, cpu)",
            f"{members / stacked:.2f} trials/s",
            f"{members / solo:.2f} trials/s",
            ratio,
            ">= 5x",
            ratio >= 5,
        )
    ]
    if torch.cuda.is_available():
        device = torch.device("cuda")
        cuda_specs = [s.model_copy(update={"device": "cuda"}) for s in specs]
        train_stack(cuda_specs[:2], data, seeds[:2], device=device)  # warm up CUDA
        solo, _ = timed(
            lambda: [train_model(s, data, n, device=device) for n, s in enumerate(cuda_specs)]
        )
        stacked, _ = timed(lambda: train_stack(cuda_specs, data, seeds, device=device))
        results.append(
            row(
                f"stacked (K={members}, cuda)",
                f"{members / stacked:.2f} trials/s",
                f"{members / solo:.2f} trials/s",
                solo / stacked,
                "recorded",
                True,
            )
        )
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


def fig_bookkeeping(folder: Path, trials: int = 1000) -> list[Row]:
    """Time between consecutive finished trials when training costs nothing."""
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
            first, last = statistics.mean(gaps[:200]), statistics.mean(gaps[-200:])
            mean_ms = statistics.mean(gaps) * 1000
            growth = last / first
            results.append(
                row(
                    f"bookkeeping ({strategy})",
                    f"{mean_ms:.2f} ms/trial, last 200 {last * 1000:.2f} ms",
                    f"first 200 {first * 1000:.2f} ms",
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


def memory_child(folder: Path, trials: int = 300) -> dict[str, float]:
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
    settled = samples[49]  # after warm-up: imports, first allocations, caches
    return {
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "growth_mb_per_trial": (samples[-1] - settled) / (len(samples) - 50),
    }


def fig_memory(folder: Path) -> list[Row]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    growth = figures["growth_mb_per_trial"]
    return [
        row(
            "memory (300 tiny trials)",
            f"peak {figures['peak_mb']:.0f} MB, growth {growth * 1000:.1f} kB/trial",
            "",
            growth,
            "< 0.5 MB/trial growth",
            growth < 0.5,
        )
    ]


def fig_pruning(folder: Path, rows: int) -> list[Row]:
    torch.set_num_threads(1)
    results = {}
    pruners = ("asha", "hyperband", "median")
    for pruner in ("none", *pruners):
        search = {
            "strategy": "random",
            "trials": 48,
            "pruner": pruner,
            "space": {"train.lr": {"low": 1e-5, "high": 1e-1, "log": True}},
        }
        seconds, summary = search_run(folder, base_spec(rows // 4, epochs=27, search=search))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000, help="training rows (default 20000)")
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runners: dict[str, Callable[[], list[Row]]] = {
            "overhead": lambda: fig_overhead(folder, args.rows),
            "vs-naive": lambda: fig_vs_naive(folder, args.rows),
            "scaling": lambda: fig_scaling(folder, args.rows),
            "stacked": lambda: fig_stacked(args.rows),
            "bookkeeping": lambda: fig_bookkeeping(folder),
            "memory": lambda: fig_memory(folder),
            "pruning": lambda: fig_pruning(folder, args.rows),
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
    print(f"{datetime.date.today()} on {machine()}; {args.rows} training rows\n")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
