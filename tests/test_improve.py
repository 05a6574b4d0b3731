"""hpsearch.improve: the planner on hand-built diagnoses (milliseconds, no torch), the chain loop
with a scripted stand-in for a run, and `hpsearch improve` end to end on tiny searches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpsearch.diagnosis import Sample, diagnose
from hpsearch.errors import InputError
from hpsearch.improve import (
    AUGMENT,
    BIGGER,
    DROPOUT,
    EARLY,
    L2,
    L2_RANGE,
    LR_RANGE,
    OPTIMIZER,
    Best,
    Change,
    apply_changes,
    clearly_better,
    commented_yaml,
    compact,
    grow,
    improve,
    plan,
)
from hpsearch.runs import RunFolder, read_json, write_json

SIZES = {"train": 1000, "dev": 400, "test": 400}


def diagnosis(
    train: float,
    dev: float,
    human: float | None = 0.01,
    sizes: dict[str, int] | None = SIZES,
    groups: dict[str, Any] | None = None,
) -> dict[str, Any]:
    samples = {k: Sample(n) for k, n in sizes.items()} if sizes else None
    return diagnose(train, dev, human_level_error=human, samples=samples, groups=groups).to_dict()


HIGH_BIAS = diagnosis(0.20, 0.21)  # avoidable bias 19%, variance 1%
HIGH_VARIANCE = diagnosis(0.0, 0.10)
RIGHT_FIT = diagnosis(0.012, 0.015, sizes={"train": 20000, "dev": 20000, "test": 20000})


def spec(search: bool = True, **sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "tiny",
        "data": {"source": "sklearn:digits"},
        "model": {"hidden": [3], "dropout": 0.0},
        "train": {"optimizer": "adam", "lr": 0.01, "epochs": 40, "l2": 0.0},
    }
    if search:
        raw["search"] = {
            "trials": 4,
            "space": {"train.lr": {"low": 0.001, "high": 0.1, "log": True}},
        }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def best(d: dict[str, Any], params: dict[str, Any] | None = None, epochs_run: int = 12) -> Best:
    return Best(d, {"train.lr": 0.01, **(params or {})}, epochs_run)


def paths(p) -> list[str]:
    return [c.path for c in p.changes]


# --- bias -------------------------------------------------------------------------------------


def test_high_bias_grows_the_network_with_the_verdict_as_reason():
    p = plan(spec(), best(HIGH_BIAS))
    assert p.focus == "bias" and p.stop is None
    hidden = next(c for c in p.changes if c.path == "model.hidden")
    assert (hidden.old, hidden.new, hidden.remedy) == ([3], [32], BIGGER)
    # value and half the 95% interval, in points, then the remedy
    assert hidden.reason.startswith("avoidable bias 19.0% ± ")
    assert hidden.reason.endswith(": bigger network")


def test_growth_widens_then_deepens_then_gives_up():
    assert grow([3]) == [32]
    assert grow([64, 64]) == [256, 256]
    assert grow([512]) == [1024]
    assert grow([1024]) == [1024, 1024]
    assert grow([1024] * 4) is None


def test_a_searched_hidden_grows_every_choice():
    s = spec()
    s["search"]["space"]["model.hidden"] = {"choices": [[8], [16, 8]]}
    change = next(c for c in plan(s, best(HIGH_BIAS)).changes if c.remedy == BIGGER)
    assert change.path == "search.space[model.hidden]"
    assert change.new == {"choices": [[32], [64, 32]]}


def test_bias_is_fought_first_when_variance_is_high_too():
    both = diagnosis(0.20, 0.30)
    assert both["focus"] == "bias"
    assert plan(spec(), best(both)).focus == "bias"


def test_train_longer_only_when_the_best_trial_ran_every_epoch():
    assert "train.epochs" not in paths(plan(spec(), best(HIGH_BIAS, epochs_run=12)))
    longer = plan(spec(), best(HIGH_BIAS, epochs_run=40))
    change = next(c for c in longer.changes if c.path == "train.epochs")
    assert (change.old, change.new) == (40, 80)


def test_another_optimizer_once_and_only_off_adam():
    sgd = spec(train={"optimizer": "sgd"})
    change = next(c for c in plan(sgd, best(HIGH_BIAS)).changes if c.remedy == OPTIMIZER)
    assert (change.path, change.old, change.new) == ("train.optimizer", "sgd", "adam")
    assert OPTIMIZER not in [c.remedy for c in plan(spec(), best(HIGH_BIAS)).changes]
    assert OPTIMIZER not in [c.remedy for c in plan(sgd, best(HIGH_BIAS), {OPTIMIZER}).changes]


def test_lr_range_widens_at_its_edge_only():
    at_top = plan(spec(), best(HIGH_BIAS, {"train.lr": 0.099}))
    change = next(c for c in at_top.changes if c.remedy == LR_RANGE)
    assert change.new == {"low": 0.001, "high": 1.0, "log": True}
    at_bottom = plan(spec(), best(HIGH_BIAS, {"train.lr": 0.00105}))
    assert next(c for c in at_bottom.changes if c.remedy == LR_RANGE).new["low"] == 0.0001
    middle = plan(spec(), best(HIGH_BIAS, {"train.lr": 0.01}))
    assert LR_RANGE not in [c.remedy for c in middle.changes]


def test_a_search_without_lr_gets_a_range_once():
    s = spec()
    s["search"]["space"] = {"model.dropout": {"low": 0.0, "high": 0.2}}
    change = next(c for c in plan(s, best(HIGH_BIAS)).changes if c.remedy == LR_RANGE)
    assert change.path == "search.space[train.lr]" and change.old is None
    assert LR_RANGE not in [c.remedy for c in plan(s, best(HIGH_BIAS), {LR_RANGE}).changes]


def test_bias_left_with_the_biggest_network_is_beyond_a_spec():
    s = spec(model={"hidden": [1024] * 4})
    p = plan(s, best(HIGH_BIAS), {OPTIMIZER, LR_RANGE})
    assert not p.changes
    assert "a spec change cannot" in p.stop


# --- variance ---------------------------------------------------------------------------------


def test_variance_ladder_one_remedy_a_round_never_repeated():
    s = spec(train={"early_stopping": None})
    first = plan(s, best(HIGH_VARIANCE))
    assert first.focus == "variance"
    assert [(c.path, c.new) for c in first.changes] == [("search.space[train.l2]", L2_RANGE)]
    assert first.changes[0].reason.startswith("variance 10.0% ± ")
    second = plan(s, best(HIGH_VARIANCE), {L2})
    assert paths(second) == ["search.space[model.dropout]"]
    third = plan(s, best(HIGH_VARIANCE), {L2, DROPOUT})
    assert paths(third) == ["search.space[data.augment.noise]"]
    fourth = plan(s, best(HIGH_VARIANCE), {L2, DROPOUT, AUGMENT})
    on = plan(spec(), best(HIGH_VARIANCE), {L2, DROPOUT, AUGMENT})
    assert EARLY not in [c.remedy for c in on.changes]  # already on: nothing to add
    assert paths(fourth) == ["train.early_stopping"]
    assert fourth.changes[0].new == {"patience": 10, "min_delta": 0.0}


def test_augmentation_comes_after_l2_and_dropout():
    p = plan(spec(), best(HIGH_VARIANCE), {L2, DROPOUT})
    assert [(c.path, c.new, c.remedy) for c in p.changes] == [
        ("search.space[data.augment.noise]", {"low": 0.0, "high": 0.3}, AUGMENT)
    ]
    fixed = plan(spec(search=False), best(HIGH_VARIANCE), {L2, DROPOUT})
    assert [(c.path, c.new) for c in fixed.changes] == [("data.augment", {"noise": 0.1})]


def test_after_every_remedy_regularization_is_pushed_further_then_more_data():
    s = spec()
    s["search"]["space"]["train.l2"] = {"low": 1.0e-4, "high": 0.1, "log": True}
    s["search"]["space"]["model.dropout"] = {"low": 0.0, "high": 0.5}
    tried = {L2, DROPOUT, EARLY, AUGMENT}
    stronger = plan(s, best(HIGH_VARIANCE), tried)
    assert [(c.path, c.new["high"]) for c in stronger.changes] == [
        ("search.space[train.l2]", 1.0),
        ("search.space[model.dropout]", 0.7),
    ]
    done = plan(s, best(HIGH_VARIANCE), tried | {"stronger regularization"})
    assert not done.changes and "collect more training data" in done.stop


def test_without_a_search_remedies_are_fixed_values():
    p = plan(spec(search=False), best(HIGH_VARIANCE))
    assert [(c.path, c.old, c.new) for c in p.changes] == [("train.l2", 0.0, 0.01)]
    p = plan(spec(search=False), best(HIGH_VARIANCE), {L2})
    assert [(c.path, c.old, c.new) for c in p.changes] == [("model.dropout", 0.0, 0.2)]


# --- mismatch and the stop rules --------------------------------------------------------------


GROUPS = {
    "web": {"train_error": 0.02, "dev_error": 0.02, "n_train": 900, "n_dev": 200},
    "phone": {"train_error": 0.03, "dev_error": 0.30, "n_train": 20, "n_dev": 200},
}


def test_mismatch_strengthens_the_mismatched_group_then_escalates():
    d = diagnosis(0.02, 0.02, groups=GROUPS)
    assert d["mismatch"] is True and d["focus"] is None
    s = spec(data={"group": "source"})
    p = plan(s, best(d))
    assert p.focus == "mismatch"
    assert [(c.path, c.new) for c in p.changes] == [
        ("data.weights", {"group": {"web": 1, "phone": 2}})
    ]
    assert p.changes[0].reason == "data mismatch on 'phone': strengthen the groups that do worse"
    again = plan(apply_changes(s, p.changes), best(d))
    assert again.changes[0].new == {"group": {"web": 1, "phone": 4}}
    capped = spec(data={"group": "source", "weights": {"group": {"web": 1, "phone": 8}}})
    assert "collect more training data" in plan(capped, best(d)).stop


def test_a_right_fit_against_human_level_stops():
    p = plan(spec(), best(RIGHT_FIT))
    assert not p.changes and p.stop.startswith("the human-level error is reached")
    unknown = diagnosis(0.004, 0.006, human=None, sizes={"train": 20000, "dev": 20000})
    assert plan(spec(), best(unknown)).stop.startswith("right fit: ")


def test_cant_tell_says_more_data_would_tell():
    d = diagnosis(0.015, 0.03, sizes={"train": 100, "dev": 100, "test": 100})
    assert d["focus"] is None
    assert plan(spec(), best(d)).stop.startswith("can't tell what limits the model")


def test_clearly_better_needs_the_difference_interval_below_zero():
    old = {"diagnosis": diagnosis(0.1, 0.16, sizes={"train": 1000, "dev": 359})}
    much = {"diagnosis": diagnosis(0.0, 0.036, sizes={"train": 1000, "dev": 359})}
    little = {"diagnosis": diagnosis(0.0, 0.025, sizes={"train": 1000, "dev": 359})}
    assert clearly_better(much, old)[0] is True
    better, interval = clearly_better(little, much)
    assert better is False and interval[0] < 0 < interval[1]


# --- the written spec -------------------------------------------------------------------------


def test_commented_yaml_reads_back_and_comments_the_changed_lines():
    p = plan(spec(), best(HIGH_BIAS, epochs_run=40))
    new = compact(apply_changes(spec(), p.changes), p.changes)
    text = commented_yaml(new, p.changes, ["header line"])
    assert text.startswith("# header line\n")
    assert yaml.safe_load(text) == new
    hidden = next(line for line in text.splitlines() if line.strip().startswith("hidden:"))
    assert hidden.split("#")[0].strip() == "hidden: [32]"
    assert hidden.split("# ")[1].startswith("avoidable bias 19.0% ± ")
    epochs = next(line for line in text.splitlines() if line.strip().startswith("epochs:"))
    assert epochs.endswith(": train longer")


def test_compact_keeps_a_change_to_a_default_value():
    change = Change("train.early_stopping", None, {"patience": 10, "min_delta": 0.0}, EARLY, "x")
    new = compact(apply_changes(spec(train={"early_stopping": None}), [change]), [change])
    assert new["train"]["early_stopping"] == {"patience": 10, "min_delta": 0.0}
    assert "device" not in new  # defaults are left out


def test_space_entries_are_written_as_the_user_writes_them():
    change = Change("search.space[train.l2]", None, dict(L2_RANGE), L2, "variance 5%: L2")
    text = commented_yaml(compact(apply_changes(spec(), [change]), [change]), [change])
    assert "    train.l2: {low: 0.0001, high: 1.0, log: true}  # variance 5%: L2\n" in text


# --- the chain, with a scripted stand-in for runs ---------------------------------------------


def fake_run(runs_dir: Path, name: str, raw: dict[str, Any], train: float, dev: float) -> RunFolder:
    run = RunFolder(runs_dir / name)
    run.root.mkdir(parents=True)
    run.spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    d = diagnosis(train, dev, sizes={"train": 1000, "dev": 400})
    best = {"trial": 0, "params": {}, "metrics": {"train_error": train, "dev_error": dev}}
    trials = [{"number": 0, "epochs_run": 10}]
    write_json(run.summary, {"best": best, "diagnosis": d, "trials": trials})
    return run


class Script:
    """Each call runs the written spec as the next scripted (train, dev) errors."""

    def __init__(self, runs_dir: Path, errors: list[tuple[float, float]], prefix: str = "round"):
        self.runs_dir, self.errors, self.specs = runs_dir, list(errors), []
        self.prefix = prefix

    def __call__(self, path: Path) -> tuple[RunFolder, dict[str, Any]]:
        raw = yaml.safe_load(path.read_text())
        self.specs.append(path.read_text())
        train, dev = self.errors.pop(0)
        run = fake_run(self.runs_dir, f"{self.prefix}-{len(self.specs)}", raw, train, dev)
        return run, read_json(run.summary)


def test_chain_goes_on_while_dev_error_falls_clearly_and_keeps_the_better(tmp_path):
    start = fake_run(tmp_path, "start", spec(), 0.30, 0.32)
    script = Script(tmp_path, [(0.10, 0.12), (0.09, 0.115)])
    chain = improve(start, script, rounds=3, say=lambda line: None)
    assert [r.run for r in chain.rounds] == ["start", "round-1", "round-2"]
    assert chain.stop.startswith("the dev error stopped improving: round 2's 11.5% ± ")
    assert chain.result.run == "round-2"
    last = RunFolder(tmp_path / "round-2")
    record = read_json(last.improve)
    assert record["stop"] == chain.stop and record["result"] == "round-2"
    assert [r["round"] for r in record["rounds"]] == [0, 1, 2]
    first = record["rounds"][1]
    assert first["because"].startswith("avoidable bias") and first["changes"][0]["path"]
    assert first["dev_interval"][0] < first["dev_error"] < first["dev_interval"][1]
    assert last.improve_spec.read_text() == script.specs[1]
    # round 2 (still bias) grew the network further instead of repeating round 1's change
    assert yaml.safe_load(script.specs[0])["model"]["hidden"] == [32]
    assert yaml.safe_load(script.specs[1])["model"]["hidden"] == [128]


def test_chain_stops_at_until_and_at_the_round_budget(tmp_path):
    start = fake_run(tmp_path, "start", spec(), 0.30, 0.32)
    chain = improve(start, Script(tmp_path, [(0.1, 0.12)] * 3), until=0.15, say=lambda s: None)
    assert len(chain.rounds) == 2 and chain.stop == "the dev error 12.0% reached --until 15.0%"
    other = tmp_path / "other"
    start = fake_run(other, "start", spec(), 0.30, 0.32)
    chain = improve(start, Script(other, [(0.1, 0.12)]), rounds=1, say=lambda s: None)
    assert chain.stop.startswith("the round budget is spent (1 round)")


def test_chain_continues_from_improve_json_without_repeating_remedies(tmp_path):
    start = fake_run(tmp_path, "start", spec(), 0.0, 0.30)
    chain = improve(start, Script(tmp_path, [(0.0, 0.15)]), rounds=1, say=lambda s: None)
    assert chain.rounds[1].changes[0].remedy == L2
    again = Script(tmp_path, [(0.0, 0.05)], prefix="again")
    chain = improve(RunFolder(tmp_path / "round-1"), again, rounds=1, say=lambda s: None)
    assert [r.number for r in chain.rounds] == [0, 1, 2]
    assert chain.rounds[2].changes[0].remedy == DROPOUT


def test_a_round_that_completes_no_trial_ends_the_chain_as_failed(tmp_path):
    start = fake_run(tmp_path, "start", spec(), 0.30, 0.32)

    def no_trial(path: Path) -> tuple[RunFolder, dict[str, Any]]:
        run = RunFolder(tmp_path / "round-1")
        run.root.mkdir()
        write_json(run.summary, {"best": None, "diagnosis": None, "trials": []})
        return run, read_json(run.summary)

    chain = improve(start, no_trial, say=lambda s: None)
    assert chain.failed and chain.stop.startswith("round 1 completed no trial")
    assert chain.result.run == "start"


def test_the_report_shows_the_chain_only_when_there_is_one(tmp_path):
    from rich.console import Console

    from hpsearch.report import load_report, render_console, render_markdown
    from tests.runfactory import make_run, trial

    run = make_run(tmp_path, [trial(0, 0.1, train_error=0.05)])
    assert "Improve chain" not in render_markdown(load_report(run))
    change = Change("model.hidden", [3], [32], BIGGER, "avoidable bias 9.6% ± 1.8: bigger network")
    rounds = [
        {"round": 0, "run": "start", "dev_error": 0.16, "dev_interval": [0.13, 0.20]},
        {
            "round": 1,
            "run": run.name,
            "because": "avoidable bias 9.6% ± 1.8",
            "changes": [change.to_dict()],
            "dev_error": 0.036,
            "dev_interval": [0.02, 0.06],
        },
    ]
    write_json(run.improve, {"rounds": rounds, "stop": "round budget", "result": run.name})
    markdown = render_markdown(load_report(run))
    assert "## Improve chain" in markdown
    row = "| 1 (this run) | avoidable bias 9.6% ± 1.8 | model.hidden: [3] → [32] | 3.6% ± 2.0 |"
    assert row in markdown
    console = Console(record=True, width=200)
    render_console(load_report(run), console)
    text = console.export_text()
    assert "round 0: start: start — dev error 16.0% ± 3.5" in text
    assert "stopped: round budget" in text


def test_a_run_without_diagnosis_is_bad_input(tmp_path):
    run = RunFolder(tmp_path / "empty")
    run.root.mkdir()
    write_json(run.summary, {"best": None, "diagnosis": None, "trials": []})
    with pytest.raises(InputError, match="no diagnosis"):
        improve(run, Script(tmp_path, []), say=lambda s: None)


# --- end to end through the CLI ---------------------------------------------------------------


def invoke(*args: Any):
    from typer.testing import CliRunner

    from hpsearch.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


TINY_BIAS = """\
name: tiny-bias
seed: 0
device: cpu
data: {source: sklearn:digits}
model: {hidden: [2]}
train: {lr: 0.01, epochs: 8, batch_size: 64, early_stopping: {patience: 3}}
human_level_error: 0.01
search:
  trials: 2
  workers: 1
  space:
    train.lr: {low: 0.003, high: 0.03, log: true}
