import base64
import json
from html.parser import HTMLParser

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from hpsearch.cli import app
from hpsearch.engine import RunOptions, run_spec
from hpsearch.errors import InputError
from hpsearch.report import (
    edge_warnings,
    load_report,
    render_console,
    render_markdown,
    resolve_run,
    runs_table,
    wilson_interval,
    write_report,
)
from tests.conftest import make_spec, write_mixed_groups

SEARCH = {
    "strategy": "random",
    "trials": 6,
    "workers": 1,
    "space": {
        "train.lr": {"low": 1e-3, "high": 1e3, "log": True},
        "model.dropout": {"low": 0.0, "high": 0.3},
        "train.batch_size": {"choices": [16, 32]},
    },
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real small search on iris; some lrs are so large that trials diverge."""
    tmp = tmp_path_factory.mktemp("report")
    spec = {
        "name": "rep",
        "device": "cpu",
        "data": {"source": "sklearn:iris"},
        "model": {"hidden": [8], "init": "default"},
        "train": {"epochs": 8, "optimizer": "momentum"},
        "human_level_error": 0.02,
        "search": SEARCH,
    }
    path = tmp / "rep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return run_spec(path, RunOptions(runs_dir=tmp / "runs")).run


def text_of(report) -> str:
    console = Console(record=True, width=140)
    render_console(report, console)
    return console.export_text()


def test_console_report_has_every_section(run):
    text = text_of(load_report(run))
    for expected in ("strategy: random", "top ", "best trial", "diagnosis", "Variance", "dev err"):
        assert expected in text


def test_ranking_follows_the_objective(run):
    report = load_report(run)
    values = [t["value"] for t in report.ranked]
    assert values == sorted(values)
    assert report.ranked[0]["number"] == report.summary["best"]["trial"]


def test_diverged_trials_are_warned_about(run):
    summary = json.loads(run.summary.read_text())
    diverged = [t for t in summary["trials"] if t["reason"] == "diverged"]
    warnings = load_report(run).warnings
    assert bool(diverged) == any("diverged" in w for w in warnings)


def test_edge_of_range_warnings():
    spec = make_spec(search=SEARCH)
    low = edge_warnings(spec, {"params": {"train.lr": 1.2e-3, "model.dropout": 0.15}})
    assert low == [
        "train.lr: the best value 0.0012 is at the low edge of [0.001, 1000]; "
        "widen the range below 0.001"
    ]
    high = edge_warnings(spec, {"params": {"train.lr": 1.0, "model.dropout": 0.299}})
    assert len(high) == 1 and "high edge" in high[0] and "model.dropout" in high[0]
    # the middle of a log range is judged on the log axis: 1.0 is mid-way in [1e-3, 1e3]
    assert edge_warnings(spec, {"params": {"train.lr": 1.0, "model.dropout": 0.1}}) == []


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    low, high = wilson_interval(0.05, 200)
    ci = binomtest(10, 200).proportion_ci(method="wilson")
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-5)
    assert wilson_interval(0.0, 50)[0] == 0.0


def test_small_dev_set_warning(run):
    report = load_report(run)
    assert report.dev_interval is not None  # iris: 30 dev examples, a wide interval
    low, high = report.dev_interval
    assert low <= report.summary["best"]["metrics"]["dev_error"] <= high


def test_markdown_has_the_trial_table(run):
    markdown = render_markdown(load_report(run))
    header = next(line for line in markdown.splitlines() if line.startswith("| # | trial |"))
    assert {"lr", "dropout", "batch_size", "train err", "dev err"} <= {
        cell.strip() for cell in header.split("|")
    }
    assert "## Diagnosis" in markdown


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs["src"])
        for key in ("href", "src"):
            if attrs.get(key, "").startswith("http"):
                self.links.append(attrs[key])


def test_html_is_self_contained_with_every_plot(run):
    path = write_report(run, "html")
    parser = Images()
    parser.feed(path.read_text())
    assert parser.links == []
    assert len(parser.sources) >= 5
    for source in parser.sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    names = {p.name for p in run.report_dir.glob("*.png")}
    assert {
        "best_so_far.png",
        "learning_curves.png",
        "param_train_lr.png",
        "parallel_coordinates.png",
    } <= names


def test_cli_report_formats(run):
    runner = CliRunner()
    runs_dir = str(run.root.parent)
    table = runner.invoke(app, ["report", "--runs-dir", runs_dir])  # the newest run
    assert table.exit_code == 0, table.output
    assert "diagnosis" in table.stdout
    as_json = runner.invoke(app, ["report", str(run.root), "--format", "json"])
    assert json.loads(as_json.stdout)["name"] == "rep"
    markdown = runner.invoke(app, ["report", str(run.root), "--format", "markdown"])
    assert markdown.stdout.startswith("# hpsearch report: rep")
    listing = runner.invoke(app, ["runs", "--runs-dir", runs_dir])
    assert run.name[:20] in listing.stdout


def test_runs_table_survives_a_broken_run(run, tmp_path):
    broken = tmp_path / "broken-20260101-000000"
    broken.mkdir()
    (broken / "spec.yaml").write_text("name: broken\n")
    (broken / "summary.json").write_text("{not json")
    console = Console(record=True, width=140)
    console.print(runs_table(tmp_path))
    assert "unknown" in console.export_text()


def test_resolve_run_errors(tmp_path):
    with pytest.raises(InputError, match="no run folders"):
        resolve_run(None, tmp_path)
    with pytest.raises(InputError, match="no run folder 'nope'"):
        resolve_run("nope", tmp_path)
    result = CliRunner().invoke(app, ["report", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2


def test_mismatch_block(tmp_path):
    run = run_spec(write_mixed_groups(tmp_path), RunOptions(runs_dir=tmp_path / "runs")).run
    text = text_of(load_report(run))
    assert "— data mismatch" in text and "Train error by group" in text
    assert "dev[easy]" in text and "dev[hard]" in text
