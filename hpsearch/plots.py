"""Plots of a run (PNG), drawn from the run folder alone.

matplotlib and optuna are imported inside the functions, so importing this module is cheap.
Figures are built with matplotlib's object API on an Agg canvas, never through pyplot: there is
no global figure registry, so nothing is left open and memory does not grow over many reports.

The small readers of a run's trials that the report shares (ranking, position in a search range,
number formatting) live here too, so that `report -> plots` is the only import between the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.runs import RunFolder, read_json, read_jsonl
from hpsearch.spec import ObjectiveSpec, ParamSpec, load_spec

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from hpsearch.space import Param

DPI = 110
# marker and color per trial state, the same in every plot
STATE_STYLE = {
    "complete": ("o", "tab:blue"),
    "pruned": ("s", "tab:orange"),
    "failed": ("X", "tab:red"),
}
MIN_TRIALS_FOR_IMPORTANCE = 4


# --- reading a run's trials (shared with the report) ----------------------------------------


def rank_trials(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Complete trials with a value, best first, as `summary.ranked_outcomes` ranks them:
    within the objective's constraints first; with several objectives, the picked trial and
    then the rest of the Pareto front first; then by the (first) objective in its direction;
    ties go to the lower dev loss, then to the earliest."""
    objective = summary["objective"]
    sign = -1.0 if objective["direction"] == "maximize" else 1.0
    bounds = ObjectiveSpec(constraints=objective.get("constraints") or []).bounds
    on_front = {entry["trial"] for entry in summary.get("front") or []}
    picked = (summary.get("pick") or {}).get("trial")
    scored = [
        t for t in summary["trials"] if t["state"] == "complete" and t.get("value") is not None
    ]

    def rank(t: dict[str, Any]) -> tuple[bool, bool, float, float, float, int]:
        metrics = t.get("metrics") or {}
        outside = sum(max(0.0, b.violation(metrics)) for b in bounds)
        dev_loss = metrics.get("dev_loss")
        behind = bool(on_front) and t["number"] not in on_front
        return (
            t["number"] != picked if picked is not None else False,
            behind,
            outside,
            sign * t["value"],
            math.inf if dev_loss is None else dev_loss,
            t["number"],
        )

    return sorted(scored, key=rank)


def choices_of(param: ParamSpec) -> list[Any]:
    """The choices or explicit grid values of a parameter that is not a low/high range: from
    smallest to largest when they are ordered (numbers, hidden widths), else as given."""
    return _listed(param).ordered_options


def _listed(param: ParamSpec, path: str = "") -> Param:
    # hpsearch.space brings optuna: imported on first use, so importing this module stays cheap
    from hpsearch.space import Param

    return Param.listed(param, path)


def range_position(param: ParamSpec, value: Any) -> float:
    """Where `value` lies among the parameter's values: 0 at low (the first choice, or the
    smallest of ordered choices), 1 at high (the last, or the largest).

    Log ranges are measured on the log axis, where the sampler spreads them evenly. NaN for a
    value that is not one of the choices.
    """
    if not param.is_range:
        options = choices_of(param)
        if value not in options:
            return math.nan
        return options.index(value) / (len(options) - 1) if len(options) > 1 else 0.5
    low, high, at = param.low, param.high, float(value)
    if param.log:
        if at <= 0:
            return math.nan
        low, high, at = math.log10(low), math.log10(high), math.log10(at)
    return (at - low) / (high - low)


def short_number(value: float) -> str:
    """Three significant digits; powers of ten for the very small or large (1.2e-4, 1e3)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value != 0 and math.isfinite(value) and not 1e-3 <= abs(value) < 1e3:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.3g}"


def format_value(value: Any) -> str:
    """A hyperparameter value as people write it: 0.001, [256, 128], patience=20, none."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return short_number(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={format_value(v)}" for k, v in value.items())
    return str(value)


# --- figures ------------------------------------------------------------------------------


def _new_axes(width: float = 7.0, height: float = 4.2) -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # Agg whatever backend pyplot may have picked in this process
    return figure, figure.add_subplot()


def _objective(summary: Mapping[str, Any]) -> tuple[str, bool]:
    objective = summary["objective"]
    return objective["metric"], objective["direction"] == "maximize"


