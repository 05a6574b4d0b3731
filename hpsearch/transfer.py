"""Transfer: start a model from an earlier one's layers (`model.init_from`).

`resolve_init_from` turns what the spec names (a run, one of its trials, `latest`, or a .pt
file) into the weights file it means, once, when a run starts, so the run folder's spec says
which file every trial started from, whatever runs come later. `check_init_from` refuses
shapes that cannot be loaded, naming the layer, before any run folder exists; `load_matching`
copies the matching layers into a freshly built model. Freezing is the training loop's
(see `stacked.StackedMLP`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.errors import InputError
from hpsearch.runs import RunFolder, find_run, read_json
from hpsearch.spec import Spec

if TYPE_CHECKING:  # torch and pandas are imported where weights and data are read: the
    import torch  # report, which only describes a transfer, needs neither

    from hpsearch.data import Dataset

KEY = "model.init_from"
SCALE_KEY = "input_scale"  # the source's attribute strengths are its own, not the new spec's


def resolve_init_from(spec: Spec, runs_dir: Path) -> Spec:
    """The spec with `model.init_from` as the absolute path of the weights file it names."""
    named = spec.model.init_from
    if named is None:
        return spec
    try:
        path = weights_file(named, runs_dir)
    except InputError as exc:
        raise spec.error_at(("model", "init_from"), str(exc)) from None
    model = spec.model.model_copy(update={"init_from": str(path)})
    return spec.model_copy(update={"model": model}).located_like(spec)


def weights_file(named: str, runs_dir: Path) -> Path:
    """RUN (its best trial) | RUN/trials/N | latest | file.pt -> an existing weights file.
    RUN is a run folder (a path, or a name under `runs_dir`) or a spec's name (its newest
    finished run)."""
    if named.endswith(".pt"):
        path = Path(named)
        if not path.is_file():
            raise InputError(f"{KEY}: no weights file '{named}'")
        return path.resolve()
    head, _, number = named.rpartition("/trials/")
    run = _run(head if head else named, runs_dir)
    if head:
        if not number.isdigit():
            raise InputError(f"{KEY}: '{named}': give RUN/trials/N with a trial number")
        path = run.trial(int(number)).model
        if not path.is_file():
            raise InputError(f"{KEY}: trial {number} of {run.name} has no weights (model.pt)")
        return path.resolve()
    return _best_weights(run).resolve()


def _run(named: str, runs_dir: Path) -> RunFolder:
    return find_run(runs_dir, named, KEY, by_spec_name=True)


def _best_weights(run: RunFolder) -> Path:
    try:
        best = (read_json(run.summary) or {}).get("best")
    except (OSError, ValueError):
        best = None
    if not isinstance(best, dict) or not isinstance(best.get("trial"), int):
        raise InputError(
            f"{KEY}: run {run.name} has no best trial yet (no finished summary); name one of "
            f"its trials instead: {run.name}/trials/N"
        )
    path = run.trial(best["trial"]).model
    if not path.is_file():
        raise InputError(f"{KEY}: the best trial of {run.name} has no weights (model.pt)")
    return path


@functools.lru_cache(maxsize=4)
def source_state(path: str) -> dict[str, torch.Tensor]:
    """The earlier model's state dict (read once per process and path)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            f"{KEY}: cannot read the weights ({type(exc).__name__}: {exc})", source=path
        ) from None
    if not isinstance(state, dict) or not any(k.endswith("weight") for k in state):
        raise InputError(f"{KEY}: not a model's weights (a state dict)", source=path)
    return state


def _source_info(path: str) -> dict[str, Any]:
    """Feature names and classes of the run a weights file belongs to (empty for a bare file)."""
    root = Path(path).parent.parent.parent  # RUN/trials/N/model.pt
    try:
        split = read_json(RunFolder(root).split) if (root / "split.json").is_file() else {}
    except (OSError, ValueError):
        split = {}
    train = (split.get("splits") or {}).get("train") or {}
    balance = train.get("class_balance")
    return {
        "features": split.get("features"),
        "classes": list(balance) if isinstance(balance, dict) else None,
    }


def _layers(state: dict[str, torch.Tensor]) -> int:
    """How many hidden layers a state dict holds."""
    return sum(1 for key in state if key.startswith("hidden.") and key.endswith(".linear.weight"))


