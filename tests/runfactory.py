"""Fabricated run folders for the report and plot tests: the files a run writes, no training."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from hpsearch.diagnosis import diagnose
from hpsearch.runs import RunFolder, append_jsonl, write_json

SPACE = {
    "train.lr": {"low": 1.0e-4, "high": 1.0, "log": True},
    "model.dropout": {"low": 0.0, "high": 0.5},
    "model.hidden": {"choices": [[16], [32, 16]]},
}
MINIMIZE = {"metric": "dev_error", "direction": "minimize"}


def params(lr: float = 0.01, dropout: float = 0.2, hidden: list[int] | None = None) -> dict:
    return {"train.lr": lr, "model.dropout": dropout, "model.hidden": hidden or [16]}


def trial(
    number: int,
    dev_error: float | None,
    trial_params: dict[str, Any] | None = None,
    *,
    train_error: float = 0.0,
    value: float | None = None,
    state: str = "complete",
    reason: str | None = None,
) -> dict[str, Any]:
    """One trial as summary.json lists it; its objective value is the dev error unless given."""
    metrics = {}
    if dev_error is not None:
        metrics = {
            "train_error": train_error,
            "dev_error": dev_error,
            "train_loss": 0.1 + train_error,
            "dev_loss": 0.1 + dev_error,
        }
    if state == "complete":
        value = dev_error if value is None else value
    return {
        "number": number,
        "state": state,
        "reason": reason,
        "params": trial_params if trial_params is not None else params(),
        "value": value,
        "metrics": metrics,
        "best_epoch": 4,
        "epochs_run": 4,
        "seconds": 0.1,
    }


def make_run(
    runs_dir: Path,
    trials: list[dict[str, Any]],
    *,
    space: dict[str, Any] | None = SPACE,
    name: str = "fake",
    stamp: str = "20260101-120000",
    objective: dict[str, str] = MINIMIZE,
    task: str = "multiclass",
    dev_size: int = 150,
    human_level_error: float | None = 0.01,
    groups: dict[str, dict[str, float]] | None = None,
) -> RunFolder:
    """A finished run folder: spec.yaml, env.json, split.json, trials/<n>/ and summary.json."""
    run = RunFolder(runs_dir / f"{name}-{stamp}")
    run.root.mkdir(parents=True)
    spec: dict[str, Any] = {
        "name": name,
        "device": "cpu",
        "data": {"source": "sklearn:iris"},
        "model": {"hidden": [16]},
        "train": {"lr": 0.01, "epochs": 4},
        "objective": objective,
        "human_level_error": human_level_error,
    }
    if space:
        spec["search"] = {"strategy": "random", "trials": len(trials), "workers": 1, "space": space}
    run.spec.write_text(yaml.safe_dump(spec, sort_keys=False))
    write_json(run.env, {"python": "3.11", "device": "cpu", "seed": 0})
    sizes = {"train": 3 * dev_size, "dev": dev_size, "test": dev_size}
    write_json(run.split, {"task": task, "splits": {k: {"size": n} for k, n in sizes.items()}})
    for entry in trials:
        write_trial(run, entry)
    write_json(run.summary, summary(run, spec, trials, groups))
    return run


def write_trial(run: RunFolder, entry: dict[str, Any]) -> None:
    folder = run.trial(entry["number"])
    folder.root.mkdir(parents=True)
    write_json(folder.params, {"number": entry["number"], "seed": 1, "params": entry["params"]})
    write_json(folder.result, entry)
    if not entry["metrics"]:
        return
    final = entry["metrics"]
    for epoch in range(1, 5):  # losses falling towards the final ones
        append_jsonl(
            folder.metrics,
            {
                "epoch": epoch,
                "train_loss": final["train_loss"] + 1 / epoch,
                "dev_loss": final["dev_loss"] + 1 / epoch,
                "lr": entry["params"].get("train.lr", 0.01),
            },
        )


def summary(
    run: RunFolder,
    spec: dict[str, Any],
    trials: list[dict[str, Any]],
    groups: dict[str, dict[str, float]] | None,
) -> dict[str, Any]:
    sign = -1 if spec["objective"]["direction"] == "maximize" else 1
    complete = [t for t in trials if t["state"] == "complete"]
    best = min(complete, key=lambda t: (sign * t["value"], t["number"]), default=None)
    best_entry, diagnosis = None, None
    if best is not None:
        test = {"test_error": best["metrics"]["dev_error"] + 0.01}
        best_entry = {
            "trial": best["number"],
            "params": best["params"],
            "value": best["value"],
            "metrics": {**best["metrics"], **test},
        }
        diagnosis = diagnose(
            best["metrics"]["train_error"],
            best["metrics"]["dev_error"],
            test_error=test["test_error"],
            human_level_error=spec["human_level_error"],
            groups=groups,
        ).to_dict()
    search = spec.get("search")
    counts = Counter(t["state"] for t in trials)
    return {
        "run": str(run.root),
        "name": spec["name"],
        "study": run.name if search else None,
        "storage": "study.log" if search else None,
        "state": "finished",
        "strategy": search["strategy"] if search else None,
        "mode": "caviar" if search else None,
        "objective": spec["objective"],
        "counts": {s: counts.get(s, 0) for s in ("complete", "pruned", "failed")},
        "failure_reasons": dict(Counter(t["reason"] for t in trials if t["state"] == "failed")),
        "wall_seconds": 12.5,
        "best": best_entry,
        "diagnosis": diagnosis,
        "trials": trials,
    }
