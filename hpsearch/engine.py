"""Runs and searches: the study, caviar workers, panda, refine rounds, resume and stop.

The only module that starts processes. Order of work in a run: validate the spec and data
(no folder yet), create the run folder, run the search round by round, score the best trial on
the test split once, and write summary.json (rewritten as trials finish).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState

from hpsearch.data import Dataset, load_dataset
from hpsearch.diagnosis import diagnose
from hpsearch.errors import InputError
from hpsearch.objective import (
    FinalEvaluation,
    TrialOutcome,
    evaluate_best,
    run_stack,
    run_trial,
)
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
from hpsearch.stacked import shape_key, stack_size
from hpsearch.storage import mask_args, mask_url, probe_storage
from hpsearch.strategies import (
    DEFAULT_TRIALS,
    best_fraction,
    check_strategy,
    describe_space,
    make_pruner,
    make_sampler,
    refine_points,
    round_budgets,
    spread,
    tighten,
    unseen,
)
from hpsearch.study import (
    OUTCOME_ATTR,
    budget_lock,
    budget_used,
    fail_stale,
    failure_reason,
    heartbeat,
    is_database,
    load_existing_study,
    open_storage,
    outcome_of,
    repair_journal,
    replaced_numbers,
    study_outcomes,
    tell_outcome,
)
from hpsearch.summary import best_outcome, build_summary
from hpsearch.train import check_objective_metric, resolve_device, resolve_loss

ROUNDS_FILE = "rounds.json"
SUMMARY_INTERVAL = 1.0  # seconds between rewrites of a running search's summary.json
# Study attributes: what a worker joining from another machine needs, and how far the run is.
SPEC_ATTR, FINGERPRINT_ATTR, ROUNDS_ATTR = "spec", "fingerprint", "rounds"
STATE_ATTR, FINAL_ATTR = "state", "final"


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
    study: str | None = None


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
    """Every trial of a run folder that wrote its result.json."""
    outcomes = []
    for number in run.trial_numbers():
        path = run.trial(number).result
        if path.exists():
            outcomes.append(TrialOutcome(**read_json(path)))
    return outcomes


def write_summary(
    run: RunFolder,
    spec: Spec,
    outcomes: list[TrialOutcome],
    state: str,
    started: float,
    data: Dataset | None = None,
    study: str | None = None,
) -> dict[str, Any]:
    """Rewrite summary.json; with `data`, score the best trial on test and diagnose it."""
    best = best_outcome(spec, outcomes)
    test_metrics, diagnosis = None, None
    if best is not None and data is not None:
        if not run.trial(best.number).model.exists():
            # Trained on another machine whose runs dir is not shared: a trial's seed derives
            # from the spec and its number, so training it again here gives the same model.
            run_trial(spec, data, run, best.number, best.params)
        final = evaluate_best(spec, data, run, best)
        test_metrics = final.test
        diagnosis = diagnosis_for(spec, data, best, final)
    summary = build_summary(
        run, spec, outcomes, state, test_metrics, diagnosis, time.perf_counter() - started, study
    )
    write_json(run.summary, summary)
    return summary


# --- one trial inside a study -----------------------------------------------------------------


def stop_requested(run: RunFolder) -> bool:
    return (run.root / ".stop").exists()


def _epoch_callback(trial: optuna.Trial, spec: Spec, progress: ProgressSink, prune: bool):
    metric = spec.objective.metric

    def on_epoch(record: dict[str, Any]) -> bool:
        progress.epoch(trial.number, record)
        if not prune or metric not in record or "event" in record:
            return False
        trial.report(record[metric], record["epoch"])
        return trial.should_prune()

    return on_epoch


def _interrupted(run: RunFolder, number: int, params: dict[str, Any]) -> TrialOutcome:
    """A trial cut short by Ctrl-C or a dead worker: failed, reason 'interrupted'."""
    path = run.trial(number).result
    if path.exists():
        previous = read_json(path)
        outcome = TrialOutcome(**{**previous, "state": "failed", "reason": "interrupted"})
    else:
        outcome = TrialOutcome(number, "failed", "interrupted", params, seed=0)
    if run.trial(number).root.exists():
        write_json(path, outcome.to_json())
    return outcome


@dataclass
class WorkerTask:
    """Everything one worker process needs (pickled to it)."""

    spec: Spec
    data: Dataset
    run_root: Path
    study_name: str
    params: list[Param]
    target: int  # stop once this many trials count against the budget
    seed: int
    threads: int | None = None
    deadline: float | None = None  # time.time() after which no new trial starts
    # panda --interactive: shown each proposal; returns the values to run, or None to stop
    review: Callable[[int, dict[str, Any]], dict[str, Any] | None] | None = None
    gpu: int | None = None  # caviar on several GPUs: the one this worker is pinned to
    stack: int = 1  # trials asked for at once and trained together when their shapes match


def trial_loop(
    task: WorkerTask,
    progress: ProgressSink,
    on_finished: Callable[[TrialOutcome], None] | None = None,
) -> None:
    """Ask for trials until the round's target is reached; train and tell each one.

    With stacking, a worker asks for several trials at once and trains those of one shape
    together; each is told to the study on its own.
    """
    run = RunFolder(task.run_root)
    storage = open_storage(task.spec.storage, run.study_log)
    study = optuna.load_study(
        study_name=task.study_name,
        storage=storage,
        sampler=make_sampler(task.spec.search, task.seed),
        pruner=make_pruner(task.spec.search),
    )
    while True:
        if stop_requested(run) or (task.deadline and time.time() >= task.deadline):
            return
        with budget_lock(storage, task.study_name, run.root):
            fail_stale(study, storage)
            room = task.target - budget_used(study)
            if room <= 0:
                return
            trials = [study.ask() for _ in range(min(task.stack, room))]
        proposals = []
        for trial in trials:
            trial.set_user_attr("worker_pid", os.getpid())
            trial.set_user_attr("worker_host", platform.node())
            proposals.append((trial, suggest(trial, task.params, task.spec)))
        if task.review is not None:  # panda --interactive: one trial at a time
            trial, values = proposals[0]
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
        told: set[int] = set()
        try:
            for group in shape_groups(task.spec, proposals):
                for trial, outcome in _train_group(task, run, storage, group, progress):
                    tell_outcome(study, trial, outcome)
                    told.add(trial.number)
                    if on_finished is not None:
                        on_finished(outcome)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for trial, values in proposals:
                if trial.number not in told:
                    tell_outcome(study, trial, _interrupted(run, trial.number, values))
            raise


Proposal = tuple[optuna.Trial, dict[str, Any]]


def shape_groups(spec: Spec, proposals: list[Proposal]) -> list[list[Proposal]]:
    """Proposals split into groups that can train as one stack (first-seen order)."""
    groups: dict[tuple, list[Proposal]] = {}
    for trial, values in proposals:
        groups.setdefault(shape_key(apply_params(spec, values)), []).append((trial, values))
    return list(groups.values())


def _train_group(
    task: WorkerTask,
    run: RunFolder,
    storage: optuna.storages.BaseStorage,
    group: list[Proposal],
    progress: ProgressSink,
) -> list[tuple[optuna.Trial, TrialOutcome]]:
    """Train one group: stacked when it has several trials, alone otherwise."""
    spec = task.spec
    prune = spec.search.pruner != "none"
    for trial, values in group:
        progress.trial_started(trial.number, values, apply_params(spec, values).train.epochs)
    callbacks = [_epoch_callback(trial, spec, progress, prune) for trial, _ in group]
    rescue = spec.search.mode == "panda" and spec.search.panda.rescue
    proposals = [(trial.number, values) for trial, values in group]
    with heartbeat(storage, [trial for trial, _ in group]):
        outcomes = run_stack(spec, task.data, run, proposals, callbacks, rescue=rescue)
    return [(trial, outcome) for (trial, _), outcome in zip(group, outcomes, strict=True)]


def _worker_main(task: WorkerTask) -> None:
    """Entry point of a caviar worker process."""
    if task.gpu is not None:
        # Pin before CUDA starts (torch initializes it lazily): this worker sees one GPU.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(task.gpu)
        task.spec = task.spec.model_copy(update={"device": "cuda"})
    if task.threads:
        torch.set_num_threads(task.threads)
    try:
        trial_loop(task, SilentProgress())
    except KeyboardInterrupt:
        sys.exit(130)


# --- rounds, modes, resume --------------------------------------------------------------------


def cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(search: SearchSpec, device: torch.device) -> int:
    if search.mode == "panda":
        return 1
    if search.workers != "auto":
        return int(search.workers)
    if device.type == "cuda":
        return max(1, torch.cuda.device_count())
    return cores()


def pinned_gpu(device: torch.device, worker: int) -> int | None:
    """`device: cuda` (no index) on a machine with several GPUs: worker i gets GPU i mod n."""
    if device.type != "cuda" or device.index is not None or torch.cuda.device_count() < 2:
        return None
    return worker % torch.cuda.device_count()


def _finished_points(study: optuna.Study) -> list[tuple[dict[str, Any], float]]:
    return [
        (t.params, t.value)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None
    ]


def _decode_points(params: list[Param], points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_path = {p.path: p for p in params}
    return [
        {k: by_path[k].decode(v) if k in by_path else v for k, v in pt.items()} for pt in points
    ]


class Search:
    """One search over a study: rounds of trials until the budget or time runs out.

    The process that created the study plans the rounds (`execute`); processes that join it
    (`hpsearch worker`, or a second `run` naming the same study) work through the rounds the
    planner records in the study (`join`).
    """

    def __init__(
        self,
        spec: Spec,
        data: Dataset,
        run: RunFolder,
        progress: ProgressSink,
        study_name: str,
        reviewer: Reviewer | None = None,
        workers: int | None = None,
    ):
        assert spec.search is not None
        self.planner = False  # set by the process that plans the rounds (not by joiners)
        self.spec = spec
        self.search: SearchSpec = spec.search
        self.data = data
        self.run = run
        self.progress = progress
        self.reviewer = reviewer
        self.study_name = study_name
        self.params = parse_space(spec)
        self.device = resolve_device(spec.device)
        self.workers = workers or worker_count(self.search, self.device)
        self.started = time.perf_counter()
        timeout = self.search.timeout
        self.deadline = time.time() + parse_duration(timeout) if timeout else None
        self.storage = open_storage(spec.storage, run.study_log)
        self.study = optuna.create_study(
            storage=self.storage,
            sampler=make_sampler(self.search, spec.seed),
            pruner=make_pruner(self.search),
            study_name=study_name,
            direction=spec.objective.resolved_direction,
            load_if_exists=True,
        )
        self.known = self.outcomes()  # finished trials reported so far
        self.reported: set[int] = {o.number for o in self.known}
        self.summary_written = 0.0  # perf_counter() of the last running summary

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        return _decode_points(self.params, [params])[0]

    def outcomes(self) -> list[TrialOutcome]:
        return study_outcomes(self.study, self.decode)

    # rounds: round 0 searches the whole space, each refine round a tightened one
    def rounds(self) -> int:
        return 1 + (self.search.refine.rounds if self.search.refine else 0)

    def budgets(self) -> list[int | None]:
        if self.search.strategy == "grid" and not self.search.trials:
            return [None] * self.rounds()  # each grid round is as large as its grid
        return round_budgets(self.search.trials or DEFAULT_TRIALS, self.rounds())

    def load_rounds(self) -> list[dict[str, Any]]:
        return list(self.study.user_attrs.get(ROUNDS_ATTR, []))

    def save_rounds(self, rounds: list[dict[str, Any]]) -> None:
        self.study.set_user_attr(ROUNDS_ATTR, rounds)
        write_json(self.run.root / ROUNDS_FILE, rounds)

    def plan_round(self, index: int, previous: list[dict[str, Any]]) -> tuple[list[Param], int]:
        """The space and cumulative trial target of round `index`, recorded in the study."""
        if index < len(previous):  # planned before a resume
            record = previous[index]
            if self.search.strategy != "grid" and "start" in record:
                # follow the current trial budget (`--resume … --trials N` raises it)
                target = record["start"] + self.budgets()[index]
                if target != record["target"]:
                    previous[index] = {**record, "target": target}
                    self.save_rounds(previous)
            return self._space_from_record(record), previous[index]["target"]
        params = self.params
        if index > 0:
            keep = self.search.refine.keep if self.search.refine else 1.0
            maximize = self.spec.objective.resolved_direction == "maximize"
            best = best_fraction(_finished_points(self.study), keep, maximize)
            params = tighten(
                self._space_from_record(previous[-1]), _decode_points(self.params, best)
            )
        start = budget_used(self.study)
        if index == 0 and self.search.strategy != "grid":
            target = start + self.budgets()[0]  # the workers' sampler proposes
        else:  # grid points, or a refine round's points inside the tightened box
            if self.search.strategy == "grid":
                points = spread(grid_points(params, self.spec), self.budgets()[index])
            else:
                seed = self.spec.seed * 1009 + index
                points = refine_points(params, self.budgets()[index], seed, self.spec)
            points = unseen(points, self.params, self.study.get_trials(deepcopy=False))
            for point in points:
                self.study.enqueue_trial(to_optuna_params(self.params, point))
            target = start + len(points)
        self.save_rounds(
            [
                *previous,
                {"round": index, "start": start, "target": target, "space": describe_space(params)},
            ]
        )
        return params, target

    def _space_from_record(self, record: dict[str, Any]) -> list[Param]:
        by_path = {p.path: p for p in self.params}
        out = []
        for path, raw in record["space"].items():
            base = by_path[path]
            spec = ParamSpec.model_validate({**raw, "when": base.spec.when})
            out.append(Param(path, spec, base.kind))
        return out

    def out_of_time(self) -> bool:
        return stop_requested(self.run) or bool(self.deadline and time.time() >= self.deadline)

    def execute(self) -> str:
        """Plan and run every round; returns the final state."""
        for index in range(self.rounds()):
            _, target = self.plan_round(index, self.load_rounds())
            while True:
                self.run_round(target, index)
                self.wait_for_running()
                # a trial whose worker died while we waited is queued again: run it too
                if self.out_of_time() or budget_used(self.study) >= target:
                    break
            if self.out_of_time():
                break
        return "finished"

    def join(self, patience: float = 60.0) -> str:
        """Work on the rounds another process plans, until it says the study is finished."""
        done: set[int] = set()
        idle_since = time.time()
        while not self.out_of_time():
            rounds = self.load_rounds()
            fresh = [r for r in rounds if r["round"] not in done]
            for record in fresh:
                self.run_round(record["target"], record["round"])
                done.add(record["round"])
                idle_since = time.time()
            if self.study.user_attrs.get(STATE_ATTR) in ("finished", "interrupted"):
                return "finished"
            if not fresh and time.time() - idle_since > patience:
                return "finished"  # the planner is gone or slow; the trials stay in the study
            time.sleep(1.0)
        return "finished"

    def wait_for_running(self) -> None:
        """Trials still running elsewhere finish (or lose their heartbeat) before we go on."""
        while self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            fail_stale(self.study, self.storage)
            if not is_database(self.storage):
                self.fail_all_running()  # one machine: our workers have all exited
                return
            self.report_new()
            time.sleep(1.0)

    def task(self, target: int, worker: int, round_index: int) -> WorkerTask:
        threads = max(1, cores() // self.workers) if self.search.mode == "caviar" else None
        # every worker (and round) samples from its own stream, or they would propose alike;
        # processes on other machines add their own identity
        seed = self.spec.seed * 1009 + round_index * 101 + worker
        # a resumed study must not replay the proposals its first run already made
        seed += 7919 * len(self.study.get_trials(deepcopy=False))
        if is_database(self.storage):
            seed += int.from_bytes(f"{platform.node()}:{os.getpid()}".encode()[-8:], "big")
        seed %= 2**32
        return WorkerTask(
            self.spec,
            self.data,
            self.run.root,
            self.study_name,
            self.params,  # always the full space: refine rounds queue their points
            target,
            seed,
            threads,
            self.deadline,
            gpu=pinned_gpu(self.device, worker),
            stack=self.stack_for(target),
        )

    def stack_for(self, target: int) -> int:
        """The spec's stack size, but never so large that one worker takes another's share of
        the round (12 trials on 2 workers: stacks of 6). Machines we cannot see may join a
        database study at any time, so there a worker takes at most a quarter of its share."""
        sharers = self.workers * (4 if is_database(self.storage) else 1)
        share = math.ceil(max(1, target - budget_used(self.study)) / sharers)
        return max(1, min(stack_size(self.search), share))

    def run_round(self, target: int, round_index: int) -> None:
        if self.search.mode == "panda" or self.workers == 1:
            task = self.task(target, 0, round_index)
            task.review = self.reviewer if self.search.mode == "panda" else None
            trial_loop(task, self.progress, lambda _: self.report_new())
            return
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(
                target=_worker_main,
                args=(self.task(target, w, round_index),),
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
        """Poll the study while workers train: report finished trials, rewrite the summary."""
        noted: set[int] = set()
        while True:
            alive = [p for p in processes if p.is_alive()]
            self.report_new()
            for process in processes:
                if process.exitcode not in (None, 0) and process.pid not in noted:
                    noted.add(process.pid)
                    self.fail_running_of(process.pid)
            if not alive:
                self.report_new()
                return
            time.sleep(0.25)

    def report_new(self) -> None:
        """Show trials that finished since the last look, and rewrite summary.json.

        Only new trials are decoded, and the running summary is rewritten at most once a
        second (the final one always), so a trial's bookkeeping does not grow with the study.
        """
        fresh = []
        for trial in self.study.get_trials(deepcopy=False):
            if trial.number not in self.reported:
                outcome = outcome_of(trial, self.decode)
                if outcome is not None:
                    fresh.append(outcome)
        if not fresh:
            return
        fresh.sort(key=lambda o: o.number)
        self.known.extend(fresh)
        for outcome in fresh:
            self.reported.add(outcome.number)
            last = outcome is fresh[-1]
            self.progress.trial_finished(outcome, self.status(self.known) if last else None)
        if time.perf_counter() - self.summary_written >= SUMMARY_INTERVAL:
            write_summary(
                self.run, self.spec, self.known, "running", self.started, study=self.study_name
            )
            self.summary_written = time.perf_counter()

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
        if self.search.strategy == "grid" and not self.search.trials:
            rounds = self.load_rounds()
            return rounds[-1]["target"] if rounds else None
        return self.search.trials or DEFAULT_TRIALS

    def _fail(self, trial: optuna.trial.FrozenTrial) -> None:
        outcome = _interrupted(self.run, trial.number, self.decode(trial.params))
        live = optuna.trial.Trial(self.study, trial._trial_id)  # noqa: SLF001
        live.set_user_attr(OUTCOME_ATTR, outcome.to_json())
        self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)

    def fail_running_of(self, pid: int) -> None:
        """A worker died mid-trial: its trial is failed now, not left RUNNING."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            same_host = trial.user_attrs.get("worker_host", platform.node()) == platform.node()
            if trial.user_attrs.get("worker_pid") == pid and same_host:
                self._fail(trial)

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

    def recover(self) -> None:
        """Resume: trials left RUNNING by dead processes are failed and retried once, and so are
        trials interrupted by Ctrl-C.

        In a database, only trials whose heartbeat stopped count as dead (others may be
        training on another machine right now)."""
        if is_database(self.storage):
            fail_stale(self.study, self.storage)
            self.retry_interrupted()
            return
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self._fail(trial)
            if "retry_of" not in trial.user_attrs:
                self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        self.retry_interrupted()

    def retry_interrupted(self) -> None:
        """Trials cut short by Ctrl-C run again (once each) instead of using up the budget."""
        trials = self.study.get_trials(deepcopy=False)
        replaced = replaced_numbers(trials)
        for trial in trials:
            if (
                trial.state == TrialState.FAIL
                and failure_reason(trial) == "interrupted"
                and "retry_of" not in trial.user_attrs
                and trial.number not in replaced
            ):
                self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})

    def fail_all_running(self) -> None:
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            same_host = trial.user_attrs.get("worker_host", platform.node()) == platform.node()
            if same_host:
                self._fail(trial)

    def finish(self, state: str) -> dict[str, Any]:
        """Write the summary; the planner also records the end (and the best) in the study."""
        data = self.data if state == "finished" else None
        summary = write_summary(
            self.run, self.spec, self.outcomes(), state, self.started, data, self.study_name
        )
        if self.planner:
            self.study.set_user_attr(FINAL_ATTR, {k: summary[k] for k in ("best", "diagnosis")})
            self.study.set_user_attr(STATE_ATTR, state)
        return summary


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
    return RunResult(run, write_summary(run, spec, [outcome], "finished", started, data))


