import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, r2_score, recall_score

from hpsearch.errors import InputError
from hpsearch.space import apply_params
from hpsearch.train import (
    classification_metrics,
    example_losses,
    regression_metrics,
    resolve_loss,
    scheduled_lr,
    train_model,
    weight_penalty,
    weighted_mean,
)

# The lecture's worked example: predictions y_hat against labels y.
Y_HAT = torch.tensor([0.78, 0.89, 0.12, 0.08, 0.97], dtype=torch.float64)
Y = torch.tensor([1, 1, 0, 0, 1])
LOGITS = torch.log(Y_HAT / (1 - Y_HAT)).reshape(-1, 1)


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        ("l1", 0.56),
        ("l2", 0.0822),
        ("bce", 0.6066693634880955),
        ("cross_entropy", 0.6066693634880955),
    ],
)
def test_losses_match_hand_computation(loss, expected):
    total = example_losses(loss, LOGITS, Y, "binary").sum().item()
    assert total == pytest.approx(expected, abs=1e-6)


def test_regression_losses():
    prediction = torch.tensor([[1.0], [2.0], [4.0]])
    target = torch.tensor([1.5, 2.0, 1.0])
    assert example_losses("l1", prediction, target, "regression").sum().item() == pytest.approx(3.5)
    assert example_losses("l2", prediction, target, "regression").sum().item() == pytest.approx(
        9.25
    )
    huber = example_losses("huber", prediction, target, "regression")
    assert huber.tolist() == pytest.approx([0.125, 0.0, 2.5])


def test_multiclass_cross_entropy_matches_torch():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    ours = example_losses("cross_entropy", logits, y, "multiclass").mean()
    assert ours.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item())


def test_weighted_cost_is_sum_s_l_over_sum_s():
    losses = torch.tensor([1.0, 2.0, 3.0])
    weights = torch.tensor([1.0, 1.0, 2.0])
    assert weighted_mean(losses, weights).item() == pytest.approx((1 + 2 + 6) / 4)
    assert weighted_mean(losses, None).item() == pytest.approx(2.0)


def test_l2_penalty_is_lambda_over_2m_frobenius():
    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        layer.bias.fill_(100.0)  # biases are not penalized
    model = torch.nn.Sequential(layer)
    assert float(weight_penalty(model, l1=0.0, l2=0.5, m=10).detach()) == pytest.approx(
        0.5 / 20 * 30
    )
    assert float(weight_penalty(model, l1=0.1, l2=0.0, m=10).detach()) == pytest.approx(
        0.1 / 10 * 10
    )


def test_lr_schedules():
    assert scheduled_lr(0.1, "none", 5, 10) == 0.1
    assert scheduled_lr(0.1, "cosine", 0, 10) == pytest.approx(0.1)
    assert scheduled_lr(0.1, "cosine", 5, 10) == pytest.approx(0.05)
    assert scheduled_lr(0.1, "step", 4, 9) == pytest.approx(0.01)
    assert scheduled_lr(0.1, "exponential", 10, 10) == pytest.approx(0.001)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_classification_metrics_match_sklearn(n_classes):
    rng = np.random.default_rng(0)
    y = rng.integers(0, n_classes, 200)
    predicted = np.where(rng.random(200) < 0.7, y, rng.integers(0, n_classes, 200))
    ours = classification_metrics(torch.tensor(predicted), torch.tensor(y), n_classes)
    average = "binary" if n_classes == 2 else "macro"
    assert ours["accuracy"] == pytest.approx(np.mean(predicted == y))
    assert ours["precision"] == pytest.approx(precision_score(y, predicted, average=average))
    assert ours["recall"] == pytest.approx(recall_score(y, predicted, average=average))
    assert ours["f1"] == pytest.approx(f1_score(y, predicted, average=average))


def test_regression_metrics():
    y = torch.tensor([0.0, 1.0, -1.0, 2.0])
    prediction = torch.tensor([0.5, 1.0, -1.5, 1.0])
    metrics = regression_metrics(prediction, y, std=2.0)
    assert metrics["error"] == pytest.approx(np.mean([0.25, 0, 0.25, 1.0]))
    assert metrics["mse"] == pytest.approx(4 * metrics["error"])
    assert metrics["r2"] == pytest.approx(r2_score(y.numpy(), prediction.numpy()))


def test_loss_must_fit_the_task():
    with pytest.raises(InputError, match="train.loss"):
        resolve_loss("cross_entropy", "regression")
    assert resolve_loss("auto", "multiclass") == "cross_entropy"


def test_training_learns_and_restores_best(iris_spec, iris_data):
    result = train_model(iris_spec, iris_data, seed=0)
    assert result.state == "complete"
    assert result.metrics["dev_accuracy"] > 0.85
    assert 1 <= result.best_epoch <= result.epochs_run
    assert len(result.history) == result.epochs_run
    assert {"train_loss", "dev_loss", "train_error", "dev_f1", "lr", "seconds"} <= set(
        result.history[0]
    )
    assert not any(key.startswith("test_") for key in result.metrics)


def test_same_seed_same_metrics(iris_spec, iris_data):
    first = train_model(iris_spec, iris_data, seed=3).history
    second = train_model(iris_spec, iris_data, seed=3).history
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in first]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in second]


def test_huge_lr_diverges(iris_spec, iris_data):
    spec = apply_params(iris_spec, {"train.lr": 1e6, "train.optimizer": "sgd", "train.loss": "mse"})
    spec = apply_params(spec, {"model.init": "default"})
    spec = apply_params(spec, {"train.loss": "cross_entropy", "train.optimizer": "momentum"})
    result = train_model(spec, iris_data, seed=0)
    assert result.state == "failed"
    assert result.reason == "diverged"


def test_pruning_callback_stops(iris_spec, iris_data):
    result = train_model(iris_spec, iris_data, seed=0, on_epoch=lambda record: record["epoch"] == 3)
    assert (result.state, result.reason, result.epochs_run) == ("pruned", "pruned", 3)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"])
def test_every_optimizer_trains(iris_spec, iris_data, optimizer):
    spec = apply_params(
        iris_spec, {"train.optimizer": optimizer, "train.lr": 0.05, "train.epochs": 5}
    )
    result = train_model(spec, iris_data, seed=0)
    assert result.state == "complete"
    assert math.isfinite(result.metrics["dev_loss"])


def test_rescue_rolls_back_and_cuts_lr_once(iris_data):
    from tests.conftest import make_spec

    spec = make_spec(train={"lr": 30.0, "optimizer": "momentum", "epochs": 15})
    spec = apply_params(spec, {"model.init": "default"})
    assert train_model(spec, iris_data, seed=0).reason == "diverged"
    result = train_model(spec, iris_data, seed=0, rescue=True)
    events = [r for r in result.history if "event" in r]
    assert result.state == "complete"
    assert events == [
        {"epoch": events[0]["epoch"], "event": "rescue", "reason": "diverged", "lr": 3.0}
    ]
    after = [
        r["lr"] for r in result.history if "event" not in r and r["epoch"] > events[0]["epoch"]
    ]
    assert after and all(lr == pytest.approx(3.0) for lr in after)
