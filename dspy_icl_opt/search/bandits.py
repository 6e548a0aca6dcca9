"""Best-arm identification: which ``k`` of many candidate prompts are best, for a fixed evaluation budget.

An *arm* is anything a strategy wants ranked (a candidate record, a program state); an *item* is
an index into the examples the arms are scored on. Every bandit here has the same interface::

    result = bandit.select(arms, k, pull, n_items, rng)

where ``pull(arm, item_indices)`` returns one reward per item (in ``[0, 1]`` for the confidence
bounds to mean what they say). Pulls are backed by the cached scorer, so an (arm, item) pair is
deterministic: each bandit remembers the rewards it has seen and only passes ``pull`` the pairs it
has not, while still counting every evaluation its schedule asks for. ``planned_evaluations``
gives that count in advance and ``result.evaluations`` always equals it; the LM cost is at most
``result.distinct_evaluations``.

Items are drawn from one shuffled stream per selection (a fresh permutation whenever it runs out),
so successive samples are disjoint while the item pool lasts and arms compared in the same round
or phase see the same items (paired comparisons, shared cache).

Budgets follow the reference implementation's parameters (microsoft/LMOps ``prompt_optimization``):
``eval_rounds`` x ``eval_prompts_per_round`` x ``samples_per_eval`` for the UCB family, and that
product as the total evaluation budget of the elimination methods and of brute force.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from dspy_icl_opt._validation import check_int, check_number

K = TypeVar("K")
Pull = Callable[[Any, list[int]], Sequence[float]]
BanditName = Literal["ucb", "ucb-e", "successive_rejects", "successive_halving", "brute_force"]
BANDITS: tuple[str, ...] = ("ucb", "ucb-e", "successive_rejects", "successive_halving", "brute_force")


@dataclass(frozen=True)
class SelectionResult(Generic[K]):
    """What a bandit decided and what it cost.

    Attributes:
        chosen: the top-``k`` arms, best first.
        chosen_indices: their positions in the ``arms`` passed to ``select``.
        ranking: every arm position, best first (arms never pulled last, in input order).
        means: per arm, the mean reward over the distinct items it was pulled on (``None``: never pulled).
        pulls: per arm, the evaluations the schedule asked for (repeats of a seen item included).
        items_seen: per arm, the distinct items its mean is over.
        evaluations: total (arm, item) evaluations asked for; equals ``planned_evaluations``.
        distinct_evaluations: (arm, item) pairs actually passed to ``pull`` (an upper bound of LM cost).
    """

    chosen: tuple[K, ...]
    chosen_indices: tuple[int, ...]
    ranking: tuple[int, ...]
    means: tuple[float | None, ...]
    pulls: tuple[int, ...]
    items_seen: tuple[int, ...]
    evaluations: int
    distinct_evaluations: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the arms themselves)."""
        return {"chosen": list(self.chosen_indices), "ranking": list(self.ranking),
                "means": [None if m is None else round(m, 6) for m in self.means],
                "pulls": list(self.pulls), "items_seen": list(self.items_seen), "evaluations": self.evaluations,
                "distinct_evaluations": self.distinct_evaluations}


class _ItemStream:
    """Item indices in shuffled passes: position ``p`` of the stream is always the same item."""

    def __init__(self, n_items: int, rng: random.Random) -> None:
        self.n_items = n_items
        self.rng = rng
        self.items: list[int] = []

    def take(self, start: int, stop: int) -> list[int]:
        while len(self.items) < stop:
            block = list(range(self.n_items))
            self.rng.shuffle(block)
            self.items.extend(block)
        return self.items[start:stop]


