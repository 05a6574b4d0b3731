"""One trial's training: a linear loop with pure helpers. No optuna, no files.

Reads top to bottom: set lr, forward, cost (+ penalties), backward, clip, step, evaluate,
log, check stopping. Mini-batches index in-memory tensors with one permutation per epoch
(a per-sample DataLoader costs several times more for MLP-sized work).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.data import Dataset, Split
from hpsearch.errors import InputError
from hpsearch.model import build_mlp
from hpsearch.spec import CLASSIFICATION_METRICS, REGRESSION_METRICS, Spec

CLASSIFICATION_LOSSES = ("cross_entropy", "bce", "mse", "l2", "l1", "huber")
REGRESSION_LOSSES = ("mse", "l2", "l1", "huber")

# An epoch callback gets the epoch's record and returns True to stop the trial (pruning).
EpochCallback = Callable[[dict[str, Any]], bool]


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


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without CUDA is a clear input error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"device: '{device}' asked for, but CUDA is not available; use auto or cpu"
        )
    return torch.device(device)


def resolve_loss(loss: str, task: str) -> str:
    """The loss a spec means for a task: auto -> bce / cross_entropy / mse."""
    if loss == "auto":
        return {"binary": "bce", "multiclass": "cross_entropy", "regression": "mse"}[task]
    allowed = REGRESSION_LOSSES if task == "regression" else CLASSIFICATION_LOSSES
    if loss not in allowed:
        raise InputError(
            f"train.loss: '{loss}' does not fit a {task} task; allowed: {', '.join(allowed)}"
        )
    return loss


def check_objective_metric(metric: str, task: str) -> None:
    allowed = REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS
    if metric.removeprefix("dev_") not in allowed:
        options = ", ".join(f"dev_{m}" for m in allowed)
        raise InputError(
            f"objective.metric: '{metric}' does not fit a {task} task; allowed: {options}"
        )


def example_losses(loss: str, outputs: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Loss of each example, shape [n]. `outputs` are the network's raw outputs (logits).

    For classification, the distance losses (l1, l2, mse, huber) compare predicted
    probabilities with one-hot targets, as in L1(y_hat, y) = sum_j |y_j - y_hat_j|.
    """
    if task == "regression":
        prediction, target = outputs, y.reshape(-1, 1)
    elif loss in ("bce", "cross_entropy") and task == "binary":
        return F.binary_cross_entropy_with_logits(outputs[:, 0], y.float(), reduction="none")
    elif loss == "cross_entropy":
        return F.cross_entropy(outputs, y, reduction="none")
    elif task == "binary":
        prediction, target = torch.sigmoid(outputs), y.float().reshape(-1, 1)
    else:
        target = F.one_hot(y, outputs.shape[1]).float()
        if loss == "bce":
            return F.binary_cross_entropy_with_logits(outputs, target, reduction="none").sum(1)
        prediction = torch.softmax(outputs, dim=1)
    diff = prediction - target
    if loss == "l1":
        return diff.abs().sum(1)
    if loss == "l2":
        return diff.pow(2).sum(1)
    if loss == "mse":
        return diff.pow(2).mean(1)
    if loss == "huber":
        return F.huber_loss(prediction, target, reduction="none").mean(1)
    raise ValueError(f"unknown loss {loss!r}")


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The cost: mean loss, or with strengthening factors s_i: sum(s_i L_i) / sum(s_i)."""
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum()


def weight_penalty(model: nn.Module, l1: float, l2: float, m: int) -> torch.Tensor | float:
    """lambda/(2m) * sum ||W||_F^2 (L2) plus lambda/m * sum |W| (L1), over weight matrices only."""
    if l1 == 0 and l2 == 0:
        return 0.0
    penalty: torch.Tensor | float = 0.0
    for name, param in model.named_parameters():
        if param.dim() < 2 or not name.endswith("weight"):
            continue  # biases and norm scales are not penalized
        if l2:
            penalty = penalty + l2 / (2 * m) * param.pow(2).sum()
        if l1:
            penalty = penalty + l1 / m * param.abs().sum()
    return penalty


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


def make_optimizer(model: nn.Module, spec: Spec) -> torch.optim.Optimizer:
    train = spec.train
    params = model.parameters()
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr)
    if train.optimizer == "momentum":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum)
    if train.optimizer == "nesterov":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, nesterov=True)
    if train.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=train.lr)
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr)
    if train.optimizer == "adamw":  # decoupled weight decay replaces the L2 penalty term
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.l2)
    raise ValueError(f"unknown optimizer {train.optimizer!r}")


def classification_metrics(predicted: torch.Tensor, y: torch.Tensor, n_classes: int) -> dict:
    """Accuracy, error, and precision/recall/F1 (positive class for binary, macro otherwise)."""
    confusion = torch.bincount(y * n_classes + predicted, minlength=n_classes**2)
    confusion = confusion.reshape(n_classes, n_classes).double()
    true_pos = confusion.diag()
    accuracy = (true_pos.sum() / confusion.sum()).item()
    precision_all = true_pos / confusion.sum(0).clamp(min=1)
    recall_all = true_pos / confusion.sum(1).clamp(min=1)
    f1_all = torch.where(
        precision_all + recall_all > 0,
        2 * precision_all * recall_all / (precision_all + recall_all),
        torch.zeros_like(precision_all),
    )
    if n_classes == 2:
        precision, recall, f1 = precision_all[1], recall_all[1], f1_all[1]
    else:
        precision, recall, f1 = precision_all.mean(), recall_all.mean(), f1_all.mean()
    return {
        "accuracy": accuracy,
        "error": 1.0 - accuracy,
        "precision": precision.item(),
        "recall": recall.item(),
        "f1": f1.item(),
    }


def regression_metrics(prediction: torch.Tensor, y: torch.Tensor, std: float) -> dict:
    """error = MSE on the standardized target (the fraction of train variance left unexplained);
    mse and mae in the target's own units."""
    diff = prediction - y
    mse_scaled = diff.pow(2).mean().item()
    total = (y - y.mean()).pow(2).sum().item()
    return {
        "error": mse_scaled,
        "mse": mse_scaled * std**2,
        "mae": diff.abs().mean().item() * std,
        "r2": 1.0 - diff.pow(2).sum().item() / total if total > 0 else 0.0,
    }


