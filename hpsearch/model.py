"""Build the MLP a spec describes. Knows nothing of search, data loading or files."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from hpsearch.spec import ModelSpec

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "selu": nn.SELU,
}

# Kaiming init wants the nonlinearity it is tuned for; others get torch's generic gain.
_KAIMING_NONLINEARITY = {"relu": "relu", "leaky_relu": "leaky_relu"}


class HiddenBlock(nn.Module):
    """Linear -> optional norm -> activation -> optional dropout, with an optional skip."""

    def __init__(self, n_in: int, n_out: int, spec: ModelSpec):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.norm: nn.Module = {
            "batch": lambda: nn.BatchNorm1d(n_out),
            "layer": lambda: nn.LayerNorm(n_out),
            "none": nn.Identity,
        }[spec.norm]()
        self.activation = ACTIVATIONS[spec.activation]()
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        # Skip connections only where shapes allow (equal widths), as in residual networks.
        self.residual = spec.residual and n_in == n_out
        self.normalizes = spec.norm != "none"
        self.drops = spec.dropout > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Identity modules are skipped, not called: a module call costs about as much as a
        # small layer's arithmetic, and a search makes millions of them.
        out = self.linear(x)
        if self.normalizes:
            out = self.norm(out)
        out = self.activation(out)
        if self.drops:
            out = self.dropout(out)
        return x + out if self.residual else out


class MLP(nn.Module):
    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        spec: ModelSpec,
        input_scale: Sequence[float] | None = None,
    ):
        super().__init__()
        # attribute strengths (data.feature_weights): a fixed factor per input feature, kept
        # with the weights so a saved model predicts as it was trained; absent when all are 1
        if input_scale is not None:
            self.register_buffer(
                "input_scale", torch.as_tensor(np.asarray(input_scale, dtype=np.float32))
            )
        else:
            self.input_scale: torch.Tensor | None = None
        widths = [n_inputs, *spec.widths]
        self.hidden = nn.Sequential(
            *(HiddenBlock(a, b, spec) for a, b in zip(widths[:-1], widths[1:], strict=True))
        )
        self.output = nn.Linear(widths[-1], n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x * self.input_scale
        for block in self.hidden:
            x = block(x)
        return self.output(x)


def initialize(module: nn.Module, init: str, activation: str) -> None:
    """Initialize every Linear layer's weights (biases to zero) with the named scheme."""
    if init == "default":
        return
    nonlinearity = _KAIMING_NONLINEARITY.get(activation, "linear")
    for layer in module.modules():
        if not isinstance(layer, nn.Linear):
            continue
        if init == "xavier_uniform":
            nn.init.xavier_uniform_(layer.weight)
        elif init == "xavier_normal":
            nn.init.xavier_normal_(layer.weight)
        elif init == "kaiming_uniform":
            nn.init.kaiming_uniform_(layer.weight, nonlinearity=nonlinearity)
        elif init == "kaiming_normal":
            nn.init.kaiming_normal_(layer.weight, nonlinearity=nonlinearity)
        elif init == "orthogonal":
            nn.init.orthogonal_(layer.weight)
        else:
            raise ValueError(f"unknown init {init!r}")
        nn.init.zeros_(layer.bias)


def build_mlp(
    spec: ModelSpec, n_inputs: int, n_outputs: int, input_scale: Sequence[float] | None = None
) -> MLP:
    """The MLP for `spec`: hidden blocks, then a linear output (logits or a regression value)."""
    model = MLP(n_inputs, n_outputs, spec, input_scale)
    initialize(model, spec.init, spec.activation)
    return model
