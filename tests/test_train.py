import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, r2_score, recall_score

from hpsearch.errors import InputError
from hpsearch.metrics import (
    classification_metrics,
    example_losses,
    regression_metrics,
    weighted_mean,
)
from hpsearch.model import build_mlp
from hpsearch.space import apply_params
from hpsearch.spec import resolve_loss
from hpsearch.stacked import StackedMLP, column, penalties
from hpsearch.train import (
    Member,
    TrainHooks,
    scheduled_lr,
    train,
    train_model,
)
from tests.conftest import make_spec

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
    spec = make_spec(model={"hidden": [2]})
    model = build_mlp(spec.model, 2, 1)
    with torch.no_grad():
        model.hidden[0].linear.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        model.output.weight.copy_(torch.tensor([[-1.0, 1.0]]))
        for bias in (model.hidden[0].linear.bias, model.output.bias):
            bias.fill_(100.0)  # biases are not penalized
    stack = StackedMLP([model], spec, [0.0], [0])
    cpu = torch.device("cpu")

    def penalty(l1, l2):
        return penalties(stack, column([l1], cpu), column([l2], cpu), m=10).item()

    assert penalty(l1=0.0, l2=0.5) == pytest.approx(0.5 / 20 * (30 + 2))
    assert penalty(l1=0.1, l2=0.0) == pytest.approx(0.1 / 10 * (10 + 2))


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


def test_asked_rescue_and_end_act_after_the_epoch_they_were_asked_in(iris_data):
    """panda --interactive's keys: `r` rescues now (even with rescue off), `k` ends the trial
    as early stopping would, with the best weights so far."""
    spec = make_spec(train={"lr": 0.05, "epochs": 40, "early_stopping": {"patience": 40}})
    orders = {3: "rescue", 6: "end"}
    epochs = {"seen": 0}

    def on_epoch(k, record):
        if "event" not in record:
            epochs["seen"] = record["epoch"]

    hooks = TrainHooks(on_epoch=on_epoch, command=lambda: orders.pop(epochs["seen"], None))
    (result,) = train([Member(spec, 0)], iris_data, hooks)
    events = [r for r in result.history if "event" in r]
    assert events == [
        {"epoch": 3, "event": "rescue", "reason": "asked", "lr": pytest.approx(0.005)},
        {"epoch": 6, "event": "ended", "reason": "asked"},
    ]
    assert result.state == "complete" and result.stopped_early and result.epochs_run == 6
    lrs = [r["lr"] for r in result.history if "event" not in r]
    assert lrs[:3] == [0.05] * 3 and lrs[3:] == [pytest.approx(0.005)] * 3
    assert result.best_epoch <= 6


# --- checkpoints: stop anywhere, go on exactly -----------------------------------------------


def _stop_after(batches: int):
    """Hooks that collect every member's state after each batch and stop after `batches`."""
    seen = {"batches": 0}
    states: dict[int, list] = {}

    def stop_requested():
        seen["batches"] += 1
        return seen["batches"] >= batches

    def checkpoint(k, state):
        states.setdefault(k, []).append(state)

    hooks = TrainHooks(checkpoint=checkpoint, checkpoint_seconds=0.0, stop_requested=stop_requested)
    return hooks, states


def _same_training(a, b):
    assert (a.state, a.epochs_run, a.best_epoch, a.stopped_early) == (
        b.state,
        b.epochs_run,
        b.best_epoch,
        b.stopped_early,
    )
    for key, value in a.model.state_dict().items():
        assert (value.double() - b.model.state_dict()[key].double()).abs().max() < 1e-5
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.history]


def stopped_and_resumed(members, data, stop_at):
    """The members trained whole, and the members again as they resume from the states saved
    when a run of them was stopped after `stop_at` batches."""
    whole = train(members, data)
    hooks, states = _stop_after(stop_at)
    with pytest.raises(KeyboardInterrupt):
        train(members, data, hooks)
    return whole, [Member(m.spec, m.seed, states[k][-1]) for k, m in enumerate(members)]


@pytest.mark.parametrize("stop_at", [1, 7, 23, 33])
def test_a_stopped_stack_resumes_exactly(iris_data, stop_at):
    """Stopped after any batch (mid-epoch too) and resumed from the saved state, each member
    ends exactly where the uninterrupted run ends: weights, optimizer moments, dropout
    generators, batch-norm statistics and early stopping all travel in the checkpoint."""
    specs = [
        make_spec(
            model={"hidden": [16, 8], "dropout": rate, "norm": norm},
            train={"optimizer": opt, "lr": 0.01, "epochs": 6, "early_stopping": {"patience": 2}},
        )
        for rate, norm, opt in (
            (0.3, "batch", "adam"),
            (0.0, "batch", "adam"),
            (0.5, "batch", "adam"),
        )
    ]
    members = [Member(spec, seed) for spec, seed in zip(specs, (1, 2, 3), strict=True)]
    whole, resumed = stopped_and_resumed(members, iris_data, stop_at)
    assert {m.position for m in resumed} == {resumed[0].position} != {(0, 0)}
    for again, expected in zip(train(resumed, iris_data), whole, strict=True):
        _same_training(again, expected)


