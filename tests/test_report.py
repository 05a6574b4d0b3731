"""hpsearch.report on fabricated run folders (tests/runfactory.py): no training, milliseconds each.
A real search rendered end to end is in tests/test_plots.py."""

import base64
import os
from html.parser import HTMLParser

import pytest
from rich.console import Console

from hpsearch.errors import InputError
from hpsearch.report import (
    binomial_interval,
    edge_warnings,
    load_report,
    render_console,
    render_html,
    render_markdown,
    resolve_run,
    runs_table,
    trial_table,
    write_report,
)
from hpsearch.spec import ParamSpec
from tests.runfactory import make_run, params, trial

PNG = b"\x89PNG\r\n\x1a\n"


def search_trials():
    """Four complete trials (1 and 3 tie), one diverged, one pruned."""
    return [
        trial(0, 0.20, params(lr=0.01)),
        trial(1, 0.10, params(lr=0.003, dropout=0.1), train_error=0.02),
        trial(2, 0.15, params(lr=0.03, hidden=[32, 16])),
        trial(3, 0.10, params(lr=0.002)),
        trial(4, None, params(lr=0.9), state="failed", reason="diverged"),
        trial(5, None, params(lr=0.05), state="pruned"),
    ]


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path, search_trials())


def text_of(report) -> str:
    console = Console(record=True, width=120)
    render_console(report, console)
    return console.export_text()


# --- ranking --------------------------------------------------------------------------------


def test_ranking_minimizes_with_ties_to_the_earliest(run):
    report = load_report(run)
    assert [t["number"] for t in report.ranked] == [1, 3, 2, 0]  # failed and pruned left out
    assert [t["number"] for t in load_report(run, top=2).ranked] == [1, 3]
    assert report.varied == ["train.lr", "model.dropout", "model.hidden"]


def test_ranking_maximizes_when_the_objective_says_so(tmp_path):
    trials = [trial(n, 0.1, value=v) for n, v in enumerate([0.90, 0.95, 0.80, 0.95])]
    objective = {"metric": "dev_accuracy", "direction": "maximize"}
    report = load_report(make_run(tmp_path, trials, objective=objective))
    assert [t["number"] for t in report.ranked] == [1, 3, 0, 2]
    head, rows = trial_table(report)
    assert head[-1] == "dev_accuracy" and rows[0][-1] == "0.95"


def test_best_settings_apply_the_best_params_to_the_spec(run):
    settings = load_report(run).best_settings
    assert settings["train"]["lr"] == 0.003 and settings["model"]["dropout"] == 0.1
    assert settings["train"]["epochs"] == 4  # from the spec, not searched
    assert set(settings) == {"model", "train"}


# --- warnings -------------------------------------------------------------------------------

LR = ParamSpec(low=1e-4, high=1.0, log=True)
DROPOUT = ParamSpec(low=0.0, high=0.5)


def test_edge_warning_low_edge_on_the_log_axis():
    assert edge_warnings({"train.lr": LR}, {"train.lr": 1.2e-4}) == [
        "train.lr: best value 1.2e-4 is at the low edge of [1e-4, 1]; widen the range below 1e-4"
    ]


def test_edge_warning_high_edge_and_middle_judged_on_the_log_axis():
    # 0.7 is 70% of the way on a linear axis but 96% on the log axis the sampler used
    (high,) = edge_warnings({"train.lr": LR}, {"train.lr": 0.7})
    assert "high edge of [1e-4, 1]; widen the range above 1" in high
    # 0.01 is 1% of the way linearly but the middle of [1e-4, 1] on the log axis
    assert edge_warnings({"train.lr": LR}, {"train.lr": 0.01}) == []


def test_edge_warning_on_a_linear_range():
    (high,) = edge_warnings({"model.dropout": DROPOUT}, {"model.dropout": 0.49})
    assert high == (
        "model.dropout: best value 0.49 is at the high edge of [0, 0.5]; widen the range above 0.5"
    )
    (low,) = edge_warnings({"model.dropout": DROPOUT}, {"model.dropout": 0.01})
    assert "low edge" in low and "fixing it at 0" in low  # a range from 0 cannot widen below
    assert edge_warnings({"model.dropout": DROPOUT}, {"model.dropout": 0.25}) == []


