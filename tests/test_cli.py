import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from hpsearch.cli import app
from tests.conftest import CONFIGS, ROOT
from tests.test_spec import BAD_SPEC_TEXTS

runner = CliRunner()

TINY = """\
name: tiny
device: cpu
data: {source: sklearn:iris}
model: {hidden: [8]}
train: {epochs: 5, lr: 0.01}
"""


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_run_writes_the_run_folder(tmp_path, write_spec):
    spec = write_spec(TINY)
    result = invoke("run", spec, "--runs-dir", tmp_path / "runs", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    run = tmp_path / "runs" / summary["run"].split("/")[-1]
    assert run.name.startswith("tiny-")
    for name in ("spec.yaml", "env.json", "split.json", "summary.json"):
        assert (run / name).is_file(), name
    trial = run / "trials" / "0"
    for name in ("params.json", "metrics.jsonl", "result.json", "model.pt"):
        assert (trial / name).is_file(), name
    epochs = (trial / "metrics.jsonl").read_text().splitlines()
    assert len(epochs) == json.loads((trial / "result.json").read_text())["epochs_run"]
    assert summary["counts"] == {"complete": 1, "pruned": 0, "failed": 0}
    assert 0 <= summary["best"]["metrics"]["test_error"] <= 1
    assert summary["diagnosis"]["variance"] is not None


def test_plain_progress_lines_when_not_a_tty(tmp_path, write_spec):
    result = invoke("run", write_spec(TINY), "--runs-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert "trial 0 epoch 1/5" in result.stderr
    assert "run folder:" in result.stderr


def test_validate_reports_the_data(write_spec):
    result = invoke("validate", write_spec(TINY))
    assert result.exit_code == 0, result.output
    assert "multiclass" in result.stdout


def test_schema_is_json():
    result = invoke("schema")
    assert result.exit_code == 0
    assert "properties" in json.loads(result.stdout)


BAD_SPECS = {
    "unknown-key": (TINY + "trian: {}\n", "did you mean 'train'"),
    "wrong-type": (TINY.replace("epochs: 5", "epochs: five"), "train.epochs"),
    "missing-data-file": (TINY.replace("sklearn:iris", "missing.csv"), "missing.csv"),
    "missing-target": ("name: t\ndata: {source: d.csv, target: nope}\n", "nope"),
    "loss-task-mismatch": (
        "name: t\ndata: {source: sklearn:diabetes}\ntrain: {loss: cross_entropy}\n",
        "train.loss",
    ),
    "bad-metric-for-task": (
        "name: t\ndata: {source: sklearn:diabetes}\nobjective: {metric: dev_accuracy}\n",
        "objective.metric",
    ),
    "duplicate-keys": ("name: a\nname: b\ndata: {source: sklearn:iris}\n", "duplicate key"),
    "python-tag": ("name: !!python/object/apply:os.system [echo]\n", "not allowed"),
    "cuda-without-gpu": (TINY.replace("device: cpu", "device: cuda:3"), "device"),
}


CSV = "a,b,color,y\n1,2,red,0\n3,,blue,1\n5,6,red,0\n7,8,blue,1\n9,1,red,0\n2,3,blue,1\n"
CSV_SPEC = "name: t\ndata: {source: d.csv, target: y%s}\ntrain: {epochs: 2}\n"
BAD_SPECS.update(
    {
        "missing-values": (CSV_SPEC % "", "'b'"),
        "unknown-drop": (CSV_SPEC % ", drop: [zz]", "data.drop"),
        "unknown-group": (CSV_SPEC % ", group: zz", "data.group"),
        "single-class": (CSV_SPEC.replace("target: y", "target: one") % "", "one"),
        "split-empty": (
            CSV_SPEC % ", impute: mean, split: {train: 0.9, dev: 0.05, test: 0.05}",
            "data.split",
        ),
        "group-weights-without-group": (
            CSV_SPEC % ", impute: mean, weights: {group: {red: 2}}",
            "data.group",
        ),
        "balanced-weights-regression": (
            "name: t\ndata: {source: sklearn:diabetes, weights: balanced}\n",
            "balanced",
        ),
        "bad-search-path": (
            TINY + "search: {space: {train.nope: {low: 1, high: 2}}}\n",
            "train.nope",
        ),
        "grid-without-steps": (
            TINY + "search: {strategy: grid, space: {train.lr: {low: 0.1, high: 1}}}\n",
            "steps",
        ),
        "pick-unknown-metric": (
            TINY + "objective: {metrics: [dev_error, n_params], pick: {max: {size: 5}}}\n",
            "objective.pick: size <= 5",
        ),
        "objective-cost-typo": (
            TINY + "objective: {metrics: [dev_error, n_parms]}\n",
            "objective.metrics",
        ),
        "constraint-unknown-metric": (
            TINY + "objective: {constraints: ['dev_r2 >= 0.5']}\n",
            "objective.constraints: dev_r2 >= 0.5",
        ),
        "pruner-several-objectives": (
            TINY + "objective: {metrics: [dev_error, n_params]}\n"
            "search: {pruner: median, space: {train.lr: {choices: [0.1]}}}\n",
            "search.pruner: it ranks trials by one objective",
        ),
        "stacked-train-seconds": (
            TINY + "objective: {metrics: [dev_error, train_seconds]}\n"
            "search: {stack: 4, space: {train.lr: {choices: [0.1]}}}\n",
            "search.stack: train_seconds",
        ),
        "refine-with-tpe": (
            TINY + "search: {strategy: tpe, refine: {rounds: 1, keep: 0.5}, "
            "space: {train.lr: {choices: [0.1]}}}\n",
            "search.refine",
        ),
    }
)


CSV_FOR_CASE = {
    "single-class": "a,one\n" + "".join(f"{i},k\n" for i in range(10)),
    "empty-data-file": "",
    "all-missing-column": "a,b,y\n" + "".join(f"{i},,{i % 2}\n" for i in range(12)),
    "text-target-for-regression": "a,y\n" + "".join(f"{i},v{i}\n" for i in range(12)),
}
BAD_SPECS.update(
    {
        "empty-data-file": (CSV_SPEC % "", "d.csv"),
        "all-missing-column": (CSV_SPEC % ", impute: mean", "'b'"),
        "text-target-for-regression": (CSV_SPEC % ", task: regression", "regression"),
    }
)


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_input_exits_2_without_a_run_folder(tmp_path, write_spec, case):
    text, expected = BAD_SPECS[case]
    if case == "cuda-without-gpu":
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA present")
    (tmp_path / "d.csv").write_text(CSV_FOR_CASE.get(case, CSV))
    runs = tmp_path / "runs"
    result = invoke("run", write_spec(text), "--runs-dir", runs)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert "Traceback" not in result.output
    assert not runs.exists() or not any(runs.iterdir())


def test_same_spec_same_metrics_twice(tmp_path, write_spec):
    spec = write_spec(TINY)
    epochs = []
    for runs in ("a", "b"):
        result = invoke("run", spec, "--runs-dir", tmp_path / runs, "--quiet")
        assert result.exit_code == 0, result.output
        (trial,) = (tmp_path / runs).glob("*/trials/0/metrics.jsonl")
        lines = [json.loads(line) for line in trial.read_text().splitlines()]
        epochs.append([{k: v for k, v in line.items() if k != "seconds"} for line in lines])
    assert epochs[0] == epochs[1]


def test_missing_spec_file_exits_2(tmp_path):
    result = invoke("run", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert "nope.yaml" in result.stderr


def test_unknown_option_exits_2(write_spec):
    result = invoke("run", write_spec(TINY), "--no-such-option")
    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--train-error", "3.5%", "--dev-error", "7.8%", "--human-error", "0.7%"],
            '"focus": "bias"',
        ),
        (["--train-error", "0.01", "--dev-error", "0.05"], '"focus": "variance"'),
    ],
)
def test_diagnose_json(args, expected):
    result = invoke("diagnose", *args, "--format", "json")
    assert result.exit_code == 0, result.output
    assert expected in result.stdout