def _drive(search: Search, work: Callable[[], str]) -> RunResult:
    """Run `work` (plan or join rounds); on Ctrl-C, fail what runs and keep what finished."""
    try:
        state = work()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))  # a second Ctrl-C ends at once
        (search.run.root / ".stop").touch()
        search.fail_all_running()
        raise Interrupted(search.run, search.finish("interrupted")) from None
    return RunResult(search.run, search.finish(state))


def _publish(study: optuna.Study, spec: Spec, data: Dataset) -> None:
    """What a worker on another machine needs: the spec (password masked) and data fingerprint."""
    study.set_user_attr(SPEC_ATTR, spec_to_yaml(masked(spec)))
    study.set_user_attr(FINGERPRINT_ATTR, data.fingerprint)


def run_search(
    spec: Spec,
    data: Dataset,
    run: RunFolder,
    progress: ProgressSink,
    resuming: bool = False,
    reviewer: Reviewer | None = None,
    study_name: str | None = None,
) -> RunResult:
    search = Search(spec, data, run, progress, study_name or run.name, reviewer)
    search.planner = True
    if resuming:
        search.recover()
        (run.root / ".stop").unlink(missing_ok=True)
        search.study.set_user_attr(STATE_ATTR, "running")
    elif SPEC_ATTR not in search.study.user_attrs:
        _publish(search.study, spec, data)
    if spec.storage is not None:
        print(
            f"study '{search.study_name}' in {mask_url(spec.storage)}; more machines can join: "
            f"hpsearch worker --storage URL --study {search.study_name}",
            file=sys.stderr,
            flush=True,
        )
    return _drive(search, search.execute)