def test_a_member_resumes_alone_as_it_would_have_gone_on_in_its_stack(iris_data):
    spec = make_spec(model={"hidden": [16], "dropout": 0.2}, train={"epochs": 5})
    other = make_spec(model={"hidden": [16], "dropout": 0.4}, train={"epochs": 5, "lr": 0.05})
    members = [Member(spec, 1), Member(other, 2)]
    whole = train(members, iris_data)
    hooks, states = _stop_after(12)
    with pytest.raises(KeyboardInterrupt):
        train(members, iris_data, hooks)
    (alone,) = train([Member(spec, 1, states[0][-1])], iris_data)
    _same_training(alone, whole[0])


def test_checkpoints_are_taken_at_most_every_interval(iris_data):
    saved = []
    hooks = TrainHooks(checkpoint=lambda k, state: saved.append(state), checkpoint_seconds=3600)
    train([Member(make_spec(train={"epochs": 3}), 0)], iris_data, hooks)
    assert saved == []
    hooks = TrainHooks(checkpoint=lambda k, state: saved.append(state), checkpoint_seconds=0)
    train([Member(make_spec(train={"epochs": 3}), 0)], iris_data, hooks)
    assert len(saved) == 3 * 6  # every batch: 90 rows in batches of 16
    assert [(s["epoch"], s["batch"]) for s in saved[:7]] == [(0, b) for b in range(1, 7)] + [(1, 1)]


def test_members_from_different_positions_cannot_share_a_stack(iris_data):
    hooks, states = _stop_after(3)
    spec = make_spec(train={"epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        train([Member(spec, 0)], iris_data, hooks)
    with pytest.raises(ValueError, match="resume from the same epoch"):
        train([Member(spec, 0, states[0][-1]), Member(spec, 1)], iris_data)


# --- panda's rescue: on a plateau, never on an epoch that improved --------------------------


def _plateau_rescues(data, seed, lr):
    """(dev loss of the epoch a plateau rescue followed, best dev loss before it), each."""
    spec = make_spec(train={"lr": lr, "epochs": 40, "early_stopping": {"patience": 4}})
    result = train_model(spec, data, seed, rescue=True)
    records = result.history
    found = []
    for i, record in enumerate(records):
        if record.get("event") == "rescue" and record["reason"] == "plateau":
            epochs = [r for r in records[:i] if "event" not in r]
            *before, this = epochs
            found.append((this["dev_loss"], min(r["dev_loss"] for r in before)))
    return found


def test_a_plateau_rescue_never_follows_an_epoch_that_improved(iris_data):
    rescues = [
        r for seed in range(6) for lr in (0.1, 0.03) for r in _plateau_rescues(iris_data, seed, lr)
    ]
    assert rescues, "no plateau rescue happened: the test would prove nothing"
    for dev_loss, best_before in rescues:
        assert dev_loss >= best_before  # this epoch did not improve on the best


def test_a_plateau_rescue_rolls_back_and_cuts_the_rate(iris_data):
    spec = make_spec(train={"lr": 0.1, "epochs": 40, "early_stopping": {"patience": 4}})
    seed = next(s for s in range(6) if _plateau_rescues(iris_data, s, 0.1))
    result = train_model(spec, iris_data, seed, rescue=True)
    (event,) = [r for r in result.history if "event" in r]
    assert event["reason"] == "plateau" and event["lr"] == pytest.approx(0.01)
    later = [r["lr"] for r in result.history if "event" not in r and r["epoch"] > event["epoch"]]
    assert later and all(lr == pytest.approx(0.01) for lr in later)


# --- gradient clipping and strengthening factors change training -----------------------------


def _one_step(iris_data, clip):
    """One SGD step at lr 1 over the whole train split: the weights move by the gradient."""
    spec = make_spec(
        train={
            "optimizer": "sgd",
            "lr": 1.0,
            "epochs": 1,
            "batch_size": 1000,
            "grad_clip": clip,
            "early_stopping": None,
        }
    )
    torch.manual_seed(3)
    start = build_mlp(spec.model, iris_data.n_features, iris_data.n_outputs).state_dict()
    end = train_model(spec, iris_data, seed=3).model.state_dict()
    return sum(float((end[k] - start[k]).pow(2).sum()) for k in start) ** 0.5


def test_clipping_bounds_the_applied_gradient(iris_data):
    free = _one_step(iris_data, None)
    assert free > 0.05  # the clip below binds
    assert _one_step(iris_data, 0.05) == pytest.approx(0.05, rel=1e-3)
    assert _one_step(iris_data, 10 * free) == pytest.approx(free, rel=1e-5)  # a loose clip: no-op


def _with_train_weights(data, weight):
    from dataclasses import replace

    train = replace(data.splits["train"], weight=weight)
    return replace(data, splits={**data.splits, "train": train})


def test_strengthening_factors_change_training_and_uniform_ones_do_not(iris_data):
    import numpy as np

    spec = make_spec(train={"epochs": 5, "early_stopping": None})
    n = len(iris_data.splits["train"])
    plain = train_model(spec, iris_data, seed=0)
    uniform = train_model(spec, _with_train_weights(iris_data, np.full(n, 3.0, "float32")), 0)
    skewed_weights = np.where(iris_data.splits["train"].y == 0, 5.0, 1.0).astype("float32")
    skewed = train_model(spec, _with_train_weights(iris_data, skewed_weights), seed=0)
    weight = "hidden.0.linear.weight"
    assert torch.allclose(
        plain.model.state_dict()[weight], uniform.model.state_dict()[weight], atol=1e-5
    )
    gap = (plain.model.state_dict()[weight] - skewed.model.state_dict()[weight]).abs().max()
    assert gap > 1e-3
    assert "train_weighted_error" in skewed.history[0]
