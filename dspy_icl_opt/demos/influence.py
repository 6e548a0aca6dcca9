"""The influence of each candidate demo, estimated from the trials of a study (no extra LM call).

The datamodels idea (Ilyas et al., 2022) applied to a demo search: every evaluated (trial, example)
pair is one row; its features say which demos the model saw for that example (per predictor; a kNN
predictor shows different demos per example), its target is the example's score. Subtracting each
example's mean row (an intercept per example) removes how hard the example is, and a ridge
regression on what is left gives each demo's effect on the score. Pruned trials count with the
examples they got through; failed trials are skipped.

Each trial stores what this needs in its user attributes (``icl_scores``, ``icl_demos``,
``icl_dynamic``), so the fit runs on any study, including one shared by several processes. A search
that keeps its own list of (demo set, score) pairs instead (e.g. a joint instruction x demo search
within one run) turns each pair into the same record with :func:`trial_record` and fits them with
:func:`fit_demo_sets`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: Ridge penalty: with 0/1 features and scores in [0, 1], 1.0 shrinks demos seen in few rows towards 0.
RIDGE_ALPHA = 1.0
#: Below this many rows there is nothing to fit.
MIN_ROWS = 2

Feature = tuple[str, str]  # (predictor, demo id)
#: The example key of a score given for a whole trial (no per-example scores): all such rows share one intercept.
WHOLE_TRIAL = "*"


def trial_record(demos: Mapping[str, Sequence[str]], scores: Mapping[str, float] | float,
                 shown: Mapping[str, Mapping[str, Sequence[str]]] | None = None) -> dict[str, Any]:
    """One trial as :func:`fit_influence` reads it.

    Args:
        demos: the demo ids each predictor showed on every call (``{predictor: [id, ...]}``; ids from
            :func:`~dspy_icl_opt.demos.pools.demo_id`).
        scores: the score per example key (better: it removes how hard each example is), or one mean score.
        shown: for per-call predictors, the ids shown per example key (``{example: {predictor: [id, ...]}}``).

    Example:
        >>> trial_record({"p": ["a"]}, 0.5)
        {'icl_scores': {'*': 0.5}, 'icl_demos': {'p': ['a']}, 'icl_dynamic': {}}
    """
    per_example = {WHOLE_TRIAL: float(scores)} if isinstance(scores, (int, float)) else \
        {str(k): float(v) for k, v in scores.items()}
    return {"icl_scores": per_example, "icl_demos": {p: list(ids) for p, ids in demos.items()},
            "icl_dynamic": {str(e): {p: list(ids) for p, ids in by_p.items()} for e, by_p in (shown or {}).items()}}


def fit_demo_sets(trials: Iterable[tuple[Mapping[str, Sequence[str]], Mapping[str, float] | float]], *,
                  alpha: float = RIDGE_ALPHA, demos: Mapping[Feature, Mapping[str, Any]] | None = None,
                  ) -> dict[str, list[dict[str, Any]]]:
    """:func:`fit_influence` on ``(demo set, score)`` pairs (see :func:`trial_record` for their form).

    Example:
        >>> ranking = fit_demo_sets([({"p": ["a", "b"]}, 1.0), ({"p": ["b"]}, 0.0), ({"p": ["a"]}, 1.0)])
        >>> [entry["id"] for entry in ranking["p"]]
        ['a', 'b']
    """
    return fit_influence([trial_record(ids, score) for ids, score in trials], alpha=alpha, demos=demos)


def trial_rows(user_attrs: Mapping[str, Any]) -> list[tuple[str, set[Feature], float]]:
    """``(example key, demos seen, score)`` for each example a trial scored."""
    scores = user_attrs.get("icl_scores") or {}
    static = {(p, i) for p, ids in (user_attrs.get("icl_demos") or {}).items() for i in ids}
    dynamic = user_attrs.get("icl_dynamic") or {}
    rows = []
    for example, score in scores.items():
        seen = set(static)
        seen.update((p, i) for p, ids in (dynamic.get(example) or {}).items() for i in ids)
        rows.append((example, seen, float(score)))
    return rows


def fit_influence(trials: Iterable[Mapping[str, Any]], *, alpha: float = RIDGE_ALPHA,
                  demos: Mapping[Feature, Mapping[str, Any]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Each demo's estimated effect on the score, per predictor, most helpful first.

    Args:
        trials: the user attributes of finished trials.
        alpha: ridge penalty.
        demos: the demo content by ``(predictor, id)``, copied into the ranking when given.

    Returns:
        ``{predictor: [{"id", "weight", "n_in", "demo"?}, ...]}``; ``{}`` when there are too few rows.

    Example:
        >>> trials = [{"icl_scores": {"e1": 1.0, "e2": 1.0}, "icl_demos": {"p": ["a", "b"]}},
        ...           {"icl_scores": {"e1": 0.0, "e2": 0.0}, "icl_demos": {"p": ["b"]}},
        ...           {"icl_scores": {"e1": 1.0, "e2": 0.0}, "icl_demos": {"p": ["a"]}}]
        >>> [entry["id"] for entry in fit_influence(trials)["p"]]
        ['a', 'b']
    """
    rows = [row for attrs in trials for row in trial_rows(attrs)]
    features = sorted({f for _, seen, _ in rows for f in seen})
    if len(rows) < MIN_ROWS or not features:
        return {}
    column = {f: j for j, f in enumerate(features)}
    x = np.zeros((len(rows), len(features)))
    y = np.array([score for _, _, score in rows])
    for r, (_, seen, _) in enumerate(rows):
        for f in seen:
            x[r, column[f]] = 1.0
    x, y = _demean_by_example(x, y, [example for example, _, _ in rows])
    weights = np.linalg.solve(x.T @ x + alpha * np.eye(len(features)), x.T @ y)
    counts = [sum(f in seen for _, seen, _ in rows) for f in features]
    ranking: dict[str, list[dict[str, Any]]] = {}
    for (predictor, ident), weight, n_in in zip(features, weights, counts):
        entry: dict[str, Any] = {"id": ident, "weight": round(float(weight), 6), "n_in": n_in}
        if demos is not None and (predictor, ident) in demos:
            entry["demo"] = dict(demos[(predictor, ident)])
        ranking.setdefault(predictor, []).append(entry)
    for entries in ranking.values():
        entries.sort(key=lambda e: (-e["weight"], e["id"]))
    return ranking


def _demean_by_example(x: np.ndarray, y: np.ndarray, examples: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Subtract each example's mean row and mean score (an intercept per example)."""
    groups: dict[str, list[int]] = {}
    for r, example in enumerate(examples):
        groups.setdefault(example, []).append(r)
    x, y = x.copy(), y.copy()
    for members in groups.values():
        x[members] -= x[members].mean(axis=0)
        y[members] -= y[members].mean()
    return x, y
