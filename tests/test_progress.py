"""Live output: the status line, plain progress lines, and the interactive reviewer."""

import io

from rich.console import Console

from hpsearch.outcome import TrialOutcome
from hpsearch.progress import PlainProgress, make_reviewer, outcome_text
from hpsearch.space import parse_space
from hpsearch.summary import SearchStatus
from tests.conftest import make_spec


def status(done, total, elapsed=60.0):
    counts = {"complete": done - 1, "pruned": 0, "failed": 1}
    return SearchStatus(done, total, counts, 0.0312, 4, "dev_error", elapsed)


def test_status_line_counts_best_and_eta():
    text = status(4, 10).text()
    assert text.startswith("[4/10] 3 complete, 1 failed")
    assert "best dev_error 0.0312 (trial 4)" in text
    assert "elapsed 1:00" in text and "eta 1:30" in text
    assert status(10, 10).eta is None and status(3, None).eta is None
    assert "[3/?]" in status(3, None).text()


def test_plain_progress_prints_every_tenth_epoch_and_flushes():
    stream = io.StringIO()
    progress = PlainProgress(stream)
    progress.trial_started(2, {"train.lr": 0.01}, epochs=20)
    for epoch in range(1, 21):
        progress.epoch(2, {"epoch": epoch, "train_loss": 0.5, "dev_loss": 0.6})
    lines = stream.getvalue().splitlines()
    assert lines[0] == "trial 2 started: train.lr=0.01"
    epochs = [line.split()[3] for line in lines[1:]]
    assert epochs == ["1/20", *[f"{e}/20" for e in range(2, 21, 2)]]


def test_outcome_text():
    done = TrialOutcome(
        1, "complete", None, {"train.lr": 0.012345}, 0, 0.1,
        {"train_error": 0.02, "dev_error": 0.05}, best_epoch=7, epochs_run=9,
    )  # fmt: skip
    text = outcome_text(done)
    assert "variance +0.0300" in text and "best epoch 7/9" in text and "train.lr=0.01235" in text
    failed = TrialOutcome(2, "failed", "diverged", {}, 0)
    assert outcome_text(failed) == "trial 2 failed: diverged"


def reviewer_with(answers):
    spec = make_spec(search={"space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}}})
    console = Console(file=io.StringIO())
    replies = iter(answers)
    console.input = lambda prompt="": next(replies)
    return make_reviewer(parse_space(spec), spec, console), console


def test_reviewer_runs_edits_and_stops():
    proposal = {"train.lr": 0.01}
    review, _ = reviewer_with([""])
    assert review(0, proposal) == proposal
    review, _ = reviewer_with(["e", "train.lr=0.05"])
    assert review(0, proposal) == {"train.lr": 0.05}
    review, _ = reviewer_with(["s"])
    assert review(0, proposal) is None


def test_reviewer_refuses_values_outside_the_space_and_asks_again():
    review, console = reviewer_with(["e", "train.lr=5", "e", "model.nope=1", "e", "train.lr=0.02"])
    assert review(0, {"train.lr": 0.01}) == {"train.lr": 0.02}
    said = console.file.getvalue()
    assert "train.lr: 5 is outside the search space" in said
    assert "not a search parameter; one of: train.lr" in said
