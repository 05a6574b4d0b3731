"""Thin typer commands: parse arguments, call one function, map errors to exit codes."""

from __future__ import annotations

import functools
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hpsearch.errors import InputError
from hpsearch.runs import DEFAULT_RUNS_DIR

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter search for PyTorch MLPs that explains its result.",
)

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _fail(message: str, code: int) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return typer.Exit(code)


def user_errors(command):
    """Bad input becomes one line on stderr and exit code 2; Ctrl-C (and SIGTERM, what
    schedulers, systemd and `docker stop` send) becomes 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            return command(*args, **kwargs)
        except InputError as exc:
            raise _fail(str(exc), EXIT_INPUT) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", EXIT_INTERRUPTED) from None

    return wrapper


SpecArg = Annotated[
    Path, typer.Argument(help="The spec YAML file.", show_default=False, metavar="SPEC")
]


@app.command()
@user_errors
def run(
    spec: SpecArg,
    trials: Annotated[
        int | None, typer.Option(help="Trial budget (overrides search.trials).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Caviar worker processes.")] = None,
    mode: Annotated[str | None, typer.Option(help="caviar or panda.")] = None,
    strategy: Annotated[str | None, typer.Option(help="grid, random, evolution or tpe.")] = None,
    timeout: Annotated[
        str | None, typer.Option(help="Stop starting trials after e.g. 30m.")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="Database URL for the study (default: a journal file).")
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(help="Study name in --storage; processes naming the same study share it."),
    ] = None,
    runs_dir: Annotated[
        Path, typer.Option("--runs-dir", help="Parent folder of run folders.")
    ] = DEFAULT_RUNS_DIR,
    resume: Annotated[
        str | None, typer.Option(help="Continue a stopped run: its folder, or 'latest'.")
    ] = None,
    fail_under: Annotated[
        list[str] | None,
        typer.Option(help="Exit 1 when the best trial's METRIC=VALUE is not reached."),
    ] = None,
    fail_over: Annotated[
        list[str] | None, typer.Option(help="Exit 1 when the best trial's METRIC exceeds VALUE.")
    ] = None,
    interactive: Annotated[
        bool, typer.Option(help="Panda: review each proposal before it runs (terminal only).")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the JSON summary on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Run a search (or train one model when the spec has no search section)."""
    from hpsearch.engine import Interrupted, RunOptions, run_spec
    from hpsearch.gates import failed_gates, parse_gate
    from hpsearch.progress import make_progress

    gates = [parse_gate(g, True) for g in fail_under or []]
    gates += [parse_gate(g, False) for g in fail_over or []]
    options = RunOptions(
        runs_dir=runs_dir,
        trials=trials,
        workers=workers,
        mode=mode,
        strategy=strategy,
        timeout=timeout,
        storage=storage,
        resume=resume,
        interactive=interactive,
        study=study,
    )
    try:
        result = run_spec(spec, options, make_progress(quiet))
    except Interrupted as stop:
        print(f"interrupted: finished trials are kept in {stop.run.root}", file=sys.stderr)
        print(f"resume with: hpsearch run {spec} --resume {stop.run.root}", file=sys.stderr)
        if json_output:
            print(json.dumps(stop.summary, indent=2))
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _print_outcome(result.summary)
    if json_output:
        print(json.dumps(result.summary, indent=2))
    misses = failed_gates(gates, result.summary)
    for miss in misses:
        print(f"gate failed: {miss}", file=sys.stderr)
    if misses or result.summary["best"] is None:
        raise typer.Exit(EXIT_GATE)


