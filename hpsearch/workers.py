"""Workers: the trial loop (ask, train, tell) and the processes that run it.

A worker asks the study for trials until its round's target is reached, trains each group of
same-shape trials as one stack, and tells every outcome. Caviar runs one worker per spawned
process, panda and `workers: 1` run one in the planner's own process. Workers know nothing of
the engine: the planner hands them callbacks (progress, the live summary).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from hpsearch.data import Dataset
from hpsearch.errors import DiskFull, says_disk_full
from hpsearch.outcome import Reason, TrialOutcome
from hpsearch.processes import PlannedDevice, adopt_environment, die_with, worker_context
from hpsearch.progress import (
    ProgressSink,
    QueueProgress,
    Reviewer,
    SilentProgress,
    forward_events,
)
from hpsearch.rounds import Proposal
from hpsearch.runs import RunFolder
from hpsearch.space import Param, apply_params, suggest, to_optuna_params
from hpsearch.spec import SearchSpec, Spec
from hpsearch.storage import DatabaseUnreachable
from hpsearch.strategies import ask_next, make_pruner, make_sampler
from hpsearch.study import (
    RERANK_ATTR,
    RESUME_FOLDER_ATTR,
    SEED_ATTR,
    TrialLedger,
    beats_the_study,
    budget_lock,
    fail_stale,
    first_beat,
    heartbeat,
    is_database,
    keep_within_budget,
    mark_worker,
    open_storage,
    quiet_optuna,
    record_interrupted,
    replace_trial,
    retried_number,
    retry_cut_short,
    share_weights,
    skip_trial,
    tell_outcome,
)

if TYPE_CHECKING:  # torch and training are imported where trials train: the planner that
    # starts workers never waits for them (see hpsearch.processes)
    import torch

    from hpsearch.objective import TrialJob

AUTO_STACK = 16  # trials per stack under `stack: auto` (grid and random)
# tpe and evolution under `stack: auto`: in benchmarks/search_quality.py --batch, asking 4 at
# a time ended within noise of one at a time at 100 and 200 evaluations, tpe at 50 too
# (evolution's median there: 1.61 against 1.49 times the optimum); 8 at a time lost at 50
# evaluations, 16 at 50 and 100 (README, "Searching")
GUIDED_STACK = 4
DISK_FULL_EXIT = 28  # a worker's exit code when the disk is full (ENOSPC)
DATABASE_EXIT = 75  # a worker's exit code when the database stayed away (EX_TEMPFAIL)
STOP_GRACE = 5.0  # seconds workers get to record their trials as interrupted on Ctrl-C


@dataclass(frozen=True)
class WorkerTask:
    """Everything one worker needs (pickled to its process)."""

    spec: Spec
    data: Dataset
    run_root: Path
    study_name: str
    params: list[Param]  # always the full space: refine rounds queue their points
    target: int  # stop once this many trials count against the budget
    threads: int | None = None
    deadline: float | None = None  # time.time() after which no new trial starts
    review: Reviewer | None = None  # panda --interactive: shown each proposal first
    gpu: int | None = None  # caviar on several GPUs: the one this worker is pinned to
    stack: int = 1  # trials asked for at once and trained together when their shapes match


# --- how many, where, how large ---------------------------------------------------------------


def cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(search: SearchSpec, device: torch.device | PlannedDevice) -> int:
    if search.mode == "panda":
        return 1
    if search.workers != "auto":
        return int(search.workers)
    if device.type == "cuda":
        import torch

        return max(1, torch.cuda.device_count())
    return cores()


def pinned_gpu(device: torch.device | PlannedDevice, worker: int) -> int | None:
    """`device: cuda` (no index) on a machine with several GPUs: worker i gets GPU i mod n."""
    if device.type != "cuda" or device.index is not None:
        return None
    import torch

    if torch.cuda.device_count() < 2:
        return None
    return worker % torch.cuda.device_count()


def stack_size(search: SearchSpec) -> int:
    """How many trials a worker asks for and trains together.

    `auto` stacks grid and random 16 at a time: their proposals do not depend on results. TPE
    and evolution learn from finished trials, and a stack's trials are all proposed before any
    of them finishes, so `auto` gives them stacks of 4 (GUIDED_STACK), small enough that the
    search still learns after every few proposals; those proposed together keep apart (TPE's
    constant liar, evolution's children unlike any in flight). Evolution's stack is at most
    half its window (`population`), so one stack's children never replace the whole window.
    `stack: K` sets K for any strategy. Panda watches one model at a time.
    """
    if search.mode == "panda" or search.stack == "off":
        return 1
    if search.stack != "auto":
        return int(search.stack)
    if search.strategy in ("grid", "random"):
        return AUTO_STACK
    if search.strategy == "evolution":
        return max(1, min(GUIDED_STACK, search.population // 2))
    return GUIDED_STACK


def stack_for(search: SearchSpec, room: int, workers: int, database: bool) -> int:
    """The spec's stack size, but never so large that one worker takes another's share of the
    `room` left in a round (12 trials on 2 workers: stacks of 6). Machines we cannot see may
    join a database study at any time, so there a worker takes at most a quarter of its share."""
    sharers = workers * (4 if database else 1)
    share = math.ceil(max(1, room) / sharers)
    return max(1, min(stack_size(search), share))


# --- the trial loop ---------------------------------------------------------------------------


class EpochReporter:
    """Each epoch of a group's trials goes to the live progress and, when the search prunes,
    to that trial in the study; once every member has reported an epoch, `judge` asks each
    one's pruner (which then sees its stack peers at the same epoch)."""

    def __init__(self, group: list[Proposal], spec: Spec, progress: ProgressSink):
        self.trials = {trial.number: trial for trial, _ in group}
        self.metric = spec.objective.metric
        self.prune = spec.search is not None and spec.search.pruner != "none"
        self.progress = progress

    def __call__(self, number: int, record: dict[str, Any]) -> None:
        self.progress.epoch(number, record)
        self.report(number, record)

    def report(self, number: int, record: dict[str, Any]) -> None:
        if self.prune and self.metric in record and "event" not in record:
            self.trials[number].report(record[self.metric], record["epoch"])

    def judge(self, epoch: int, numbers: list[int]) -> list[int]:
        return [n for n in numbers if self.trials[n].should_prune()]


def job_of(spec: Spec, trial: optuna.Trial, values: dict[str, Any]) -> TrialJob:
    """What to train for `trial`: its configuration's seed (or the one a re-ranking trial was
    queued with), and for a retry the trial whose checkpoint it continues."""
    attrs = trial.user_attrs
    from hpsearch.objective import job_for

    return job_for(
        spec,
        trial.number,
        values,
        seed=attrs.get(SEED_ATTR),
        resume_from=retried_number(trial),
        resume_folder=attrs.get(RESUME_FOLDER_ATTR),
        rerank_of=attrs.get(RERANK_ATTR),
    )


def shape_groups(spec: Spec, run: RunFolder, jobs: list[Proposal]) -> list[list[Proposal]]:
    """Proposals split into groups that can train as one stack: the same shape, and the same
    point to resume from (first-seen order)."""
    from hpsearch.objective import resume_position
    from hpsearch.stacked import shape_key

    groups: dict[tuple, list[Proposal]] = {}
    for trial, values in jobs:
        key = (
            shape_key(apply_params(spec, values)),
            resume_position(run, job_of(spec, trial, values)),
        )
        groups.setdefault(key, []).append((trial, values))
    return list(groups.values())


def train_group(
    task: WorkerTask,
    run: RunFolder,
    storage: optuna.storages.BaseStorage,
    group: list[Proposal],
    progress: ProgressSink,
) -> list[tuple[optuna.Trial, TrialOutcome]]:
    """Train one group of same-shape trials (a stack, or a single trial)."""
    from hpsearch.objective import resume_state, run_stack

    spec = task.spec
    rescue = spec.search.mode == "panda" and spec.search.panda.rescue
    jobs = [job_of(spec, trial, values) for trial, values in group]
    reporter = EpochReporter(group, spec, progress)
    for (trial, values), job in zip(group, jobs, strict=True):
        progress.trial_started(trial.number, values, apply_params(spec, values).train.epochs)
        state, _ = resume_state(run, job)
        for record in state["history"] if state else []:  # a retry's pruner sees its past
            reporter.report(trial.number, record)
    judge = reporter.judge if reporter.prune else None
    with heartbeat(storage, [trial for trial, _ in group]):
        # panda --interactive: keys pressed while a trial trains (end it, rescue it)
        command = getattr(task.review, "command", None)
        outcomes = run_stack(
            spec, task.data, run, jobs, reporter, judge, rescue=rescue, command=command
        )
    return [(trial, outcome) for (trial, _), outcome in zip(group, outcomes, strict=True)]


def trial_loop(
    task: WorkerTask,
    progress: ProgressSink,
    on_finished: Callable[[TrialOutcome], None] | None = None,
) -> bool:
    """Ask for trials until the round's target is reached; train and tell each one. True when
    the user stopped the search (panda --interactive).

    With stacking, a worker asks for several trials at once and trains those of one shape
    together; each is told to the study on its own. With a reviewer (panda --interactive),
    each proposal is shown first: an edit replaces it (as the next trial number; the proposal
    is skipped, not counted), and a stop ends the run's rounds too.
    """
    from hpsearch.objective import deferred_stop

    run = RunFolder(task.run_root)
    storage = open_storage(task.spec.storage, run.study_log)
    study = optuna.load_study(
        study_name=task.study_name,
        storage=storage,
        sampler=make_sampler(task.spec.search, task.spec.seed),
        pruner=make_pruner(task.spec.search, task.spec.train.epochs),
    )
    target = task.target
    database = is_database(storage)
    ledger = TrialLedger(study)  # the study's trials, read incrementally
    while True:
        if run.stop_requested() or (task.deadline and time.time() >= task.deadline):
            return False
        if not planner_alive():
            return False
        asked: list[optuna.Trial] = []  # every trial this pass holds, told or not
        full: str | None = None  # where a trial found the disk full
        proposals: list[Proposal] = []
        told: set[int] = set()
        try:
            # a stop while asking waits until the trial is in `asked`, so it is recorded
            with deferred_stop(), budget_lock(storage, task.study_name, run.root) as hold:
                fail_stale(study, storage)
                ledger.refresh()
                room = target - ledger.budget_used()
                if room <= 0:
                    return False
                for _ in range(min(task.stack, room)):
                    asked.append(ask_next(study))
                    first_beat(storage, asked[-1])
            if hold.lost:  # the database restarted meanwhile: another worker may have asked too
                with deferred_stop():
                    asked[:] = keep_within_budget(
                        study, storage, task.study_name, run.root, asked, target
                    )
                if not asked:
                    continue
            # The study's writes (marking, suggesting, telling) hold a stop back to their end:
            # one cut short inside the storage (a journal read half applied) would leave this
            # process's view of the study broken, unable to record its trials as interrupted.
            with deferred_stop():
                for trial in asked:
                    mark_worker(trial, run.trial(trial.number).root)
                    proposals.append((trial, suggest(trial, task.params, task.spec)))
            if task.review is not None:  # panda: one trial at a time
                trial, values = proposals[0]
                reviewed = task.review(trial.number, values)
                if reviewed is None:
                    skip_trial(study, trial)
                    run.request_stop()
                    return True
                if reviewed != values:
                    told.add(trial.number)  # skipped
                    target += 1  # the skipped proposal does not count; its edit does
                    with deferred_stop():  # study writes, as above
                        edit = replace_trial(study, trial, to_optuna_params(task.params, reviewed))
                        if edit is not None:
                            asked.append(edit)
                            mark_worker(edit, run.trial(edit.number).root)
                            proposals = [(edit, suggest(edit, task.params, task.spec))]
                    if edit is None:
                        continue
            with deferred_stop() as stop_requested:  # training's own stop is this one too
                for group in shape_groups(task.spec, run, proposals):
                    if stop_requested():
                        break  # the groups not trained yet are recorded as interrupted
                    for trial, outcome in train_group(task, run, storage, group, progress):
                        values = outcome.values or [outcome.value]
                        scored = database and outcome.value is not None
                        if scored and beats_the_study(ledger, values):
                            share_weights(trial, run.trial(trial.number).model)
                        counted = tell_outcome(study, trial, outcome, task.spec.objective.bounds)
                        told.add(trial.number)
                        if on_finished is not None and counted:
                            on_finished(outcome)
                        if outcome.reason_kind == Reason.DISK and says_disk_full(outcome.reason):
                            full = str(run.trial(trial.number).root)
            if full is not None:  # every later trial would fail the same way: stop the run
                raise DiskFull(full)
        except KeyboardInterrupt:
            # a stop at any point after a trial was asked (training, or still asking)
            # leaves no trial RUNNING: each is recorded as interrupted, to be retried
            for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(stop, signal.SIG_IGN)  # recording is not to be cut short
            values = {trial.number: v for trial, v in proposals}
            for trial in asked:
                if trial.number not in told:
                    outcome = record_interrupted(run, trial.number, values.get(trial.number, {}))
                    tell_outcome(study, trial, outcome)
                    retry_cut_short(study, trial._trial_id)  # noqa: SLF001 - the trial by id
            raise


# --- processes --------------------------------------------------------------------------------


def planner_alive() -> bool:
    """False in a worker process whose planner is gone (always True in the planner)."""
    parent = multiprocessing.parent_process()
    return parent is None or parent.is_alive()


def _worker_main(tasks: Any, events: Any = None, environment: dict[str, str] | None = None) -> None:
    """Entry point of a caviar worker process: take a task from the planner's queue, work;
    with `events`, tell the planner's live view of each trial's start and epochs. A worker
    never outlives its planner: when the planner dies, even by SIGKILL, the worker stops as
    on SIGTERM (its trials are recorded as interrupted)."""
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, signal.default_int_handler)  # stop like Ctrl-C
    if environment is not None:
        adopt_environment(environment)
    die_with(multiprocessing.parent_process())
    try:
        task: WorkerTask = tasks.get()
        if task.gpu is not None:
            # Pin before CUDA starts (torch initializes it lazily): this worker sees one GPU.
            os.environ["CUDA_VISIBLE_DEVICES"] = str(task.gpu)
            task = replace(task, spec=task.spec.model_copy(update={"device": "cuda"}))
        if task.threads:
            import torch

            torch.set_num_threads(task.threads)
        with quiet_optuna():
            trial_loop(task, SilentProgress() if events is None else QueueProgress(events))
    except DiskFull as full:
        print(f"worker: {full}", file=sys.stderr)
        sys.exit(DISK_FULL_EXIT)
    except DatabaseUnreachable:
        for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the planner stops us too
            signal.signal(stop, signal.SIG_IGN)
        sys.exit(DATABASE_EXIT)  # the planner, waiting on the same database, says it once
    except KeyboardInterrupt:
        for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # stopped: exit in peace
            signal.signal(stop, signal.SIG_IGN)
        sys.exit(130)


