"""Many same-shape trials trained at once, as one batched model.

Each member's weights sit along a leading member axis (a layer's weight is [K, in, out]), so a
layer of K small MLPs is one batched matmul and K trials cost little more than one. Members
keep their own initial weights (built by the solo code from the member's seed), learning rate
and schedule, momentum, L1/L2, dropout rate, gradient clip and early stopping. A member that
stops early, diverges or is pruned leaves the stack at the end of that epoch; the rest go on.
Every member sees the same batches it would see alone (the order depends on the spec's seed and
the epoch only), so with dropout 0 it ends where the same trial trained alone ends, up to float
rounding. No optuna, no files: the same contract as `train.train_model`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from hpsearch.data import Dataset
from hpsearch.model import ACTIVATIONS, MLP, build_mlp
from hpsearch.spec import SearchSpec, Spec
from hpsearch.train import (
    DeviceSplit,
    EpochCallback,
    TrainResult,
    check_objective_metric,
    epoch_batches,
    epoch_metrics,
    evaluate,
    example_losses,
    on_device,
    predict,
    prefixed,
    resolve_device,
    resolve_loss,
    scheduled_lr,
    split_metrics,
    train_model,
)

AUTO_STACK = 16  # trials per stack under `stack: auto` (grid and random)
_EPS_NORM = 1e-5  # torch's BatchNorm1d / LayerNorm defaults
_BN_MOMENTUM = 0.1
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_RMSPROP_ALPHA, _RMSPROP_EPS = 0.99, 1e-8


def stack_size(search: SearchSpec) -> int:
    """How many trials a worker asks for and trains together.

    `auto` stacks grid and random, whose proposals do not depend on results; tpe and evolution
    learn from every finished trial, so `auto` gives them one at a time (`stack: K` batches them
    anyway). Panda watches one model at a time.
    """
    if search.mode == "panda" or search.stack == "off":
        return 1
    if search.stack == "auto":
        return AUTO_STACK if search.strategy in ("grid", "random") else 1
    return int(search.stack)


def shape_key(spec: Spec) -> tuple[Any, ...]:
    """Trials with equal keys can share a stack: same layer shapes, same batches, same step rule."""
    model, train = spec.model, spec.train
    return (
        tuple(model.widths),
        model.activation,
        model.norm,
        model.residual,
        train.batch_size,
        train.epochs,
        train.loss,
        train.optimizer,
        spec.device,
    )


# --- the batched model ------------------------------------------------------------------------


class StackedMLP:
    """K MLPs of one shape as stacked tensors; every tensor has the member axis first.

    Names: w{i}/b{i} for layer i's weight [K, in, out] and bias [K, 1, out] (the last layer is
    the output), g{i}/s{i} for a hidden layer's norm scale and shift, mean{i}/var{i} for batch
    norm's running statistics. All trainable values live in one [K, P] tensor (`flat`) and the
    named ones are views of it, so an optimizer step is a handful of whole-stack operations.
    """

    def __init__(self, models: Sequence[MLP], spec: Spec, dropouts: Sequence[float]):
        model_spec = spec.model
        self.norm = model_spec.norm
        self.activation = ACTIVATIONS[model_spec.activation]()
        blocks = [list(m.hidden) for m in models]
        self.hidden = len(blocks[0])
        self.residual = [block.residual for block in blocks[0]]
        pieces: dict[str, torch.Tensor] = {}
        self.running: dict[str, torch.Tensor] = {}
        self.batches_tracked = 0

        def stack(name: str, tensors: list[torch.Tensor]) -> None:
            pieces[name] = torch.stack([t.detach() for t in tensors])

        for i in range(self.hidden):
            layers = [b[i] for b in blocks]
            stack(f"w{i}", [layer.linear.weight.T for layer in layers])
            stack(f"b{i}", [layer.linear.bias[None] for layer in layers])
            if self.norm != "none":
                stack(f"g{i}", [layer.norm.weight[None] for layer in layers])
                stack(f"s{i}", [layer.norm.bias[None] for layer in layers])
            if self.norm == "batch":
                self.running[f"mean{i}"] = torch.stack(
                    [layer.norm.running_mean[None] for layer in layers]
                )
                self.running[f"var{i}"] = torch.stack(
                    [layer.norm.running_var[None] for layer in layers]
                )
        out = self.hidden
        stack(f"w{out}", [m.output.weight.T for m in models])
        stack(f"b{out}", [m.output.bias[None] for m in models])
        count = len(models)
        self.shapes = {name: tensor.shape[1:] for name, tensor in pieces.items()}
        self.sizes = [tensor[0].numel() for tensor in pieces.values()]
        flat = torch.cat([tensor.reshape(count, -1) for tensor in pieces.values()], dim=1)
        self.flat = flat.contiguous().requires_grad_(True)
        self.params = self.views()
        device = flat.device
        self.keep_prob = torch.tensor([1.0 - p for p in dropouts], device=device)[:, None, None]
        self.dropout = any(p > 0 for p in dropouts)
        self.training = True

    def views(self) -> dict[str, torch.Tensor]:
        """The named tensors as views of `flat` (gradients flow back into it)."""
        count = self.flat.shape[0]
        chunks = self.flat.split(self.sizes, dim=1)
        return {
            name: chunk.view(count, *shape)
            for (name, shape), chunk in zip(self.shapes.items(), chunks, strict=True)
        }

    @property
    def members(self) -> int:
        return self.flat.shape[0]

    def weight_names(self) -> list[str]:
        """The linear layers' weights: the ones L1/L2 penalize (not biases or norm scales)."""
        return [f"w{i}" for i in range(self.hidden + 1)]

    def eval(self) -> StackedMLP:
        self.training = False
        return self

    def train(self) -> StackedMLP:
        self.training = True
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[n, in] (shared by every member) -> [K, n, outputs]."""
        self.params = self.views()
        h = x
        for i in range(self.hidden):
            z = self._linear(i, h)
            z = self.activation(self._normalize(i, z))
            if self.training and self.dropout:
                z = z * (torch.rand_like(z) < self.keep_prob) / self.keep_prob
            h = h + z if self.residual[i] else z
        return self._linear(self.hidden, h)

    def _linear(self, i: int, h: torch.Tensor) -> torch.Tensor:
        weight, bias = self.params[f"w{i}"], self.params[f"b{i}"]
        if h.dim() == 2:  # the input, shared by every member
            return torch.baddbmm(bias, h.expand(weight.shape[0], *h.shape), weight)
        return torch.baddbmm(bias, h, weight)

    def _normalize(self, i: int, z: torch.Tensor) -> torch.Tensor:
        if self.norm == "none":
            return z
        if self.norm == "layer":
            z = F.layer_norm(z, z.shape[-1:], eps=_EPS_NORM)
        elif self.training:
            mean = z.mean(1, keepdim=True)
            var = z.var(1, keepdim=True, unbiased=False)
            n = z.shape[1]
            with torch.no_grad():
                self.running[f"mean{i}"].lerp_(mean, _BN_MOMENTUM)
                self.running[f"var{i}"].lerp_(var * n / max(n - 1, 1), _BN_MOMENTUM)
            if i == 0:
                self.batches_tracked += 1
            z = (z - mean) / torch.sqrt(var + _EPS_NORM)
        else:
            mean, var = self.running[f"mean{i}"], self.running[f"var{i}"]
            z = (z - mean) / torch.sqrt(var + _EPS_NORM)
        return z * self.params[f"g{i}"] + self.params[f"s{i}"]

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k as a solo `MLP`'s state dict (a copy)."""
        state: dict[str, torch.Tensor] = {}
        for i in range(self.hidden):
            prefix = f"hidden.{i}"
            state[f"{prefix}.linear.weight"] = self.params[f"w{i}"][k].detach().T.clone()
            state[f"{prefix}.linear.bias"] = self.params[f"b{i}"][k, 0].detach().clone()
            if self.norm != "none":
                state[f"{prefix}.norm.weight"] = self.params[f"g{i}"][k, 0].detach().clone()
                state[f"{prefix}.norm.bias"] = self.params[f"s{i}"][k, 0].detach().clone()
            if self.norm == "batch":
                state[f"{prefix}.norm.running_mean"] = self.running[f"mean{i}"][k, 0].clone()
                state[f"{prefix}.norm.running_var"] = self.running[f"var{i}"][k, 0].clone()
                state[f"{prefix}.norm.num_batches_tracked"] = torch.tensor(self.batches_tracked)
        out = self.hidden
        state["output.weight"] = self.params[f"w{out}"][k].detach().T.clone()
        state["output.bias"] = self.params[f"b{out}"][k, 0].detach().clone()
        return state

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the members at `index` (the others have finished)."""
        self.flat = self.flat.detach()[index].clone().requires_grad_(True)
        self.params = self.views()
        for name, tensor in self.running.items():
            self.running[name] = tensor[index]
        self.keep_prob = self.keep_prob[index]


# --- per-member optimizers --------------------------------------------------------------------


def _column(values: Sequence[float], device: torch.device) -> torch.Tensor:
    """Per-member values shaped [K, 1], to broadcast against the [K, P] parameters."""
    return torch.tensor(list(values), dtype=torch.float32, device=device)[:, None]


class StackedOptimizer:
    """torch.optim's update rules (sgd, momentum, nesterov, rmsprop, adam, adamw) applied to
    the stack's [K, P] parameters, with per-member hyperparameters."""

    def __init__(self, kind: str, momentum: torch.Tensor, weight_decay: torch.Tensor):
        self.kind = kind
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.steps = 0

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], lr: torch.Tensor) -> None:
        self.steps += 1
        for name, param in params.items():
            if param.grad is None:
                continue
            state = self.state.setdefault(name, {})
            param.sub_(self._update(param, param.grad, state, lr))

    def _update(
        self, param: torch.Tensor, grad: torch.Tensor, state: dict, lr: torch.Tensor
    ) -> torch.Tensor:
        kind = self.kind
        if kind == "sgd":
            return lr * grad
        if kind in ("momentum", "nesterov"):
            if "buffer" not in state:
                state["buffer"] = grad.clone()
            else:
                state["buffer"].mul_(self.momentum).add_(grad)
            buffer = state["buffer"]
            direction = grad + self.momentum * buffer if kind == "nesterov" else buffer
            return lr * direction
        if kind == "rmsprop":
            square = state.setdefault("square", torch.zeros_like(param))
            square.mul_(_RMSPROP_ALPHA).addcmul_(grad, grad, value=1 - _RMSPROP_ALPHA)
            return lr * grad / (square.sqrt() + _RMSPROP_EPS)
        if kind in ("adam", "adamw"):
            if kind == "adamw":  # decoupled weight decay, before the Adam step
                param.mul_(1 - lr * self.weight_decay)
            beta1, beta2 = _ADAM_BETAS
            first = state.setdefault("first", torch.zeros_like(param))
            second = state.setdefault("second", torch.zeros_like(param))
            first.lerp_(grad, 1 - beta1)
            second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            correction1 = 1 - beta1**self.steps
            correction2 = math.sqrt(1 - beta2**self.steps)
            denominator = second.sqrt().div_(correction2).add_(_ADAM_EPS)
            return first.div(denominator).mul_(lr / correction1)
        raise ValueError(f"unknown optimizer {kind!r}")

    def keep(self, index: torch.Tensor) -> None:
        self.momentum = self.momentum[index]
        self.weight_decay = self.weight_decay[index]
        for state in self.state.values():
            for key, tensor in state.items():
                state[key] = tensor[index]


