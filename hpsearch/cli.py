"""Thin typer commands: parse arguments, call one function, map errors to exit codes."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import signal
import sys
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from hpsearch.errors import DiskFull, InputError, printable
from hpsearch.runs import DEFAULT_RUNS_DIR
from hpsearch.storage import DatabaseUnreachable

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # plain help: flags read as flags, choices as choices (rich panels print `<bool>` types)
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    help="Hyperparameter search for PyTorch MLPs that explains its result.",
)


class _Choice(str, Enum):
    """A fixed set of option values, listed in --help and checked by the parser."""

    def __str__(self) -> str:
        return self.value


# The spec's own choices (hpsearch.spec; tests/test_cli.py checks they agree), kept here so that
# --help does not import pydantic.
Mode = _Choice("Mode", {v: v for v in ("caviar", "panda")})
Strategy = _Choice("Strategy", {v: v for v in ("grid", "random", "evolution", "tpe")})
ReportFormat = _Choice("ReportFormat", {v: v for v in ("table", "json", "markdown", "html")})
DiagnoseFormat = _Choice("DiagnoseFormat", {v: v for v in ("table", "json")})


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"hpsearch {version('hpsearch')}")
        raise typer.Exit()


@app.callback()
def _main(
    _version_flag: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Hyperparameter search for PyTorch MLPs that explains its result."""


EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _fail(message: str, code: int) -> typer.Exit:
    print(f"error: {printable(message)}", file=sys.stderr, flush=True)
    return typer.Exit(code)


