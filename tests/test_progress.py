"""Live output: the status line, plain progress lines, the live view on a terminal."""

import io
import sys
import time

from hpsearch.outcome import TrialOutcome
from hpsearch.progress import PlainProgress, outcome_text
from hpsearch.summary import SearchStatus
from tests.conftest import CONFIGS
from tests.terminal import Terminal


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


def test_plain_progress_says_when_a_trial_is_rescued():
    stream = io.StringIO()
    progress = PlainProgress(stream)
    progress.trial_started(3, {"train.lr": 0.3}, epochs=20)
    progress.epoch(3, {"epoch": 7, "event": "rescue", "reason": "plateau", "lr": 0.03})
    said = stream.getvalue()
    assert "trial 3 rescued at epoch 7 (plateau): back to its best weights, lr now 0.03" in said


def test_outcome_text_shows_the_rescued_lr_and_never_minus_zero():
    rescued = TrialOutcome(
        4, "complete", None, {"train.lr": 0.3}, 0, 0.1,
        {"train_error": 0.05, "dev_error": 0.049999}, best_epoch=9, epochs_run=12,
        rescues=[{"epoch": 7, "reason": "plateau", "lr": 0.03}],
    )  # fmt: skip
    text = outcome_text(rescued)
    assert "train.lr=0.3→0.03" in text and "rescued at epoch 7 (plateau)" in text
    assert "variance +0.0000" in text


def test_caviar_shows_a_row_for_a_running_trial_within_seconds_of_its_start(tmp_path):
    """In a real terminal: the budget bar from the start, then a row per running trial (sent
    by the worker processes epoch by epoch) soon after the first trial starts training."""
    runs = tmp_path / "runs"
    argv = [sys.executable, "-m", "hpsearch", "run", str(CONFIGS / "quickstart.yaml")]
    terminal = Terminal([*argv, "--trials", "4", "--runs-dir", str(runs)], tmp_path, cols=110)
    try:
        terminal.wait_for("0/4 trials", timeout=30)
        deadline = time.monotonic() + 60
        while not list(runs.glob("*/trials/*/params.json")):  # written as a trial starts
            terminal.pump(0.05)
            assert time.monotonic() < deadline, terminal.text()
        seen = terminal.wait_for(
            lambda screen: any(
                line.startswith("trial ") and " epoch " in line and "/100" in line
                for line in screen.splitlines()
            ),
            timeout=5,
        )
        assert seen < 5
        assert terminal.wait_exit(120) == 0
        assert "best trial" in terminal.text()
    finally:
        terminal.close()
