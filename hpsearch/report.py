"""Explain a run from its folder: rich tables for the terminal, markdown for CI job summaries,
one self-contained HTML file, and the list of runs. The JSON format is summary.json itself.

Every format renders the same plain pieces (header rows, trial rows, settings, diagnosis lines,
warnings), built once below, so the formats cannot drift apart.
"""

from __future__ import annotations

import base64
import contextlib
import html
import re
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.columns import Columns
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hpsearch.diagnosis import (
    DEFAULT_TOLERANCE,
    Diagnosis,
    GroupErrors,
    diagnose,
    mismatch_ordering,
    samples_from,
    summary_lines,
    wilson_interval,
)
from hpsearch.errors import InputError, printable
from hpsearch.plots import format_value, range_position, rank_trials, short_number, write_plots
from hpsearch.runs import RunFolder, latest_run, list_runs, owner_of, read_json, write_text
from hpsearch.space import apply_params
from hpsearch.spec import ParamSpec, Spec, load_spec
from hpsearch.transfer import describe

EDGE = 0.05  # a best value in the outer 5% of its range (log axis for log ranges) is on the edge
LEARNING_CURVES = 5  # more curves than this on one plot cannot be told apart
_FOLDER_STAMP = re.compile(r"(\d{8}-\d{6})(?:-\d+)?$")  # runs.create_run's name suffix


@dataclass(frozen=True)
class Report:
    """Everything the renderers show, read once from a run folder."""

    run: RunFolder
    summary: dict[str, Any]
    spec: Spec
    env: dict[str, Any]
    split: dict[str, Any]
    ranked: list[dict[str, Any]]  # the top complete trials, best first
    varied: list[str]  # the parameters the search varied (search.space paths)
    best_settings: dict[str, dict[str, Any]]  # the best trial's full model and train sections
    dev_interval: tuple[float, float] | None  # 95% interval of the best trial's dev error
    diagnosis: Diagnosis | None
    warnings: list[str]
    improve: dict[str, Any] | None = None  # the `hpsearch improve` chain up to this run

    @property
    def metric(self) -> str:
        return self.summary["objective"]["metric"]

    @property
    def direction(self) -> str:
        return self.summary["objective"]["direction"]

    @property
    def counts(self) -> dict[str, int]:
        """Trials by state: complete, pruned, failed."""
        return self.summary.get("counts") or {}

    @property
    def failure_reasons(self) -> dict[str, int]:
        return self.summary.get("failure_reasons") or {}

    @property
    def rescued(self) -> dict[int, list[dict[str, Any]]]:
        """Panda's rescues, by trial number."""
        trials = self.summary.get("trials") or []
        return {t["number"]: t["rescues"] for t in trials if t.get("rescues")}

    @property
    def wall_seconds(self) -> float | None:
        return self.summary.get("wall_seconds")

    @property
    def device(self) -> str | None:
        return self.env.get("device")

    @property
    def dev_size(self) -> int | None:
        return _dev_size(self.split)

    @property
    def errors_are_rates(self) -> bool:
        """Classification errors are fractions misclassified; regression errors are not."""
        return _task(self.split, self.spec) != "regression"

    def format_error(self, value: float | None) -> str:
        if value is None:
            return "—"
        return f"{value:.2%}" if self.errors_are_rates else short_number(float(value))


# --- finding and reading a run ----------------------------------------------------------------


def resolve_run(run: str | None, runs_dir: Path) -> RunFolder:
    """A run folder path, a folder name under `runs_dir`, or None for the newest run there."""
    if run is None:
        folder = latest_run(runs_dir)
        if folder is None:
            raise InputError(f"no run folders in {runs_dir}; start one with `hpsearch run SPEC`")
    else:
        candidates = (Path(run), runs_dir / run)
        folder = next((RunFolder(p) for p in candidates if p.is_dir()), None)
        if folder is None:
            raise InputError(f"no run folder '{run}' (neither a folder nor a run in {runs_dir})")
    if not folder.summary.is_file():
        raise InputError(
            f"{folder.root} has no summary.json: not a run folder, or its run has not "
            "finished a trial yet"
        )
    return folder


SUMMARY_KEYS = ("objective", "counts", "trials")


def _read_json(path: Path, required: bool = False) -> dict[str, Any]:
    try:
        record = read_json(path)
        if not isinstance(record, dict):
            raise ValueError(f"holds a JSON {type(record).__name__}, not an object")
        if required and not all(key in record for key in SUMMARY_KEYS):
            raise ValueError(f"lacks {', '.join(k for k in SUMMARY_KEYS if k not in record)}")
    except (OSError, ValueError) as exc:
        if not required:  # env.json and split.json only add detail to the report
            return {}
        raise InputError(
            f"cannot read {path.name}: {exc}; resuming the run rewrites it "
            "(hpsearch run SPEC --resume RUN)",
            source=str(path),
        ) from None
    return record


