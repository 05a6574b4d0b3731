"""K same-shape MLPs as one batched model, and torch.optim's update rules on it per member.

Each member's weights sit along a leading member axis (a layer's weight is [K, in, out]), so a
layer of K small MLPs is one batched matmul and K trials cost little more than one. A solo
trial is a stack of one. Everything random or stateful is kept per member: initial weights
(built by `model.build_mlp` from the member's seed), dropout masks (drawn from the member's
own generator), batch-norm statistics, optimizer moments and step counts. So a member trains
the same whether it is alone or has neighbours, and whichever neighbours, and a member's state
can be cut out (`member_snapshot`) and put back (`load_member`) for checkpoints and rescue.
No optuna, no files, no loop (the loop is `train.train`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hpsearch.model import ACTIVATIONS, MLP
from hpsearch.spec import Spec

_EPS_NORM = 1e-5  # torch's BatchNorm1d / LayerNorm defaults
_BN_MOMENTUM = 0.1
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_RMSPROP_ALPHA, _RMSPROP_EPS = 0.99, 1e-8


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
        model.freeze,
        # members fit on one train split, so they oversample it alike
        None if spec.data.oversample is None else spec.data.oversample.model_dump_json(),
    )


def dropout_seed(seed: int) -> int:
    """The seed of a member's dropout generator, derived from its trial seed alone."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])


def noise_seed(seed: int) -> int:
    """The seed of a member's input-noise generator (data.augment), from its trial seed alone."""
    return int(np.random.SeedSequence([seed, 3]).generate_state(1)[0])


