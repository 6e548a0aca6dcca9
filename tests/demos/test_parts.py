"""The pieces of the demo search, without a study: similarity, per-call selection, MMR, influence, the space."""

from __future__ import annotations

import dspy
import numpy as np
import optuna
import pytest

from dspy_icl_opt.demos import DynamicPredict, fit_influence, register_embedder, selection_demo, with_dynamic_demos
from dspy_icl_opt.demos.dynamic import demos_for_call, enable_dynamic_demos, restore_classes, select_indices
from dspy_icl_opt.demos.embeddings import PoolIndex
from dspy_icl_opt.demos.pools import demo_id, labeled_pool
from dspy_icl_opt.demos.strategies import (
    Choice,
    ParamsSource,
    Space,
    TrialSource,
    by_influence,
    choice_demos,
    mmr,
    suggest,
)
from dspy_icl_opt.demos.study import baseline_params, k_curve, with_available_driver

POOL = [{"question": q, "answer": a} for q, a in
        [("red apple pie", "fruit"), ("blue sports car", "vehicle"), ("green apple tart", "fruit"),
         ("fast red car", "vehicle"), ("banana bread", "fruit")]]


def test_lexical_similarity_prefers_shared_words_and_word_pieces():
    index = PoolIndex(["question: red apple pie", "question: blue sports car", "question: counting sheep"])
    sims = index.similarities("question: an apple")
    assert int(np.argmax(sims)) == 0
    assert index.similarities("question: counted")[2] > index.similarities("question: counted")[1]
    assert np.allclose(np.diag(index.pairwise()), 1.0)


def test_knn_orders_and_permutation():
    fields = ["question"]
    query = {"question": "a red apple"}
    nearest = select_indices(selection_demo(mode="knn", k=3, order="as_selected")["icl_dynamic_demos"],
                             POOL, query, fields)
    assert nearest[0] == 0 and len(nearest) == 3
    last = select_indices(selection_demo(mode="knn", k=3, order="most_similar_last")["icl_dynamic_demos"],
                          POOL, query, fields)
    assert last == nearest[::-1]
    shuffled = select_indices(selection_demo(mode="knn", k=3, order="permutation", perm_seed=4)["icl_dynamic_demos"],
                              POOL, query, fields)
    assert sorted(shuffled) == sorted(nearest)
    fixed = select_indices(selection_demo(mode="fixed", k=5, order="most_similar_last")["icl_dynamic_demos"],
                           POOL, query, fields)
    assert sorted(fixed) == list(range(5)) and fixed[-1] == 0


@pytest.mark.parametrize("mode", ["knn", "mmr"])
def test_a_demo_with_the_querys_own_inputs_is_never_shown_for_it(mode):
    # With no valset and few training examples the valset is the trainset: kNN then showed each query its own
    # labelled example (a review: k=1 kNN chosen at val 1.0, 0.0 on fresh examples).
    fields = ["question"]
    query = {"question": POOL[2]["question"]}
    chosen = select_indices(selection_demo(mode=mode, k=3, order="as_selected")["icl_dynamic_demos"], POOL, query,
                            fields)
    assert 2 not in chosen and len(chosen) == 3


def test_dynamic_predict_shows_only_the_chosen_demos_and_plain_demos_untouched():
    predictor = DynamicPredict("question -> answer")
    predictor.demos = [dspy.Example(**selection_demo(mode="knn", k=1, order="as_selected")),
                       *(dspy.Example(**d) for d in POOL)]
    assert [d["question"] for d in demos_for_call(predictor, {"question": "blue car"})] == ["blue sports car"]
    predictor.demos = [dspy.Example(**d) for d in POOL]
    assert demos_for_call(predictor, {"question": "blue car"}) is None


def test_class_switch_is_reversible_and_copies_keep_it():
    class Twice(dspy.Module):
        def __init__(self):
            super().__init__()
            self.first = dspy.Predict("question -> answer")
            self.second = dspy.ChainOfThought("question -> answer")

    program = Twice()
    changed = enable_dynamic_demos(program)
    assert len(changed) == 2 and all(isinstance(p, DynamicPredict) for _, p in program.named_predictors())
    assert isinstance(program.deepcopy().second.predict, DynamicPredict)
    restore_classes(changed)
    assert all(type(p) is dspy.Predict for _, p in program.named_predictors())
    assert type(with_dynamic_demos(Twice()).first) is DynamicPredict