def test_diagnose_bad_number_exits_2():
    result = invoke("diagnose", "--train-error", "lots", "--dev-error", "0.1")
    assert result.exit_code == 2
    assert "--train-error" in result.stderr


def test_example_configs_validate(tmp_path):
    shutil.copytree(CONFIGS / "data", tmp_path / "data", dirs_exist_ok=True)
    runs = tmp_path / "runs"
    # the transfer example starts from the model of its first step
    shutil.copy(CONFIGS / "transfer-source.yaml", tmp_path / "source.yaml")
    assert invoke("run", tmp_path / "source.yaml", "--runs-dir", runs, "-q").exit_code == 0
    for path in sorted(CONFIGS.glob("*.yaml")):
        copy = tmp_path / path.name
        shutil.copy(path, copy)
        result = invoke("validate", copy, "--runs-dir", runs)
        assert result.exit_code == 0, f"{path.name}: {result.output}"


def test_validate_names_a_missing_transfer_source(tmp_path):
    shutil.copytree(CONFIGS / "data", tmp_path / "data")
    shutil.copy(CONFIGS / "transfer-finetune.yaml", tmp_path / "finetune.yaml")
    result = invoke("validate", tmp_path / "finetune.yaml", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert "model.init_from: no run folder 'digits-thin'" in result.output


@pytest.mark.parametrize(
    ("gate", "code"),
    [
        (["--fail-under", "dev_accuracy=0.0"], 0),
        (["--fail-under", "dev_accuracy=1.01"], 1),
        (["--fail-over", "dev_error=-0.1"], 1),
        (["--fail-over", "test_error=100%"], 0),
    ],
)
def test_gates(tmp_path, write_spec, gate, code):
    result = invoke("run", write_spec(TINY), "--runs-dir", tmp_path, "--quiet", "--json", *gate)
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout)["best"] is not None  # everything is written either way
    if code:
        assert "gate failed" in result.stderr