class _Tracker:
    """Rewards seen per arm; asks ``pull`` only for (arm, item) pairs it has not seen."""

    def __init__(self, arms: Sequence[Any], pull: Pull) -> None:
        self.arms = arms
        self.pull_fn = pull
        self.rewards: list[dict[int, float]] = [{} for _ in arms]
        self.pulls = [0] * len(arms)
        self.distinct = 0

    def pull(self, arm: int, items: Sequence[int]) -> None:
        self.pulls[arm] += len(items)
        seen = self.rewards[arm]
        new = list(dict.fromkeys(i for i in items if i not in seen))
        if not new:
            return
        rewards = list(self.pull_fn(self.arms[arm], new))
        if len(rewards) != len(new):
            raise ValueError(f"`pull` must return one reward per item, but returned {len(rewards)} rewards for "
                             f"{len(new)} items. Return a list aligned with `item_indices`.")
        seen.update(zip(new, (float(r) for r in rewards)))
        self.distinct += len(new)

    def n(self, arm: int) -> int:
        return len(self.rewards[arm])

    def mean(self, arm: int) -> float | None:
        seen = self.rewards[arm]
        return sum(seen.values()) / len(seen) if seen else None

    def ranking(self, among: Sequence[int] | None = None) -> list[int]:
        """Arms by mean reward, best first; ties and unpulled arms keep their input order."""
        pool = range(len(self.arms)) if among is None else among
        return sorted(pool, key=lambda a: (self.mean(a) is None, -(self.mean(a) or 0.0), a))

    def result(self, k: int, ranking: list[int]) -> SelectionResult:
        chosen = tuple(ranking[:k])
        return SelectionResult(chosen=tuple(self.arms[a] for a in chosen), chosen_indices=chosen,
                               ranking=tuple(ranking), means=tuple(self.mean(a) for a in range(len(self.arms))),
                               pulls=tuple(self.pulls), items_seen=tuple(self.n(a) for a in range(len(self.arms))),
                               evaluations=sum(self.pulls),
                               distinct_evaluations=self.distinct)


class BestArmIdentifier(ABC):
    """The interface of every bandit: ``select`` the top ``k`` arms, spending a stated budget."""

    def select(self, arms: Sequence[K], k: int, pull: Pull, n_items: int, rng: random.Random) -> SelectionResult[K]:
        """Rank ``arms`` and return the top ``k``, spending exactly ``planned_evaluations``.

        Args:
            arms: the candidates (any objects; ``pull`` receives them back).
            k: how many to keep. When ``len(arms) <= k`` every arm is kept and nothing is spent.
            pull: ``pull(arm, item_indices) -> rewards``, one reward per item.
            n_items: the size of the item pool (items are ``0 .. n_items - 1``).
            rng: the only source of randomness (the strategy's ``ctx.rng``).
        """
        if not arms:
            raise ValueError("`arms` must hold at least one candidate, but it is empty.")
        check_int("k", k, minimum=1)
        check_int("n_items", n_items, minimum=1)
        tracker = _Tracker(arms, pull)
        if len(arms) <= k:
            return tracker.result(k, list(range(len(arms))))
        ranking = self._run(tracker, k, _ItemStream(n_items, rng), rng)
        return tracker.result(k, ranking)

    @abstractmethod
    def planned_evaluations(self, n_arms: int, k: int, n_items: int) -> int:
        """The (arm, item) evaluations ``select`` will count for these sizes."""

    @abstractmethod
    def _run(self, tracker: _Tracker, k: int, stream: _ItemStream, rng: random.Random) -> list[int]:
        """Pull arms through ``tracker``; return the final ranking of every arm, best first."""