def test_user_embedder_is_used_by_name():
    def by_length(texts):
        return [[float(len(t)), 1.0] for t in texts]

    name = register_embedder(by_length, name="by-length-test")
    settings = selection_demo(mode="knn", k=1, order="as_selected", embedder=name)["icl_dynamic_demos"]
    pool = [{"question": "aaaaaaaaaaaaaaaaaaaaaaaa"}, {"question": "b"}]
    assert select_indices(settings, pool, {"question": "zz"}, ["question"]) == [1]


def test_mmr_spreads_the_picks_and_lambda_one_takes_the_typical():
    pool = [{"question": "red apple"}, {"question": "red apple pie"}, {"question": "red apple tart"},
            {"question": "quantum physics lecture"}]
    diverse = mmr(pool, 2, 0.0)
    assert 3 in diverse  # the odd one out is picked when only spread counts
    typical = mmr(pool, 2, 1.0)
    assert 3 not in typical


def test_influence_recovers_the_helpful_demo_and_per_call_demos_count():
    rows = []
    for i in range(12):
        helpful = i % 2 == 0
        ids = ["good", f"x{i % 3}"] if helpful else [f"x{i % 3}"]
        rows.append({"icl_scores": {"e1": float(helpful), "e2": float(helpful)}, "icl_demos": {"p": ids}})
    rows.append({"icl_scores": {"e1": 1.0}, "icl_demos": {}, "icl_dynamic": {"e1": {"p": ["good"]}}})
    ranking = fit_influence(rows, demos={("p", "good"): {"question": "q"}})["p"]
    assert ranking[0]["id"] == "good" and ranking[0]["weight"] > 0.5 and ranking[0]["demo"] == {"question": "q"}
    assert ranking[0]["n_in"] == 2 * 6 + 1
    assert all(abs(e["weight"]) < 0.2 for e in ranking[1:])
    assert fit_influence([]) == {}


def test_influence_strategy_ranks_a_pool_by_an_earlier_ranking():
    ranking = [{"id": demo_id(POOL[3]), "weight": 0.9}, {"id": demo_id(POOL[1]), "weight": 0.5},
               {"id": demo_id(POOL[0]), "weight": -0.4}]
    assert by_influence(POOL, ranking)[:2] == [3, 1] and by_influence(POOL, ranking)[-1] == 0


def space(**overrides):
    settings = {"pools": {"self": {"labeled": list(POOL), "bootstrapped": []}}, "k_max": {"self": 3},
                "strategies": ("random", "knn", "mmr", "mmr_static", "slots")}
    return Space(**{**settings, **overrides})


def test_suggested_choices_rebuild_from_params_and_give_valid_demos():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    the_space = space()
    for _ in range(40):
        trial = study.ask()
        choice = suggest(TrialSource(trial), "self", the_space)
        assert suggest(ParamsSource(trial.params), "self", the_space) == choice
        demos = choice_demos(choice, POOL)
        shown = [d for d in demos if "icl_dynamic_demos" not in d]
        assert choice.k <= 3 and (choice.strategy in ("knn", "mmr") or len(shown) == choice.shown <= 3)
        assert len({d["question"] for d in shown}) == len(shown)  # a demo set never repeats a demo
        assert "self/pool" not in trial.params or trial.params["self/pool"] == "labeled"  # empty pools not offered
        study.tell(trial, 0.0)


def test_baselines_are_zero_shot_then_the_largest_labeled_and_bootstrapped_sets():
    zero, labeled = baseline_params(space())  # the bootstrapped pool is empty: no third baseline
    assert zero == {"self/k": 0}
    assert labeled == {"self/k": 3, "self/pool": "labeled", "self/strategy": "random", "self/set": 0,
                       "self/order": "as_selected"}
    _, slots = baseline_params(space(strategies=("slots",), orders=("permutation",)))
    assert slots["self/strategy"] == "slots" and slots["self/set"] == 0 and slots["self/perm"] == 0
    only_boot = baseline_params(space(pools={"self": {"labeled": [], "bootstrapped": POOL[:2]}}))
    assert only_boot == [{"self/k": 0}, {"self/k": 2, "self/pool": "bootstrapped", "self/strategy": "random",
                                         "self/set": 0, "self/order": "as_selected"}]
    both = baseline_params(space(pools={"self": {"labeled": POOL, "bootstrapped": POOL[:1]}}))
    assert [b.get("self/pool") for b in both] == [None, "labeled", "bootstrapped"]
    assert both[2]["self/k"] == 1 and "self/order" not in both[2]  # one demo: no order to choose
    assert baseline_params(space(pools={"self": {"labeled": [], "bootstrapped": []}})) == [{"self/k": 0}]


