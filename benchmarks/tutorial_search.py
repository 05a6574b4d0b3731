"""The baseline of benchmarks/performance.py: a search written the way Optuna's tutorials
teach it. `study.optimize` calls an objective that builds a fresh `nn.Module`, an Adam
optimizer and a `DataLoader` per trial and trains a fixed number of epochs, evaluating the
dev loss after each.

    python benchmarks/tutorial_search.py DATA --trials 16 [--timeout S] --epochs 30
        [--batch-size 32] [--lr 1e-4 1e-1] [--hidden 64 128-64] [--sampler random|tpe] [--seed S]
        [--journal FILE --study NAME] [--threads N] [--device cpu|cuda] [--keep-best]
        [--record FILE]

DATA is `digits` (loaded, split 60/20/20 and standardized with scikit-learn, as a tutorial
does) or an .npz file with the splits (X_train, y_train, X_dev, y_dev, task, n_out), which
performance.py writes from hpsearch's own splits so that dev losses compare. Several processes
given the same --journal and --study share one study through Optuna's journal file, the Optuna
way to spread a search over processes; each runs its --trials. --record appends one JSON line
per finished trial: its number, the wall-clock time (time.time()) and its value.

Only torch, optuna and numpy are imported at the top, as a tutorial script does.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from torch import nn


@dataclass(frozen=True)
class Splits:
    """Train and dev arrays; `task` is classification (n_out classes) or regression."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_dev: np.ndarray
    y_dev: np.ndarray
    task: str
    n_out: int


def load_splits(source: str, seed: int = 0) -> Splits:
    """The splits of `source`; `seed` picks the digits split."""
    if source == "digits":
        # imported here so that an .npz run does not pay for scikit-learn
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import StandardScaler

        X, y = load_digits(return_X_y=True)
        X_train, X_rest, y_train, y_rest = train_test_split(X, y, train_size=0.6, random_state=seed)
        X_dev, _, y_dev, _ = train_test_split(X_rest, y_rest, train_size=0.5, random_state=seed)
        scaler = StandardScaler().fit(X_train)
        return Splits(
            scaler.transform(X_train).astype(np.float32),
            y_train.astype(np.int64),
            scaler.transform(X_dev).astype(np.float32),
            y_dev.astype(np.int64),
            "classification",
            10,
        )
    with np.load(source) as arrays:
        return Splits(
            arrays["X_train"],
            arrays["y_train"],
            arrays["X_dev"],
            arrays["y_dev"],
            str(arrays["task"]),
            int(arrays["n_out"]),
        )


def mlp(n_in: int, hidden: list[int], n_out: int) -> nn.Module:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        n_in = width
    return nn.Sequential(*layers, nn.Linear(n_in, n_out))


def loss_function(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "regression":
        return lambda outputs, y: nn.functional.mse_loss(outputs.squeeze(1), y)
    return nn.functional.cross_entropy


def make_objective(
    splits: Splits,
    epochs: int,
    batch_size: int,
    lr: tuple[float, float],
    hidden: list[str],
    device: str = "cpu",
    keep_best: bool = False,
) -> Callable[[optuna.Trial], float]:
    """The objective: a dev loss (the last epoch's, or the best epoch's with `keep_best`)."""
    train_set = torch.utils.data.TensorDataset(
        torch.as_tensor(splits.X_train), torch.as_tensor(splits.y_train)
    )
    X_dev = torch.as_tensor(splits.X_dev).to(device)
    y_dev = torch.as_tensor(splits.y_dev).to(device)
    loss_fn = loss_function(splits.task)

    def objective(trial: optuna.Trial) -> float:
        learning_rate = trial.suggest_float("lr", lr[0], lr[1], log=True)
        widths = [int(w) for w in trial.suggest_categorical("hidden", hidden).split("-")]
        model = mlp(splits.X_train.shape[1], widths, splits.n_out).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
        loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True)
        best = math.inf
        for _ in range(epochs):
            model.train()
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                loss = loss_fn(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                dev_loss = loss_fn(model(X_dev), y_dev).item()
            best = min(best, dev_loss)
        return best if keep_best else dev_loss

    return objective


def recorder(path: Path) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """A study.optimize callback: one JSON line per finished trial (failed ones: value null)."""

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None
        line = {"number": trial.number, "finished": time.time(), "value": value}
        with path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")

    return record


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def search(
    objective: Callable[[optuna.Trial], float],
    trials: int | None,
    sampler: optuna.samplers.BaseSampler,
    storage: optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    record: Path | None = None,
    timeout: float | None = None,
) -> float:
    """study.optimize, one trial after another, for `trials` trials or until `timeout` seconds
    have passed (no trial starts after it); returns the study's best value."""
    study = optuna.create_study(
        sampler=sampler, storage=storage, study_name=study_name, load_if_exists=True
    )
    study.optimize(
        objective,
        n_trials=trials,
        timeout=timeout,
        callbacks=[recorder(record)] if record else None,
    )
    return study.best_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="digits, or an .npz file of splits")
    parser.add_argument("--trials", type=int, help="how many (default: until --timeout)")
    parser.add_argument("--timeout", type=float, help="seconds after which no trial starts")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, nargs=2, default=(1e-4, 1e-1))
    parser.add_argument("--hidden", nargs="+", default=["64"], help="shapes, e.g. 64 128-64")
    parser.add_argument("--sampler", choices=("random", "tpe"), default="random")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's and torch's seed")
    parser.add_argument("--split-seed", type=int, default=0, help="the digits split's seed")
    parser.add_argument("--journal", type=Path, help="an Optuna journal file shared by processes")
    parser.add_argument("--study", default="tutorial")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep-best", action="store_true", help="value: the best epoch's")
    parser.add_argument("--record", type=Path)
    args = parser.parse_args()
    if args.trials is None and args.timeout is None:
        parser.error("give --trials, --timeout or both")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    storage = None
    if args.journal:
        backend = optuna.storages.journal.JournalFileBackend(str(args.journal))
        storage = optuna.storages.JournalStorage(backend)
    splits = load_splits(args.data, args.split_seed)
    objective = make_objective(
        splits,
        args.epochs,
        args.batch_size,
        tuple(args.lr),
        args.hidden,
        args.device,
        args.keep_best,
    )
    search(
        objective,
        args.trials,
        make_sampler(args.sampler, args.seed),
        storage,
        args.study if storage else None,
        args.record,
        args.timeout,
    )


if __name__ == "__main__":
    main()
