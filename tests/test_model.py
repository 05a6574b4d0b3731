import pytest
import torch
from torch import nn

from hpsearch.model import build_mlp
from hpsearch.spec import ModelSpec


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_shapes_follow_hidden_widths():
    model = build_mlp(ModelSpec(hidden=[16, 8]), n_inputs=5, n_outputs=3)
    shapes = [tuple(layer.weight.shape) for layer in linear_layers(model)]
    assert shapes == [(16, 5), (8, 16), (3, 8)]
    assert model(torch.zeros(4, 5)).shape == (4, 3)


def test_layers_and_units():
    model = build_mlp(ModelSpec(layers=3, units=7), 4, 1)
    assert len(linear_layers(model)) == 4


@pytest.mark.parametrize(
    "init", ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal"]
)
def test_inits_zero_biases_and_differ_from_default(init):
    torch.manual_seed(0)
    model = build_mlp(ModelSpec(hidden=[32], init=init), 32, 2)
    first = linear_layers(model)[0]
    assert torch.all(first.bias == 0)
    if init == "orthogonal":
        weight = first.weight
        assert torch.allclose(weight @ weight.T, torch.eye(32), atol=1e-4)


def test_xavier_uniform_bound():
    model = build_mlp(ModelSpec(hidden=[50], init="xavier_uniform"), 50, 2)
    bound = (6 / (50 + 50)) ** 0.5
    assert linear_layers(model)[0].weight.abs().max() <= bound


def test_residual_adds_skip_only_between_equal_widths():
    model = build_mlp(ModelSpec(hidden=[8, 8, 4], residual=True), 3, 1)
    flags = [block.residual for block in model.hidden]
    assert flags == [False, True, False]


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_norm_layers_present(norm):
    model = build_mlp(ModelSpec(hidden=[8], norm=norm), 3, 1)
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("BatchNorm1d" if norm == "batch" else "LayerNorm") in kinds


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = build_mlp(ModelSpec(hidden=[64], dropout=0.5), 8, 1)
    x = torch.randn(16, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
