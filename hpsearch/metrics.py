"""Losses, metrics and evaluation: pure functions of outputs and targets, and scoring a model
or a stack on a split. No training, no optuna, no files.

For classification, the distance losses (l1, l2, mse, huber) compare predicted probabilities
with one-hot targets; bce and cross_entropy work on logits. For regression, error is the mean
squared error of the standardized target (the fraction of the train variance left
unexplained), so the bias/variance arithmetic applies to it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.data import Dataset, Split
from hpsearch.spec import (
    Spec,
    resolve_loss,
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


EVAL_CHUNK = 8192  # rows per forward pass when evaluating on a GPU: large, but bounded
CACHE_BYTES = 512 * 1024  # on the CPU, a chunk's widest activation: about a core's L2 cache


def eval_rows(width: int, device: torch.device) -> int:
    """Rows per forward pass when evaluating a model whose widest layer side is `width`. On
    the CPU, few enough that a chunk's activations stay in a core's cache, as a pass through
    memory costs more (20,000 rows through 20 -> 64 -> 64 -> 1, one thread: 2.9 ms in chunks
    of 2,048 rows against 8.0 ms in chunks of 8,192). On a GPU, EVAL_CHUNK: large passes keep
    it busy."""
    if device.type != "cpu":
        return EVAL_CHUNK
    return max(256, min(EVAL_CHUNK, CACHE_BYTES // (4 * max(1, width))))


def widest(model: nn.Module) -> int:
    """The widest side of a model's weight matrices (its inputs or a layer's units)."""
    return max((max(p.shape) for p in model.parameters() if p.dim() == 2), default=1)


@torch.inference_mode()
def predict(
    model: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, rows: int | None = None
) -> torch.Tensor:
    """Raw outputs for every row, `rows` at a time (the model must already be in eval mode).
    Works for a stacked model too: its outputs have a leading member axis. `rows` per pass:
    by default as `eval_rows` says for an `nn.Module` (EVAL_CHUNK for anything else)."""
    if rows is None:
        rows = eval_rows(widest(model), X.device) if isinstance(model, nn.Module) else EVAL_CHUNK
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


def score_split(
    model: nn.Module, spec: Spec, data: Dataset, split: Split, device: torch.device
) -> dict[str, float]:
    """All metrics of a trained model on any split (or a subset of one)."""
    loss = resolve_loss(spec.train.loss, data.task)
    return evaluate(model, DeviceSplit.from_split(split, device), loss, data)


@torch.inference_mode()
def squared_error_spread(
    model: nn.Module, data: Dataset, split: Split, device: torch.device
) -> float | None:
    """Regression: the standard deviation of the per-example squared errors of the
    standardized target (the spread behind a mean squared error's interval); None when the
    split has fewer than two rows."""
    if len(split) < 2:
        return None
    device_split = DeviceSplit.from_split(split, device)
    was_training = model.training
    model.eval()
    outputs = predict(model, device_split.X)
    model.train(was_training)
    squared = (outputs[:, 0] - device_split.y).pow(2)
    return float(squared.std())


INFERENCE_ROWS = 1000  # inference_ms: milliseconds to predict this many rows


@torch.inference_mode()
def inference_ms(model: nn.Module, X: torch.Tensor, repeats: int = 5) -> float:
    """Milliseconds one model takes to predict INFERENCE_ROWS rows (the given rows repeated
    as needed, so a small dev set is timed at the same size), the fastest of `repeats`."""
    rows = X[torch.arange(INFERENCE_ROWS, device=X.device) % X.shape[0]]
    was_training = model.training
    model.eval()
    cuda = rows.device.type == "cuda"
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        started = time.perf_counter()
        predict(model, rows)
        if cuda:
            torch.cuda.synchronize(rows.device)
        times.append(time.perf_counter() - started)
    model.train(was_training)
    return 1000.0 * min(times[1:])


def cost_metrics(
    model: nn.Module, X: torch.Tensor, seconds: float, wanted: Collection[str]
) -> dict[str, float]:
    """The cost metrics `wanted` (spec.COST_METRICS) of a trained model: its parameters
    (frozen ones too: the size of the model), training seconds, and inference_ms on rows
    like `X`."""
    costs: dict[str, float] = {}
    if "n_params" in wanted:
        costs["n_params"] = float(sum(p.numel() for p in model.parameters()))
    if "train_seconds" in wanted:
        costs["train_seconds"] = float(seconds)
    if "inference_ms" in wanted and X.shape[0]:
        costs["inference_ms"] = inference_ms(model, X)
    return costs
