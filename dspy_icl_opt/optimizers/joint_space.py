"""The search space of :class:`~dspy_icl_opt.optimizers.joint.InstructionDemoSearch`: candidate lists and trials.

Per predictor, two lists are built before the first trial: instruction candidates and demo-set
candidates (each an ordered list of demos). A trial picks, per predictor, an index into each list
and ``k``, how many of the chosen set's demos are shown (the first ``k``). Everything Optuna sees is
a categorical index, so the trial's program follows from its parameters alone.

Demo sets (their names are what the report shows):

* ``labeled``: a seeded sample of ``max_labeled_demos`` training examples (LabeledFewShot);
* ``bootstrapped#i``: ``max_bootstrapped_demos`` of the task model's own passing runs, then
  ``max_labeled_demos`` labeled ones (MIPROv2's demo sets, seeded sample ``i``);
* ``mmr``: representative yet diverse demos of both pools (maximal marginal relevance,
  :func:`dspy_icl_opt.demos.strategies.mmr`);
* ``knn``: a selection rule rather than a fixed set: on every call the ``k`` demos of both pools nearest to
  that call's inputs (:mod:`dspy_icl_opt.demos.dynamic`; lexical similarity, no model), so each input is shown
  the examples most like it;
* ``influence``: added after the exploration phase, the demos with the highest estimated
  influence on the score in the trials so far (:func:`dspy_icl_opt.demos.influence.fit_influence`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy
from optuna.distributions import CategoricalDistribution

from dspy_icl_opt.demos.dynamic import selection_demo
from dspy_icl_opt.demos.embeddings import demo_text
from dspy_icl_opt.demos.pools import collect_traces, demo_id, labeled_pool, labeled_teacher
from dspy_icl_opt.demos.strategies import mmr
from dspy_icl_opt.search.base import SearchContext, stable_int
from dspy_icl_opt.search.surgery import ProgramState

#: MMR's trade-off between typical (1.0) and spread-out (0.0) demos: the middle, as a neutral default.
MMR_LAMBDA = 0.5
#: Bootstrapping stops once every predictor has this many passing traces per ``max_bootstrapped_demos``.
BOOTSTRAP_POOL_FACTOR = 3
#: Characters of an instruction stored in a trial's user attributes (the dashboard shows them).
SHOWN_INSTRUCTION_CHARS = 120


@dataclass(frozen=True)
class DemoSet:
    """One demo-set candidate of one predictor."""

    name: str
    demos: tuple[dict[str, Any], ...]
    #: ``"knn"``: ``demos`` is a pool the predictor picks ``k`` from per call; ``""``: a fixed set, first ``k`` shown.
    per_call: str = ""

    def ids(self, k: int) -> list[str]:
        """The ids of the demos shown with ``k`` (a per-call set: its whole pool, what a call may be shown)."""
        return [demo_id(d) for d in (self.demos if self.per_call else self.demos[:k])]

    def shown(self, k: int) -> list[dict[str, Any]]:
        """What a predictor carries for ``k``: the first ``k`` demos, or a selection demo and the pool."""
        if k <= 0:
            return []
        if self.per_call:
            return [selection_demo(mode=self.per_call, k=min(k, len(self.demos)), order="as_selected"),
                    *self.demos]  # type: ignore[arg-type]
        return list(self.demos[:k])


@dataclass
class PredictorSpace:
    """The candidate lists of one predictor: ``(origin, text)`` instructions and demo sets."""

    instructions: list[tuple[str, str]]
    demo_sets: list[DemoSet] = field(default_factory=list)


@dataclass(frozen=True)
class Choice:
    """What a trial chose for one predictor: indices into its lists, and ``k``."""

    instruction: int
    demo_set: int
    k: int


def k_choices(max_demos: int) -> tuple[int, ...]:
    """0 (zero-shot), the powers of two below ``max_demos``, and ``max_demos``: few values, each a real change."""
    values = {0, max_demos}
    power = 1
    while power < max_demos:
        values.add(power)
        power *= 2
    return tuple(sorted(values))


def distributions(space: Mapping[str, PredictorSpace], ks: Sequence[int]) -> dict[str, CategoricalDistribution]:
    """Optuna's view of the space: per predictor an instruction index, and with demos a set index and ``k``."""
    dists: dict[str, CategoricalDistribution] = {}
    for name, pspace in space.items():
        dists[f"{name}/instruction"] = CategoricalDistribution(list(range(len(pspace.instructions))))
        if pspace.demo_sets and len(ks) > 1:
            dists[f"{name}/demos"] = CategoricalDistribution(list(range(len(pspace.demo_sets))))
            dists[f"{name}/k"] = CategoricalDistribution(list(ks))
    return dists


def decode(params: Mapping[str, Any], space: Mapping[str, PredictorSpace]) -> dict[str, Choice]:
    """A trial's parameters as one :class:`Choice` per predictor (no demos when none are searched)."""
    return {name: Choice(int(params[f"{name}/instruction"]), int(params.get(f"{name}/demos", 0)),
                         int(params.get(f"{name}/k", 0)))
            for name in space}


def build_state(initial: ProgramState, space: Mapping[str, PredictorSpace], choices: Mapping[str, Choice],
                search_demos: bool) -> ProgramState:
    """The program state of a trial: each predictor's chosen instruction and the first ``k`` demos of its set.

    Without a demo search, a predictor keeps the demos it was given.
    """
    state = initial
    for name, choice in choices.items():
        pstate = state[name].with_instruction(space[name].instructions[choice.instruction][1])
        if search_demos:
            sets = space[name].demo_sets
            pstate = pstate.with_demos(sets[choice.demo_set].shown(choice.k) if sets else [])
        state = state.replace(name, pstate)
    return state