def test_edge_warning_skips_choices_and_absent_params():
    space = {"model.hidden": ParamSpec(choices=[[16], [32]]), "train.lr": LR}
    assert edge_warnings(space, {"model.hidden": [16]}) == []


def test_edge_warning_reaches_the_report(tmp_path):
    trials = [trial(0, 0.1, params(lr=1.1e-4)), trial(1, 0.3, params(lr=0.01))]
    warnings = load_report(make_run(tmp_path, trials)).warnings
    assert any(w.startswith("train.lr: best value 1.1e-4 is at the low edge") for w in warnings)


def test_binomial_interval_is_wilson():
    from scipy.stats import binomtest

    low, high = binomial_interval(0.05, 200)
    expected = binomtest(10, 200).proportion_ci(method="wilson")
    assert (low, high) == pytest.approx((expected.low, expected.high))
    assert low < 0.05 < high
    assert binomial_interval(0.0, 50)[0] == 0.0


def test_dev_interval_uses_the_dev_split_size(run):
    report = load_report(run)
    assert report.dev_interval == pytest.approx(binomial_interval(0.10, 150))
    low, high = report.dev_interval
    assert f"{low:.2%} – {high:.2%} on 150 dev examples" in text_of(report)


def small_gap_trials():
    return [trial(0, 0.10, params(lr=0.01)), trial(1, 0.11, params(lr=0.02))]


def test_top_trials_closer_than_the_dev_set_resolves_are_warned(tmp_path):
    warnings = load_report(make_run(tmp_path, small_gap_trials(), dev_size=100)).warnings
    (warning,) = [w for w in warnings if "dev set can resolve" in w]
    assert warning.startswith("the top trials differ by less than the dev set can resolve")
    assert "gap of 1.00%" in warning and "100 dev examples" in warning


def test_a_large_dev_set_resolves_the_same_gap(tmp_path):
    report = load_report(make_run(tmp_path, small_gap_trials(), dev_size=100_000))
    assert not any("resolve" in w for w in report.warnings)


def test_regression_gets_no_binomial_interval(tmp_path):
    run = make_run(tmp_path, small_gap_trials(), task="regression", dev_size=10)
    report = load_report(run)
    assert report.dev_interval is None
    assert not any("resolve" in w for w in report.warnings)
    assert "0.1" in text_of(report) and "10.00%" not in text_of(report)  # not a rate


def test_diverged_trials_are_counted_with_their_learning_rates(tmp_path):
    trials = [
        trial(0, 0.1, params(lr=0.01)),
        trial(1, None, params(lr=0.9), state="failed", reason="diverged"),
        trial(2, None, params(lr=0.5), state="failed", reason="diverged"),
    ]
    warnings = load_report(make_run(tmp_path, trials)).warnings
    assert (
        "2 trials diverged (train.lr 0.5, 0.9): keep train.lr below 0.5, or clip gradients "
        "(train.grad_clip)"
    ) in warnings


def test_no_completed_trial_still_renders_everywhere(tmp_path):
    trials = [trial(0, None, state="failed", reason="oom"), trial(1, None, state="failed")]
    trials[1]["reason"] = "error: boom"
    report = load_report(make_run(tmp_path, trials))
    assert report.ranked == [] and report.diagnosis is None
    assert report.warnings[0] == (
        "no trial completed (oom: 1, error: boom: 1): there is no result to judge"
    )
    assert "no trial completed" in text_of(report)
    assert "no trial completed" in render_markdown(report)
    assert "no trial completed" in render_html(report, {})


# --- rendering --------------------------------------------------------------------------------


def test_console_report_has_every_section(run):
    text = text_of(load_report(run))
    for expected in (
        "hpsearch report: fake",
        "random, caviar mode",
        "4 complete, 1 pruned, 1 failed (diverged: 1)",
        "minimize dev_error",
        "12.5 s",
        "Top 4 trials by dev_error",
        "best trial",
        "trial 1: train error 2.00%, dev error 10.00%, test error 11.00%",
        "dev error 95% interval (Wilson)",
        "model (* searched)",
        "diagnosis",
        "Avoidable bias",
        "Variance",
        "what to try next",
        "warnings",
        "1 trial diverged (train.lr 0.9)",
    ):
        assert expected in text, expected
    assert "data mismatch" not in text


