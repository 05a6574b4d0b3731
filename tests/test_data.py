import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from hpsearch.data import SPLITS, assign_splits, cross_split_duplicates_kept, load_dataset
from hpsearch.errors import InputError
from hpsearch.spec import DataSpec
from tests.conftest import CONFIGS

PENGUINS = str(CONFIGS / "data" / "penguins.csv")


def load(seed: int = 0, **data):
    return load_dataset(DataSpec(**data), seed)


def input_error(*words: str, **data) -> InputError:
    """Load `data`, expecting an InputError whose message names every one of `words`."""
    with pytest.raises(InputError) as caught:
        load(**data)
    for word in words:
        assert word in str(caught.value)
    return caught.value


def write_csv(tmp_path, frame: pd.DataFrame, name: str = "data.csv") -> str:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


def sizes(data) -> tuple[int, int, int]:
    return tuple(len(data.splits[name]) for name in SPLITS)


def penguins(**data):
    return load(source=PENGUINS, target="species", impute="most_frequent", **data)


# --- sources ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, task, rows, features, outputs",
    [
        ("iris", "multiclass", 150, 4, 3),
        ("wine", "multiclass", 178, 13, 3),
        ("breast_cancer", "binary", 569, 30, 1),
        ("digits", "multiclass", 1797, 64, 10),
        ("diabetes", "regression", 442, 10, 1),
    ],
)
def test_bundled_sets_load_with_task_and_60_20_20(name, task, rows, features, outputs):
    data = load(source=f"sklearn:{name}")
    assert (data.task, data.n_features, data.n_outputs) == (task, features, outputs)
    train, dev, test = sizes(data)
    assert abs(train - 0.6 * rows) <= 1 and abs(dev - 0.2 * rows) <= 1
    assert abs(test - 0.2 * rows) <= 1
    split = data.splits["train"]
    assert split.X.dtype == np.float32 and split.X.shape == (train, features)
    assert split.y.dtype == (np.float32 if task == "regression" else np.int64)
    assert split.weight is None and split.group is None
    json.dumps(data.split_info)  # JSON-ready


def test_auto_split_is_98_1_1_from_100k_rows():
    data = load(
        source="synthetic:classification",
        synthetic={"samples": 100_000, "features": 2, "informative": 2},
    )
    assert sizes(data) == (98_000, 1_000, 1_000)
    assert data.split_info["rule"].startswith("auto: 98/1/1")


def test_explicit_ratios_and_empty_test():
    data = load(source="sklearn:digits", split={"train": 0.7, "dev": 0.15, "test": 0.15})
    assert sizes(data) == (1257, 270, 270)
    assert data.split_info["rule"] == "given: 70/15/15"
    data = load(source="sklearn:iris", split={"train": 0.8, "dev": 0.2, "test": 0})
    assert len(data.splits["test"]) == 0
    assert data.splits["test"].X.shape == (0, 4)


def test_synthetic_classification_keeps_its_task_beyond_20_classes():
    data = load(
        source="synthetic:classification",
        synthetic={"samples": 2000, "features": 8, "informative": 6, "classes": 25},
    )
    assert data.task == "multiclass" and data.n_outputs == 25


def test_synthetic_errors_name_the_key():
    input_error(
        "data.synthetic.noise",
        source="synthetic:classification",
        synthetic={"noise": 1.5},
    )
    input_error(
        "data.synthetic",
        "informative",
        source="synthetic:classification",
        synthetic={"classes": 5, "informative": 2, "features": 4},
    )


def test_regression_inferred_and_target_standardized_with_train_statistics():
    data = load(source="sklearn:diabetes")
    from sklearn.datasets import load_diabetes

    raw = load_diabetes().target
    train_y = data.splits["train"].y
    assert data.task == "regression" and data.classes is None
    assert abs(float(train_y.mean())) < 1e-5 and abs(float(train_y.std()) - 1) < 1e-4
    assert raw.min() < data.target_mean < raw.max()
    original = train_y.astype(np.float64) * data.target_std + data.target_mean
    assert np.isin(np.round(original), raw).all()


# --- splitting --------------------------------------------------------------------------------


