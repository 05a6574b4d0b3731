"""Entry points of a run: `hpsearch run` (a search, or one model), `--resume`, `hpsearch worker`
(join a study in a database), and a run folder rebuilt from a database.

Order of work in a run: validate the spec and data (no folder yet), create the run folder,
search round by round (`hpsearch.search`: the planner plans each round, workers train it),
score the best trial on the test split once, and write summary.json (rewritten as trials
finish).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from hpsearch.data import Dataset, load_dataset
from hpsearch.errors import DiskFull, InputError
from hpsearch.outcome import Reason, RunState
from hpsearch.preflight import prepare
from hpsearch.processes import PlannedDevice, planned_device
from hpsearch.progress import ProgressSink, Reviewer, SilentProgress
from hpsearch.ray_workers import RayCluster, connect, parse_on
from hpsearch.remedies import resampling_info
from hpsearch.review import PandaReviewer
from hpsearch.runs import (
    DEFAULT_RUNS_DIR,
    RunFolder,
    RunOwner,
    create_run,
    find_run,
    read_json,
    write_json,
    write_text,
)
from hpsearch.search import Search
from hpsearch.space import parse_space
from hpsearch.spec import (
    Spec,
    check_resume_compatible,
    load_spec,
    spec_from_dict,
    spec_to_yaml,
)
from hpsearch.storage import (
    DatabaseUnreachable,
    Ticker,
    database_address,
    mask_args,
    mask_url,
    masked,
    probe_storage,
)
from hpsearch.study import (
    FINGERPRINT_ATTR,
    ROUNDS_ATTR,
    SPEC_ATTR,
    STATE_ATTR,
    load_existing_study,
    open_storage,
    quiet_optuna,
    recover,
    repair_journal,
    replaced_numbers,
    study_spec,
)
from hpsearch.summary import best_outcome, write_summary
from hpsearch.tracking import MlflowTracker, TrackingProgress, open_tracker
from hpsearch.transfer import resolve_init_from

if TYPE_CHECKING:  # training, and torch, are imported where trials train (see processes)
    from hpsearch.objective import Rerun


class Interrupted(Exception):
    """The user stopped the run (Ctrl-C); it can be resumed."""

    def __init__(self, run: RunFolder, summary: dict[str, Any]):
        super().__init__(f"interrupted; resume with: hpsearch run SPEC --resume {run.root}")
        self.run = run
        self.summary = summary

    def kept(self) -> str:
        """What the stop kept, truthfully: finished trials, or only checkpoints, or nothing."""
        trials = self.summary.get("trials", [])
        finished = sum(t.get("reason") != Reason.INTERRUPTED for t in trials)
        if finished:
            return f"{finished} finished trial{'s' * (finished != 1)} kept in {self.run.root}"
        saved = [t for t in trials if self.run.trial(t["number"]).checkpoint.exists()]
        if saved:
            return (
                f"no trial had finished; {len(saved)} checkpointed mid-training in "
                f"{self.run.root} continue where they stopped"
            )
        return f"no trial had finished; {self.run.root} holds the run's setup"


@dataclass(frozen=True)
class RunOptions:
    """Command-line overrides of the spec's search section, and where to put the run."""

    runs_dir: Path = DEFAULT_RUNS_DIR
    trials: int | None = None
    workers: int | None = None
    mode: str | None = None
    strategy: str | None = None
    timeout: str | None = None
    storage: str | None = None
    resume: str | None = None
    interactive: bool = False
    study: str | None = None
    mlflow: str | None = None  # tracking.mlflow
    on: str | None = None  # where caviar workers run: local processes, or Ray (ray_workers)


@dataclass(frozen=True)
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
    if options.mlflow is not None:
        raw["tracking"] = {"mlflow": options.mlflow or None}
    return spec_from_dict(raw, source="command line").located_like(spec)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(spec: Spec, device: PlannedDevice) -> dict[str, Any]:
    """The versions and machine a run ran with. A search on the CPU has not imported torch
    here yet (its workers train): its version comes from the installed package, and `threads`
    (this process's torch threads) is null."""
    torch = sys.modules.get("torch")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__ if torch else _version("torch"),
        "optuna": _version("optuna"),
        "hpsearch": _version("hpsearch"),
        "device": str(device),
        "cuda": torch.version.cuda if torch and device.type == "cuda" else None,
        "threads": torch.get_num_threads() if torch else None,
        "cpus": os.cpu_count(),
        "seed": spec.seed,
        "command": mask_args(sys.argv),
    }