"""


def test_improve_grows_a_too_small_network_and_the_report_shows_the_chain(tmp_path):
    spec_path = tmp_path / "bias.yaml"
    spec_path.write_text(TINY_BIAS)
    runs = tmp_path / "runs"
    assert invoke("run", spec_path, "--runs-dir", runs, "-q").exit_code == 0
    result = invoke("improve", "latest", "--rounds", "1", "--trials", "2", "--runs-dir", runs, "-q")
    assert result.exit_code == 0, result.output
    assert "stopped: " in result.stdout and "result: " in result.stdout
    folders = sorted(runs.iterdir())
    last = RunFolder(folders[-1])
    record = json.loads(last.improve.read_text())
    first = record["rounds"][1]
    assert first["focus"] == "bias"
    assert {"path": "model.hidden", "old": [2], "new": [32]}.items() <= first["changes"][0].items()
    assert record["rounds"][1]["dev_error"] < record["rounds"][0]["dev_error"]
    assert "# avoidable bias" in last.improve_spec.read_text()
    report = invoke("report", last.root, "--format", "markdown")
    assert report.exit_code == 0, report.output
    assert "## Improve chain" in report.stdout
    assert "model.hidden: [2] → [32]" in report.stdout


TINY_VARIANCE = """\
name: tiny-variance
seed: 0
device: cpu
data: {source: sklearn:digits, split: {train: 0.1, dev: 0.45, test: 0.45}}
model: {hidden: [128]}
train: {lr: 0.01, epochs: 15, batch_size: 32, early_stopping: null}
human_level_error: 0.01
search:
  trials: 2
  workers: 1
  space:
    train.batch_size: {choices: [32, 64]}