# --- evaluation -------------------------------------------------------------------------------


@dataclass
class DeviceSplit:
    """A split's tensors on the training device."""

    X: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor | None

    @classmethod
    def from_split(cls, split: Split, device: torch.device) -> DeviceSplit:
        weight = None if split.weight is None else torch.as_tensor(split.weight, device=device)
        return cls(
            torch.as_tensor(split.X, device=device), torch.as_tensor(split.y, device=device), weight
        )

    def __len__(self) -> int:
        return self.X.shape[0]


# A worker trains many trials on one data set: its splits go to the device once, not per trial.
_ON_DEVICE: dict[tuple[int, str], tuple[Split, DeviceSplit]] = {}


def on_device(split: Split, device: torch.device) -> DeviceSplit:
    """`split` on `device`, copied there once per process (kept while the split lives here)."""
    key = (id(split), str(device))
    cached = _ON_DEVICE.get(key)
    if cached is None or cached[0] is not split:
        if len(_ON_DEVICE) >= 8:  # a new data set: drop the old copies
            _ON_DEVICE.clear()
        cached = (split, DeviceSplit.from_split(split, device))
        _ON_DEVICE[key] = cached
    return cached[1]


EVAL_CHUNK = 8192  # rows per forward pass when evaluating: large, but bounded in memory