def write_run_files(run: RunFolder, spec: Spec, data: Dataset, study: str | None = None) -> None:
    """What is known before training: the resolved spec, the environment (with the study a
    search runs in, so a resume finds it however early the run stopped), the split."""
    env = environment(spec, planned_device(spec.device))
    if spec.search is not None:
        env["study"] = study or run.name
    write_text(run.spec, spec_to_yaml(masked(spec)))
    write_json(run.env, env)
    write_json(run.split, split_record(spec, data))


def split_record(spec: Spec, data: Dataset) -> dict[str, Any]:
    """split.json: the splits, and what data.oversample makes of the train split."""
    resampled = resampling_info(spec.data, data, spec.seed)
    return data.split_info if resampled is None else {**data.split_info, "oversample": resampled}


def start_run(spec: Spec, data: Dataset, runs_dir: Path, study: str | None = None) -> RunFolder:
    """Create the run folder and write what is known before training."""
    run = create_run(runs_dir, spec.name)
    write_run_files(run, spec, data, study)
    return run


def _drive(search: Search, work: Callable[[], RunState]) -> RunResult:
    """Run `work` (plan or join rounds); on Ctrl-C, stop and keep what finished."""
    try:
        state = work()
    except KeyboardInterrupt:
        raise Interrupted(search.run, search.stop()) from None
    except DiskFull as full:
        # stop as for Ctrl-C, as far as the full disk lets us write (the journal holds all)
        with contextlib.suppress(OSError, DiskFull):
            search.stop()
        full.run = search.run
        raise
    except DatabaseUnreachable as down:
        # nothing to record: the study is the record, and it is out of reach; the trials left
        # running lose their heartbeat and are retried by --resume
        down.run = search.run
        raise
    return RunResult(search.run, search.finish(state))


# --- entry points -----------------------------------------------------------------------------


def run_single(spec: Spec, data: Dataset, runs_dir: Path, progress: ProgressSink) -> RunResult:
    """A spec without a search section: one model, trial 0."""
    started = time.perf_counter()
    run = start_run(spec, data, runs_dir)
    with RunOwner(run):
        return _train_single(spec, data, run, progress, started)


def _train_single(
    spec: Spec, data: Dataset, run: RunFolder, progress: ProgressSink, started: float
) -> RunResult:
    from hpsearch.objective import job_for, run_trial, score_best

    tracker = _tracker(spec, run, run.name)
    progress.trial_started(0, {}, spec.train.epochs)
    outcome = run_trial(spec, data, run, job_for(spec, 0, {}), progress.epoch)
    progress.trial_finished(outcome)
    if tracker is not None:
        tracker.trial_finished(outcome)
    best = best_outcome(spec, [outcome])
    final = score_best(spec, data, run, best) if best is not None else None
    summary = write_summary(run, spec, [outcome], RunState.FINISHED, started, None, final, data)
    return _tracked(tracker, lambda: RunResult(run, summary))


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
    cluster: RayCluster | None = None,
) -> RunResult:
    """Plan and run the search of `spec` in `run` (a new run folder, or a stopped one); its
    caviar workers are local processes, or Ray tasks on `cluster`."""
    name = study_name or run.name
    tracker = _tracker(spec, run, name)
    if tracker is not None:
        progress = TrackingProgress(progress, tracker)
    search = Search(spec, data, run, progress, name, reviewer, planner=True, cluster=cluster)
    if resuming:
        retried = recover(search.study, search.storage, run, search.decode, spec.objective.bounds)
        replaced = replaced_numbers(search.study.get_trials(deepcopy=False))
        kept = [o for o in search.live.outcomes() if o.number not in replaced]
        print(
            f"resuming {run.root}: {len(kept)} finished trial{'s' * (len(kept) != 1)} kept, "
            f"{retried} configuration{'s' * (retried != 1)} cut short retried",
            file=sys.stderr,
            flush=True,
        )
        run.clear_stop()
        search.study.set_user_attr(STATE_ATTR, RunState.RUNNING.value)
    elif SPEC_ATTR not in search.study.user_attrs:
        _publish(search.study, spec, data)
    if spec.storage is not None:
        print(
            f"study '{search.study_name}' in {mask_url(spec.storage)}; more machines can join: "
            f"hpsearch worker --storage URL --study {search.study_name}",
            file=sys.stderr,
            flush=True,
        )
    return _tracked(tracker, lambda: _drive(search, search.execute))


def _tracker(spec: Spec, run: RunFolder, name: str) -> MlflowTracker | None:
    """tracking: {mlflow: ...}: the search's MLflow experiment, opened before training."""
    tracker = open_tracker(spec, run, name)
    if tracker is not None and tracker.active:
        print(f"logging to MLflow: {mask_url(tracker.uri)}, experiment '{name}'", file=sys.stderr)
    return tracker


