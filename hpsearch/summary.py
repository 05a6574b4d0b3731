"""The JSON summary of a run (DESIGN.md, "JSON summary"), built from trial outcomes; the status
line of a running search; and the live summary that follows a study while it runs."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import optuna

from hpsearch.diagnosis import Sample, diagnose
from hpsearch.errors import DiskFull, is_disk_full
from hpsearch.outcome import Reason, RunState, TrialOutcome, TrialState
from hpsearch.pareto import Choice, choose, front_outcomes, pick_rule, violation
from hpsearch.runs import RunFolder, write_json
from hpsearch.space import apply_params
from hpsearch.spec import Spec
from hpsearch.storage import mask_url
from hpsearch.study import Decode, TrialLedger, outcome_of

if TYPE_CHECKING:  # types only: building a summary needs neither torch nor the data's loaders
    from hpsearch.data import Dataset
    from hpsearch.objective import FinalEvaluation

STATES = tuple(TrialState)
SUMMARY_INTERVAL = 1.0  # seconds between rewrites of a running search's summary.json, at least
# ... and at least this many times as long as the last rewrite took: a study of thousands of
# trials (a summary of megabytes) then costs the planner a tenth of a core, not all of it
SUMMARY_SHARE = 10.0


def _ranking(
    spec: Spec, outcomes: list[TrialOutcome]
) -> tuple[list[TrialOutcome], Callable[[TrialOutcome], tuple]]:
    """Complete trials and the key that ranks them (see ranked_outcomes)."""
    objective = spec.objective
    scored = [o for o in outcomes if o.state == TrialState.COMPLETE and o.value is not None]
    sign = -1.0 if objective.resolved_direction == "maximize" else 1.0
    on_front = {o.number for o in front_outcomes(objective, scored)} if objective.several else ()

    def rank(o: TrialOutcome) -> tuple[bool, float, float, float, int]:
        behind = objective.several and o.number not in on_front
        outside = violation(objective, o) if objective.bounds else 0.0
        return (behind, outside, sign * o.value, o.metrics.get("dev_loss", math.inf), o.number)

    return scored, rank


def ranked_outcomes(spec: Spec, outcomes: list[TrialOutcome]) -> list[TrialOutcome]:
    """Complete trials, best first: within the objective's constraints first (then the least
    outside them); with several objectives, the Pareto front first; then by the (first)
    objective; ties go to the lower dev loss (an error rate ties often on a small dev set),
    then to the earliest."""
    scored, rank = _ranking(spec, outcomes)
    return sorted(scored, key=rank)


def best_outcome(spec: Spec, outcomes: list[TrialOutcome]) -> TrialOutcome | None:
    """The best complete trial: by its objective value, or, once `search.rerank` re-trained
    the top configurations, the configuration with the best mean over its seeds; with several
    objectives, the front's trial that `objective.pick` names."""
    if spec.objective.several:
        choice = choose(spec.objective, outcomes)
        return choice.trial if choice else None
    standings = rerank_standings(spec, outcomes)
    if standings:
        return standings[0].original
    scored, rank = _ranking(spec, outcomes)  # the first of ranked_outcomes, without a sort
    return min(scored, key=rank, default=None)


def objective_entry(spec: Spec) -> dict[str, Any]:
    """The summary's `objective`: the (first) metric and direction, and with several
    objectives all of them and the pick rule; the constraints when there are any."""
    objective = spec.objective
    entry: dict[str, Any] = {
        "metric": objective.metric,
        "direction": objective.resolved_direction,
    }
    if objective.several:
        entry["metrics"] = objective.names
        entry["directions"] = objective.resolved_directions
        entry["pick"] = pick_rule(objective)
    if objective.bounds:
        entry["constraints"] = [str(b) for b in objective.bounds]
    return entry


