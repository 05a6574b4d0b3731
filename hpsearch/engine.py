"""Runs and searches: the study, caviar workers, panda, refine rounds, resume and stop.

The only module that starts processes. Order of work in a run: validate the spec and data
(no folder yet), create the run folder, run the search round by round, score the best trial on
the test split once, and write summary.json (rewritten as trials finish).
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from hpsearch.data import Dataset, load_dataset
from hpsearch.diagnosis import diagnose
from hpsearch.errors import InputError
from hpsearch.objective import FinalEvaluation, TrialOutcome, evaluate_best, run_trial
from hpsearch.progress import ProgressSink, Reviewer, SearchStatus, SilentProgress, make_reviewer
from hpsearch.runs import RunFolder, create_run, read_json, write_json, write_text
from hpsearch.space import (
    Param,
    apply_params,
    grid_points,
    parse_space,
    suggest,
    to_optuna_params,
)
from hpsearch.spec import (
    ParamSpec,
    SearchSpec,
    Spec,
    load_spec,
    parse_duration,
    spec_from_dict,
    spec_to_yaml,
)
from hpsearch.storage import mask_args, mask_url, probe_storage
from hpsearch.strategies import (
    DEFAULT_TRIALS,
    best_fraction,
    check_strategy,
    describe_space,
    make_pruner,
    make_sampler,
    round_budgets,
    tighten,
)
from hpsearch.summary import best_outcome, build_summary
from hpsearch.train import check_objective_metric, resolve_device, resolve_loss

optuna.logging.set_verbosity(optuna.logging.WARNING)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
COUNTED = (*FINISHED, TrialState.RUNNING)
ROUNDS_FILE = "rounds.json"


class Interrupted(Exception):
    """The user stopped the run (Ctrl-C); it can be resumed."""

    def __init__(self, run: RunFolder, summary: dict[str, Any]):
        super().__init__(f"interrupted; resume with: hpsearch run SPEC --resume {run.root}")
        self.run = run
        self.summary = summary


@dataclass
class RunOptions:
    """Command-line overrides of the spec's search section, and where to put the run."""

    runs_dir: Path = Path("runs")
    trials: int | None = None
    workers: int | None = None
    mode: str | None = None
    strategy: str | None = None
    timeout: str | None = None
    storage: str | None = None
    resume: str | None = None
    interactive: bool = False


@dataclass
class RunResult:
    run: RunFolder
    summary: dict[str, Any]


# --- preparation ------------------------------------------------------------------------------


def with_overrides(spec: Spec, options: RunOptions) -> Spec:
    """The spec with command-line overrides applied (and validated like the file itself)."""
    search_update = {
        key: value
        for key, value in {
            "trials": options.trials,
            "workers": options.workers,
            "mode": options.mode,
            "strategy": options.strategy,
            "timeout": options.timeout,
        }.items()
        if value is not None
    }
    raw = spec.model_dump(mode="json")
    if options.interactive:
        search_update["panda"] = {
            **((raw.get("search") or {}).get("panda") or {}),
            "interactive": True,
        }
    if search_update:
        raw["search"] = {**(raw.get("search") or {}), **search_update}
    if options.storage is not None:
        raw["storage"] = options.storage
    return spec_from_dict(raw, source="command line")


def prepare(spec: Spec) -> Dataset:
    """Load the data and check the spec fits it, all before any run folder exists."""
    if spec.search is not None:
        check_strategy(spec.search)
        parse_space(spec)
    data = load_dataset(spec.data, spec.seed)
    resolve_loss(spec.train.loss, data.task)
    check_objective_metric(spec.objective.metric, data.task)
    resolve_device(spec.device)
    if spec.storage is not None:
        probe_storage(spec.storage)
    return data


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(spec: Spec, device: torch.device) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "optuna": _version("optuna"),
        "hpsearch": _version("hpsearch"),
        "device": str(device),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "seed": spec.seed,
        "command": mask_args(sys.argv),
    }


def masked(spec: Spec) -> Spec:
    """The spec as written to disk: a storage URL's password never reaches a file."""
    if spec.storage is None:
        return spec
    return spec.model_copy(update={"storage": mask_url(spec.storage)})