def running_best(trials: list[dict[str, Any]], maximize: bool) -> list[tuple[int, float]]:
    """(trial number, best complete value so far), from the first complete trial on."""
    steps: list[tuple[int, float]] = []
    best: float | None = None
    for trial in sorted(trials, key=lambda t: t["number"]):
        value = trial.get("value") if trial["state"] == "complete" else None
        if value is not None and (best is None or (value > best if maximize else value < best)):
            best = value
        if best is not None:
            steps.append((trial["number"], best))
    return steps


def front_figure(summary: Mapping[str, Any]) -> Figure | None:
    """Several objectives: every complete trial by its first two objectives, the Pareto front
    as a step line through its trials, and the picked trial marked."""
    objective = summary["objective"]
    names, directions = objective.get("metrics"), objective.get("directions")
    front = summary.get("front") or []
    if not names or not front:
        return None
    x_name, y_name = names[:2]
    points = [
        (t["metrics"][x_name], t["metrics"][y_name], t["number"])
        for t in summary["trials"]
        if t["state"] == "complete" and {x_name, y_name} <= (t.get("metrics") or {}).keys()
    ]
    figure, ax = _new_axes()
    xs, ys, _ = zip(*points, strict=True)
    ax.scatter(xs, ys, color="tab:gray", alpha=0.6, label="trial", zorder=2)
    on_front = sorted((e["values"][0], e["values"][1]) for e in front)
    fx, fy = zip(*on_front, strict=True)
    if len(names) == 2:  # with more objectives the front is no staircase in these two
        ax.step(fx, fy, where="post", color="tab:blue", alpha=0.5, zorder=3)
    ax.scatter(fx, fy, color="tab:blue", label="Pareto front", zorder=4)
    picked = (summary.get("pick") or {}).get("trial")
    chosen = [(x, y) for x, y, number in points if number == picked]
    if chosen:
        ax.scatter(*chosen[0], marker="*", s=260, color="tab:red", label="picked", zorder=5)
    if y_name in ("n_params", "inference_ms", "train_seconds"):
        ax.set_yscale("log")
    x_way, y_way = directions[0], directions[1]
    ax.set(
        xlabel=f"{x_name} ({x_way})",
        ylabel=f"{y_name} ({y_way})",
        title=f"Pareto front: {x_name} against {y_name}"
        + (f" (of {len(names)} objectives)" if len(names) > 2 else ""),
    )
    _legend_outside(ax)
    return figure


