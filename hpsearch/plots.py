"""Plots of a run (PNG, matplotlib's Agg backend), read from the run folder alone.

matplotlib is imported inside the functions so that importing this module costs nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hpsearch.runs import RunFolder, read_json, read_jsonl
from hpsearch.spec import Spec, load_spec

STATE_STYLE = {
    "complete": ("o", "tab:blue"),
    "pruned": ("x", "tab:orange"),
    "failed": ("x", "tab:red"),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)  # no figure left behind: reports of many runs stay small
    return path


def _ranked(summary: dict[str, Any]) -> list[dict[str, Any]]:
    maximize = summary["objective"]["direction"] == "maximize"
    complete = [t for t in summary["trials"] if t["state"] == "complete" and t["value"] is not None]
    return sorted(complete, key=lambda t: -t["value"] if maximize else t["value"])


def best_so_far(summary: dict[str, Any], path: Path) -> Path:
    """Each trial's objective value, and the running best as a step line."""
    plt = _pyplot()
    metric = summary["objective"]["metric"]
    maximize = summary["objective"]["direction"] == "maximize"
    fig, ax = plt.subplots(figsize=(7, 4))
    for state, (marker, color) in STATE_STYLE.items():
        points = [
            (t["number"], t["value"])
            for t in summary["trials"]
            if t["state"] == state and t["value"] is not None
        ]
        if points:
            ax.scatter(*zip(*points, strict=True), marker=marker, color=color, label=state, s=25)
    best, steps = None, []
    for trial in sorted(summary["trials"], key=lambda t: t["number"]):
        value = trial["value"] if trial["state"] == "complete" else None
        if value is not None and (best is None or (value > best if maximize else value < best)):
            best = value
        if best is not None:
            steps.append((trial["number"], best))
    if steps:
        ax.step(*zip(*steps, strict=True), where="post", color="black", label="best so far")
    ax.set(xlabel="trial", ylabel=metric, title=f"{metric} by trial")
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def parameter_plot(summary: dict[str, Any], spec: Spec, name: str, path: Path) -> Path:
    """Objective against one parameter: a log axis for log ranges, a strip for choices."""
    plt = _pyplot()
    metric = summary["objective"]["metric"]
    param = spec.search.space[name]
    trials = [t for t in _ranked(summary) if name in t["params"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    if param.is_range:
        ax.scatter([t["params"][name] for t in trials], [t["value"] for t in trials], s=25)
        if param.log:
            ax.set_xscale("log")
        ax.set_xlabel(f"{name} ({'log' if param.log else 'linear'} scale)")
    else:
        labels = [str(c) for c in (param.choices or param.values or [])]
        for trial in trials:
            ax.scatter(
                labels.index(str(trial["params"][name])), trial["value"], color="tab:blue", s=25
            )
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize="small")
        ax.set_xlabel(name)
    ax.set(ylabel=metric, title=f"{metric} vs {name}")
    return _save(fig, path)


def learning_curves(run: RunFolder, trials: list[int], path: Path) -> Path:
    """Train and dev loss per epoch of the given trials (solid train, dashed dev)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, number in enumerate(trials):
        epochs = [r for r in read_jsonl(run.trial(number).metrics) if "train_loss" in r]
        if not epochs:
            continue
        color = colors[index % len(colors)]
        x = [r["epoch"] for r in epochs]
        ax.plot(x, [r["train_loss"] for r in epochs], color=color, label=f"trial {number} train")
        ax.plot(
            x,
            [r["dev_loss"] for r in epochs],
            color=color,
            linestyle="--",
            label=f"trial {number} dev",
        )
    ax.set(xlabel="epoch", ylabel="loss", title="learning curves (train solid, dev dashed)")
    ax.legend(fontsize="x-small", ncol=2)
    return _save(fig, path)


def _axis_position(spec: Spec, name: str, value: Any) -> float:
    param = spec.search.space[name]
    if not param.is_range:
        options = [str(c) for c in (param.choices or param.values or [])]
        return options.index(str(value)) / max(1, len(options) - 1)
    low, high, value = param.low, param.high, float(value)
    if param.log:
        low, high, value = math.log10(low), math.log10(high), math.log10(value)
    return (value - low) / (high - low) if high > low else 0.5


def parallel_coordinates(summary: dict[str, Any], spec: Spec, path: Path) -> Path:
    """One line per complete trial across the varied parameters, colored by objective."""
    plt = _pyplot()
    names = list(spec.search.space)
    trials = _ranked(summary)
    values = [t["value"] for t in trials]
    low, high = min(values), max(values)
    cmap = plt.get_cmap(
        "viridis_r" if summary["objective"]["direction"] == "minimize" else "viridis"
    )
    fig, ax = plt.subplots(figsize=(max(6, 2 * len(names)), 4))
    for trial in reversed(trials):  # best drawn last, on top
        ys = [
            _axis_position(spec, n, trial["params"][n]) if n in trial["params"] else math.nan
            for n in names
        ]
        shade = (trial["value"] - low) / (high - low) if high > low else 1.0
        ax.plot(range(len(names)), ys, color=cmap(shade), alpha=0.8)
    ax.set_xticks(range(len(names)), names, rotation=15, fontsize="small")
    ax.set(
        ylabel="position in range (log axis for log ranges)",
        ylim=(-0.05, 1.05),
        title=f"parallel coordinates, colored by {summary['objective']['metric']}",
    )
    return _save(fig, path)


def importance(run: RunFolder, summary: dict[str, Any], path: Path) -> Path | None:
    """Optuna's parameter importances (fANOVA) for the study in the run folder's journal."""
    import optuna

    if not run.study_log.exists():
        return None
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run.study_log))
    )
    try:
        study = optuna.load_study(study_name=summary["study"], storage=storage)
        scores = optuna.importance.get_param_importances(study)
    except Exception:  # too few or too uniform trials: no importance to show
        return None
    if not scores:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(scores) + 1.5))
    names = list(scores)[::-1]
    ax.barh(names, [scores[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance (fANOVA)", title="which parameters mattered")
    return _save(fig, path)


def write_plots(run: RunFolder, top: int = 5) -> dict[str, Path]:
    """Every plot that applies to the run, written to `run/report/`; name -> path."""
    summary = read_json(run.summary)
    spec = load_spec(run.spec)
    out = run.report_dir
    ranked = _ranked(summary)
    plots: dict[str, Path] = {}
    top_numbers = [t["number"] for t in ranked[:top]]
    if top_numbers:
        plots["learning_curves"] = learning_curves(run, top_numbers, out / "learning_curves.png")
    if spec.search is None or not summary["trials"]:
        return plots
    plots["best_so_far"] = best_so_far(summary, out / "best_so_far.png")
    if ranked:
        for name in spec.search.space:
            slug = name.replace(".", "_")
            plots[f"param_{slug}"] = parameter_plot(summary, spec, name, out / f"param_{slug}.png")
        if len(spec.search.space) >= 2:
            plots["parallel_coordinates"] = parallel_coordinates(
                summary, spec, out / "parallel_coordinates.png"
            )
    if len(spec.search.space) >= 2 and len(ranked) >= 4:
        path = importance(run, summary, out / "importance.png")
        if path is not None:
            plots["importance"] = path
    return plots