def user_errors(command):
    """Bad input becomes one line on stderr and exit code 2; Ctrl-C (and SIGTERM, what
    schedulers, systemd and `docker stop` send, and SIGHUP, a closed terminal) becomes 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for stop in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(stop, signal.default_int_handler)
        try:
            return command(*args, **kwargs)
        except InputError as exc:
            raise _fail(str(exc), EXIT_INPUT) from None
        except DatabaseUnreachable as exc:  # a fault, like a full disk: resumable, exit 1
            raise _fail(str(exc), EXIT_GATE) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", EXIT_INTERRUPTED) from None

    return wrapper


SpecArg = Annotated[
    Path, typer.Argument(help="The spec YAML file.", show_default=False, metavar="SPEC")
]
RunArg = Annotated[str, typer.Argument(metavar="RUN", help="Run folder, its name, or 'latest'.")]
RunsDirOpt = Annotated[
    Path, typer.Option("--runs-dir", metavar="DIR", help="Parent folder of run folders.")
]
StorageOpt = Annotated[str, typer.Option(metavar="URL", help="The study's database URL.")]
DeviceOpt = Annotated[str | None, typer.Option(metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


@app.command()
@user_errors
def run(
    spec: SpecArg,
    trials: Annotated[
        int | None, typer.Option(metavar="N", help="Trial budget (overrides search.trials).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(metavar="N", help="Caviar worker processes.")
    ] = None,
    mode: Annotated[
        Mode | None, typer.Option(help="Many trials at once, or one watched at a time.")
    ] = None,
    strategy: Annotated[
        Strategy | None, typer.Option(help="How configurations are chosen.")
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(metavar="DURATION", help="Stop starting trials after e.g. 30m or 2h."),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(metavar="URL", help="Database URL for the study (default: a journal file)."),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Study name in --storage; processes naming the same study share it.",
        ),
    ] = None,
    runs_dir: RunsDirOpt = DEFAULT_RUNS_DIR,
    resume: Annotated[
        str | None,
        typer.Option(metavar="RUN", help="Continue a stopped run: its folder, or 'latest'."),
    ] = None,
    fail_under: Annotated[
        list[str] | None,
        typer.Option(
            metavar="METRIC=VALUE", help="Exit 1 unless the best trial reaches VALUE (repeatable)."
        ),
    ] = None,
    fail_over: Annotated[
        list[str] | None,
        typer.Option(metavar="METRIC=VALUE", help="Exit 1 when the best trial exceeds VALUE."),
    ] = None,
    interactive: Annotated[
        bool,
        typer.Option(
            "--interactive", help="Panda: review each proposal before it runs (terminal only)."
        ),
    ] = False,
    mlflow: Annotated[
        str | None,
        typer.Option(
            metavar="URI",
            help="Also log every trial to MLflow (tracking.mlflow; '' for ./mlflow.db).",
        ),
    ] = None,
    on: Annotated[
        str,
        typer.Option(
            metavar="WHERE",
            help="Where caviar workers run: local processes, or Ray tasks: ray (RAY_ADDRESS, "
            "a cluster running here, else a new local one), ray:HOST:PORT, ray://HOST:PORT.",
        ),
    ] = "local",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the JSON summary on stdout.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a search (one model when the spec has no search).

    Everything is written to a new run folder under --runs-dir.
    """
    from hpsearch.processes import prestart_for

    # local workers' imports (torch...) start now, side by side with the run's own below
    prestart_for(spec, workers, None if mode is None else mode.value, on)
    from hpsearch.engine import Interrupted, RunOptions, run_spec
    from hpsearch.gates import failed_gates, parse_gate
    from hpsearch.progress import make_progress

    gates = [parse_gate(g, True) for g in fail_under or []]
    gates += [parse_gate(g, False) for g in fail_over or []]
    options = RunOptions(
        runs_dir=runs_dir,
        trials=trials,
        workers=workers,
        mode=None if mode is None else mode.value,
        strategy=None if strategy is None else strategy.value,
        timeout=timeout,
        storage=storage,
        resume=resume,
        interactive=interactive,
        study=study,
        mlflow=mlflow,
        on=on,
    )
    try:
        result = run_spec(spec, options, make_progress(quiet))
    except DiskFull as full:
        print(f"error: {full}: free some space, then resume:", file=sys.stderr)
        where = getattr(full.run, "root", "RUN")
        print(f"  hpsearch run {spec} --resume {where}", file=sys.stderr)
        raise typer.Exit(EXIT_GATE) from None
    except Interrupted as stop:
        print(f"interrupted: {stop.kept()}", file=sys.stderr)
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
    storage: StorageOpt,
    study: Annotated[
        str, typer.Option(metavar="NAME", help="The study's name (printed by `hpsearch run`).")
    ],
    workers: Annotated[
        int | None, typer.Option(metavar="N", help="Processes on this machine.")
    ] = None,
    device: DeviceOpt = None,
    data: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="This machine's copy of the data file, if elsewhere."),
    ] = None,
    runs_dir: RunsDirOpt = DEFAULT_RUNS_DIR,
    wait: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="How long to wait for the next round before leaving."),
    ] = 60.0,
    quiet: QuietOpt = False,
) -> None:
    """Work on a study in a database, from this or another machine."""
    from hpsearch.engine import Interrupted, join_study
    from hpsearch.progress import make_progress

    progress = make_progress(quiet)
    try:
        result = join_study(storage, study, runs_dir, progress, workers, device, data, wait)
    except Interrupted:
        print(f"interrupted: what finished stays in the study '{study}'", file=sys.stderr)
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
    if (summary.get("constraints") or {}).get("best_within") is False:
        from hpsearch.report import outside_constraints

        print(f"warning: {outside_constraints(summary)}", file=sys.stderr, flush=True)


