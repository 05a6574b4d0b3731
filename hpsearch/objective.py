"""Trials in their folders: apply sampled params to the spec, train (one trial or a stack of
them, in the one loop of `hpsearch.train`), checkpoint, and write each trial's `trials/<n>/`;
re-train a recorded trial; score the best trial on test once."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpsearch.data import Dataset, Split
from hpsearch.errors import InputError
from hpsearch.metrics import cost_metrics, prefixed, score_split, squared_error_spread
from hpsearch.outcome import Reason, TrialOutcome, TrialState
from hpsearch.pareto import objective_values
from hpsearch.remedies import resampling_info
from hpsearch.runs import (
    RunFolder,
    TrialFolder,
    append_jsonl,
    read_json,
    write_bytes,
    write_json,
)
from hpsearch.space import apply_params
from hpsearch.spec import Spec
from hpsearch.train import (
    Member,
    TrainHooks,
    TrainResult,
    build_model,
    resolve_device,
    train,
)
from hpsearch.transfer import plan as transfer_plan

# Told each epoch's record of trial `number` (and rescue events).
TrialCallback = Callable[[int, dict[str, Any]], None]
# Asked once per epoch which of these trials to stop: (epoch, numbers) -> the pruned numbers.
PruneCallback = Callable[[int, list[int]], Collection[int]]


def checkpoint_seconds() -> float:
    """How often a training trial saves its state (HPSEARCH_CHECKPOINT_SECONDS, default 5)."""
    return max(0.0, float(os.environ.get("HPSEARCH_CHECKPOINT_SECONDS", "5")))


def configuration_seed(spec_seed: int, params: dict[str, Any]) -> int:
    """A trial's seed: from the spec's seed and the trial's configuration alone, so the same
    configuration trains the same model in any run, worker, stack position or retry."""
    text = json.dumps(params, sort_keys=True, default=str)
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return int(np.random.SeedSequence([spec_seed, digest]).generate_state(1)[0])


@dataclass(frozen=True)
class TrialJob:
    """A trial to train: its number, params and seed, and the trial whose checkpoint it may
    continue from (a retry of an interrupted trial)."""

    number: int
    params: dict[str, Any]
    seed: int
    resume_from: int | None = None
    resume_folder: str | None = None  # that trial's folder, wherever it trained (a shared disk)
    rerank_of: int | None = None  # search.rerank: this re-trains that trial's configuration


def job_for(
    spec: Spec, number: int, params: dict[str, Any], seed: int | None = None, **kwargs: Any
) -> TrialJob:
    """The job of trial `number`: its configuration's seed unless it was given another one
    (a re-ranking trial)."""
    seed = configuration_seed(spec.seed, params) if seed is None else seed
    return TrialJob(number, params, seed, **kwargs)


def rerank_seed(seed: int, k: int) -> int:
    """The k-th further seed (k >= 1) of a configuration whose own seed is `seed`."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def objective_value(spec: Spec, metrics: dict[str, float]) -> float | None:
    """The (first) objective's value; None unless every objective metric is finite."""
    values = objective_values(spec.objective, metrics)
    return values[0] if values else None


# --- checkpoints ------------------------------------------------------------------------------


