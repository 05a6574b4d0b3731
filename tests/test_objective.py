"""The trial layer's pure parts: what counts as a reproduced trial."""

import os
import signal

import pytest

from hpsearch.objective import Rerun, deferred_stop
from hpsearch.outcome import TrialOutcome


def outcome(**metrics: float) -> TrialOutcome:
    return TrialOutcome(0, "complete", None, {}, 1, metrics.get("dev_error"), dict(metrics))


def test_a_rerun_is_judged_on_its_metrics_not_on_its_clock():
    recorded = outcome(dev_error=0.1, n_params=610.0, inference_ms=0.07, train_seconds=0.1)
    again = outcome(dev_error=0.1, n_params=610.0, inference_ms=12.8, train_seconds=6.4)
    assert Rerun(recorded, again, None).reproduced
    bigger = outcome(dev_error=0.1, n_params=1210.0, inference_ms=0.07, train_seconds=0.1)
    assert not Rerun(recorded, bigger, None).reproduced
    worse = outcome(dev_error=0.2, n_params=610.0)
    assert Rerun(recorded, worse, None).difference > 0.09


def test_nested_deferred_stops_share_one_question():
    """A stop asked inside a nested block (training inside the worker's pass) is the outer
    block's stop too: the inner ends by raising, and so would the outer."""
    with pytest.raises(KeyboardInterrupt), deferred_stop() as outer:
        assert not outer()
        with pytest.raises(KeyboardInterrupt), deferred_stop() as inner:
            os.kill(os.getpid(), signal.SIGINT)
            assert inner() and outer()  # held back: the block goes on to its end
        assert outer()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_second_stop_interrupts_a_deferred_block_at_once():
    reached = False
    with pytest.raises(KeyboardInterrupt), deferred_stop():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        reached = True
    assert not reached
