"""hpsearch.plots: which plots a run gets, what their axes say, and one real search end to end."""

import math
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import yaml
from rich.console import Console

from hpsearch.engine import RunOptions, run_spec
from hpsearch.plots import (
    best_so_far_figure,
    importance_figure,
    parameter_figure,
    range_position,
    running_best,
    short_number,
    write_plots,
)
from hpsearch.report import load_report, render_console, write_report
from hpsearch.spec import ParamSpec
from tests.runfactory import MINIMIZE, SPACE, make_run, params, trial

PNG = b"\x89PNG\r\n\x1a\n"
SEARCH_PLOTS = {
    "best_so_far",
    "learning_curves",
    "param_train.lr",
    "param_model.dropout",
    "param_model.hidden",
    "parallel_coordinates",
}


def search_trials():
    return [
        trial(0, 0.20, params(lr=0.01)),
        trial(1, 0.10, params(lr=0.003, dropout=0.1)),
        trial(2, 0.15, params(lr=0.03, hidden=[32, 16])),
        trial(3, 0.12, params(lr=0.002, dropout=0.4)),
        trial(4, None, params(lr=0.9), state="failed", reason="diverged"),
    ]


def assert_pngs(paths):
    for path in paths:
        assert path.read_bytes()[:8] == PNG, path


def test_a_search_gets_every_plot_but_importance_without_a_journal(tmp_path):
    import matplotlib.pyplot as plt

    run = make_run(tmp_path, search_trials())
    plots = write_plots(run)
    assert set(plots) == SEARCH_PLOTS  # no study.log: no importance
    assert {p.name for p in run.report_dir.iterdir()} == {f"{n}.png" for n in SEARCH_PLOTS}
    assert_pngs(plots.values())
    assert plt.get_fignums() == []  # nothing left open in pyplot's registry


def test_one_model_gets_only_its_learning_curve(tmp_path):
    run = make_run(tmp_path, [trial(0, 0.1, {})], space=None)
    plots = write_plots(run)
    assert list(plots) == ["learning_curves"]
    assert_pngs(plots.values())


def test_a_damaged_journal_skips_importance(tmp_path):
    run = make_run(tmp_path, search_trials())
    run.study_log.write_text("this is not an optuna journal\n")
    assert importance_figure(run, run.name) is None  # write_plots goes on without it


def summary_of(trials, direction="minimize"):
    return {"objective": {**MINIMIZE, "direction": direction}, "trials": trials}


def test_parameter_plots_use_a_log_axis_for_log_ranges():
    summary = summary_of(search_trials())
    log = parameter_figure(summary, "train.lr", ParamSpec.model_validate(SPACE["train.lr"]))
    linear = parameter_figure(summary, "model.dropout", ParamSpec(low=0.0, high=0.5))
    assert log.axes[0].get_xscale() == "log" and "log scale" in log.axes[0].get_xlabel()
    assert linear.axes[0].get_xscale() == "linear"
    assert log.axes[0].get_ylabel() == "dev_error"


def test_choices_are_plotted_by_choice():
    summary = summary_of(search_trials())
    figure = parameter_figure(summary, "model.hidden", ParamSpec(choices=[[16], [32, 16]]))
    labels = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert labels == ["[16]", "[32, 16]"]
    only_one_choice = parameter_figure(summary, "model.hidden", ParamSpec(choices=[[16]]))
    assert len(only_one_choice.axes[0].get_xticklabels()) == 2  # the unlisted value shown too
    assert parameter_figure(summary, "train.l2", ParamSpec(low=0.0, high=1.0)) is None


def test_ordered_choices_are_plotted_smallest_first():
    trials = [
        trial(0, 0.20, params(hidden=[32])),
        trial(1, 0.10, params(hidden=[8])),
        trial(2, 0.15, params(hidden=[16])),
    ]
    summary = summary_of(trials)
    written = ParamSpec(choices=[[32], [8], [16]])
    ax = parameter_figure(summary, "model.hidden", written).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["[8]", "[16]", "[32]"]
    assert "smallest first" in ax.get_xlabel()
    unordered = ParamSpec(choices=[[32], [8], [16]], ordered=False)
    ax = parameter_figure(summary, "model.hidden", unordered).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["[32]", "[8]", "[16]"]
    assert [range_position(written, [w]) for w in (8, 16, 32)] == [0.0, 0.5, 1.0]
    assert [range_position(unordered, [w]) for w in (32, 8, 16)] == [0.0, 0.5, 1.0]
    names = ParamSpec(choices=["tanh", "relu"])  # no order: as written
    assert (range_position(names, "tanh"), range_position(names, "relu")) == (0.0, 1.0)


def test_best_so_far_follows_the_direction_and_places_failed_trials():
    trials = search_trials()
    assert running_best(trials, maximize=False) == [
        (0, 0.2),
        (1, 0.1),
        (2, 0.1),
        (3, 0.1),
        (4, 0.1),
    ]
    assert [v for _, v in running_best(trials, maximize=True)] == [0.2] * 5
    ax = best_so_far_figure(summary_of(trials)).axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["complete", "failed (no value)", "best so far"]


def test_range_position_and_numbers():
    lr = ParamSpec(low=1e-4, high=1.0, log=True)
    assert range_position(lr, 1e-2) == pytest.approx(0.5)
    assert range_position(ParamSpec(low=0, high=0.5), 0.25) == 0.5
    hidden = ParamSpec(choices=[[16], [32], [64]])
    assert range_position(hidden, [32]) == 0.5 and math.isnan(range_position(hidden, [8]))
    assert [short_number(x) for x in (1.2e-4, 1e-4, 1.0, 0.00396, 2000.0, 64)] == [
        "1.2e-4",
        "1e-4",
        "1",
        "0.00396",
        "2e3",
        "64",
    ]


def test_importing_report_and_plots_loads_neither_torch_nor_matplotlib():
    code = (
        "import sys, hpsearch.plots, hpsearch.report; "
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import sys, hpsearch.plots; print('optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.alts = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.alts.append(dict(attrs)["alt"])


def test_a_real_search_renders_with_every_plot(tmp_path):
    spec = {
        "name": "real",
        "device": "cpu",
        "data": {"source": "sklearn:iris"},
        "model": {"hidden": [8]},
        "train": {"epochs": 3, "batch_size": 16},
        "search": {
            "strategy": "random",
            "trials": 6,
            "workers": 1,
            "space": {
                "train.lr": {"low": 1.0e-3, "high": 1.0e-1, "log": True},
                "model.dropout": {"low": 0.0, "high": 0.3},
                "train.batch_size": {"choices": [16, 32]},
            },
        },
    }
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = run_spec(path, RunOptions(runs_dir=tmp_path / "runs")).run

    report_path = write_report(run, "html")
    expected = {
        "best_so_far",
        "learning_curves",
        "param_train.lr",
        "param_model.dropout",
        "param_train.batch_size",
        "parallel_coordinates",
        "importance",
    }
    assert {p.stem for p in run.report_dir.glob("*.png")} == expected
    assert_pngs(run.report_dir.glob("*.png"))
    parser = Images()
    parser.feed(report_path.read_text(encoding="utf-8"))
    assert set(parser.alts) == expected
    console = Console(record=True, width=120)
    render_console(load_report(run), console)
    text = console.export_text()
    assert "Top 6 trials by dev_error" in text and "diagnosis" in text