def save_torch(payload: Any, path: Path) -> None:
    """torch.save, written atomically like every file of the run folder."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(path, buffer.getvalue())


def save_checkpoint(folder: TrialFolder, state: dict[str, Any]) -> None:
    save_torch(state, folder.checkpoint)


def load_checkpoint(folder: TrialFolder) -> dict[str, Any] | None:
    """A trial's saved training state; None when there is none, or it cannot be read (a run
    killed mid-write leaves only a temporary file, which is not read)."""
    if not folder.checkpoint.exists():
        return None
    try:
        return torch.load(folder.checkpoint, map_location="cpu", weights_only=True)
    except Exception:
        return None


def _checkpoint_folders(run: RunFolder, job: TrialJob) -> list[tuple[TrialFolder, int]]:
    """Where `job` may continue from, first found first: its own folder, the folder of the
    trial it retries in this run, and that trial's folder in another run (another machine or
    batch task, on a shared file system)."""
    folders = [(run.trial(job.number), job.number)]
    if job.resume_from is not None:
        folders.append((run.trial(job.resume_from), job.resume_from))
        if job.resume_folder is not None:
            folders.append((TrialFolder(Path(job.resume_folder)), job.resume_from))
    return folders


def resume_state(run: RunFolder, job: TrialJob) -> tuple[dict[str, Any] | None, int | None]:
    """Where `job` continues: its own checkpoint, else the one of the trial it retries; with
    the number of the trial whose checkpoint it is (None, None for a fresh start)."""
    for folder, number in _checkpoint_folders(run, job):
        if (state := load_checkpoint(folder)) is not None:
            return state, number
    return None, None


def resume_position(run: RunFolder, job: TrialJob) -> tuple[int, int]:
    """(epoch, batch) where `job` starts: trials share a stack only from the same position."""
    state, _ = resume_state(run, job)
    return (0, 0) if state is None else (state["epoch"], state["batch"])


def _forget_checkpoints(run: RunFolder, job: TrialJob) -> None:
    for folder, _ in _checkpoint_folders(run, job):
        with contextlib.suppress(OSError):  # another run's folder may be read-only here
            folder.checkpoint.unlink(missing_ok=True)


# the question of the outermost deferred_stop now open (main thread only), which nested ones share
_open_stop: threading.Event | None = None


@contextlib.contextmanager
def deferred_stop() -> Iterator[Callable[[], bool]]:
    """While trials train (or the study is written), the first Ctrl-C, SIGTERM or SIGHUP asks
    the work to stop at its next safe point, and the block raises KeyboardInterrupt when it
    ends (training saves checkpoints first); a second one interrupts at once. Yields the
    question the work asks. Nested blocks share the outermost one's question, so a stop
    asked anywhere inside is seen by all. Signals reach the main thread only; elsewhere
    nothing changes."""
    global _open_stop
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    if _open_stop is not None:  # nested
        asked = _open_stop
        yield asked.is_set
        if asked.is_set():
            raise KeyboardInterrupt
        return
    asked = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if asked.is_set():
            raise KeyboardInterrupt
        asked.set()

    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in stops}
    _open_stop = asked
    try:
        yield asked.is_set
    finally:
        _open_stop = None
        for sig, old in previous.items():
            signal.signal(sig, old)
        if asked.is_set():
            raise KeyboardInterrupt


# --- trials -----------------------------------------------------------------------------------


def _begin(
    run: RunFolder, job: TrialJob, history: list[dict[str, Any]], trial_spec: Spec, data: Dataset
) -> TrialOutcome:
    """The trial's folder with its params (and where its weights and train rows come from,
    with init_from and oversampling) and the epochs it resumes after; failed until it
    finishes."""
    folder = run.trial(job.number)
    folder.root.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"number": job.number, "seed": job.seed, "params": job.params}
    if trial_spec.model.init_from is not None:
        record["init_from"] = transfer_plan(trial_spec, data)
    if trial_spec.data.oversample is not None:
        record["oversample"] = resampling_info(trial_spec.data, data, trial_spec.seed)
    if job.resume_from is not None:
        record["retry_of"] = job.resume_from
    if job.rerank_of is not None:
        record["rerank_of"] = job.rerank_of
    write_json(folder.params, record)
    folder.metrics.write_text("", encoding="utf-8")
    for line in history:
        append_jsonl(folder.metrics, line)
    outcome = TrialOutcome(job.number, TrialState.FAILED, None, job.params, job.seed)
    outcome.rerank_of = job.rerank_of
    return outcome


def _failure_reason(exc: BaseException, folder: Path) -> str:
    """Why a trial failed, in the words of the summary: oom, disk: ..., error: ..."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return Reason.OOM.value
    if isinstance(exc, OSError):
        return Reason.DISK.detailed(f"{exc.strerror or exc} ({exc.filename or folder})")
    return Reason.ERROR.detailed(f"{type(exc).__name__}: {exc}")


