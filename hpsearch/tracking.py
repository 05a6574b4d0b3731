"""Optional MLflow tracking (`tracking: {mlflow: URI}`): every finished trial also becomes an
MLflow run, so searches can be compared in the MLflow UI next to other work.

The run folder stays the record of a search; MLflow gets a copy. So tracking never fails a
search: the first error prints one `warning: mlflow: ...` line and tracking stops for the rest
of that search. Only a missing MLflow (the `mlflow` extra) is an input error, because the spec
asks for something this install cannot do.

Layout in MLflow: one experiment per search, named after the study (the run folder's name, or
`--study`); in it a parent run named `search` (tag `hpsearch.kind=search`) and one run per
trial, `trial-<n>`, nested under it. A trial run holds the sampled params and the seed, every
epoch of `metrics.jsonl` under the metric's own name (step = epoch), the final model's metrics
as `final/<name>` (the best epoch's weights, as in result.json), state and reason as tags, and
the trial folder's files as artifacts. Reopening the experiment of a resumed search logs only
the trials it does not hold yet.

The store: the spec's URI as MLflow reads it; with `mlflow: null` or `""`, MLflow's own
default: $MLFLOW_TRACKING_URI if set, else `sqlite:///mlflow.db` in the current directory,
where a plain `mlflow ui` finds it. (MLflow 3 refuses the old `./mlruns` file store unless
MLFLOW_ALLOW_FILE_STORE=true.) A local SQLite store keeps its artifacts beside it, in
`mlartifacts/<experiment>/`, rather than in MLflow's default `./mlruns` of whatever the
current directory is.

MLflow is imported only here, and only when a spec asks for tracking. The client is an
`MlflowClient` bound to the URI: the global tracking URI and active run of MLflow's fluent API
are never touched, so nothing leaks between searches (or tests) in one process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpsearch.errors import InputError
from hpsearch.outcome import Reason, TrialOutcome, TrialState
from hpsearch.runs import RunFolder, TrialFolder
from hpsearch.spec import Spec
from hpsearch.storage import mask_url

DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACTS_DIR = "mlartifacts"  # beside a local SQLite store
NOT_INSTALLED = "tracking.mlflow: MLflow is not installed; pip install 'hpsearch[mlflow]'"

KIND_TAG = "hpsearch.kind"  # search | trial
TRIAL_TAG = "hpsearch.trial"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests trial runs under the search run
FINAL_PREFIX = "final/"

# MLflow's limits on one log_batch call (mlflow.utils.validation)
_BATCH_ENTITIES = 1000
_BATCH_PARAMS_TAGS = 100
_TAG_LENGTH = 5000  # MLflow truncates at 8000; stay well below
_TERMINAL = ("FINISHED", "FAILED", "KILLED")


def resolve_uri(uri: str | None) -> str:
    """The tracking URI to use: the spec's, else $MLFLOW_TRACKING_URI, else a SQLite store in
    the current directory. A relative SQLite path is made absolute, so the store and its
    artifacts stay where they were asked for even if the current directory changes."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    db = _sqlite_path(uri)
    if db is None or db.is_absolute():
        return uri
    query = uri.partition("?")[1:]
    return "sqlite:///" + str(Path.cwd() / db) + "".join(query)


def open_tracker(spec: Spec, run: RunFolder, study_name: str) -> MlflowTracker | None:
    """The tracker a spec asks for, or None when it has no `tracking:` section."""
    if spec.tracking is None:
        return None
    return MlflowTracker.open(spec.tracking.mlflow, run, spec, study_name)


