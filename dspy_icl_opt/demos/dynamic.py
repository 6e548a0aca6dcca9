"""Demos chosen per call: the k nearest neighbours of the input, an MMR set for the input, or a fixed set
reordered per input.

A predictor whose demos start with a *selection demo* (a dict with the single key
:data:`SELECTION_KEY` holding the settings) treats the demos after it as a pool and, on every call,
shows the model only the ones chosen for that call's inputs. Everything lives in the predictor's
``demos``, so it is part of a :class:`~dspy_icl_opt.search.surgery.ProgramState` and of what
``program.save("program.json")`` writes.

Only predictors of class :class:`DynamicPredict` (or a ``Dynamic...`` subclass made by
:func:`with_dynamic_demos`) act on it. What is saved and how to load it:

* ``program.save("p.json")`` writes, per predictor, the selection settings (k, order, embedder name)
  and the whole pool as demos. Load with ``with_dynamic_demos(MyProgram()).load("p.json")``: it
  shows the same k demos per call as the program that was saved. A plain
  ``MyProgram().load("p.json")`` would show the *whole pool* as static demos (DSPy's adapters skip
  the selection demo), so it is refused instead: the saved predictor carries a decision-field
  entry (:data:`PLAIN_LOAD_REFUSAL`) that plain ``dspy.Predict.load_state`` rejects with a
  ``ValueError`` naming this remedy, before the program is touched; a dynamic predictor removes
  it when loading.
* ``program.save("dir", save_program=True)`` pickles the program with its classes;
  ``dspy.load("dir", allow_pickle=True)`` restores it as it was.
* A user embedder is stored by name only; call :func:`~dspy_icl_opt.demos.embeddings.register_embedder`
  again in the loading process (otherwise the lexical embedder is used, with a warning).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import dspy
import numpy as np

from dspy_icl_opt.demos.embeddings import LEXICAL, demo_text, pool_index

#: The key of the selection demo. A plain name (no leading underscore): dspy.Example stores it as a field.
SELECTION_KEY = "icl_dynamic_demos"
Order = Literal["as_selected", "most_similar_last", "permutation"]
ORDERS: tuple[Order, ...] = ("as_selected", "most_similar_last", "permutation")


def selection_demo(*, mode: Literal["knn", "mmr", "fixed"], k: int, order: Order, embedder: str = LEXICAL,
                   perm_seed: int | None = None, mmr_lambda: float | None = None) -> dict[str, Any]:
    """The selection demo that goes first in a predictor's demos.

    Args:
        mode: ``knn``: the ``k`` demos of the pool nearest to the input; ``mmr``: ``k`` demos of the
            pool by maximal marginal relevance to the input (:func:`mmr_order`); ``fixed``: the whole
            pool, reordered per input (then ``k`` is the pool size).
        k: demos shown per call.
        order: ``as_selected`` (nearest first for kNN, pool order for ``fixed``), ``most_similar_last``
            (the nearest demo right before the input), or ``permutation`` (kNN picks shuffled by ``perm_seed``).
        embedder: ``lexical`` or a name given to ``register_embedder``.
        perm_seed: seed of the permutation.
        mmr_lambda: for ``mmr``, the weight of relevance against redundancy (1: kNN, 0: most spread out).
    """
    settings = {"mode": mode, "k": int(k), "order": order, "embedder": embedder, "perm_seed": perm_seed}
    if mode == "mmr":
        settings["mmr_lambda"] = float(0.5 if mmr_lambda is None else mmr_lambda)
    return {SELECTION_KEY: settings}


def mmr_order(relevance: np.ndarray, similarity: np.ndarray, k: int, lam: float,
              exclude: frozenset[int] = frozenset()) -> list[int]:
    """Maximal marginal relevance (Carbonell and Goldstein, 1998): ``k`` positions picked one by one, each
    maximising ``lam * relevance - (1 - lam) * redundancy``, where redundancy is the highest ``similarity``
    to a position already picked. Ties go to the earlier position; positions in ``exclude`` are never picked."""
    chosen: list[int] = []
    left = [i for i in range(len(relevance)) if i not in exclude]
    while left and len(chosen) < k:
        redundancy = np.max(similarity[np.ix_(left, chosen)], axis=1) if chosen else np.zeros(len(left))
        gains = lam * np.asarray(relevance)[left] - (1.0 - lam) * redundancy
        best = left[int(np.argmax(gains))]
        chosen.append(best)
        left.remove(best)
    return chosen


def split_demos(demos: Sequence[Any]) -> tuple[dict[str, Any] | None, list[Any]]:
    """``(settings, pool)`` when ``demos`` starts with a selection demo, else ``(None, demos)``."""
    if demos and _get(demos[0], SELECTION_KEY) is not None:
        return dict(_get(demos[0], SELECTION_KEY)), list(demos[1:])
    return None, list(demos)


def select_indices(settings: Mapping[str, Any], pool: Sequence[Any], inputs: Mapping[str, Any],
                   input_fields: Sequence[str]) -> list[int]:
    """Positions in ``pool`` of the demos to show for ``inputs``, in the order they are shown."""
    if not pool:
        return []
    texts = [demo_text(_as_mapping(d), input_fields) for d in pool]
    index = pool_index(texts, settings.get("embedder", LEXICAL))
    query = demo_text(inputs, input_fields)
    sims = index.similarities(query)
    nearest_first = sorted(range(len(pool)), key=lambda i: (-float(sims[i]), i))
    # a demo with the query's own inputs is its answer, not an example (a valset that is the trainset, or a
    # duplicate in the data): never shown for it
    itself = frozenset(i for i, text in enumerate(texts) if text == query)
    k = max(0, int(settings.get("k", 0)))
    if settings.get("mode") == "knn":
        chosen = [i for i in nearest_first if i not in itself][:k]
    elif settings.get("mode") == "mmr":  # relevance to this call's input, redundancy among the demos' inputs
        chosen = mmr_order(sims, index.pairwise(), k, float(settings.get("mmr_lambda", 0.5)), exclude=itself)
    else:
        chosen = list(range(len(pool)))
    order = settings.get("order", "as_selected")
    if order == "most_similar_last":
        rank = {i: r for r, i in enumerate(nearest_first)}
        return sorted(chosen, key=lambda i: -rank[i])
    if order == "permutation":
        random.Random(settings.get("perm_seed") or 0).shuffle(chosen)
    return chosen


def demos_for_call(predictor: dspy.Predict, inputs: Mapping[str, Any]) -> list[Any] | None:
    """The demos ``predictor`` shows for ``inputs``, or ``None`` when its demos are static."""
    settings, pool = split_demos(predictor.demos)
    if settings is None:
        return None
    fields = list(predictor.signature.input_fields)
    return [pool[i] for i in select_indices(settings, pool, inputs, fields)]


#: Saved into a dynamic predictor's ``fields`` (DSPy's per-output decision settings) when its demos are a pool:
#: plain ``dspy.Predict.load_state`` rejects an unknown output there, so a plain program refuses the file with
#: this sentence in its error instead of loading the whole pool as static demos.
PLAIN_LOAD_REFUSAL = ("[dspy-icl-opt: this predictor picks its demos per call from a saved pool; loaded into a plain "
                      "program it would show the whole pool. Load it with "
                      "dspy_icl_opt.demos.with_dynamic_demos(program).load(path)]")


class DynamicDemosMixin:
    """Chooses the demos of each call from the pool (see the module docstring); static demos are untouched."""

    def dump_state(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().dump_state(*args, **kwargs)  # type: ignore[misc]
        if split_demos(self.demos)[0] is not None:  # type: ignore[attr-defined]
            state["fields"] = {**(state.get("fields") or {}), PLAIN_LOAD_REFUSAL: {}}
        return state

    def load_state(self, state: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        fields = state.get("fields")
        if isinstance(fields, dict) and PLAIN_LOAD_REFUSAL in fields:
            state = dict(state)
            rest = {k: v for k, v in fields.items() if k != PLAIN_LOAD_REFUSAL}
            if rest:
                state["fields"] = rest
            else:
                del state["fields"]
        return super().load_state(state, *args, **kwargs)  # type: ignore[misc]

    def forward(self, **kwargs: Any) -> Any:
        if "demos" not in kwargs:
            chosen = demos_for_call(self, kwargs)  # type: ignore[arg-type]
            if chosen is not None:
                kwargs["demos"] = chosen
        return super().forward(**kwargs)  # type: ignore[misc]

    async def aforward(self, **kwargs: Any) -> Any:
        if "demos" not in kwargs:
            chosen = demos_for_call(self, kwargs)  # type: ignore[arg-type]
            if chosen is not None:
                kwargs["demos"] = chosen
        return await super().aforward(**kwargs)  # type: ignore[misc]


class DynamicPredict(DynamicDemosMixin, dspy.Predict):
    """A ``dspy.Predict`` that picks its demos per call when they start with a selection demo.

    Example:
        >>> import dspy
        >>> p = DynamicPredict("question -> answer")
        >>> p.demos = [selection_demo(mode="knn", k=1, order="as_selected"),
        ...            {"question": "red apple", "answer": "fruit"}, {"question": "blue car", "answer": "vehicle"}]
        >>> [d["answer"] for d in demos_for_call(p, {"question": "a green apple"})]
        ['fruit']
    """


_DYNAMIC_CLASSES: dict[type, type] = {dspy.Predict: DynamicPredict}


def dynamic_class(cls: type) -> type:
    """The dynamic-demo version of a ``dspy.Predict`` class (itself if it already is one)."""
    if issubclass(cls, DynamicDemosMixin):
        return cls
    if cls not in _DYNAMIC_CLASSES:
        _DYNAMIC_CLASSES[cls] = type(f"Dynamic{cls.__name__}", (DynamicDemosMixin, cls), {"__module__": __name__})
    return _DYNAMIC_CLASSES[cls]


def enable_dynamic_demos(program: dspy.Module) -> list[tuple[Any, type]]:
    """Turn every predictor of ``program`` (in place) into its dynamic version; returns what to undo."""
    changed = []
    for _, predictor in program.named_predictors():
        cls = type(predictor)
        target = dynamic_class(cls)
        if target is not cls:
            predictor.__class__ = target
            changed.append((predictor, cls))
    return changed


def restore_classes(changed: Sequence[tuple[Any, type]]) -> None:
    """Undo :func:`enable_dynamic_demos`."""
    for predictor, cls in changed:
        predictor.__class__ = cls


def restore_unless_per_call(state: Any, changed: Sequence[tuple[Any, type]]) -> None:
    """Undo :func:`enable_dynamic_demos` unless a predictor of ``state`` (a ``ProgramState``, the one a search
    returns) picks its demos per call: a program that does not need the dynamic classes gets its own back."""
    if not any(split_demos(pstate.demos)[0] for _, pstate in state.predictors):
        restore_classes(changed)


def shown_per_call(demos: Mapping[str, Sequence[Any]], trace: Sequence[Mapping[str, Any]],
                   input_fields: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Ids of the demos each predictor named in ``demos`` (its demos, a selection demo first) was shown in one
    example's run, recomputed from the run's ``trace``; predictors whose demos are fixed are left out."""
    from dspy_icl_opt.demos.pools import demo_id  # here: pools imports the search package, this module need not

    shown: dict[str, list[str]] = {}
    for call in trace:
        name = call.get("predictor")
        if name not in demos:
            continue
        settings, pool = split_demos(demos[name])
        if settings is None:
            continue
        picked = select_indices(settings, pool, call.get("inputs", {}), input_fields[name])
        shown.setdefault(name, []).extend(demo_id(pool[i]) for i in picked)
    return shown


def with_dynamic_demos(program: dspy.Module) -> dspy.Module:
    """A copy of ``program`` whose predictors can run per-call demo selection (e.g. to ``load`` a saved one).

    Example:
        >>> import dspy
        >>> type(with_dynamic_demos(dspy.Predict("q -> a"))).__name__
        'DynamicPredict'
    """
    copy = program.deepcopy()
    enable_dynamic_demos(copy)
    return copy


def _get(demo: Any, key: str) -> Any:
    try:
        return demo.get(key) if hasattr(demo, "get") else None
    except Exception:  # an Example-like object without a working get
        return None


def _as_mapping(demo: Any) -> Mapping[str, Any]:
    return demo.toDict() if hasattr(demo, "toDict") else dict(demo)
