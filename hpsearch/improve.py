"""`hpsearch improve`: follow a run's diagnosis. Read what the last run's diagnosis judged
high, write the next spec with one reason per change, run it like `hpsearch run`, diagnose
again, and go on while the dev error keeps falling beyond its interval.

The planning is pure (dicts in, changes out; no torch, no files) so each rule is tested on
hand-built diagnoses; `improve` at the bottom is the thin loop that runs the rounds.

Order of remedies, as the lecture teaches: bias first (bigger network, train longer, a better
optimizer, a wider learning-rate range), then variance (L2, dropout, input noise, early
stopping; after those, only more data helps), then data mismatch (strengthen the groups that do
worse). A remedy applied in an earlier round of the chain is not applied again as is: the
network grows further, a range widens further, or the next remedy is taken.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpsearch.diagnosis import Sample, _pct, difference_interval, error_interval
from hpsearch.errors import InputError
from hpsearch.runs import RunFolder, read_json, write_json, write_text
from hpsearch.spec import load_spec, spec_from_dict

DEFAULT_ROUNDS = 3
# Growth of a too-small network: each width times 4 (at least 32), up to 1024 units; past
# that, one more layer, up to 4. Four times is enough to see a change beyond the interval.
GROWTH, MIN_WIDTH, MAX_WIDTH, MAX_LAYERS = 4, 32, 1024, 4
MAX_EPOCHS = 2000
EDGE = 0.05  # a best value in the outer 5% of its (log) range is at the edge: widen that side
# Search-space entries added by the variance remedies (as the lecture's usual ranges)
# train.l2 is the lecture's lambda (penalty lambda / 2m times the squared weights)
L2_RANGE = {"low": 1.0e-4, "high": 1.0, "log": True}
L2_FIXED = 1.0e-2
DROPOUT_RANGE = {"low": 0.0, "high": 0.5}
MAX_DROPOUT = 0.7  # past this, dropout starves the network more than it regularizes
AUGMENT_NOISE = 0.1  # standard deviations of input noise, a tenth of each feature's spread
NOISE_RANGE = {"low": 0.0, "high": 0.3}  # searched: up to about a third of a feature's spread
MAX_GROUP_WEIGHT = 8.0
ADAPTIVE = ("adam", "adamw")

# Remedy names, recorded with each change so a later round knows what was tried.
BIGGER, LONGER, OPTIMIZER, LR_RANGE = "bigger network", "train longer", "optimizer", "lr range"
L2, DROPOUT, EARLY, AUGMENT, STRONGER = (
    "L2",
    "dropout",
    "early stopping",
    "augmentation",
    "stronger regularization",
)
WEIGHTS = "group weights"


@dataclass(frozen=True)
class Change:
    """One edit of the spec: where (`train.l2`, or `search.space[train.l2]` for a search-space
    entry), the value before and after, which remedy, and the verdict that led to it."""

    path: str
    old: Any
    new: Any
    remedy: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "old": self.old,
            "new": self.new,
            "remedy": self.remedy,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Plan:
    """What the diagnosis leads to: the judgement read (`because`), the part it is about
    (`focus`: bias, variance, mismatch or None), and either changes or why none can help."""

    because: str
    focus: str | None
    changes: tuple[Change, ...] = ()
    stop: str | None = None


# --- reading a run's summary ------------------------------------------------------------------


@dataclass(frozen=True)
class Best:
    """What the planner reads of a run: its diagnosis, the best trial's params and epochs."""

    diagnosis: Mapping[str, Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    epochs_run: int | None = None


def best_of(summary: Mapping[str, Any]) -> Best | None:
    """The planner's view of a summary; None when it holds no diagnosis."""
    diagnosis, best = summary.get("diagnosis"), summary.get("best")
    if not diagnosis or not best:
        return None
    trial = next((t for t in summary.get("trials") or () if t["number"] == best["trial"]), {})
    return Best(diagnosis, best.get("params") or {}, trial.get("epochs_run"))


def dev_error_of(summary: Mapping[str, Any]) -> tuple[float, tuple[float, float] | None] | None:
    """The best trial's dev error and its 95% interval over the dev split's size."""
    diagnosis = summary.get("diagnosis") or {}
    error = diagnosis.get("dev_error")
    if error is None:
        return None
    sample = _dev_sample(diagnosis)
    return error, None if sample is None else error_interval(error, sample)


def _dev_sample(diagnosis: Mapping[str, Any]) -> Sample | None:
    raw = (diagnosis.get("samples") or {}).get("dev")
    return Sample(int(raw["n"]), raw.get("sd")) if raw and raw.get("n") else None


def clearly_better(
    new: Mapping[str, Any], old: Mapping[str, Any]
) -> tuple[bool, tuple[float, float] | None]:
    """Whether the new run's dev error lies clearly below the old one's: the 95% interval of
    their difference (Newcombe's; conservative, since both were measured on the same dev
    split) lies wholly below zero. Also returns that interval (None without split sizes)."""
    a, b = new["diagnosis"], old["diagnosis"]
    sample_a, sample_b = _dev_sample(a), _dev_sample(b)
    if sample_a is None or sample_b is None:
        return a["dev_error"] < b["dev_error"], None
    low, high = difference_interval(a["dev_error"], sample_a, b["dev_error"], sample_b)
    return high < 0, (low, high)


# --- the planner ------------------------------------------------------------------------------


def plan(
    spec: Mapping[str, Any],
    best: Best,
    tried: Iterable[str] = (),
) -> Plan:
    """The next round's changes to `spec` (a resolved spec as a dict) from the run's
    diagnosis; `tried` holds the remedies of earlier rounds of the chain."""
    d, tried = best.diagnosis, set(tried)
    judgements = d.get("judgements") or {}
    bias, variance = judgements.get("bias"), judgements.get("variance")
    if d.get("focus") == "bias":
        because = _judged(_bias_label(d), bias)
        return _remedies(because, "bias", _bias_changes(spec, best, tried, because), _BIAS_DONE)
    if d.get("focus") == "variance":
        because = _judged("variance", variance)
        changes = _variance_changes(spec, best, tried, because)
        size = (d.get("samples") or {}).get("train", {}).get("n")
        done = _VARIANCE_DONE + (f" (the best trial trained on {size} examples)" if size else "")
        return _remedies(because, "variance", changes, done)
    if d.get("mismatch"):
        return _mismatch_plan(spec, d)
    if d.get("high_bias") is False and d.get("high_variance") is False:
        if d.get("human_level_error") is not None or d.get("bayes_error") is not None:
            reference = "human-level" if d.get("human_level_error") is not None else "Bayes"
            stop = (
                f"the {reference} error is reached ({_judged(_bias_label(d), bias)}) and the "
                f"variance is low: nothing left to fix"
            )
        else:
            stop = "right fit: bias and variance are both within the tolerance; nothing left to fix"
        return Plan(f"right fit ({_judged('variance', variance)})", None, stop=stop)
    return Plan("can't tell", None, stop=_cant_tell(d))


_BIAS_DONE = (
    "the bias remains with the largest network and training tried: richer features or another "
    "kind of model would be needed, which a spec change cannot give"
)
_VARIANCE_DONE = (
    "the variance remains after L2, dropout, early stopping and augmentation: collect more "
    "training data, which a spec change cannot give"
)


def _remedies(because: str, focus: str, changes: list[Change], done: str) -> Plan:
    return Plan(because, focus, tuple(changes), None if changes else done)


def _cant_tell(d: Mapping[str, Any]) -> str:
    for name, label in (("bias", "the bias"), ("variance", "the variance")):
        j = (d.get("judgements") or {}).get(name) or {}
        if j.get("level") == "undetermined" and j.get("examples_needed"):
            return (
                f"can't tell what limits the model: {label} is undetermined on these split sizes; "
                f"about {j['examples_needed']:,} {j['split']} examples would tell (more data, "
                "which a spec change cannot give)"
            )
    return (
        "can't tell what limits the model on these split sizes: more data would tell, which a "
        "spec change cannot give"
    )


def _bias_label(d: Mapping[str, Any]) -> str:
    if d.get("human_level_error") is not None:
        return "avoidable bias"
    return "bias"


def _judged(label: str, judgement: Mapping[str, Any] | None) -> str:
    """'avoidable bias 6.1% ± 1.2': the value and half its 95% interval, in points."""
    if not judgement:
        return label
    text = f"{label} {_pct(judgement['value'])}"
    interval = judgement.get("interval")
    if interval:
        text += f" ± {(interval[1] - interval[0]) * 50:.1f}"
    return text


# --- paths into a spec dict -------------------------------------------------------------------


def _get(spec: Mapping[str, Any], path: str) -> Any:
    node: Any = spec
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _space(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    search = spec.get("search")
    return None if not search else dict(search.get("space") or {})


def _entry(spec: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """The search-space entry for `key`, without the keys left at their defaults."""
    entry = (_space(spec) or {}).get(key)
    if entry is None:
        return None
    return {k: v for k, v in entry.items() if v is not None and not (k == "log" and v is False)}


def _used(spec: Mapping[str, Any], best: Best, path: str) -> Any:
    """The best trial's value of a setting: its sampled value, else the spec's."""
    return best.params[path] if path in best.params else _get(spec, path)


def _fixed(spec: Mapping[str, Any], path: str, new: Any, remedy: str, because: str) -> Change:
    return Change(path, _get(spec, path), new, remedy, f"{because}: {_why(remedy)}")


def _searched(
    spec: Mapping[str, Any], key: str, new: dict[str, Any], remedy: str, because: str
) -> Change:
    return Change(
        f"search.space[{key}]", _entry(spec, key), new, remedy, f"{because}: {_why(remedy)}"
    )


_WHY = {
    BIGGER: "bigger network",
    LONGER: "train longer",
    OPTIMIZER: "another optimizer",
    LR_RANGE: "widen the learning-rate range",
    L2: "L2 regularization",
    DROPOUT: "dropout",
    EARLY: "stop early on the dev loss",
    AUGMENT: "noise on the train inputs (augmentation)",
    STRONGER: "stronger regularization",
    WEIGHTS: "strengthen the groups that do worse",
}


def _why(remedy: str) -> str:
    return _WHY[remedy]


# --- bias -------------------------------------------------------------------------------------


def _bias_changes(
    spec: Mapping[str, Any], best: Best, tried: set[str], because: str
) -> list[Change]:
    changes = [c for c in (_grow_network(spec, best, because),) if c is not None]
    changes += _train_longer(spec, best, because)
    if OPTIMIZER not in tried:
        changes += _better_optimizer(spec, best, because)
    changes += _widen_lr(spec, best, tried, because)
    return changes


def grow(widths: list[int]) -> list[int] | None:
    """The next bigger network: every width times 4 (at least 32, at most 1024); once every
    layer is at 1024, one more layer (up to 4); None when there is nothing bigger to try."""
    wider = [min(MAX_WIDTH, max(MIN_WIDTH, GROWTH * w)) for w in widths] or [MIN_WIDTH]
    if wider != widths:
        return wider
    return [*widths, widths[-1]] if len(widths) < MAX_LAYERS else None


def _grow_network(spec: Mapping[str, Any], best: Best, because: str) -> Change | None:
    space = _space(spec) or {}
    if "model.hidden" in space and _entry(spec, "model.hidden").get("choices"):
        old = _entry(spec, "model.hidden")["choices"]
        new = [w for w in (grow(list(c)) for c in old) if w is not None]
        new = [w for i, w in enumerate(new) if w not in new[:i]]
        return _searched(spec, "model.hidden", {"choices": new}, BIGGER, because) if new else None
    if "model.units" in space or "model.layers" in space:
        return _grow_sized_search(spec, because)
    model = spec.get("model") or {}
    if model.get("units") is not None and model.get("layers") is not None:
        units, layers = model["units"], model["layers"]
        if units < MAX_WIDTH:
            return _fixed(
                spec, "model.units", min(MAX_WIDTH, max(MIN_WIDTH, GROWTH * units)), BIGGER, because
            )
        if layers < MAX_LAYERS:
            return _fixed(spec, "model.layers", layers + 1, BIGGER, because)
        return None
    hidden = model.get("hidden")
    widths = list(hidden) if hidden is not None else [64, 64]  # the spec's default network
    bigger = grow(widths)
    if bigger is None:
        return None
    return Change("model.hidden", hidden, bigger, BIGGER, f"{because}: {_why(BIGGER)}")


def _grow_sized_search(spec: Mapping[str, Any], because: str) -> Change | None:
    """A search over model.units (and model.layers): move the units range up."""
    entry = _entry(spec, "model.units")
    if entry is None:
        return None
    if entry.get("choices"):
        grown = sorted({min(MAX_WIDTH, max(MIN_WIDTH, GROWTH * u)) for u in entry["choices"]})
        new = {"choices": grown}
    else:
        high = min(MAX_WIDTH, GROWTH * entry["high"])
        new = {**entry, "low": entry["high"], "high": high}
        if high <= entry["high"]:
            return None
    return None if new == entry else _searched(spec, "model.units", new, BIGGER, because)


def _train_longer(spec: Mapping[str, Any], best: Best, because: str) -> list[Change]:
    """Only when the best trial ran every epoch: early stopping had not yet found where more
    epochs stop helping."""
    epochs = _used(spec, best, "train.epochs")
    if best.epochs_run is None or epochs is None or best.epochs_run < epochs:
        return []
    entry = _entry(spec, "train.epochs")
    if entry is not None and "high" in entry:
        if entry["high"] >= MAX_EPOCHS:
            return []
        new = {**entry, "high": min(MAX_EPOCHS, int(entry["high"]) * 2)}
        return [_searched(spec, "train.epochs", new, LONGER, because)]
    if entry is not None or epochs >= MAX_EPOCHS:
        return []
    return [_fixed(spec, "train.epochs", min(MAX_EPOCHS, 2 * epochs), LONGER, because)]


def _better_optimizer(spec: Mapping[str, Any], best: Best, because: str) -> list[Change]:
    entry = _entry(spec, "train.optimizer")
    if entry is not None and entry.get("choices"):
        if any(c in ADAPTIVE for c in entry["choices"]):
            return []
        new = {**entry, "choices": [*entry["choices"], "adam"]}
        return [_searched(spec, "train.optimizer", new, OPTIMIZER, because)]
    if _used(spec, best, "train.optimizer") in ADAPTIVE:
        return []
    return [_fixed(spec, "train.optimizer", "adam", OPTIMIZER, because)]


def _widen_lr(spec: Mapping[str, Any], best: Best, tried: set[str], because: str) -> list[Change]:
    """A searched lr whose best value sits at an edge of its range: widen that side ten times.
    A search that does not vary lr yet gets a range around the spec's lr (once)."""
    space = _space(spec)
    if space is None:
        return []
    entry = _entry(spec, "train.lr")
    lr = _used(spec, best, "train.lr")
    if entry is None:
        if LR_RANGE in tried or lr is None:
            return []
        new = {"low": lr / 10, "high": min(1.0, lr * 10), "log": True}
        return [_searched(spec, "train.lr", new, LR_RANGE, because)]
    if "high" not in entry or lr is None or entry["low"] <= 0:
        return []
    span = math.log(entry["high"]) - math.log(entry["low"])
    where = (math.log(lr) - math.log(entry["low"])) / span if span > 0 else 0.5
    if where <= EDGE:
        new = {**entry, "low": entry["low"] / 10}
    elif where >= 1 - EDGE and entry["high"] < 1.0:
        new = {**entry, "high": min(1.0, entry["high"] * 10)}
    else:
        return []
    return [_searched(spec, "train.lr", new, LR_RANGE, because)]


# --- variance ---------------------------------------------------------------------------------


def _variance_changes(
    spec: Mapping[str, Any],
    best: Best,
    tried: set[str],
    because: str,
) -> list[Change]:
    """One remedy a round, the first not tried yet: L2, dropout, input noise, early stopping,
    then L2 and dropout pushed further together."""
    rungs: list[tuple[str, Callable[[], list[Change]]]] = [
        (L2, lambda: _add_l2(spec, best, because)),
        (DROPOUT, lambda: _add_dropout(spec, best, because)),
        (AUGMENT, lambda: _augment(spec, because)),
        (EARLY, lambda: _early_stopping(spec, because)),
        (STRONGER, lambda: _stronger(spec, best, because)),
    ]
    for remedy, changes in rungs:
        if remedy not in tried:
            found = changes()
            if found:
                return found
    return []


def _add_l2(spec: Mapping[str, Any], best: Best, because: str) -> list[Change]:
    entry = _entry(spec, "train.l2")
    if entry is not None and "high" in entry:
        new = {**entry, "high": min(1.0, entry["high"] * 10)}
        return [] if new == entry else [_searched(spec, "train.l2", new, L2, because)]
    if _space(spec) is not None and entry is None:
        return [_searched(spec, "train.l2", dict(L2_RANGE), L2, because)]
    if entry is not None:  # a list of choices: left as the user chose it
        return []
    l2 = _used(spec, best, "train.l2") or 0.0
    new = L2_FIXED if l2 == 0 else min(1.0, l2 * 10)
    return [] if new == l2 else [_fixed(spec, "train.l2", new, L2, because)]


def _add_dropout(spec: Mapping[str, Any], best: Best, because: str) -> list[Change]:
    entry = _entry(spec, "model.dropout")
    if entry is not None and "high" in entry:
        new = {**entry, "high": min(MAX_DROPOUT, round(entry["high"] + 0.2, 6))}
        return [] if new == entry else [_searched(spec, "model.dropout", new, DROPOUT, because)]
    if _space(spec) is not None and entry is None:
        return [_searched(spec, "model.dropout", dict(DROPOUT_RANGE), DROPOUT, because)]
    if entry is not None:
        return []
    dropout = _used(spec, best, "model.dropout") or 0.0
    if dropout >= 0.5:
        return []
    new = 0.2 if dropout == 0 else min(0.5, round(dropout + 0.2, 6))
    return [_fixed(spec, "model.dropout", new, DROPOUT, because)]


def _early_stopping(spec: Mapping[str, Any], because: str) -> list[Change]:
    train = spec.get("train") or {}
    if "early_stopping" not in train or train["early_stopping"] is not None:
        return []  # on (the default) already
    return [
        _fixed(spec, "train.early_stopping", {"patience": 10, "min_delta": 0.0}, EARLY, because)
    ]


def _augment(spec: Mapping[str, Any], because: str) -> list[Change]:
    if _entry(spec, "data.augment.noise") is not None:
        return []
    if _space(spec) is not None:
        return [_searched(spec, "data.augment.noise", dict(NOISE_RANGE), AUGMENT, because)]
    noise = (_get(spec, "data.augment") or {}).get("noise") or 0.0
    new = AUGMENT_NOISE if noise == 0 else min(1.0, noise * 2)
    if new == noise:
        return []
    return [_fixed(spec, "data.augment", {"noise": new}, AUGMENT, because)]


def _stronger(spec: Mapping[str, Any], best: Best, because: str) -> list[Change]:
    """After every remedy once: L2 and dropout pushed further together."""
    return _add_l2(spec, best, because) + _add_dropout(spec, best, because)


# --- data mismatch ----------------------------------------------------------------------------


def _mismatch_plan(spec: Mapping[str, Any], d: Mapping[str, Any]) -> Plan:
    groups = d.get("groups") or {}
    worse = [name for name, g in groups.items() if g.get("verdict") in ("mismatch", "harder")]
    mismatched = [name for name, g in groups.items() if g.get("verdict") == "mismatch"]
    named = ", ".join(f"'{n}'" for n in mismatched or worse)
    because = f"data mismatch on {named}" if named else _judged("data mismatch", _mj(d))
    if not worse or not _get(spec, "data.group"):
        return Plan(
            because,
            "mismatch",
            stop=(
                "data mismatch: dev comes from another mix of distributions than train; collect "
                "training data like the dev examples, or train on all distributions shuffled "
                "into every split — a spec change cannot"
            ),
        )
    current = _get(spec, "data.weights")
    old = dict(current["group"]) if isinstance(current, Mapping) and "group" in current else {}
    new = {name: float(old.get(name, 1.0)) for name in groups}
    for name in worse:
        new[name] = min(MAX_GROUP_WEIGHT, new[name] * 2)
    if new == {name: float(old.get(name, 1.0)) for name in groups}:
        return Plan(
            because,
            "mismatch",
            stop=(
                f"data mismatch remains with {named} weighted {MAX_GROUP_WEIGHT:g} times: collect "
                "more training data like them, or train on all distributions shuffled into every "
                "split — a spec change cannot"
            ),
        )
    new = {k: int(v) if float(v).is_integer() else v for k, v in new.items()}
    change = Change("data.weights", current, {"group": new}, WEIGHTS, f"{because}: {_why(WEIGHTS)}")
    return Plan(because, "mismatch", (change,))


def _mj(d: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return (d.get("judgements") or {}).get("mismatch")


# --- applying changes, writing the commented spec ---------------------------------------------


def apply_changes(spec: Mapping[str, Any], changes: Iterable[Change]) -> dict[str, Any]:
    """A new spec dict with the changes made (the input is left as it was)."""
    out = copy.deepcopy(dict(spec))
    for change in changes:
        if change.path.startswith("search.space["):
            key = change.path.removeprefix("search.space[").removesuffix("]")
            out["search"]["space"][key] = copy.deepcopy(change.new)
            continue
        *parents, last = change.path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(change.new)
    return out


def compact(spec: Mapping[str, Any], changes: Iterable[Change] = ()) -> dict[str, Any]:
    """The spec as its author would write it: only the values that differ from the defaults,
    and every changed key (even one changed to its default), so its comment has a line."""
    checked = spec_from_dict(dict(spec), source="the improved spec")  # a planner bug, said early
    return apply_changes(checked.model_dump(mode="json", exclude_defaults=True), changes)


# Mappings written one key a line; every other value is written in flow style on its key's line.
_BLOCK = {(), ("data",), ("model",), ("train",), ("objective",), ("search",), ("search", "space")}


def commented_yaml(
    spec: Mapping[str, Any], changes: Iterable[Change], header: Iterable[str] = ()
) -> str:
    """The spec as YAML, each changed key followed by `# <verdict>: <remedy>`."""
    comments: dict[tuple[str, ...], str] = {}
    for change in changes:
        if change.path.startswith("search.space["):
            key = change.path.removeprefix("search.space[").removesuffix("]")
            where: tuple[str, ...] = ("search", "space", key)
        else:
            where = tuple(change.path.split("."))
        comments[where] = (
            f"{comments[where]}; {change.reason}" if where in comments else change.reason
        )
    lines = [f"# {line}" if line else "#" for line in header]
    _emit(spec, (), lines, comments)
    return "\n".join(lines) + "\n"


def _emit(
    node: Mapping[str, Any],
    path: tuple[str, ...],
    lines: list[str],
    comments: Mapping[tuple[str, ...], str],
) -> None:
    indent = "  " * len(path)
    for key, value in node.items():
        where = (*path, str(key))
        note = f"  # {comments[where]}" if where in comments else ""
        if path == ("search", "space") and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if v is not None and v is not False}
        if where in _BLOCK and isinstance(value, Mapping) and value:
            lines.append(f"{indent}{_flow(key)}:{note}")
            _emit(value, where, lines, comments)
        else:
            lines.append(f"{indent}{_flow(key)}: {_flow(value)}{note}")


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False)
    return text.strip().removesuffix("...").strip()


# --- the chain --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """One run of the chain: which round, its folder, the judgement that led to its changes
    (none for the run the chain starts from), its own verdict, and its dev error."""

    number: int
    run: str
    because: str | None
    focus: str | None
    changes: tuple[Change, ...]
    verdict: str | None
    dev_error: float | None
    dev_interval: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.number,
            "run": self.run,
            "because": self.because,
            "focus": self.focus,
            "changes": [c.to_dict() for c in self.changes],
            "verdict": self.verdict,
            "dev_error": self.dev_error,
            "dev_interval": list(self.dev_interval) if self.dev_interval else None,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Round:
        return cls(
            number=int(raw["round"]),
            run=str(raw["run"]),
            because=raw.get("because"),
            focus=raw.get("focus"),
            changes=tuple(
                Change(c["path"], c.get("old"), c.get("new"), c.get("remedy", ""), c["reason"])
                for c in raw.get("changes") or ()
            ),
            verdict=raw.get("verdict"),
            dev_error=raw.get("dev_error"),
            dev_interval=tuple(raw["dev_interval"]) if raw.get("dev_interval") else None,
        )


def round_of(number: int, run: RunFolder, summary: Mapping[str, Any], plan_: Plan | None) -> Round:
    measured = dev_error_of(summary)
    return Round(
        number=number,
        run=run.name,
        because=plan_.because if plan_ else None,
        focus=plan_.focus if plan_ else None,
        changes=plan_.changes if plan_ else (),
        verdict=(summary.get("diagnosis") or {}).get("verdict"),
        dev_error=measured[0] if measured else None,
        dev_interval=measured[1] if measured else None,
    )


@dataclass(frozen=True)
class Chain:
    """The rounds so far, why the chain stopped (None while it goes on), and which run is the
    result (the lowest dev error)."""

    rounds: tuple[Round, ...]
    stop: str | None = None
    failed: bool = False  # a round completed no trial

    @property
    def result(self) -> Round:
        scored = [r for r in self.rounds if r.dev_error is not None]
        return min(scored, key=lambda r: (r.dev_error, r.number)) if scored else self.rounds[-1]

    @property
    def tried(self) -> set[str]:
        return {c.remedy for r in self.rounds for c in r.changes}

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": [r.to_dict() for r in self.rounds],
            "stop": self.stop,
            "result": self.result.run,
        }


def read_chain(run: RunFolder, summary: Mapping[str, Any]) -> Chain:
    """The chain the run belongs to (its improve.json), or a new chain starting at it."""
    if run.improve.is_file():
        try:
            raw = read_json(run.improve)
            rounds = tuple(Round.from_dict(r) for r in raw["rounds"])
            if rounds and rounds[-1].run == run.name:
                return Chain(rounds)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged record: start a new chain here
    return Chain((round_of(0, run, summary, None),))


# What runs one round: the spec file's path -> the new run folder and its summary.
RunRound = Callable[[Path], tuple[RunFolder, dict[str, Any]]]
Say = Callable[[str], None]


def improve(
    start: RunFolder,
    run_round: RunRound,
    rounds: int = DEFAULT_ROUNDS,
    until: float | None = None,
    say: Say = print,
) -> Chain:
    """Follow the diagnosis from run `start` for up to `rounds` new runs; each new run folder
    gets the spec it ran (improve-spec.yaml) and the chain so far (improve.json)."""
    summary = _summary(start)
    if best_of(summary) is None:
        raise InputError(
            "the run has no diagnosis (no trial completed, or it has not finished): nothing to "
            "improve from",
            source=str(start.root),
        )
    chain = read_chain(start, summary)
    say(_round_line(chain.rounds[-1]))
    run, spec = start, _spec_dict(start)
    for _ in range(rounds):
        stop = _goal_reached(summary, until)
        if stop:
            return _finish(chain, run, stop)
        next_plan = plan(spec, best_of(summary), chain.tried)
        if next_plan.stop:
            return _finish(chain, run, f"{next_plan.because}: {next_plan.stop}")
        number = chain.rounds[-1].number + 1
        new_spec = apply_changes(spec, next_plan.changes)
        text = commented_yaml(
            compact(new_spec, next_plan.changes), next_plan.changes, _header(number, run, next_plan)
        )
        for change in next_plan.changes:
            say(f"round {number}: {change.path}: {_flow(change.old)} -> {_flow(change.new)}")
        with tempfile.TemporaryDirectory(prefix="hpsearch-improve-") as folder:
            path = Path(folder) / "improve-spec.yaml"
            path.write_text(text, encoding="utf-8")
            new_run, new_summary = run_round(path)
        write_text(new_run.improve_spec, text)
        chain = Chain((*chain.rounds, round_of(number, new_run, new_summary, next_plan)))
        write_json(new_run.improve, chain.to_dict())
        say(_round_line(chain.rounds[-1]))
        if best_of(new_summary) is None:
            return _finish(Chain(chain.rounds, failed=True), new_run, _no_trial(number))
        better, interval = clearly_better(new_summary, summary)
        if not better:
            return _finish(chain, new_run, _not_better(chain, interval))
        run, spec, summary = new_run, _spec_dict(new_run), new_summary
    stop = _goal_reached(summary, until) or (
        f"the round budget is spent ({rounds} round{'s' * (rounds != 1)}); go on with "
        f"`hpsearch improve {run.name}`"
    )
    return _finish(chain, run, stop)


def _summary(run: RunFolder) -> dict[str, Any]:
    try:
        summary = read_json(run.summary)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read summary.json: {exc}", source=str(run.root)) from None
    if not isinstance(summary, dict):
        raise InputError("summary.json is not a JSON object", source=str(run.root))
    return summary


def _spec_dict(run: RunFolder) -> dict[str, Any]:
    return load_spec(run.spec).model_dump(mode="json")


def _finish(chain: Chain, last: RunFolder, stop: str) -> Chain:
    done = Chain(chain.rounds, stop, chain.failed)
    if last.name == chain.rounds[-1].run and len(chain.rounds) > 1:
        write_json(last.improve, done.to_dict())
    return done


def _goal_reached(summary: Mapping[str, Any], until: float | None) -> str | None:
    measured = dev_error_of(summary)
    if until is None or measured is None or measured[0] > until:
        return None
    return f"the dev error {_pct(measured[0])} reached --until {_pct(until)}"


def _no_trial(number: int) -> str:
    return f"round {number} completed no trial: see its run folder's report"


def _not_better(chain: Chain, interval: tuple[float, float] | None) -> str:
    new, old = chain.rounds[-1], chain.rounds[-2]
    said = ""
    if interval is not None:
        said = f" (difference {_pct(interval[0])} to {_pct(interval[1])})"
    return (
        f"the dev error stopped improving: round {new.number}'s {dev_text(new)} is not clearly "
        f"below round {old.number}'s {dev_text(old)}{said}; the result is round "
        f"{chain.result.number}"
    )


def dev_text(r: Round | Mapping[str, Any]) -> str:
    """'4.2% ± 1.9' (the 95% interval's half width, in points)."""
    raw = r.to_dict() if isinstance(r, Round) else r
    error, interval = raw.get("dev_error"), raw.get("dev_interval")
    if error is None:
        return "—"
    return f"{_pct(error)}" + (f" ± {(interval[1] - interval[0]) * 50:.1f}" if interval else "")


def _round_line(r: Round) -> str:
    led = f" ({r.because})" if r.because else ""
    return f"round {r.number}{led}: {r.run}: dev error {dev_text(r)}, {r.verdict}"


def _header(number: int, previous: RunFolder, next_plan: Plan) -> list[str]:
    return [
        f"Written by `hpsearch improve`, round {number}, from the diagnosis of {previous.name}:",
        f"{next_plan.because}. Each changed key says which verdict led to it.",
        "",
    ]
