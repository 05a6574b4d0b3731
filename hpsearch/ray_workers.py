"""Caviar workers as Ray tasks: `hpsearch run SPEC --on ray`.

Ray schedules the processes; everything else is hpsearch's own: each task runs the same trial
loop as a local worker process, against the same study (a database, or on one machine the
journal), so the budget lock, heartbeats, checkpoints and the live summary work unchanged.
The planner stays in the process that ran `hpsearch run`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from hpsearch.data import Dataset
from hpsearch.errors import DiskFull, InputError
from hpsearch.processes import PlannedDevice
from hpsearch.progress import SilentProgress
from hpsearch.spec import Spec
from hpsearch.storage import DatabaseUnreachable
from hpsearch.study import quiet_optuna
from hpsearch.workers import DATABASE_EXIT, DISK_FULL_EXIT, STOP_GRACE, WorkerTask, trial_loop

ON_CHOICES = "local, ray, ray:auto, ray:HOST:PORT or ray://HOST:PORT"


@dataclass(frozen=True)
class RayCluster:
    """The Ray cluster a run's workers go to, as it was when the run connected."""

    address: str  # as given ("" for Ray's default: RAY_ADDRESS, one running here, or a new one)
    where: str  # the cluster's own address (its GCS), as connected
    nodes: int
    cpus: int
    gpus: int

    def slots(self, device: PlannedDevice) -> int:
        """One worker per GPU for a CUDA spec, else one per CPU."""
        return max(1, self.gpus if device.type == "cuda" else self.cpus)

    def describe(self) -> str:
        return (
            f"{self.where}: {self.nodes} node{'s' * (self.nodes != 1)}, {self.cpus} CPUs, "
            f"{self.gpus} GPUs"
        )


def parse_on(text: str | None) -> str | None:
    """`--on`: None to run workers as local processes, else the Ray address to connect to
    ("" for Ray's default: the cluster RAY_ADDRESS names, or a new local one)."""
    if text is None or text == "local":
        return None
    if text == "ray":
        return ""
    if text.startswith("ray://"):
        return text
    if text.startswith("ray:") and text[4:]:
        return text[4:]
    raise InputError(f"--on: {text!r} is not one of {ON_CHOICES}")


def _host_port(address: str) -> tuple[str, int] | None:
    host, _, port = address.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def _auth_hint() -> str:
    """Ray sends its token to a named address only when asked to: a cluster that wants one
    refuses a client that has not set RAY_AUTH_MODE, and says so only in its own logs."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return ""
    return (
        " (if the cluster uses token authentication, set RAY_AUTH_MODE=token; Ray reads the "
        "token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
    )


def connect(address: str, spec: Spec, device: PlannedDevice) -> RayCluster:
    """Connect this process to Ray (before any run folder exists, so a wrong address is an
    input error, not a half-written run) and check the cluster can run this spec."""
    if spec.search is None or spec.search.mode == "panda":
        raise InputError(
            "--on ray: runs caviar workers; a panda search or a single model trains here"
        )
    try:
        import ray
    except ImportError:
        raise InputError("--on ray needs Ray: pip install 'hpsearch[ray]'") from None
    target = _host_port(address.removeprefix("ray://"))
    if target is not None:  # Ray itself may wait minutes for an address nobody answers at
        try:
            socket.create_connection(target, timeout=3).close()
        except OSError as exc:
            raise InputError(f"--on: no Ray cluster answers at {address} ({exc})") from None
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if not address:
        options["include_dashboard"] = False
    try:
        ray.init(address=address or None, ignore_reinit_error=True, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(
            f"--on: cannot connect to Ray at {address or 'RAY_ADDRESS'}: {exc}{_auth_hint()}"
        ) from None
    resources = ray.cluster_resources()
    cluster = RayCluster(
        address,
        where=ray.get_runtime_context().gcs_address or address,
        nodes=sum(1 for node in ray.nodes() if node.get("Alive")),
        cpus=int(resources.get("CPU", 0)),
        gpus=int(resources.get("GPU", 0)),
    )
    if spec.storage is None and (cluster.nodes > 1 or address.startswith("ray://")):
        raise InputError(
            f"--on ray: the workers of {cluster.describe()} cannot all reach this machine's "
            "journal file; give a database with --storage"
        )
    if device.type == "cuda" and cluster.gpus == 0:
        raise InputError(f"device: {spec.device} needs GPUs, and {cluster.describe()} has none")
    return cluster


def _ray_worker(task: WorkerTask, data: Dataset) -> int:
    """One Ray task: the trial loop of a local worker process; its exit code."""
    task = replace(task, data=data)
    import torch

    torch.set_num_threads(task.threads or 1)
    try:
        with quiet_optuna():
            trial_loop(task, SilentProgress())
    except DiskFull as full:
        print(f"worker: {full}", file=sys.stderr)
        return DISK_FULL_EXIT
    except DatabaseUnreachable:
        return DATABASE_EXIT
    return 0


def run_ray_tasks(
    tasks: list[WorkerTask],
    device: PlannedDevice,
    on_tick: Callable[[], None],
    poll: float = 0.25,
) -> list[int | None]:
    """One Ray task per worker task (a CPU each, and a GPU each for CUDA), watched until all
    end; their exit codes, as run_processes returns them (1 for a task that raised or whose
    process died: its error is printed). On Ctrl-C the tasks are cancelled, which stops them
    like Ctrl-C stops a local worker (their trials are recorded as interrupted), and after
    STOP_GRACE seconds ended by force."""
    import ray

    gpus = 1 if device.type == "cuda" else 0
    # hpsearch's own settings (HPSEARCH_*) travel with the tasks, as to local workers; the
    # rest of this machine's environment (paths, devices) is not the nodes' business
    settings = {k: v for k, v in os.environ.items() if k.startswith("HPSEARCH_")}
    remote = ray.remote(_ray_worker).options(
        num_cpus=1,
        num_gpus=gpus,
        max_retries=0,
        runtime_env={"env_vars": settings} if settings else None,
    )
    data = ray.put(tasks[0].data)  # once, shared by every task through the object store
    refs = []
    for task in tasks:
        spec = task.spec
        if gpus:  # Ray shows each task its own GPU as cuda:0
            spec = spec.model_copy(update={"device": "cuda"})
        # a Ray worker's working directory is not ours: the run folder by its full path
        root = task.run_root.resolve()
        task = replace(task, spec=spec, data=None, gpu=None, threads=1, run_root=root)
        refs.append(remote.remote(task, data))
    codes: dict[Any, int] = {}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=poll)
            for ref in ready:
                codes[ref] = _exit_code(ray, ref)
                if codes[ref] in (DISK_FULL_EXIT, DATABASE_EXIT):
                    _cancel(ray, pending)  # the others would fail alike
            on_tick()
    except BaseException:
        _cancel(ray, pending)
        raise
    on_tick()
    return [codes.get(ref) for ref in refs]


def _exit_code(ray: Any, ref: Any) -> int:
    try:
        return int(ray.get(ref))
    except ray.exceptions.TaskCancelledError:
        return 130
    except ray.exceptions.RayError as failed:
        print(f"ray worker failed: {failed}", file=sys.stderr)
        return 1


def _cancel(ray: Any, pending: list[Any]) -> None:
    """Ask each task to stop as on Ctrl-C; after STOP_GRACE, end what still runs."""
    for ref in pending:
        ray.cancel(ref)
    deadline = time.time() + STOP_GRACE
    while pending and time.time() < deadline:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.25)
    for ref in pending:
        ray.cancel(ref, force=True)
