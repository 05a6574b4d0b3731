"""The run folder: the only module that knows its layout (see DESIGN.md, "Run folder")."""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hpsearch.errors import InputError

DEFAULT_RUNS_DIR = Path("runs")
_STAMP = "%Y%m%d-%H%M%S"


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder. Reading a property never creates anything."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def env(self) -> Path:
        return self.root / "env.json"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def study_log(self) -> Path:
        return self.root / "study.log"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def rounds(self) -> Path:
        """Each search round's space and trial target (a copy of the study's record)."""
        return self.root / "rounds.json"

    @property
    def improve_spec(self) -> Path:
        """The commented spec `hpsearch improve` wrote for this run (one round of a chain)."""
        return self.root / "improve-spec.yaml"

    @property
    def improve(self) -> Path:
        """The `hpsearch improve` chain up to this run: rounds, changes, dev errors."""
        return self.root / "improve.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def ask_lock(self) -> Path:
        """The file lock workers on this machine take to count trials and ask for the next."""
        return self.root / ".ask.lock"

    @property
    def owner_lock(self) -> Path:
        """Locked (flock) by the process that runs or resumes the run, for as long as it lives:
        a second resumer is refused, and a run whose owner is gone is known to have stopped."""
        return self.root / ".owner"

    @property
    def stop_file(self) -> Path:
        """Present while the run is stopping: workers start no new trial, no new round begins."""
        return self.root / ".stop"

    def stop_requested(self) -> bool:
        return self.stop_file.exists()

    def request_stop(self) -> None:
        self.stop_file.touch()

    def clear_stop(self) -> None:
        self.stop_file.unlink(missing_ok=True)

    @property
    def trials_dir(self) -> Path:
        return self.root / "trials"

    @property
    def reruns_dir(self) -> Path:
        """`hpsearch rerun` writes each re-trained trial under here."""
        return self.root / "reruns"

    def trial(self, number: int) -> TrialFolder:
        return TrialFolder(self.trials_dir / str(number))

    def trial_numbers(self) -> list[int]:
        if not self.trials_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.trials_dir.iterdir() if p.name.isdigit())


@dataclass(frozen=True)
class TrialFolder:
    root: Path

    @property
    def params(self) -> Path:
        return self.root / "params.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def checkpoint(self) -> Path:
        """The training state of a trial still training (or stopped mid-way); removed when the
        trial finishes."""
        return self.root / "checkpoint.pt"


def create_run(runs_dir: Path, name: str, now: datetime | None = None) -> RunFolder:
    """Make a new, empty run folder `<runs_dir>/<name>-<YYYYmmdd-HHMMSS>` (suffixed if taken)."""
    stamp = (now or datetime.now()).strftime(_STAMP)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create the runs directory: {exc.strerror}", source=str(runs_dir)
        ) from None
    for attempt in range(1, 1000):
        suffix = "" if attempt == 1 else f"-{attempt}"
        root = runs_dir / f"{name}-{stamp}{suffix}"
        try:
            root.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:  # read-only, no permission, not a real folder (/proc/1)
            raise InputError(
                f"cannot create a run folder here: {exc.strerror or exc}", source=str(runs_dir)
            ) from None
        return RunFolder(root)
    raise InputError("too many runs with the same name and time", source=str(runs_dir))


def list_runs(runs_dir: Path) -> list[RunFolder]:
    """Run folders under `runs_dir`, oldest first (by the time stamp in their names)."""
    if not runs_dir.is_dir():
        return []
    folders = [RunFolder(p) for p in runs_dir.iterdir() if p.is_dir() and is_run(RunFolder(p))]
    return sorted(folders, key=lambda f: (_made(f), f.name))


def is_run(folder: RunFolder) -> bool:
    """A run folder: its spec, or (when the spec was deleted) its summary or journal."""
    return any(p.is_file() for p in (folder.spec, folder.summary, folder.study_log))


def _made(folder: RunFolder) -> float:
    for path in (folder.spec, folder.summary, folder.study_log):
        if path.is_file():
            return path.stat().st_mtime
    return 0.0


def latest_run(runs_dir: Path) -> RunFolder | None:
    runs = list_runs(runs_dir)
    return runs[-1] if runs else None


def find_run(
    runs_dir: Path, named: str, key: str = "--resume", by_spec_name: bool = False
) -> RunFolder:
    """`RUN|latest` (for `key`): a run folder by path, by name under `runs_dir`, or the newest;
    `by_spec_name` also takes a spec's name for its newest finished run."""
    if named == "latest":
        run = latest_run(runs_dir)
        if run is None:
            raise InputError(f"{key} latest: no run folder under {runs_dir}")
        return run
    for candidate in (Path(named), runs_dir / named):
        if candidate.is_dir() and is_run(RunFolder(candidate)):
            return RunFolder(candidate)
    if by_spec_name:  # run folders are NAME-YYYYmmdd-HHMMSS[-k]
        stamped = re.compile(rf"^{re.escape(named)}-\d{{8}}-\d{{6}}(-\d+)?$")
        finished = [r for r in list_runs(runs_dir) if stamped.match(r.name) and r.summary.is_file()]
        if finished:
            return finished[-1]
        raise InputError(
            f"{key}: no run folder '{named}' and no finished run of a spec named '{named}' "
            f"(looked in {runs_dir})"
        )
    raise InputError(f"{key}: no run folder '{named}' (looked in {runs_dir})")


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically: readers never see a half-written file."""
    text = json.dumps(payload, indent=2, default=_json_default) + "\n"
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Write bytes atomically (JSON, weights, checkpoints): a reader finds the old file or the
    new one, never a half-written one. The file gets the mode any other file would (mkstemp
    makes it private), so the run folder's files can be shared alike."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.cache
def _umask() -> int:
    # reading the umask means setting it (not thread-safe): once per process, put straight back
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=_json_default) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _json_default(value: Any) -> Any:
    # numpy scalars and paths appear in params and metrics
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# --- the owner of a run -----------------------------------------------------------------------


class RunOwner:
    """An exclusive, advisory lock on a run folder (fcntl.flock on `.owner`), with who holds
    it written inside. The kernel drops it when its process dies, even by SIGKILL, so it is
    never stale."""

    def __init__(self, run: RunFolder, shared: bool = False):
        self.run = run
        self.shared = shared  # `hpsearch worker`s of one study share their machine's folder
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the run, or raise InputError naming the process that has it."""
        import fcntl

        fd = os.open(self.run.owner_lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = owner_of(self.run) or {}
            who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
            since = f" since {holder['started']}" if "started" in holder else ""
            raise InputError(
                f"this run is being run by {who}{since}; wait for it to end, stop it (Ctrl-C), "
                "or follow it with `hpsearch report`",
                source=str(self.run.root),
            ) from None
        record = {"pid": os.getpid(), "host": platform.node(), "started": _now()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock
            self.fd = None

    def __enter__(self) -> RunOwner:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def owner_of(run: RunFolder) -> dict[str, Any] | None:
    """Who holds the run now ({pid, host, started}), or None when no process does."""
    import fcntl

    try:
        fd = os.open(run.owner_lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held (by an owner, or by workers sharing it)
            try:
                return json.loads(os.read(fd, 4096) or b"{}")
            except ValueError:
                return {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")