def _settle(
    spec: Spec,
    data: Dataset,
    folder: TrialFolder,
    outcome: TrialOutcome,
    result: TrainResult,
    stack: int,
    seconds: float,
) -> None:
    """Copy a finished training into the outcome (with the costs the objective names: see
    metrics.cost_metrics) and save the model."""
    if result.state != TrialState.FAILED:
        save_torch(result.model.state_dict(), folder.model)
    outcome.state, outcome.reason = TrialState(result.state), result.reason
    outcome.metrics = dict(result.metrics)
    if spec.objective.costs and result.state != TrialState.FAILED:
        model = result.model
        rows = torch.as_tensor(data.splits["dev"].X, device=next(model.parameters()).device)
        outcome.metrics.update(cost_metrics(model, rows, seconds, spec.objective.costs))
    outcome.best_epoch = result.best_epoch
    outcome.epochs_run = result.epochs_run
    outcome.stopped_early = result.stopped_early
    outcome.rescues = [
        {key: event[key] for key in ("epoch", "reason", "lr")}
        for event in result.history
        if event.get("event") == "rescue"
    ]
    outcome.value = objective_value(spec, outcome.metrics)
    if spec.objective.several and outcome.value is not None:
        outcome.values = objective_values(spec.objective, outcome.metrics)
    outcome.stack = stack


def _close(run: RunFolder, outcome: TrialOutcome, started: float) -> TrialOutcome:
    outcome.seconds = time.perf_counter() - started
    with contextlib.suppress(OSError):  # the study keeps the outcome even if this write fails
        write_json(run.trial(outcome.number).result, outcome.to_json())
    return outcome


