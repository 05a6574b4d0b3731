"""The one loop: a solo trial matches a plain torch loop, and each member of a stack ends where
the same trial trained alone ends."""

import math

import numpy as np
import pytest
import torch
from conftest import make_spec

from hpsearch.data import load_dataset
from hpsearch.errors import InputError
from hpsearch.metrics import EVAL_CHUNK, eval_rows
from hpsearch.model import build_mlp
from hpsearch.stacked import StackedMLP, shape_key
from hpsearch.strategies import check_strategy
from hpsearch.train import Member, TrainHooks, stack_outputs, train
from hpsearch.workers import AUTO_STACK, GUIDED_STACK, stack_size
from tests.reference import reference_train

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


def alone(spec, data, seed):
    (result,) = train([Member(spec, seed)], data)
    return result


def together(specs, data, seeds, hooks=None):
    return train([Member(s, n) for s, n in zip(specs, seeds, strict=True)], data, hooks)


def assert_same(result, expected):
    assert (result.state, result.reason) == (expected.state, expected.reason)
    assert (result.epochs_run, result.best_epoch) == (expected.epochs_run, expected.best_epoch)
    assert result.stopped_early == expected.stopped_early
    if expected.state != "failed":
        assert largest_difference(result, expected) < TOLERANCE


def assert_same_as_alone(specs, data, seeds=SEEDS):
    stacked = together(specs, data, seeds)
    for spec, seed, member in zip(specs, seeds, stacked, strict=True):
        assert_same(member, alone(spec, data, seed))
    return stacked


# --- the one loop against a plain torch loop ------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"])
@pytest.mark.parametrize("norm", ["none", "layer"])
def test_the_loop_matches_plain_torch(iris_data, optimizer, norm):
    specs = member_specs({"norm": norm, "residual": True}, optimizer=optimizer)
    for spec, seed in zip(specs, SEEDS, strict=True):
        assert_same(alone(spec, iris_data, seed), reference_train(spec, iris_data, seed))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_the_loop_matches_plain_torch_with_batch_norm(iris_data, optimizer):
    # (Adaptive optimizers are left out here: they scale the near-zero gradient of a bias that
    # batch norm cancels up to full steps, so float rounding decides its sign.)
    specs = member_specs({"norm": "batch"}, optimizer=optimizer)
    for spec, seed in zip(specs, SEEDS, strict=True):
        assert_same(alone(spec, iris_data, seed), reference_train(spec, iris_data, seed))


def test_the_loop_matches_plain_torch_on_regression():
    spec = make_spec(data={"source": "sklearn:diabetes"}, train={"lr": 0.01, "epochs": 8})
    data = load_dataset(spec.data, seed=0)
    assert_same(alone(spec, data, 4), reference_train(spec, data, 4))


# --- a member trains as it would alone ------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"])
@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_members_match_solo_trials(iris_data, optimizer, norm):
    specs = member_specs(model={"norm": norm, "residual": True}, optimizer=optimizer)
    assert_same_as_alone(specs, iris_data)


def test_regression_members_match(tmp_path):
    spec = make_spec(data={"source": "sklearn:diabetes"})
    data = load_dataset(spec.data, seed=0)
    specs = [
        make_spec(data={"source": "sklearn:diabetes"}, train={"lr": lr, "epochs": 8})
        for lr in (0.001, 0.01)
    ]
    assert_same_as_alone(specs, data, SEEDS[:2])


def with_dropout(spec, rate):
    return spec.model_copy(update={"model": spec.model.model_copy(update={"dropout": rate})})


def test_dropout_depends_on_the_member_alone(iris_data):
    """Dropout masks come from each member's own generator: alone, in a stack, or beside
    other neighbours, a member ends the same."""
    specs = member_specs()
    specs = [with_dropout(specs[0], 0.3), with_dropout(specs[1], 0.5), specs[2]]
    stacked = assert_same_as_alone(specs, iris_data)
    other_neighbours = together([specs[2], specs[0]], iris_data, [99, SEEDS[0]])
    assert largest_difference(other_neighbours[1], stacked[0]) < TOLERANCE
    assert largest_difference(stacked[0], alone(specs[0], iris_data, SEEDS[0] + 1)) > 1e-3


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
    same_a, same_b, fast = together(specs, iris_data, [7, 7, 7])
    weight = "hidden.0.linear.weight"
    assert torch.equal(same_a.model.state_dict()[weight], same_b.model.state_dict()[weight])
    gap = (same_a.model.state_dict()[weight] - fast.model.state_dict()[weight]).abs().max()
    assert gap > 1e-2
    assert [r["lr"] for r in fast.history] == [0.05] * 10


