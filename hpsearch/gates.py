"""CI gates: `--fail-under dev_accuracy=0.95`, `--fail-over dev_error=0.05` on the best trial."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpsearch.errors import InputError
from hpsearch.spec import CLASSIFICATION_METRICS, REGRESSION_METRICS

_SPLITS = ("train", "dev", "test")
_METRICS = sorted(set(CLASSIFICATION_METRICS) | set(REGRESSION_METRICS))


@dataclass(frozen=True)
class Gate:
    metric: str
    threshold: float
    fail_if_under: bool  # --fail-under: fail when the metric is below the threshold

    def check(self, metrics: dict[str, Any]) -> str | None:
        """None when the gate holds, else a one-line reason."""
        value = metrics.get(self.metric)
        if value is None:
            return f"{self.metric} was not measured for the best trial"
        if self.fail_if_under and value < self.threshold:
            return f"{self.metric} {value:.4g} is under {self.threshold:g}"
        if not self.fail_if_under and value > self.threshold:
            return f"{self.metric} {value:.4g} is over {self.threshold:g}"
        return None


def parse_gate(text: str, fail_if_under: bool) -> Gate:
    option = "--fail-under" if fail_if_under else "--fail-over"
    metric, sep, raw = text.partition("=")
    metric = metric.strip()
    split, _, name = metric.partition("_")
    if not sep or split not in _SPLITS or name not in _METRICS:
        raise InputError(
            f"{option}: '{text}' should be METRIC=VALUE with METRIC like dev_accuracy or "
            f"test_error (a split of {', '.join(_SPLITS)} and one of {', '.join(_METRICS)})"
        )
    try:
        threshold = float(raw.strip().removesuffix("%")) / (100 if raw.strip().endswith("%") else 1)
    except ValueError:
        raise InputError(f"{option}: '{raw}' is not a number") from None
    return Gate(metric, threshold, fail_if_under)


def failed_gates(gates: list[Gate], summary: dict[str, Any]) -> list[str]:
    """Reasons the best trial misses the gates (every gate fails when no trial completed)."""
    best = summary.get("best")
    if best is None:
        return [f"{gate.metric}: no trial completed" for gate in gates]
    return [reason for gate in gates if (reason := gate.check(best["metrics"]))]
