"""End-to-end searches through the engine and the CLI (small iris runs, a few seconds each)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from hpsearch.engine import RunOptions, run_spec
from hpsearch.errors import InputError
from hpsearch.runs import read_json
from hpsearch.spec import check_resume_compatible
from tests.conftest import make_spec, write_mixed_groups


def spec_file(tmp_path: Path, search: dict, train: dict | None = None, name: str = "s") -> Path:
    raw = {
        "name": name,
        "seed": 0,
        "device": "cpu",
        "data": {"source": "sklearn:iris"},
        "model": {"hidden": [8]},
        "train": {"epochs": 4, "lr": 0.01, "batch_size": 16, **(train or {})},
        "search": search,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def lr_search(tmp_path: Path, trials: int) -> Path:
    """A small random search over the learning rate alone, in one process."""
    space = {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}}
    return spec_file(tmp_path, {"trials": trials, "workers": 1, "space": space})


def study_trials(run: Path) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run / "study.log"))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).trials


def states(run: Path) -> list[str]:
    return [t.state.name for t in study_trials(run)]


def test_random_search_in_process(tmp_path):
    spec = spec_file(
        tmp_path,
        {
            "strategy": "random",
            "trials": 5,
            "workers": 1,
            "space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
        },
    )
    result = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    summary = result.summary
    assert summary["counts"]["complete"] == 5
    assert summary["state"] == "finished"
    assert summary["best"]["metrics"]["test_error"] is not None
    assert len(summary["trials"]) == 5
    assert states(result.run.root) == ["COMPLETE"] * 5
    lrs = [t["params"]["train.lr"] for t in summary["trials"]]
    assert len(set(lrs)) == 5 and all(1e-3 <= lr <= 1e-1 for lr in lrs)


def test_grid_with_two_workers_runs_each_point_once(tmp_path):
    space = {
        "train.lr": {"low": 1e-3, "high": 1e-1, "log": True, "steps": 3},
        "train.batch_size": {"choices": [16, 32]},
    }
    spec = spec_file(tmp_path, {"strategy": "grid", "mode": "caviar", "workers": 2, "space": space})
    result = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    trials = study_trials(result.run.root)
    assert len(trials) == 6
    keys = {json.dumps(t.params, sort_keys=True) for t in trials}
    assert len(keys) == 6
    assert all(t.state.name == "COMPLETE" for t in trials)


def test_random_refine_rounds_shrink_the_space(tmp_path):
    spec = spec_file(
        tmp_path,
        {
            "strategy": "random",
            "trials": 9,
            "workers": 1,
            "refine": {"rounds": 2, "keep": 0.34},
            "space": {
                "train.lr": {"low": 1e-4, "high": 1.0, "log": True},
                "model.dropout": {"low": 0.0, "high": 0.5},
            },
        },
    )
    result = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    rounds = read_json(result.run.root / "rounds.json")
    assert [r["target"] for r in rounds] == [3, 6, 9]
    spans = [r["space"]["train.lr"]["high"] / r["space"]["train.lr"]["low"] for r in rounds]
    assert spans[0] > spans[1] >= spans[2]
    assert result.summary["counts"]["complete"] == 9


def test_diverging_trial_fails_and_search_finishes(tmp_path):
    spec = spec_file(
        tmp_path,
        {"strategy": "grid", "workers": 1, "space": {"train.lr": {"values": [1e9, 0.01]}}},
        train={"optimizer": "sgd"},
    )
    result = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    by_lr = {t["params"]["train.lr"]: t for t in result.summary["trials"]}
    assert by_lr[1e9]["state"] == "failed" and by_lr[1e9]["reason"] == "diverged"
    assert by_lr[0.01]["state"] == "complete"
    assert result.summary["best"]["params"] == {"train.lr": 0.01}


def test_asha_prunes(tmp_path):
    spec = spec_file(
        tmp_path,
        {
            "strategy": "random",
            "trials": 12,
            "workers": 1,
            "pruner": "asha",
            "space": {"train.lr": {"low": 1e-5, "high": 1.0, "log": True}},
        },
        train={"epochs": 9, "early_stopping": None},
    )
    result = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    assert result.summary["counts"]["pruned"] >= 1
    assert "RUNNING" not in states(result.run.root)


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpsearch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _wait_for(predicate, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _running_trial_folders(runs: Path) -> list[Path]:
    return [
        p
        for p in runs.glob("*/trials/*")
        if (p / "metrics.jsonl").exists()
        and (p / "metrics.jsonl").stat().st_size > 0
        and not (p / "result.json").exists()
    ]


SLOW_SEARCH = {
    "strategy": "random",
    "trials": 6,
    "mode": "caviar",
    "workers": 2,
    "space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
}


def test_sigkill_then_resume_reaches_the_budget(tmp_path):
    spec = spec_file(tmp_path, SLOW_SEARCH, train={"epochs": 300, "early_stopping": None})
    runs = tmp_path / "runs"
    proc = _cli("run", str(spec), "--runs-dir", str(runs), start_new_session=True)
    assert _wait_for(lambda: _running_trial_folders(runs)), (
        proc.stderr.read() if proc.poll() else ""
    )
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its workers die mid-trial
    proc.wait()
    run = next(runs.iterdir())
    assert "RUNNING" in states(run)
    resumed = _cli("run", str(spec), "--runs-dir", str(runs), "--resume", "latest", "--trials", "4")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    final = states(run)
    assert "RUNNING" not in final
    summary = read_json(run / "summary.json")
    assert sum(summary["counts"].values()) >= 4
    assert "interrupted" in summary["failure_reasons"]


def test_sigint_exits_130_and_resumes(tmp_path):
    spec = spec_file(tmp_path, SLOW_SEARCH, train={"epochs": 300, "early_stopping": None})
    runs = tmp_path / "runs"
    proc = _cli("run", str(spec), "--runs-dir", str(runs))
    assert _wait_for(lambda: _running_trial_folders(runs))
    started = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.time() - started < 15
    assert "--resume" in err
    # 300 epochs: nothing had finished, and the message says so (and what it kept)
    assert "interrupted: no trial had finished; " in err and "checkpointed mid-training" in err
    run = next(runs.iterdir())
    assert "RUNNING" not in states(run)
    stopped = read_json(run / "summary.json")
    assert stopped["state"] == "interrupted"
    cut = sum(t["reason"] == "interrupted" for t in stopped["trials"])
    resumed = _cli("run", str(spec), "--runs-dir", str(runs), "--resume", str(run), "--trials", "3")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert read_json(run / "summary.json")["state"] == "finished"
    plural = "s" if cut != 1 else ""
    said = f"resuming {run}: 0 finished trials kept, {cut} configuration{plural} cut short retried"
    assert said in err
    # the status lines count against the budget: a retry replaces what it retries
    counted = [int(n) for n in re.findall(r"^\[(\d+)/3\]", err, flags=re.MULTILINE)]
    assert counted and max(counted) == 3, err


def test_resume_refuses_incompatible_changes():
    old = make_spec(
        search={
            "space": {
                "train.optimizer": {"choices": ["adam", "sgd"]},
                "train.lr": {"low": 1e-3, "high": 1e-1, "log": True},
            }
        }
    )
    changed = make_spec(
        search={
            "space": {
                "train.optimizer": {"choices": ["adam"]},
                "train.lr": {"low": 1e-3, "high": 1e-1, "log": True},
            }
        }
    )
    with pytest.raises(InputError, match="choices changed"):
        check_resume_compatible(old, changed)
    widened = make_spec(
        search={
            "space": {
                "train.optimizer": {"choices": ["adam", "sgd"]},
                "train.lr": {"low": 1e-4, "high": 1e-1, "log": True},
            }
        }
    )
    assert any("widened" in w for w in check_resume_compatible(old, widened))
    flipped = make_spec(search={"space": old.search.space}, objective={"direction": "maximize"})
    with pytest.raises(InputError, match="objective"):
        check_resume_compatible(old, flipped)


@pytest.mark.parametrize("strategy", ["grid", "random", "evolution", "tpe"])
def test_every_strategy_on_a_real_spec(tmp_path, strategy):
    space = {
        "train.lr": {"low": 1e-3, "high": 1e-1, "log": True, "steps": 3},
        "train.batch_size": {"choices": [16, 32]},
    }
    if strategy != "grid":
        del space["train.lr"]["steps"]
    spec = spec_file(
        tmp_path,
        {"strategy": strategy, "trials": 6, "workers": 1, "population": 3, "space": space},
        train={"epochs": 2},
    )
    summary = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).summary
    assert summary["counts"]["complete"] == 6
    for trial in summary["trials"]:
        assert 1e-3 <= trial["params"]["train.lr"] <= 1e-1
        assert trial["params"]["train.batch_size"] in (16, 32)


def test_timeout_stops_starting_trials(tmp_path):
    spec = spec_file(
        tmp_path,
        {
            "trials": 500,
            "workers": 1,
            "timeout": "1s",
            "space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
        },
    )
    summary = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).summary
    assert 1 <= summary["counts"]["complete"] < 500
    assert summary["state"] == "finished"


def test_panda_interactive_edit_and_stop(tmp_path):
    from hpsearch.engine import run_search, start_run, with_overrides
    from hpsearch.preflight import prepare
    from hpsearch.progress import SilentProgress
    from hpsearch.spec import load_spec

    path = spec_file(
        tmp_path,
        {
            "mode": "panda",
            "trials": 5,
            "space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
        },
    )
    spec = with_overrides(load_spec(path), RunOptions(interactive=True))
    assert spec.search.panda.interactive
    data = prepare(spec)
    run = start_run(spec, data, tmp_path / "runs")
    answers = iter(["accept", "edit", "stop"])  # an edit runs at once, without a second look

    def reviewer(number, values):
        answer = next(answers)
        if answer == "edit":
            return {**values, "train.lr": 0.05}
        return values if answer == "accept" else None

    summary = run_search(spec, data, run, SilentProgress(), reviewer=reviewer).summary
    lrs = [t["params"]["train.lr"] for t in summary["trials"]]
    assert len(lrs) == 2 and lrs[1] == 0.05
    # the edited proposal (1) is set aside; its edit runs as the next number
    assert [t["number"] for t in summary["trials"]] == [0, 2]
    assert summary["counts"] == {"complete": 2, "pruned": 0, "failed": 0}
    assert summary["state"] == "stopped"
    assert summary["best"]["metrics"]["test_error"] is not None  # a stop still scores the best


def test_panda_rescue_logs_its_decision(tmp_path):
    spec = spec_file(
        tmp_path,
        {
            "mode": "panda",
            "panda": {"rescue": True},
            "strategy": "grid",
            "space": {"train.lr": {"values": [30.0]}},
        },
        train={"optimizer": "momentum", "epochs": 8},
    )
    text = spec.read_text().replace("hidden:\n  - 8", "hidden:\n  - 8\n  init: default")
    spec.write_text(text)
    result = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    lines = (result.run.root / "trials" / "0" / "metrics.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines if '"event"' in line]
    assert events and events[0]["reason"] == "diverged"
    assert result.summary["counts"]["complete"] == 1


def test_a_noisier_group_in_every_split_is_harder_not_a_mismatch(tmp_path):
    spec = write_mixed_groups(tmp_path)
    summary = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).summary
    groups = summary["diagnosis"]["groups"]
    assert set(groups) == {"easy", "hard"}
    assert groups["hard"]["dev_error"] > groups["easy"]["dev_error"] + 0.1
    assert groups["hard"]["verdict"] == "harder" and groups["easy"]["verdict"] == "fine"
    assert summary["diagnosis"]["mismatch"] is False
    split = read_json(Path(summary["run"]) / "split.json")
    assert groups["hard"]["n_dev"] + groups["easy"]["n_dev"] == split["splits"]["dev"]["size"]
    assert any("'hard' is harder" in r for r in summary["diagnosis"]["recommendations"])


def test_killed_worker_fails_its_trial_and_the_search_goes_on(tmp_path):
    spec = spec_file(
        tmp_path, {**SLOW_SEARCH, "trials": 4}, train={"epochs": 60, "early_stopping": None}
    )
    runs = tmp_path / "runs"
    proc = _cli("run", str(spec), "--runs-dir", str(runs))

    def running_worker_pid():
        runs_found = list(runs.glob("*/study.log"))
        if not runs_found:
            return None
        for trial in study_trials(runs_found[0].parent):
            if trial.state.name == "RUNNING" and "worker_pid" in trial.user_attrs:
                return trial.user_attrs["worker_pid"]
        return None

    assert _wait_for(lambda: running_worker_pid() is not None)
    os.kill(running_worker_pid(), signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    run = next(runs.iterdir())
    assert "RUNNING" not in states(run)
    summary = read_json(run / "summary.json")
    assert summary["failure_reasons"].get("interrupted", 0) >= 1
    assert summary["counts"]["complete"] >= 1


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_search_on_cuda(tmp_path):
    spec = lr_search(tmp_path, trials=2)
    spec.write_text(spec.read_text().replace("device: cpu", "device: cuda"))
    result = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    assert result.summary["counts"]["complete"] == 2
    assert read_json(result.run.root / "env.json")["device"].startswith("cuda")


def test_out_of_memory_fails_only_that_trial(tmp_path, monkeypatch):
    """A stack that runs out of memory retries its trials one at a time; then only the trial
    that still does not fit fails."""
    import torch

    import hpsearch.objective as objective

    real_train = objective.train
    calls = {"sizes": []}

    def flaky_train(members, *args, **kwargs):
        calls["sizes"].append(len(members))
        if len(members) > 1 or len(calls["sizes"]) == 3:  # the stack, then its second trial
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_train(members, *args, **kwargs)

    monkeypatch.setattr(objective, "train", flaky_train)
    spec = lr_search(tmp_path, trials=3)
    summary = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).summary
    assert calls["sizes"] == [3, 1, 1, 1]  # the stack of 3 fell back to solo trainings
    assert summary["counts"] == {"complete": 2, "pruned": 0, "failed": 1}
    assert summary["failure_reasons"] == {"oom": 1}
    assert [t["stack"] for t in summary["trials"]] == [1, 1, 1]


def test_resume_with_more_trials_extends_the_budget(tmp_path):
    spec = lr_search(tmp_path, trials=3)
    first = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    assert first.summary["counts"]["complete"] == 3
    again = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs", resume="latest", trials=5))
    assert again.run.root == first.run.root
    assert again.summary["counts"]["complete"] == 5


def test_torn_journal_record_is_dropped_on_resume(tmp_path, capsys):
    spec = lr_search(tmp_path, trials=2)
    run = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).run
    log = run.root / "study.log"
    log.write_bytes(log.read_bytes()[:-25])  # the last write was cut short
    again = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs", resume="latest", trials=3))
    assert again.summary["counts"]["complete"] == 3
    assert "incomplete last record" in capsys.readouterr().err
    assert (run.root / "study.log.torn").exists()


def test_damaged_journal_is_a_clear_error(tmp_path):
    spec = lr_search(tmp_path, trials=2)
    run = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).run
    lines = (run.root / "study.log").read_text().splitlines(keepends=True)
    lines[2] = lines[2][:10] + "\n"
    (run.root / "study.log").write_text("".join(lines))
    with pytest.raises(InputError, match="line 3 of the study journal is damaged"):
        run_spec(spec, RunOptions(runs_dir=tmp_path / "runs", resume="latest"))


def test_refine_with_choices_keeps_one_study(tmp_path):
    """Tightened rounds keep only some choices; Optuna needs a parameter's choices fixed for a
    study, so refine rounds queue their points and the study's space never changes."""
    spec = spec_file(
        tmp_path,
        {
            "strategy": "random",
            "trials": 9,
            "workers": 1,
            "refine": {"rounds": 2, "keep": 0.2},
            "space": {
                "train.lr": {"low": 1e-4, "high": 1.0, "log": True},
                "train.batch_size": {"choices": [8, 16, 32, 64]},
            },
        },
    )
    result = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    rounds = read_json(result.run.root / "rounds.json")
    assert len(rounds[-1]["space"]["train.batch_size"]["choices"]) < 4
    for record in rounds[1:]:
        kept = record["space"]["train.batch_size"]["choices"]
        in_round = [
            t for t in result.summary["trials"] if record["start"] <= t["number"] < record["target"]
        ]
        assert in_round and all(t["params"]["train.batch_size"] in kept for t in in_round)
    assert result.summary["counts"]["complete"] == 9