def test_a_pruned_member_leaves_while_the_others_go_on(iris_data):
    specs = member_specs(early_stopping=None)
    seen: list[list[int]] = [[], [], []]
    asked: list[tuple[int, list[int]]] = []

    def prune(epoch, judged):
        asked.append((epoch, list(judged)))
        return [1] if epoch == 3 else []

    hooks = TrainHooks(on_epoch=lambda k, record: seen[k].append(record["epoch"]), prune=prune)
    results = together(specs, iris_data, SEEDS, hooks)
    assert [r.state for r in results] == ["complete", "pruned", "complete"]
    assert seen[1] == [1, 2, 3] and seen[0] == list(range(1, 11))
    assert results[1].epochs_run == 3 and results[1].metrics
    assert asked[2] == (3, [0, 1, 2]) and asked[3] == (4, [0, 2])  # once per epoch, all at once


def test_shape_key_separates_what_cannot_share_a_stack():
    base = make_spec()
    assert shape_key(base) == shape_key(make_spec(train={"lr": 0.5, "l2": 1.0}))
    assert shape_key(base) == shape_key(make_spec(model={"hidden": [16], "dropout": 0.3}))
    assert shape_key(base) != shape_key(make_spec(model={"hidden": [32]}))
    assert shape_key(base) != shape_key(make_spec(train={"batch_size": 32}))
    assert shape_key(base) != shape_key(make_spec(train={"optimizer": "sgd"}))
    with pytest.raises(ValueError, match="one shape"):
        together([base, make_spec(model={"hidden": [32]})], None, [0, 1])


def test_stack_size_follows_strategy_and_mode():
    def search(**kwargs):
        return make_spec(search={"space": {"train.lr": {"choices": [0.1]}}, **kwargs}).search

    assert stack_size(search(strategy="random")) == AUTO_STACK
    assert stack_size(search(strategy="grid")) == AUTO_STACK
    # the strategies that learn from results get smaller stacks, but stacks all the same
    assert 1 < GUIDED_STACK < AUTO_STACK
    assert stack_size(search(strategy="tpe")) == GUIDED_STACK
    assert stack_size(search(strategy="evolution")) == GUIDED_STACK
    assert stack_size(search(strategy="evolution", population=4)) == 2  # half the window
    assert stack_size(search(strategy="evolution", population=2)) == 1
    assert stack_size(search(strategy="tpe", stack=8)) == 8
    assert stack_size(search(strategy="evolution", stack=8)) == 8
    assert stack_size(search(stack="off")) == 1
    assert stack_size(search(mode="panda")) == 1
    with pytest.raises(InputError, match="search.stack"):
        check_strategy(search(mode="panda", stack=4))


# --- evaluation -------------------------------------------------------------------------------


def test_member_by_member_evaluation_gives_the_stacks_outputs():
    """On the CPU a stack is evaluated one member at a time (in cache-sized chunks): each
    member's own weights, batch-norm statistics and input scale, as the whole stack has them."""
    spec = make_spec(model={"hidden": [128, 128], "norm": "batch", "residual": True})
    models = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        model = build_mlp(spec.model, 4, 3)
        for layer in model.hidden:  # statistics of their own, as after some training
            layer.norm.running_mean.normal_()
            layer.norm.running_var.uniform_(0.5, 2.0)
        models.append(model)
    scales = [np.full(4, 1.0, np.float32), np.array([1, 0, 2, 1], np.float32), None]
    stack = StackedMLP(models, spec, [0.0] * 3, [1, 2, 3], scales).eval()
    x = torch.randn(5000, 4)  # more rows than one chunk
    with torch.inference_mode():
        whole = stack(x)
        assert eval_rows(stack.widest, x.device) < len(x)
        one_by_one = stack_outputs(stack, x)
    assert one_by_one.shape == whole.shape == (3, 5000, 3)
    assert torch.allclose(one_by_one, whole, atol=1e-5)
    assert not torch.allclose(one_by_one[0], one_by_one[1])  # members differ


def test_evaluation_chunks_fit_the_cache_on_the_cpu_and_are_large_on_a_gpu():
    cpu = torch.device("cpu")
    assert eval_rows(64, cpu) == 2048  # 2,048 rows x 64 floats: 512 KB
    assert eval_rows(4096, cpu) == 256  # never fewer
    assert eval_rows(4, cpu) == EVAL_CHUNK  # never more
    assert eval_rows(64, torch.device("cuda")) == EVAL_CHUNK