def _tracked(tracker: MlflowTracker | None, work: Callable[[], RunResult]) -> RunResult:
    """Run `work`; the tracker logs the search's summary at its end, or at a stop."""
    try:
        result = work()
    except Interrupted as stop:
        if tracker is not None:
            tracker.finish(stop.summary)
        raise
    if tracker is not None:
        tracker.finish(result.summary)
    return result


def claim_study(spec: Spec, name: str) -> bool:
    """Create study `name` in the spec's database; False when another process already did.

    The database's unique study name makes this race-free: of many processes starting at
    once, exactly one creates the study and plans its rounds, the others join it.
    """
    storage = open_storage(spec.storage, Path(os.devnull))
    try:
        optuna.create_study(
            storage=storage, study_name=name, directions=spec.objective.resolved_directions
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
    with quiet_optuna():
        probe_storage(url)
        storage = open_storage(url, Path(os.devnull))
        study = load_existing_study(storage, study_name, wait)
        deadline = time.time() + wait
        ticker = Ticker(f"waiting for study {study_name} at {database_address(url)} to plan")
        while SPEC_ATTR not in study.user_attrs or ROUNDS_ATTR not in study.user_attrs:
            if time.time() > deadline:  # created, but its planner never published the spec
                raise InputError(f"--study: study '{study_name}' has no hpsearch spec attached")
            if time.time() > deadline - wait + 2:  # a planner usually needs only a moment
                ticker.tick()
            time.sleep(0.5)
            study = load_existing_study(storage, study_name)
        spec = study_spec(study, url, study_name, **({"device": device} if device else {}))
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
            write_run_files(run, spec, data, study_name)
        with RunOwner(run, shared=True):
            search = Search(spec, data, run, progress, study_name, workers=workers)
            try:
                return _drive(search, lambda: search.join(wait))
            except DatabaseUnreachable as down:
                down.resume = down.resume or "start the worker again once the database is back"
                raise


def reviewer_for(spec: Spec, progress: ProgressSink) -> Reviewer | None:
    """panda + interactive on a terminal: ask before each trial; elsewhere, say why not."""
    search = spec.search
    if search is None or search.mode != "panda" or not search.panda.interactive:
        return None
    if not sys.stdin.isatty():
        print("warning: interactive panda needs a terminal; running unattended", file=sys.stderr)
        return None
    return PandaReviewer(parse_space(spec), spec, progress)


def _resume(spec: Spec, options: RunOptions, progress: ProgressSink) -> RunResult:
    run = find_run(options.runs_dir, options.resume)
    with RunOwner(run):  # before anything is repaired or recovered: one resumer at a time
        return _resume_owned(run, spec, options, progress)


def _resume_owned(
    run: RunFolder, spec: Spec, options: RunOptions, progress: ProgressSink
) -> RunResult:
    if not run.spec.exists():
        print(
            f"warning: {run.spec} is missing; resuming with the spec given on the command line "
            "as the run's spec (it is written back)",
            file=sys.stderr,
        )
    old = load_spec(run.spec) if run.spec.exists() else spec
    if old.storage and options.storage is None:
        if "***" in old.storage:
            raise InputError(
                f"--resume: this run's study is in {old.storage}; pass --storage with "
                "the full URL again (passwords are never written to the run folder)"
            )
        spec = spec.model_copy(update={"storage": old.storage})
    warnings = check_resume_compatible(old, spec)
    if spec.storage is None:
        check_journal_present(run)
        warnings.append(repair_journal(run.study_log))
    name, damaged = _study_name(run, spec)
    for warning in filter(None, [*warnings, damaged]):
        print(f"warning: {warning}", file=sys.stderr)
    if options.study:
        recorded = _started_study(run)
        if recorded is not None and recorded != options.study:
            raise InputError(
                f"--study: {run.root} ran study '{recorded}', not '{options.study}'; leave "
                "--study out to resume it (or run the other study without --resume)"
            )
        name = options.study
    if spec.storage is not None:
        check_study_present(spec.storage, name, run)
    data = prepare(spec)
    cluster = ray_cluster(options, spec)
    write_text(run.spec, spec_to_yaml(masked(spec)))
    reviewer = reviewer_for(spec, progress)
    return run_search(spec, data, run, progress, True, reviewer, name, cluster)


def check_journal_present(run: RunFolder) -> None:
    """A run whose trials are on disk but whose journal is gone (or empty) cannot resume:
    Optuna would start the study over and overwrite every trial folder."""
    journal = run.study_log
    empty = not journal.exists() or journal.stat().st_size == 0
    if empty and any(run.root.glob("trials/*/params.json")):
        raise InputError(
            f"the study journal is {'empty' if journal.exists() else 'missing'}, so the run's "
            "trials cannot be resumed (resuming would start over and overwrite them); restore "
            "study.log from a backup, or start a new run (the trials' folders stay readable)",
            source=str(journal),
        )


def _study_name(run: RunFolder, spec: Spec) -> tuple[str, str | None]:
    """The study a run folder belongs to (as env.json, written when the run started, or the
    summary records it) and, when the summary is damaged, a warning; a journal holds one
    study, which then names it."""
    started = _started_study(run)
    try:
        summary = read_json(run.summary) if run.summary.exists() else {}
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError):
        warning = f"{run.summary} is damaged; it is rewritten as the run goes on"
        if started is not None:
            return started, warning
        if spec.storage is None and run.study_log.exists():
            names = optuna.get_all_study_names(open_storage(None, run.study_log))
            if len(names) == 1:
                return names[0], warning
        return run.name, warning
    return started or summary.get("study") or run.name, None


