"""Runtime faults, one case each: the search finishes its budget, nothing finished is lost,
no trial is left RUNNING, and each failed trial carries a reason the report shows."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hpsearch.objective as objective
import hpsearch.stacked as stacked
import hpsearch.train as train
from hpsearch.engine import RunOptions, run_spec
from hpsearch.progress import SilentProgress
from tests.test_engine import SLOW_SEARCH, _running_trial_folders, _wait_for, spec_file, states


def run_with_fault(tmp_path, monkeypatch, fault, trials=4, **search):
    """Run a small search where trial 1 meets `fault`; return the summary."""
    spec = spec_file(
        tmp_path,
        {
            "trials": trials,
            "workers": 1,
            "space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
            **search,
        },
    )
    fault(monkeypatch)
    result = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    assert "RUNNING" not in states(result.run.root)
    return result.summary


TRIAL_ONE = objective.trial_seed(0, 1)  # the spec's seed is 0; trial 1 meets the fault


def raising_in_trial_one(exc: BaseException):
    """A fault: training trial 1 raises `exc`; the other trials train as usual."""

    def fault(monkeypatch):
        real = objective.train_model

        def train_model(spec, data, seed, **kwargs):
            if seed == TRIAL_ONE:
                raise exc
            return real(spec, data, seed, **kwargs)

        def train_stack(specs, data, seeds, *args, **kwargs):
            if TRIAL_ONE in seeds:  # the stack fails; its trials are retried one at a time
                raise exc
            return real_stack(specs, data, seeds, *args, **kwargs)

        real_stack = objective.train_stack
        monkeypatch.setattr(objective, "train_model", train_model)
        monkeypatch.setattr(objective, "train_stack", train_stack)

    return fault


def loss_in_trial_one(factor: float):
    """A fault: trial 1's losses are multiplied by inf or nan (torch is seeded per trial)."""

    def fault(monkeypatch):
        real = train.example_losses

        def losses(loss, outputs, y, task):
            values = real(loss, outputs, y, task)
            return values * factor if torch.initial_seed() == TRIAL_ONE else values

        forward = stacked.StackedMLP.__call__
        members = {"count": 0}

        def counting_forward(self, x):
            members["count"] = self.members
            return forward(self, x)

        def stacked_losses(loss, outputs, y, task):
            # a stack computes every member's losses in one call, member after member; trials
            # 0-3 are asked together, so trial 1 is the second member until it leaves
            values = real(loss, outputs, y, task)
            if members["count"] != 4:
                return values
            rows = values.view(4, -1)
            return torch.cat([rows[0], rows[1] * factor, rows[2:].reshape(-1)])

        monkeypatch.setattr(train, "example_losses", losses)
        monkeypatch.setattr(stacked, "example_losses", stacked_losses)
        monkeypatch.setattr(stacked.StackedMLP, "__call__", counting_forward)

    return fault


def fault_disk(monkeypatch):
    real = objective.write_json

    def write(path, payload):
        if Path(path).parent.name == "1":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, payload)

    monkeypatch.setattr(objective, "write_json", write)


FAULTS = {
    "exception-in-trial": (
        raising_in_trial_one(ValueError("boom in the model")),
        "error: ValueError: boom in the model",
    ),
    "cuda-out-of-memory": (raising_in_trial_one(torch.cuda.OutOfMemoryError("CUDA OOM")), "oom"),
    "infinite-loss": (loss_in_trial_one(float("inf")), "diverged"),
    "nan-loss": (loss_in_trial_one(float("nan")), "diverged"),
    "disk-refuses-writes": (fault_disk, "disk: No space left on device"),
}


@pytest.mark.parametrize("stack", ["off", 4])
@pytest.mark.parametrize("case", list(FAULTS))
def test_runtime_fault_fails_one_trial_with_a_reason(tmp_path, monkeypatch, case, stack):
    fault, reason = FAULTS[case]
    summary = run_with_fault(tmp_path, monkeypatch, fault, stack=stack)
    by_number = {t["number"]: t for t in summary["trials"]}
    assert by_number[1]["state"] == "failed"
    assert by_number[1]["reason"].startswith(reason)
    assert summary["counts"]["complete"] == 3  # the budget is still spent on the others
    assert summary["best"] is not None
    # a diverging member leaves its stack; any other fault sends the stack's trials solo
    trained_in_stack = stack == 4 and reason == "diverged"
    assert {t["stack"] for t in summary["trials"]} == ({4} if trained_in_stack else {1})


def test_exploding_gradients_without_clipping_diverge(tmp_path):
    spec = spec_file(
        tmp_path,
        {"strategy": "grid", "workers": 1, "space": {"train.grad_clip": {"values": [None, 1.0]}}},
        train={"lr": 1000.0, "optimizer": "momentum"},
    )
    summary = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).summary
    reasons = {str(t["params"]["train.grad_clip"]): t["reason"] for t in summary["trials"]}
    assert reasons["None"] == "diverged"


def test_second_ctrl_c_exits_at_once(tmp_path):
    spec = spec_file(tmp_path, SLOW_SEARCH, train={"epochs": 300, "early_stopping": None})
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "run", str(spec), "--runs-dir", str(runs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert _wait_for(lambda: _running_trial_folders(runs))
    started = time.time()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert time.time() - started < 5


def test_stale_journal_lock_is_taken_over(tmp_path):
    """A process SIGKILLed while holding the journal lock leaves it; others wait out the grace
    period, then go on."""
    spec = spec_file(
        tmp_path,
        {
            "trials": 2,
            "workers": 1,
            "space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
        },
    )
    first = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).run
    lock = first.root / "study.log.lock"
    os.symlink(first.root / "study.log", lock)  # what a killed holder leaves behind
    env = {**os.environ, "HPSEARCH_JOURNAL_GRACE_SECONDS": "2"}
    started = time.time()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpsearch",
            "run",
            str(spec),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--resume",
            "latest",
            "--trials",
            "3",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert time.time() - started < 60
    assert states(first.root).count("COMPLETE") == 3


class MemoryProbe(SilentProgress):
    def __init__(self):
        self.rss: list[int] = []

    def trial_finished(self, outcome, status=None):
        with open("/proc/self/statm") as handle:
            self.rss.append(int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_memory_stays_flat_over_300_tiny_trials(tmp_path):
    spec = spec_file(
        tmp_path,
        {
            "trials": 300,
            "workers": 1,
            "space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
        },
        train={"epochs": 1},
    )
    probe = MemoryProbe()
    run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"), probe)
    assert len(probe.rss) == 300
    growth_per_trial = (probe.rss[-1] - probe.rss[49]) / 250  # after warm-up
    assert growth_per_trial < 0.5 * 2**20
