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


# --- each init follows its documented distribution -------------------------------------------

FAN = 256  # a square hidden layer: fan_in = fan_out, so the bounds are easy to state


def hidden_weight(init: str, activation: str = "relu") -> torch.Tensor:
    torch.manual_seed(1)
    model = build_mlp(ModelSpec(hidden=[FAN, FAN], init=init, activation=activation), FAN, 2)
    return model.hidden[1].linear.weight.detach().double().flatten()


def kurtosis(w: torch.Tensor) -> float:
    centred = w - w.mean()
    return float((centred**4).mean() / (centred**2).mean() ** 2)


def uniform_with_bound(w: torch.Tensor, bound: float) -> bool:
    """Inside [-bound, bound], filling it (max near the bound), flat (kurtosis 1.8)."""
    return bool(w.abs().max() <= bound) and w.abs().max() > 0.98 * bound and kurtosis(w) < 2.0


def normal_with_std(w: torch.Tensor, std: float) -> bool:
    return abs(float(w.std()) / std - 1) < 0.03 and abs(kurtosis(w) - 3.0) < 0.3


CHECKS = {
    "xavier_uniform": lambda w: uniform_with_bound(w, (6 / (2 * FAN)) ** 0.5),
    "xavier_normal": lambda w: normal_with_std(w, (2 / (2 * FAN)) ** 0.5),
    # relu's gain sqrt(2), fan_in mode
    "kaiming_uniform": lambda w: uniform_with_bound(w, (2**0.5) * (3 / FAN) ** 0.5),
    "kaiming_normal": lambda w: normal_with_std(w, (2 / FAN) ** 0.5),
    "orthogonal": lambda w: torch.allclose(
        w.view(FAN, FAN) @ w.view(FAN, FAN).T, torch.eye(FAN, dtype=torch.float64), atol=1e-5
    ),
}


@pytest.mark.parametrize("init", list(CHECKS))
def test_each_init_follows_its_distribution_and_torch_default_does_not(init):
    assert CHECKS[init](hidden_weight(init))
    assert not CHECKS[init](hidden_weight("default"))


def test_kaiming_uses_the_gain_of_its_activation():
    relu, tanh = hidden_weight("kaiming_normal", "relu"), hidden_weight("kaiming_normal", "tanh")
    assert normal_with_std(relu, (2 / FAN) ** 0.5)
    assert normal_with_std(tanh, (1 / FAN) ** 0.5)  # no rectifier: gain 1 ("linear")


# --- residual connections ---------------------------------------------------------------------


def test_a_residual_block_adds_its_input():
    spec = ModelSpec(hidden=[8, 8], residual=True)
    torch.manual_seed(0)
    with_skip = build_mlp(spec, 8, 2)
    torch.manual_seed(0)
    plain = build_mlp(spec.model_copy(update={"residual": False}), 8, 2)
    x = torch.randn(5, 8)
    for skip, block in zip(with_skip.hidden, plain.hidden, strict=True):
        assert skip.residual and not block.residual
        assert torch.allclose(skip(x), x + block(x))
    assert not torch.allclose(with_skip(x), plain(x))


def test_no_skip_where_widths_differ():
    model = build_mlp(ModelSpec(hidden=[8, 4], residual=True), 8, 2)
    assert [block.residual for block in model.hidden] == [True, False]