def claim_study(spec: Spec, name: str) -> bool:
    """Create study `name` in the spec's database; False when another process already did.

    The database's unique study name makes this race-free: of many processes starting at
    once, exactly one creates the study and plans its rounds, the others join it.
    """
    storage = open_storage(spec.storage, Path(os.devnull))
    try:
        optuna.create_study(
            storage=storage, study_name=name, direction=spec.objective.resolved_direction
        )
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True


def join_study(
    url: str,
    study_name: str,
    runs_dir: Path,
    progress: ProgressSink,
    workers: int | None = None,
    device: str | None = None,
    data_path: Path | None = None,
    wait: float = 60.0,
) -> RunResult:
    """`hpsearch worker`: join a study in a database with nothing but its URL and name."""
    probe_storage(url)
    storage = open_storage(url, Path(os.devnull))
    study = load_existing_study(storage, study_name, wait)
    deadline = time.time() + wait
    while SPEC_ATTR not in study.user_attrs or ROUNDS_ATTR not in study.user_attrs:
        if time.time() > deadline:  # created, but its planner never published the spec
            raise InputError(f"--study: study '{study_name}' has no hpsearch spec attached")
        time.sleep(0.5)
        study = load_existing_study(storage, study_name)
    spec = _study_spec(study, url, study_name, **({"device": device} if device else {}))
    if data_path is not None:
        data_spec = spec.data.model_copy(update={"source": str(data_path.resolve())})
        spec = spec.model_copy(update={"data": data_spec})
    data = prepare(spec)
    if data.fingerprint != study.user_attrs[FINGERPRINT_ATTR]:
        raise InputError(
            f"data: this machine's copy of {spec.data.source} differs from the study's "
            "(fingerprints do not match); give the same file with --data"
        )
    run = RunFolder(runs_dir / study_name)
    if not run.spec.exists():
        run.root.mkdir(parents=True, exist_ok=True)
        write_text(run.spec, spec_to_yaml(masked(spec)))
        write_json(run.env, environment(spec, resolve_device(spec.device)))
        write_json(run.split, data.split_info)
    search = Search(spec, data, run, progress, study_name, workers=workers)
    return _drive(search, lambda: search.join(wait))