def start_run(spec: Spec, data: Dataset, runs_dir: Path) -> RunFolder:
    """Create the run folder and write what is known before training: spec, env, split."""
    run = create_run(runs_dir, spec.name)
    write_text(run.spec, spec_to_yaml(masked(spec)))
    write_json(run.env, environment(spec, resolve_device(spec.device)))
    write_json(run.split, data.split_info)
    return run


# --- summary ----------------------------------------------------------------------------------


def diagnosis_for(
    spec: Spec, data: Dataset, best: TrialOutcome, final: FinalEvaluation
) -> dict[str, Any]:
    """The bias/variance reading of the best trial, with remedies specific to its settings."""
    trial_spec = apply_params(spec, best.params)
    context = {
        "hidden": trial_spec.model.widths,
        "epochs": trial_spec.train.epochs,
        "stopped_epoch": best.epochs_run,
        "early_stopping": trial_spec.train.early_stopping is not None,
        "dropout": trial_spec.model.dropout,
        "l2": trial_spec.train.l2,
        "optimizer": trial_spec.train.optimizer,
        "lr": trial_spec.train.lr,
        "init": trial_spec.model.init,
        "train_size": len(data.splits["train"]),
    }
    return diagnose(
        best.metrics["train_error"],
        best.metrics["dev_error"],
        test_error=final.test.get("test_error"),
        human_level_error=spec.human_level_error,
        bayes_error=spec.bayes_error,
        groups=final.groups,
        context=context,
    ).to_dict()


def collect_outcomes(run: RunFolder) -> list[TrialOutcome]:
    """Every trial that wrote its result.json (finished trials, in any process)."""
    outcomes = []
    for number in run.trial_numbers():
        path = run.trial(number).result
        if path.exists():
            outcomes.append(TrialOutcome(**read_json(path)))
    return outcomes


def write_summary(
    run: RunFolder, spec: Spec, state: str, started: float, data: Dataset | None = None
) -> dict[str, Any]:
    """Rewrite summary.json; with `data`, score the best trial on test and diagnose it."""
    outcomes = collect_outcomes(run)
    best = best_outcome(spec, outcomes)
    test_metrics, diagnosis = None, None
    if best is not None and data is not None:
        final = evaluate_best(spec, data, run, best)
        test_metrics = final.test
        diagnosis = diagnosis_for(spec, data, best, final)
    summary = build_summary(
        run, spec, outcomes, state, test_metrics, diagnosis, time.perf_counter() - started
    )
    write_json(run.summary, summary)
    return summary


# --- one trial inside a study -----------------------------------------------------------------


def open_storage(run: RunFolder, spec: Spec) -> optuna.storages.BaseStorage:
    """The journal file in the run folder, or the database the spec names."""
    if spec.storage is None:
        return optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(run.study_log))
        )
    try:
        return optuna.storages.RDBStorage(spec.storage)
    except Exception as exc:  # driver missing, server down, bad credentials
        raise InputError(
            f"storage: cannot open {mask_url(spec.storage)}: {_without_url(exc, spec.storage)}"
        ) from None


