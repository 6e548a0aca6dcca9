"""The search space of one predictor's few-shot set, and how a point of it becomes demos.

Per predictor (parameter names are prefixed with the predictor's name and ``/``):

* ``k``: how many demos, in ``[0, max_demos]`` (clamped to the largest pool); ``k = 0`` is zero-shot;
* ``pool``: ``labeled`` or ``bootstrapped`` (only non-empty pools are offered); a pool smaller than
  ``k`` gives all its demos;
* ``strategy``: ``random`` (``random_seed``), ``knn`` (the ``k`` nearest demos of each call's input,
  chosen at inference time), ``mmr`` (maximal marginal relevance: representative yet diverse,
  ``mmr_lambda`` trades the two), ``slots`` (a categorical ``<pool>/slot<i>`` per position; repeated
  picks collapse), ``influence`` (the top ``k`` of a ranking from an earlier study);
* ``order`` (when more than one demo): ``as_selected``, ``most_similar_last`` (reordered per call so
  the demo nearest the input comes last) or ``permutation`` (``perm_seed``).

The same parameters always give the same demos, so a trial run by another process can be rebuilt.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from dspy_icl_opt.demos.dynamic import ORDERS, Order, selection_demo
from dspy_icl_opt.demos.embeddings import LEXICAL, demo_text, pool_index
from dspy_icl_opt.demos.pools import Pools, demo_id
from dspy_icl_opt.search.report import OptimizationReport

Strategy = Literal["random", "knn", "mmr", "slots", "influence"]
STRATEGIES: tuple[Strategy, ...] = ("random", "knn", "mmr", "slots", "influence")
#: Seeds of random subsets and permutations are drawn from [0, SEED_MAX]: plenty of distinct sets.
SEED_MAX = 9_999


class ParamSource(Protocol):
    """Where parameter values come from: an Optuna trial (sampling) or a finished trial's params."""

    def int(self, name: str, low: int, high: int) -> int: ...
    def float(self, name: str, low: float, high: float) -> float: ...
    def cat(self, name: str, choices: Sequence[Any]) -> Any: ...


class TrialSource:
    """Samples parameters from an ``optuna.Trial``."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def int(self, name: str, low: int, high: int) -> int:
        return self.trial.suggest_int(name, low, high)

    def float(self, name: str, low: float, high: float) -> float:
        return self.trial.suggest_float(name, low, high)

    def cat(self, name: str, choices: Sequence[Any]) -> Any:
        return self.trial.suggest_categorical(name, list(choices))


class ParamsSource:
    """Reads the parameters of a finished trial (raises ``KeyError`` on a missing one)."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params

    def int(self, name: str, low: int, high: int) -> int:
        return int(self.params[name])

    def float(self, name: str, low: float, high: float) -> float:
        return float(self.params[name])

    def cat(self, name: str, choices: Sequence[Any]) -> Any:
        return self.params[name]


@dataclass(frozen=True)
class Space:
    """What may be searched, per predictor (built once the pools are known)."""

    pools: Pools
    k_max: dict[str, int]
    strategies: tuple[Strategy, ...]
    orders: tuple[Order, ...] = ORDERS
    embedder: str = LEXICAL
    influence: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)

    def usable_pools(self, name: str) -> list[str]:
        return [p for p, demos in self.pools[name].items() if demos]


@dataclass(frozen=True)
class Choice:
    """One predictor's few-shot set, as a trial chose it."""

    predictor: str
    k: int
    pool: str | None = None
    strategy: str | None = None
    order: Order = "as_selected"
    picks: tuple[int, ...] = ()
    perm_seed: int | None = None
    detail: str = ""

    @property
    def shown(self) -> int:
        """Demos shown per call (repeated slot picks collapse)."""
        return self.k if self.strategy == "knn" or self.k == 0 else len(self.picks)

    @property
    def dynamic(self) -> bool:
        """True when the demos are chosen per call (kNN, or a set reordered per input)."""
        return self.strategy == "knn" or (self.order == "most_similar_last" and len(self.picks) > 1)

    def describe(self) -> str:
        if self.k == 0:
            return "k=0"
        return f"k={self.shown} {self.pool}/{self.strategy}{self.detail} {self.order}"


def suggest(src: ParamSource, name: str, space: Space) -> Choice:
    """The few-shot set of predictor ``name`` drawn from ``src``."""
    k = src.int(f"{name}/k", 0, space.k_max[name])
    usable = space.usable_pools(name)
    if k == 0 or not usable:
        return Choice(name, 0)
    pool = src.cat(f"{name}/pool", usable)
    demos = space.pools[name][pool]
    k = min(k, len(demos))
    strategy = src.cat(f"{name}/strategy", space.strategies)
    picks, detail = _picks(src, name, space, pool, demos, k, strategy)
    order: Order = src.cat(f"{name}/order", space.orders) if k > 1 else "as_selected"
    perm_seed = src.int(f"{name}/perm_seed", 0, SEED_MAX) if order == "permutation" else None
    return Choice(name, k, pool, strategy, order, picks, perm_seed, detail)


