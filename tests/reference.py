"""A plain PyTorch training loop, as a user would write it (nn.Module, torch.optim,
clip_grad_norm_): the oracle the one training loop is checked against. It shares only the
pure helpers (losses, batches, schedules, metrics) with hpsearch, so the batched model, the
hand-written update rules and the early-stopping logic are compared with torch's own."""

import copy
import math

import torch

from hpsearch.metrics import (
    evaluate,
    example_losses,
    on_device,
    prefixed,
    weighted_mean,
)
from hpsearch.model import build_mlp
from hpsearch.spec import resolve_loss
from hpsearch.train import TrainResult, epoch_batches, scheduled_lr


def _optimizer(model, spec):
    train, params = spec.train, model.parameters()
    kind = train.optimizer
    if kind == "sgd":
        return torch.optim.SGD(params, lr=train.lr)
    if kind in ("momentum", "nesterov"):
        return torch.optim.SGD(
            params, lr=train.lr, momentum=train.momentum, nesterov=kind == "nesterov"
        )
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=train.lr)
    if kind == "adam":
        return torch.optim.Adam(params, lr=train.lr)
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.l2)


def _penalty(model, l1, l2, m):
    total = 0.0
    for name, param in model.named_parameters():
        if param.dim() >= 2 and name.endswith("weight"):
            total = total + l2 / (2 * m) * param.pow(2).sum() + l1 / m * param.abs().sum()
    return total


def reference_train(spec, data, seed) -> TrainResult:
    device = torch.device("cpu")
    loss_name = resolve_loss(spec.train.loss, data.task)
    torch.manual_seed(seed)
    model = build_mlp(spec.model, data.n_features, data.n_outputs)
    optimizer = _optimizer(model, spec)
    train_split, dev_split = (
        on_device(data.splits["train"], device),
        on_device(data.splits["dev"], device),
    )
    cfg, stopping = spec.train, spec.train.early_stopping
    l2 = 0.0 if cfg.optimizer == "adamw" else cfg.l2
    result = TrainResult(model=model, state="complete", reason=None)
    best_loss, bad, best_state = math.inf, 0, None
    for epoch in range(cfg.epochs):
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(cfg.lr, cfg.lr_schedule, epoch, cfg.epochs)
        model.train()
        finite = True
        for index in epoch_batches(
            len(train_split), cfg.batch_size, spec.seed, epoch, spec.model.norm == "batch"
        ):
            weight = None if train_split.weight is None else train_split.weight[index]
            losses = example_losses(
                loss_name, model(train_split.X[index]), train_split.y[index], data.task
            )
            cost = weighted_mean(losses, weight)
            if cfg.l1 or l2:
                cost = cost + _penalty(model, cfg.l1, l2, len(index))
            finite = finite and math.isfinite(cost.item())
            optimizer.zero_grad()
            cost.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        if finite:
            record.update(prefixed("train", evaluate(model, train_split, loss_name, data)))
            record.update(prefixed("dev", evaluate(model, dev_split, loss_name, data)))
        result.history.append(record)
        result.epochs_run = epoch + 1
        if not finite or not all(math.isfinite(v) for v in record.values()):
            result.state, result.reason = "failed", "diverged"
            return result
        if stopping is not None and record["dev_loss"] < best_loss - stopping.min_delta:
            best_loss, bad, best_state = record["dev_loss"], 0, copy.deepcopy(model.state_dict())
        elif stopping is not None:
            bad += 1
        if stopping is None or bad == 0:
            result.best_epoch = epoch + 1
        if stopping is not None and bad >= stopping.patience:
            result.stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.metrics = {
        **prefixed("train", evaluate(model, train_split, loss_name, data)),
        **prefixed("dev", evaluate(model, dev_split, loss_name, data)),
    }
    return result
