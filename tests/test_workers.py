"""Worker helpers: how many workers, where, how large a stack, grouping, epoch reports, and
the trial loop's stops."""

import os
import signal

import optuna
import pytest
import torch

import hpsearch.engine
import hpsearch.workers
from hpsearch.engine import Interrupted, RunOptions, run_spec
from hpsearch.objective import save_checkpoint
from hpsearch.runs import RunFolder
from hpsearch.spec import SearchSpec
from hpsearch.study import FOLDER_ATTR, PID_ATTR, mark_worker
from hpsearch.workers import EpochReporter, pinned_gpu, shape_groups, stack_for, worker_count
from tests.conftest import make_spec
from tests.test_engine import spec_file, study_trials

SPACE = {"train.lr": {"choices": [0.1]}}


def test_gpu_pinning_only_for_plain_cuda_on_several_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert pinned_gpu(torch.device("cuda"), 5) == 1
    assert pinned_gpu(torch.device("cuda:2"), 5) is None
    assert pinned_gpu(torch.device("cpu"), 5) is None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pinned_gpu(torch.device("cuda"), 5) is None


def test_worker_count(monkeypatch):
    cpu = torch.device("cpu")
    assert worker_count(SearchSpec(space=SPACE, mode="panda", workers=4), cpu) == 1
    assert worker_count(SearchSpec(space=SPACE, workers=3), cpu) == 3
    monkeypatch.setattr("hpsearch.workers.cores", lambda: 6)
    assert worker_count(SearchSpec(space=SPACE), cpu) == 6


def test_a_worker_takes_at_most_its_share_of_a_round():
    random = SearchSpec(space=SPACE, strategy="random")  # stack: auto -> 16
    assert stack_for(random, room=12, workers=2, database=False) == 6
    assert stack_for(random, room=100, workers=2, database=False) == 16
    assert stack_for(random, room=12, workers=2, database=True) == 2  # a quarter of a share
    assert stack_for(random, room=0, workers=2, database=False) == 1
    tpe = SearchSpec(space=SPACE, strategy="tpe")  # stack: auto -> 4
    assert stack_for(tpe, room=12, workers=1, database=False) == 4
    assert stack_for(tpe, room=6, workers=2, database=False) == 3


def test_shape_groups_keep_first_seen_order(tmp_path):
    spec = make_spec(search={"space": {"model.hidden": {"choices": [[8], [16]]}}})
    study = optuna.create_study()
    values = [{"model.hidden": [8]}, {"model.hidden": [16]}, {"model.hidden": [8]}]
    proposals = [(study.ask(), v) for v in values]
    groups = shape_groups(spec, RunFolder(tmp_path), proposals)
    assert [[t.number for t, _ in g] for g in groups] == [[0, 2], [1]]


def test_trials_resuming_from_different_epochs_train_apart(tmp_path):
    spec = make_spec(search={"space": {"train.lr": {"low": 0.001, "high": 0.1}}})
    run = RunFolder(tmp_path)
    study = optuna.create_study()
    proposals = [(study.ask(), {"train.lr": lr}) for lr in (0.01, 0.02, 0.03)]
    run.trial(1).root.mkdir(parents=True)
    save_checkpoint(run.trial(1), {"epoch": 3, "batch": 0, "history": []})
    groups = shape_groups(spec, run, proposals)
    assert [[t.number for t, _ in g] for g in groups] == [[0, 2], [1]]


class Recorder:
    def __init__(self):
        self.epochs = []

    def epoch(self, number, record):
        self.epochs.append((number, record["epoch"]))


def test_epoch_reports_reach_progress_and_the_pruner():
    spec = make_spec(search={"pruner": "median", "space": SPACE})
    study = optuna.create_study(
        pruner=optuna.pruners.ThresholdPruner(upper=0.5), direction="minimize"
    )
    trial = study.ask()
    progress = Recorder()
    reporter = EpochReporter([(trial, {})], spec, progress)
    reporter(trial.number, {"epoch": 1, "dev_error": 0.2})
    assert reporter.judge(1, [trial.number]) == []
    reporter(trial.number, {"epoch": 2, "event": "rescue"})  # not a metric
    reporter(trial.number, {"epoch": 3, "dev_error": 0.9})
    assert reporter.judge(3, [trial.number]) == [trial.number]
    assert progress.epochs == [(0, 1), (0, 2), (0, 3)]
    assert study.trials[0].intermediate_values == {1: 0.2, 3: 0.9}


def test_without_a_pruner_nothing_is_reported_to_the_study():
    spec = make_spec(search={"space": SPACE})
    study = optuna.create_study()
    trial = study.ask()
    reporter = EpochReporter([(trial, {})], spec, Recorder())
    reporter(trial.number, {"epoch": 1, "dev_error": 0.9})
    assert not reporter.prune
    assert study.trials[0].intermediate_values == {}


def test_a_stop_during_the_study_writes_waits_for_their_end(tmp_path, monkeypatch):
    """Ctrl-C (SIGTERM in a worker) while a trial's marks are being written: the writes finish
    first (one cut short inside the storage can leave the process's view of the study broken),
    then the pass stops and records its trials as interrupted."""

    def stopped_midway(trial: optuna.Trial, folder) -> None:
        trial.set_user_attr(PID_ATTR, os.getpid())
        os.kill(os.getpid(), signal.SIGINT)
        mark_worker(trial, folder)

    monkeypatch.setattr(hpsearch.workers, "mark_worker", stopped_midway)
    space = {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}}
    spec = spec_file(tmp_path, {"trials": 3, "workers": 1, "stack": 1, "space": space})
    with pytest.raises(Interrupted):
        run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    (run,) = (tmp_path / "runs").iterdir()
    (trial,) = study_trials(run)
    assert trial.state.name == "FAIL"
    assert FOLDER_ATTR in trial.user_attrs  # the marks were written to their end
    assert not (run / "trials" / "0" / "metrics.jsonl").exists()  # and it never trained


def test_a_stop_while_an_edited_proposal_is_written_waits_for_its_end(tmp_path, monkeypatch):
    """panda --interactive: the edit replacing a proposal is written to its end before a stop
    ends the pass (as any study write): the edit is recorded, interrupted, never trained."""
    marks = []

    def stopped_at_the_edit(trial: optuna.Trial, folder) -> None:
        marks.append(trial.number)
        trial.set_user_attr(PID_ATTR, os.getpid())
        if len(marks) == 2:  # the edit's marks, after the proposal's
            os.kill(os.getpid(), signal.SIGINT)
        mark_worker(trial, folder)

    monkeypatch.setattr(hpsearch.workers, "mark_worker", stopped_at_the_edit)
    monkeypatch.setattr(
        hpsearch.engine, "reviewer_for", lambda spec, progress: lambda n, v: {"train.lr": 0.02}
    )
    space = {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}}
    spec = spec_file(tmp_path, {"trials": 2, "mode": "panda", "space": space})
    with pytest.raises(Interrupted):
        run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    (run,) = (tmp_path / "runs").iterdir()
    proposal, edit = study_trials(run)
    assert edit.state.name == "FAIL" and edit.params == {"train.lr": 0.02}
    assert FOLDER_ATTR in edit.user_attrs  # the edit's marks were written to their end
    assert not (run / "trials" / "1" / "metrics.jsonl").exists()
