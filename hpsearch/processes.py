"""How caviar worker processes start: forked from a server that imported torch and hpsearch once.

A worker started from scratch (multiprocessing's "spawn") imports torch, scikit-learn, Optuna
and hpsearch before its first trial: seconds, paid again by every worker of every round. A
fork server ("forkserver") pays that once, and `prestart` starts it as soon as a run knows it
will want local workers, before the planner's own imports, data and study, so the two overlap;
each worker is then a fork that starts training within milliseconds.

Forking from the server, not from the planner, keeps the workers clear of whatever the planner
holds (threads, open connections, a CUDA context). What a fork does not carry over from the
planner is said by `WorkerContext`: its environment (the server's is the one it started with),
and the planner's death (the server, not the planner, is the workers' parent process).

The planner itself needs torch only to score the best trial at the end: a search on the CPU
starts its workers without importing it (`planned_device` tells the device from the installed
build), and imports it in the background while they train (`warm_up`).

No torch here: the command line calls `prestart` before it imports anything heavy.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import dataclass
from importlib import metadata
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpsearch.spec import SearchSpec

# what every worker needs, imported once in the server: the trial loop and training (torch)
PRELOAD = ["hpsearch.workers", "hpsearch.objective"]


def start_method() -> str:
    """forkserver where the platform has it (Linux, macOS); spawn elsewhere (Windows)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context caviar workers start in."""
    method = start_method()
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def prestart() -> None:
    """Start the fork server now (it imports in the background; returns at once)."""
    if start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    worker_context()  # names what the server preloads
    # a server that cannot start now is started (or its failure reported) by the first worker
    with contextlib.suppress(OSError):
        forkserver.ensure_running()


def prestart_for(spec_path: Path, workers: int | None, mode: str | None, on: str | None) -> None:
    """Prestart the fork server when the spec at `spec_path` (with the command line's
    overrides) will run local caviar workers; a spec that cannot be read is left to the run,
    which reports it."""
    from hpsearch.spec import load_spec

    try:
        search = load_spec(spec_path).search
    except Exception:  # reported, with its line, by the run itself
        return
    if wants_local_workers(search, workers, mode, on):
        prestart()


def wants_local_workers(
    search: SearchSpec | None, workers: int | None, mode: str | None, on: str | None
) -> bool:
    """Whether a search (with the command line's overrides) starts worker processes here:
    caviar, more than one worker, not on Ray (`on`: --on, `local` or None for here)."""
    if search is None or (mode or search.mode) != "caviar" or on not in (None, "local"):
        return False
    count = workers if workers is not None else search.workers
    return count == "auto" or int(count) > 1


def die_with(parent: multiprocessing.process.BaseProcess | None) -> None:
    """In a worker: stop like Ctrl-C (SIGTERM, so its trials are recorded as interrupted) as
    soon as the planner that asked for it dies, even by SIGKILL. A thread waits on the pipe the
    planner holds open; the kernel closes it when the planner dies."""
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="hpsearch-planner-watch", daemon=True).start()


def adopt_environment(environment: dict[str, str]) -> None:
    """In a worker: the planner's environment as it is now, not the fork server's as it was
    when the server started (a variable set since, e.g. HPSEARCH_HEARTBEAT_SECONDS)."""
    if sys.platform != "win32":
        os.environ.clear()
    os.environ.update(environment)


@dataclass(frozen=True)
class PlannedDevice:
    """Where trials train, as the planner needs to know it (`type` and `index`, as
    torch.device has them), without importing torch."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def planned_device(device: str) -> PlannedDevice:
    """The device a spec's `device` means here. `cpu`, and `auto` with a build of torch that
    has no CUDA (its version says `+cpu`), are told without importing torch; otherwise torch
    tells (and a CUDA device asked for where there is none is an input error)."""
    if device == "cpu" or (device == "auto" and _cpu_only_torch()):
        return PlannedDevice("cpu")
    from hpsearch.train import resolve_device

    resolved = resolve_device(device)
    return PlannedDevice(resolved.type, resolved.index)


def _cpu_only_torch() -> bool:
    try:
        return metadata.version("torch").endswith("+cpu")
    except metadata.PackageNotFoundError:
        return False


def warm_up(module: str = "hpsearch.objective") -> None:
    """Import `module` (training and torch) in a background thread: a planner calls this once
    its workers run, so that scoring the best trial at the end finds torch imported."""
    if module not in sys.modules:
        threading.Thread(
            target=importlib.import_module, args=(module,), name="hpsearch-warm-up", daemon=True
        ).start()