def load_report(run: RunFolder, top: int = 10) -> Report:
    """Read a run folder into everything the renderers show; `top` trials are listed."""
    summary = _read_json(run.summary, required=True)
    spec = load_spec(run.spec)
    split = _read_json(run.split)
    dev_size = _dev_size(split)
    ranked = rank_trials(summary)
    best = ranked[0] if ranked else None
    interval = None
    if best is not None and _task(split, spec) != "regression":
        interval = dev_error_interval(best, dev_size)
    return Report(
        run=run,
        summary=summary,
        spec=spec,
        env=_read_json(run.env),
        split=split,
        ranked=ranked[:top],
        varied=list(spec.search.space) if spec.search else [],
        best_settings=best_settings(spec, best),
        dev_interval=interval,
        diagnosis=diagnosis_of(summary),
        warnings=collect_warnings(summary, spec, ranked, interval, dev_size),
        improve=_read_json(run.improve) or None if run.improve.is_file() else None,
    )


def _dev_size(split: dict[str, Any]) -> int | None:
    return ((split.get("splits") or {}).get("dev") or {}).get("size")


def _task(split: dict[str, Any], spec: Spec) -> str:
    return split.get("task") or spec.data.task


def best_settings(spec: Spec, best: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The model and train sections the best trial ran with (the spec with its params applied)."""
    resolved = apply_params(spec, best["params"]) if best else spec
    return resolved.model_dump(mode="json", include={"model", "train"})


def binomial_interval(rate: float, n: int) -> tuple[float, float]:
    """Wilson score interval (95%) of an error rate measured on `n` examples."""
    errors = min(n, max(0, round(rate * n)))  # the rate as the count it was measured from
    return wilson_interval(errors / n, n)


def dev_error_interval(best: dict[str, Any], dev_size: int | None) -> tuple[float, float] | None:
    """The 95% interval of the best trial's dev error rate, when the dev set size is known."""
    error = best["metrics"].get("dev_error")
    if not dev_size or error is None or not 0 <= error <= 1:
        return None
    return binomial_interval(error, dev_size)


def diagnosis_of(summary: dict[str, Any]) -> Diagnosis | None:
    """The summary's diagnosis as a `Diagnosis`: recomputed from its errors (the wording of
    `hpsearch diagnose`), with the run's own recommendations, which quote the run's settings."""
    stored, best = summary.get("diagnosis"), summary.get("best")
    if not stored or not best:
        return None
    metrics = best.get("metrics") or {}

    def error(name: str) -> float | None:
        return stored.get(name, metrics.get(name))

    if error("train_error") is None or error("dev_error") is None:
        return None
    try:
        diagnosis = diagnose(
            error("train_error"),
            error("dev_error"),
            test_error=error("test_error"),
            human_level_error=stored.get("human_level_error"),
            bayes_error=stored.get("bayes_error"),
            tolerance=stored.get("tolerance", DEFAULT_TOLERANCE),
            groups=stored.get("groups"),
            samples=samples_from(stored.get("samples")),
            regression=bool(stored.get("regression")),
            train_dev_error=stored.get("train_dev_error"),
        )
    except ValueError:  # a summary edited by hand: report without a diagnosis, not a traceback
        return None
    return replace(diagnosis, recommendations=tuple(stored.get("recommendations") or ()))


# --- warnings -------------------------------------------------------------------------------


def collect_warnings(
    summary: dict[str, Any],
    spec: Spec,
    ranked: list[dict[str, Any]],
    interval: tuple[float, float] | None,
    dev_size: int | None,
) -> list[str]:
    """Everything in the run that should change how its result is read or the next search."""
    if not ranked:
        warnings = [no_trial_warning(summary)]
    else:
        space = spec.search.space if spec.search else {}
        warnings = edge_warnings(space, ranked[0]["params"])
        if (summary.get("constraints") or {}).get("best_within") is False:
            warnings.insert(0, outside_constraints(summary))
        if not summary.get("front"):  # front trials differ on purpose: another objective
            warnings += resolution_warnings(ranked, interval, dev_size)
    return warnings + divergence_warnings(summary["trials"], spec)


def outside_constraints(summary: dict[str, Any]) -> str:
    """No trial met the objective's constraints: what the best trial then is."""
    bounds = " and ".join(summary["constraints"]["bounds"])
    return (
        f"no trial met the constraints ({bounds}): the best trial is only the one least "
        "outside them; widen the search (or the bounds) and run again"
    )


def edge_warnings(space: dict[str, ParamSpec], params: dict[str, Any]) -> list[str]:
    """A best value in the outer 5% of its range: the best may lie beyond it."""
    out = []
    for path, param in space.items():
        value = params.get(path)
        if not param.is_range or value is None:
            continue
        position = range_position(param, value)
        low, high = short_number(param.low), short_number(param.high)
        where = f"{path}: best value {short_number(value)} is at the"
        if position <= EDGE:
            hint = (
                f"widen the range below {low}"
                if param.low != 0
                else "it cannot go lower, so consider fixing it at 0"
            )
            out.append(f"{where} low edge of [{low}, {high}]; {hint}")
        elif position >= 1 - EDGE:
            out.append(f"{where} high edge of [{low}, {high}]; widen the range above {high}")
    return out


def resolution_warnings(
    ranked: list[dict[str, Any]], interval: tuple[float, float] | None, dev_size: int | None
) -> list[str]:
    """Top trials closer together than the dev set's sampling noise cannot be told apart."""
    if interval is None or len(ranked) < 2:
        return []
    first, second = ranked[0], ranked[1]
    best, runner_up = first["metrics"].get("dev_error"), second["metrics"].get("dev_error")
    if best is None or runner_up is None:
        return []
    gap, half_width = abs(runner_up - best), (interval[1] - interval[0]) / 2
    if half_width <= gap:
        return []
    return [
        "the top trials differ by less than the dev set can resolve: dev error "
        f"{best:.2%} (trial {first['number']}) vs {runner_up:.2%} (trial {second['number']}) "
        f"is a gap of {gap:.2%}, but the best one's 95% interval on {dev_size} dev examples "
        f"is ±{half_width:.2%}; a bigger dev split (data.split) or search.rerank would tell "
        "them apart, and until then the parameter importances (and refine rounds) drawn from "
        "these trials are a rough guide"
    ]


def divergence_warnings(trials: list[dict[str, Any]], spec: Spec) -> list[str]:
    """Trials whose loss blew up, with the learning rates that did it."""
    diverged = [t for t in trials if t.get("reason") == "diverged"]
    if not diverged:
        return []
    rates = sorted({float(t["params"].get("train.lr", spec.train.lr)) for t in diverged})
    count = f"{len(diverged)} trial{'s' if len(diverged) > 1 else ''} diverged"
    shown = ", ".join(short_number(r) for r in rates)
    return [
        f"{count} (train.lr {shown}): keep train.lr below {short_number(rates[0])}, "
        "or clip gradients (train.grad_clip)"
    ]


def no_trial_warning(summary: dict[str, Any]) -> str:
    reasons = summary.get("failure_reasons") or {}
    why = ", ".join(f"{reason}: {n}" for reason, n in reasons.items())
    return "no trial completed" + (f" ({why})" if why else "") + ": there is no result to judge"


# --- the pieces every format shows ------------------------------------------------------------


def header_rows(report: Report) -> list[tuple[str, str]]:
    s = report.summary
    strategy = s.get("strategy")
    return [
        ("run", str(report.run.root)),
        ("spec", s["name"]),
        ("search", f"{strategy}, {s.get('mode')} mode" if strategy else "none (one model)"),
        ("state", live_state(report.run, s.get("state", "—"))),
        ("trials", trial_counts(report)),
        ("objective", objective_text(report.summary["objective"])),
        *(
            [("constraints", ", ".join(report.summary["objective"]["constraints"]))]
            if report.summary["objective"].get("constraints")
            else []
        ),
        ("wall time", _duration(report.wall_seconds)),
        ("device", report.device or "—"),
        *remedy_rows(report),
    ]


def objective_text(objective: dict[str, Any]) -> str:
    """'minimize dev_error', or with several objectives each one's direction and the pick."""
    if not objective.get("metrics"):
        return f"{objective['direction']} {objective['metric']}"
    pairs = zip(objective["directions"], objective["metrics"], strict=True)
    both = ", ".join(f"{way} {name}" for way, name in pairs)
    return f"{both} (Pareto front; pick: {objective['pick']})"


def front_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Several objectives: the non-dominated trials with their objective values (the
    picked one marked), in the order of the first objective."""
    names = report.summary["objective"].get("metrics") or []
    sign = -1.0 if report.direction == "maximize" else 1.0
    entries = report.summary.get("front") or []
    front = sorted(entries, key=lambda e: (sign * e["values"][0], e["trial"]))
    picked = (report.summary.get("pick") or {}).get("trial")
    head = ["trial", *names, *_column_names(report.varied), "pick"]
    columns = [_column_cells([e["params"].get(p, "—") for e in front]) for p in report.varied]
    rows = []
    for index, entry in enumerate(front):
        values = [
            _objective_cell(report, n, v) for n, v in zip(names, entry["values"], strict=True)
        ]
        mark = "picked" if entry["trial"] == picked else ""
        rows.append([str(entry["trial"]), *values, *(c[index] for c in columns), mark])
    return head, rows


def _objective_cell(report: Report, name: str, value: float) -> str:
    if name.endswith("_error"):
        return report.format_error(value)
    return _metric_cell({name: value}, name)


def front_lines(report: Report) -> list[str]:
    pick = report.summary.get("pick") or {}
    names = report.summary["objective"].get("metrics") or []
    count = len(report.summary.get("front") or [])
    lines = [
        f"{count} trial{'s' * (count != 1)} on the front of {' and '.join(names)}: no other "
        "trial is at least as good in every objective and better in one"
    ]
    if pick:
        lines.append(f"picked trial {pick['trial']} by: {pick['rule']}")
    return lines


def remedy_rows(report: Report) -> list[tuple[str, str]]:
    """Where the best trial's starting weights came from, and what it did to its data."""
    best = report.summary.get("best") or {}
    number = best.get("trial")
    spec = report.spec
    recorded: dict[str, Any] = {}
    with contextlib.suppress(InputError, OSError, ValueError, TypeError, AttributeError):
        spec = apply_params(report.spec, best.get("params") or {})
        if isinstance(number, int) and report.run.trial(number).params.is_file():
            recorded = read_json(report.run.trial(number).params) or {}
    rows = []
    source = describe(recorded.get("init_from"))
    if source is None and spec.model.init_from:
        source = spec.model.init_from
    if source:
        rows.append(("weights from", source))
    data = spec.data
    remedies = [f"{column} x{value:.3g}" for column, value in data.feature_weights.items()]
    if data.augment is not None and data.augment.noise > 0:
        remedies.append(f"input noise {data.augment.noise:.3g}")
    if data.oversample is not None:
        sampled = recorded.get("oversample") or {}
        rows_text = (
            f" ({sampled['rows_before']} -> {sampled['rows_after']} train rows)" if sampled else ""
        )
        remedies.append(f"{data.oversample.method} oversampling{rows_text}")
    if remedies:
        rows.append(("data remedies", "; ".join(remedies)))
    return rows


def trial_counts(report: Report) -> str:
    """'12 complete, 0 pruned, 2 failed (diverged: 2)'."""
    counts = ", ".join(f"{n} {state}" for state, n in report.counts.items())
    reasons = ", ".join(f"{reason}: {n}" for reason, n in report.failure_reasons.items())
    rescued = len(report.rescued)
    return (
        counts
        + (f" ({reasons})" if reasons else "")
        + (f"; {rescued} rescued by panda" if rescued else "")
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def trial_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """The ranked trials: their searched parameters, train and dev error (and the objective
    when it is not the dev error). Parameters are headed by their last key (train.lr -> lr)."""
    names = _column_names(report.varied)
    objective = report.summary["objective"]
    bounded = [c.split()[0] for c in objective.get("constraints") or []]
    named = [*(objective.get("metrics") or [report.metric]), *bounded]
    extra = [m for m in dict.fromkeys(named) if m not in ("train_error", "dev_error")]
    head = ["rank", "trial", *names, "train error", "dev error", *extra]
    columns = [
        _column_cells([t["params"].get(p, "—") for t in report.ranked]) for p in report.varied
    ]
    rows = []
    for position, trial in enumerate(report.ranked, start=1):
        metrics = trial["metrics"]
        rows.append(
            [
                str(position),
                str(trial["number"]),
                *(cells[position - 1] for cells in columns),
                report.format_error(metrics.get("train_error")),
                report.format_error(metrics.get("dev_error")),
                *(_metric_cell({**metrics, report.metric: trial["value"]}, n) for n in extra),
            ]
        )
    return head, rows


def _metric_cell(metrics: dict[str, Any], name: str) -> str:
    value = metrics.get(name)
    if value is None:
        return "—"
    return f"{int(value):,}" if name == "n_params" else short_number(float(value))


def _column_cells(values: list[Any]) -> list[str]:
    """One column's cells in one notation: when any number needs a power of ten, all of them
    get one (3.97e-3 above 4.28e-4, not 0.00397), so they compare at a glance."""
    numbers = [v for v in values if isinstance(v, float)]
    if numbers and any("e" in short_number(v) for v in numbers):
        return [_scientific(v) if isinstance(v, float) else _compact(v) for v in values]
    return [_compact(v) for v in values]


def _scientific(value: float) -> str:
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _compact(value: Any) -> str:
    """A table cell: lists without spaces ([256,128]) so they do not wrap."""
    text = format_value(value)
    return text.replace(", ", ",") if isinstance(value, list) else text


def _column_names(paths: list[str]) -> list[str]:
    short = [p.split(".")[-1] for p in paths]
    return short if len(set(short)) == len(short) else list(paths)


def _top_title(report: Report, shown: int) -> str:
    trials = f"Top {shown} trial{'s' if shown != 1 else ''}"
    if report.summary.get("front"):
        return f"{trials}: the picked one, the rest of the front, then by {report.metric}"
    return f"{trials} by {report.metric}"


def best_lines(report: Report) -> list[str]:
    best = report.summary.get("best")
    if not best:
        return ["no trial completed, so there is no best trial"]
    metrics, fmt = best["metrics"], report.format_error
    lines = [
        f"trial {best['trial']}: train error {fmt(metrics.get('train_error'))}, "
        f"dev error {fmt(metrics.get('dev_error'))}, test error {fmt(metrics.get('test_error'))}"
    ]
    if report.dev_interval is not None:
        low, high = report.dev_interval
        lines.append(
            f"dev error 95% interval (Wilson): {low:.2%} – {high:.2%} "
            f"on {report.dev_size} dev examples"
        )
    objectives = report.summary["objective"].get("metrics") or [report.metric]
    for name in objectives:
        if name not in ("train_error", "dev_error", "test_error") and name in metrics:
            lines.append(f"{name}: {short_number(float(metrics[name]))}")
    for event in report.rescued.get(best["trial"], []):
        lines.append(
            f"rescued at epoch {event['epoch']} ({event['reason']}): rolled back to its best "
            f"weights and trained on at lr {short_number(float(event['lr']))}"
        )
    return lines + rerank_lines(report)


def rerank_lines(report: Report) -> list[str]:
    """search.rerank: the top configurations by their mean over seeds, and which of them the
    seeds tell apart from the chosen one."""
    standings = report.summary.get("rerank") or []
    if not standings:
        return []
    metric = report.metric
    lines = [f"re-ranked by the mean {metric} over {len(standings[0]['values'])} seeds:"]
    for rank, standing in enumerate(standings):
        low, high = standing["interval"]
        mean = f"{short_number(standing['mean'])} ({short_number(low)} to {short_number(high)})"
        if rank == 0:
            said = "chosen"
        elif standing["distinguishable"]:
            said = "clearly worse"
        else:
            said = "cannot be told apart from the chosen one"
        lines.append(f"  trial {standing['trial']}: mean {mean} — {said}")
    return lines


def settings_rows(report: Report) -> list[tuple[str, str, bool]]:
    """(setting, value, chosen by the search) for the best trial's model and train sections."""
    searched = set(report.ranked[0]["params"]) if report.ranked else set()
    return [
        (f"{section}.{key}", format_value(value), f"{section}.{key}" in searched)
        for section, values in report.best_settings.items()
        for key, value in values.items()
    ]


def diagnosis_lines(report: Report) -> list[str]:
    """Errors, bias, variance and verdict; groups and recommendations are shown apart."""
    if report.diagnosis is None:
        return ["no diagnosis: no trial completed"]
    bare = replace(report.diagnosis, groups=None, mismatch=None, recommendations=())
    return summary_lines(bare)


def recommendations(report: Report) -> list[str]:
    return list(report.diagnosis.recommendations) if report.diagnosis else []


MISMATCH_HEAD = ["group", "train error", "dev error", "test error", "verdict"]


def mismatch_rows(report: Report) -> list[list[str]]:
    """The best trial's train, dev and test error on each group (data distribution), with the
    group's rows in each split and its share of the split, and its verdict."""
    d = report.diagnosis
    if d is None or not d.groups:
        return []
    fmt = report.format_error
    totals = {
        split: sum(g.count(split) or 0 for g in d.groups) for split in ("train", "dev", "test")
    }

    def cell(group: GroupErrors, split: str) -> str:
        error, count = fmt(group.error(split)), group.count(split)
        if count is None:
            return error
        share = f", {count / totals[split]:.0%}" if totals[split] else ""
        return f"{error} (n={count}{share})"

    return [
        [g.name, cell(g, "train"), cell(g, "dev"), cell(g, "test"), g.verdict] for g in d.groups
    ]


def mismatch_lines(report: Report) -> list[str]:
    d = report.diagnosis
    if d is None or not d.groups:
        return []
    if d.mismatch:
        verdict = "data mismatch: a group under-represented in train does clearly worse on dev"
    elif d.mismatch is None:
        verdict = "data mismatch: can't tell with these group sizes"
    else:
        verdict = (
            "no data mismatch: every group is in train as in dev (a gap between groups is a "
            "harder group, not a mismatch)"
        )
    chain = " ≤ ".join(f"{label} {report.format_error(v)}" for label, v in mismatch_ordering(d))
    lines = [verdict, *(f"{g.name}: {g.verdict} — {g.why}" for g in d.groups)]
    lines.append(f"chain, lowest first: {chain}")
    if report.spec.data.group:
        lines.append(
            f"(the group column '{report.spec.data.group}' names each row's distribution; it "
            "is not one of the model's features)"
        )
    return lines


IMPROVE_HEAD = ["round", "verdict", "change", "dev error"]


def improve_rows(report: Report) -> list[list[str]]:
    """The improve chain: each round, the verdict that led to it, what changed, its dev error."""
    from hpsearch.improve import dev_text

    rounds = (report.improve or {}).get("rounds") or []
    rows = []
    for r in rounds:
        changes = "; ".join(
            f"{c['path']}: {format_value(c.get('old'))} → {format_value(c.get('new'))}"
            for c in r.get("changes") or []
        )
        mark = " (this run)" if r.get("run") == report.run.name else ""
        because = r.get("because") or f"start: {r.get('verdict') or r.get('run', '')}"
        rows.append([f"{r.get('round')}{mark}", because, changes or "—", dev_text(r)])
    return rows


def improve_chain_lines(report: Report) -> list[str]:
    """The chain as lines, for a terminal of any width: one round a line."""
    return [
        f"round {number}: {because}"
        + (f" — {change}" if change != "—" else "")
        + f" — dev error {dev}"
        for number, because, change, dev in improve_rows(report)
    ] + improve_lines(report)


def improve_lines(report: Report) -> list[str]:
    chain = report.improve or {}
    lines = []
    if chain.get("stop"):
        lines.append(f"stopped: {chain['stop']}")
    if chain.get("result"):
        lines.append(f"result: {chain['result']}")
    return lines


# --- console ----------------------------------------------------------------------------------


def render_console(report: Report, console: Console) -> None:
    """The report as rich tables and rules, for a terminal."""
    console.rule(Text(f"hpsearch report: {report.summary['name']}", style="bold"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in header_rows(report):
        grid.add_row(key, _text(value))
    console.print(grid)
    head, rows = trial_table(report)
    console.print(_rich_table(_top_title(report, len(rows)), head, rows))
    if report.summary.get("front"):
        console.rule("Pareto front")
        console.print(_rich_table(None, *front_rows(report)))
        _print_lines(console, front_lines(report))
    console.rule("best trial")
    _print_lines(console, best_lines(report))
    console.print(_settings_tables(report))
    console.rule("diagnosis")
    _print_lines(console, diagnosis_lines(report))
    if mismatch_rows(report):
        console.rule("data mismatch")
        console.print(_rich_table(None, MISMATCH_HEAD, mismatch_rows(report)))
        _print_lines(console, mismatch_lines(report))
    if recommendations(report):
        console.rule("what to try next")
        _print_lines(console, [f"- {r}" for r in recommendations(report)])
    if improve_rows(report):
        console.rule("improve chain")
        _print_lines(console, improve_chain_lines(report))
    if report.warnings:
        console.rule("warnings", style="yellow")
        for warning in report.warnings:
            console.print(_text(f"! {warning}", "yellow"))


def _print_lines(console: Console, lines: list[str]) -> None:
    for line in lines:
        console.print(_text(line))


def _text(value: str, style: str = "") -> Text:
    """A rich Text of a value from the run: a '[' is never read as markup, and a control
    character (an escape sequence from the data) is shown, not sent to the terminal."""
    return Text(printable(value), style=style)


def _rich_table(title: str | None, head: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for index, name in enumerate(head):
        # On a narrow terminal the headers wrap at their spaces, never the values: each column
        # is as wide as its widest value, or its header's longest word.
        widest = max((len(row[index]) for row in rows), default=0)
        word = max(len(w) for w in name.split())
        justify = "right" if name in ("rank", "trial") else "left"
        table.add_column(
            name, justify=justify, overflow="fold", min_width=widest, max_width=max(widest, word)
        )
    for row in rows:
        table.add_row(*(_text(cell) for cell in row))
    return table


def _settings_tables(report: Report) -> Columns:
    """The model and train sections side by side; '*' marks the values the search chose."""
    tables = []
    for section in report.best_settings:
        table = Table(title=f"{section} (* searched)", title_justify="left", show_header=False)
        table.add_column()
        table.add_column()
        for name, value, searched in settings_rows(report):
            if name.startswith(f"{section}."):
                key = name.removeprefix(f"{section}.") + (" *" if searched else "")
                table.add_row(_text(key, "bold" if searched else ""), _text(value))
        tables.append(table)
    return Columns(tables)


# --- markdown -------------------------------------------------------------------------------


def render_markdown(report: Report) -> str:
    """GitHub-flavoured markdown, e.g. for a CI job summary."""
    head, rows = trial_table(report)
    settings = [[f"{n} *" if s else n, v] for n, v, s in settings_rows(report)]
    out = [f"# hpsearch report: {report.summary['name']}", ""]
    out += [f"- **{key}**: {_md(value)}" for key, value in header_rows(report)]
    out += ["", f"## {_top_title(report, len(rows))}", "", *_md_table(head, rows)]
    if report.summary.get("front"):
        out += ["", "## Pareto front", "", *_md_table(*front_rows(report))]
        out += ["", *(f"- {_md(x)}" for x in front_lines(report))]
    out += ["", "## Best trial", "", *(f"- {_md(x)}" for x in best_lines(report))]
    out += ["", *_md_table(["setting (* searched)", "value"], settings)]
    out += ["", "## Diagnosis", "", *(f"- {_md(x)}" for x in diagnosis_lines(report))]
    if mismatch_rows(report):
        out += ["", "## Data mismatch", ""]
        out += _md_table(MISMATCH_HEAD, mismatch_rows(report))
        out += ["", *(f"- {_md(x)}" for x in mismatch_lines(report))]
    if recommendations(report):
        out += ["", "## What to try next", "", *(f"- {_md(r)}" for r in recommendations(report))]
    if improve_rows(report):
        out += ["", "## Improve chain", "", *_md_table(IMPROVE_HEAD, improve_rows(report))]
        out += ["", *(f"- {_md(x)}" for x in improve_lines(report))]
    if report.warnings:
        out += ["", "## Warnings", "", *(f"- ⚠️ {_md(w)}" for w in report.warnings)]
    return "\n".join(out) + "\n"


# What would turn text from the run into markup: raw HTML, a table cell's end, a link
_MD_SPECIAL = re.compile(r"([<>|\\]|\](?=\())")


def _md(text: str) -> str:
    """Text from the run (data values included) as literal markdown: one line, with no raw
    HTML, no table cell broken, no link and no heading (a leading #)."""
    flat = printable(" ".join(str(text).splitlines()))
    escaped = _MD_SPECIAL.sub(r"\\\1", flat)
    return "\\" + escaped if escaped.startswith("#") else escaped


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in head) + " |", "|" + " --- |" * len(head)]
    return lines + ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]


# --- HTML -------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:3px 9px;
font-size:14px;text-align:left}th{background:#f3f3f3}td.searched{font-weight:bold}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}dd{margin:0}
.warn{color:#8a4b00;background:#fff6e5;padding:.3em .6em;border-left:3px solid #e69500}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:14px}
"""

_CAPTIONS = {
    "pareto_front": "Every trial by its first two objectives: the front (blue) is where "
    "neither can improve without the other getting worse; the star is the picked trial.",
    "best_so_far": "The objective of every trial and the best so far: has the search stopped "
    "improving?",
    "learning_curves": "Train (solid) and dev (dashed) loss per epoch of the top trials: the gap "
    "between them is variance; a high train loss is bias.",
    "parallel_coordinates": "Every complete trial across the searched parameters (log ranges on "
    "a log axis), colored by the objective.",
    "importance": "Parameter importance (Optuna's fANOVA): which settings moved the objective.",
}


def render_html(report: Report, images: dict[str, Path]) -> str:
    """One self-contained HTML file: inline CSS, plots embedded as data URIs, no links out."""
    esc = html.escape
    head, rows = trial_table(report)
    name = esc(report.summary["name"])
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>hpsearch report: {name}</title><style>{_CSS}</style></head><body>",
        f"<h1>hpsearch report: {name}</h1><dl>",
        *(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in header_rows(report)),
        "</dl>",
        f"<h2>{esc(_top_title(report, len(rows)))}</h2>",
        _html_table(head, rows),
        *(
            ["<h2>Pareto front</h2>", _html_table(*front_rows(report))]
            + [_html_list(front_lines(report))]
            if report.summary.get("front")
            else []
        ),
        "<h2>Best trial</h2>",
        _html_list(best_lines(report)),
        _settings_html(report),
        "<h2>Diagnosis</h2>",
        _html_list(diagnosis_lines(report)),
    ]
    if mismatch_rows(report):
        parts += [
            "<h2>Data mismatch</h2>",
            _html_table(MISMATCH_HEAD, mismatch_rows(report)),
            _html_list(mismatch_lines(report)),
        ]
    if recommendations(report):
        parts += ["<h2>What to try next</h2>", _html_list(recommendations(report))]
    if improve_rows(report):
        parts += ["<h2>Improve chain</h2>", _html_table(IMPROVE_HEAD, improve_rows(report))]
        parts += [_html_list(improve_lines(report))]
    if report.warnings:
        parts += ["<h2>Warnings</h2>"]
        parts += [f"<p class='warn'>⚠ {esc(w)}</p>" for w in report.warnings]
    if images:
        parts += ["<h2>Plots</h2>", *(_figure(n, p) for n, p in images.items())]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    header = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{header}</tr>{body}</table>"


def _html_list(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


def _settings_html(report: Report) -> str:
    rows = "".join(
        f"<tr><td{' class=searched' if s else ''}>{html.escape(n)}{' *' if s else ''}</td>"
        f"<td>{html.escape(v)}</td></tr>"
        for n, v, s in settings_rows(report)
    )
    return f"<table><tr><th>setting (* searched)</th><th>value</th></tr>{rows}</table>"


def _figure(name: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    if name.startswith("param_"):
        caption = f"The objective against {name.removeprefix('param_')}: where the good values lie."
    else:
        caption = _CAPTIONS.get(name, name)
    return (
        f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


# --- writing files, listing runs ---------------------------------------------------------------


def write_report(run: RunFolder, fmt: str, top: int = 10) -> Path | None:
    """Write `report.html` (with every plot) or `report.md` into the run's report folder and
    return its path; None for the formats printed rather than written (table, json)."""
    if fmt not in ("html", "markdown"):
        return None
    report = load_report(run, top)  # read (and fail on bad input) before drawing anything
    if fmt == "html":
        images = write_plots(run, top=min(top, LEARNING_CURVES))
        path, text = run.report_dir / "report.html", render_html(report, images)
    else:
        path, text = run.report_dir / "report.md", render_markdown(report)
    write_text(path, text)
    return path


def runs_table(runs_dir: Path, folders: list[RunFolder] | None = None) -> Table:
    """One row per run folder under `runs_dir`, newest last; unreadable runs say 'unknown'."""
    table = Table(title=f"run folders in {runs_dir}/", title_justify="left")
    for column in ("run", "date", "strategy", "state", "complete/total", "best"):
        # a run's full name is what --resume and report take: fold it, never cut it
        table.add_column(column, overflow="fold" if column == "run" else "ellipsis")
    for folder in list_runs(runs_dir) if folders is None else folders:
        table.add_row(*(_text(cell) for cell in run_row(folder)))
    return table


def run_row(folder: RunFolder) -> list[str]:
    date = run_date(folder)
    try:
        s = read_json(folder.summary)
        counts, best = s["counts"], s.get("best")
        shown = f"{s['objective']['metric']} {best['value']:.4g}" if best else "—"
        trials = f"{counts.get('complete', 0)}/{sum(counts.values())}"
        strategy = s.get("strategy") or "one model"
        return [folder.name, date, strategy, live_state(folder, s["state"]), trials, shown]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing or damaged
        # no summary yet (it comes with the first finished trial): its owner tells
        state = "unknown" if folder.summary.exists() else live_state(folder, "running")
        return [folder.name, date, "—", state, "—", "—"]


def live_state(folder: RunFolder, recorded: str) -> str:
    """The recorded state, unless it says running and no process holds the run any more: then
    its process was killed (SIGKILL, a crash, a power cut) before it could say so."""
    if recorded == "running" and owner_of(folder) is None:
        return "killed (resumable)"
    return recorded


def run_date(folder: RunFolder) -> str:
    """When the run started: the time stamp in its folder name, else its spec file's time."""
    match = _FOLDER_STAMP.search(folder.name)
    try:
        when = datetime.strptime(match[1], "%Y%m%d-%H%M%S") if match else None
    except ValueError:  # digits that are no date: fall back on the file time
        when = None
    try:
        when = when or datetime.fromtimestamp(folder.spec.stat().st_mtime)
    except OSError:
        return "—"
    return when.strftime("%Y-%m-%d %H:%M")


def study_folder(url: str, study_name: str, runs_dir: Path) -> RunFolder:
    """`report --storage --study`: a local run folder rebuilt from the database alone."""
    # the study's layer (Optuna, SQLAlchemy) only for this: reading a folder does not need it
    from os import devnull

    from hpsearch.outcome import RunState
    from hpsearch.runs import write_json
    from hpsearch.space import decode_params, parse_space
    from hpsearch.spec import spec_to_yaml
    from hpsearch.storage import masked, probe_storage
    from hpsearch.study import (
        FINAL_ATTR,
        SPEC_ATTR,
        STATE_ATTR,
        load_existing_study,
        load_rounds,
        open_storage,
        quiet_optuna,
        study_outcomes,
        study_spec,
    )
    from hpsearch.summary import build_summary

    with quiet_optuna():
        probe_storage(url)
        study = load_existing_study(open_storage(url, Path(devnull)), study_name)
        if SPEC_ATTR not in study.user_attrs:
            raise InputError(f"--study: study '{study_name}' has no hpsearch spec attached")
        spec = study_spec(study, url, study_name)
        run = RunFolder(runs_dir / study_name)
        run.root.mkdir(parents=True, exist_ok=True)
        write_text(run.spec, spec_to_yaml(masked(spec)))
        params = parse_space(spec)
        outcomes = study_outcomes(study, lambda stored: decode_params(params, stored))
        final = study.user_attrs.get(FINAL_ATTR) or {}
        test = (final.get("best") or {}).get("metrics", {})
        test = {k: v for k, v in test.items() if k.startswith("test_")}
        state = study.user_attrs.get(STATE_ATTR, RunState.RUNNING.value)
        summary = build_summary(
            run, spec, outcomes, state, test, final.get("diagnosis"), None, study_name
        )
        write_json(run.summary, summary)
        write_json(run.rounds, load_rounds(study))
        return run