def _per_member(
    values: Sequence[np.ndarray | None], fill: float, device: torch.device
) -> torch.Tensor | None:
    """Per-member feature vectors as [K, 1, features]; None when no member has one."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    width = len(present[0])
    rows = [np.full(width, fill, np.float32) if v is None else v for v in values]
    return torch.as_tensor(np.stack(rows), device=device)[:, None, :]


# --- the batched model ------------------------------------------------------------------------


class StackedMLP:
    """K MLPs of one shape as stacked tensors; every tensor has the member axis first.

    Names: w{i}/b{i} for layer i's weight [K, in, out] and bias [K, 1, out] (the last layer is
    the output), g{i}/s{i} for a hidden layer's norm scale and shift, mean{i}/var{i} for batch
    norm's running statistics. All trainable values live in one [K, P] tensor (`flat`) and the
    named ones are views of it, so an optimizer step is a handful of whole-stack operations.
    """

    def __init__(
        self,
        models: Sequence[MLP],
        spec: Spec,
        dropouts: Sequence[float],
        seeds: Sequence[int],
        input_scales: Sequence[np.ndarray | None] = (),
        noise_stds: Sequence[np.ndarray | None] = (),
    ):
        model_spec = spec.model
        self.frozen = model_spec.freeze  # the first hidden layers, kept as they start
        self.norm = model_spec.norm
        self.activation = ACTIVATIONS[model_spec.activation]()
        blocks = [list(m.hidden) for m in models]
        self.hidden = len(blocks[0])
        self.residual = [block.residual for block in blocks[0]]
        pieces: dict[str, torch.Tensor] = {}
        self.running: dict[str, torch.Tensor] = {}

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
        self.drop = list(dropouts)
        self.keep_prob = torch.tensor([1.0 - p for p in dropouts], device=device)[:, None, None]
        self.dropout = any(p > 0 for p in dropouts)
        # each member's dropout masks come from its own generator: what its neighbours draw
        # cannot change them
        self.generators = [
            torch.Generator(device=device).manual_seed(dropout_seed(seed)) for seed in seeds
        ]
        self.batches_tracked = [0] * count
        self.training = True
        # attribute strengths scale every input; noise is added to train batches only
        self.input_scale = _per_member(input_scales, 1.0, device)
        self.noise_std = _per_member(noise_stds, 0.0, device)
        self.noise_generators = [
            torch.Generator(device=device).manual_seed(noise_seed(seed)) for seed in seeds
        ]
        frozen = [f"{kind}{i}" for i in range(self.frozen) for kind in "wbgs"]
        names = list(self.shapes)
        prefix = names[: len([n for n in names if n in frozen])]
        assert all(n in frozen for n in prefix)  # frozen layers lead `flat`, in layer order
        self.frozen_size = sum(self.sizes[: len(prefix)])  # columns of `flat` never updated

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
        """The trained linear layers' weights: the ones L1/L2 penalize (not biases, norm
        scales or frozen layers)."""
        return [f"w{i}" for i in range(self.frozen, self.hidden + 1)]

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
        if self.training and self.noise_std is not None:
            h = x + self._noise(x)  # [K, n, in]
        return self._forward(h, self.params, self.running, self.input_scale)

    def member_outputs(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Member k alone, in eval mode: [n, in] -> [1, n, outputs]. On the CPU one member at
        a time in cache-sized chunks evaluates faster than the whole stack at once, whose
        batched products of many small matrices run at a fraction of a large product's speed
        (16 members, 20,000 rows, one thread: 47 ms member by member, 93 to 110 ms stacked)."""
        assert not self.training  # training draws noise and dropout for the whole stack
        one = slice(k, k + 1)
        params = {name: tensor[one] for name, tensor in self.views().items()}
        running = {name: tensor[one] for name, tensor in self.running.items()}
        scale = None if self.input_scale is None else self.input_scale[one]
        return self._forward(x, params, running, scale)

    @property
    def widest(self) -> int:
        """The widest side of the weight matrices (the inputs or a layer's units)."""
        return max(max(shape) for name, shape in self.shapes.items() if name.startswith("w"))

    def _forward(
        self,
        h: torch.Tensor,
        params: dict[str, torch.Tensor],
        running: dict[str, torch.Tensor],
        input_scale: torch.Tensor | None,
    ) -> torch.Tensor:
        if input_scale is not None:
            h = h * input_scale
        for i in range(self.hidden):
            z = self._linear(params, i, h)
            z = self.activation(self._normalize(params, running, i, z))
            if self.training and self.dropout:
                z = z * self._dropout_masks(z)
            h = h + z if self.residual[i] else z
        return self._linear(params, self.hidden, h)

    def _dropout_masks(self, z: torch.Tensor) -> torch.Tensor:
        """Inverted-dropout multipliers [K, n, width]: 0 or 1/keep, each member's own draw."""
        shape = z.shape[1:]
        masks = []
        for k, generator in enumerate(self.generators):
            if self.drop[k] > 0:
                draw = torch.rand(shape, generator=generator, device=z.device, dtype=z.dtype)
                masks.append((draw < 1.0 - self.drop[k]).to(z.dtype) / (1.0 - self.drop[k]))
            else:
                masks.append(torch.ones(shape, device=z.device, dtype=z.dtype))
        return masks[0][None] if len(masks) == 1 else torch.stack(masks)

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian input noise [K, n, in], each member's own draw and scale."""
        assert self.noise_std is not None
        draws = []
        for k, generator in enumerate(self.noise_generators):
            if bool((self.noise_std[k] > 0).any()):
                draw = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                draws.append(draw * self.noise_std[k])
            else:
                draws.append(torch.zeros_like(x))
        return torch.stack(draws)

    @staticmethod
    def _linear(params: dict[str, torch.Tensor], i: int, h: torch.Tensor) -> torch.Tensor:
        weight, bias = params[f"w{i}"], params[f"b{i}"]
        if h.dim() == 2:  # the input, shared by every member
            return torch.baddbmm(bias, h.expand(weight.shape[0], *h.shape), weight)
        return torch.baddbmm(bias, h, weight)

    def _normalize(
        self,
        params: dict[str, torch.Tensor],
        running: dict[str, torch.Tensor],
        i: int,
        z: torch.Tensor,
    ) -> torch.Tensor:
        if self.norm == "none":
            return z
        if self.norm == "layer":
            z = F.layer_norm(z, z.shape[-1:], eps=_EPS_NORM)
        elif self.training and i >= self.frozen:  # a frozen layer keeps its statistics too
            mean = z.mean(1, keepdim=True)
            var = z.var(1, keepdim=True, unbiased=False)
            n = z.shape[1]
            with torch.no_grad():
                running[f"mean{i}"].lerp_(mean, _BN_MOMENTUM)
                running[f"var{i}"].lerp_(var * n / max(n - 1, 1), _BN_MOMENTUM)
            if i == self.frozen:
                self.batches_tracked = [t + 1 for t in self.batches_tracked]
            z = (z - mean) / torch.sqrt(var + _EPS_NORM)
        else:
            mean, var = running[f"mean{i}"], running[f"var{i}"]
            z = (z - mean) / torch.sqrt(var + _EPS_NORM)
        return z * params[f"g{i}"] + params[f"s{i}"]

    # --- one member at a time ---

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k as a solo `MLP`'s state dict (a copy)."""
        return self.solo_state(self.member_snapshot(k))

    def solo_state(self, snapshot: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A member snapshot (see `member_snapshot`) as a solo `MLP`'s state dict."""
        chunks = snapshot["flat"].detach().split(self.sizes)
        params = {
            name: chunk.view(shape)
            for (name, shape), chunk in zip(self.shapes.items(), chunks, strict=True)
        }
        running = snapshot["running"]
        state: dict[str, torch.Tensor] = {}
        for i in range(self.hidden):
            prefix = f"hidden.{i}"
            state[f"{prefix}.linear.weight"] = params[f"w{i}"].T.clone()
            state[f"{prefix}.linear.bias"] = params[f"b{i}"][0].clone()
            if self.norm != "none":
                state[f"{prefix}.norm.weight"] = params[f"g{i}"][0].clone()
                state[f"{prefix}.norm.bias"] = params[f"s{i}"][0].clone()
            if self.norm == "batch":
                state[f"{prefix}.norm.running_mean"] = running[f"mean{i}"][0].clone()
                state[f"{prefix}.norm.running_var"] = running[f"var{i}"][0].clone()
                tracked = torch.tensor(snapshot["tracked"])
                state[f"{prefix}.norm.num_batches_tracked"] = tracked
        out = self.hidden
        state["output.weight"] = params[f"w{out}"].T.clone()
        state["output.bias"] = params[f"b{out}"][0].clone()
        scale = snapshot.get("scale")
        if scale is not None and not bool((scale == 1).all()):  # see model.MLP.input_scale
            state["input_scale"] = scale.clone()
        return state

    def member_snapshot(self, k: int) -> dict[str, Any]:
        """Member k's weights and statistics (copies), as `load_member` takes them back."""
        return {
            "flat": self.flat[k].detach().clone(),
            "running": {name: t[k].clone() for name, t in self.running.items()},
            "tracked": self.batches_tracked[k],
            "scale": None if self.input_scale is None else self.input_scale[k, 0].clone(),
        }

    @torch.no_grad()
    def load_member(self, k: int, snapshot: dict[str, Any]) -> None:
        self.flat[k].copy_(snapshot["flat"])
        for name, tensor in self.running.items():
            tensor[k].copy_(snapshot["running"][name])
        self.batches_tracked[k] = int(snapshot["tracked"])

    def generator_state(self, k: int) -> dict[str, torch.Tensor]:
        return {
            "dropout": self.generators[k].get_state(),
            "noise": self.noise_generators[k].get_state(),
        }

    def set_generator_state(self, k: int, state: torch.Tensor | dict[str, torch.Tensor]) -> None:
        if isinstance(state, torch.Tensor):  # a checkpoint from before input noise
            state = {"dropout": state}
        self.generators[k].set_state(state["dropout"])
        if "noise" in state:
            self.noise_generators[k].set_state(state["noise"])

    def keep(self, index: list[int]) -> None:
        """Keep only the members at `index` (the others have finished)."""
        rows = torch.tensor(index, device=self.flat.device)
        self.flat = self.flat.detach()[rows].clone().requires_grad_(True)
        self.params = self.views()
        for name, tensor in self.running.items():
            self.running[name] = tensor[rows]
        self.keep_prob = self.keep_prob[rows]
        self.drop = [self.drop[k] for k in index]
        self.dropout = any(p > 0 for p in self.drop)
        self.generators = [self.generators[k] for k in index]
        self.noise_generators = [self.noise_generators[k] for k in index]
        if self.input_scale is not None:
            self.input_scale = self.input_scale[rows]
        if self.noise_std is not None:
            self.noise_std = self.noise_std[rows]
        self.batches_tracked = [self.batches_tracked[k] for k in index]


# --- per-member optimizers --------------------------------------------------------------------


def column(values: Sequence[float], device: torch.device) -> torch.Tensor:
    """Per-member values shaped [K, 1], to broadcast against the [K, P] parameters."""
    return torch.tensor(list(values), dtype=torch.float32, device=device)[:, None]


_MOMENTS = {
    "sgd": (),
    "momentum": ("buffer",),
    "nesterov": ("buffer",),
    "rmsprop": ("square",),
    "adam": ("first", "second"),
    "adamw": ("first", "second"),
}


class StackedOptimizer:
    """torch.optim's update rules (sgd, momentum, nesterov, rmsprop, adam, adamw) applied to
    the stack's [K, P] parameters, with per-member hyperparameters, moments and step counts.

    Moments start at zero, which gives torch's first steps exactly (a momentum buffer's first
    value is the gradient; Adam's bias correction counts each member's own steps)."""

    def __init__(
        self,
        kind: str,
        flat: torch.Tensor,
        momentum: torch.Tensor,
        weight_decay: torch.Tensor,
        frozen: int = 0,
    ):
        if kind not in _MOMENTS:
            raise ValueError(f"unknown optimizer {kind!r}")
        self.kind = kind
        self.momentum = momentum
        self.weight_decay = weight_decay
        # the first `frozen` columns of `flat` (model.freeze) get no update, no decay, no moments
        self.frozen = frozen
        trained = flat.detach()[:, frozen:]
        self.state = {name: torch.zeros_like(trained) for name in _MOMENTS[kind]}
        self.steps = torch.zeros(flat.shape[0], 1, dtype=torch.float64, device=flat.device)

    @torch.no_grad()
    def step(self, param: torch.Tensor, lr: torch.Tensor) -> None:
        if param.grad is not None:
            self.steps += 1
            trained = param[:, self.frozen :]
            trained.sub_(self._update(trained, param.grad[:, self.frozen :], lr))

    def _update(self, param: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        kind, state = self.kind, self.state
        if kind == "sgd":
            return lr * grad
        if kind in ("momentum", "nesterov"):
            buffer = state["buffer"].mul_(self.momentum).add_(grad)
            direction = grad + self.momentum * buffer if kind == "nesterov" else buffer
            return lr * direction
        if kind == "rmsprop":
            square = state["square"]
            square.mul_(_RMSPROP_ALPHA).addcmul_(grad, grad, value=1 - _RMSPROP_ALPHA)
            return lr * grad / (square.sqrt() + _RMSPROP_EPS)
        # adam, adamw
        if kind == "adamw":  # decoupled weight decay, before the Adam step
            param.mul_(1 - lr * self.weight_decay)
        beta1, beta2 = _ADAM_BETAS
        first, second = state["first"], state["second"]
        first.lerp_(grad, 1 - beta1)
        second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # corrections in double precision from each member's own step count, as torch does
        correction1 = (1 - beta1**self.steps).to(param.dtype)
        correction2 = torch.sqrt(1 - beta2**self.steps).to(param.dtype)
        denominator = second.sqrt().div_(correction2).add_(_ADAM_EPS)
        return first.div(denominator).mul_(lr / correction1)

    def member_state(self, k: int) -> dict[str, Any]:
        return {
            "moments": {name: tensor[k].clone() for name, tensor in self.state.items()},
            "steps": float(self.steps[k, 0]),
        }

    def load_member(self, k: int, saved: dict[str, Any]) -> None:
        for name, tensor in self.state.items():
            tensor[k].copy_(saved["moments"][name])
        self.steps[k, 0] = saved["steps"]

    def reset_member(self, k: int) -> None:
        """Fresh moments for member k, as a new torch optimizer would start."""
        for tensor in self.state.values():
            tensor[k].zero_()
        self.steps[k, 0] = 0

    def keep(self, index: list[int]) -> None:
        rows = torch.tensor(index, device=self.steps.device)
        self.momentum = self.momentum[rows]
        self.weight_decay = self.weight_decay[rows]
        self.state = {name: tensor[rows] for name, tensor in self.state.items()}
        self.steps = self.steps[rows]


def clip_gradients(flat: torch.Tensor, clip: torch.Tensor, frozen: int = 0) -> None:
    """Per-member gradient-norm clipping, as clip_grad_norm_ does for one model's trained
    parameters (frozen layers, the first `frozen` columns, have no gradient there)."""
    grad = flat.grad[:, frozen:]
    norms = grad.norm(dim=1, keepdim=True)
    grad.mul_((clip / (norms + 1e-6)).clamp(max=1.0))


def penalties(stack: StackedMLP, l1: torch.Tensor, l2: torch.Tensor, m: int) -> torch.Tensor:
    """Per-member lambda/(2m) sum ||W||^2 + lambda/m sum |W| over the linear weights."""
    total = torch.zeros(stack.members, device=stack.flat.device)
    for name in stack.weight_names():
        weight = stack.params[name]
        total = total + l2[:, 0] / (2 * m) * weight.pow(2).sum((1, 2))
        total = total + l1[:, 0] / m * weight.abs().sum((1, 2))
    return total
