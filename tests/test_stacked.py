"""Stacked training: each member ends where the same trial trained alone ends."""

import math

import pytest
import torch
from conftest import make_spec

from hpsearch.data import load_dataset
from hpsearch.errors import InputError
from hpsearch.stacked import AUTO_STACK, shape_key, stack_size, train_stack
from hpsearch.strategies import check_strategy
from hpsearch.train import train_model

TOLERANCE = 1e-4

# three members that differ in every per-member setting
MEMBERS = [
    {"lr": 0.01, "l2": 0.0, "l1": 0.0, "grad_clip": None, "momentum": 0.9, "lr_schedule": "none"},
    {"lr": 0.003, "l2": 0.5, "l1": 0.0, "grad_clip": 1.0, "momentum": 0.5, "lr_schedule": "cosine"},
    {"lr": 0.03, "l2": 0.0, "l1": 0.2, "grad_clip": None, "momentum": 0.8, "lr_schedule": "step"},
]
SEEDS = [11, 22, 33]


def member_specs(model=None, members=MEMBERS, **train):
    base = {"epochs": 10, "batch_size": 16, "early_stopping": {"patience": 3}, **train}
    model = {"hidden": [16, 16], **(model or {})}
    return [make_spec(model=model, train={**base, **member}) for member in members]


def largest_difference(a, b) -> float:
    """Largest gap between two training results: weights, final metrics, dev loss per epoch."""
    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    assert state_a.keys() == state_b.keys()
    gaps = [(state_a[k].double() - state_b[k].double()).abs().max().item() for k in state_a]
    # metrics in the target's units (dev_mse of a regression) compare relative to their size
    gaps += [abs(a.metrics[k] - b.metrics[k]) / max(1.0, abs(a.metrics[k])) for k in a.metrics]
    gaps += [abs(x["dev_loss"] - y["dev_loss"]) for x, y in zip(a.history, b.history, strict=True)]
    return max(gaps)


def assert_same_as_alone(specs, data, seeds=SEEDS):
    stacked = train_stack(specs, data, seeds)
    for spec, seed, member in zip(specs, seeds, stacked, strict=True):
        alone = train_model(spec, data, seed)
        assert (member.state, member.reason) == (alone.state, alone.reason)
        assert (member.epochs_run, member.best_epoch) == (alone.epochs_run, alone.best_epoch)
        assert member.stopped_early == alone.stopped_early
        if alone.state != "failed":
            assert largest_difference(member, alone) < TOLERANCE
    return stacked


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"])
@pytest.mark.parametrize("norm", ["none", "layer"])
def test_members_match_solo_trials(iris_data, optimizer, norm):
    specs = member_specs(model={"norm": norm, "residual": True}, optimizer=optimizer)
    assert_same_as_alone(specs, iris_data)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_batch_norm_members_match_solo_trials(iris_data, optimizer):
    # (Adaptive optimizers are left out here: they scale the near-zero gradient of a bias that
    # batch norm cancels up to full steps, so float rounding decides its sign, alone or not.)
    specs = member_specs(model={"norm": "batch"}, optimizer=optimizer)
    assert_same_as_alone(specs, iris_data)


def test_regression_members_match(tmp_path):
    spec = make_spec(data={"source": "sklearn:diabetes"})
    data = load_dataset(spec.data, seed=0)
    specs = [
        make_spec(data={"source": "sklearn:diabetes"}, train={"lr": lr, "epochs": 8})
        for lr in (0.001, 0.01)
    ]
    assert_same_as_alone(specs, data, SEEDS[:2])


def test_stack_of_one_is_exactly_the_solo_loop(iris_data):
    (spec,) = member_specs(members=MEMBERS[:1])
    (member,) = train_stack([spec], iris_data, [5])
    alone = train_model(spec, iris_data, 5)
    assert member.history == [
        {**r, "seconds": m["seconds"]} for r, m in zip(alone.history, member.history, strict=True)
    ]
    for key, value in alone.model.state_dict().items():
        assert torch.equal(member.model.state_dict()[key], value)


