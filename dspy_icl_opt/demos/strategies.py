"""The search space of one predictor's few-shot set, and how a point of it becomes demos.

Per predictor (parameter names are prefixed with the predictor's name and ``/``):

* ``k``: how many demos, in ``[0, max_demos]`` (clamped to the largest pool); ``k = 0`` is zero-shot;
* ``pool``: ``labeled`` or ``bootstrapped`` (only non-empty pools are offered); a pool smaller than
  ``k`` gives all its demos;
* ``strategy``:

  - ``random``: one of ``candidate_sets`` demo sets drawn up front (``set``, a categorical index):
    set ``i`` is the first ``k`` demos of the ``i``-th seeded shuffle of the pool, so it grows with
    ``k`` and index ``i`` means the same draw at every ``k``;
  - ``slots``: one of ``candidate_sets`` sets that together cover the pool (``set``): one seeded
    shuffle cut into consecutive runs of ``k``, so the sets share as few demos as the pool allows
    and every demo gets tried (what the per-position slots of earlier versions aimed at, without
    their huge categorical space);
  - ``knn``: the ``k`` demos nearest to each call's input, chosen at inference time;
  - ``mmr``: maximal marginal relevance to each call's input, at inference time: the most relevant
    demos that are not near-duplicates of each other (``mmr_lambda`` trades the two; 1 is kNN);
  - ``mmr_static``: one MMR set for every call. With no input to be relevant to, relevance is to
    the *average* input: the centroid of the pool's inputs (the inputs this predictor met on the
    training examples, drawn like the queries it will answer); redundancy is on whole demos;
  - ``influence``: the top ``k`` of a ranking from an earlier study.

  Candidate sets never repeat a demo, and are seeded from the optimizer's random generator (a
  categorical index, not a seed: TPE can learn which index is good, it cannot learn from the value
  of a seed, MIPROv2's reason for searching indices into pre-built sets);
* ``order`` (when more than one demo): ``as_selected``, ``most_similar_last`` (reordered per call so
  the demo nearest the input comes last) or ``permutation`` (``perm``: one of ``CANDIDATE_ORDERS``
  seeded permutations).

The same parameters and the same ``set_seed`` always give the same demos, so a trial run by another
process can be rebuilt.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from dspy_icl_opt.demos.dynamic import ORDERS, Order, mmr_order, selection_demo
from dspy_icl_opt.demos.embeddings import LEXICAL, demo_text, pool_index
from dspy_icl_opt.demos.pools import Pools, demo_id
from dspy_icl_opt.search.base import stable_int
from dspy_icl_opt.search.report import OptimizationReport

Strategy = Literal["random", "knn", "mmr", "mmr_static", "slots", "influence"]
STRATEGIES: tuple[Strategy, ...] = ("random", "knn", "mmr", "mmr_static", "slots", "influence")
#: Strategies whose demos are chosen per call (the predictor carries the pool).
PER_CALL: tuple[Strategy, ...] = ("knn", "mmr")
#: Strategies that pick one of the pre-built candidate sets by index.
INDEXED: tuple[Strategy, ...] = ("random", "slots")
#: Candidate sets per (predictor, pool) by default: MIPROv2's light setting builds 6 demo sets; ~30 trials
#: can try each a few times across k, where a seed or a slot per position could never be learnt.
CANDIDATE_SETS = 6
#: Seeded permutations the ``permutation`` order chooses from (order matters less than content).
CANDIDATE_ORDERS = 3
#: Kept for code that imported it: seeds are no longer searched (see ``CANDIDATE_SETS``).
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
    """What may be searched, per predictor (built once the pools are known).

    ``set_seed`` seeds the candidate sets and orders (drawn from the optimizer's random generator);
    ``candidate_sets`` is how many sets ``random`` and ``slots`` choose from; ``input_fields`` are each
    predictor's inputs (static MMR's relevance is measured on them; default: every field).
    """

    pools: Pools
    k_max: dict[str, int]
    strategies: tuple[Strategy, ...]
    orders: tuple[Order, ...] = ORDERS
    embedder: str = LEXICAL
    influence: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    set_seed: int = 0
    candidate_sets: int = CANDIDATE_SETS
    input_fields: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def usable_pools(self, name: str) -> list[str]:
        return [p for p, demos in self.pools[name].items() if demos]

    def candidate(self, name: str, pool: str, strategy: str, k: int, index: int) -> tuple[int, ...]:
        """Pool positions of candidate set ``index`` of ``strategy`` (``random`` or ``slots``) for ``k`` demos."""
        size = len(self.pools[name][pool])
        return candidate_set(size, k, index, seed=stable_int(self.set_seed, name, pool, strategy),
                             cover=strategy == "slots")

    def order_seed(self, name: str, index: int) -> int:
        """The seed of candidate permutation ``index`` of predictor ``name``."""
        return stable_int(self.set_seed, name, "order", index)


def candidate_set(size: int, k: int, index: int, *, seed: int, cover: bool = False) -> tuple[int, ...]:
    """``k`` distinct positions of a pool of ``size``: set ``index`` of the seeded family (see the module docstring).

    Example:
        >>> candidate_set(5, 3, 0, seed=1) == candidate_set(5, 4, 0, seed=1)[:3]  # random sets grow with k
        True
        >>> sorted(candidate_set(6, 3, 0, seed=1, cover=True) + candidate_set(6, 3, 1, seed=1, cover=True))
        [0, 1, 2, 3, 4, 5]
    """
    k = min(k, size)
    if cover:
        order = list(range(size))
        random.Random(seed).shuffle(order)
        return tuple(order[(index * k + j) % size] for j in range(k))
    order = list(range(size))
    random.Random(stable_int(seed, index)).shuffle(order)
    return tuple(order[:k])


@dataclass(frozen=True)
class Choice:
    """One predictor's few-shot set, as a trial chose it.

    ``index`` is the candidate-set index (``random`` and ``slots``), ``order_index`` the candidate
    permutation (``permutation``); ``mmr_lambda`` is set for the MMR strategies.
    """

    predictor: str
    k: int
    pool: str | None = None
    strategy: str | None = None
    order: Order = "as_selected"
    picks: tuple[int, ...] = ()
    perm_seed: int | None = None
    detail: str = ""
    index: int | None = None
    order_index: int | None = None
    mmr_lambda: float | None = None

    @property
    def shown(self) -> int:
        """Demos shown per call."""
        return self.k if self.strategy in PER_CALL or self.k == 0 else len(self.picks)

    @property
    def dynamic(self) -> bool:
        """True when the demos are chosen per call (kNN, MMR, or a set reordered per input)."""
        return self.strategy in PER_CALL or (self.order == "most_similar_last" and len(self.picks) > 1)

    def describe(self) -> str:
        """``k=3 labeled/random#2 permutation#1``: k, pool, strategy with its candidate set (or lambda), order."""
        if self.k == 0:
            return "k=0"
        order = self.order if self.order_index is None else f"{self.order}#{self.order_index}"
        return f"k={self.shown} {self.pool}/{self.strategy}{self.detail} {order}"


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
    index = lam = None
    if strategy in INDEXED:
        index = int(src.cat(f"{name}/set", range(space.candidate_sets)))
    elif strategy in ("mmr", "mmr_static"):
        lam = src.float(f"{name}/mmr_lambda", 0.0, 1.0)
    picks, detail = _picks(name, space, pool, demos, k, strategy, index, lam)
    order: Order = src.cat(f"{name}/order", space.orders) if k > 1 else "as_selected"
    order_index = int(src.cat(f"{name}/perm", range(CANDIDATE_ORDERS))) if order == "permutation" else None
    perm_seed = space.order_seed(name, order_index) if order_index is not None else None
    return Choice(name, k, pool, strategy, order, picks, perm_seed, detail, index, order_index, lam)