def test_resume_does_not_replay_earlier_proposals(tmp_path):
    spec = lr_search(tmp_path, trials=3)
    run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    summary = run_spec(
        spec, RunOptions(runs_dir=tmp_path / "runs", resume="latest", trials=6)
    ).summary
    lrs = [t["params"]["train.lr"] for t in summary["trials"]]
    assert len(lrs) == 6 and len(set(lrs)) == 6


def test_grid_refine_never_repeats_a_point(tmp_path):
    spec = spec_file(
        tmp_path,
        {
            "strategy": "grid",
            "workers": 1,
            "refine": {"rounds": 2, "keep": 0.5},
            "space": {
                "train.lr": {"low": 1e-3, "high": 1e-1, "log": True, "steps": 3},
                "train.batch_size": {"choices": [16, 32]},
            },
        },
        train={"epochs": 2},
    )
    result = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    trials = study_trials(result.run.root)
    keys = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(keys) == len(set(keys))
    rounds = read_json(result.run.root / "rounds.json")
    assert rounds[1]["space"]["train.lr"]["steps"] == 4  # denser inside the smaller box


@pytest.mark.parametrize("strategy", ["tpe", "evolution"])
def test_guided_strategies_train_in_stacks_under_auto(tmp_path, strategy):
    """stack: auto stacks tpe and evolution too (4 at a time), each trial of a stack its own
    configuration."""
    space = {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}}
    search = {"strategy": strategy, "trials": 8, "workers": 1, "space": space}
    spec = spec_file(tmp_path, search, train={"epochs": 2})
    summary = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).summary
    assert [t["stack"] for t in summary["trials"]] == [4] * 8
    assert len({t["params"]["train.lr"] for t in summary["trials"]}) == 8