@pytest.mark.parametrize("gate", ["dev_accuracy", "dev_accuracy=high", "holdout_error=0.1"])
def test_malformed_gate_exits_2_before_running(tmp_path, write_spec, gate):
    result = invoke("run", write_spec(TINY), "--runs-dir", tmp_path / "runs", "--fail-under", gate)
    assert result.exit_code == 2
    assert "--fail-under" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("text", "expected"), BAD_SPEC_TEXTS)
def test_every_bad_spec_through_the_cli(tmp_path, write_spec, text, expected):
    """The spec catalogue again, end to end: exit 2, the key in one message, no traceback,
    no run folder."""
    runs = tmp_path / "runs"
    result = invoke("run", write_spec(text), "--runs-dir", runs)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.output
    assert not runs.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--resume", "no-such-run"], "--resume"),
        (["--storage", "postgresql://u:secret@127.0.0.1:1/db"], "storage"),
        (["--storage", "sqlite:////no/such/dir/x.db"], "cannot connect"),
        (["--trials", "0"], "search.trials"),
        (["--mode", "zoo"], "--mode"),
        (["--study", "s"], "--study"),
    ],
)
def test_bad_arguments_exit_2(tmp_path, write_spec, args, expected):
    runs = tmp_path / "runs"
    search = TINY + "search: {trials: 2, space: {train.lr: {low: 0.001, high: 0.1}}}\n"
    result = invoke("run", write_spec(search), "--runs-dir", runs, *args)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert "secret" not in result.output
    assert not runs.exists() or not any(runs.iterdir())


def test_report_and_runs_commands(tmp_path):
    from tests.conftest import write_mixed_groups

    spec = write_mixed_groups(tmp_path)  # one distribution is much noisier than the other
    runs = str(tmp_path / "runs")
    assert invoke("run", spec, "--runs-dir", runs, "--quiet").exit_code == 0
    table = invoke("report", "--runs-dir", runs)  # the newest run
    assert table.exit_code == 0, table.output
    assert "no data mismatch" in table.stdout.lower()
    assert "dev[hard]" in table.stdout and "dev[easy]" in table.stdout
    as_json = invoke("report", "--runs-dir", runs, "--format", "json")
    diagnosis = json.loads(as_json.stdout)["diagnosis"]
    # the noisier group is in every split in the same proportion: harder, not mismatched
    assert diagnosis["mismatch"] is False
    assert diagnosis["groups"]["hard"]["verdict"] == "harder"
    assert "harder" in table.stdout
    markdown = invoke("report", "--runs-dir", runs, "--format", "markdown")
    assert markdown.exit_code == 0 and "mixed" in markdown.stdout
    html = invoke("report", "--runs-dir", runs, "--format", "html")
    assert html.exit_code == 0 and "report.html" in html.stderr
    listing = invoke("runs", "--runs-dir", runs)
    assert "mixed-" in listing.stdout