"""


def test_improve_regularizes_an_overfit_network_with_l2_first(tmp_path):
    spec_path = tmp_path / "variance.yaml"
    spec_path.write_text(TINY_VARIANCE)
    runs = tmp_path / "runs"
    assert invoke("run", spec_path, "--runs-dir", runs, "-q").exit_code == 0
    result = invoke("improve", "latest", "--rounds", "1", "--runs-dir", runs, "-q")
    assert result.exit_code == 0, result.output
    last = RunFolder(sorted(runs.iterdir())[-1])
    first = json.loads(last.improve.read_text())["rounds"][1]
    assert first["focus"] == "variance"
    assert [c["path"] for c in first["changes"]] == ["search.space[train.l2]"]
    assert "train.l2: {low: 0.0001, high: 1.0, log: true}  # variance " in (
        last.improve_spec.read_text()
    )


def test_improve_of_a_missing_run_exits_2(tmp_path):
    result = invoke("improve", "nope", "--runs-dir", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--rounds", "0"], "--rounds: 0"),
        (["--until", "lots"], "--until"),
        (["--trials", "-1"], "--trials"),
    ],
)
def test_improve_bad_options_exit_2(tmp_path, option, said):
    start = fake_run(tmp_path, "start", spec(), 0.30, 0.32)
    result = invoke("improve", start.root, *option, "--runs-dir", tmp_path)
    assert result.exit_code == 2 and said in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["start"]  # nothing was run


def test_improve_of_a_run_without_diagnosis_exits_2(tmp_path):
    run = RunFolder(tmp_path / "empty-20260101-000000")
    run.root.mkdir()
    run.spec.write_text(TINY_BIAS)
    write_json(run.summary, {"objective": {}, "counts": {}, "trials": [], "best": None})
    result = invoke("improve", run.root, "--runs-dir", tmp_path)
    assert result.exit_code == 2 and "no diagnosis" in result.stderr