@pytest.mark.parametrize("pruner", ["median", "asha", "hyperband"])
def test_pruners_prune_inside_stacks(tmp_path, pruner):
    """Members of a stack reach each epoch together: they are judged against each other."""
    space = {"train.lr": {"low": 1e-5, "high": 1e-1, "log": True}}
    search = {"trials": 16, "workers": 1, "pruner": pruner, "space": space}
    spec = spec_file(tmp_path, search, train={"epochs": 12, "early_stopping": None})
    summary = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).summary
    assert {t["stack"] for t in summary["trials"]} == {16}
    assert summary["counts"]["pruned"] >= 4
    assert summary["counts"]["complete"] >= 1


def test_a_distribution_missing_from_train_is_a_data_mismatch(tmp_path):
    from tests.conftest import write_split_column_data

    spec = write_split_column_data(tmp_path)
    summary = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).summary
    diagnosis = summary["diagnosis"]
    groups = diagnosis["groups"]
    assert groups["field"]["n_train"] == 0 and groups["field"]["verdict"] == "mismatch"
    assert groups["lab"]["verdict"] == "fine"
    assert diagnosis["mismatch"] is True
    assert diagnosis["judgements"]["mismatch"]["level"] == "high"
    assert diagnosis["train_dev_error"] is not None
    assert diagnosis["judgements"]["variance"]["split"] in ("train_dev", None)
    split = read_json(Path(summary["run"]) / "split.json")
    assert "train_dev" in split["splits"]