def test_stratification_keeps_class_proportions():
    data = load(source="sklearn:digits")
    info = data.split_info
    assert info["stratified"] and info["stratified_by"] == ["class"]
    total = {c: sum(info["splits"][s]["class_balance"][c] for s in SPLITS) for c in data.classes}
    for name, ratio in info["ratios"].items():
        balance = info["splits"][name]["class_balance"]
        for label, count in balance.items():
            assert abs(count - ratio * total[label]) <= 1.5


def test_same_seed_same_split_other_seed_other_split():
    first, again, other = (load(seed, source="sklearn:wine") for seed in (0, 0, 1))
    for name in SPLITS:
        assert np.array_equal(first.splits[name].X, again.splits[name].X)
        assert np.array_equal(first.splits[name].y, again.splits[name].y)
    assert first.split_info == again.split_info
    assert first.fingerprint == again.fingerprint
    assert first.split_info["splits"]["dev"]["hash"] != other.split_info["splits"]["dev"]["hash"]
    assert first.fingerprint != other.fingerprint


def test_assign_splits_exact_sizes_and_proportional_strata():
    strata = np.repeat([0, 1, 2], [500, 300, 200])
    sizes_ = {"train": 600, "dev": 200, "test": 200}
    assignment = assign_splits(strata, sizes_, seed=3)
    assert np.bincount(assignment).tolist() == [600, 200, 200]
    for stratum, count in enumerate([500, 300, 200]):
        per_split = np.bincount(assignment[strata == stratum], minlength=3)
        assert np.abs(per_split - np.array([0.6, 0.2, 0.2]) * count).max() <= 1


def test_cross_split_duplicates_keep_the_first_occurrence_split():
    hashes = np.array([7, 8, 7, 7, 9])
    assignment = np.array([1, 0, 0, 1, 2])
    assert cross_split_duplicates_kept(hashes, assignment).tolist() == [
        True,
        True,
        False,
        True,
        True,
    ]


def test_duplicates_across_splits_are_removed_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    unique = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    unique["label"] = (unique["a"] > 0).astype(int)
    copies = pd.concat([unique.iloc[:5]] * 20)  # 5 rows, 20 copies each
    source = write_csv(tmp_path, pd.concat([unique, copies]))
    data = load(source=source, target="label")
    info = data.split_info
    assert info["rows"] == 300 and info["duplicates_removed"] > 0
    assert sum(sizes(data)) == 300 - info["duplicates_removed"]
    rows_by_split = [{tuple(row) for row in data.splits[name].X.tolist()} for name in SPLITS]
    assert not rows_by_split[0] & rows_by_split[1]
    assert not rows_by_split[0] & rows_by_split[2] and not rows_by_split[1] & rows_by_split[2]


def test_group_stratification_puts_every_group_in_every_split():
    data = penguins(group="island")
    info = data.split_info
    assert info["stratified_by"] == ["class", "group"]
    for name in SPLITS:
        assert set(data.splits[name].group) == {"Biscoe", "Dream", "Torgersen"}
        assert all(count > 0 for count in info["splits"][name]["groups"].values())
    assert "island=Biscoe" not in data.feature_names  # the group column is not a feature


def test_regression_with_groups_stratifies_by_group(tmp_path):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=120), "site": ["a"] * 100 + ["b"] * 20})
    frame["y"] = frame["x"] * 2.5 + rng.normal(size=120) * 0.1
    data = load(source=write_csv(tmp_path, frame), target="y", group="site")
    assert data.task == "regression" and data.split_info["stratified_by"] == ["group"]
    assert [data.split_info["splits"][s]["groups"]["b"] for s in SPLITS] == [12, 4, 4]


def test_too_rare_class_falls_back_to_unstratified(tmp_path):
    frame = pd.DataFrame({"x": range(50), "label": ["a"] * 25 + ["b"] * 24 + ["c"]})
    data = load(source=write_csv(tmp_path, frame), target="label")
    assert not data.split_info["stratified"]
    assert "not stratified by class" in data.split_info["rule"]


def test_empty_split_from_tiny_data(tmp_path):
    source = write_csv(tmp_path, pd.DataFrame({"x": [1.0, 2.0], "label": [0, 1]}))
    input_error("data.split", "2 row", source=source, target="label")


# --- features ---------------------------------------------------------------------------------