def run_stack(
    spec: Spec,
    data: Dataset,
    run: RunFolder,
    jobs: list[TrialJob],
    on_epoch: TrialCallback | None = None,
    prune: PruneCallback | None = None,
    device: torch.device | None = None,
    rescue: bool = False,
    command: Callable[[], str | None] | None = None,
) -> list[TrialOutcome]:
    """Train trials of one shape together (one, or a stack), each continuing from its
    checkpoint when it has one; each gets its folder and outcome as if trained alone.
    `rescue` and `command` are panda's babysitting (see train.TrainHooks).

    A trial's own failure (divergence, an exception, out of memory, a disk that refuses its
    files) fails that trial with a reason; it never ends the search. A fault of the whole stack
    sends its trials through one at a time, so no trial is lost to its neighbours. Ctrl-C and
    SIGTERM stop at the end of a batch, after saving every trial's checkpoint.
    """
    started = time.perf_counter()
    outcomes = [TrialOutcome(j.number, TrialState.FAILED, None, j.params, j.seed) for j in jobs]
    try:
        resumed = [resume_state(run, job) for job in jobs]
        states = [state for state, _ in resumed]
        members = [
            Member(apply_params(spec, job.params), job.seed, state)
            for job, state in zip(jobs, states, strict=True)
        ]
        outcomes = [
            _begin(run, job, state["history"] if state else [], member.spec, data)
            for job, state, member in zip(jobs, states, members, strict=True)
        ]
        for outcome, (state, source) in zip(outcomes, resumed, strict=True):
            if state is not None:
                outcome.resumed_from, outcome.resumed_epoch = source, state["epoch"]
        numbers = [job.number for job in jobs]

        def heard(k: int, record: dict[str, Any]) -> None:
            append_jsonl(run.trial(numbers[k]).metrics, record)
            if on_epoch is not None:
                on_epoch(numbers[k], record)

        def judge(epoch: int, judged: list[int]) -> list[int]:
            pruned = set(prune(epoch, [numbers[k] for k in judged])) if prune else set()
            return [k for k in judged if numbers[k] in pruned]

        with deferred_stop() as stop_requested:
            hooks = TrainHooks(
                on_epoch=heard,
                prune=judge if prune else None,
                checkpoint=lambda k, state: save_checkpoint(run.trial(numbers[k]), state),
                checkpoint_seconds=checkpoint_seconds(),
                stop_requested=stop_requested,
                rescue=rescue,
                command=command,
            )
            results = train(members, data, hooks, device)
        seconds = time.perf_counter() - started
        for job, outcome, result in zip(jobs, outcomes, results, strict=True):
            _settle(spec, data, run.trial(job.number), outcome, result, len(jobs), seconds)
    except InputError:
        raise
    except Exception as exc:
        if len(jobs) > 1:
            if isinstance(exc, torch.cuda.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            return [
                run_stack(spec, data, run, [job], on_epoch, prune, device, rescue, command)[0]
                for job in jobs
            ]
        outcomes[0].reason = _failure_reason(exc, run.trial(jobs[0].number).root)
    for job in jobs:
        _forget_checkpoints(run, job)
    return [_close(run, outcome, started) for outcome in outcomes]


def run_trial(
    spec: Spec,
    data: Dataset,
    run: RunFolder,
    job: TrialJob,
    on_epoch: TrialCallback | None = None,
    device: torch.device | None = None,
) -> TrialOutcome:
    """One trial alone, in its folder (see `run_stack`)."""
    return run_stack(spec, data, run, [job], on_epoch, device=device)[0]


# --- re-training a recorded trial -------------------------------------------------------------


REPRODUCED_WITHIN = 1e-4  # the largest metric difference still called "the same"
TIMED_METRICS = ("train_seconds", "inference_ms")  # measured by the clock: left out of that


@dataclass(frozen=True)
class Rerun:
    """A recorded trial trained again: the new outcome beside the recorded one."""

    recorded: TrialOutcome
    outcome: TrialOutcome
    folder: Path

    @property
    def difference(self) -> float:
        """The largest difference of a shared final metric (relative above 1 in size)."""
        if self.recorded.state != self.outcome.state:
            return math.inf
        old, new = self.recorded.metrics, self.outcome.metrics
        shared = (old.keys() & new.keys()) - set(TIMED_METRICS)  # clocks never repeat exactly
        gaps = [abs(old[k] - new[k]) / max(1.0, abs(old[k])) for k in shared]
        if not gaps:  # failed both times: the same when for the same reason
            return 0.0 if self.recorded.reason == self.outcome.reason else math.inf
        return max(gaps)

    @property
    def reproduced(self) -> bool:
        return self.difference <= REPRODUCED_WITHIN


def rerun_trial(
    spec: Spec,
    data: Dataset,
    run: RunFolder,
    recorded: TrialOutcome,
    into: RunFolder | None = None,
    device: torch.device | None = None,
) -> Rerun:
    """Train `recorded` again from its params and seed, into `into` (default: a new folder
    under the run's reruns/). A pruned trial stops at the epoch it was pruned at (pruning
    judged it against other trials, which are not trained again)."""
    if into is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        into = RunFolder(run.reruns_dir / f"{recorded.number}-{stamp}")
    job = TrialJob(recorded.number, recorded.params, recorded.seed)
    prune = None
    if recorded.state == TrialState.PRUNED:
        stop_at = recorded.epochs_run
        prune = lambda epoch, numbers: numbers if epoch >= stop_at else []  # noqa: E731
    outcome = run_stack(spec, data, into, [job], prune=prune, device=device)[0]
    return Rerun(recorded, replace(outcome, stack=recorded.stack), into.trial(recorded.number).root)


def recorded_outcome(run: RunFolder, number: int) -> TrialOutcome:
    """A trial's outcome as its folder recorded it (an input error naming what is missing)."""
    folder = run.trial(number)
    if not folder.result.is_file():
        known = ", ".join(map(str, run.trial_numbers())) or "none"
        raise InputError(f"no trial {number} with a result in {run.root} (trials: {known})")
    outcome = TrialOutcome.from_json(read_json(folder.result))
    if folder.params.is_file():  # the seed it trained with, as recorded before training
        outcome = replace(outcome, seed=read_json(folder.params).get("seed", outcome.seed))
    return outcome


@dataclass
class FinalEvaluation:
    """The best trial scored after the search: test (and train_dev) metrics and per-group
    errors, and where
    its weights came from (`local`: trained here; `fetched`: stored with the study by the
    machine that trained it; `reproduced`: trained again here from its seed, with the
    recorded metrics; `retrained`: trained again, the metrics differ)."""

    test: dict[str, float]
    groups: dict[str, dict[str, float | int | None]] | None
    weights: str = "local"
    spread: dict[str, float | None] | None = None  # regression: per-split error spread


def _group_subset(split: Split, label: str) -> Split:
    mask = split.group == label
    weight = None if split.weight is None else split.weight[mask]
    return Split(split.X[mask], split.y[mask], weight, split.group[mask])


def evaluate_best(
    spec: Spec, data: Dataset, run: RunFolder, outcome: TrialOutcome
) -> FinalEvaluation:
    """Load the best trial's weights (weights_only) and score them on the test split, once;
    on each group's train, dev and test rows (with their counts); and, for regression, the
    spread of the per-example errors that the diagnosis' intervals need."""
    trial_spec = apply_params(spec, outcome.params)
    device = resolve_device(spec.device)
    model = build_model(trial_spec, data).to(device)
    weights = run.trial(outcome.number).model
    try:
        model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    except Exception as exc:  # a damaged or foreign file (the write itself is atomic)
        raise InputError(
            f"the best trial's weights cannot be loaded ({type(exc).__name__}), so it is not "
            "scored on test; restore the file from a backup and resume, or compare a fresh "
            f"training of it: hpsearch rerun {run.root} {outcome.number}",
            source=str(weights),
        ) from None
    test_split = data.splits["test"]
    test = prefixed("test", score_split(model, trial_spec, data, test_split, device))
    if "train_dev" in data.splits:  # the train distribution, never trained on
        train_dev = score_split(model, trial_spec, data, data.splits["train_dev"], device)
        test.update(prefixed("train_dev", train_dev))
    spread = None
    if data.task == "regression":
        spread = {
            name: squared_error_spread(model, data, split, device)
            for name, split in data.splits.items()
        }
    groups = None
    if data.splits["train"].group is not None:
        labels = sorted({str(g) for split in data.splits.values() for g in split.group})
        groups = {}
        for label in labels:
            entry: dict[str, float | int | None] = {}
            for name in data.splits:  # train, dev, test (and train_dev)
                subset = _group_subset(data.splits[name], label)
                metrics = (
                    score_split(model, trial_spec, data, subset, device) if len(subset) else {}
                )
                entry[f"{name}_error"] = metrics.get("error")
                entry[f"n_{name}"] = len(subset)
            groups[label] = entry
    return FinalEvaluation(test, groups, spread=spread)


def score_best(spec: Spec, data: Dataset, run: RunFolder, best: TrialOutcome) -> FinalEvaluation:
    """Finishing a run: the best trial on the test split (once) and per group. A best trial that
    trained on another machine (its weights are not here) is trained again here first, from
    its recorded seed, by the path `hpsearch rerun` takes; the evaluation says whether that
    reproduced the recorded metrics."""
    weights = "local"
    if not run.trial(best.number).model.exists():
        again = rerun_trial(spec, data, run, best, into=run)
        weights = "reproduced" if again.reproduced else "retrained"
    return replace(evaluate_best(spec, data, run, best), weights=weights)