def _picks(src: ParamSource, name: str, space: Space, pool: str, demos: list[dict[str, Any]], k: int,
           strategy: str) -> tuple[tuple[int, ...], str]:
    if strategy == "random":
        seed = src.int(f"{name}/random_seed", 0, SEED_MAX)
        return tuple(random.Random(seed).sample(range(len(demos)), k)), f"(seed={seed})"
    if strategy == "mmr":
        lam = src.float(f"{name}/mmr_lambda", 0.0, 1.0)
        return tuple(mmr(demos, k, lam, space.embedder, _all_fields(demos))), f"(lambda={lam:.2f})"
    if strategy == "slots":
        slots = [src.cat(f"{name}/{pool}/slot{i}", range(len(demos))) for i in range(k)]
        return tuple(dict.fromkeys(slots)), f"{list(slots)}"
    if strategy == "influence":
        return tuple(by_influence(demos, space.influence.get(name, ()))[:k]), ""
    return (), ""  # knn: chosen per call


def mmr(demos: Sequence[Mapping[str, Any]], k: int, lam: float, embedder: str = LEXICAL,
        fields: Sequence[str] | None = None) -> list[int]:
    """Maximal marginal relevance: greedily add the demo maximising ``lam * rel - (1 - lam) * redundancy``.

    Relevance is the similarity to the pool's centroid (how typical a demo is); redundancy the
    highest similarity to a demo already picked. ``lam = 1`` gives the most typical demos,
    ``lam = 0`` the most spread-out ones.
    """
    fields = list(fields) if fields is not None else _all_fields(demos)
    index = pool_index([demo_text(d, fields) for d in demos], embedder)
    rel, sims = index.centroid_similarities(), index.pairwise()
    chosen: list[int] = []
    left = list(range(len(demos)))
    while left and len(chosen) < k:
        redundancy = np.max(sims[np.ix_(left, chosen)], axis=1) if chosen else np.zeros(len(left))
        gains = lam * rel[left] - (1.0 - lam) * redundancy
        best = left[int(np.argmax(gains))]
        chosen.append(best)
        left.remove(best)
    return chosen


def by_influence(demos: Sequence[Mapping[str, Any]], ranking: Sequence[Mapping[str, Any]]) -> list[int]:
    """Pool positions sorted by the influence weight of an earlier study (unknown demos weigh 0)."""
    weight = {entry["id"]: float(entry.get("weight", 0.0)) for entry in ranking}
    return sorted(range(len(demos)), key=lambda i: (-weight.get(demo_id(demos[i]), 0.0), i))


def choice_demos(choice: Choice, demos: Sequence[dict[str, Any]], embedder: str = LEXICAL) -> list[dict[str, Any]]:
    """The demos a predictor carries for ``choice`` (a selection demo first when chosen per call)."""
    if choice.k == 0:
        return []
    if choice.strategy == "knn":
        head = selection_demo(mode="knn", k=choice.k, order=choice.order, embedder=embedder,
                              perm_seed=choice.perm_seed)
        return [head, *demos]
    chosen = [demos[i] for i in choice.picks]
    if choice.dynamic:
        head = selection_demo(mode="fixed", k=len(chosen), order="most_similar_last", embedder=embedder)
        return [head, *chosen]
    if choice.order == "permutation":
        random.Random(choice.perm_seed).shuffle(chosen)
    return chosen


def static_ids(choice: Choice, demos: Sequence[dict[str, Any]]) -> list[str] | None:
    """Ids of the demos shown on every call, or ``None`` when they depend on the input."""
    if choice.k == 0:
        return []
    if choice.strategy == "knn":
        return None
    return [demo_id(demos[i]) for i in choice.picks]


def _all_fields(demos: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every field of the demos, outputs included: MMR spreads the labels as well as the inputs."""
    return list(dict.fromkeys(f for d in demos for f in d))


def check_choices(name: str, values: Sequence[str], allowed: Sequence[str]) -> tuple[Any, ...]:
    """A setting that lists options: non-empty, known values, duplicates dropped."""
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"`{name}` must be a non-empty list drawn from {list(allowed)}, but got {values!r}.")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"`{name}` must be drawn from {list(allowed)}, but got {bad}. Remove or fix them.")
    return tuple(dict.fromkeys(values))


def coerce_influence(value: Mapping[str, Any] | OptimizationReport | None) -> dict[str, list[dict[str, Any]]]:
    """An influence ranking from ``report.extra["influence"]`` or the report itself."""
    if value is None:
        return {}
    if isinstance(value, OptimizationReport):
        value = value.extra.get("influence") or {}
    if not isinstance(value, Mapping) or not all(
            isinstance(v, Sequence) and all(isinstance(e, Mapping) and "id" in e for e in v) for v in value.values()):
        raise ValueError("`influence` must be report.extra['influence'] of a DemoSelector run (predictor -> list of "
                         "{'id', 'weight'}) or that report, but got something else.")
    return {str(k): [dict(e) for e in v] for k, v in value.items()}