def _started_study(run: RunFolder) -> str | None:
    """The study env.json says the run started in (runs of earlier versions lack it)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        started = read_json(run.env).get("study")
        if isinstance(started, str) and started:
            return started
    return None


def check_study_present(url: str, name: str, run: RunFolder) -> None:
    """A resume continues a study; it never starts a new one in the database (that would
    run the whole budget again beside the trials it means to keep)."""
    names = optuna.get_all_study_names(open_storage(url, Path(os.devnull)))
    if name not in names:
        known = ", ".join(sorted(names)[:10]) or "none"
        raise InputError(
            f"--resume: study '{name}' of {run.root} is not in {mask_url(url)} (studies: "
            f"{known}); check --storage"
        )


def _split_hashes(split_info: dict[str, Any]) -> dict[str, Any]:
    return {name: part.get("hash") for name, part in split_info.get("splits", {}).items()}


def rerun(run_name: str, number: int, runs_dir: Path, device: str | None = None) -> Rerun:
    """`hpsearch rerun`: train trial `number` of a run again from its recorded spec, params and
    seed, into a new folder under the run's reruns/; the result sits beside the recorded one."""
    from hpsearch.objective import recorded_outcome, rerun_trial
    from hpsearch.train import resolve_device

    run = find_run(runs_dir, run_name)
    spec = load_spec(run.spec)
    update: dict[str, Any] = {"storage": None}
    if device is not None:
        update["device"] = device
    spec = spec_from_dict({**spec.model_dump(mode="json"), **update}, source=str(run.spec))
    recorded = recorded_outcome(run, number)
    data = load_dataset(spec.data, spec.seed)
    if run.split.exists() and _split_hashes(read_json(run.split)) != _split_hashes(data.split_info):
        print(f"warning: the data's splits differ from those of {run.root}", file=sys.stderr)
    with quiet_optuna():
        return rerun_trial(spec, data, run, recorded, device=resolve_device(spec.device))


def ray_cluster(options: RunOptions, spec: Spec) -> RayCluster | None:
    """`--on ray...`: connect to the Ray cluster the caviar workers will run on (None: local
    processes); said on stderr, with what the cluster has."""
    address = parse_on(options.on)
    if address is None:
        return None
    cluster = connect(address, spec, planned_device(spec.device))
    print(f"workers on Ray at {cluster.describe()}", file=sys.stderr, flush=True)
    return cluster


def run_spec(
    spec_path: Path, options: RunOptions, progress: ProgressSink | None = None
) -> RunResult:
    """`hpsearch run`: validate everything, then train one model or search."""
    progress = progress or SilentProgress()
    parse_on(options.on)  # a wrong --on is refused before any work
    spec = with_overrides(load_spec(spec_path), options)
    spec = resolve_init_from(spec, options.runs_dir)
    try:
        with quiet_optuna():
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
            cluster = ray_cluster(options, spec)
            run = start_run(spec, data, options.runs_dir, options.study)
            with RunOwner(run):
                return run_search(
                    spec,
                    data,
                    run,
                    progress,
                    reviewer=reviewer_for(spec, progress),
                    study_name=options.study,
                    cluster=cluster,
                )
    except DatabaseUnreachable as down:
        where = getattr(down.run, "root", "RUN")
        down.resume = down.resume or f"once it is back: hpsearch run {spec_path} --resume {where}"
        raise
    finally:
        progress.close()