def constraints_entry(spec: Spec, outcomes: list[TrialOutcome], best: TrialOutcome | None):
    """With constraints: how many complete trials are within them, and whether the best (the
    pick) is; when none is, the best is only the least outside them."""
    objective = spec.objective
    if not objective.bounds:
        return None
    complete = [o for o in outcomes if o.state == TrialState.COMPLETE and o.value is not None]
    return {
        "bounds": [str(b) for b in objective.bounds],
        "feasible": sum(violation(objective, o) == 0 for o in complete),
        "best_within": best is not None and violation(objective, best) == 0,
    }


def front_entry(spec: Spec, outcomes: list[TrialOutcome]) -> list[dict[str, Any]] | None:
    """With several objectives: the non-dominated trials, each with its objective values."""
    if not spec.objective.several:
        return None
    return [
        {"trial": o.number, "values": o.values, "params": o.params}
        for o in front_outcomes(spec.objective, outcomes)
    ]


@dataclass(frozen=True)
class Standing:
    """One re-ranked configuration: its original trial and every seed's objective value."""

    original: TrialOutcome
    values: tuple[float, ...]
    mean: float
    interval: tuple[float, float]  # 95% t interval of the mean
    distinguishable: bool = False  # clearly worse than the chosen configuration

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.original.number,
            "params": self.original.params,
            "values": list(self.values),
            "mean": self.mean,
            "interval": list(self.interval),
            "distinguishable": self.distinguishable,
        }


def _mean_interval(values: list[float]) -> tuple[float, tuple[float, float], float]:
    from scipy.stats import t  # scipy comes with scikit-learn; only re-ranking needs it

    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, (mean, mean), 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    half = float(t.ppf(0.975, len(values) - 1)) * math.sqrt(var / len(values))
    return mean, (mean - half, mean + half), var


def rerank_standings(spec: Spec, outcomes: list[TrialOutcome]) -> list[Standing]:
    """The re-ranked configurations, best mean first; each says whether it is clearly worse
    than the first (Welch's 95% interval of the difference of means excludes 0)."""
    complete = [o for o in outcomes if o.state == TrialState.COMPLETE and o.value is not None]
    extra: dict[int, list[float]] = {}
    for o in complete:
        if o.rerank_of is not None:
            extra.setdefault(o.rerank_of, []).append(o.value)
    if not extra:
        return []
    sign = -1.0 if spec.objective.resolved_direction == "maximize" else 1.0
    rows = []
    for o in complete:
        if o.rerank_of is None and o.number in extra:
            values = [o.value, *extra[o.number]]
            mean, interval, var = _mean_interval(values)
            rows.append((Standing(o, tuple(values), mean, interval), var))
    rows.sort(key=lambda row: (sign * row[0].mean, row[0].original.number))
    best, best_var = rows[0]
    standings = [best]
    for standing, var in rows[1:]:
        margin = _welch_margin(best_var, len(best.values), var, len(standing.values))
        worse = sign * (standing.mean - best.mean) > margin
        standings.append(replace(standing, distinguishable=worse))
    return standings


