"""The one training loop: K >= 1 same-shape trials as one batched model (a solo trial is K = 1).
No optuna, no files.

An epoch reads top to bottom: set each member's lr, then per batch forward, cost (+ penalties),
backward, clip, step; then evaluate, record, and let each member's stateful helpers decide
(early stopping, panda's rescue; the caller's pruning). Mini-batches index in-memory tensors
with one permutation per epoch (a per-sample DataLoader costs several times more for MLP-sized
work). A member's whole state can be handed to the caller as a checkpoint and trained on from
there later, exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from hpsearch.data import Dataset
from hpsearch.errors import InputError
from hpsearch.metrics import (
    DeviceSplit,
    eval_rows,
    evaluate,
    example_losses,
    on_device,
    predict,
    prefixed,
    split_metrics,
)
from hpsearch.model import MLP, build_mlp
from hpsearch.remedies import input_scale, noise_std, oversampled
from hpsearch.spec import Spec, check_objective, resolve_loss
from hpsearch.stacked import (
    StackedMLP,
    StackedOptimizer,
    clip_gradients,
    column,
    penalties,
    shape_key,
)
from hpsearch.transfer import load_matching

CHECKPOINT_FORMAT = 1  # the layout of a member's state (see `train` and TrainHooks.checkpoint)


@dataclass
class TrainResult:
    model: nn.Module
    state: str  # complete | pruned | failed
    reason: str | None  # diverged | pruned | None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0  # epoch whose weights the model holds (1-based; 0 = none finished)
    epochs_run: int = 0
    stopped_early: bool = False
    metrics: dict[str, float] = field(default_factory=dict)  # train_* and dev_* of the final model


# --- pure helpers -----------------------------------------------------------------------------


def build_model(spec: Spec, data: Dataset) -> MLP:
    """A trial's model, as its weights file is loaded into (with its attribute strengths)."""
    return build_mlp(spec.model, data.n_features, data.n_outputs, input_scale(spec.data, data))


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without CUDA is a clear input error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"device: '{device}' asked for, but CUDA is not available; use auto or cpu"
        )
    return torch.device(device)