def describe(space: Mapping[str, PredictorSpace], choices: Mapping[str, Choice],
             search_demos: bool) -> dict[str, dict[str, Any]]:
    """A trial's choice per predictor, for the report: instruction index and origin, demo set name, k shown."""
    out: dict[str, dict[str, Any]] = {}
    for name, choice in choices.items():
        origin = space[name].instructions[choice.instruction][0]
        row: dict[str, Any] = {"instruction": choice.instruction, "instruction_origin": origin}
        if search_demos and space[name].demo_sets:
            chosen = space[name].demo_sets[choice.demo_set]
            row.update({"demo_set": chosen.name, "k": min(choice.k, len(chosen.demos))})
        out[name] = row
    return out


def shown_ids(space: Mapping[str, PredictorSpace], choices: Mapping[str, Choice]) -> dict[str, list[str]]:
    """Ids of the demos each predictor shows on every example of a trial (the influence fit's features); a
    per-call set's predictor is left out (:func:`dspy_icl_opt.demos.dynamic.shown_per_call` gives its demos per
    example)."""
    return {name: space[name].demo_sets[c.demo_set].ids(c.k) for name, c in choices.items()
            if space[name].demo_sets and not space[name].demo_sets[c.demo_set].per_call}


# ------------------------------------------------------------------------------ demo sets
def bootstrap(ctx: SearchContext, sources: Sequence[dspy.Example], *, max_demos: int, teacher_demos: int,
              threshold: float, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Passing traces of the program (taught by labeled demos, BootstrapFewShot's teacher) on ``sources``.

    The examples run in a seeded order that does not depend on the budget, so a run cut short
    bootstraps a prefix of what the full run does. It stops once every predictor has
    ``BOOTSTRAP_POOL_FACTOR * max_demos`` traces or every source example ran.
    """
    if max_demos <= 0 or not sources:
        return {name: [] for name, _ in ctx.predictors}
    teacher = labeled_teacher(ctx, teacher_demos, seed)
    order = list(sources)
    random.Random(stable_int(seed, "bootstrap-order")).shuffle(order)
    return collect_traces(ctx, teacher, order, wanted=BOOTSTRAP_POOL_FACTOR * max_demos, threshold=threshold)


def demo_sets(predictor: dspy.Predict, name: str, sources: Sequence[dspy.Example], boot: list[dict[str, Any]], *,
              max_labeled: int, max_bootstrapped: int, count: int, seed: int, per_call: bool = True) -> list[DemoSet]:
    """Up to ``count`` distinct demo sets of one predictor: labeled, mmr, knn (with ``per_call``, when the pools
    hold more demos than a set shows), then bootstrapped samples."""
    labeled = labeled_pool(predictor, sources)
    sets: list[DemoSet] = []
    if labeled and max_labeled:
        rng = random.Random(stable_int(seed, "labeled-set", name))
        sets.append(DemoSet("labeled", tuple(rng.sample(labeled, min(max_labeled, len(labeled))))))
    inputs = list(predictor.signature.input_fields)
    # one training example is shown once: as the model's trace when it was bootstrapped, else as its label (a
    # trace with reasoning, or a passing answer written differently, is not the label's demo, yet the same problem)
    both = _unique([*boot, *_not_among(labeled, boot, inputs)])
    if both:
        size = min(len(both), max_labeled + max_bootstrapped)
        sets.append(DemoSet("mmr", tuple(both[i] for i in mmr(both, size, MMR_LAMBDA))))
    if per_call and len(both) > max_labeled + max_bootstrapped:
        sets.append(DemoSet("knn", tuple(both), per_call="knn"))  # a rule, worth a set only when it can choose
    draw = 0
    while boot and len(sets) < count and draw < 3 * count:  # a few more draws than sets: duplicates are dropped
        draw += 1
        rng = random.Random(stable_int(seed, "bootstrapped-set", name, draw))
        chosen = rng.sample(boot, min(max_bootstrapped, len(boot)))
        others = _not_among(labeled, chosen, inputs)
        filler = rng.sample(others, min(max_labeled, len(others))) if others else []
        candidate = DemoSet(f"bootstrapped#{draw}", tuple(_unique([*chosen, *filler])))
        if all(s.ids(len(s.demos)) != candidate.ids(len(candidate.demos)) for s in sets):
            sets.append(candidate)
    return sets[:count]


def influence_set(ranking: Sequence[Mapping[str, Any]], demos: Mapping[str, dict[str, Any]],
                  size: int) -> DemoSet | None:
    """The ``size`` demos with the highest positive influence, most influential first; None if none helped."""
    chosen = [demos[e["id"]] for e in ranking if e.get("weight", 0.0) > 0 and e["id"] in demos][:size]
    return DemoSet("influence", tuple(chosen)) if chosen else None


def _unique(demos: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for demo in demos:
        seen.setdefault(demo_id(demo), demo)
    return list(seen.values())


def _not_among(demos: Sequence[dict[str, Any]], shown: Sequence[dict[str, Any]],
               inputs: Sequence[str]) -> list[dict[str, Any]]:
    """The ``demos`` whose inputs no demo of ``shown`` has (compared as the kNN rule spots a query's own example)."""
    taken = {demo_text(d, inputs) for d in shown}
    return [d for d in demos if demo_text(d, inputs) not in taken]