def test_k_curve_best_and_mean_per_k():
    def trial(k, value, state=optuna.trial.TrialState.COMPLETE):
        return optuna.trial.create_trial(state=state, value=value if state.is_finished() and value is not None
                                         else None, user_attrs={"icl_k": {"self": k}},
                                         params={}, distributions={})

    trials = [trial(0, 0.1), trial(2, 0.5), trial(2, 0.7), trial(2, None, optuna.trial.TrialState.PRUNED)]
    curve = k_curve(trials)["self"]
    assert curve == [{"k": 0, "n": 1, "n_pruned": 0, "n_cut": 0, "best": 0.1, "mean": 0.1, "val": None},
                     {"k": 2, "n": 2, "n_pruned": 1, "n_cut": 0, "best": 0.7, "mean": 0.6, "val": None}]


def test_labeled_pool_keeps_the_predictor_fields_only():
    train = [dspy.Example(question="q1", answer="a1", source="web").with_inputs("question"),
             dspy.Example(question="q1", answer="a1", source="book").with_inputs("question"),
             dspy.Example(text="t", label="l").with_inputs("text")]
    assert labeled_pool(dspy.Predict("question -> answer"), train) == [{"question": "q1", "answer": "a1"}]


def test_postgres_url_gets_an_installed_driver():
    url = with_available_driver("postgresql://u:p@h/db")
    assert url.startswith("postgresql") and url.endswith("://u:p@h/db")
    assert with_available_driver("sqlite:///x.db") == "sqlite:///x.db"


def test_choice_description_and_shown_count():
    assert Choice("self", 0).describe() == "k=0"
    slots = Choice("self", 2, "labeled", "slots", picks=(1, 2), detail="#4", index=4)
    assert slots.shown == 2 and not slots.dynamic
    assert slots.describe() == "k=2 labeled/slots#4 as_selected"
    permuted = Choice("self", 2, "labeled", "random", "permutation", (0, 1), 7, "#0", 0, order_index=2)
    assert permuted.describe() == "k=2 labeled/random#0 permutation#2"
    assert Choice("self", 3, "labeled", "mmr", mmr_lambda=0.5).dynamic


@pytest.mark.parametrize("order", ["as_selected", "permutation"])
def test_static_sets_carry_no_selection_demo(order):
    choice = Choice("self", 2, "labeled", "random", order=order, picks=(4, 0), perm_seed=1)
    demos = choice_demos(choice, POOL)
    assert sorted(d["question"] for d in demos) == sorted([POOL[4]["question"], POOL[0]["question"]])


def test_mmr_relevance_is_to_the_query_when_there_is_one_and_to_the_average_input_when_static():
    pool = [{"question": "red apple pie", "answer": "x"}, {"question": "red apple tart", "answer": "x"},
            {"question": "fast blue car", "answer": "y"}, {"question": "slow blue car", "answer": "y"},
            {"question": "red apple jam", "answer": "x"}]
    # per call: the first pick is the demo nearest the input, whichever input it is
    assert mmr(pool, 1, 0.9, query={"question": "a blue car"}, input_fields=["question"])[0] in (2, 3)
    assert mmr(pool, 1, 0.9, query={"question": "an apple tart"}, input_fields=["question"]) == [1]
    # static: relevant to the pool's average input (three of five are apples), then spread out
    static = mmr(pool, 2, 0.5, input_fields=["question"])
    assert static[0] in (0, 1, 4) and static[1] in (2, 3)
    # and per-call selection in a predictor does the same
    settings = selection_demo(mode="mmr", k=2, order="as_selected", mmr_lambda=0.2)["icl_dynamic_demos"]
    picked = select_indices(settings, pool, {"question": "blue car"}, ["question"])
    assert picked[0] in (2, 3) and picked[1] in (0, 1, 4)  # nearest first, then not a near-duplicate of it


def test_influence_fits_from_demo_set_and_score_pairs():
    from dspy_icl_opt.demos.influence import fit_demo_sets, trial_record

    pairs = [({"p": ["good", f"x{i % 3}"]}, 1.0) if i % 2 == 0 else ({"p": [f"x{i % 3}"]}, 0.0) for i in range(12)]
    ranking = fit_demo_sets(pairs)["p"]
    assert ranking[0]["id"] == "good" and ranking[0]["weight"] > 0.3
    per_example = trial_record({"p": ["a"]}, {"e1": 1.0, "e2": 0.0}, shown={"e1": {"q": ["b"]}})
    assert fit_influence([per_example, trial_record({"p": []}, {"e1": 0.0, "e2": 0.0})])["p"][0]["id"] == "a"