def test_normalization_statistics_come_from_train_only():
    data = load(source="sklearn:breast_cancer")
    train, dev = data.splits["train"].X, data.splits["dev"].X
    assert np.allclose(train.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(train.std(axis=0), 1, atol=1e-3)
    assert not np.allclose(dev.mean(axis=0), 0, atol=1e-4)
    minmax = load(source="sklearn:breast_cancer", normalize="minmax").splits["train"].X
    assert np.allclose(minmax.min(axis=0), 0) and np.allclose(minmax.max(axis=0), 1)
    raw = load(source="sklearn:iris", normalize="none").splits["train"].X
    assert raw.min() >= 0 and raw.max() > 5  # centimetres, untouched


def test_missing_values_without_impute_name_the_column_and_count():
    error = input_error(
        "bill_length_mm", "2 rows", "data.impute", source=PENGUINS, target="species"
    )
    assert "'sex' (11 rows)" in str(error)


@pytest.mark.parametrize("impute", ["mean", "median", "most_frequent"])
def test_impute_one_hot_and_no_nan(impute):
    data = load(source=PENGUINS, target="species", impute=impute)
    assert data.classes == ["Adelie", "Chinstrap", "Gentoo"]
    assert {"island=Biscoe", "island=Dream", "island=Torgersen", "sex=female", "sex=male"} <= set(
        data.feature_names
    )
    for split in data.splits.values():
        assert np.isfinite(split.X).all()
    island = [i for i, name in enumerate(data.feature_names) if name.startswith("island=")]
    onehot = data.splits["train"].X[:, island]
    assert set(onehot.ravel().tolist()) == {0.0, 1.0}  # indicators are not rescaled
    assert np.all(onehot.sum(axis=1) == 1)


def test_unseen_categories_encode_as_all_zero(tmp_path):
    colour = ["red", "blue"] * 30 + ["green"]
    frame = pd.DataFrame({"x": range(61), "colour": colour, "label": [0, 1] * 30 + [1]})
    for seed in range(10):  # the single "green" row lands outside train for some seed
        data = load(seed, source=write_csv(tmp_path, frame), target="label")
        if "colour=green" not in data.feature_names:
            break
    assert data.feature_names == ["x", "colour=blue", "colour=red"]
    sums = np.concatenate([data.splits[s].X[:, 1:].sum(axis=1) for s in ("dev", "test")])
    assert sorted(set(sums.tolist())) == [0.0, 1.0]


def test_all_missing_column(tmp_path):
    frame = pd.DataFrame({"x": range(30), "empty": [np.nan] * 30, "label": [0, 1] * 15})
    input_error("'empty'", "data.drop", source=write_csv(tmp_path, frame), target="label")


def test_no_features_left(tmp_path):
    frame = pd.DataFrame({"x": range(30), "label": [0, 1] * 15})
    input_error("no feature", source=write_csv(tmp_path, frame), target="label", drop=["x"])


def test_infinite_feature_values(tmp_path):
    frame = pd.DataFrame({"x": [1.0, np.inf] * 15, "label": [0, 1] * 15})
    input_error("'x'", "infinite", source=write_csv(tmp_path, frame), target="label")


# --- target and columns -----------------------------------------------------------------------


def test_missing_target_column_suggests_the_closest():
    input_error(
        "data.target", "'specie'", "did you mean 'species'", source=PENGUINS, target="specie"
    )


def test_file_needs_a_target():
    input_error("data.target", "species", source=PENGUINS)


def test_drop_of_unknown_column():
    input_error("data.drop", "'islnd'", "island", source=PENGUINS, target="species", drop=["islnd"])


def test_drop_removes_columns_before_anything_else():
    data = penguins(drop=["island", "year"])
    assert not any(name.startswith("island") or name == "year" for name in data.feature_names)
    input_error("data.drop", "data.target", source=PENGUINS, target="species", drop=["species"])


def test_single_class_target(tmp_path):
    frame = pd.DataFrame({"x": range(30), "label": ["only"] * 30})
    input_error("data.target", "single class", source=write_csv(tmp_path, frame), target="label")


def test_missing_target_values_are_counted(tmp_path):
    frame = pd.DataFrame({"x": range(30), "label": [0, 1, None] * 10})
    input_error("data.target", "10 missing", source=write_csv(tmp_path, frame), target="label")


def test_task_must_fit_the_target():
    input_error("data.task", "regression", source=PENGUINS, target="species", task="regression")
    input_error("data.task", "binary", "3", source="sklearn:iris", task="binary")


def test_integer_target_with_few_values_is_classification(tmp_path):
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"x": rng.normal(size=60), "grade": rng.integers(1, 6, size=60)})
    data = load(source=write_csv(tmp_path, frame), target="grade")
    assert data.task == "multiclass" and data.classes == ["1", "2", "3", "4", "5"]
    frame["grade"] = frame["grade"] + 0.5
    assert load(source=write_csv(tmp_path, frame), target="grade").task == "regression"