def test_rerank_trains_the_top_configurations_with_more_seeds(tmp_path):
    space = {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}}
    search = {"trials": 6, "workers": 1, "rerank": {"top": 3, "seeds": 2}, "space": space}
    spec = spec_file(tmp_path, search, train={"epochs": 6})
    result = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    summary = result.summary
    assert summary["counts"]["complete"] == 6 + 3 * 2
    reranked = [t for t in summary["trials"] if t["rerank_of"] is not None]
    standings = summary["rerank"]
    assert {t["rerank_of"] for t in reranked} == {s["trial"] for s in standings}
    by_number = {t["number"]: t for t in summary["trials"]}
    seeds = {n: read_json(result.run.root / "trials" / str(n) / "params.json")["seed"]
             for n in by_number}  # fmt: skip
    for trial in reranked:
        original = by_number[trial["rerank_of"]]
        assert trial["params"] == original["params"]
        assert seeds[trial["number"]] != seeds[original["number"]]
    assert all(len(s["values"]) == 3 for s in standings)
    means = [s["mean"] for s in standings]
    assert means == sorted(means) and summary["best"]["trial"] == standings[0]["trial"]
    again = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs", resume="latest"))
    assert again.summary["counts"]["complete"] == 12  # planned once, read back on resume


# --- several objectives -----------------------------------------------------------------------