@app.command()
@user_errors
def rerun(
    run: RunArg,
    trial: Annotated[int, typer.Argument(metavar="TRIAL", help="The trial's number.")],
    device: DeviceOpt = None,
    runs_dir: RunsDirOpt = DEFAULT_RUNS_DIR,
) -> None:
    """Re-train one trial from its record and compare.

    The trial's recorded spec, params and seed are trained again into the run's reruns/.

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
def validate(spec: SpecArg, runs_dir: RunsDirOpt = DEFAULT_RUNS_DIR) -> None:
    """Check a spec (and its data, and the model its init_from names) without running
    anything."""
    from hpsearch.preflight import prepare
    from hpsearch.spec import load_spec
    from hpsearch.transfer import resolve_init_from

    loaded = resolve_init_from(load_spec(spec), runs_dir)
    data = prepare(loaded)
    sizes = "/".join(str(len(split)) for split in data.splits.values())
    names = "/".join(data.splits)
    print(f"{spec}: valid — {data.task} task, {data.n_features} features, {names} {sizes}")


@app.command()
@user_errors
def init(
    data: Annotated[
        Path,
        typer.Argument(metavar="DATA", help="A .csv, .parquet or .npz file.", show_default=False),
    ],
    target: Annotated[
        str | None,
        typer.Option(
            metavar="COLUMN", help="The column to predict (default: a guess, named in the spec)."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="SPEC",
            help="Where to write the spec (default: NAME.yaml here).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing spec.")] = False,
) -> None:
    """Look at a data file and write a commented starter spec that runs.

    The spec names what it saw (rows, column types, missing values, classes and balance) and
    sets a search sized to the data; check it with `hpsearch validate SPEC`.
    """
    from hpsearch.starter import default_output, write_starter

    written = write_starter(data, output or default_output(data), target, force)
    print(f"wrote {written}; run it with: hpsearch run {written}")


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema, for editors."""
    from hpsearch.spec import Spec

    print(json.dumps(Spec.model_json_schema(), indent=2))


