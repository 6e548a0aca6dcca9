"""Demo pools: where candidate demonstrations come from, per predictor.

* ``labeled``: training examples that carry at least one of the predictor's input fields and one of
  its output fields, restricted to its fields (DSPy's LabeledFewShot idea; like DSPy's adapters,
  a demo may miss fields, e.g. an intermediate input it never had).
* ``bootstrapped``: a teacher's runs on training examples that pass the metric; each predictor
  call in the run's trace (its inputs and outputs, intermediate fields included) becomes a demo for
  that predictor (DSPy's BootstrapFewShot). The teacher is ``"labeled"`` (the program as given, each
  predictor without demos of its own shown up to ``max_demos`` labeled ones, never the example being
  run: BootstrapFewShot's default teacher), ``"student"`` (the program as given) or the state of a
  teacher program with the same predictors. The cost is capped: no new example is started once
  ``max_calls`` task-model calls were spent on it.

A pool is a list of plain dicts; a demo's id is a digest of its content, so the same demo has the
same id in every study and every process.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import dspy

from dspy_icl_opt._log import logger
from dspy_icl_opt.search import ProgramState, SearchContext
from dspy_icl_opt.search.base import stable_int
from dspy_icl_opt.search.surgery import demo_to_dict, named_predictors, read_state

PoolName = Literal["labeled", "bootstrapped"]
POOLS: tuple[PoolName, ...] = ("labeled", "bootstrapped")
TeacherName = Literal["labeled", "student"]
TEACHERS: tuple[TeacherName, ...] = ("labeled", "student")
#: Pools per predictor, by pool name: ``{predictor: {pool: [demo, ...]}}``.
Pools = dict[str, dict[str, list[dict[str, Any]]]]


def demo_id(demo: Mapping[str, Any]) -> str:
    """A short stable digest of a demo's content."""
    blob = json.dumps(demo_to_dict(demo), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def as_demo(predictor: dspy.Predict, example: Any) -> dict[str, Any] | None:
    """``example`` restricted to the predictor's fields, or None when it lacks all its inputs or all its outputs."""
    inputs, outputs = list(predictor.signature.input_fields), list(predictor.signature.output_fields)
    data = demo_to_dict(example)
    if not any(f in data for f in inputs) or not any(f in data for f in outputs):
        return None
    return {f: data[f] for f in [*inputs, *outputs] if f in data}


def labeled_pool(predictor: dspy.Predict, trainset: Sequence[dspy.Example]) -> list[dict[str, Any]]:
    """Training examples usable as demos of ``predictor``, restricted to its fields, without duplicates."""
    pool: dict[str, dict[str, Any]] = {}
    for example in trainset:
        demo = as_demo(predictor, example)
        if demo is not None:
            pool.setdefault(demo_id(demo), demo)
    return list(pool.values())


def labeled_teacher(ctx: SearchContext, max_demos: int, seed: int) -> Callable[[dspy.Example], ProgramState]:
    """BootstrapFewShot's default teacher: the program as given, each predictor that has no demos of
    its own shown ``max_demos`` labeled demos (a seeded sample of its pool), never the example it runs on."""
    order: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # per predictor: (demo id, demo), shuffled
    for name, predictor in ctx.predictors:
        if ctx.initial_state[name].demos:
            continue  # an already taught predictor keeps its demos (DSPy leaves a compiled teacher alone)
        pool = [(demo_id(d), d) for d in labeled_pool(predictor, ctx.trainset)]
        random.Random(stable_int(seed, "teacher", name)).shuffle(pool)
        order[name] = pool
    predictors = dict(ctx.predictors)

    def state_for(example: dspy.Example) -> ProgramState:
        state = ctx.initial_state
        for name, pool in order.items():
            own = as_demo(predictors[name], example)
            skip = demo_id(own) if own is not None else None
            shown = [d for i, d in pool if i != skip][:max_demos]
            state = state.replace(name, state[name].with_demos(shown))
        return state

    return state_for


def teacher_state(student: dspy.Module, teacher: Any) -> ProgramState:
    """The instructions and demos of a teacher program, checked against the student's predictors."""
    if not isinstance(teacher, dspy.Module):
        raise TypeError(f"`teacher` must be a dspy.Module with the student's predictors, but got "
                        f"{type(teacher).__name__}. Pass e.g. an optimized copy of the student.")
    wanted = [name for name, _ in named_predictors(student)]
    found = [name for name, _ in named_predictors(teacher)]
    if sorted(wanted) != sorted(found):
        raise ValueError(f"`teacher` must have the student's predictors {wanted}, but it has {found}. "
                         "Pass a copy of the student (e.g. another optimizer's output for it).")
    if any(getattr(p, "lm", None) is not None for _, p in named_predictors(teacher)):
        logger.warning("The teacher's predictors carry LMs of their own; DemoSelector runs the teacher on the task "
                       "model (its instructions and demos are what it keeps).")
    return read_state(teacher)


def bootstrap_pools(ctx: SearchContext, *, max_calls: int, threshold: float, max_per_predictor: int,
                    teacher: Callable[[dspy.Example], ProgramState] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Demos from the teacher's passing runs on a shuffled trainset (``ctx.rng``), per predictor.

    ``teacher`` gives the program state that runs each example (default: the program as given).
    Stops when ``max_calls`` task-model calls were spent here (an example already started is
    finished, so the cap can be passed by the calls of one batch) or every predictor has
    ``max_per_predictor`` demos.
    """
    teacher = teacher or (lambda example: ctx.initial_state)
    order = list(ctx.trainset)
    ctx.rng.shuffle(order)
    start = _task_calls(ctx)
    found = collect_traces(ctx, teacher, order, wanted=max_per_predictor, threshold=threshold, max_calls=max_calls)
    logger.info("Bootstrapped {} with {} task-model calls", {n: len(d) for n, d in found.items()},
                _task_calls(ctx) - start)
    return found


def collect_traces(ctx: SearchContext, teacher: Callable[[dspy.Example], ProgramState],
                   order: Sequence[dspy.Example], *, wanted: int, threshold: float,
                   max_calls: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """The teacher's traces on ``order`` that score at least ``threshold``, up to ``wanted`` per predictor.

    Stops once every predictor has ``wanted`` traces, every example ran, or (with ``max_calls``)
    that many task-model calls were spent here. Each round runs as many examples as traces are
    still missing (a passing run gives each predictor at most one new one), and no more than the
    calls left pay for at the calls per example seen so far (one per predictor before); they run in
    parallel up to ``num_threads``, so what runs does not depend on the thread count.
    """
    names = [name for name, _ in ctx.predictors]
    found: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
    start, i = _task_calls(ctx), 0
    while i < len(order):
        spent = _task_calls(ctx) - start
        if (max_calls is not None and spent >= max_calls) or all(len(found[n]) >= wanted for n in names):
            break
        missing = max(wanted - len(found[n]) for n in names)
        per_example = spent / i if i else len(names)
        affordable = missing if max_calls is None else int((max_calls - spent) // max(1.0, per_example))
        batch = max(1, min(missing, affordable))
        chunk, i = order[i:i + batch], i + batch
        for outcome in run_teacher(ctx, teacher, chunk):
            if outcome.failed or outcome.score < threshold:
                continue
            for call in outcome.trace:
                demo = {**call.get("inputs", {}), **call.get("outputs", {})}
                if call.get("predictor") in found and len(found[call["predictor"]]) < wanted:
                    found[call["predictor"]].setdefault(demo_id(demo), demo)
    return {name: list(demos.values()) for name, demos in found.items()}


def run_teacher(ctx: SearchContext, teacher: Callable[[dspy.Example], ProgramState],
                 chunk: Sequence[dspy.Example]) -> list[Any]:
    """The teacher's outcomes on ``chunk``, in order (examples that share a teacher state run together)."""
    groups: dict[str, tuple[ProgramState, list[int]]] = {}
    for i, example in enumerate(chunk):
        state = teacher(example)
        groups.setdefault(state.key(), (state, []))[1].append(i)
    outcomes: list[Any] = [None] * len(chunk)
    for state, positions in groups.values():
        for i, outcome in zip(positions, ctx.scorer.evaluate(state, [chunk[i] for i in positions], desc="bootstrap")):
            outcomes[i] = outcome
    return outcomes


def build_pools(ctx: SearchContext, pools: Sequence[PoolName], *, max_calls: int, threshold: float,
                max_per_predictor: int, teacher: Callable[[dspy.Example], ProgramState] | None = None) -> Pools:
    """Every requested pool for every predictor (empty pools included); ``teacher`` as in :func:`bootstrap_pools`."""
    result: Pools = {name: {} for name, _ in ctx.predictors}
    if "labeled" in pools:
        for name, predictor in ctx.predictors:
            result[name]["labeled"] = labeled_pool(predictor, ctx.trainset)
    if "bootstrapped" in pools:
        boot = bootstrap_pools(ctx, max_calls=max_calls, threshold=threshold, max_per_predictor=max_per_predictor,
                               teacher=teacher)
        for name in result:
            result[name]["bootstrapped"] = boot.get(name, [])
    return result


def usable(pools: Pools) -> dict[str, list[str]]:
    """The non-empty pools of each predictor, in the order they were asked for."""
    return {name: [p for p, demos in by_pool.items() if demos] for name, by_pool in pools.items()}


def largest_k(pools: Pools, max_demos: int) -> dict[str, int]:
    """``k``'s upper bound per predictor: ``max_demos``, clamped (with a warning) to the largest pool."""
    bounds = {}
    for name, by_pool in pools.items():
        largest = max((len(d) for d in by_pool.values()), default=0)
        if largest < max_demos:
            logger.warning("Predictor {!r}: max_demos={} but its largest demo pool has {} demo(s); k is "
                           "searched in [0, {}].", name, max_demos, largest, largest)
        bounds[name] = min(max_demos, largest)
    return bounds


def _task_calls(ctx: SearchContext) -> int:
    return ctx.meter.snapshot()["task"].calls
