"""Best-arm identification on synthetic arms with known means (no LM)."""

from __future__ import annotations

import math
import random

import pytest

from dspy_icl_opt.search.bandits import (
    UCB,
    UCBE,
    BruteForce,
    SuccessiveHalving,
    SuccessiveRejects,
    make_bandit,
)


class Arms:
    """Bernoulli arms over a fixed item pool; a pair's reward is fixed (like the cached scorer)."""

    def __init__(self, means: list[float], n_items: int, seed: int) -> None:
        rng = random.Random(seed)
        self.means = means
        self.n_items = n_items
        self.table = [[1.0 if rng.random() < m else 0.0 for _ in range(n_items)] for m in means]
        self.calls: list[tuple[int, tuple[int, ...]]] = []

    def pull(self, arm: int, items: list[int]) -> list[float]:
        self.calls.append((arm, tuple(items)))
        return [self.table[arm][i] for i in items]

    def pulled_pairs(self) -> list[tuple[int, int]]:
        return [(arm, i) for arm, items in self.calls for i in items]

    def empirical(self, arm: int, items: set[int]) -> float:
        return sum(self.table[arm][i] for i in items) / len(items)


MEANS = [0.3, 0.45, 0.8, 0.5, 0.35, 0.4]
BEST = 2

BANDITS = {
    "ucb": lambda: UCB(eval_rounds=8, eval_prompts_per_round=3, samples_per_eval=16, c=1.0),
    "ucb-e": lambda: UCBE(eval_rounds=8, eval_prompts_per_round=3, samples_per_eval=16, c=1.0),
    "successive_rejects": lambda: SuccessiveRejects(budget=400),
    "successive_halving": lambda: SuccessiveHalving(budget=400),
    "brute_force": lambda: BruteForce(budget=400),
}


@pytest.mark.parametrize("name", sorted(BANDITS))
def test_finds_the_best_arm_with_high_probability(name):
    hits = 0
    seeds = range(40)
    for seed in seeds:
        arms = Arms(MEANS, n_items=300, seed=seed)
        result = BANDITS[name]().select(list(range(len(MEANS))), 1, arms.pull, arms.n_items, random.Random(seed))
        hits += result.chosen == (BEST,)
    assert hits >= 0.9 * len(seeds), f"{name} found the best arm in {hits}/{len(seeds)} runs"


@pytest.mark.parametrize("name", sorted(BANDITS))
def test_top_k_holds_the_best_arms(name):
    hits = 0
    for seed in range(30):
        arms = Arms([0.2, 0.85, 0.3, 0.75, 0.25, 0.1], n_items=300, seed=seed)
        result = BANDITS[name]().select(list("abcdef"), 2, lambda a, items: arms.pull("abcdef".index(a), items),
                                        arms.n_items, random.Random(seed))
        hits += set(result.chosen) == {"b", "d"}
        assert len(result.chosen) == 2
    assert hits >= 25


def _sr_formula(budget: int, n_arms: int, k: int) -> int:
    scale = budget / (1 + sum(1 / i for i in range(k + 2, n_arms + 1)))
    lengths = [0] + [math.floor(scale / (n_arms + 1 - j)) for j in range(1, n_arms - k + 1)]
    return sum((n_arms + 1 - j) * (lengths[j] - lengths[j - 1]) for j in range(1, n_arms - k + 1))