class UCB(BestArmIdentifier):
    """Upper confidence bound sampling (UCB1 index), as the APO paper's default evaluator.

    Each of ``eval_rounds`` rounds pulls the ``m = min(eval_prompts_per_round, n_arms)`` arms with
    the highest index ``mean + c * sqrt(ln t / n)`` (``n``: distinct items the arm has seen, ``t``:
    distinct evaluations so far, both in items; unseen arms come first, ties in random order) on
    one shared sample of ``s = min(samples_per_eval, n_items)`` items. The final ranking is by mean.

    Budget: ``eval_rounds * m * s`` evaluations.

    Args:
        eval_rounds: rounds of sampling.
        eval_prompts_per_round: arms pulled per round.
        samples_per_eval: items per pull.
        c: exploration weight (higher explores more).
    """

    def __init__(self, eval_rounds: int = 8, eval_prompts_per_round: int = 8, samples_per_eval: int = 32,
                 c: float = 1.0) -> None:
        check_int("eval_rounds", eval_rounds, minimum=1)
        check_int("eval_prompts_per_round", eval_prompts_per_round, minimum=1)
        check_int("samples_per_eval", samples_per_eval, minimum=1)
        check_number("c", c, minimum=0, hint="Use 1.0 (the reference default).")
        self.eval_rounds = eval_rounds
        self.eval_prompts_per_round = eval_prompts_per_round
        self.samples_per_eval = samples_per_eval
        self.c = float(c)

    def planned_evaluations(self, n_arms: int, k: int, n_items: int) -> int:
        if n_arms <= k:
            return 0
        return self.eval_rounds * min(self.eval_prompts_per_round, n_arms) * min(self.samples_per_eval, n_items)

    def _bonus(self, n: int, t: int) -> float:
        return self.c * math.sqrt(math.log(max(t, 1)) / n)

    def _run(self, tracker: _Tracker, k: int, stream: _ItemStream, rng: random.Random) -> list[int]:
        n_arms = len(tracker.arms)
        per_round = min(self.eval_prompts_per_round, n_arms)
        size = min(self.samples_per_eval, stream.n_items)
        tiebreak = list(range(n_arms))
        rng.shuffle(tiebreak)
        for round_index in range(self.eval_rounds):
            t = tracker.distinct

            def index(arm: int, t: int = t) -> tuple[float, int]:
                n = tracker.n(arm)
                value = math.inf if n == 0 else (tracker.mean(arm) or 0.0) + self._bonus(n, t)
                return value, tiebreak[arm]

            chosen = sorted(range(n_arms), key=index, reverse=True)[:per_round]
            items = stream.take(round_index * size, (round_index + 1) * size)
            for arm in chosen:
                tracker.pull(arm, items)
        return tracker.ranking()


class UCBE(UCB):
    """UCB-E (Audibert, Bubeck & Munos, 2010): the index is ``mean + sqrt(c / n)``.

    The exploration parameter ``a`` of the paper is ``c``; ``n`` counts distinct items. Same
    schedule and budget as :class:`UCB`: ``eval_rounds * min(eval_prompts_per_round, n_arms) *
    min(samples_per_eval, n_items)`` evaluations.
    """

    def _bonus(self, n: int, t: int) -> float:
        return math.sqrt(self.c / n)


class _Elimination(BestArmIdentifier):
    """Phased elimination: survivors are pulled on the same stream slice, then the worst are dropped."""

    def __init__(self, budget: int) -> None:
        check_int("budget", budget, minimum=1)
        self.budget = budget

    @abstractmethod
    def _schedule(self, n_arms: int, k: int) -> list[tuple[int, int]]:
        """Per phase: (survivors after the phase, cumulative items per surviving arm at its end)."""

    def planned_evaluations(self, n_arms: int, k: int, n_items: int) -> int:
        if n_arms <= k:
            return 0
        total, active, done = 0, n_arms, 0
        for keep, cumulative in self._schedule(n_arms, k):
            total += active * (cumulative - done)
            active, done = keep, cumulative
        return total

    def _run(self, tracker: _Tracker, k: int, stream: _ItemStream, rng: random.Random) -> list[int]:
        active = list(range(len(tracker.arms)))
        eliminated: list[int] = []  # worst first
        done = 0
        for keep, cumulative in self._schedule(len(active), k):
            items = stream.take(done, cumulative)
            for arm in active:
                tracker.pull(arm, items)
            done = cumulative
            order = tracker.ranking(active)
            active, dropped = sorted(order[:keep]), order[keep:]
            eliminated = dropped + eliminated  # dropped now beats everything dropped before
        return tracker.ranking(active) + eliminated


class SuccessiveRejects(_Elimination):
    """Successive Rejects (Audibert & Bubeck, 2010), stopped when ``k`` arms remain.

    With ``K`` arms and budget ``B``, phase ``j = 1 .. K - k`` pulls each of the ``K + 1 - j``
    surviving arms up to ``n_j = floor(C / (K + 1 - j))`` items in total, then rejects the single
    arm with the lowest mean. ``C = B / (1 + sum_{i=k+2}^{K} 1/i)`` makes the phase lengths the
    paper's (``n_j`` proportional to ``1 / (K + 1 - j)``) and the total at most ``B``.

    Budget: ``sum_j (K + 1 - j) * (n_j - n_{j-1})`` evaluations (``n_0 = 0``), at most ``B``.

    Args:
        budget: total evaluations ``B`` (APO: ``eval_rounds * eval_prompts_per_round * samples_per_eval``).
    """

    def _schedule(self, n_arms: int, k: int) -> list[tuple[int, int]]:
        scale = self.budget / (1.0 + sum(1.0 / i for i in range(k + 2, n_arms + 1)))
        return [(n_arms - j, math.floor(scale / (n_arms + 1 - j))) for j in range(1, n_arms - k + 1)]