def scheduled_lr(base_lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """Learning rate for a 0-based epoch. step: x0.1 each third; exponential: to 1% at the end."""
    if schedule == "none":
        return base_lr
    if schedule == "step":
        return base_lr * 0.1 ** (epoch // max(1, math.ceil(epochs / 3)))
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    if schedule == "exponential":
        return base_lr * 0.01 ** (epoch / epochs)
    raise ValueError(f"unknown lr schedule {schedule!r}")


# --- the loop ---------------------------------------------------------------------------------


def epoch_batches(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    drop_single: bool,
    device: torch.device | None = None,
) -> list[torch.Tensor]:
    """The mini-batches (row indices) of one epoch: a permutation that depends on the spec's seed
    and the epoch only, so every trial (alone or in a stack) sees the same batches."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1)[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(state)))
    batches = list(order.to(device).split(batch_size)) if device else list(order.split(batch_size))
    if drop_single and len(batches[-1]) == 1:
        batches.pop()  # batch norm cannot normalize a single example
    return batches


# --- the loop ---------------------------------------------------------------------------------


@dataclass
class Member:
    """One trial to train: its resolved spec, its seed, and the checkpoint it resumes from."""

    spec: Spec
    seed: int
    resume: dict[str, Any] | None = None  # a state that `TrainHooks.checkpoint` was given

    @property
    def position(self) -> tuple[int, int]:
        """Where training starts: (epoch, batches of it already done); (0, 0) when fresh."""
        return (0, 0) if self.resume is None else (self.resume["epoch"], self.resume["batch"])


@dataclass
class TrainHooks:
    """What the caller hears and decides while members train; every hook is optional.

    `on_epoch(k, record)` gets each epoch's record of member k (and rescue events);
    `prune(epoch, members)` is asked once per epoch, after every record, which of the members
    that finished the epoch normally to stop; `checkpoint(k, state)` gets member k's whole
    state at most every `checkpoint_seconds`, and once more when `stop_requested()` (checked
    after every batch) turns true, before the loop raises KeyboardInterrupt."""

    on_epoch: Callable[[int, dict[str, Any]], None] | None = None
    prune: Callable[[int, list[int]], Collection[int]] | None = None
    checkpoint: Callable[[int, dict[str, Any]], None] | None = None
    checkpoint_seconds: float = 5.0
    stop_requested: Callable[[], bool] | None = None
    rescue: bool = False  # panda's babysitting (see Rescue)
    # panda --interactive: asked after every epoch; "end" ends every member now (as early
    # stopping would), "rescue" rescues them now (whether or not `rescue` is on)
    command: Callable[[], str | None] | None = None


class EarlyStopping:
    """Patience on the dev loss, per member (skorch's EarlyStopping as an object the loop
    calls): the best epoch and a snapshot of its weights. With the spec's early stopping the
    member stops after `patience` epochs without improvement and ends with the best weights;
    without it, the best is still tracked when panda's rescue needs it."""

    def __init__(self, spec: Spec, track: bool, initial: dict[str, Any] | None):
        stopping = spec.train.early_stopping
        self.restore = stopping is not None
        self.patience = stopping.patience if stopping else 10
        self.min_delta = stopping.min_delta if stopping else 0.0
        self.track = track or self.restore
        self.best_loss = math.inf
        self.bad_epochs = 0
        self.best_epoch = 0  # the epoch whose weights the member ends with (1-based)
        self.best: dict[str, Any] | None = initial if track else None

    def observe(self, epoch: int, dev_loss: float, snapshot: Callable[[], dict]) -> None:
        if self.track and dev_loss < self.best_loss - self.min_delta:
            self.best_loss, self.bad_epochs = dev_loss, 0
            self.best = snapshot()
        elif self.track:
            self.bad_epochs += 1
        if not self.restore or self.bad_epochs == 0:
            self.best_epoch = epoch

    @property
    def exhausted(self) -> bool:
        return self.restore and self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        keys = ("best_loss", "bad_epochs", "best_epoch", "best")
        return {key: getattr(self, key) for key in keys}

    def load(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class Rescue:
    """Panda's babysitting, per member: once, when the loss diverges or the dev loss has not
    improved for half the early-stopping patience, roll back to the best weights so far and go
    on at a tenth of the learning rate with fresh optimizer moments. An epoch that improved is
    never a plateau: it is judged after the early-stopping tracker has seen it."""

    def __init__(self, enabled: bool, patience: int):
        self.enabled = enabled
        self.plateau_epochs = max(2, patience // 2)
        self.used = False
        self.lr_scale = 1.0

    def reason(self, diverged: bool, stopping: EarlyStopping) -> str | None:
        if not self.enabled or self.used:
            return None
        if diverged:
            return "diverged"
        return "plateau" if stopping.bad_epochs >= self.plateau_epochs else None

    def fire(self, epoch: int, reason: str, lr: float) -> dict[str, Any]:
        self.used = True
        self.lr_scale *= 0.1
        return {"epoch": epoch, "event": "rescue", "reason": reason, "lr": lr * 0.1}

    def state(self) -> dict[str, Any]:
        return {"used": self.used, "lr_scale": self.lr_scale}

    def load(self, state: dict[str, Any]) -> None:
        self.used, self.lr_scale = state["used"], state["lr_scale"]


@dataclass
class _Trainee:
    """One member's progress: its result so far and its stateful helpers."""

    spec: Spec
    result: TrainResult
    stopping: EarlyStopping
    rescue: Rescue
    done: bool = False


def _column_of(
    trainees: list[_Trainee], value: Callable[[Spec], float], device: torch.device
) -> torch.Tensor:
    return column([value(t.spec) for t in trainees], device)


def stack_outputs(stack: StackedMLP, X: torch.Tensor) -> torch.Tensor:
    """Every member's outputs on `X` ([K, n, outputs]), in eval mode. On the CPU member by
    member, in chunks sized to the cache (faster than the whole stack at once); on a GPU the
    whole stack at once, a stack's activations being K times a model's."""
    if X.device.type == "cpu":
        rows = eval_rows(stack.widest, X.device)
        members = range(stack.members)
        return torch.cat([predict(partial(stack.member_outputs, k=k), X, rows) for k in members])
    return predict(stack, X, max(512, 16384 // stack.members))


def train(
    members: Sequence[Member],
    data: Dataset,
    hooks: TrainHooks | None = None,
    device: torch.device | None = None,
) -> list[TrainResult]:
    """Train same-shape members together (a solo trial is one member) on the train split,
    early-stopping on dev; never touches test. One TrainResult per member.

    Members must share a shape (see `stacked.shape_key`) and a starting position: they see
    the same batches, which depend on the spec's seed and the epoch only. Everything else is
    each member's own, so a member ends the same with any neighbours or none.
    """
    hooks = hooks or TrainHooks()
    first = members[0].spec
    if any(shape_key(m.spec) != shape_key(first) for m in members):
        raise ValueError("a stack needs trials of one shape (see shape_key)")
    if len({m.position for m in members}) > 1:
        raise ValueError("a stack needs trials that resume from the same epoch and batch")
    device = device or resolve_device(first.device)
    loss_name = resolve_loss(first.train.loss, data.task)
    check_objective(first.objective, data.task)
    models = []
    for member in members:
        torch.manual_seed(member.seed)  # a trial's initial weights come from its seed alone
        model = build_model(member.spec, data)
        load_matching(model, member.spec, data)  # model.init_from: an earlier model's layers
        models.append(model.to(device))
    stack = StackedMLP(
        models,
        first,
        [m.spec.model.dropout for m in members],
        [m.seed for m in members],
        [input_scale(m.spec.data, data) for m in members],
        [noise_std(m.spec.data, data) for m in members],
    )
    adamw = first.train.optimizer == "adamw"  # adamw decays weights itself: no L2 term
    optimizer = StackedOptimizer(
        first.train.optimizer,
        stack.flat,
        column([m.spec.train.momentum for m in members], device),
        column([m.spec.train.l2 if adamw else 0.0 for m in members], device),
        stack.frozen_size,
    )
    trainees = []
    for k, (member, model) in enumerate(zip(members, models, strict=True)):
        track = hooks.rescue or hooks.command is not None  # a rescue rolls back to the best
        initial = stack.member_snapshot(k) if track else None  # rescue's first rollback
        stopping = EarlyStopping(member.spec, track, initial)
        trainee = _Trainee(
            member.spec,
            TrainResult(model=model, state="complete", reason=None),
            stopping,
            Rescue(hooks.rescue, stopping.patience),
        )
        if member.resume is not None:
            _load(stack, optimizer, trainee, k, member.resume)
        trainees.append(trainee)
    l1 = _column_of(trainees, lambda s: s.train.l1, device)
    l2 = _column_of(trainees, lambda s: 0.0 if adamw else s.train.l2, device)
    penalize = bool((l1 > 0).any() or (l2 > 0).any())
    clip = _column_of(trainees, lambda s: s.train.grad_clip or math.inf, device)
    clipping = bool(torch.isfinite(clip).any())
    train_split = on_device(data.splits["train"], device)
    # data.oversample: fitted on the rebalanced train split, judged on the train split itself
    fit_split = on_device(oversampled(first.data, data, first.seed), device)
    dev_split = on_device(data.splits["dev"], device)
    active = list(range(len(members)))  # members still training, in stack order
    epochs = first.train.epochs
    start_epoch, start_batch = members[0].position
    resumed_costs = [m.resume["cost_sum"] if m.resume else 0.0 for m in members]
    saved_at = time.perf_counter()

    def save_all(epoch: int, batch: int, cost_sums: torch.Tensor) -> None:
        costs = cost_sums.tolist()
        for position, k in enumerate(active):
            state = _state(stack, optimizer, trainees[k], position, epoch, batch, costs[position])
            hooks.checkpoint(k, state)

    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        lrs = [
            scheduled_lr(t.spec.train.lr, t.spec.train.lr_schedule, epoch, epochs)
            * t.rescue.lr_scale
            for t in (trainees[k] for k in active)
        ]
        lr = column(lrs, device)
        stack.train()
        batches = epoch_batches(
            len(fit_split),
            first.train.batch_size,
            first.seed,
            epoch,
            stack.norm == "batch",
            device,
        )
        skip = start_batch if epoch == start_epoch else 0
        cost_sums = torch.tensor(
            [resumed_costs[k] if skip else 0.0 for k in active], device=device
        )  # non-finite once a cost is; read once per epoch
        for batch, index in enumerate(batches[skip:], start=skip):
            outputs = stack(fit_split.X[index])  # [K, b, outputs]
            count, rows = outputs.shape[0], outputs.shape[1]
            losses = example_losses(
                loss_name,
                outputs.reshape(count * rows, -1),
                fit_split.y[index].repeat(count),
                data.task,
            ).view(count, rows)
            if fit_split.weight is None:
                costs = losses.mean(1)
            else:
                weight = fit_split.weight[index]
                costs = (losses * weight).sum(1) / weight.sum()
            if penalize:
                costs = costs + penalties(stack, l1, l2, rows)
            # members are independent: the gradient of the sum is each member's own gradient
            cost_sums = cost_sums + costs.detach()
            stack.flat.grad = None
            costs.sum().backward()
            if clipping:
                clip_gradients(stack.flat, clip, stack.frozen_size)
            optimizer.step(stack.flat, lr)
            stopping_now = hooks.stop_requested is not None and hooks.stop_requested()
            if hooks.checkpoint is not None and (
                stopping_now or time.perf_counter() - saved_at >= hooks.checkpoint_seconds
            ):
                save_all(epoch, batch + 1, cost_sums)
                saved_at = time.perf_counter()
            if stopping_now:
                raise KeyboardInterrupt

        stack.eval()
        finite_now = torch.isfinite(cost_sums).tolist()
        train_outputs = stack_outputs(stack, train_split.X)
        dev_outputs = stack_outputs(stack, dev_split.X)
        seconds = time.perf_counter() - started
        judged = []
        for position, k in enumerate(active):
            trainee = trainees[k]
            diverged = not finite_now[position]
            measured = (position, loss_name, data, diverged)
            record = {
                "epoch": epoch + 1,
                **_metrics("train", train_outputs, train_split, *measured),
                **_metrics("dev", dev_outputs, dev_split, *measured),
                "lr": lrs[position],
                "seconds": seconds,
            }
            if _after_epoch(stack, optimizer, trainee, k, position, record, hooks):
                judged.append(k)
        pruned = set(hooks.prune(epoch + 1, judged)) if hooks.prune and judged else set()
        order = hooks.command() if hooks.command is not None else None
        for position, k in enumerate(active):
            if order == "rescue" and not trainees[k].done:
                asked = (epoch + 1, "asked", lrs[position])
                _rescue(stack, optimizer, trainees[k], k, position, *asked, hooks)
        for k in judged if order != "end" else active:
            trainee = trainees[k]
            if k in pruned:
                trainee.result.state, trainee.result.reason = "pruned", "pruned"
            elif trainee.stopping.exhausted or (order == "end" and not trainee.done):
                trainee.result.stopped_early = True
            else:
                continue
            if order == "end":
                _record(
                    trainee, k, {"epoch": epoch + 1, "event": "ended", "reason": "asked"}, hooks
                )
            trainee.done = True
            trainee.result.model.load_state_dict(stack.member_state(active.index(k)))

        still = [position for position, k in enumerate(active) if not trainees[k].done]
        if not still:
            break
        if len(still) < len(active):
            stack.keep(still)
            optimizer.keep(still)
            rows_kept = torch.tensor(still, device=device)
            l1, l2, clip = l1[rows_kept], l2[rows_kept], clip[rows_kept]
            active = [active[position] for position in still]

    for position, k in enumerate(active):
        if not trainees[k].done:  # ran every epoch
            trainees[k].result.model.load_state_dict(stack.member_state(position))
    for trainee in trainees:
        _finish(trainee, stack, train_split, dev_split, loss_name, data)
    return [trainee.result for trainee in trainees]


def _metrics(
    prefix: str,
    outputs: torch.Tensor,
    split: DeviceSplit,
    position: int,
    loss: str,
    data: Dataset,
    diverged: bool,
) -> dict[str, float]:
    if diverged or len(split) == 0:
        return {}
    with torch.inference_mode():
        return prefixed(prefix, split_metrics(outputs[position], split, loss, data))


def _after_epoch(
    stack: StackedMLP,
    optimizer: StackedOptimizer,
    trainee: _Trainee,
    k: int,
    position: int,
    record: dict[str, Any],
    hooks: TrainHooks,
) -> bool:
    """One member's end-of-epoch bookkeeping; True when it finished the epoch normally (and
    is judged for pruning and early stopping), False after a rescue or a divergence."""
    result = trainee.result
    diverged = not all(math.isfinite(v) for v in record.values()) or "dev_loss" not in record
    if not diverged:
        snapshot = lambda: stack.member_snapshot(position)  # noqa: E731 - taken only on a new best
        trainee.stopping.observe(record["epoch"], record["dev_loss"], snapshot)
    reason = trainee.rescue.reason(diverged, trainee.stopping)
    if reason is not None:
        if not diverged:
            _record(trainee, k, record, hooks)
        _rescue(
            stack, optimizer, trainee, k, position, record["epoch"], reason, record["lr"], hooks
        )
        return False
    _record(trainee, k, record, hooks)
    if diverged:
        result.state, result.reason, trainee.done = "failed", "diverged", True
        return False
    return True


def _rescue(
    stack: StackedMLP,
    optimizer: StackedOptimizer,
    trainee: _Trainee,
    k: int,
    position: int,
    epoch: int,
    reason: str,
    lr: float,
    hooks: TrainHooks,
) -> None:
    """Roll member k back to its best weights so far, with fresh optimizer moments, and go on
    at a tenth of the learning rate it trained with (`lr`)."""
    event = trainee.rescue.fire(epoch, reason, lr)
    if trainee.stopping.best is not None:
        stack.load_member(position, trainee.stopping.best)
    optimizer.reset_member(position)
    trainee.stopping.bad_epochs = 0
    _record(trainee, k, event, hooks)


def _record(trainee: _Trainee, k: int, record: dict[str, Any], hooks: TrainHooks) -> None:
    trainee.result.history.append(record)
    trainee.result.epochs_run = record["epoch"]
    if hooks.on_epoch is not None:
        hooks.on_epoch(k, record)


def _state(
    stack: StackedMLP,
    optimizer: StackedOptimizer,
    trainee: _Trainee,
    position: int,
    epoch: int,
    batch: int,
    cost_sum: float,
) -> dict[str, Any]:
    """A member's whole training state after `batch` batches of `epoch` (0-based): enough to
    go on exactly where it stands (see `Member.resume`)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "batch": batch,
        "cost_sum": cost_sum,
        "model": stack.member_snapshot(position),
        "optimizer": optimizer.member_state(position),
        "generator": stack.generator_state(position),
        "stopping": trainee.stopping.state(),
        "rescue": trainee.rescue.state(),
        "history": list(trainee.result.history),
    }


def _load(
    stack: StackedMLP,
    optimizer: StackedOptimizer,
    trainee: _Trainee,
    position: int,
    state: dict[str, Any],
) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("a checkpoint of another format")
    stack.load_member(position, state["model"])
    optimizer.load_member(position, state["optimizer"])
    stack.set_generator_state(position, state["generator"])
    trainee.stopping.load(state["stopping"])
    trainee.rescue.load(state["rescue"])
    trainee.result.history = list(state["history"])
    trainee.result.epochs_run = max((r["epoch"] for r in state["history"]), default=0)


def _finish(
    trainee: _Trainee,
    stack: StackedMLP,
    train: DeviceSplit,
    dev: DeviceSplit,
    loss: str,
    data: Dataset,
) -> None:
    """Best weights back (early stopping), then the final metrics."""
    result = trainee.result
    if result.state == "failed":
        return
    result.best_epoch = trainee.stopping.best_epoch
    if trainee.stopping.restore and trainee.stopping.best is not None:
        result.model.load_state_dict(stack.solo_state(trainee.stopping.best))
    # the record of the epoch the weights come from holds the final model's metrics, unless a
    # rescue rolled weights back since
    recorded = epoch_metrics(result) if not trainee.rescue.used else {}
    result.metrics = recorded or {
        **prefixed("train", evaluate(result.model, train, loss, data)),
        **prefixed("dev", evaluate(result.model, dev, loss, data)),
    }


def train_model(
    spec: Spec,
    data: Dataset,
    seed: int,
    on_epoch: Callable[[dict[str, Any]], bool] | None = None,
    device: torch.device | None = None,
    rescue: bool = False,
) -> TrainResult:
    """One trial alone (a stack of one); `on_epoch(record)` returning True prunes it."""
    verdicts: dict[int, bool] = {}

    def heard(k: int, record: dict[str, Any]) -> None:
        verdict = on_epoch(record) if on_epoch is not None else False
        verdicts[record["epoch"]] = bool(verdict) and "event" not in record

    hooks = TrainHooks(
        on_epoch=heard,
        prune=lambda epoch, judged: [k for k in judged if verdicts.get(epoch)],
        rescue=rescue,
    )
    (result,) = train([Member(spec, seed)], data, hooks, device)
    return result


def epoch_metrics(result: TrainResult) -> dict[str, float]:
    """The train/dev metrics recorded at the epoch whose weights the model ends with (they are
    the final model's metrics: evaluation is deterministic), so they need not be computed
    again; {} when there is no such record."""
    for record in result.history:
        if record.get("epoch") == result.best_epoch and "event" not in record:
            return {k: v for k, v in record.items() if k.startswith(("train_", "dev_"))}
    return {}
