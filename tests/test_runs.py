"""The run folder: paths that never create, names that never collide, atomic files."""

import os
from datetime import datetime

import pytest

from hpsearch.errors import InputError
from hpsearch.runs import (
    RunFolder,
    append_jsonl,
    create_run,
    find_run,
    latest_run,
    list_runs,
    read_json,
    read_jsonl,
    write_bytes,
    write_json,
)

NOW = datetime(2026, 11, 26, 10, 15, 0)


def test_reading_paths_creates_nothing(tmp_path):
    run = RunFolder(tmp_path / "r")
    paths = [run.spec, run.env, run.split, run.study_log, run.summary, run.rounds]
    paths += [run.report_dir, run.ask_lock, run.stop_file, run.trial(3).model]
    assert len(set(paths)) == len(paths)
    assert not run.root.exists()
    assert run.trial_numbers() == [] and not run.stop_requested()


def test_a_taken_name_gets_a_suffix(tmp_path):
    first = create_run(tmp_path, "demo", NOW)
    second = create_run(tmp_path, "demo", NOW)
    assert first.name == "demo-20261126-101500"
    assert second.name == "demo-20261126-101500-2"
    assert first.root.is_dir() and second.root.is_dir()


def test_a_runs_dir_that_cannot_be_made_is_an_input_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot create the runs directory"):
        create_run(blocker / "runs", "demo", NOW)


def _run_with_spec(tmp_path, name, mtime):
    run = create_run(tmp_path, name, NOW)
    run.spec.write_text("name: x\n")
    os.utime(run.spec, (mtime, mtime))
    return run


def test_runs_are_listed_oldest_first_and_found_by_path_name_or_latest(tmp_path):
    old = _run_with_spec(tmp_path, "old", 1_000_000)
    new = _run_with_spec(tmp_path, "new", 2_000_000)
    (tmp_path / "not-a-run").mkdir()  # no spec.yaml: not listed
    assert [r.name for r in list_runs(tmp_path)] == [old.name, new.name]
    assert latest_run(tmp_path) == new
    assert find_run(tmp_path, "latest") == new
    assert find_run(tmp_path, old.name) == old
    assert find_run(tmp_path / "elsewhere", str(old.root)) == old


def test_find_run_says_where_it_looked(tmp_path):
    with pytest.raises(InputError, match="no run folder under"):
        find_run(tmp_path, "latest")
    with pytest.raises(InputError, match=r"no run folder 'nope' \(looked in"):
        find_run(tmp_path, "nope")


def test_trial_numbers_are_sorted_numerically(tmp_path):
    run = RunFolder(tmp_path)
    for number in (10, 2, 1):
        run.trial(number).root.mkdir(parents=True)
    (run.trials_dir / "notes").mkdir()
    assert run.trial_numbers() == [1, 2, 10]


def test_stop_file(tmp_path):
    run = RunFolder(tmp_path)
    run.request_stop()
    assert run.stop_requested()
    run.clear_stop()
    run.clear_stop()  # twice is fine
    assert not run.stop_requested()


def test_write_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "summary.json"
    write_json(path, {"a": 1})
    assert read_json(path) == {"a": 1}

    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        write_json(path, {"a": 2})
    assert read_json(path) == {"a": 1}  # the old file stands
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]  # no temp left


def test_json_lines_round_trip_and_skip_blank_lines(tmp_path):
    import numpy as np

    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(path) == []
    append_jsonl(path, {"epoch": 1, "loss": np.float32(0.5)})
    with path.open("a") as handle:
        handle.write("\n")
    append_jsonl(path, {"epoch": 2, "where": tmp_path})
    assert read_jsonl(path) == [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "where": str(tmp_path)}]


def test_atomic_writes_get_the_mode_of_any_other_file(tmp_path):
    """mkstemp makes its file private (0600); a run folder's JSON and weights are shared like
    the rest of it (0666 less the umask)."""
    write_json(tmp_path / "summary.json", {"a": 1})
    write_bytes(tmp_path / "model.pt", b"weights")
    (tmp_path / "plain.txt").write_text("x")
    plain = (tmp_path / "plain.txt").stat().st_mode & 0o777
    for name in ("summary.json", "model.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == plain