# --- weights ----------------------------------------------------------------------------------


def test_balanced_weights_are_inverse_train_class_frequency(tmp_path):
    frame = pd.DataFrame({"x": range(100), "label": ["a"] * 80 + ["b"] * 20})
    data = load(source=write_csv(tmp_path, frame), target="label", weights="balanced")
    train = data.splits["train"]
    counts = np.bincount(train.y)
    expected = len(train) / (2 * counts)
    assert np.allclose(train.weight, expected[train.y])
    dev = data.splits["dev"]
    assert np.allclose(dev.weight, expected[dev.y])  # train's factors, applied everywhere
    input_error("data.weights", "balanced", source="sklearn:diabetes", weights="balanced")


def test_column_weights(tmp_path):
    frame = pd.DataFrame({"x": range(40), "w": [1.0, 3.0] * 20, "label": [0, 1] * 20})
    data = load(source=write_csv(tmp_path, frame), target="label", weights={"column": "w"})
    assert data.feature_names == ["x"]
    train = data.splits["train"]
    assert train.weight.dtype == np.float32
    assert np.array_equal(train.weight, np.where(train.y == 0, 1.0, 3.0))


@pytest.mark.parametrize(
    "weights, words",
    [
        (["a", "b"] * 20, ["numbers"]),
        ([1.0, -1.0] * 20, ["negative"]),
        ([1.0, None] * 20, ["20 missing"]),
        ([0.0] * 40, ["is 0"]),
    ],
)
def test_column_weight_errors(tmp_path, weights, words):
    frame = pd.DataFrame({"x": range(40), "w": weights, "label": [0, 1] * 20})
    source = write_csv(tmp_path, frame)
    input_error("data.weights", *words, source=source, target="label", weights={"column": "w"})


def test_weight_column_must_exist():
    input_error(
        "data.weights.column", "'wt'", source=PENGUINS, target="species", weights={"column": "wt"}
    )


def test_group_weights():
    weights = {"group": {"Biscoe": 1.0, "Dream": 1.2, "Torgersen": 2.5}}
    data = penguins(group="island", weights=weights)
    for split in data.splits.values():
        expected = [weights["group"][label] for label in split.group]
        assert np.allclose(split.weight, expected)


def test_group_weight_errors():
    input_error(
        "data.weights.group",
        "Torgersen",
        group="island",
        weights={"group": {"Biscoe": 1, "Dream": 1}},
        source=PENGUINS,
        target="species",
        impute="mean",
    )
    input_error(
        "data.group",
        source=PENGUINS,
        target="species",
        impute="mean",
        weights={"group": {"Biscoe": 1}},
    )
    input_error(
        "data.group",
        "'isle'",
        "did you mean 'island'",
        source=PENGUINS,
        target="species",
        impute="mean",
        group="isle",
    )


# --- files ------------------------------------------------------------------------------------