def _study_spec(study: optuna.Study, url: str, name: str, **update: Any) -> Spec:
    raw = yaml.safe_load(study.user_attrs[SPEC_ATTR])
    return spec_from_dict({**raw, "storage": url, **update}, source=f"study {name}")


def study_folder(url: str, study_name: str, runs_dir: Path) -> RunFolder:
    """`report --storage --study`: a local run folder rebuilt from the database alone."""
    probe_storage(url)
    study = load_existing_study(open_storage(url, Path(os.devnull)), study_name)
    if SPEC_ATTR not in study.user_attrs:
        raise InputError(f"--study: study '{study_name}' has no hpsearch spec attached")
    spec = _study_spec(study, url, study_name)
    run = RunFolder(runs_dir / study_name)
    run.root.mkdir(parents=True, exist_ok=True)
    write_text(run.spec, spec_to_yaml(masked(spec)))
    params = parse_space(spec)
    outcomes = study_outcomes(study, lambda p: _decode_points(params, [p])[0])
    final = study.user_attrs.get(FINAL_ATTR) or {}
    test = (final.get("best") or {}).get("metrics", {})
    test = {k: v for k, v in test.items() if k.startswith("test_")}
    state = study.user_attrs.get(STATE_ATTR, "running")
    summary = build_summary(
        run, spec, outcomes, state, test, final.get("diagnosis"), None, study_name
    )
    write_json(run.summary, summary)
    write_json(run.root / ROUNDS_FILE, study.user_attrs.get(ROUNDS_ATTR, []))
    return run


