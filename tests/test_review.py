"""Panda --interactive: one key per proposal, an edit line checked against the space, a stop
recorded as such; in unit tests with fed keys, and in a real pseudo-terminal."""

import contextlib
import io
import json
import re
import sys

import pytest
from rich.console import Console

from hpsearch.progress import SilentProgress
from hpsearch.review import PandaReviewer
from hpsearch.space import parse_space
from tests.conftest import make_spec
from tests.terminal import Terminal


def reviewer_with(keys, lines=()):
    """A reviewer fed key presses (as the terminal sends them) and edit lines."""
    spec = make_spec(search={"space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}}})
    console = Console(file=io.StringIO())
    pressed, typed = iter(keys), iter(lines)
    console.input = lambda prompt="": next(typed)
    review = PandaReviewer(
        parse_space(spec), spec, console=console, key=lambda: next(pressed), listen=False
    )
    return review, console


def test_reviewer_runs_edits_and_stops_on_single_keys():
    proposal = {"train.lr": 0.01}
    review, _ = reviewer_with(["\r"])
    assert review(0, proposal) == proposal
    review, console = reviewer_with(["e", "\n"], ["train.lr=0.05"])
    assert review(0, proposal) == {"train.lr": 0.05}
    assert "trial 0 edited proposal (runs as a new trial): train.lr=0.05" in console.file.getvalue()
    review, _ = reviewer_with(["s"])
    assert review(0, proposal) is None


def test_reviewer_refuses_values_outside_the_space_and_asks_again():
    review, console = reviewer_with(
        ["x", "e", "e", "e", "\r"], ["train.lr=5", "model.nope=1", "train.lr=0.02"]
    )
    assert review(0, {"train.lr": 0.01}) == {"train.lr": 0.02}
    said = console.file.getvalue()
    assert "'x' is not one of Enter, e, s" in said
    assert "train.lr: 5 is outside the search space" in said
    assert "not a search parameter; one of: train.lr" in said


def test_reviewer_pauses_the_live_view_while_it_asks():
    events = []

    class Watched(SilentProgress):
        @contextlib.contextmanager
        def paused(self):
            events.append("pause")
            yield
            events.append("resume")

    spec = make_spec(search={"space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}}})
    console = Console(file=io.StringIO())

    def key():
        events.append("asked")
        return "\r"

    review = PandaReviewer(parse_space(spec), spec, Watched(), console, key, listen=False)
    review(0, {"train.lr": 0.01})
    assert events == ["pause", "asked", "resume"]


PANDA = """\
name: watched
seed: 0
device: cpu
data: {source: "sklearn:iris"}
model: {hidden: [8]}
train: {epochs: 2000, early_stopping: null}
search:
  mode: panda
  trials: 4
  space:
    train.lr: {low: 1.0e-3, high: 1.0e-1, log: true}
"""


def test_interactive_panda_in_a_terminal_edits_and_stops(tmp_path):
    """The prompt is on screen (not under the live view); `e` and an edit line change the
    next trial's value, Enter runs it, `s` stops the search: state `stopped`, exit 0."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(PANDA)
    runs = tmp_path / "runs"
    argv = [sys.executable, "-m", "hpsearch", "run", str(spec), "--interactive"]
    terminal = Terminal([*argv, "--runs-dir", str(runs)], tmp_path)
    try:
        terminal.wait_for("Enter run it · e edit a value · s stop:", timeout=30)
        assert "trial 0 proposal: train.lr=" in terminal.text()
        terminal.send("e")
        terminal.wait_for("path=value", timeout=10)
        terminal.send("train.lr=0.0123\r")
        terminal.wait_for("edited proposal (runs as a new trial): train.lr=0.0123", timeout=10)
        terminal.send("\r")
        terminal.wait_for("k ends it (keeps its best weights) · r rescues it now", timeout=10)
        terminal.wait_for(lambda screen: re.search(r"epoch +\d+/2000", screen), timeout=30)
        terminal.send("r")  # while it trains: rescue it now, then end it
        terminal.wait_for("trial 1 rescued at epoch", timeout=30)
        terminal.send("k")
        terminal.wait_for("trial 1 ended at epoch", timeout=30)
        terminal.wait_for("trial 1 complete", timeout=30)
        terminal.wait_for("trial 2 proposal", timeout=30)
        terminal.send("s")
        assert terminal.wait_exit(60) == 0
    finally:
        terminal.close()
    (run,) = runs.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["state"] == "stopped"
    assert [(t["number"], t["params"]["train.lr"]) for t in summary["trials"]] == [(1, 0.0123)]
    (edited,) = summary["trials"]
    assert edited["epochs_run"] < 2000
    assert [r["reason"] for r in edited["rescues"]] == ["asked"]
    assert edited["rescues"][0]["lr"] == pytest.approx(0.00123)
    params = json.loads((run / "trials" / "1" / "params.json").read_text())
    assert params["params"] == {"train.lr": 0.0123}
    assert not (run / "trials" / "0").exists()  # the replaced proposal was never trained