@torch.inference_mode()
def predict(
    model: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, rows: int = EVAL_CHUNK
) -> torch.Tensor:
    """Raw outputs for every row, `rows` at a time (the model must already be in eval mode).
    Works for a stacked model too: its outputs have a leading member axis."""
    if X.shape[0] <= rows:
        return model(X)
    return torch.cat([model(chunk) for chunk in X.split(rows)], dim=-2)


def split_metrics(
    outputs: torch.Tensor, split: DeviceSplit, loss: str, data: Dataset
) -> dict[str, float]:
    """All metrics of raw `outputs` (one model's, [n, outputs]) against a split's targets."""
    losses = example_losses(loss, outputs, split.y, data.task)
    metrics = {"loss": weighted_mean(losses, split.weight).item()}
    if data.task == "regression":
        metrics.update(regression_metrics(outputs[:, 0], split.y, data.target_std))
        return metrics
    binary = data.task == "binary"
    predicted = (outputs[:, 0] > 0).long() if binary else outputs.argmax(1)
    metrics.update(classification_metrics(predicted, split.y, max(data.n_outputs, 2)))
    if split.weight is not None:
        correct = (predicted == split.y).double()
        weighted_accuracy = (correct * split.weight).sum() / split.weight.sum()
        metrics["weighted_error"] = 1.0 - weighted_accuracy.item()
        metrics["unweighted_loss"] = losses.mean().item()
    return metrics


def evaluate(model: nn.Module, split: DeviceSplit, loss: str, data: Dataset) -> dict[str, float]:
    """All metrics of `model` on one split (eval mode: no dropout, running norm statistics)."""
    if len(split) == 0:
        return {}
    was_training = model.training
    model.eval()
    outputs = predict(model, split.X)
    model.train(was_training)
    with torch.inference_mode():
        return split_metrics(outputs, split, loss, data)


def prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{key}": value for key, value in metrics.items()}


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


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class Rescue:
    """Panda babysitting inside a trial: once, on divergence or a dev-loss plateau, roll back to
    the best weights so far and go on with a tenth of the learning rate."""

    plateau_epochs: int
    used: bool = False
    lr_scale: float = 1.0

    def event(self, epoch: int, reason: str, lr: float) -> dict[str, Any]:
        self.used = True
        self.lr_scale *= 0.1
        return {"epoch": epoch, "event": "rescue", "reason": reason, "lr": lr * 0.1}