# --- the loop ---------------------------------------------------------------------------------


@dataclass
class _Member:
    """One trial inside a stack: its settings, callback and what it has become so far."""

    spec: Spec
    on_epoch: EpochCallback | None
    result: TrainResult
    best_loss: float = math.inf
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    done: bool = False


def _clip(flat: torch.Tensor, clip: torch.Tensor) -> None:
    """Per-member gradient-norm clipping, as clip_grad_norm_ does for one model."""
    norms = flat.grad.norm(dim=1, keepdim=True)
    flat.grad.mul_((clip / (norms + 1e-6)).clamp(max=1.0))


def _penalties(
    stack: StackedMLP, l1: torch.Tensor, l2: torch.Tensor, m: int
) -> torch.Tensor | float:
    """Per-member lambda/(2m) sum ||W||^2 + lambda/m sum |W| over the linear weights."""
    total: torch.Tensor | float = 0.0
    for name in stack.weight_names():
        weight = stack.params[name]
        total = total + l2[:, 0] / (2 * m) * weight.pow(2).sum((1, 2))
        total = total + l1[:, 0] / m * weight.abs().sum((1, 2))
    return total


def train_stack(
    specs: Sequence[Spec],
    data: Dataset,
    seeds: Sequence[int],
    on_epochs: Sequence[EpochCallback | None] | None = None,
    device: torch.device | None = None,
) -> list[TrainResult]:
    """Train same-shape trials together; one TrainResult per member, as `train_model` gives.
    A stack of one is the solo loop itself."""
    if len(specs) == 1:
        callback = on_epochs[0] if on_epochs else None
        return [train_model(specs[0], data, seeds[0], on_epoch=callback, device=device)]
    first = specs[0]
    if any(shape_key(s) != shape_key(first) for s in specs):
        raise ValueError("a stack needs trials of one shape (see shape_key)")
    device = device or resolve_device(first.device)
    loss_name = resolve_loss(first.train.loss, data.task)
    check_objective_metric(first.objective.metric, data.task)
    models = []
    for spec, seed in zip(specs, seeds, strict=True):
        torch.manual_seed(seed)  # the same initial weights the trial gets alone
        models.append(build_mlp(spec.model, data.n_features, data.n_outputs).to(device))
    stack = StackedMLP(models, first, [s.model.dropout for s in specs])
    on_epochs = on_epochs or [None] * len(specs)
    members = [
        _Member(spec, callback, TrainResult(model=model, state="complete", reason=None))
        for spec, callback, model in zip(specs, on_epochs, models, strict=True)
    ]
    adamw = first.train.optimizer == "adamw"  # adamw decays weights itself: no L2 term
    l1 = _column([s.train.l1 for s in specs], device)
    l2 = _column([0.0 if adamw else s.train.l2 for s in specs], device)
    penalize = any(s.train.l1 or (s.train.l2 and not adamw) for s in specs)
    clip = _column([s.train.grad_clip or math.inf for s in specs], device)
    clipping = any(s.train.grad_clip is not None for s in specs)
    optimizer = StackedOptimizer(
        first.train.optimizer,
        _column([s.train.momentum for s in specs], device),
        _column([s.train.l2 if adamw else 0.0 for s in specs], device),
    )
    train_split = on_device(data.splits["train"], device)
    dev_split = on_device(data.splits["dev"], device)
    active = list(range(len(members)))  # members still in the stack, in stack order
    epochs = first.train.epochs

    for epoch in range(epochs):
        started = time.perf_counter()
        lrs = [
            scheduled_lr(members[k].spec.train.lr, members[k].spec.train.lr_schedule, epoch, epochs)
            for k in active
        ]
        lr = _column(lrs, device)
        stack.train()
        cost_sums = torch.zeros(len(active), device=device)  # non-finite once a cost is
        y_train = train_split.y
        for index in epoch_batches(
            len(train_split),
            first.train.batch_size,
            first.seed,
            epoch,
            stack.norm == "batch",
            device,
        ):
            outputs = stack(train_split.X[index])  # [K, b, outputs]
            count, rows = outputs.shape[0], outputs.shape[1]
            losses = example_losses(
                loss_name,
                outputs.reshape(count * rows, -1),
                y_train[index].repeat(count),
                data.task,
            ).view(count, rows)
            if train_split.weight is None:
                costs = losses.mean(1)
            else:
                weight = train_split.weight[index]
                costs = (losses * weight).sum(1) / weight.sum()
            if penalize:
                costs = costs + _penalties(stack, l1, l2, rows)
            # members are independent: the gradient of the sum is each member's own gradient
            cost_sums = cost_sums + costs.detach()
            stack.flat.grad = None
            costs.sum().backward()
            if clipping:
                _clip(stack.flat, clip)
            optimizer.step({"flat": stack.flat}, lr)

        stack.eval()
        finite_now = torch.isfinite(cost_sums).tolist()
        # a stack's activations are K times a model's: smaller chunks keep them in cache
        rows = max(512, 16384 // len(active))
        train_outputs = predict(stack, train_split.X, rows)
        dev_outputs = predict(stack, dev_split.X, rows)
        seconds = time.perf_counter() - started
        for position, k in enumerate(active):
            member = members[k]
            diverged = not finite_now[position]
            record = {
                "epoch": epoch + 1,
                **_metrics(
                    "train", train_outputs, position, train_split, loss_name, data, diverged
                ),
                **_metrics("dev", dev_outputs, position, dev_split, loss_name, data, diverged),
                "lr": lrs[position],
                "seconds": seconds,
            }
            _after_epoch(member, record, epoch, lambda p=position: stack.member_state(p))

        still = [position for position, k in enumerate(active) if not members[k].done]
        if not still:
            break
        if len(still) < len(active):
            index = torch.tensor(still, device=device)
            stack.keep(index)
            optimizer.keep(index)
            l1, l2, clip = l1[index], l2[index], clip[index]
            active = [active[position] for position in still]

    for position, k in enumerate(active):
        if not members[k].done:  # ran every epoch
            members[k].result.model.load_state_dict(stack.member_state(position))
    for member in members:
        _finish(member, train_split, dev_split, loss_name, data)
    return [member.result for member in members]


def _metrics(
    prefix: str,
    outputs: torch.Tensor,
    position: int,
    split: DeviceSplit,
    loss: str,
    data: Dataset,
    diverged: bool,
) -> dict[str, float]:
    if diverged or len(split) == 0:
        return {}
    with torch.inference_mode():
        return prefixed(prefix, split_metrics(outputs[position], split, loss, data))


def _after_epoch(member: _Member, record: dict[str, Any], epoch: int, state_now) -> None:
    """The solo loop's end-of-epoch decisions for one member (no rescue inside stacks)."""
    result = member.result
    stopping = member.spec.train.early_stopping
    diverged = not all(math.isfinite(v) for v in record.values()) or "dev_loss" not in record
    result.history.append(record)
    result.epochs_run = epoch + 1
    if diverged:
        result.state, result.reason, member.done = "failed", "diverged", True
        return
    dev_loss = record["dev_loss"]
    min_delta = stopping.min_delta if stopping else 0.0
    if stopping is not None and dev_loss < member.best_loss - min_delta:
        member.best_loss, member.bad_epochs = dev_loss, 0
        member.best_state = state_now()
    elif stopping is not None:
        member.bad_epochs += 1
    if stopping is None or member.bad_epochs == 0:
        result.best_epoch = epoch + 1
    if member.on_epoch is not None and member.on_epoch(record):
        result.state, result.reason = "pruned", "pruned"
    elif stopping is not None and member.bad_epochs >= stopping.patience:
        result.stopped_early = True
    else:
        return
    member.done = True
    result.model.load_state_dict(state_now())


def _finish(
    member: _Member, train: DeviceSplit, dev: DeviceSplit, loss: str, data: Dataset
) -> None:
    """Best weights back (early stopping), then the final metrics, by the solo code."""
    result = member.result
    if result.state == "failed":
        return
    if member.spec.train.early_stopping is not None and member.best_state is not None:
        result.model.load_state_dict(member.best_state)
    result.metrics = epoch_metrics(result) or {
        **prefixed("train", evaluate(result.model, train, loss, data)),
        **prefixed("dev", evaluate(result.model, dev, loss, data)),
    }
