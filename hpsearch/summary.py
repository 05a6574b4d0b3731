"""The JSON summary of a run (DESIGN.md, "JSON summary"), built from trial outcomes."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hpsearch.objective import TrialOutcome
from hpsearch.runs import RunFolder
from hpsearch.spec import Spec
from hpsearch.storage import mask_url

STATES = ("complete", "pruned", "failed")


def best_outcome(spec: Spec, outcomes: list[TrialOutcome]) -> TrialOutcome | None:
    """The complete trial with the best objective value (ties: the earliest)."""
    scored = [o for o in outcomes if o.state == "complete" and o.value is not None]
    if not scored:
        return None
    sign = -1.0 if spec.objective.resolved_direction == "maximize" else 1.0
    return min(scored, key=lambda o: (sign * o.value, o.number))


def trial_entry(outcome: TrialOutcome) -> dict[str, Any]:
    return {
        "number": outcome.number,
        "state": outcome.state,
        "reason": outcome.reason,
        "params": outcome.params,
        "value": outcome.value,
        "metrics": outcome.metrics,
        "best_epoch": outcome.best_epoch,
        "epochs_run": outcome.epochs_run,
        "seconds": round(outcome.seconds, 3),
        "stack": outcome.stack,
    }


def build_summary(
    run: RunFolder,
    spec: Spec,
    outcomes: list[TrialOutcome],
    state: str,
    test_metrics: dict[str, float] | None = None,
    diagnosis: dict[str, Any] | None = None,
    wall_seconds: float | None = None,
    study: str | None = None,
) -> dict[str, Any]:
    counts = Counter(o.state for o in outcomes)
    best = best_outcome(spec, outcomes)
    best_entry = None
    if best is not None:
        best_entry = {
            "trial": best.number,
            "params": best.params,
            "value": best.value,
            "metrics": {**best.metrics, **(test_metrics or {})},
        }
    search = spec.search
    return {
        "run": str(run.root),
        "name": spec.name,
        "study": (study or run.name) if search else None,
        "storage": mask_url(spec.storage) if spec.storage else ("study.log" if search else None),
        "state": state,
        "strategy": search.strategy if search else None,
        "mode": search.mode if search else None,
        "objective": {
            "metric": spec.objective.metric,
            "direction": spec.objective.resolved_direction,
        },
        "counts": {s: counts.get(s, 0) for s in STATES},
        "failure_reasons": dict(Counter(o.reason for o in outcomes if o.state == "failed")),
        "wall_seconds": round(wall_seconds, 3) if wall_seconds is not None else None,
        "best": best_entry,
        "diagnosis": diagnosis,
        "trials": [trial_entry(o) for o in sorted(outcomes, key=lambda o: o.number)],
    }
