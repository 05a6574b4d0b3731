"""What a run checks before any run folder exists: the spec against its data (the remedies,
init_from and the search space's data and model values), the strategy, the objective, the
device and the storage. `hpsearch validate` is this alone, so nothing here imports torch
(only a CUDA device needs it to be checked)."""

from __future__ import annotations

from hpsearch.data import Dataset, load_dataset
from hpsearch.errors import InputError
from hpsearch.remedies import check_remedies
from hpsearch.space import apply_params, parse_space
from hpsearch.spec import (
    Spec,
    check_objective,
    check_objective_fits_search,
    format_path,
    resolve_loss,
)
from hpsearch.storage import probe_storage
from hpsearch.strategies import check_strategy
from hpsearch.transfer import plan as transfer_plan


def prepare(spec: Spec) -> Dataset:
    """Load the data and check the spec fits it, all before any run folder exists."""
    if spec.search is not None:
        check_strategy(spec.search)
        check_objective_fits_search(spec)
        parse_space(spec)
    data = load_dataset(spec.data, spec.seed)
    check_trial_data(spec, data)
    resolve_loss(spec.train.loss, data.task)
    try:
        check_objective(spec.objective, data.task)
    except InputError as wrong:  # at the objective's line in the spec
        raise spec.error_at(("objective",), str(wrong)) from None
    check_device(spec.device)
    if spec.storage is not None:
        probe_storage(spec.storage)
    return data


def check_trial_data(spec: Spec, data: Dataset) -> None:
    """The data remedies and init_from of the spec, and of every value its space gives a
    data or model key, fit the loaded data: an error names the key (or the choice) now, not
    in the middle of a search."""
    _check_remedies_of(spec, data, ("data",))
    transfers = spec.model.init_from is not None
    for param in parse_space(spec) if spec.search is not None else []:
        if not param.path.startswith("data.") and not (
            transfers and param.path.startswith("model.")
        ):
            continue
        values = param.options if not param.is_range else [param.spec.low, param.spec.high]
        if param.kind == "int":
            values = [int(v) for v in values]
        for value in values:
            where = ("search", "space", param.path)
            try:
                alone = apply_params(spec, {param.path: value})
            except InputError:  # valid only with other params (layers + units): the space's
                continue
            try:
                _check_remedies_of(alone, data, where)
            except InputError as exc:
                raise spec.error_at(
                    where, f"{format_path(where)}: choice {value!r}: {exc}"
                ) from None


def _check_remedies_of(spec: Spec, data: Dataset, where: tuple[str, ...]) -> None:
    try:
        check_remedies(spec.data, data)
        transfer_plan(spec, data)
    except InputError as exc:
        if where != ("data",) or exc.source is not None:
            raise
        key = tuple(str(exc).split(":")[0].split(".")[:2])
        raise spec.error_at(key, str(exc)) from None


def check_device(device: str) -> None:
    """CUDA asked for where there is none is an input error (`auto` and `cpu` always run)."""
    if device.startswith("cuda"):
        from hpsearch.train import resolve_device  # torch, for a CUDA spec only

        resolve_device(device)