def best_so_far_figure(summary: Mapping[str, Any]) -> Figure | None:
    """Each trial's objective value as a point, and the running best as a step line."""
    from matplotlib.ticker import MaxNLocator

    trials = summary["trials"]
    if not trials:
        return None
    metric, maximize = _objective(summary)
    figure, ax = _new_axes()
    for state, (marker, color) in STATE_STYLE.items():
        mine = [t for t in trials if t["state"] == state]
        scored = [(t["number"], t["value"]) for t in mine if t.get("value") is not None]
        unscored = [t["number"] for t in mine if t.get("value") is None]
        if scored:
            xs, ys = zip(*scored, strict=True)
            ax.scatter(xs, ys, marker=marker, color=color, label=state, zorder=3)
        if unscored:  # no value to place: a mark along the bottom edge of the plot
            ax.scatter(
                unscored,
                [0.03] * len(unscored),
                marker=marker,
                color=color,
                label=f"{state} (no value)",
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                zorder=3,
            )
    steps = running_best(trials, maximize)
    if steps:
        xs, ys = zip(*steps, strict=True)
        ax.step(xs, ys, where="post", color="black", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(
        xlabel="trial number",
        ylabel=metric,
        title=f"{metric} per trial and best so far ({'maximize' if maximize else 'minimize'})",
    )
    _legend_outside(ax)
    return figure


def _legend_outside(ax: Axes) -> None:
    """The legend beside the plot, not over it: the best points sit in a corner of the axes,
    where a legend inside would cover them."""
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def parameter_figure(summary: Mapping[str, Any], path: str, param: ParamSpec) -> Figure | None:
    """The objective against one parameter: a log x-axis for log ranges, a box and strip plot
    per choice for choices. None when no complete trial used the parameter."""
    trials = [t for t in rank_trials(summary) if path in t["params"]]
    if not trials:
        return None
    metric, _ = _objective(summary)
    figure, ax = _new_axes(6.5, 4.2)
    if param.is_range:
        xs = [t["params"][path] for t in trials]
        best_x = xs[0]
        ax.scatter(xs, [t["value"] for t in trials], color="tab:blue", label="complete trial")
        for bound in (param.low, param.high):
            ax.axvline(bound, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log" if param.log else "linear")
        xlabel = f"{path} ({'log' if param.log else 'linear'} scale; dotted: search range)"
    else:
        best_x = _strip_plot(ax, trials, path, choices_of(param))
        ordered = _listed(param, path).ordered
        xlabel = f"{path} ({'choices, smallest first' if ordered else 'choices'})"
    ax.scatter(
        [best_x],
        [trials[0]["value"]],
        marker="*",
        s=220,
        color="gold",
        edgecolor="black",
        label=f"best: trial {trials[0]['number']}",
        zorder=4,
    )
    ax.set(xlabel=xlabel, ylabel=metric, title=f"{metric} vs {path}")
    _legend_outside(ax)
    return figure


def _strip_plot(ax: Axes, trials: list[dict[str, Any]], path: str, options: list[Any]) -> float:
    """A box per choice with its trials spread across it; returns the best trial's x."""
    for value in (t["params"][path] for t in trials):
        if value not in options:  # e.g. a value set by hand in the study: show it too
            options = [*options, value]
    groups = [[t["value"] for t in trials if t["params"][path] == o] for o in options]
    filled = [i for i, values in enumerate(groups) if values]
    ax.boxplot(
        [groups[i] for i in filled],
        positions=filled,
        widths=0.5,
        showfliers=False,
        manage_ticks=False,
    )
    for i in filled:
        n = len(groups[i])
        # an even, repeatable spread instead of random jitter
        xs = [i + (0.3 * (j / (n - 1) - 0.5) if n > 1 else 0.0) for j in range(n)]
        ax.scatter(xs, groups[i], color="tab:blue", alpha=0.7, s=18, zorder=3)
    ax.set_xticks(range(len(options)), [format_value(o) for o in options], fontsize="small")
    return float(options.index(trials[0]["params"][path]))


def _epochs(run: RunFolder, number: int) -> list[dict[str, Any]]:
    try:
        records = read_jsonl(run.trial(number).metrics)
    except (OSError, ValueError):  # a trial killed mid-write: draw the others
        return []
    return [r for r in records if _finite(r.get("train_loss")) and _finite(r.get("dev_loss"))]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def learning_curves_figure(run: RunFolder, numbers: list[int]) -> Figure | None:
    """Train (solid) and dev (dashed) loss per epoch of the given trials, one color each."""
    curves = {n: epochs for n in numbers if (epochs := _epochs(run, n))}
    if not curves:
        return None
    figure, ax = _new_axes()
    losses: list[float] = []
    for index, (number, epochs) in enumerate(curves.items()):
        color = f"C{index % 10}"
        x = [r["epoch"] for r in epochs]
        train, dev = [r["train_loss"] for r in epochs], [r["dev_loss"] for r in epochs]
        ax.plot(x, train, color=color, label=f"trial {number} train")
        ax.plot(x, dev, color=color, linestyle="--", label=f"trial {number} dev")
        losses += train + dev
    # losses that fall by orders of magnitude are only readable on a log axis
    log = min(losses) > 0 and max(losses) / min(losses) > 100
    ax.set_yscale("log" if log else "linear")
    which = f"top {len(curves)} trials" if len(curves) > 1 else f"trial {next(iter(curves))}"
    ax.set(
        xlabel="epoch",
        ylabel=f"loss ({'log' if log else 'linear'} scale)",
        title=f"learning curves of the {which} (train solid, dev dashed)",
    )
    ax.legend(fontsize="x-small", ncol=2)
    return figure


def parallel_coordinates_figure(
    summary: Mapping[str, Any], space: Mapping[str, ParamSpec]
) -> Figure | None:
    """One line per complete trial across the searched parameters, each axis its range mapped
    to [0, 1] (log ranges on the log axis), colored by the objective; the best drawn on top."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    trials = rank_trials(summary)
    names = list(space)
    if len(names) < 2 or len(trials) < 2:
        return None
    metric, maximize = _objective(summary)
    values = [t["value"] for t in trials]
    norm = Normalize(min(values), max(values))
    cmap = colormaps["viridis" if maximize else "viridis_r"]  # the best trials bright yellow
    figure, ax = _new_axes(max(7.0, 1.8 * len(names) + 2), 4.5)
    for trial in reversed(trials):
        ys = [range_position(space[n], trial["params"].get(n, math.nan)) for n in names]
        best = trial is trials[0]
        ax.plot(
            range(len(names)),
            ys,
            color=cmap(norm(trial["value"])),
            linewidth=3 if best else 1.2,
            alpha=1 if best else 0.75,
            marker="o",
            markersize=3,
        )
    for x, name in enumerate(names):
        ax.axvline(x, color="grey", linewidth=0.8)
        for y, text in _axis_labels(space[name]):
            ax.annotate(text, (x, y), xytext=(4, 0), textcoords="offset points", fontsize="x-small")
    ax.set_xticks(range(len(names)), names, rotation=15, fontsize="small")
    ax.set_yticks([0, 1], ["low", "high"])
    ax.set(
        ylim=(-0.05, 1.05),
        ylabel="position in range (log ranges on a log axis)",
        title=f"parallel coordinates of {len(trials)} complete trials, colored by {metric}",
    )
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    return figure


def _axis_labels(param: ParamSpec) -> list[tuple[float, str]]:
    """What the ends (or each choice) of a parallel-coordinates axis stand for."""
    if param.is_range:
        return [(0.0, short_number(param.low)), (1.0, short_number(param.high))]
    options = choices_of(param)
    if len(options) > 8:
        options = [options[0], options[-1]]
    return [(range_position(param, o), format_value(o)) for o in options]


def importance_figure(run: RunFolder, study_name: str | None) -> Figure | None:
    """Optuna's parameter importances (fANOVA) for the study in the run's journal file.

    None when there is no journal, or Optuna cannot compute them (a damaged journal, too few
    or too alike trials): the report goes on without this plot.
    """
    if not run.study_log.is_file():
        return None
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    try:
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(run.study_log))
        )
        # no name: the journal's only study
        study = optuna.load_study(study_name=study_name, storage=storage)
        several = len(study.directions) > 1  # importance for the first objective
        target = (lambda t: t.values[0]) if several else None
        scores = get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=0), target=target
        )
        complete = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    except Exception:
        return None
    if not scores:
        return None
    figure, ax = _new_axes(6.5, 1.6 + 0.45 * len(scores))
    names = list(scores)[::-1]  # the most important on top
    bars = ax.barh(names, [scores[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", padding=3, fontsize="small")
    ax.set(
        xlim=(0, 1.15 * max(scores.values()) or 1),
        xlabel="importance (fANOVA: share of the objective's variance; sums to 1)",
        title=f"parameter importance over {complete} complete trials",
    )
    return figure


def write_plots(run: RunFolder, top: int = 5) -> dict[str, Path]:
    """Draw every plot that applies to the run into `run.report_dir`; returns name -> PNG path.

    A search gets: pareto_front (several objectives), best_so_far, learning_curves (the `top`
    trials), param_<path> per searched parameter, parallel_coordinates (2+ parameters) and
    importance (2+ parameters, 4+ complete trials, a journal file). One model (no search) gets
    its learning curve only.
    """
    summary = read_json(run.summary)
    spec = load_spec(run.spec)
    space = spec.search.space if spec.search else {}
    ranked = rank_trials(summary)
    top_numbers = [t["number"] for t in ranked[:top]]
    plans: list[tuple[str, Callable[[], Figure | None]]] = []
    if summary.get("front"):
        plans.append(("pareto_front", partial(front_figure, summary)))
    if space:
        plans.append(("best_so_far", partial(best_so_far_figure, summary)))
    plans.append(("learning_curves", partial(learning_curves_figure, run, top_numbers)))
    for path, param in space.items():
        plans.append((f"param_{path}", partial(parameter_figure, summary, path, param)))
    if space:
        plans.append(("parallel_coordinates", partial(parallel_coordinates_figure, summary, space)))
    if len(space) >= 2 and len(ranked) >= MIN_TRIALS_FOR_IMPORTANCE:
        plans.append(("importance", partial(importance_figure, run, summary.get("study"))))
    written: dict[str, Path] = {}
    for name, draw in plans:  # draw and save one at a time: one figure in memory at most
        figure = draw()
        if figure is not None:
            written[name] = _save(figure, run.report_dir / f"{name}.png")
    return written


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")  # room for a legend beside the axes
    return path