def _welch_margin(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Half-width of Welch's 95% interval for a difference of two means."""
    from scipy.stats import t

    a, b = var_a / n_a, var_b / n_b
    if a + b == 0:
        return 0.0
    df = (a + b) ** 2 / (a * a / max(1, n_a - 1) + b * b / max(1, n_b - 1))
    return float(t.ppf(0.975, df)) * math.sqrt(a + b)


def _reason_kind(outcome: TrialOutcome) -> str:
    """A failure reason as counted: a disk failure without the trial's path, so a full disk
    counts once ('disk: No space left on device: 6'), not once per folder."""
    reason = str(outcome.reason)
    return reason.split(" (", 1)[0] if outcome.reason_kind == Reason.DISK else reason


def trial_entry(outcome: TrialOutcome) -> dict[str, Any]:
    return {
        "number": outcome.number,
        "state": outcome.state.value,
        "reason": outcome.reason,
        "params": outcome.params,
        "value": outcome.value,
        "metrics": outcome.metrics,
        "best_epoch": outcome.best_epoch,
        "epochs_run": outcome.epochs_run,
        "seconds": round(outcome.seconds, 3),
        "stack": outcome.stack,
        "resumed_from": outcome.resumed_from,
        "resumed_epoch": outcome.resumed_epoch,
        "rerank_of": outcome.rerank_of,
        "rescues": outcome.rescues,
        **({"values": outcome.values} if outcome.values is not None else {}),
    }


def choose_of(spec: Spec, outcomes: list[TrialOutcome]) -> Choice | None:
    return choose(spec.objective, outcomes) if spec.objective.several else None


def diagnosis_for(
    spec: Spec, data: Dataset, best: TrialOutcome, final: FinalEvaluation
) -> dict[str, Any]:
    """The bias/variance reading of the best trial, judged on intervals over the split sizes,
    with remedies specific to its settings and to what the search already varies."""
    trial_spec = apply_params(spec, best.params)
    model, train = trial_spec.model, trial_spec.train
    context = {
        "hidden": model.widths,
        "sizing": "hidden" if model.hidden is not None else "layers",
        "epochs": train.epochs,
        "stopped_epoch": best.epochs_run,
        "early_stopping": train.early_stopping is not None,
        "dropout": model.dropout,
        "l2": train.l2,
        "optimizer": train.optimizer,
        "lr": train.lr,
        "init": model.init,
        "train_size": len(data.splits["train"]),
        "searched": sorted(spec.search.space) if spec.search else [],
    }
    regression = data.task == "regression"
    spread = final.spread or {}
    samples = {
        name: Sample(len(split), spread.get(name) if regression else None)
        for name, split in data.splits.items()
        if len(split) and (not regression or spread.get(name) is not None)
    }
    return diagnose(
        best.metrics["train_error"],
        best.metrics["dev_error"],
        test_error=final.test.get("test_error"),
        train_dev_error=final.test.get("train_dev_error"),
        human_level_error=spec.human_level_error,
        bayes_error=spec.bayes_error,
        groups=final.groups,
        context=context,
        samples=samples,
        regression=regression,
    ).to_dict()


def _storage_label(spec: Spec, run: RunFolder) -> str | None:
    if spec.storage:
        return mask_url(spec.storage)
    return run.study_log.name if spec.search else None


def build_summary(
    run: RunFolder,
    spec: Spec,
    outcomes: list[TrialOutcome],
    state: RunState | str,
    test_metrics: dict[str, float] | None = None,
    diagnosis: dict[str, Any] | None = None,
    wall_seconds: float | None = None,
    study: str | None = None,
    weights: str | None = None,
) -> dict[str, Any]:
    """The summary's dictionary. `weights` says where the best trial's scored weights came
    from (see objective.FinalEvaluation), when it was scored."""
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
        if best.values is not None:
            best_entry["values"] = best.values
        if weights is not None:
            best_entry["weights"] = weights
    search = spec.search
    failed = (o for o in outcomes if o.state == TrialState.FAILED)
    return {
        "run": str(run.root),
        "name": spec.name,
        "study": (study or run.name) if search else None,
        "storage": _storage_label(spec, run),
        "state": str(state),
        "strategy": search.strategy if search else None,
        "mode": search.mode if search else None,
        "objective": objective_entry(spec),
        "counts": {s.value: counts.get(s, 0) for s in STATES},
        "failure_reasons": dict(Counter(_reason_kind(o) for o in failed)),
        "wall_seconds": round(wall_seconds, 3) if wall_seconds is not None else None,
        "best": best_entry,
        "rerank": [standing.to_dict() for standing in rerank_standings(spec, outcomes)] or None,
        "constraints": constraints_entry(spec, outcomes, best),
        "front": front_entry(spec, outcomes),
        "pick": choice.to_dict() if (choice := choose_of(spec, outcomes)) else None,
        "diagnosis": diagnosis,
        "trials": [trial_entry(o) for o in sorted(outcomes, key=lambda o: o.number)],
    }


def write_summary(
    run: RunFolder,
    spec: Spec,
    outcomes: list[TrialOutcome],
    state: RunState | str,
    started: float,
    study: str | None = None,
    final: FinalEvaluation | None = None,
    data: Dataset | None = None,
) -> dict[str, Any]:
    """Rewrite summary.json. With the best trial's `final` evaluation (and the `data` it was
    scored on), the summary carries its test metrics and the diagnosis."""
    best = best_outcome(spec, outcomes)
    test_metrics, diagnosis, weights = None, None, None
    if best is not None and final is not None and data is not None:
        test_metrics, weights = final.test, final.weights
        diagnosis = diagnosis_for(spec, data, best, final)
    wall = time.perf_counter() - started
    summary = build_summary(
        run, spec, outcomes, state, test_metrics, diagnosis, wall, study, weights
    )
    write_json(run.summary, summary)
    return summary


# --- a running search -------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchStatus:
    """Where a search stands after a trial finished."""

    done: int
    total: int | None
    counts: dict[str, int]
    best_value: float | None
    best_trial: int | None
    metric: str
    elapsed: float  # seconds since this process started on the search
    done_before: int = 0  # trials a resumed search had finished before this process started
    front: int | None = None  # several objectives: how many trials are on the Pareto front

    @property
    def best_word(self) -> str:
        """'best', or 'picked' where the trial is the front's pick rather than a minimum."""
        return "best" if self.front is None else "picked"

    @property
    def eta(self) -> float | None:
        done_here = self.done - self.done_before
        if not self.total or done_here <= 0 or self.done >= self.total:
            return None
        return self.elapsed / done_here * (self.total - self.done)

    def text(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts.items() if n)
        parts = [f"[{self.done}/{self.total or '?'}] {counts}"]
        if self.best_value is not None:
            value = f"{self.metric} {self.best_value:.4g} (trial {self.best_trial})"
            parts.append(f"{self.best_word} {value}")
        if self.front is not None:
            parts.append(f"front {self.front}")
        parts.append(f"elapsed {clock(self.elapsed)}")
        if self.eta is not None:
            parts.append(f"eta {clock(self.eta)}")
        return "  ".join(parts)


def clock(seconds: float) -> str:
    """0:42, 12:05, 1:02:03."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class StatusTally:
    """The counted trials of a running search (a trial replaced by its retry counts once, as
    the retry), tallied as they finish: the counts per state and, with one objective and no
    re-ranking, the best trial are kept up to date trial by trial, so the status line costs
    the same at the ten-thousandth trial as at the first. With several objectives (the front's
    pick) or re-ranked configurations (means over seeds) the best depends on every trial and
    is found again from all of them."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.counted: dict[int, TrialOutcome] = {}
        self.counts: Counter[str] = Counter()
        self._best: TrialOutcome | None = None
        self._composable = not spec.objective.several  # until a re-ranking trial finishes

    def add(self, outcome: TrialOutcome) -> None:
        self.counted[outcome.number] = outcome
        self.counts[outcome.state] += 1
        self._composable &= outcome.rerank_of is None
        if self._composable:  # the best of the best so far and this one
            self._best = best_outcome(self.spec, [o for o in (self._best, outcome) if o])

    def remove(self, number: int) -> None:
        """Trial `number` was replaced by a retry (an interrupted trial: never the best)."""
        outcome = self.counted.pop(number, None)
        if outcome is not None:
            self.counts[outcome.state] -= 1

    def best(self) -> TrialOutcome | None:
        if self._composable:
            return self._best
        return best_outcome(self.spec, list(self.counted.values()))

    def status(self, total: int | None, elapsed: float, done_before: int) -> SearchStatus:
        best = self.best()
        several = self.spec.objective.several
        return SearchStatus(
            done=len(self.counted),
            total=total,
            counts={s.value: self.counts[s] for s in STATES},
            best_value=best.value if best else None,
            best_trial=best.number if best else None,
            metric=self.spec.objective.metric,
            elapsed=elapsed,
            done_before=done_before,
            front=len(front_outcomes(self.spec.objective, list(self.counted.values())))
            if several
            else None,
        )


# Told of each newly finished trial; the last of a batch also gets the search's status.
OnFinished = Callable[[TrialOutcome, "SearchStatus | None"], None]


class LiveSummary:
    """Follows a running study: shows trials that finished since the last look and rewrites
    summary.json.

    Only trials that finished since the last look are read and decoded (see `TrialLedger`),
    the status is kept up to date trial by trial (`StatusTally`), and the running summary is
    rewritten at most once a second and at most a tenth of the time (the final one always),
    so a trial's bookkeeping does not grow with the study.
    """

    def __init__(
        self,
        run: RunFolder,
        spec: Spec,
        study: optuna.Study,
        decode: Decode,
        on_finished: OnFinished,
        total: Callable[[], int | None],
        study_name: str,
    ):
        self.run, self.spec, self.study, self.decode = run, spec, study, decode
        self.on_finished = on_finished
        self.total = total
        self.study_name = study_name
        self.started = time.perf_counter()
        self.ledger = TrialLedger(study)
        self.tally = StatusTally(spec)
        self.known: list[TrialOutcome] = []  # finished trials reported so far
        self._read_fresh()
        # a resumed search keeps these; its interrupted trials are retried (and counted then)
        self.done_before = sum(o.reason_kind != Reason.INTERRUPTED for o in self.known)
        self.written = 0.0  # perf_counter() of the last running summary
        self.took = 0.0  # and how long writing it took

    def outcomes(self) -> list[TrialOutcome]:
        trials = self.study.get_trials(deepcopy=False)
        return [o for o in (outcome_of(t, self.decode) for t in trials) if o is not None]

    def _read_fresh(self) -> list[TrialOutcome]:
        """Outcomes of the trials that finished since the last look, tallied."""
        self.ledger.refresh()
        fresh = [outcome_of(t, self.decode) for t in self.ledger.finished_since()]
        fresh = [o for o in fresh if o is not None]
        self.known.extend(fresh)
        for outcome in fresh:
            if outcome.number not in self.ledger.replaced:
                self.tally.add(outcome)
        for number in [n for n in self.ledger.replaced if n in self.tally.counted]:
            self.tally.remove(number)
        return fresh

    def refresh(self) -> None:
        fresh = self._read_fresh()
        if not fresh:
            return
        for outcome in fresh:
            last = outcome is fresh[-1]
            self.on_finished(outcome, self.status() if last else None)
        now = time.perf_counter()
        if now - self.written >= max(SUMMARY_INTERVAL, SUMMARY_SHARE * self.took):
            try:
                write_summary(
                    self.run, self.spec, self.known, RunState.RUNNING, self.started, self.study_name
                )
            except OSError as exc:
                if is_disk_full(exc):
                    raise DiskFull(str(self.run.summary)) from None
                raise
            self.written = time.perf_counter()
            self.took = self.written - now

    def status(self) -> SearchStatus:
        """Counted against the budget: a trial replaced by its retry counts once, as the retry."""
        elapsed = time.perf_counter() - self.started
        return self.tally.status(self.total(), elapsed, self.done_before)

    def write(
        self,
        state: RunState,
        final: FinalEvaluation | None = None,
        data: Dataset | None = None,
    ) -> dict[str, Any]:
        """The summary from every trial in the study now (the end of a run, or a stop)."""
        return write_summary(
            self.run, self.spec, self.outcomes(), state, self.started, self.study_name, final, data
        )