def train_model(
    spec: Spec,
    data: Dataset,
    seed: int,
    on_epoch: EpochCallback | None = None,
    device: torch.device | None = None,
    rescue: bool = False,
) -> TrainResult:
    """Train one MLP on the train split, early-stopping on dev loss; never touches test."""
    device = device or resolve_device(spec.device)
    loss_name = resolve_loss(spec.train.loss, data.task)
    check_objective_metric(spec.objective.metric, data.task)
    torch.manual_seed(seed)
    model = build_mlp(spec.model, data.n_features, data.n_outputs).to(device)
    optimizer = make_optimizer(model, spec)
    train_split = on_device(data.splits["train"], device)
    dev_split = on_device(data.splits["dev"], device)
    cfg = spec.train
    stopping = cfg.early_stopping
    l2_penalty = 0.0 if cfg.optimizer == "adamw" else cfg.l2  # adamw decays weights itself
    patience = stopping.patience if stopping else 10
    babysitter = Rescue(plateau_epochs=max(2, patience // 2)) if rescue else None
    track_best = stopping is not None or babysitter is not None

    result = TrainResult(model=model, state="complete", reason=None)
    best_loss, bad_epochs = math.inf, 0
    best_state = _snapshot(model) if babysitter else None
    for epoch in range(cfg.epochs):
        started = time.perf_counter()
        lr = scheduled_lr(cfg.lr, cfg.lr_schedule, epoch, cfg.epochs)
        lr *= babysitter.lr_scale if babysitter else 1.0
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        cost_sum = torch.zeros((), device=device)  # non-finite once any cost is; read per epoch
        for index in epoch_batches(
            len(train_split), cfg.batch_size, spec.seed, epoch, spec.model.norm == "batch", device
        ):
            batch_weight = None if train_split.weight is None else train_split.weight[index]
            outputs = model(train_split.X[index])
            losses = example_losses(loss_name, outputs, train_split.y[index], data.task)
            cost = weighted_mean(losses, batch_weight)
            if cfg.l1 or l2_penalty:
                cost = cost + weight_penalty(model, cfg.l1, l2_penalty, len(index))
            # A diverged trial is found at the end of the epoch (no host sync per batch): costs
            # are never negative, so their sum is finite unless one is not. Its weights after
            # the first non-finite cost are never used.
            cost_sum = cost_sum + cost.detach()
            optimizer.zero_grad(set_to_none=True)
            cost.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
        diverged = not math.isfinite(cost_sum.item())

        train_metrics = evaluate(model, train_split, loss_name, data) if not diverged else {}
        dev_metrics = evaluate(model, dev_split, loss_name, data) if not diverged else {}
        record = {
            "epoch": epoch + 1,
            **prefixed("train", train_metrics),
            **prefixed("dev", dev_metrics),
            "lr": lr,
            "seconds": time.perf_counter() - started,
        }
        diverged = diverged or not all(math.isfinite(v) for v in record.values())
        plateau = babysitter is not None and bad_epochs + 1 >= babysitter.plateau_epochs
        if babysitter and not babysitter.used and (diverged or plateau):
            if not diverged:
                result.history.append(record)
                if on_epoch is not None:
                    on_epoch(record)
            event = babysitter.event(epoch + 1, "diverged" if diverged else "plateau", lr)
            model.load_state_dict(best_state)
            optimizer = make_optimizer(model, spec)  # fresh moments for the new lr
            result.history.append(event)
            result.epochs_run, bad_epochs = epoch + 1, 0
            if on_epoch is not None:
                on_epoch(event)
            continue
        result.history.append(record)
        result.epochs_run = epoch + 1
        if diverged:
            result.state, result.reason = "failed", "diverged"
            break

        dev_loss = dev_metrics["loss"]
        min_delta = stopping.min_delta if stopping else 0.0
        if track_best and dev_loss < best_loss - min_delta:
            best_loss, bad_epochs = dev_loss, 0
            best_state = _snapshot(model)
        elif track_best:
            bad_epochs += 1
        if stopping is None or bad_epochs == 0:
            result.best_epoch = epoch + 1  # the epoch whose weights the model ends with
        if on_epoch is not None and on_epoch(record):
            result.state, result.reason = "pruned", "pruned"
            break
        if stopping is not None and bad_epochs >= stopping.patience:
            result.stopped_early = True
            break

    if stopping is not None and best_state is not None:
        model.load_state_dict(best_state)
    if result.state != "failed":
        result.metrics = epoch_metrics(result) if babysitter is None else {}
        result.metrics = result.metrics or {
            **prefixed("train", evaluate(model, train_split, loss_name, data)),
            **prefixed("dev", evaluate(model, dev_split, loss_name, data)),
        }
    return result


def epoch_metrics(result: TrainResult) -> dict[str, float]:
    """The train/dev metrics recorded at the epoch whose weights the model ends with (they are
    the final model's metrics: evaluation is deterministic), so they need not be computed
    again; {} when there is no such record."""
    for record in result.history:
        if record.get("epoch") == result.best_epoch and "event" not in record:
            return {k: v for k, v in record.items() if k.startswith(("train_", "dev_"))}
    return {}


def score_split(
    model: nn.Module, spec: Spec, data: Dataset, split: Split, device: torch.device
) -> dict[str, float]:
    """All metrics of a trained model on any split (or a subset of one)."""
    loss = resolve_loss(spec.train.loss, data.task)
    return evaluate(model, DeviceSplit.from_split(split, device), loss, data)