class SuccessiveHalving(_Elimination):
    """Successive Halving (Karnin, Koren & Somekh, 2013), stopped when ``k`` arms remain.

    Each of ``R`` phases keeps the better half of the survivors (``max(k, ceil(|S| / 2))``), so
    ``R`` is the number of halvings from ``K`` arms down to ``k``. Phase ``r`` with ``|S_r|``
    survivors pulls each on ``floor(B / (|S_r| * R))`` further items.

    Budget: ``sum_r |S_r| * floor(B / (|S_r| * R))`` evaluations, at most ``B``.

    Args:
        budget: total evaluations ``B`` (APO: ``eval_rounds * eval_prompts_per_round * samples_per_eval``).
    """

    def _schedule(self, n_arms: int, k: int) -> list[tuple[int, int]]:
        sizes = [n_arms]
        while sizes[-1] > k:
            sizes.append(max(k, math.ceil(sizes[-1] / 2)))
        phases = len(sizes) - 1
        schedule, cumulative = [], 0
        for active, keep in zip(sizes, sizes[1:]):
            cumulative += self.budget // (active * phases)
            schedule.append((keep, cumulative))
        return schedule


class BruteForce(BestArmIdentifier):
    """Every arm on one shared sample of ``m = max(1, min(n_items, B // K))`` items; top ``k`` by mean.

    Budget: ``K * m`` evaluations (at most ``B`` unless ``B < K``, when each arm still gets one item).

    Args:
        budget: total evaluations ``B``.
    """

    def __init__(self, budget: int) -> None:
        check_int("budget", budget, minimum=1)
        self.budget = budget

    def _size(self, n_arms: int, n_items: int) -> int:
        return max(1, min(n_items, self.budget // n_arms))

    def planned_evaluations(self, n_arms: int, k: int, n_items: int) -> int:
        return 0 if n_arms <= k else n_arms * self._size(n_arms, n_items)

    def _run(self, tracker: _Tracker, k: int, stream: _ItemStream, rng: random.Random) -> list[int]:
        items = stream.take(0, self._size(len(tracker.arms), stream.n_items))
        for arm in range(len(tracker.arms)):
            tracker.pull(arm, items)
        return tracker.ranking()


def make_bandit(name: str, *, eval_rounds: int = 8, eval_prompts_per_round: int = 8, samples_per_eval: int = 32,
                c: float = 1.0) -> BestArmIdentifier:
    """The bandit called ``name``, with the reference's budget parameters.

    The elimination methods and brute force spend at most ``eval_rounds * eval_prompts_per_round *
    samples_per_eval`` evaluations (the reference's ``eval_budget``).

    Example:
        >>> make_bandit("successive_rejects", eval_rounds=2, eval_prompts_per_round=2, samples_per_eval=4).budget
        16
    """
    for arg, value in (("eval_rounds", eval_rounds), ("eval_prompts_per_round", eval_prompts_per_round),
                       ("samples_per_eval", samples_per_eval)):
        check_int(arg, value, minimum=1)
    budget = eval_rounds * eval_prompts_per_round * samples_per_eval
    if name == "ucb":
        return UCB(eval_rounds, eval_prompts_per_round, samples_per_eval, c)
    if name == "ucb-e":
        return UCBE(eval_rounds, eval_prompts_per_round, samples_per_eval, c)
    if name == "successive_rejects":
        return SuccessiveRejects(budget)
    if name == "successive_halving":
        return SuccessiveHalving(budget)
    if name == "brute_force":
        return BruteForce(budget)
    raise ValueError(f"`evaluator` must be one of {list(BANDITS)}, but got {name!r}. "
                     "Use 'ucb' (the APO paper's choice) when unsure.")