class MlflowTracker:
    """Logs one search to MLflow: a run per finished trial, then the search's summary.

    Every public method is safe to call from any thread of the process that opened it (calls
    are serialized), never raises for MLflow's sake, and does nothing once tracking has stopped
    (after an error, or after `finish`).
    """

    def __init__(
        self,
        run: RunFolder,
        uri: str,
        client: Any = None,
        experiment_id: str | None = None,
        search_run_id: str | None = None,
        logged: set[int] | None = None,
    ):
        self.run = run
        self.uri = uri
        self.experiment_id = experiment_id
        self.search_run_id = search_run_id
        self.trial_run_ids: dict[int, str] = {}  # trials logged by this tracker
        self._client = client
        self._logged = logged if logged is not None else set()
        self._lock = threading.Lock()

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, uri: str | None, run: RunFolder, spec: Spec, study_name: str) -> MlflowTracker:
        """Connect to the store and open (or, for a resumed search, reopen) the search's
        experiment and parent run. Raises InputError only when MLflow is not installed; any
        other failure warns and returns a tracker that logs nothing."""
        _import_mlflow()
        resolved = resolve_uri(uri)
        tracker = cls(run, resolved)
        try:
            with _quiet_mlflow():
                tracker._connect(spec, study_name)
        except Exception as exc:
            tracker._stop("cannot open the tracking store", exc)
        return tracker

    def _connect(self, spec: Spec, study_name: str) -> None:
        from mlflow import MlflowClient

        db = _sqlite_path(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)  # SQLite makes the file, not folders
        client = MlflowClient(tracking_uri=self.uri)
        experiment = client.get_experiment_by_name(study_name)
        if experiment is None:
            location = None
            if db is not None:
                location = (db.parent / ARTIFACTS_DIR / study_name).resolve().as_uri()
            tags = {"hpsearch.run_folder": str(self.run.root.resolve()), "hpsearch.spec": spec.name}
            try:
                experiment_id = client.create_experiment(
                    study_name, artifact_location=location, tags=tags
                )
            except Exception:  # another worker of the same study created it first
                experiment = client.get_experiment_by_name(study_name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment_id)
        search_run_id = None
        logged: set[int] = set()
        for found in _all_runs(client, experiment_id):
            tags = found.data.tags
            if tags.get(KIND_TAG) == "search" and search_run_id is None:
                search_run_id = found.info.run_id
            elif tags.get(KIND_TAG) == "trial" and tags.get(TRIAL_TAG, "").isdigit():
                if found.info.status in _TERMINAL:
                    logged.add(int(tags[TRIAL_TAG]))
                else:  # cut short while it was being logged: log it again
                    client.delete_run(found.info.run_id)
        if search_run_id is None:
            search_run_id = self._create_search_run(client, experiment_id, spec, study_name)
        else:
            client.update_run(search_run_id, status="RUNNING")
        self._client, self.experiment_id = client, experiment_id
        self.search_run_id, self._logged = search_run_id, logged

    def _create_search_run(
        self, client: Any, experiment_id: str, spec: Spec, study_name: str
    ) -> str:
        from mlflow.entities import Param

        tags = {
            KIND_TAG: "search",
            "hpsearch.study": study_name,
            "hpsearch.run_folder": str(self.run.root.resolve()),
        }
        created = client.create_run(experiment_id, run_name="search", tags=tags)
        search = spec.search
        params = {
            "name": spec.name,
            "seed": spec.seed,
            "data.source": spec.data.source,
            "objective.metric": spec.objective.metric,
            "objective.direction": spec.objective.resolved_direction,
            "search.strategy": search.strategy if search else None,
            "search.mode": search.mode if search else None,
            "search.trials": search.trials if search else None,
            "search.space": sorted(search.space) if search else None,
        }
        client.log_batch(
            created.info.run_id,
            params=[Param(k, _param_text(v)) for k, v in params.items() if v is not None],
        )
        return created.info.run_id

    # --- logging ------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether calls still log anything (false after an error or after `finish`)."""
        return self._client is not None

    def trial_finished(self, outcome: TrialOutcome) -> None:
        """Log one finished trial (complete, pruned or failed) as an MLflow run. Call it once
        the trial's folder is complete (result.json written); a trial the experiment already
        holds (a resumed search) is not logged twice."""
        with self._lock:
            if self._client is None or outcome.number in self._logged:
                return
            try:
                with _no_url_printing():
                    self._log_trial(outcome)
            except Exception as exc:
                self._stop(f"cannot log trial {outcome.number}", exc)

    def _log_trial(self, outcome: TrialOutcome) -> None:
        from mlflow.entities import Metric, Param

        client = self._client
        folder = self.run.trial(outcome.number)
        now = _millis()
        history, events = _read_metrics(folder)
        tags = {
            KIND_TAG: "trial",
            TRIAL_TAG: str(outcome.number),
            PARENT_TAG: self.search_run_id,
            "hpsearch.state": str(outcome.state),
            "hpsearch.stopped_early": str(outcome.stopped_early).lower(),
        }
        if outcome.reason is not None:
            tags["hpsearch.reason"] = str(outcome.reason)[:_TAG_LENGTH]
        for key in ("stack", "resumed_from", "rerank_of"):
            value = getattr(outcome, key)
            if value is not None and value != 1:  # stack 1: trained alone
                tags[f"hpsearch.{key}"] = str(value)
        events = events or list(getattr(outcome, "rescues", None) or [])
        if events:
            tags["hpsearch.events"] = json.dumps(events, default=str)[:_TAG_LENGTH]
        started = now - int(max(outcome.seconds, 0.0) * 1000)
        created = client.create_run(
            self.experiment_id, start_time=started, run_name=f"trial-{outcome.number}", tags=tags
        )
        run_id = created.info.run_id
        values = {_key(k): _param_text(v) for k, v in outcome.params.items()}
        values.setdefault("seed", str(outcome.seed))
        params = [Param(k, v) for k, v in values.items()]
        metrics = [
            Metric(key, value, now, step)
            for step, record in history
            for key, value in _numbers(record, skip=("epoch",))
        ]
        final = [
            Metric(FINAL_PREFIX + key, value, now, outcome.best_epoch)
            for key, value in _numbers(outcome.metrics)
        ]
        summary = {
            "objective": outcome.value,
            "best_epoch": outcome.best_epoch,
            "epochs_run": outcome.epochs_run,
            "trial_seconds": outcome.seconds,
        }
        final += [Metric(k, v, now, 0) for k, v in _numbers(summary)]
        for batch in _batches(metrics + final, params):
            client.log_batch(run_id, **batch)
        for path in _artifact_files(folder):
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, status=_status(outcome), end_time=now)
        self._logged.add(outcome.number)
        self.trial_run_ids[outcome.number] = run_id

    def finish(self, summary: dict[str, Any]) -> None:
        """Log the search's summary on its parent run (the best trial, its metrics, counts,
        summary.json and spec.yaml) and close it; later calls log nothing."""
        with self._lock:
            if self._client is None:
                return
            try:
                with _no_url_printing():
                    self._log_summary(summary)
            except Exception as exc:
                self._stop("cannot log the search summary", exc)
            self._client = None

    def _log_summary(self, summary: dict[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        client, run_id, now = self._client, self.search_run_id, _millis()
        best = summary.get("best") or {}
        values: dict[str, Any] = {
            "best/objective": best.get("value"),
            "wall_seconds": summary.get("wall_seconds"),
        }
        values.update({f"best/{k}": v for k, v in (best.get("metrics") or {}).items()})
        values.update({f"trials/{k}": v for k, v in (summary.get("counts") or {}).items()})
        metrics = [Metric(k, v, now, 0) for k, v in _numbers(values)]
        tags = {"hpsearch.state": str(summary.get("state"))}
        if best.get("trial") is not None:
            tags["hpsearch.best_trial"] = str(best["trial"])
        diagnosis = summary.get("diagnosis") or {}
        for key in ("verdict", "focus"):
            if diagnosis.get(key) is not None:
                tags[f"hpsearch.{key}"] = str(diagnosis[key])[:_TAG_LENGTH]
        for batch in _batches(metrics, [], [RunTag(k, v) for k, v in tags.items()]):
            client.log_batch(run_id, **batch)
        best_run = self._trial_run_id(best.get("trial"))
        if best_run is not None:
            client.set_tag(best_run, "hpsearch.best", "true")
        client.log_dict(run_id, _json_safe(summary), "summary.json")
        for path in (self.run.spec, self.run.rounds, self.run.env):
            if path.is_file():
                client.log_artifact(run_id, str(path))
        state = summary.get("state")
        status = "KILLED" if state == "interrupted" else "FINISHED"
        client.set_terminated(run_id, status=status, end_time=now)

    def _trial_run_id(self, number: Any) -> str | None:
        if not isinstance(number, int):
            return None
        if number in self.trial_run_ids:
            return self.trial_run_ids[number]
        found = self._client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIAL_TAG}` = '{number}' and tags.`{KIND_TAG}` = 'trial'",
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def _stop(self, what: str, exc: BaseException) -> None:
        """Stop tracking after the first failure, saying so: the only warning a tracker prints,
        since nothing is tried once it has stopped."""
        self._client = None
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        text = text.replace(self.uri, mask_url(self.uri))
        if len(text) > 300:
            text = text[:297] + "..."
        print(
            f"warning: mlflow: {what} ({mask_url(self.uri)}): {type(exc).__name__}: {text}; "
            "no more of this search is logged to MLflow",
            file=sys.stderr,
        )


# --- helpers ----------------------------------------------------------------------------------


def _import_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError as exc:
        if exc.name in (None, "mlflow"):  # None: sys.modules['mlflow'] = None
            raise InputError(NOT_INSTALLED) from None
        raise InputError(f"tracking.mlflow: MLflow cannot be imported: {exc}") from None


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a local SQLite URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Keep the INFO lines of MLflow and its migrations ('Creating initial MLflow database
    tables...') off the terminal while the store opens; warnings still show."""
    levels = {logging.getLogger(name): 0 for name in ("mlflow", "alembic")}
    for logger in levels:
        levels[logger] = logger.level
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        yield
    finally:
        for logger, level in levels.items():
            logger.setLevel(level)


@contextlib.contextmanager
def _no_url_printing() -> Iterator[None]:
    """A tracking server's client prints '🏃 View run ... at: URL' to stdout for every
    finished run; that would break into the progress display once per trial."""
    key = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    before = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _all_runs(client: Any, experiment_id: str) -> Iterator[Any]:
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _read_metrics(folder: TrialFolder) -> tuple[list[tuple[int, dict[str, Any]]], list[Any]]:
    """(step, record) for each epoch of metrics.jsonl, and its event records (rescues, ...).
    An unreadable line (a write cut short) is skipped."""
    history: list[tuple[int, dict[str, Any]]] = []
    events: list[Any] = []
    if not folder.metrics.is_file():
        return history, events
    for index, line in enumerate(folder.metrics.read_text(encoding="utf-8").splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if "event" in record:
            events.append(record)
            continue
        step = record.get("epoch")
        history.append((step if isinstance(step, int) else index + 1, record))
    return history, events


def _numbers(record: dict[str, Any], skip: tuple[str, ...] = ()) -> Iterator[tuple[str, float]]:
    """The numeric entries of a record, as floats (NaN and infinities included: MLflow keeps
    them, and a diverged trial's loss is one)."""
    for key, value in record.items():
        if key in skip or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        yield _key(str(key)), float(value)


def _key(name: str) -> str:
    """A metric or param name MLflow accepts everywhere (Windows included): other characters
    would fail the whole batch."""
    return re.sub(r"[^/\w.\- ]", "_", name)


def _param_text(value: Any) -> str:
    """A param value as MLflow stores it: text. JSON for everything but strings, so lists and
    booleans read as in the spec ([128, 64], true)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _batches(
    metrics: list[Any], params: list[Any], tags: list[Any] | None = None
) -> Iterator[dict[str, list[Any]]]:
    """log_batch arguments within MLflow's limits per call: 1000 entities, 100 params and
    100 tags. One trial of up to ~1000 metric values is one call."""
    params, tags, metrics = list(params), list(tags or []), list(metrics)
    while params or tags or metrics:
        batch_params = params[:_BATCH_PARAMS_TAGS]
        batch_tags = tags[:_BATCH_PARAMS_TAGS]
        room = _BATCH_ENTITIES - len(batch_params) - len(batch_tags)
        batch_metrics = metrics[:room]
        del params[: len(batch_params)], tags[: len(batch_tags)], metrics[: len(batch_metrics)]
        yield {"metrics": batch_metrics, "params": batch_params, "tags": batch_tags}


def _artifact_files(folder: TrialFolder) -> list[Path]:
    """The trial folder's files: params, metrics, result and weights. Not a checkpoint (it
    exists only mid-training) nor hidden temporary files."""
    if not folder.root.is_dir():
        return []
    return sorted(
        p
        for p in folder.root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name != folder.checkpoint.name
    )


def _status(outcome: TrialOutcome) -> str:
    if outcome.state == TrialState.COMPLETE:
        return "FINISHED"
    if outcome.state == TrialState.PRUNED:
        return "KILLED"  # stopped on purpose by the pruner
    if outcome.reason_kind in (Reason.INTERRUPTED, Reason.SKIPPED):
        return "KILLED"
    return "FAILED"


def _json_safe(value: Any) -> Any:
    """The summary as strict JSON (NaN and infinities as null), for log_dict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _millis() -> int:
    return int(time.time() * 1000)


class TrackingProgress:
    """A progress sink that also logs each finished trial to MLflow (in the planner's process,
    where every trial's outcome arrives, from its own workers or other machines)."""

    def __init__(self, inner: Any, tracker: MlflowTracker):
        self.inner, self.tracker = inner, tracker
        self.follows_workers = inner.follows_workers

    def search_started(self, status: Any) -> None:
        self.inner.search_started(status)

    def trial_started(self, number: int, params: dict[str, Any], epochs: int) -> None:
        self.inner.trial_started(number, params, epochs)

    def epoch(self, number: int, record: dict[str, Any]) -> None:
        self.inner.epoch(number, record)

    def trial_finished(self, outcome: TrialOutcome, status: Any = None) -> None:
        self.inner.trial_finished(outcome, status)
        self.tracker.trial_finished(outcome)

    def paused(self) -> contextlib.AbstractContextManager[None]:
        return self.inner.paused()

    def close(self) -> None:
        self.inner.close()