def pareto_spec(tmp_path: Path, strategy: str = "evolution", **objective) -> Path:
    path = spec_file(
        tmp_path,
        {
            "strategy": strategy,
            "trials": 10,
            "population": 4,
            "workers": 1,
            "space": {
                "train.lr": {"low": 3e-3, "high": 3e-2, "log": True},
                "model.hidden": {"choices": [[2], [4], [8], [16], [32]]},
            },
        },
        name=f"pareto-{strategy}",
    )
    raw = yaml.safe_load(path.read_text())
    raw["objective"] = {"metrics": ["dev_error", "n_params"], **objective}
    path.write_text(yaml.safe_dump(raw))
    return path


def mlp_size(hidden: list[int], inputs: int = 4, outputs: int = 3) -> int:
    widths = [inputs, *hidden, outputs]
    return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))


def dominated(a: list[float], others: list[list[float]]) -> bool:
    return any(all(o <= v for o, v in zip(b, a, strict=True)) and b != a for b in others)


@pytest.mark.parametrize("strategy", ["evolution", "tpe"])
def test_a_search_over_two_objectives_finds_the_front_and_scores_the_pick(tmp_path, strategy):
    spec = pareto_spec(tmp_path, strategy, pick={"max": {"n_params": 40}})
    result = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    summary = result.summary
    complete = [t for t in summary["trials"] if t["state"] == "complete"]
    assert len(complete) == 10
    for t in complete:  # the size is measured, not guessed
        assert t["metrics"]["n_params"] == mlp_size(t["params"]["model.hidden"])
    points = {t["number"]: [t["metrics"]["dev_error"], t["metrics"]["n_params"]] for t in complete}
    on_front = {entry["trial"] for entry in summary["front"]}
    assert on_front == {n for n, p in points.items() if not dominated(p, list(points.values()))}
    # the pick: the lowest dev error among trials of at most 40 parameters, scored on test
    small = [n for n, p in points.items() if p[1] <= 40]
    best = summary["best"]
    assert summary["pick"]["trial"] == best["trial"]
    assert points[best["trial"]][0] == min(points[n][0] for n in small)
    # ... which is not simply the lowest dev error of all (the search has bigger, better ones)
    assert min(p[0] for p in points.values()) < points[best["trial"]][0]
    assert best["values"] == points[best["trial"]] and "test_error" in best["metrics"]
    assert summary["diagnosis"] is not None
    # the study holds both values of every trial
    assert all(len(t.values) == 2 for t in study_trials(result.run.root) if t.values)