@app.command()
@user_errors
def report(
    run: Annotated[
        str | None,
        typer.Argument(metavar="RUN", help="Run folder (default: the newest under --runs-dir)."),
    ] = None,
    output_format: Annotated[
        ReportFormat, typer.Option("--format", help="Terminal table, or a file to share.")
    ] = ReportFormat.table,
    top: Annotated[
        int, typer.Option(metavar="K", help="How many of the best trials to list.")
    ] = 10,
    runs_dir: RunsDirOpt = DEFAULT_RUNS_DIR,
    storage: Annotated[
        str | None,
        typer.Option(metavar="URL", help="Report a study from this database alone."),
    ] = None,
    study: Annotated[
        str | None, typer.Option(metavar="NAME", help="The study's name (with --storage).")
    ] = None,
) -> None:
    """Explain a run: best model, diagnosis, advice, plots."""
    from rich.console import Console

    from hpsearch import report as reports

    output_format = output_format.value
    if (storage is None) != (study is None):
        raise InputError("--storage and --study go together")
    if storage is not None:
        from hpsearch.report import study_folder

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
def improve(
    run: RunArg,
    rounds: Annotated[int, typer.Option(metavar="N", help="At most this many new runs.")] = 3,
    trials: Annotated[
        int | None,
        typer.Option(metavar="N", help="Trials per round (overrides search.trials)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(metavar="DEV_ERROR", help="Stop once the dev error is this low (0.03, 3%)."),
    ] = None,
    runs_dir: RunsDirOpt = DEFAULT_RUNS_DIR,
    quiet: QuietOpt = False,
) -> None:
    """Follow a run's diagnosis: next spec, run, diagnose again.

    Bias first (bigger network, longer training, optimizer, lr range), then variance (L2,
    dropout, input noise, early stopping), then data mismatch (group weights). Each round is a
    new run folder holding the commented spec it ran (improve-spec.yaml) and the chain so far
    (improve.json). The chain stops when the dev error no longer falls beyond its 95%
    interval, when what is left needs more data rather than a new spec, at --until, or after
    --rounds.
    """
    from hpsearch import report as reports
    from hpsearch.improve import improve as follow

    for name, n in (("--rounds", rounds), ("--trials", trials)):
        if n is not None and n < 1:
            raise InputError(f"{name}: {n}; give a count of at least 1")
    goal = _error_rate("--until", until)
    start = reports.resolve_run(None if run == "latest" else run, runs_dir)
    chain = follow(
        start,
        _round_runner(runs_dir, trials, quiet),
        rounds=rounds,
        until=goal,
        say=lambda line: print(printable(line), file=sys.stderr, flush=True),
    )
    print(f"stopped: {chain.stop}")
    print(f"result: {chain.result.run} (round {chain.result.number})")
    if chain.failed:
        raise typer.Exit(EXIT_GATE)


def _round_runner(runs_dir: Path, trials: int | None, quiet: bool) -> Any:
    """One round of `improve`: the spec file run as `hpsearch run` runs it."""
    from hpsearch.engine import Interrupted, RunOptions, run_spec
    from hpsearch.progress import make_progress

    def run_round(spec: Path) -> tuple[Any, dict[str, Any]]:
        try:
            result = run_spec(
                spec, RunOptions(runs_dir=runs_dir, trials=trials), make_progress(quiet)
            )
        except Interrupted as stop:
            print(f"interrupted: {stop.kept()}", file=sys.stderr)
            print(
                f"resume with: hpsearch run {stop.run.spec} --resume {stop.run.root}",
                file=sys.stderr,
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except DiskFull as full:
            raise _fail(f"{full}: free some space, then run improve again", EXIT_GATE) from None
        _print_outcome(result.summary)
        return result.run, result.summary

    return run_round


@app.command()
@user_errors
def runs(runs_dir: RunsDirOpt = DEFAULT_RUNS_DIR) -> None:
    """List run folders: strategy, state, trials and best value."""
    from rich.console import Console

    from hpsearch.report import runs_table
    from hpsearch.runs import list_runs

    if runs_dir.exists() and not runs_dir.is_dir():
        raise InputError(f"--runs-dir: {runs_dir} is a file, not a folder of runs")
    folders = list_runs(runs_dir)
    if not folders:
        print(f"no runs in {runs_dir}/ yet; start one with: hpsearch run SPEC", file=sys.stderr)
        return
    Console(width=None if sys.stdout.isatty() else 200).print(runs_table(runs_dir, folders))


def _error_rate(name: str, text: str | None) -> float | None:
    from hpsearch.diagnosis import parse_error_rate

    if text is None:
        return None
    try:
        return parse_error_rate(text)
    except ValueError as exc:
        raise InputError(f"{name}: {exc}") from None


ErrorOpt = Annotated[
    str | None, typer.Option(metavar="RATE", help="Fraction (0.035) or percent (3.5%).")
]
SizeOpt = Annotated[
    int | None,
    typer.Option(metavar="N", help="Examples the error was measured on (for intervals)."),
]


@app.command()
@user_errors
def diagnose(
    train_error: Annotated[str, typer.Option(metavar="RATE", help="Train error: 0.035 or 3.5%.")],
    dev_error: Annotated[str, typer.Option(metavar="RATE", help="Dev error: 0.035 or 3.5%.")],
    human_error: ErrorOpt = None,
    bayes_error: ErrorOpt = None,
    test_error: ErrorOpt = None,
    tolerance: Annotated[
        str, typer.Option(metavar="RATE", help="A component above this is high (one point).")
    ] = "0.01",
    n_train: SizeOpt = None,
    n_dev: SizeOpt = None,
    n_test: SizeOpt = None,
    output_format: Annotated[
        DiagnoseFormat, typer.Option("--format", help="Text, or the diagnosis object.")
    ] = DiagnoseFormat.table,
) -> None:
    """Bias/variance analysis of error rates from anywhere.

    With the split sizes (--n-train, --n-dev, --n-test) each part is judged on its 95%
    interval: high, low, or can't tell (with how many examples would tell).
    """
    from hpsearch.diagnosis import Sample, summary_lines
    from hpsearch.diagnosis import diagnose as run_diagnosis

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
    if output_format == DiagnoseFormat.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print("\n".join(summary_lines(result)))


def main() -> None:
    """The `hpsearch` command (and `python -m hpsearch`). Once a command is done, its files
    written and its exit handlers run, the process leaves without the interpreter's teardown
    of every module torch and scikit-learn loaded: about a second after each command, spent
    freeing memory the operating system takes back anyway."""
    try:
        app()
        code = 0
    except SystemExit as done:
        code = done.code
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()[1:]):
        sys.exit(code)  # a thread still at work: the interpreter waits for it, as usual
    if not isinstance(code, int):  # sys.exit("message") or sys.exit(None)
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    atexit._run_exitfuncs()  # noqa: SLF001 - what sys.exit runs too (Ray, logging, MLflow...)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: `hpsearch ... | head`
            stream.flush()
    os._exit(code)
