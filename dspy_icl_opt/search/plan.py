"""Plans: how a strategy will spend its budget, computed from the caps and the data before any LM call.

A search with one step is a random sample, and a final choice made on unvalidated candidates is a
guess. Every strategy therefore turns the caps it was given (task and prompt calls), the data sizes
and its own settings into a :class:`SearchPlan` first: how many steps or rounds, how many candidates
per step, on how many shared examples each is scored, and what is held back for the final
validation. The rules (``SCHEDULING.md`` in the design notes):

1. the start's validation is always held back; finalists are cut before it is;
2. minibatches and candidates per step shrink before the number of steps does;
3. candidates of one step are scored on the same examples (a shared search set), so they and the
   incumbent are compared pair by pair, and the incumbent's pairs come from the cache;
4. the plan is printed before running and kept in the report beside what was really spent.

The plan is a projection: a strategy keeps going while its budget pays for more (calls saved by
de-duplication, the cache or racing buy further steps), so it runs at least the planned steps.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from dspy_icl_opt.search.budget import Budget

#: At most this share of the task-call cap goes to the final validation (start + finalists).
VALIDATION_SHARE = 0.35
#: Fewer steps than this is not a search; the plan shrinks everything else first.
MIN_STEPS = 5
#: The smallest shared search set a plan uses unless the trainset is smaller.
MIN_SEARCH_EXAMPLES = 8
#: With no task cap, the number of steps a strategy runs unless told otherwise.
UNCAPPED_STEPS = 10


@dataclass(frozen=True)
class Shape:
    """What a plan depends on: data sizes, predictors and the caps."""

    n_train: int
    n_val: int
    n_predictors: int
    task_cap: int | None
    prompt_cap: int | None
    #: Deterministic candidates the strategy's first step scores beside the start, counted from the data (the
    #: grounding's format and wording candidates) when the strategy counts them; ``None``: the plan assumes the
    #: most there can be.
    grounded: int | None = None

    @classmethod
    def of(cls, budget: Budget, n_train: int, n_val: int, n_predictors: int) -> Shape:
        return cls(n_train, n_val, n_predictors, budget.max_task_calls, budget.max_prompt_calls)


@dataclass(frozen=True)
class Phase:
    """One part of the plan, with the calls it is projected to spend."""

    name: str
    task_calls: int
    prompt_calls: int = 0
    note: str = ""


@dataclass
class SearchPlan:
    """A strategy's schedule: steps, per-step sizes, and projected calls per phase.

    Attributes:
        optimizer: the strategy's name.
        shape: the data sizes and caps the plan was made for.
        steps: steps (or rounds) projected; the search runs at least these while the budget lasts.
        settings: the resolved per-step sizes (candidates, search examples, finalists ...).
        phases: projected calls, in order (search steps, then the final validation).
        notes: why a setting was lowered, in words.
    """

    optimizer: str
    shape: Shape
    steps: int
    settings: dict[str, Any]
    phases: list[Phase] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def task_calls(self) -> int:
        return sum(p.task_calls for p in self.phases)

    @property
    def prompt_calls(self) -> int:
        return sum(p.prompt_calls for p in self.phases)

    @property
    def held_back(self) -> int:
        """Task calls held back for the final validation of the start and the finalists."""
        return validation_calls(self.shape, self.settings["finalists"], self.settings["validation_examples"])

    def to_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "shape": asdict(self.shape), "steps": self.steps,
                "settings": dict(self.settings), "phases": [asdict(p) for p in self.phases],
                "projected": {"task_calls": self.task_calls, "prompt_calls": self.prompt_calls},
                "notes": list(self.notes)}

    def render(self) -> str:
        """The plan as a few lines of text, for ``--dry-run`` and logs."""
        s = self.shape
        caps = f"task calls {_cap(s.task_cap)}, prompt calls {_cap(s.prompt_cap)}"
        lines = [f"{self.optimizer} plan: {self.steps} step(s) on {s.n_train} train / {s.n_val} val examples, "
                 f"{s.n_predictors} predictor(s); caps: {caps}",
                 "  settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items())]
        width = max(len(p.name) for p in self.phases) if self.phases else 0
        for p in self.phases:
            note = f"  ({p.note})" if p.note else ""
            lines.append(f"  {p.name:<{width}}  task {p.task_calls:>6}  prompt {p.prompt_calls:>4}{note}")
        lines.append(f"  {'projected':<{width}}  task {self.task_calls:>6}  prompt {self.prompt_calls:>4}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _cap(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def plan_validation(shape: Shape, finalists: int) -> tuple[int, int, list[str]]:
    """Finalists and validation examples the final choice can afford: ``(finalists, n_val_used, notes)``.

    The start is always validated; finalists are cut first (to at least one) so the validation takes
    at most ``VALIDATION_SHARE`` of the task cap, then, if even start + one finalist would take more,
    the final choice uses fewer validation examples.
    """
    notes: list[str] = []
    per = shape.n_val * shape.n_predictors
    if shape.task_cap is None:
        return finalists, shape.n_val, notes
    limit = VALIDATION_SHARE * shape.task_cap
    wanted = finalists
    while finalists > 1 and (finalists + 1) * per > limit:
        finalists -= 1
    if finalists < wanted:
        notes.append(f"finalists cut from {wanted} to {finalists} so validation fits {VALIDATION_SHARE:.0%} of the cap")
    n_val = shape.n_val
    if (finalists + 1) * per > limit:
        n_val = max(1, int(limit // ((finalists + 1) * shape.n_predictors)))
        notes.append(f"the final choice uses {n_val} of the {shape.n_val} validation examples")
    return finalists, n_val, notes


def validation_calls(shape: Shape, finalists: int, n_val: int) -> int:
    return (finalists + 1) * n_val * shape.n_predictors


def search_subset(n_train: int, size: int, seed: int) -> list[int]:
    """The shared search set: ``size`` training indices drawn once per run (seeded), in order."""
    size = max(1, min(size, n_train))
    return sorted(random.Random(f"search-set/{seed}").sample(range(n_train), size))


def shrink_to_fit(cost: Callable[[int, int], tuple[int, int]], *, steps_wanted: int, sizes: list[int],
                  counts: list[int], budget: int | None, preferred_min_size: int) -> tuple[int, int, int]:
    """Pick ``(steps, size, count)``: examples per candidate and candidates per step, steps first.

    ``cost(size, count)`` gives ``(fixed, per_step)`` task calls; ``sizes`` and ``counts`` are in
    descending order of preference. Sizes shrink down to ``preferred_min_size`` first, then counts,
    then sizes below it (never below ``MIN_SEARCH_EXAMPLES`` unless no size is that large), until ``steps_wanted`` steps fit ``budget``; if nothing reaches it, the
    settings with the most steps are returned.
    """
    if budget is None:
        return steps_wanted, sizes[0], counts[0]
    sizes = [s for s in sizes if s >= MIN_SEARCH_EXAMPLES] or sizes[:1]
    big = [s for s in sizes if s >= preferred_min_size] or sizes[:1]
    small = [s for s in sizes if s < preferred_min_size]
    order = [(c, s) for c in counts for s in big] + [(c, s) for c in counts for s in small]
    best = (0, big[-1], counts[0])  # when not even one step fits, the budget will cut the search anyway
    for count, size in order:
        fixed, per_step = cost(size, count)
        steps = max(0, (budget - fixed) // per_step) if per_step > 0 else 0
        if steps >= steps_wanted:
            return steps_wanted, size, count
        if steps > best[0]:
            best = (int(steps), size, count)
    return best