@app.command()
@user_errors
def worker(
    storage: Annotated[str, typer.Option(help="The study's database URL.")],
    study: Annotated[str, typer.Option(help="The study's name (printed by `hpsearch run`).")],
    workers: Annotated[int | None, typer.Option(help="Processes on this machine.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    data: Annotated[
        Path | None, typer.Option(help="This machine's copy of the data file, if elsewhere.")
    ] = None,
    runs_dir: Annotated[
        Path, typer.Option("--runs-dir", help="Where this machine writes trial folders.")
    ] = DEFAULT_RUNS_DIR,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the next round before leaving.")
    ] = 60.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Join a study in a database from this (or another) machine and work on its trials."""
    from hpsearch.engine import Interrupted, join_study
    from hpsearch.progress import make_progress

    progress = make_progress(quiet)
    try:
        result = join_study(storage, study, runs_dir, progress, workers, device, data, wait)
    except Interrupted:
        print(f"interrupted: finished trials are kept in the study '{study}'", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        progress.close()
    _print_outcome(result.summary)


def _print_outcome(summary: dict[str, Any]) -> None:
    best = summary["best"]
    print(f"run folder: {summary['run']}", file=sys.stderr)
    if best is None:
        print("no trial completed", file=sys.stderr)
        return
    metrics = best["metrics"]
    shown = "  ".join(
        f"{key} {metrics[key]:.4f}"
        for key in ("train_error", "dev_error", "test_error", "dev_accuracy")
        if key in metrics
    )
    print(f"best trial {best['trial']}: {shown}", file=sys.stderr, flush=True)


@app.command()
@user_errors
def rerun(
    run: Annotated[str, typer.Argument(help="Run folder, its name, or 'latest'.")],
    trial: Annotated[int, typer.Argument(help="The trial's number.")],
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    runs_dir: Annotated[
        Path, typer.Option("--runs-dir", help="Where run folders are.")
    ] = DEFAULT_RUNS_DIR,
) -> None:
    """Re-train one trial from its recorded spec, params and seed, and compare.

    Exits 1 when the metrics differ from the recorded ones by more than 1e-4.
    """
    from hpsearch.engine import rerun as rerun_trial
    from hpsearch.objective import REPRODUCED_WITHIN

    again = rerun_trial(run, trial, runs_dir, device)
    old, new = again.recorded, again.outcome
    print(f"trial {trial}: recorded {old.state}, rerun {new.state}  (seed {old.seed})")
    for key in sorted(old.metrics.keys() | new.metrics.keys()):
        if key.startswith(("train_", "dev_")):
            before, after = old.metrics.get(key), new.metrics.get(key)
            print(f"  {key:<20} {_number(before):>12} {_number(after):>12}")
    print(f"written to {again.folder}")
    if again.reproduced:
        print(f"match: every metric within {REPRODUCED_WITHIN:g}")
        return
    print(f"differ: by up to {again.difference:.3g}", file=sys.stderr)
    raise typer.Exit(EXIT_GATE)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


@app.command()
@user_errors
def validate(spec: SpecArg) -> None:
    """Check a spec (and its data) without running anything."""
    from hpsearch.engine import prepare
    from hpsearch.spec import load_spec

    loaded = load_spec(spec)
    data = prepare(loaded)
    sizes = "/".join(str(len(split)) for split in data.splits.values())
    names = "/".join(data.splits)
    print(f"{spec}: valid — {data.task} task, {data.n_features} features, {names} {sizes}")


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema (for editor completion and validation)."""
    from hpsearch.spec import Spec

    print(json.dumps(Spec.model_json_schema(), indent=2))


def main() -> None:  # pragma: no cover - console entry point
    app()


@app.command()
@user_errors
def report(
    run: Annotated[
        str | None, typer.Argument(help="Run folder (default: the newest under --runs-dir).")
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="table, json, markdown or html.")
    ] = "table",
    top: Annotated[int, typer.Option(help="How many of the best trials to list.")] = 10,
    runs_dir: Annotated[
        Path, typer.Option("--runs-dir", help="Where run folders are.")
    ] = DEFAULT_RUNS_DIR,
    storage: Annotated[
        str | None, typer.Option(help="Report a study from this database alone.")
    ] = None,
    study: Annotated[str | None, typer.Option(help="The study's name (with --storage).")] = None,
) -> None:
    """Explain a run: trials, best model, bias/variance diagnosis, warnings, plots."""
    from rich.console import Console

    from hpsearch import report as reports

    if output_format not in ("table", "json", "markdown", "html"):
        raise InputError(f"--format: '{output_format}' is not one of table, json, markdown, html")
    if (storage is None) != (study is None):
        raise InputError("--storage and --study go together")
    if storage is not None:
        from hpsearch.engine import study_folder

        folder = study_folder(storage, study, runs_dir)
    else:
        folder = reports.resolve_run(run, runs_dir)
    if output_format == "json":
        print(folder.summary.read_text(encoding="utf-8"), end="")
        return
    if output_format == "table":
        reports.render_console(reports.load_report(folder, top), Console())
        return
    path = reports.write_report(folder, output_format, top)
    if output_format == "markdown":
        print(path.read_text(encoding="utf-8"), end="")
    print(f"wrote {path}", file=sys.stderr)


@app.command()
@user_errors
def runs(
    runs_dir: Annotated[
        Path, typer.Option("--runs-dir", help="Where run folders are.")
    ] = DEFAULT_RUNS_DIR,
) -> None:
    """List run folders: strategy, state, trials and best value."""
    from rich.console import Console

    from hpsearch.report import runs_table

    Console(width=None if sys.stdout.isatty() else 200).print(runs_table(runs_dir))


def _error_rate(name: str, text: str | None) -> float | None:
    from hpsearch.diagnosis import parse_error_rate

    if text is None:
        return None
    try:
        return parse_error_rate(text)
    except ValueError as exc:
        raise InputError(f"{name}: {exc}") from None


ErrorOpt = Annotated[str | None, typer.Option(help="Fraction (0.035) or percent (3.5%).")]
SizeOpt = Annotated[
    int | None, typer.Option(help="Examples the error was measured on (for intervals).")
]


@app.command()
@user_errors
def diagnose(
    train_error: Annotated[str, typer.Option(help="Train error: 0.035 or 3.5%.")],
    dev_error: Annotated[str, typer.Option(help="Dev error: 0.035 or 3.5%.")],
    human_error: ErrorOpt = None,
    bayes_error: ErrorOpt = None,
    test_error: ErrorOpt = None,
    tolerance: Annotated[
        str, typer.Option(help="A component above this is high (default one point).")
    ] = "0.01",
    n_train: SizeOpt = None,
    n_dev: SizeOpt = None,
    n_test: SizeOpt = None,
    output_format: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Bias / variance analysis for train, dev (and test) errors from anywhere.

    With the split sizes (--n-train, --n-dev, --n-test) each part is judged on its 95%
    interval: high, low, or can't tell (with how many examples would tell).
    """
    from hpsearch.diagnosis import Sample, summary_lines
    from hpsearch.diagnosis import diagnose as run_diagnosis

    if output_format not in ("table", "json"):
        raise InputError(f"--format: '{output_format}' is not one of table, json")
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    for split, n in sizes.items():
        if n is not None and n < 1:
            raise InputError(f"--n-{split}: {n} examples; give a count of at least 1")
    samples = {split: Sample(n) for split, n in sizes.items() if n is not None}
    try:
        result = run_diagnosis(
            _error_rate("--train-error", train_error),
            _error_rate("--dev-error", dev_error),
            test_error=_error_rate("--test-error", test_error),
            human_level_error=_error_rate("--human-error", human_error),
            bayes_error=_error_rate("--bayes-error", bayes_error),
            tolerance=_error_rate("--tolerance", tolerance),
            samples=samples or None,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if output_format == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print("\n".join(summary_lines(result)))