@pytest.mark.parametrize(("bandit", "expected"), [
    (UCB(eval_rounds=5, eval_prompts_per_round=3, samples_per_eval=7), 5 * 3 * 7),
    (UCBE(eval_rounds=4, eval_prompts_per_round=10, samples_per_eval=6), 4 * 6 * 6),  # only 6 arms
    (SuccessiveRejects(budget=300), _sr_formula(300, 6, 2)),
    (SuccessiveHalving(budget=300), 6 * (300 // 12) + 3 * (300 // 6)),  # 6 -> 3 -> 2: two phases
    (BruteForce(budget=300), 6 * 50),
])
def test_spends_exactly_its_stated_budget(bandit, expected):
    arms = Arms(MEANS, n_items=1000, seed=1)
    result = bandit.select(list(range(6)), 2, arms.pull, arms.n_items, random.Random(0))
    assert bandit.planned_evaluations(6, 2, arms.n_items) == expected
    assert result.evaluations == expected == sum(result.pulls)
    # With a large item pool every evaluation is a new (arm, item) pair, and pull saw each once.
    pairs = arms.pulled_pairs()
    assert len(pairs) == len(set(pairs)) == result.distinct_evaluations == expected


@pytest.mark.parametrize("name", sorted(BANDITS))
def test_small_item_pool_repeats_pairs_for_free(name):
    arms = Arms(MEANS, n_items=10, seed=2)
    bandit = BANDITS[name]()
    result = bandit.select(list(range(6)), 1, arms.pull, arms.n_items, random.Random(0))
    pairs = arms.pulled_pairs()
    assert result.evaluations == bandit.planned_evaluations(6, 1, 10)
    assert len(pairs) == len(set(pairs)) == result.distinct_evaluations <= 6 * 10
    assert all(seen <= 10 for seen in result.items_seen)


def _phases(arms: Arms) -> list[tuple[set[int], tuple[int, ...]]]:
    """Group pulls by the item slice they shared: (arms pulled, items) per phase, in order."""
    phases: list[tuple[set[int], tuple[int, ...]]] = []
    for arm, items in arms.calls:
        if phases and phases[-1][1] == items:
            phases[-1][0].add(arm)
        else:
            phases.append(({arm}, items))
    return phases


def test_successive_rejects_drops_the_single_worst_arm_each_phase():
    for seed in range(10):
        arms = Arms(MEANS, n_items=1000, seed=seed)
        result = SuccessiveRejects(budget=600).select(list(range(6)), 1, arms.pull, 1000, random.Random(seed))
        phases = _phases(arms)
        assert [len(active) for active, _ in phases] == [6, 5, 4, 3, 2]
        seen: set[int] = set()
        for (active, items), (survivors, _) in zip(phases, [*phases[1:], ({result.chosen[0]}, ())]):
            seen |= set(items)
            dropped = active - survivors
            assert len(dropped) == 1
            worst = min(active, key=lambda a: (arms.empirical(a, seen), -a))
            assert dropped == {worst}
        # Each survivor's items after phase j: n_j = floor(C / (K + 1 - j)) (Audibert & Bubeck).
        cumulative = [sum(len(items) for _, items in phases[: j + 1]) for j in range(len(phases))]
        scale = 600 / (1 + 1 / 3 + 1 / 4 + 1 / 5 + 1 / 6)
        assert cumulative == [math.floor(scale / (7 - j)) for j in range(1, 6)]


def test_successive_halving_drops_the_lower_half_each_phase():
    arms = Arms([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9], n_items=1000, seed=3)
    result = SuccessiveHalving(budget=480).select(list(range(8)), 1, arms.pull, 1000, random.Random(3))
    phases = _phases(arms)
    assert [len(active) for active, _ in phases] == [8, 4, 2]
    assert [len(items) for _, items in phases] == [480 // (8 * 3), 480 // (4 * 3), 480 // (2 * 3)]
    seen: set[int] = set()
    for (active, items), (survivors, _) in zip(phases, [*phases[1:], (set(result.chosen), ())]):
        seen |= set(items)
        ranked = sorted(active, key=lambda a: (-arms.empirical(a, seen), a))
        assert survivors == set(ranked[: len(active) // 2])


def test_ucb_rounds_share_one_sample_and_rank_by_mean():
    arms = Arms(MEANS, n_items=500, seed=4)
    result = UCB(eval_rounds=6, eval_prompts_per_round=2, samples_per_eval=10).select(
        list(range(6)), 2, arms.pull, 500, random.Random(4))
    phases = _phases(arms)
    assert len(phases) == 6 and all(len(active) == 2 for active, _ in phases)
    means = [m for m in result.means if m is not None]
    assert [result.means[i] for i in result.ranking[: len(means)]] == sorted(means, reverse=True)


def test_brute_force_scores_every_arm_on_one_sample():
    arms = Arms(MEANS, n_items=50, seed=5)
    result = BruteForce(budget=1000).select(list(range(6)), 3, arms.pull, 50, random.Random(5))
    assert len({items for _, items in arms.calls}) == 1 and len(arms.calls) == 6
    assert result.items_seen == (50,) * 6  # capped by the item pool
    assert result.evaluations == 300


def test_fewer_arms_than_k_are_all_kept_for_free():
    arms = Arms(MEANS[:2], n_items=10, seed=0)
    result = UCB().select(["x", "y"], 4, lambda a, items: arms.pull(0, items), 10, random.Random(0))
    assert result.chosen == ("x", "y") and result.evaluations == 0 and not arms.calls


def test_same_seed_same_choice():
    runs = []
    for _ in range(2):
        arms = Arms(MEANS, n_items=100, seed=7)
        runs.append(UCB(eval_rounds=4, eval_prompts_per_round=2, samples_per_eval=8).select(
            list(range(6)), 2, arms.pull, 100, random.Random(11)).to_dict())
    assert runs[0] == runs[1]


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="`k` must be an integer >= 1, but got 0"):
        UCB().select([1, 2], 0, lambda a, i: [0.0] * len(i), 5, random.Random(0))
    with pytest.raises(ValueError, match="`arms` must hold at least one"):
        UCB().select([], 1, lambda a, i: [], 5, random.Random(0))
    with pytest.raises(ValueError, match="one reward per item"):
        BruteForce(10).select([1, 2], 1, lambda a, i: [0.0], 5, random.Random(0))
    with pytest.raises(ValueError, match="`c` must be a number >= 0"):
        UCB(c=-1)
    with pytest.raises(ValueError, match="`evaluator` must be one of"):
        make_bandit("thompson")
    with pytest.raises(ValueError, match="`eval_rounds` must be an integer >= 1"):
        make_bandit("ucb", eval_rounds=0)


def test_make_bandit_uses_the_reference_budget():
    bandit = make_bandit("successive_halving", eval_rounds=8, eval_prompts_per_round=8, samples_per_eval=32)
    assert bandit.budget == 8 * 8 * 32
    assert isinstance(make_bandit("ucb-e"), UCBE)