def plan(spec: Spec, data: Dataset) -> dict[str, Any] | None:
    """What `model.init_from` loads into a model of `spec` on `data`: the source, the layers
    taken from it and the ones that start fresh. An InputError naming the layer when a
    shape differs, or the input layer does not fit the features."""
    path = spec.model.init_from
    if path is None:
        return None
    state = source_state(path)
    info = _source_info(path)
    inputs = state.get("hidden.0.linear.weight", state.get("output.weight"))
    if inputs is None:
        raise InputError(f"{KEY}: the weights of {path} have no first layer")
    if inputs.shape[1] != data.n_features:
        raise InputError(
            f"{KEY}: the earlier model takes {inputs.shape[1]} input features and this data "
            f"has {data.n_features}; transfer needs the same feature columns (and, for "
            "categorical columns, the same categories)",
        )
    features = info["features"]
    if features is not None and list(features) != data.feature_names:
        pairs = zip(features, data.feature_names, strict=False)  # the counts are equal here
        first = next((i for i, (a, b) in enumerate(pairs) if a != b), 0)
        raise InputError(
            f"{KEY}: input feature {first} is '{features[first]}' in the earlier model and "
            f"'{data.feature_names[first]}' here; transfer needs the same feature columns in "
            "the same order",
        )
    widths = spec.model.widths
    depth = min(len(widths), _layers(state))
    loaded: list[str] = []
    fan_in = data.n_features
    for i in range(depth):
        have = tuple(state[f"hidden.{i}.linear.weight"].shape)
        want = (widths[i], fan_in)
        if have != want:
            raise InputError(
                f"{KEY}: hidden layer {i} is {have[1]} -> {have[0]} in the earlier model and "
                f"{want[1]} -> {want[0]} here (model.hidden: {widths}); give the same widths "
                "for the layers it shares"
            )
        loaded.append(f"hidden.{i}")
        fan_in = widths[i]
    fresh = [f"hidden.{i}" for i in range(depth, len(widths))]
    same_labels = info["classes"] is None or data.classes is None or info["classes"] == data.classes
    output_fits = (
        depth == len(widths) == _layers(state)
        and tuple(state["output.weight"].shape) == (data.n_outputs, fan_in)
        and same_labels
    )
    (loaded if output_fits else fresh).append("output")
    if spec.model.freeze > len(loaded) - output_fits:
        raise InputError(
            f"model.freeze: {spec.model.freeze} hidden layers, but only "
            f"{len(loaded) - output_fits} come from {KEY}; frozen layers keep their starting "
            "weights, so freeze what is loaded",
        )
    return {"source": path, "loaded": loaded, "new": fresh, "freeze": spec.model.freeze}


def load_matching(model: torch.nn.Module, spec: Spec, data: Dataset) -> dict[str, Any] | None:
    """Copy the earlier model's matching layers into `model` (built from `spec`)."""
    taken = plan(spec, data)
    if taken is None:
        return None
    state = source_state(taken["source"])
    own = model.state_dict()
    update = {
        key: value
        for key, value in state.items()
        if key != SCALE_KEY
        and _layer_of(key) in taken["loaded"]
        and key in own
        and own[key].shape == value.shape
    }
    model.load_state_dict({**own, **update})
    return taken


def _layer_of(key: str) -> str:
    """'hidden.1.linear.weight' -> 'hidden.1'; 'output.bias' -> 'output'."""
    return "output" if key.startswith("output.") else ".".join(key.split(".")[:2])


def describe(taken: dict[str, Any] | None) -> str | None:
    """One line for the report: where a trial's weights came from."""
    if not taken:
        return None
    source = Path(taken["source"])
    if source.name == "model.pt" and source.parent.parent.name == "trials":
        where = f"{source.parent.parent.parent.name}/trials/{source.parent.name}"
    else:
        where = str(source)
    loaded = ", ".join(taken["loaded"]) or "nothing"
    text = f"{where} (loaded {loaded}"
    if taken["new"]:
        text += f"; new {', '.join(taken['new'])}"
    if taken["freeze"]:
        text += f"; first {taken['freeze']} hidden frozen"
    return text + ")"
