"""The trial layer's pure parts: what counts as a reproduced trial."""

from hpsearch.objective import Rerun
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