def _without_url(exc: Exception, url: str) -> str:
    """An exception's first line, with the URL (and its password) masked."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.replace(url, mask_url(url))


def open_study(run: RunFolder, spec: Spec, sampler: optuna.samplers.BaseSampler | None = None):
    assert spec.search is not None
    return optuna.create_study(
        storage=open_storage(run, spec),
        sampler=sampler,
        pruner=make_pruner(spec.search),
        study_name=run.name,  # unique per run, also in a database shared by many runs
        direction=spec.objective.resolved_direction,
        load_if_exists=True,
    )


@contextmanager
def ask_lock(run: RunFolder) -> Iterator[None]:
    """Serialize "count trials, then ask" across workers so the budget is never overshot."""
    with (run.root / ".ask.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stop_requested(run: RunFolder) -> bool:
    return (run.root / ".stop").exists()


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome) -> None:
    if outcome.reason:
        trial.set_user_attr("reason", outcome.reason)
    if outcome.state == "complete" and outcome.value is not None:
        study.tell(trial, outcome.value)
    elif outcome.state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def _epoch_callback(trial: optuna.Trial, spec: Spec, progress: ProgressSink, prune: bool):
    metric = spec.objective.metric

    def on_epoch(record: dict[str, Any]) -> bool:
        progress.epoch(trial.number, record)
        if not prune or metric not in record or "event" in record:
            return False
        trial.report(record[metric], record["epoch"])
        return trial.should_prune()

    return on_epoch


def _mark_interrupted(run: RunFolder, number: int, params: dict[str, Any], seed: int = 0) -> None:
    """A trial cut short by Ctrl-C or a dead worker: failed, reason 'interrupted'."""
    outcome = TrialOutcome(number, "failed", "interrupted", params, seed)
    path = run.trial(number).result
    if path.exists():
        previous = read_json(path)
        if previous.get("state") != "failed" or previous.get("reason") != "interrupted":
            outcome = TrialOutcome(**{**previous, "state": "failed", "reason": "interrupted"})
    write_json(path, outcome.to_json())


@dataclass
class WorkerTask:
    """Everything one worker process needs (pickled to it)."""

    spec: Spec
    data: Dataset
    run_root: Path
    params: list[Param]
    target: int  # stop once this many trials (finished or running) exist
    seed: int
    threads: int | None = None
    deadline: float | None = None  # time.time() after which no new trial starts
    # panda --interactive: shown each proposal; returns the values to run, or None to stop
    review: Callable[[int, dict[str, Any]], dict[str, Any] | None] | None = None


def trial_loop(
    task: WorkerTask,
    progress: ProgressSink,
    on_finished: Callable[[TrialOutcome], None] | None = None,
) -> None:
    """Ask for trials until the round's target is reached; train and tell each one."""
    run = RunFolder(task.run_root)
    study = open_study(run, task.spec, make_sampler(task.spec.search, task.seed))
    prune = task.spec.search.pruner != "none"
    while True:
        if stop_requested(run) or (task.deadline and time.time() >= task.deadline):
            return
        with ask_lock(run):
            counted = len(study.get_trials(deepcopy=False, states=COUNTED))
            if counted >= task.target:
                return
            trial = study.ask()
        trial.set_user_attr("worker_pid", os.getpid())
        values = suggest(trial, task.params, task.spec)
        if task.review is not None:
            reviewed = task.review(trial.number, values)
            if reviewed != values:
                # Optuna cannot change a trial's params: skip this one (no folder, not counted)
                # and queue the edited proposal as the next trial.
                trial.set_user_attr("reason", "skipped")
                study.tell(trial, state=TrialState.FAIL)
                if reviewed is None:
                    (run.root / ".stop").touch()  # no further rounds either
                    return
                study.enqueue_trial(to_optuna_params(task.params, reviewed))
                task.target += 1
                continue
        progress.trial_started(trial.number, values, apply_params(task.spec, values).train.epochs)
        try:
            outcome = run_trial(
                task.spec,
                task.data,
                run,
                trial.number,
                values,
                on_epoch=_epoch_callback(trial, task.spec, progress, prune),
                rescue=task.spec.search.mode == "panda" and task.spec.search.panda.rescue,
            )
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _mark_interrupted(run, trial.number, values)
            trial.set_user_attr("reason", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            raise
        _tell(study, trial, outcome)
        if on_finished is not None:
            on_finished(outcome)


def _worker_main(task: WorkerTask) -> None:
    """Entry point of a caviar worker process."""
    if task.threads:
        torch.set_num_threads(task.threads)
    try:
        trial_loop(task, SilentProgress())
    except KeyboardInterrupt:
        sys.exit(130)


# --- rounds, modes, resume --------------------------------------------------------------------


def worker_count(search: SearchSpec, device: torch.device) -> int:
    if search.mode == "panda":
        return 1
    if search.workers != "auto":
        return int(search.workers)
    if device.type == "cuda":
        return max(1, torch.cuda.device_count())
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


def cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _finished_points(study: optuna.Study) -> list[tuple[dict[str, Any], float]]:
    return [
        (t.params, t.value)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None
    ]


def _decode_points(params: list[Param], points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_path = {p.path: p for p in params}
    return [{k: by_path[k].decode(v) for k, v in pt.items() if k in by_path} for pt in points]


class Search:
    """One search over a run folder: rounds of trials until the budget or time runs out."""

    def __init__(
        self,
        spec: Spec,
        data: Dataset,
        run: RunFolder,
        progress: ProgressSink,
        reviewer: Reviewer | None = None,
    ):
        assert spec.search is not None
        self.reviewer = reviewer
        self.spec = spec
        self.search: SearchSpec = spec.search
        self.data = data
        self.run = run
        self.progress = progress
        self.params = parse_space(spec)
        self.device = resolve_device(spec.device)
        self.workers = worker_count(self.search, self.device)
        self.started = time.perf_counter()
        timeout = self.search.timeout
        self.deadline = time.time() + parse_duration(timeout) if timeout else None
        self.study = open_study(run, spec, make_sampler(self.search, spec.seed))
        self.reported: set[int] = {o.number for o in collect_outcomes(run)}

    # rounds: round 0 searches the whole space, each refine round a tightened one
    def rounds(self) -> int:
        return 1 + (self.search.refine.rounds if self.search.refine else 0)

    def budgets(self) -> list[int]:
        if self.search.strategy == "grid":
            return []  # each grid round is as large as its grid
        return round_budgets(self.search.trials or DEFAULT_TRIALS, self.rounds())

    def load_rounds(self) -> list[dict[str, Any]]:
        path = self.run.root / ROUNDS_FILE
        return read_json(path) if path.exists() else []

    def plan_round(self, index: int, previous: list[dict[str, Any]]) -> tuple[list[Param], int]:
        """The space and cumulative trial target of round `index`, recorded in rounds.json."""
        if index < len(previous):
            return self._space_from_record(previous[index]), previous[index]["target"]
        params = self.params
        if index > 0:
            keep = self.search.refine.keep if self.search.refine else 1.0
            maximize = self.spec.objective.resolved_direction == "maximize"
            best = best_fraction(_finished_points(self.study), keep, maximize)
            params = tighten(
                self._space_from_record(previous[-1]), _decode_points(self.params, best)
            )
        start = len(self.study.get_trials(deepcopy=False, states=COUNTED))
        if self.search.strategy == "grid":
            points = grid_points(params, self.spec)
            if self.search.trials and index == 0:
                points = points[: self.search.trials]
            for point in points:
                self.study.enqueue_trial(to_optuna_params(params, point))
            target = start + len(points)
        else:
            target = start + self.budgets()[index]
        record = {"round": index, "target": target, "space": describe_space(params)}
        write_json(self.run.root / ROUNDS_FILE, [*previous, record])
        return params, target

    def _space_from_record(self, record: dict[str, Any]) -> list[Param]:
        by_path = {p.path: p for p in self.params}
        out = []
        for path, raw in record["space"].items():
            base = by_path[path]
            out.append(
                Param(path, ParamSpec.model_validate({**raw, "when": base.spec.when}), base.kind)
            )
        return out

    def execute(self) -> str:
        """Run every round; returns the final state (finished | stopped)."""
        for index in range(self.rounds()):
            previous = self.load_rounds()
            params, target = self.plan_round(index, previous)
            self.run_round(params, target, index)
            if stop_requested(self.run) or (self.deadline and time.time() >= self.deadline):
                return "finished"
        return "finished"

    def task(self, params: list[Param], target: int, worker: int, round_index: int) -> WorkerTask:
        threads = max(1, cores() // self.workers) if self.search.mode == "caviar" else None
        seed = self.spec.seed * 1009 + round_index * 101 + worker
        return WorkerTask(
            self.spec, self.data, self.run.root, params, target, seed, threads, self.deadline
        )

    def in_process_task(self, params: list[Param], target: int, round_index: int) -> WorkerTask:
        task = self.task(params, target, 0, round_index)
        task.review = self.reviewer if self.search.mode == "panda" else None
        return task

    def run_round(self, params: list[Param], target: int, round_index: int) -> None:
        if self.search.mode == "panda" or self.workers == 1:
            task = self.in_process_task(params, target, round_index)
            trial_loop(task, self.progress, lambda _: self.report_new())
            return
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(
                target=_worker_main,
                args=(self.task(params, target, w, round_index),),
                name=f"hpsearch-worker-{w}",
            )
            for w in range(self.workers)
        ]
        for process in processes:
            process.start()
        try:
            self.watch(processes)
        except KeyboardInterrupt:
            self.stop_workers(processes)
            raise

    def watch(self, processes: list) -> None:
        """Poll the run while workers train: report finished trials, rewrite the summary."""
        while True:
            alive = [p for p in processes if p.is_alive()]
            self.report_new()
            for process in processes:
                if process.exitcode not in (None, 0) and not getattr(process, "_noted", False):
                    process._noted = True
                    self.fail_running_of(process.pid)
            if not alive:
                self.report_new()
                return
            time.sleep(0.25)

    def report_new(self) -> None:
        """Show trials that finished since the last look, and rewrite summary.json."""
        outcomes = collect_outcomes(self.run)
        fresh = [o for o in outcomes if o.number not in self.reported]
        if not fresh:
            return
        fresh.sort(key=lambda o: o.number)
        for outcome in fresh:
            self.reported.add(outcome.number)
            last = outcome is fresh[-1]
            self.progress.trial_finished(outcome, self.status(outcomes) if last else None)
        write_summary(self.run, self.spec, "running", self.started)

    def status(self, outcomes: list[TrialOutcome]) -> SearchStatus:
        best = best_outcome(self.spec, outcomes)
        return SearchStatus(
            done=len(outcomes),
            total=self.total_budget(),
            counts={
                s: sum(o.state == s for o in outcomes) for s in ("complete", "pruned", "failed")
            },
            best_value=best.value if best else None,
            best_trial=best.number if best else None,
            metric=self.spec.objective.metric,
            elapsed=time.perf_counter() - self.started,
        )

    def total_budget(self) -> int | None:
        if self.search.strategy == "grid":
            rounds = self.load_rounds()
            return rounds[-1]["target"] if rounds else None
        return self.search.trials or DEFAULT_TRIALS

    def fail_running_of(self, pid: int) -> None:
        """A worker died mid-trial: its trial is failed now, not left RUNNING."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("worker_pid") == pid:
                _mark_interrupted(
                    self.run, trial.number, _decode_points(self.params, [trial.params])[0]
                )
                self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)

    def stop_workers(self, processes: list) -> None:
        """Ctrl-C: let workers mark their trials interrupted (5 s), then end them."""
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGINT)
        deadline = time.time() + 5
        for process in processes:
            process.join(max(0.0, deadline - time.time()))
            if process.is_alive():
                process.kill()
                process.join()

    def recover(self) -> int:
        """Resume: trials left RUNNING by dead processes are failed and retried once."""
        retried = 0
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            params = _decode_points(self.params, [trial.params])[0]
            _mark_interrupted(self.run, trial.number, params)
            self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            if "retry_of" not in trial.user_attrs:
                self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                retried += 1
        return retried

    def fail_all_running(self) -> None:
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            params = _decode_points(self.params, [trial.params])[0]
            _mark_interrupted(self.run, trial.number, params)
            self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


# --- resume compatibility ---------------------------------------------------------------------


def check_resume_compatible(old: Spec, new: Spec) -> list[str]:
    """Refuse changes that make old trials meaningless; return warnings for benign ones."""
    problems, warnings = [], []
    if old.objective != new.objective:
        problems.append("the objective (metric or direction) changed")
    if old.search is None or new.search is None:
        problems.append("the search section was added or removed")
    else:
        if old.search.strategy != new.search.strategy:
            problems.append(
                f"the strategy changed ({old.search.strategy} -> {new.search.strategy})"
            )
        for path, before in old.search.space.items():
            after = new.search.space.get(path)
            if after is None:
                problems.append(f"search.space[{path}] was removed")
            elif before.choices != after.choices or before.values != after.values:
                problems.append(f"search.space[{path}]: the choices changed")
            elif before.log != after.log:
                problems.append(f"search.space[{path}]: the log flag changed")
            elif before.is_range and (after.low < before.low or after.high > before.high):
                warnings.append(f"search.space[{path}] widened; earlier trials stay as they were")
            elif before.is_range and (after.low > before.low or after.high < before.high):
                warnings.append(f"search.space[{path}] narrowed")
        for path in new.search.space.keys() - old.search.space.keys():
            problems.append(f"search.space[{path}] was added")
    if old.data != new.data:
        problems.append("the data section changed")
    if problems:
        raise InputError("cannot resume: " + "; ".join(problems) + ". Start a new run instead.")
    return warnings


def find_run(runs_dir: Path, resume: str) -> RunFolder:
    if resume == "latest":
        from hpsearch.runs import latest_run

        run = latest_run(runs_dir)
        if run is None:
            raise InputError(f"--resume latest: no run folder under {runs_dir}")
        return run
    path = Path(resume)
    candidates = [path, runs_dir / resume]
    for candidate in candidates:
        if (candidate / "spec.yaml").is_file():
            return RunFolder(candidate)
    raise InputError(f"--resume: no run folder '{resume}' (looked in {runs_dir})")


# --- entry points -----------------------------------------------------------------------------


def _watch(progress: ProgressSink, number: int):
    def on_epoch(record: dict[str, Any]) -> bool:
        progress.epoch(number, record)
        return False

    return on_epoch


def run_single(spec: Spec, data: Dataset, runs_dir: Path, progress: ProgressSink) -> RunResult:
    """A spec without a search section: one model, trial 0."""
    started = time.perf_counter()
    run = start_run(spec, data, runs_dir)
    progress.trial_started(0, {}, spec.train.epochs)
    outcome = run_trial(spec, data, run, 0, {}, on_epoch=_watch(progress, 0))
    progress.trial_finished(outcome)
    return RunResult(run, write_summary(run, spec, "finished", started, data))


def run_search(
    spec: Spec,
    data: Dataset,
    run: RunFolder,
    progress: ProgressSink,
    resuming: bool = False,
    reviewer: Reviewer | None = None,
) -> RunResult:
    search = Search(spec, data, run, progress, reviewer)
    if resuming:
        search.recover()
        (run.root / ".stop").unlink(missing_ok=True)
    try:
        state = search.execute()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))  # a second Ctrl-C ends at once
        (run.root / ".stop").touch()
        search.fail_all_running()
        summary = write_summary(run, spec, "interrupted", search.started)
        raise Interrupted(run, summary) from None
    return RunResult(run, write_summary(run, spec, state, search.started, data))


def reviewer_for(spec: Spec) -> Reviewer | None:
    """panda + interactive on a terminal: ask before each trial; elsewhere, say why not."""
    search = spec.search
    if search is None or search.mode != "panda" or not search.panda.interactive:
        return None
    if not sys.stdin.isatty():
        print("warning: interactive panda needs a terminal; running unattended", file=sys.stderr)
        return None
    return make_reviewer(parse_space(spec), spec)


def run_spec(
    spec_path: Path, options: RunOptions, progress: ProgressSink | None = None
) -> RunResult:
    """`hpsearch run`: validate everything, then train one model or search."""
    progress = progress or SilentProgress()
    spec = with_overrides(load_spec(spec_path), options)
    try:
        if options.resume is not None:
            run = find_run(options.runs_dir, options.resume)
            old = load_spec(run.spec)
            if old.storage and options.storage is None:
                if "***" in old.storage:
                    raise InputError(
                        f"--resume: this run's study is in {old.storage}; pass --storage with "
                        "the full URL again (passwords are never written to the run folder)"
                    )
                spec = spec.model_copy(update={"storage": old.storage})
            for warning in check_resume_compatible(old, spec):
                print(f"warning: {warning}", file=sys.stderr)
            data = prepare(spec)
            write_text(run.spec, spec_to_yaml(masked(spec)))
            return run_search(spec, data, run, progress, True, reviewer_for(spec))
        data = prepare(spec)
        if spec.search is None:
            return run_single(spec, data, options.runs_dir, progress)
        run = start_run(spec, data, options.runs_dir)
        return run_search(spec, data, run, progress, reviewer=reviewer_for(spec))
    finally:
        progress.close()