def test_the_report_of_two_objectives_draws_and_lists_the_front(tmp_path):
    spec = pareto_spec(tmp_path)
    run = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).run
    shown = _cli("report", str(run.root), "--format", "markdown")
    out, err = shown.communicate(timeout=120)
    assert shown.returncode == 0, err
    text = (run.root / "report" / "report.md").read_text()
    assert "## Pareto front" in text and "| picked |" in text
    assert "minimize dev_error, minimize n_params (Pareto front; pick: knee)" in text
    html = _cli("report", str(run.root), "--format", "html")
    assert html.wait(timeout=300) == 0
    assert (run.root / "report" / "pareto_front.png").stat().st_size > 10_000
    assert "alt='pareto_front'" in (run.root / "report" / "report.html").read_text()


def test_a_two_objective_study_resumes_and_extends(tmp_path):
    spec = pareto_spec(tmp_path)
    first = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs", trials=4))
    again = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs", resume="latest", trials=7))
    assert again.run.root == first.run.root
    assert again.summary["counts"]["complete"] == 7
    values = [t.values for t in study_trials(again.run.root)]
    assert len(values) == 7 and all(len(v) == 2 for v in values)
    assert {e["trial"] for e in first.summary["front"]} <= set(range(7))
    assert again.summary["pick"]["trial"] in {e["trial"] for e in again.summary["front"]}


