"""One search over a study: the round loop of `hpsearch run` and `hpsearch worker`.

The planner (the process that created the study) plans each round with `rounds.plan_round`,
queues its points and records it in the study; workers (`hpsearch.workers`) train it, here or
in spawned processes; the live summary follows the study meanwhile; the end is scored and
summarized once. Joiners work through the rounds the planner recorded.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import replace
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch.data import Dataset
from hpsearch.errors import DiskFull, InputError
from hpsearch.outcome import RunState
from hpsearch.processes import planned_device, warm_up
from hpsearch.progress import ProgressSink, Reviewer
from hpsearch.ray_workers import RayCluster, run_ray_tasks
from hpsearch.rounds import plan_round, round_budgets, round_count, total_budget
from hpsearch.runs import RunFolder
from hpsearch.space import decode_params, parse_space, to_optuna_params
from hpsearch.spec import Spec, parse_duration
from hpsearch.storage import DatabaseUnreachable, retry_seconds
from hpsearch.strategies import describe_space, make_pruner, make_sampler, space_from_description
from hpsearch.study import (
    FINAL_ATTR,
    RERANK_ATTR,
    SEED_ATTR,
    STATE_ATTR,
    budget_used,
    fail_running,
    fail_stale,
    fetch_weights,
    is_database,
    load_rounds,
    open_storage,
    refresh_statistics,
    save_rounds,
)
from hpsearch.summary import LiveSummary, best_outcome, ranked_outcomes
from hpsearch.workers import (
    DATABASE_EXIT,
    DISK_FULL_EXIT,
    WorkerTask,
    cores,
    pinned_gpu,
    run_processes,
    stack_for,
    trial_loop,
    worker_count,
)

ENDED = (RunState.FINISHED, RunState.STOPPED, RunState.INTERRUPTED)  # joiners leave then
STATISTICS_FROM = 500  # trials in a database study when its statistics are first refreshed


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
        planner: bool = False,
        cluster: RayCluster | None = None,
    ):
        assert spec.search is not None
        self.spec, self.search, self.data, self.run = spec, spec.search, data, run
        self.progress, self.reviewer, self.planner = progress, reviewer, planner
        self.study_name = study_name
        self.params = parse_space(spec)
        self.device = planned_device(spec.device)  # no torch for a search on the CPU
        self.cluster = cluster  # caviar workers as Ray tasks there (None: local processes)
        if workers is None and cluster is not None and self.search.workers == "auto":
            workers = cluster.slots(self.device)
        self.workers = workers or worker_count(self.search, self.device)
        timeout = self.search.timeout
        self.deadline = time.time() + parse_duration(timeout) if timeout else None
        self.storage = open_storage(spec.storage, run.study_log)
        self.study = optuna.create_study(
            storage=self.storage,
            sampler=make_sampler(self.search, spec.seed),
            pruner=make_pruner(self.search, spec.train.epochs),
            study_name=study_name,
            directions=spec.objective.resolved_directions,
            load_if_exists=True,
        )
        self.live = LiveSummary(
            run, spec, self.study, self.decode, progress.trial_finished, self.total, study_name
        )
        self.analyzed_at = STATISTICS_FROM // 2  # trials in the study when last analyzed

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        return decode_params(self.params, params)

    def total(self) -> int | None:
        rounds = load_rounds(self.study)
        return total_budget(self.search, rounds[-1]["target"] if rounds else None)

    def out_of_time(self) -> bool:
        return self.run.stop_requested() or bool(self.deadline and time.time() >= self.deadline)

    def execute(self) -> RunState:
        """Plan and run every round (until the user stops it: `stopped`)."""
        self.progress.search_started(self.live.status())
        for index in range(round_count(self.search)):
            target = self.plan(index)
            while True:
                if self.run_round(target, index):
                    return RunState.STOPPED
                self.wait_for_running()
                # a trial whose worker died while we waited is queued again: run it too
                if self.out_of_time() or budget_used(self.study) >= target:
                    break
            if self.out_of_time():
                break
        if self.search.rerank is not None and not self.out_of_time():
            index = round_count(self.search)
            target = self.plan_rerank(index)
            while not self.out_of_time() and budget_used(self.study) < target:
                if self.run_round(target, index):
                    return RunState.STOPPED
                self.wait_for_running()
        return RunState.FINISHED

    def plan_rerank(self, index: int) -> int:
        """search.rerank: queue `seeds` more trainings of each of the `top` configurations,
        each with a seed of its own (recorded as the last round; read back on resume)."""
        from hpsearch.objective import rerank_seed

        rounds = load_rounds(self.study)
        if index < len(rounds):
            return rounds[index]["target"]
        rerank = self.search.rerank
        originals = [o for o in self.live.outcomes() if o.rerank_of is None]
        top = ranked_outcomes(self.spec, originals)[: rerank.top]
        for outcome in top:
            for k in range(1, rerank.seeds + 1):
                self.study.enqueue_trial(
                    to_optuna_params(self.params, outcome.params),
                    user_attrs={
                        RERANK_ATTR: outcome.number,
                        SEED_ATTR: rerank_seed(outcome.seed, k),
                    },
                )
        start = budget_used(self.study)
        target = start + len(top) * rerank.seeds
        record = {"round": index, "rerank": True, "start": start, "target": target, "space": {}}
        save_rounds(self.study, self.run, [*rounds, record])
        return target

    def plan(self, index: int) -> int:
        """Round `index`'s cumulative trial target. A round planned before a resume is read
        back (following a raised `--trials`); a new one is planned, queued and recorded."""
        rounds = load_rounds(self.study)
        budgets = round_budgets(self.search)
        if index < len(rounds):
            record = rounds[index]
            if self.search.strategy != "grid" and "start" in record:
                target = record["start"] + budgets[index]
                if target != record["target"]:
                    rounds[index] = {**record, "target": target}
                    save_rounds(self.study, self.run, rounds)
            return rounds[index]["target"]
        trials = self.study.get_trials(deepcopy=False)
        planned = plan_round(
            self.search,
            self.params,
            index,
            previous=space_from_description(self.params, rounds[-1]["space"]) if rounds else None,
            finished=[
                (self.decode(t.params), t.values[0])
                for t in trials
                if t.state == TrialState.COMPLETE and t.values
            ],
            tried=[self.decode(t.params) for t in trials],
            budget=budgets[index],
            seed=self.spec.seed,
            maximize=self.spec.objective.resolved_direction == "maximize",
            spec=self.spec,
        )
        start = budget_used(self.study)
        for point in planned.points or []:
            self.study.enqueue_trial(to_optuna_params(self.params, point))
        target = start + planned.count
        record = {"round": index, "start": start, "target": target}
        record["space"] = describe_space(planned.space)
        save_rounds(self.study, self.run, [*rounds, record])
        return target

    def join(self, patience: float = 60.0) -> RunState:
        """Work on the rounds another process plans, until it says the study is finished."""
        done: set[int] = set()
        idle_since = time.time()
        self.progress.search_started(self.live.status())
        while not self.out_of_time():
            fresh = [r for r in load_rounds(self.study) if r["round"] not in done]
            for record in fresh:
                self.run_round(record["target"], record["round"])
                done.add(record["round"])
                idle_since = time.time()
            if self.study.user_attrs.get(STATE_ATTR) in ENDED:
                break
            if not fresh and time.time() - idle_since > patience:
                break  # the planner is gone or slow; the trials stay in the study
            time.sleep(1.0)
        return RunState.FINISHED

    def run_round(self, target: int, index: int) -> bool:
        """Train the round up to `target`: here (panda, one worker) or in worker processes.
        True when the user stopped the search."""
        if self.search.mode == "panda" or (self.workers == 1 and self.cluster is None):
            task = self.task(target, 0, index)
            return trial_loop(task, self.progress, lambda _: self.follow())
        # never more processes than trials left in the round (4 workers for 1 trial: 1)
        before = budget_used(self.study)
        count = max(1, min(self.workers, target - before))
        tasks = [self.task(target, w, index, count) for w in range(count)]
        if self.cluster is not None:
            codes = run_ray_tasks(tasks, self.device, self.follow)
        else:
            codes = run_processes(tasks, self.follow, self.fail_trials_of, progress=self.progress)
        if DISK_FULL_EXIT in codes:
            raise DiskFull(str(self.run.trials_dir))
        if DATABASE_EXIT in codes:
            raise DatabaseUnreachable(getattr(self.storage, "where", "?"), retry_seconds())
        if all(code not in (0, None) for code in codes) and budget_used(self.study) == before:
            # every worker died without starting a trial: trying again would loop for ever
            raise InputError(
                f"the {count} worker process{'es' * (count != 1)} could not start (exit code "
                f"{codes[0]}; their error is above); caviar workers import the program that "
                "started them, so run hpsearch from a file or the command line, not from stdin"
            )
        return False

    def task(self, target: int, worker: int, index: int, workers: int = 1) -> WorkerTask:
        caviar = self.search.mode == "caviar"
        database = is_database(self.storage)
        room = target - budget_used(self.study)
        return WorkerTask(
            self.spec,
            self.data,
            self.run.root,
            self.study_name,
            self.params,
            target,
            threads=max(1, cores() // workers) if caviar else None,
            deadline=self.deadline,
            review=self.reviewer if self.search.mode == "panda" else None,
            gpu=pinned_gpu(self.device, worker),
            # a trial timed for train_seconds trains alone: a stack shares its time
            stack=1
            if "train_seconds" in self.spec.objective.costs
            else stack_for(self.search, room, workers, database),
        )

    def follow(self) -> None:
        """While trials run: report those that finished; the planner also keeps the
        database's statistics fresh as the study doubles in size (see refresh_statistics),
        and imports what scoring the best trial needs while the workers train."""
        warm_up()
        self.live.refresh()
        if self.planner and len(self.live.ledger.trials) >= self.analyzed_at * 2:
            refresh_statistics(self.storage)
            self.analyzed_at = len(self.live.ledger.trials)

    def fail_trials_of(self, pid: int) -> None:
        """A worker died mid-trial: its trial is failed now, not left RUNNING."""
        fail_running(self.study, self.run, self.decode, pid)

    def wait_for_running(self) -> None:
        """Trials still running elsewhere finish (or lose their heartbeat) before we go on."""
        while self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            fail_stale(self.study, self.storage)
            if not is_database(self.storage):
                # one machine: our workers have all exited
                fail_running(self.study, self.run, self.decode)
                return
            self.follow()
            time.sleep(1.0)

    def stop(self) -> dict[str, Any]:
        """Ctrl-C: no new trial or round starts, what runs is failed as interrupted, the
        summary keeps what finished. A second Ctrl-C ends the process at once."""
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))
        self.run.request_stop()
        fail_running(self.study, self.run, self.decode)
        return self.finish(RunState.INTERRUPTED)

    def finish(self, state: RunState) -> dict[str, Any]:
        """The summary, with the best trial scored on test when the search finished; the
        planner also records the end (and the best) in the study."""
        from hpsearch.objective import score_best  # torch: imported by now (see follow)

        final = None
        best = best_outcome(self.spec, self.live.outcomes())
        if state in (RunState.FINISHED, RunState.STOPPED) and best is not None:
            model = self.run.trial(best.number).model
            fetched = not model.exists() and fetch_weights(self.study, best.number, model)
            try:
                final = score_best(self.spec, self.data, self.run, best)
            except InputError as damaged:  # the search's record still gets written
                print(f"warning: {damaged}", file=sys.stderr)
            else:
                if fetched:
                    final = replace(final, weights="fetched")
        summary = self.live.write(state, final, self.data)
        if self.planner:
            self.study.set_user_attr(FINAL_ATTR, {k: summary[k] for k in ("best", "diagnosis")})
            self.study.set_user_attr(STATE_ATTR, state.value)
        return summary