def test_console_shows_the_mismatch_block_with_groups(tmp_path):
    groups = {
        "easy": {"train_error": 0.01, "dev_error": 0.04},
        "hard": {"train_error": 0.1, "dev_error": 0.3},
    }
    report = load_report(make_run(tmp_path, search_trials(), groups=groups))
    assert "no data mismatch: every group is in train as in dev" in text_of(report)
    assert "Train error by group" not in text_of(report)  # the groups get their own block
    markdown = render_markdown(report)
    assert "## Data mismatch" in markdown
    assert "| hard | 10.00% | 30.00% | — | harder |" in markdown
    assert "hard: harder — train error 9.0% above the others'" in markdown
    chain = next(line for line in markdown.splitlines() if line.startswith("- chain"))
    assert chain.split(": ", 1)[1] == (
        "human-level 1.00% ≤ train 2.00% ≤ dev[easy] 4.00% ≤ dev 10.00% ≤ test 11.00% "
        "≤ dev[hard] 30.00%"
    )


def test_markdown_has_the_trial_table(run):
    lines = render_markdown(load_report(run)).splitlines()
    start = lines.index("| rank | trial | lr | dropout | hidden | train error | dev error |")
    assert lines[start + 1] == "|" + " --- |" * 7
    assert lines[start + 2] == "| 1 | 1 | 0.003 | 0.1 | [16] | 2.00% | 10.00% |"
    assert lines[start + 5].startswith("| 4 | 0 |")
    assert "## Diagnosis" in lines and "## Warnings" in lines


class Resources(HTMLParser):
    """Every image source and every attribute that would load something from elsewhere."""

    def __init__(self):
        super().__init__()
        self.images, self.external = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("script", "link", "iframe"):
            self.external.append(tag)
        for key in ("src", "href"):
            if "http" in (attrs.get(key) or "")[:10]:
                self.external.append(attrs[key])


def test_html_is_one_self_contained_file(run):
    path = write_report(run, "html")
    assert path == run.report_dir / "report.html"
    text = path.read_text(encoding="utf-8")
    parser = Resources()
    parser.feed(text)
    assert parser.external == [] and "http" not in text
    assert len(parser.images) == len(list(run.report_dir.glob("*.png"))) >= 5
    for source in parser.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.removeprefix("data:image/png;base64,"))[:8] == PNG


def test_markdown_is_written_beside_the_plots(run):
    path = write_report(run, "markdown")
    assert path == run.report_dir / "report.md"
    assert path.read_text(encoding="utf-8") == render_markdown(load_report(run))
    assert write_report(run, "table") is None


# --- finding runs ---------------------------------------------------------------------------


def test_runs_table_lists_runs_and_survives_broken_ones(tmp_path):
    good = make_run(tmp_path, search_trials(), stamp="20260101-120000")
    broken = make_run(tmp_path, search_trials(), name="broken", stamp="20260102-090000")
    broken.summary.write_text("{not json")
    missing = make_run(tmp_path, search_trials(), name="missing", stamp="20260103-090000")
    missing.summary.unlink()
    for age, folder in enumerate((missing, broken, good)):  # list_runs orders by spec time
        os.utime(folder.spec, (1_000_000 - age, 1_000_000 - age))
    console = Console(record=True, width=160)
    console.print(runs_table(tmp_path))
    lines = [line for line in console.export_text().splitlines() if "-2026010" in line]
    assert [line.split()[1].split("-")[0] for line in lines] == ["fake", "broken", "missing"]
    assert "2026-01-01 12:00" in lines[0] and "random" in lines[0] and "4/6" in lines[0]
    assert "dev_error 0.1" in lines[0]
    assert "unknown" in lines[1]
    # no summary yet and no process that owns it: killed before its first trial finished
    assert "killed (resumable)" in lines[2]


def test_resolve_run_by_name_path_or_newest(tmp_path):
    older = make_run(tmp_path, search_trials(), stamp="20260101-120000")
    newer = make_run(tmp_path, search_trials(), stamp="20260102-120000")
    os.utime(older.spec, (1_000_000, 1_000_000))
    assert resolve_run(None, tmp_path) == newer
    assert resolve_run(older.name, tmp_path) == older
    assert resolve_run(str(older.root), tmp_path / "elsewhere") == older