def test_a_constraint_keeps_the_best_trial_within_it(tmp_path):
    spec = pareto_spec(tmp_path, "tpe")
    raw = yaml.safe_load(spec.read_text())
    raw["objective"] = {"metric": "dev_error", "constraints": ["n_params <= 60"]}
    spec.write_text(yaml.safe_dump(raw))
    summary = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).summary
    assert summary["objective"]["constraints"] == ["n_params <= 60"]
    assert summary["best"]["metrics"]["n_params"] <= 60
    feasible = [
        t["value"]
        for t in summary["trials"]
        if t["value"] is not None and t["metrics"]["n_params"] <= 60
    ]
    assert summary["best"]["value"] == min(feasible)


def test_train_seconds_trains_each_trial_alone(tmp_path):
    spec = pareto_spec(tmp_path, "random")
    raw = yaml.safe_load(spec.read_text())
    raw["objective"] = {"metrics": ["dev_error", "train_seconds", "inference_ms"]}
    raw["search"]["workers"] = 1
    spec.write_text(yaml.safe_dump(raw))
    summary = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).summary
    complete = [t for t in summary["trials"] if t["state"] == "complete"]
    assert {t["stack"] for t in complete} == {1}  # random would stack them otherwise
    for t in complete:
        assert 0 < t["metrics"]["train_seconds"] <= t["seconds"] + 1e-6
        assert t["metrics"]["inference_ms"] > 0
    assert len(summary["front"][0]["values"]) == 3


def test_a_database_resume_continues_its_own_study_even_without_a_summary(tmp_path):
    # a run stopped before its first summary (the database went away early) still resumes
    # the study it started, never a new one named after its folder
    spec = lr_search(tmp_path, trials=2)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    runs = tmp_path / "runs"
    first = run_spec(spec, RunOptions(runs_dir=runs, storage=url, study="mine"))
    first.run.summary.unlink()
    again = run_spec(spec, RunOptions(runs_dir=runs, resume=str(first.run.root), trials=3))
    assert again.run.root == first.run.root and again.summary["study"] == "mine"
    assert optuna.get_all_study_names(url) == ["mine"]
    assert len(optuna.load_study(study_name="mine", storage=url).trials) == 3
    elsewhere = f"sqlite:///{tmp_path / 'other.db'}"
    with pytest.raises(InputError, match="study 'mine' of .* is not in"):
        run_spec(spec, RunOptions(runs_dir=runs, storage=elsewhere, resume="latest"))
    with pytest.raises(InputError, match="--study: .* ran study 'mine', not 'theirs'"):
        run_spec(spec, RunOptions(runs_dir=runs, study="theirs", resume="latest"))


def test_a_search_that_never_meets_its_constraints_says_so(tmp_path):
    spec = pareto_spec(tmp_path, "random")
    raw = yaml.safe_load(spec.read_text())
    raw["objective"] = {"metric": "dev_error", "constraints": ["n_params <= 5"]}
    raw["search"]["trials"] = 4
    spec.write_text(yaml.safe_dump(raw))
    runs = tmp_path / "runs"
    ran = _cli("run", str(spec), "--runs-dir", str(runs), "-q")
    out, err = ran.communicate(timeout=300)
    assert ran.returncode == 0, err
    assert "warning: no trial met the constraints (n_params <= 5)" in err
    run = next(runs.iterdir())
    summary = read_json(run / "summary.json")
    assert summary["constraints"] == {
        "bounds": ["n_params <= 5"],
        "feasible": 0,
        "best_within": False,
    }
    # the least outside them: the smallest model
    sizes = [t["metrics"]["n_params"] for t in summary["trials"] if t["state"] == "complete"]
    assert summary["best"]["metrics"]["n_params"] == min(sizes)
    shown = _cli("report", str(run), "--format", "markdown")
    assert shown.wait(timeout=120) == 0
    assert "no trial met the constraints" in (run / "report" / "report.md").read_text()