def test_dropout_of_one_member_leaves_the_others_exact(iris_data):
    members = [{**MEMBERS[0]}, {**MEMBERS[1]}]
    specs = member_specs(members=members)
    specs[1] = specs[1].model_copy(
        update={"model": specs[1].model.model_copy(update={"dropout": 0.5})}
    )
    (plain, dropped) = train_stack(specs, iris_data, SEEDS[:2])
    alone = train_model(specs[0], iris_data, SEEDS[0])
    assert largest_difference(plain, alone) < TOLERANCE
    assert dropped.state == "complete"


def test_each_member_stops_early_on_its_own(iris_data):
    members = [
        {"lr": 0.01, "early_stopping": {"patience": 1, "min_delta": 0.5}},  # stops at once
        {"lr": 0.01, "early_stopping": {"patience": 50}},
        {"lr": 0.02, "early_stopping": None},
    ]
    specs = member_specs(members=members, epochs=12)
    stopped, patient, no_stopping = assert_same_as_alone(specs, iris_data)
    assert stopped.stopped_early and stopped.epochs_run < 12
    assert not patient.stopped_early and patient.epochs_run == 12
    assert no_stopping.epochs_run == 12 and no_stopping.best_epoch == 12


def test_a_diverging_member_fails_alone(iris_data):
    members = [{"lr": 0.01}, {"lr": 1e12, "l2": 1e12}, {"lr": 0.02}]
    specs = member_specs(members=members, optimizer="sgd")
    results = assert_same_as_alone(specs, iris_data)
    assert [r.state for r in results] == ["complete", "failed", "complete"]
    assert results[1].reason == "diverged"
    assert all(math.isfinite(v) for r in (results[0], results[2]) for v in r.metrics.values())


def test_members_with_different_learning_rates_end_apart(iris_data):
    members = [{"lr": 0.001}, {"lr": 0.001}, {"lr": 0.05}]
    specs = member_specs(members=members, early_stopping=None)
    same_a, same_b, fast = train_stack(specs, iris_data, [7, 7, 7])
    weight = "hidden.0.linear.weight"
    assert torch.equal(same_a.model.state_dict()[weight], same_b.model.state_dict()[weight])
    gap = (same_a.model.state_dict()[weight] - fast.model.state_dict()[weight]).abs().max()
    assert gap > 1e-2
    assert [r["lr"] for r in fast.history] == [0.05] * 10


def test_a_pruned_member_leaves_while_the_others_go_on(iris_data):
    specs = member_specs(early_stopping=None)
    seen: list[list[int]] = [[], [], []]

    def callback(position):
        def on_epoch(record):
            seen[position].append(record["epoch"])
            return position == 1 and record["epoch"] == 3

        return on_epoch

    results = train_stack(specs, iris_data, SEEDS, [callback(i) for i in range(3)])
    assert [r.state for r in results] == ["complete", "pruned", "complete"]
    assert seen[1] == [1, 2, 3] and seen[0] == list(range(1, 11))
    assert results[1].epochs_run == 3 and results[1].metrics


def test_shape_key_separates_what_cannot_share_a_stack():
    base = make_spec()
    assert shape_key(base) == shape_key(make_spec(train={"lr": 0.5, "l2": 1.0}))
    assert shape_key(base) == shape_key(make_spec(model={"hidden": [16], "dropout": 0.3}))
    assert shape_key(base) != shape_key(make_spec(model={"hidden": [32]}))
    assert shape_key(base) != shape_key(make_spec(train={"batch_size": 32}))
    assert shape_key(base) != shape_key(make_spec(train={"optimizer": "sgd"}))
    with pytest.raises(ValueError, match="one shape"):
        train_stack([base, make_spec(model={"hidden": [32]})], None, [0, 1])


def test_stack_size_follows_strategy_and_mode():
    def search(**kwargs):
        return make_spec(search={"space": {}, **kwargs}).search

    assert stack_size(search(strategy="random")) == AUTO_STACK
    assert stack_size(search(strategy="grid")) == AUTO_STACK
    assert stack_size(search(strategy="tpe")) == 1
    assert stack_size(search(strategy="tpe", stack=4)) == 4
    assert stack_size(search(stack="off")) == 1
    assert stack_size(search(mode="panda")) == 1
    with pytest.raises(InputError, match="search.stack"):
        check_strategy(search(mode="panda", stack=4))
