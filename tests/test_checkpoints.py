"""Checkpoints through the CLI: a stacked caviar run killed (SIGKILL) or stopped (SIGTERM) at
any moment, then resumed, ends with the results an uninterrupted run of the same spec has, and
a stopped run goes on from its checkpoints instead of from epoch 0."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml

from hpsearch.runs import read_json

SPEC = {
    "name": "ck",
    "seed": 0,
    "device": "cpu",
    "data": {"source": "sklearn:digits"},
    "model": {"hidden": [64, 64], "dropout": 0.2},
    "train": {"epochs": 40, "batch_size": 32, "early_stopping": {"patience": 8}},
    "search": {
        "strategy": "random",
        "trials": 8,
        "workers": 2,  # stack: auto -> two stacks of 4
        "space": {"train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}},
    },
}
ENV = {**os.environ, "HPSEARCH_CHECKPOINT_SECONDS": "0.3"}
COMPARED = ("train_loss", "dev_loss", "train_error", "dev_error")


def _cli(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "hpsearch", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        **kwargs,
    )


def _run(spec, runs, *extra):
    proc = _cli("run", spec, "--runs-dir", runs, "-q", *extra)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return _only_run(runs)


def _only_run(runs):
    (run,) = runs.iterdir()
    return run


def _by_configuration(run):
    """Final metrics of every complete trial, keyed by its params."""
    summary = read_json(run / "summary.json")
    return {
        json.dumps(t["params"], sort_keys=True): t
        for t in summary["trials"]
        if t["state"] == "complete"
    }


def _checkpoints(runs):
    return list(runs.glob("*/trials/*/checkpoint.pt"))


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "ck.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


@pytest.fixture(scope="module")
def uninterrupted(spec_path, tmp_path_factory):
    runs = tmp_path_factory.mktemp("whole")
    return _run(spec_path, runs)


def _stop(spec_path, runs, how, delay):
    """Start a run, let it train past its first checkpoints (plus `delay` seconds), then stop
    it: SIGKILL to the whole process group, or SIGTERM to the run alone."""
    proc = _cli("run", spec_path, "--runs-dir", runs, "-q", start_new_session=True)
    deadline = time.time() + 120
    while not _checkpoints(runs):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    until = time.time() + delay
    # a kill at a random moment of training, but while a trial still trains: once trials
    # start finishing (their checkpoints go), it comes at once
    seen = len(_checkpoints(runs))
    while time.time() < until and len(_checkpoints(runs)) >= seen:
        seen = max(seen, len(_checkpoints(runs)))
        time.sleep(0.01)
    if how == "kill":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_a_killed_stacked_run_resumes_to_the_uninterrupted_results(
    spec_path, uninterrupted, tmp_path
):
    # training goes on for about 1.5 s after the first checkpoint on an idle machine (longer
    # under load): a kill within the first second lands mid-training
    delay = random.Random().uniform(0.0, 1.0)
    runs = tmp_path / "runs"
    code, _ = _stop(spec_path, runs, "kill", delay)
    assert code == -signal.SIGKILL, f"the run ended before the kill (delay {delay:.2f} s)"
    run = _run(spec_path, runs, "--resume", "latest")
    expected, resumed = _by_configuration(uninterrupted), _by_configuration(run)
    assert expected.keys() == resumed.keys(), f"delay {delay:.2f} s"
    for config, trial in expected.items():
        again = resumed[config]
        for key in COMPARED:
            gap = abs(again["metrics"][key] - trial["metrics"][key])
            assert gap < 1e-4, f"{config} {key} differs by {gap} (delay {delay:.2f} s)"
        assert again["epochs_run"] == trial["epochs_run"]
    # continued from a checkpoint (at a batch of epoch 0 when the kill came early)
    assert any(t["resumed_from"] is not None for t in resumed.values())
    assert not _checkpoints(runs)  # finished trials leave no checkpoint behind


def test_a_terminated_run_goes_on_from_its_checkpoints(spec_path, uninterrupted, tmp_path):
    runs = tmp_path / "runs"
    code, err = _stop(spec_path, runs, "term", 1.0)
    assert code == 130, err
    assert "--resume" in err
    run = _only_run(runs)
    assert read_json(run / "summary.json")["state"] == "interrupted"
    assert _checkpoints(runs), "SIGTERM saved no checkpoint"
    _run(spec_path, runs, "--resume", "latest")
    summary = read_json(run / "summary.json")
    # epochs trained in all: the stopped attempts, plus what each finished trial trained itself
    trained = 0
    for trial in summary["trials"]:
        if trial["state"] == "complete":
            trained += trial["epochs_run"] - trial["resumed_epoch"]
        else:
            trained += trial["epochs_run"] or len(
                (run / "trials" / str(trial["number"]) / "metrics.jsonl").read_text().splitlines()
            )
    full = sum(t["epochs_run"] for t in read_json(uninterrupted / "summary.json")["trials"])
    assert summary["counts"]["complete"] == 8
    assert any(t["resumed_epoch"] > 0 for t in summary["trials"])
    assert trained < 1.5 * full, (trained, full)
