"""Explain a run: rich tables for the terminal, markdown for CI job summaries, one
self-contained HTML file, and the JSON summary. Reads only the run folder."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hpsearch.diagnosis import Diagnosis, GroupErrors, summary_lines
from hpsearch.errors import InputError
from hpsearch.runs import RunFolder, latest_run, list_runs, read_json
from hpsearch.space import apply_params
from hpsearch.spec import Spec, load_spec

EDGE = 0.05  # a best value in the outer 5% of its range is "on the edge"


@dataclass
class Report:
    run: RunFolder
    summary: dict[str, Any]
    spec: Spec
    env: dict[str, Any]
    split: dict[str, Any]
    ranked: list[dict[str, Any]]  # top complete trials, best first
    varied: list[str]  # parameter names the search varied
    best_settings: dict[str, Any]  # the best trial's full model and train sections
    dev_interval: tuple[float, float] | None  # 95% interval of the best dev error
    warnings: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.summary["objective"]["metric"]


def resolve_run(run: str | None, runs_dir: Path) -> RunFolder:
    """A run folder path, a folder name under runs_dir, or None for the newest run."""
    if run is None:
        folder = latest_run(runs_dir)
        if folder is None:
            raise InputError(f"no run folders under {runs_dir}; run `hpsearch run SPEC` first")
    else:
        candidates = [Path(run), runs_dir / run]
        folder = next((RunFolder(p) for p in candidates if (p / "spec.yaml").is_file()), None)
        if folder is None:
            raise InputError(f"no run folder '{run}' (looked in {runs_dir})")
    if not folder.summary.is_file():
        raise InputError(f"{folder.root} has no summary.json yet (the run never started a trial)")
    return folder


def _read(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def rank(summary: dict[str, Any]) -> list[dict[str, Any]]:
    maximize = summary["objective"]["direction"] == "maximize"
    complete = [t for t in summary["trials"] if t["state"] == "complete" and t["value"] is not None]
    return sorted(complete, key=lambda t: (-t["value"] if maximize else t["value"], t["number"]))


def wilson_interval(errors: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for an error rate measured on n examples."""
    if n <= 0:
        return (0.0, 1.0)
    center = (errors + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(errors * (1 - errors) / n + z * z / (4 * n * n))
    return (max(0.0, center - half), min(1.0, center + half))


def edge_warnings(spec: Spec, best: dict[str, Any]) -> list[str]:
    """A best value in the outer 5% of its range suggests the range should be wider."""
    out = []
    for name, param in spec.search.space.items() if spec.search else []:
        value = best["params"].get(name)
        if not param.is_range or value is None:
            continue
        low, high, at = param.low, param.high, float(value)
        if param.log:
            low, high, at = math.log10(low), math.log10(high), math.log10(at)
        position = (at - low) / (high - low)
        if position <= EDGE:
            out.append(
                f"{name}: the best value {value:.3g} is at the low edge of "
                f"[{param.low:g}, {param.high:g}]; widen the range below {param.low:g}"
            )
        elif position >= 1 - EDGE:
            out.append(
                f"{name}: the best value {value:.3g} is at the high edge of "
                f"[{param.low:g}, {param.high:g}]; widen the range above {param.high:g}"
            )
    return out


def _warnings(
    summary: dict[str, Any],
    spec: Spec,
    ranked: list[dict[str, Any]],
    interval: tuple[float, float] | None,
) -> list[str]:
    out: list[str] = []
    if not ranked:
        out.append("no trial completed: see the failure reasons above")
        return out
    out.extend(edge_warnings(spec, ranked[0]))
    if interval is not None and len(ranked) >= 2:
        gap = abs(ranked[1]["metrics"].get("dev_error", 0) - ranked[0]["metrics"]["dev_error"])
        half = (interval[1] - interval[0]) / 2
        if half > gap:
            out.append(
                f"the dev set is too small to tell the top trials apart: their dev errors differ "
                f"by {gap:.2%}, but the best one's 95% interval is ±{half:.2%} (a bigger dev split "
                "would resolve it: data.split)"
            )
    diverged = [t for t in summary["trials"] if t["reason"] == "diverged"]
    if diverged:
        rates = sorted({t["params"].get("train.lr") for t in diverged} - {None})
        shown = f" (train.lr {', '.join(f'{r:.3g}' for r in rates)})" if rates else ""
        out.append(
            f"{len(diverged)} trial(s) diverged{shown}: lower the learning rate range or "
            "clip gradients (train.grad_clip)"
        )
    return out


def load_report(run: RunFolder, top: int = 10) -> Report:
    summary = read_json(run.summary)
    spec = load_spec(run.spec)
    split = _read(run.split)
    ranked = rank(summary)
    best = ranked[0] if ranked else None
    best_spec = apply_params(spec, best["params"]) if best else spec
    interval = None
    dev_size = (split.get("splits") or {}).get("dev", {}).get("size")
    if best and split.get("task") != "regression" and dev_size and "dev_error" in best["metrics"]:
        interval = wilson_interval(best["metrics"]["dev_error"], dev_size)
    return Report(
        run=run,
        summary=summary,
        spec=spec,
        env=_read(run.env),
        split=split,
        ranked=ranked[:top],
        varied=list(spec.search.space) if spec.search else [],
        best_settings=best_spec.model_dump(mode="json", include={"model", "train"}),
        dev_interval=interval,
        warnings=_warnings(summary, spec, ranked, interval),
    )


# --- text shared by every format --------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def header_lines(report: Report) -> list[str]:
    s = report.summary
    counts = ", ".join(f"{n} {state}" for state, n in s["counts"].items())
    reasons = ", ".join(f"{r}: {n}" for r, n in (s.get("failure_reasons") or {}).items())
    wall = s.get("wall_seconds")
    lines = [
        f"run: {s['run']}",
        f"spec: {s['name']}   strategy: {s['strategy'] or 'single model'}   "
        f"mode: {s['mode'] or '—'}   state: {s['state']}",
        f"trials: {counts}" + (f"   (failed: {reasons})" if reasons else ""),
        f"objective: {s['objective']['direction']} {report.metric}   "
        f"wall time: {f'{wall:.1f} s' if wall is not None else '—'}   "
        f"device: {report.env.get('device', '—')}",
    ]
    return lines


def best_lines(report: Report) -> list[str]:
    best = report.summary.get("best")
    if not best:
        return ["no complete trial"]
    metrics = best["metrics"]
    lines = [
        f"best trial {best['trial']}: train error {_pct(metrics.get('train_error'))}, "
        f"dev error {_pct(metrics.get('dev_error'))}, test error {_pct(metrics.get('test_error'))}"
    ]
    if report.dev_interval:
        low, high = report.dev_interval
        size = report.split["splits"]["dev"]["size"]
        lines.append(f"dev error 95% interval: {_pct(low)} – {_pct(high)} ({size} dev examples)")
    for section in ("model", "train"):
        settings = ", ".join(
            f"{k}={_value(v)}" for k, v in report.best_settings[section].items() if v is not None
        )
        lines.append(f"{section}: {settings}")
    return lines


def _diagnosis(report: Report) -> Diagnosis | None:
    d = report.summary.get("diagnosis")
    if not d:
        return None
    groups = None
    if d.get("groups") is not None:
        groups = tuple(
            GroupErrors(name, g.get("train_error"), g.get("dev_error"))
            for name, g in d["groups"].items()
        )
    fields = {k: d.get(k) for k in Diagnosis.__dataclass_fields__ if k not in ("groups",)}
    fields["recommendations"] = tuple(d.get("recommendations") or ())
    return Diagnosis(**{**fields, "groups": groups})


def diagnosis_lines(report: Report) -> list[str]:
    diagnosis = _diagnosis(report)
    if diagnosis is None:
        return ["no diagnosis (no trial completed)"]
    return summary_lines(diagnosis)


def trial_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The ranked trials; parameters headed by their last key (train.lr -> lr)."""
    extra = [] if report.metric == "dev_error" else [report.metric]
    head = ["#", "trial", *(n.split(".")[-1] for n in report.varied), "train err", "dev err"]
    rows = []
    for position, trial in enumerate(report.ranked, start=1):
        params = trial["params"]
        rows.append(
            [
                str(position),
                str(trial["number"]),
                *(_short(params.get(name, "—")) for name in report.varied),
                _pct(trial["metrics"].get("train_error")),
                _pct(trial["metrics"].get("dev_error")),
                *(_value(trial["value"]) for _ in extra),
            ]
        )
    return head + extra, rows


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value).replace(" ", "")


# --- renderers --------------------------------------------------------------------------------


def render_console(report: Report, console: Console) -> None:
    for line in header_lines(report):
        console.print(line, highlight=False, markup=False)
    head, rows = trial_rows(report)
    table = Table(title=f"top {len(rows)} trials", title_justify="left")
    for name in head:
        table.add_column(name, justify="right" if name in ("#", "trial") else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.rule("best trial")
    for line in best_lines(report):
        console.print(line, highlight=False, markup=False)
    console.rule("diagnosis")
    for line in diagnosis_lines(report):
        console.print(line, highlight=False, markup=False)
    if report.warnings:
        console.rule("warnings")
        for warning in report.warnings:
            console.print(f"[yellow]! {escape(warning)}[/]", highlight=False)


def render_markdown(report: Report) -> str:
    head, rows = trial_rows(report)
    out = [
        f"# hpsearch report: {report.summary['name']}",
        "",
        *(f"- {x}" for x in header_lines(report)),
    ]
    out += [
        "",
        "## Top trials",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    out += ["", "## Best trial", "", *(f"- {x}" for x in best_lines(report))]
    out += ["", "## Diagnosis", "", "```", *diagnosis_lines(report), "```"]
    if report.warnings:
        out += ["", "## Warnings", "", *(f"- {w}" for w in report.warnings)]
    return "\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
font-size:14px}th{background:#f2f2f2}pre{background:#f7f7f7;padding:1em;white-space:pre-wrap}
.warn{color:#a15c00}img{max-width:100%;border:1px solid #eee;margin:.5em 0}"""


def render_html(report: Report, images: dict[str, Path]) -> str:
    """One file, nothing external: the plots are embedded as data URIs."""
    esc = html.escape
    head, rows = trial_rows(report)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>hpsearch: "
        f"{esc(report.summary['name'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>hpsearch report: {esc(report.summary['name'])}</h1>",
        "<ul>",
        *(f"<li>{esc(x)}</li>" for x in header_lines(report)),
        "</ul>",
        "<h2>Top trials</h2><table><tr>",
        *(f"<th>{esc(h)}</th>" for h in head),
        "</tr>",
    ]
    parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
    parts += [
        "</table><h2>Best trial</h2><ul>",
        *(f"<li>{esc(x)}</li>" for x in best_lines(report)),
        "</ul><h2>Diagnosis</h2><pre>",
        esc("\n".join(diagnosis_lines(report))),
        "</pre>",
    ]
    if report.warnings:
        parts += [
            "<h2>Warnings</h2><ul>",
            *(f"<li class='warn'>{esc(w)}</li>" for w in report.warnings),
            "</ul>",
        ]
    if images:
        parts.append("<h2>Plots</h2>")
        for name, path in images.items():
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(
                f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{esc(name.replace('_', ' '))}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run: RunFolder, fmt: str, top: int = 10) -> Path | None:
    """Write report.html (with plots) or report.md into the run's report folder."""
    report = load_report(run, top)
    run.report_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        from hpsearch.plots import write_plots

        path = run.report_dir / "report.html"
        path.write_text(render_html(report, write_plots(run)), encoding="utf-8")
        return path
    if fmt == "markdown":
        path = run.report_dir / "report.md"
        path.write_text(render_markdown(report), encoding="utf-8")
        return path
    return None


def runs_table(runs_dir: Path) -> Table:
    """`hpsearch runs`: one row per run folder, oldest first."""
    table = Table(title=f"runs in {runs_dir}", title_justify="left")
    for name in ("run", "strategy", "state", "trials", "best"):
        table.add_column(name)
    for folder in list_runs(runs_dir):
        try:
            s = read_json(folder.summary)
            done = sum(s["counts"].values())
            best = s["best"]
            shown = f"{s['objective']['metric']} {best['value']:.4g}" if best else "—"
            table.add_row(
                folder.name,
                s["strategy"] or "single",
                s["state"],
                f"{s['counts']['complete']}/{done}",
                shown,
            )
        except (OSError, ValueError, KeyError, TypeError):
            table.add_row(folder.name, "—", "unknown", "—", "—")
    return table