def _picks(name: str, space: Space, pool: str, demos: list[dict[str, Any]], k: int, strategy: str,
           index: int | None, lam: float | None) -> tuple[tuple[int, ...], str]:
    if strategy in INDEXED:
        return space.candidate(name, pool, strategy, k, index or 0), f"#{index}"
    if strategy == "mmr_static":
        picked = mmr(demos, k, lam or 0.0, space.embedder, _all_fields(demos),
                     input_fields=space.input_fields.get(name))
        return tuple(picked), f"(lambda={lam:.2f})"
    if strategy == "mmr":
        return (), f"(lambda={lam:.2f})"  # chosen per call
    if strategy == "influence":
        return tuple(by_influence(demos, space.influence.get(name, ()))[:k]), ""
    return (), ""  # knn: chosen per call


def mmr(demos: Sequence[Mapping[str, Any]], k: int, lam: float, embedder: str = LEXICAL,
        fields: Sequence[str] | None = None, *, query: Mapping[str, Any] | None = None,
        input_fields: Sequence[str] | None = None) -> list[int]:
    """Maximal marginal relevance: greedily add the demo maximising ``lam * rel - (1 - lam) * redundancy``.

    Redundancy is the highest similarity (on ``fields``, default all) to a demo already picked.
    Relevance is the similarity of a demo's inputs to ``query`` when one is given (per-call MMR);
    for a static set it is the similarity to the average query, the centroid of the demos' inputs
    (``input_fields``; default ``fields``). ``lam = 1`` gives the most relevant (typical) demos,
    ``lam = 0`` the most spread-out ones.
    """
    fields = list(fields) if fields is not None else _all_fields(demos)
    inputs = list(input_fields) if input_fields is not None else fields
    spread = pool_index([demo_text(d, fields) for d in demos], embedder)
    relevant = pool_index([demo_text(d, inputs) for d in demos], embedder)
    rel = relevant.similarities(demo_text(query, inputs)) if query is not None else relevant.centroid_similarities()
    return mmr_order(rel, spread.pairwise(), k, lam)


def by_influence(demos: Sequence[Mapping[str, Any]], ranking: Sequence[Mapping[str, Any]]) -> list[int]:
    """Pool positions sorted by the influence weight of an earlier study (unknown demos weigh 0)."""
    weight = {entry["id"]: float(entry.get("weight", 0.0)) for entry in ranking}
    return sorted(range(len(demos)), key=lambda i: (-weight.get(demo_id(demos[i]), 0.0), i))


def choice_demos(choice: Choice, demos: Sequence[dict[str, Any]], embedder: str = LEXICAL) -> list[dict[str, Any]]:
    """The demos a predictor carries for ``choice`` (a selection demo first when chosen per call)."""
    if choice.k == 0:
        return []
    if choice.strategy in PER_CALL:
        head = selection_demo(mode=choice.strategy, k=choice.k, order=choice.order,  # type: ignore[arg-type]
                              embedder=embedder, perm_seed=choice.perm_seed, mmr_lambda=choice.mmr_lambda)
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
    if choice.strategy in PER_CALL:
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