def test_resolve_run_errors(tmp_path):
    with pytest.raises(InputError, match="no run folders in"):
        resolve_run(None, tmp_path)
    with pytest.raises(InputError, match="no run folder 'nope'"):
        resolve_run("nope", tmp_path)
    run = make_run(tmp_path, search_trials())
    run.summary.unlink()
    with pytest.raises(InputError, match="has no summary.json"):
        resolve_run(run.name, tmp_path)


def test_a_damaged_summary_is_an_input_error(run):
    run.summary.write_text('{"name": ')
    with pytest.raises(InputError, match="cannot read summary.json"):
        load_report(run)


def test_the_html_report_of_a_grouped_run_shows_counts_and_verdicts(tmp_path):
    groups = {
        "lab": {"train_error": 0.0, "dev_error": 0.0, "test_error": 0.01,
                "n_train": 300, "n_dev": 100, "n_test": 100},
        "field": {"train_error": 0.1, "dev_error": 0.11, "test_error": 0.12,
                  "n_train": 300, "n_dev": 100, "n_test": 100},
    }  # fmt: skip
    run = make_run(tmp_path, search_trials(), groups=groups)
    html = write_report(run, "html").read_text()
    assert "field" in html and "(n=300, 50%)" in html and "harder" in html
    assert "no data mismatch" in html


def test_rescues_show_in_the_counts_and_the_best_trial(tmp_path):
    best = trial(0, 0.05, params(lr=0.3))
    best["rescues"] = [{"epoch": 7, "reason": "plateau", "lr": 0.03}]
    other = trial(1, 0.2, params(lr=0.5))
    text = text_of(load_report(make_run(tmp_path, [best, other])))
    assert "1 rescued by panda" in text
    assert "rescued at epoch 7 (plateau): rolled back to its best weights and trained on at lr" in (
        text
    )


def test_a_column_of_numbers_is_written_in_one_notation(tmp_path):
    """0.00397 above 4.28e-4 is hard to compare: a column that needs powers of ten gets them
    throughout."""
    trials = [trial(0, 0.1, params(lr=0.00397)), trial(1, 0.2, params(lr=0.000428))]
    head, rows = trial_table(load_report(make_run(tmp_path, trials)))
    lrs = [row[head.index("lr")] for row in rows]
    assert lrs == ["3.97e-3", "4.28e-4"]
    trials = [trial(0, 0.1, params(lr=0.00397)), trial(1, 0.2, params(lr=0.0428))]
    head, rows = trial_table(load_report(make_run(tmp_path / "b", trials)))
    assert [row[head.index("lr")] for row in rows] == ["0.00397", "0.0428"]


def test_the_top_trials_table_never_cuts_a_value_on_80_columns(run):
    console = Console(record=True, width=80)
    render_console(load_report(run), console)
    text = console.export_text()
    assert "[32,16]" in text
    table = text[text.index("Top 4 trials") : text.index("best trial")]
    assert "…" not in table


HOSTILE = {
    "<script>alert(1)</script>": {"train_error": 0.01, "dev_error": 0.04},
    '"><img src=x onerror=alert(1)>': {"train_error": 0.02, "dev_error": 0.05},
    "two\nlines | # Heading": {"train_error": 0.1, "dev_error": 0.3},
    "\x1b[2Jwiped": {"train_error": 0.03, "dev_error": 0.06},
}


def test_data_values_are_literal_in_markdown(tmp_path):
    """Group names come from the data: in report.md they stay text — no raw HTML, no broken
    table, no heading."""
    import re

    markdown = render_markdown(load_report(make_run(tmp_path, search_trials(), groups=HOSTILE)))
    assert not re.search(r"(?<!\\)<", markdown), "raw HTML"
    assert "\\<script\\>alert(1)\\</script\\>" in markdown
    assert "\x1b" not in markdown
    assert not [line for line in markdown.splitlines() if line.startswith("lines")]
    assert "| two lines \\| # Heading | 10.00% | 30.00% | — | harder |" in markdown
    assert not [line for line in markdown.splitlines() if line.startswith("# Heading")]


def test_escape_sequences_in_data_never_reach_the_terminal(tmp_path):
    console = Console(record=True, width=160, force_terminal=True)
    render_console(load_report(make_run(tmp_path, search_trials(), groups=HOSTILE)), console)
    shown = console.export_text(styles=False)
    assert "\x1b" not in shown
    assert "\\x1b[2Jwiped" in shown
