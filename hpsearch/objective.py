"""One trial or one stack of trials: apply sampled params to the spec, train, and write each
trial's `trials/<n>/` folder."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpsearch.data import Dataset, Split
from hpsearch.errors import InputError
from hpsearch.model import build_mlp
from hpsearch.outcome import Reason, TrialOutcome, TrialState
from hpsearch.runs import RunFolder, append_jsonl, write_json
from hpsearch.space import apply_params
from hpsearch.spec import Spec
from hpsearch.stacked import train_stack
from hpsearch.train import (
    EpochCallback,
    TrainResult,
    prefixed,
    resolve_device,
    score_split,
    train_model,
)

# Told each epoch's record of trial `number` (and rescue events); True stops that trial (pruned).
TrialCallback = Callable[[int, dict[str, Any]], bool | None]


def trial_seed(spec_seed: int, number: int) -> int:
    """A trial's torch seed, derived from the spec's seed and the trial number."""
    return int(np.random.SeedSequence([spec_seed, number]).generate_state(1)[0])


def objective_value(spec: Spec, metrics: dict[str, float]) -> float | None:
    value = metrics.get(spec.objective.metric)
    return value if value is not None and math.isfinite(value) else None


def _begin(run: RunFolder, number: int, params: dict[str, Any], spec: Spec) -> TrialOutcome:
    """The trial's folder with its params and an empty metrics file; failed until it finishes."""
    seed = trial_seed(spec.seed, number)
    folder = run.trial(number)
    folder.root.mkdir(parents=True, exist_ok=True)
    write_json(folder.params, {"number": number, "seed": seed, "params": params})
    folder.metrics.write_text("", encoding="utf-8")
    return TrialOutcome(number, TrialState.FAILED, None, params, seed)


def _logged(run: RunFolder, number: int, on_epoch: TrialCallback | None) -> EpochCallback:
    """The training loop's callback for trial `number`: each record goes to the trial's
    metrics.jsonl, then to the caller's callback."""
    path = run.trial(number).metrics

    def log_epoch(record: dict[str, Any]) -> bool:
        append_jsonl(path, record)
        return bool(on_epoch(number, record)) if on_epoch is not None else False

    return log_epoch