def run_processes(
    tasks: list[WorkerTask],
    on_tick: Callable[[], None],
    on_dead: Callable[[int], None],
    poll: float = 0.25,
    progress: ProgressSink | None = None,
) -> list[int | None]:
    """One spawned process per task, watched until all exit (their exit codes are returned):
    `on_tick` every `poll` seconds
    (report finished trials), `on_dead(pid)` once for a worker that died; `progress`, when it
    follows workers, hears each trial's start and epochs as they happen. On Ctrl-C the
    workers get STOP_GRACE seconds to record their trials as interrupted, then are killed."""
    context = worker_context()
    # Tasks (with the data) go through a queue, fed by a background thread, rather than as
    # the processes' arguments: a start then returns at once, and a stop is never stuck in a
    # start.
    queue = context.Queue()
    follow = progress is not None and progress.follows_workers
    events = context.Queue() if follow else None
    processes = []

    def tick() -> None:
        if events is not None:
            forward_events(events, progress)
        on_tick()

    try:
        for w in range(len(tasks)):
            process = context.Process(
                target=_worker_main,
                args=(queue, events, dict(os.environ)),
                name=f"hpsearch-worker-{w}",
            )
            processes.append(process)
            process.start()
        for task in tasks:
            queue.put(task)
        noted: set[int] = set()
        while True:
            alive = [p for p in processes if p.is_alive()]
            tick()
            for process in processes:
                if process.exitcode not in (None, 0) and process.pid not in noted:
                    noted.add(process.pid)
                    if process.exitcode in (DISK_FULL_EXIT, DATABASE_EXIT):
                        stop_processes(processes)  # the others would fail alike
                    else:
                        on_dead(process.pid)
            if not alive:
                tick()
                return [process.exitcode for process in processes]
            time.sleep(poll)
    except BaseException:  # Ctrl-C, or the database stayed away from the planner too
        stop_processes(processes)
        raise
    finally:
        # A task no worker took (one died before reading it) must not hold this process at
        # exit: the queue's feeder thread would wait forever to write it into the pipe.
        queue.cancel_join_thread()
        queue.close()
        if events is not None:
            events.cancel_join_thread()
            events.close()


def stop_processes(processes: list) -> None:
    """Ctrl-C: let workers mark their trials interrupted (STOP_GRACE), then end them."""
    processes = [p for p in processes if p.pid is not None]  # started
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signal.SIGINT)
    deadline = time.time() + STOP_GRACE
    for process in processes:
        process.join(max(0.0, deadline - time.time()))
        if process.is_alive():
            process.kill()
            process.join()