def test_report_without_runs_exits_2(tmp_path):
    result = invoke("report", "--runs-dir", tmp_path)
    assert result.exit_code == 2
    assert "no run folders" in result.stderr
    assert invoke("report", "--format", "pdf", "--runs-dir", tmp_path).exit_code == 2


def test_unreadable_data_file_exits_2(tmp_path, write_spec, monkeypatch):
    """Permissions cannot block root (CI's user), so the refusal is simulated."""
    import errno
    from pathlib import Path

    (tmp_path / "d.csv").write_text(CSV)
    real = Path.read_bytes

    def refuse(self):
        if self.name == "d.csv":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    runs = tmp_path / "runs"
    result = invoke("run", write_spec(CSV_SPEC % ", impute: mean"), "--runs-dir", runs)
    assert result.exit_code == 2
    assert "cannot read the data file: Permission denied" in result.stderr
    assert not runs.exists()


def test_runs_without_any_run_says_how_to_start_one(tmp_path):
    for runs_dir in (tmp_path / "missing", tmp_path):
        result = invoke("runs", "--runs-dir", runs_dir)
        assert result.exit_code == 0
        assert result.stdout == ""
        assert f"no runs in {runs_dir}/ yet; start one with: hpsearch run SPEC" in result.stderr


def test_version_and_short_help():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"hpsearch {version('hpsearch')}\n"
    for command in ([], ["run"], ["report"], ["diagnose"]):
        short, long = invoke(*command, "-h"), invoke(*command, "--help")
        assert short.exit_code == 0 and short.stdout == long.stdout
        assert "-h, --help" in short.stdout


def test_option_choices_are_the_specs_own():
    """The CLI lists --mode and --strategy choices without importing the spec; they must stay
    the spec's."""
    from typing import get_args

    from hpsearch.cli import Mode, Strategy
    from hpsearch.spec import SearchSpec

    for choice, field in ((Mode, "mode"), (Strategy, "strategy")):
        spec_choices = get_args(SearchSpec.model_fields[field].annotation)
        assert [c.value for c in choice] == list(spec_choices)


HELP_SNAPSHOTS = ROOT / "tests" / "snapshots" / "help"


def _help_pages() -> dict[str, list[str]]:
    commands = sorted(c.name or c.callback.__name__ for c in app.registered_commands)
    return {"hpsearch": [], **{f"hpsearch-{name}": [name] for name in commands}}


@pytest.mark.parametrize("page", list(_help_pages()))
def test_help_matches_its_snapshot(page, monkeypatch):
    """Every command's --help, as a user reads it at 100 columns. A change to the CLI shows
    here as a diff; after checking it reads well, refresh the snapshots with
    HPSEARCH_UPDATE_SNAPSHOTS=1 pytest tests/test_cli.py -k help."""
    monkeypatch.setenv("COLUMNS", "100")
    result = runner.invoke(app, [*_help_pages()[page], "--help"], prog_name="hpsearch")
    assert result.exit_code == 0, result.output
    text = result.stdout
    # what the help must never say again: flags that look like they take values, options
    # whose values are a bare type instead of what to write
    options = [line for line in text.splitlines() if line.lstrip().startswith("-")]
    assert "<bool>" not in text
    for wrong in ("<str>", "<list"):
        assert not [line for line in options if wrong in line], f"{page}: {wrong}"
    path = HELP_SNAPSHOTS / f"{page}.txt"
    if os.environ.get("HPSEARCH_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no snapshot {path}; run with HPSEARCH_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(encoding="utf-8")


def test_init_writes_a_spec_that_validates_and_runs(tmp_path):
    spec = tmp_path / "penguins.yaml"
    result = invoke("init", CONFIGS / "data" / "penguins.csv", "--target", "species", "-o", spec)
    assert result.exit_code == 0, result.output
    assert f"wrote {spec}" in result.stdout
    assert invoke("validate", spec).exit_code == 0
    ran = invoke("run", spec, "--trials", "2", "--runs-dir", tmp_path / "runs", "-q", "--json")
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout)["counts"]["complete"] == 2
    again = invoke("init", CONFIGS / "data" / "penguins.csv", "-o", spec)
    assert again.exit_code == 2 and "--force" in again.stderr