def _failure_reason(exc: BaseException, folder: Path) -> str:
    """Why a trial failed, in the words of the summary: oom, disk: ..., error: ..."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return Reason.OOM.value
    if isinstance(exc, OSError):
        return Reason.DISK.detailed(f"{exc.strerror or exc} ({exc.filename or folder})")
    return Reason.ERROR.detailed(f"{type(exc).__name__}: {exc}")


def _settle(
    spec: Spec, run: RunFolder, outcome: TrialOutcome, result: TrainResult, stack: int = 1
) -> None:
    """Copy a finished training into the outcome and save the model."""
    if result.state != TrialState.FAILED:
        torch.save(result.model.state_dict(), run.trial(outcome.number).model)
    outcome.state, outcome.reason = TrialState(result.state), result.reason
    outcome.metrics = result.metrics
    outcome.best_epoch = result.best_epoch
    outcome.epochs_run = result.epochs_run
    outcome.stopped_early = result.stopped_early
    outcome.value = objective_value(spec, result.metrics)
    outcome.stack = stack


def _close(run: RunFolder, outcome: TrialOutcome, started: float) -> TrialOutcome:
    outcome.seconds = time.perf_counter() - started
    with contextlib.suppress(OSError):  # the study keeps the outcome even if this write fails
        write_json(run.trial(outcome.number).result, outcome.to_json())
    return outcome


def run_trial(
    spec: Spec,
    data: Dataset,
    run: RunFolder,
    number: int,
    params: dict[str, Any],
    on_epoch: TrialCallback | None = None,
    device: torch.device | None = None,
    rescue: bool = False,
) -> TrialOutcome:
    """Train trial `number` with `params` applied, writing params, per-epoch metrics and result.

    A trial's own failure (divergence, an exception, out of memory, a disk that refuses its
    files) fails that trial with a reason; it never ends the search.
    """
    started = time.perf_counter()
    seed = trial_seed(spec.seed, number)
    outcome = TrialOutcome(number, TrialState.FAILED, None, params, seed)
    try:
        outcome = _begin(run, number, params, spec)
        result = train_model(
            apply_params(spec, params),
            data,
            seed,
            on_epoch=_logged(run, number, on_epoch),
            device=device,
            rescue=rescue,
        )
        _settle(spec, run, outcome, result)
    except InputError:
        raise
    except Exception as exc:
        outcome.reason = _failure_reason(exc, run.trial(number).root)
    return _close(run, outcome, started)


def run_stack(
    spec: Spec,
    data: Dataset,
    run: RunFolder,
    proposals: list[tuple[int, dict[str, Any]]],
    on_epoch: TrialCallback | None = None,
    device: torch.device | None = None,
    rescue: bool = False,
) -> list[TrialOutcome]:
    """Train same-shape trials as one stacked model; each gets its folder and outcome exactly as
    `run_trial` gives it. A fault in the stack (out of memory, say) sends its trials through
    `run_trial` one at a time, so no trial is lost to its neighbours. A single trial goes
    straight to `run_trial` (the only path with panda's `rescue`)."""
    if len(proposals) == 1:
        (number, params) = proposals[0]
        return [run_trial(spec, data, run, number, params, on_epoch, device, rescue)]
    started = time.perf_counter()
    try:
        outcomes = [_begin(run, number, params, spec) for number, params in proposals]
        results = train_stack(
            [apply_params(spec, params) for _, params in proposals],
            data,
            [outcome.seed for outcome in outcomes],
            [_logged(run, number, on_epoch) for number, _ in proposals],
            device=device,
        )
        for outcome, result in zip(outcomes, results, strict=True):
            _settle(spec, run, outcome, result, stack=len(proposals))
    except InputError:
        raise
    except Exception as exc:
        if isinstance(exc, torch.cuda.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return [
            run_trial(spec, data, run, number, params, on_epoch, device)
            for number, params in proposals
        ]
    return [_close(run, outcome, started) for outcome in outcomes]


@dataclass
class FinalEvaluation:
    """The best trial scored after the search: test metrics and per-group errors."""

    test: dict[str, float]
    groups: dict[str, dict[str, float | None]] | None


def _group_subset(split: Split, label: str) -> Split:
    mask = split.group == label
    weight = None if split.weight is None else split.weight[mask]
    return Split(split.X[mask], split.y[mask], weight, split.group[mask])


def evaluate_best(
    spec: Spec, data: Dataset, run: RunFolder, outcome: TrialOutcome
) -> FinalEvaluation:
    """Load the best trial's weights (weights_only) and score them on the test split, once,
    and on each group's train and dev rows (data mismatch)."""
    trial_spec = apply_params(spec, outcome.params)
    device = resolve_device(spec.device)
    model = build_mlp(trial_spec.model, data.n_features, data.n_outputs).to(device)
    state = torch.load(run.trial(outcome.number).model, map_location=device, weights_only=True)
    model.load_state_dict(state)
    test_split = data.splits["test"]
    test = prefixed("test", score_split(model, trial_spec, data, test_split, device))
    groups = None
    if data.splits["train"].group is not None:
        labels = sorted({str(g) for split in data.splits.values() for g in split.group})
        groups = {}
        for label in labels:
            errors: dict[str, float | None] = {}
            for name in ("train", "dev"):
                subset = _group_subset(data.splits[name], label)
                metrics = (
                    score_split(model, trial_spec, data, subset, device) if len(subset) else {}
                )
                errors[f"{name}_error"] = metrics.get("error")
            groups[label] = errors
    return FinalEvaluation(test, groups)


def score_best(spec: Spec, data: Dataset, run: RunFolder, best: TrialOutcome) -> FinalEvaluation:
    """Finishing a run: the best trial on the test split (once) and per group. A best trial that
    trained on another machine (its weights are not here) is trained again first, from its
    recorded seed: a trial's seed derives from the spec and its number."""
    if not run.trial(best.number).model.exists():
        run_trial(spec, data, run, best.number, best.params)
    return evaluate_best(spec, data, run, best)