def test_parquet_round_trip_matches_csv(tmp_path):
    frame = pd.read_csv(PENGUINS).dropna()
    frame.to_parquet(tmp_path / "penguins.parquet")
    from_parquet = load(source=str(tmp_path / "penguins.parquet"), target="species")
    from_csv = load(source=write_csv(tmp_path, frame), target="species")
    assert from_parquet.feature_names == from_csv.feature_names
    assert np.allclose(from_parquet.splits["dev"].X, from_csv.splits["dev"].X)


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    pd.DataFrame({"x": [1.0], "y": [0]}).to_parquet(tmp_path / "d.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    input_error("hpsearch[parquet]", source=str(tmp_path / "d.parquet"), target="y")


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    x1, x2 = rng.normal(size=(2, 90))
    colour = np.array(["red", "green", "blue"] * 30)
    np.savez(tmp_path / "d.npz", x1=x1, x2=x2, colour=colour, label=(x1 > 0).astype(int))
    data = load(source=str(tmp_path / "d.npz"), target="label")
    assert data.task == "binary"
    assert data.feature_names == ["x1", "x2", "colour=blue", "colour=green", "colour=red"]


@pytest.mark.parametrize(
    "arrays, words",
    [
        ({"x": np.zeros((10, 2)), "label": np.zeros(10)}, ["'x'", "1-D"]),
        ({"x": np.zeros(10), "label": np.zeros(9)}, ["same length"]),
        ({"x": np.array([{}, {}], dtype=object), "label": np.zeros(2)}, ["cannot parse"]),
    ],
)
def test_npz_errors(tmp_path, arrays, words):
    np.savez(tmp_path / "d.npz", **arrays)
    input_error("d.npz", *words, source=str(tmp_path / "d.npz"), target="label")


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("empty.csv", b"", ["empty"]),
        ("header.csv", b"x,label\n", ["no rows"]),
        ("blank.csv", b"\n\n", ["no columns"]),
        ("junk.parquet", b"not parquet at all", ["cannot parse", "Parquet"]),
        ("junk.npz", b"not a zip", ["cannot parse"]),
    ],
)
def test_unusable_files_are_named(tmp_path, name, content, words):
    (tmp_path / name).write_bytes(content)
    input_error(name, *words, source=str(tmp_path / name), target="label")


def test_missing_file(tmp_path):
    input_error("nope.csv", "not found", source=str(tmp_path / "nope.csv"), target="label")


def test_fingerprint_ignores_the_folder_but_not_the_content(tmp_path):
    frame = pd.read_csv(PENGUINS)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    here = write_csv(tmp_path / "a", frame, "p.csv")
    there = write_csv(tmp_path / "b", frame, "p.csv")
    changed = write_csv(tmp_path, frame.iloc[:-1], "p.csv")
    prints = [
        load(source=path, target="species", impute="mean").fingerprint
        for path in (here, there, changed)
    ]
    assert prints[0] == prints[1] != prints[2]


def test_module_does_not_import_torch():
    code = "import sys, hpsearch.data; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_values_beyond_float32_are_an_error(tmp_path):
    frame = pd.DataFrame({"x": np.linspace(1e300, 2e300, 40), "label": [0, 1] * 20})
    source = write_csv(tmp_path, frame)
    for normalize in ("none", "standard"):
        input_error("'x'", "32-bit", source=source, target="label", normalize=normalize)


def test_too_many_categories(tmp_path):
    frame = pd.DataFrame({"id": [f"u{i}" for i in range(2000)], "label": [0, 1] * 1000})
    input_error("'id'", "data.drop", source=write_csv(tmp_path, frame), target="label")


# --- a split given by a column, and the train_dev split -------------------------------------


def test_a_split_column_decides_the_splits_and_train_dev_is_carved_from_train(tmp_path):
    from hpsearch.spec import load_spec
    from tests.conftest import write_split_column_data

    spec = load_spec(write_split_column_data(tmp_path))
    data = load_dataset(spec.data, seed=0)
    sizes = {name: len(split) for name, split in data.splits.items()}
    assert set(sizes) == {"train", "train_dev", "dev", "test"}
    info = data.split_info["splits"]
    assert info["train"]["groups"] == {"field": 0, "lab": sizes["train"]}
    assert info["train_dev"]["groups"]["field"] == 0  # the train distribution
    assert info["dev"]["groups"]["field"] > 0
    assert sizes["train_dev"] == min(sizes["dev"], (sizes["train"] + sizes["train_dev"]) // 5)
    assert "fold" not in data.feature_names and "site" not in data.feature_names
    assert "train_dev" in data.split_info["rule"]


def test_a_split_column_with_other_values_is_an_input_error(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"x": range(30), "y": [0, 1] * 15, "fold": ["train"] * 20 + ["val"] * 10})
    frame.to_csv(tmp_path / "d.csv", index=False)
    spec = DataSpec(source=str(tmp_path / "d.csv"), target="y", split={"column": "fold"})
    with pytest.raises(InputError, match="data.split.column: column 'fold' holds 'val'"):
        load_dataset(spec, seed=0)