def reviewer_for(spec: Spec) -> Reviewer | None:
    """panda + interactive on a terminal: ask before each trial; elsewhere, say why not."""
    search = spec.search
    if search is None or search.mode != "panda" or not search.panda.interactive:
        return None
    if not sys.stdin.isatty():
        print("warning: interactive panda needs a terminal; running unattended", file=sys.stderr)
        return None
    return make_reviewer(parse_space(spec), spec)


def _resume(spec: Spec, options: RunOptions, progress: ProgressSink) -> RunResult:
    run = find_run(options.runs_dir, options.resume)
    old = load_spec(run.spec)
    if old.storage and options.storage is None:
        if "***" in old.storage:
            raise InputError(
                f"--resume: this run's study is in {old.storage}; pass --storage with "
                "the full URL again (passwords are never written to the run folder)"
            )
        spec = spec.model_copy(update={"storage": old.storage})
    warnings = check_resume_compatible(old, spec)
    if spec.storage is None:
        warnings.append(repair_journal(run.study_log))
    for warning in filter(None, warnings):
        print(f"warning: {warning}", file=sys.stderr)
    data = prepare(spec)
    write_text(run.spec, spec_to_yaml(masked(spec)))
    name = read_json(run.summary).get("study") if run.summary.exists() else None
    return run_search(spec, data, run, progress, True, reviewer_for(spec), name or run.name)


def run_spec(
    spec_path: Path, options: RunOptions, progress: ProgressSink | None = None
) -> RunResult:
    """`hpsearch run`: validate everything, then train one model or search."""
    progress = progress or SilentProgress()
    spec = with_overrides(load_spec(spec_path), options)
    try:
        if options.resume is not None:
            return _resume(spec, options, progress)
        data = prepare(spec)
        if spec.search is None:
            if options.study:
                raise InputError("--study: the spec has no search section")
            return run_single(spec, data, options.runs_dir, progress)
        if options.study and spec.storage is None:
            raise InputError("--study: naming a study needs a database --storage")
        if options.study and not claim_study(spec, options.study):
            # another process created it first: work on it as one more worker
            return join_study(
                spec.storage, options.study, options.runs_dir, progress, options.workers
            )
        run = start_run(spec, data, options.runs_dir)
        return run_search(
            spec, data, run, progress, reviewer=reviewer_for(spec), study_name=options.study
        )
    finally:
        progress.close()
