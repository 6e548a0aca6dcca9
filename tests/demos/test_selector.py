"""DemoSelector's behaviour: which demos win, what influence says, pruning, budget, k = 0, clamping."""

from __future__ import annotations

from collections import Counter
import re

import dspy
import optuna
import pytest
from optuna.trial import TrialState

from dspy_icl_opt.demos import DemoSelector, DynamicPredict, register_embedder
from dspy_icl_opt.demos.dynamic import SELECTION_KEY
from dspy_icl_opt.search.base import VALIDATION_Z
from dspy_icl_opt.search.placement import compose_instructions
from dspy_icl_opt.search.scorer import example_key
from dspy_icl_opt.testing import always, simulated_task_lm
from dspy_icl_opt.testing.chat import estimate_tokens, prompt_text
from tests.demos.conftest import GROUPS


def questions(program: dspy.Module) -> list[str]:
    return [d["question"] for d in program.demos if "question" in d]


def select(task, lm=None, **settings):
    settings = {"max_demos": 4, "n_trials": 30, "pools": ("labeled",), "progress": False, **settings}
    selector = DemoSelector(task.metric, task_model=lm or task.lm(), **settings)
    program = selector.compile(task.program(), trainset=task.train, valset=task.val)
    return selector, program


def test_influence_ranks_the_two_teaching_demos_first_and_a_second_study_uses_them(two_teachers):
    first, _ = select(two_teachers, strategies=("random", "slots"))
    ranking = first.report_.extra["influence"]["self"]
    assert {e["demo"]["question"] for e in ranking[:2]} == {two_teachers.even, two_teachers.odd}
    assert ranking[0]["weight"] > 0 and ranking[1]["weight"] > 0
    assert all(e["weight"] < ranking[1]["weight"] for e in ranking[2:])

    second, program = select(two_teachers, strategies=("influence",), influence=first.report_, n_trials=8)
    assert {two_teachers.even, two_teachers.odd} <= set(questions(program))
    assert second.report_.best_scores["val"] == 1.0


def test_search_finds_a_set_holding_both_teaching_demos(two_teachers):
    # The space holds only the candidate sets drawn up front (not every subset of the pool): with 12 per
    # strategy, some hold both teaching demos, and the search must find one.
    selector, program = select(two_teachers, strategies=("random", "slots"), n_trials=40, seed=1, candidate_sets=12)
    assert {two_teachers.even, two_teachers.odd} <= set(questions(program))
    assert selector.report_.best_scores["val"] == 1.0
    curve = selector.report_.extra["k_curve"]["self"]
    by_k = {point["k"]: point for point in curve}
    assert by_k[0]["best"] == 0.0  # zero-shot never knows the rule
    assert max(p["best"] or 0.0 for p in curve) == 1.0 and min(by_k) == 0


def large(task, val_size=48):
    """The two-teachers task with a valset large enough to hold half of it back from the trials."""
    from dspy_icl_opt.testing import planted_rule_task

    bigger = planted_rule_task("reverse", train_size=len(task.train), val_size=val_size, seed=0)
    return type(task)(bigger.train, bigger.val, bigger.train[5].question, bigger.train[9].question)


def test_pruning_stops_bad_trials_and_saves_task_calls(two_teachers):
    # Half the training demos teach the rule: most trials score 1.0, those without a teacher 0.0,
    # so the median pruner can stop the latter, but only once they have scored MIN_EXAMPLES_BEFORE_PRUNING.
    from dspy_icl_opt.demos.selector import MIN_EXAMPLES_BEFORE_PRUNING

    task = large(two_teachers)
    teachers = {ex.question for ex in task.train[::2]}
    settings = {"strategies": ("random", "slots"), "n_trials": 20, "minibatch_size": 4, "minibatches_per_trial": 6,
                "seed": 0}
    calls, selectors = {}, {}
    for pruner in ("median", None):
        lm = task.lm()
        lm.engine.knows = lambda view: any(demo.inputs.get("question") in teachers for demo in view.demos)
        selectors[pruner], _ = select(task, lm, pruner=pruner, **settings)
        calls[pruner] = lm.engine.call_count
        assert selectors[pruner].report_.spent["task"].calls == calls[pruner]
    pruned_trials = [t for t in selectors["median"].study_.trials if t.state == TrialState.PRUNED]
    assert len(pruned_trials) >= 2
    assert all(t.state == TrialState.COMPLETE for t in selectors[None].study_.trials)
    assert calls["median"] < calls[None]
    assert all(MIN_EXAMPLES_BEFORE_PRUNING <= len(t.user_attrs["icl_scores"]) < 24 for t in pruned_trials)
    assert selectors["median"].report_.best_scores["val"] == 1.0


def test_no_trial_is_pruned_on_a_first_small_minibatch(two_teachers):
    # Minibatches of 4 on 16 validation examples: the pruner could stop a trial after 4, 8 or 12 examples,
    # which is noise at this size; with the minimum of 16 examples, none is pruned (and every trial completes).
    teachers = {ex.question for ex in two_teachers.train[::2]}
    lm = two_teachers.lm()
    lm.engine.knows = lambda view: any(demo.inputs.get("question") in teachers for demo in view.demos)
    selector, _ = select(two_teachers, lm, strategies=("random", "slots"), n_trials=20, minibatch_size=4, seed=0)
    assert all(t.state == TrialState.COMPLETE for t in selector.study_.trials)
    assert all(len(t.user_attrs["icl_scores"]) == 16 for t in selector.study_.trials)


def test_successive_halving_pruner_and_custom_sampler_are_accepted(two_teachers):
    sampler = optuna.samplers.RandomSampler(seed=3)
    selector, _ = select(two_teachers, strategies=("random",), n_trials=8, minibatch_size=4,
                         pruner="successive_halving", sampler=sampler)
    assert selector.study_.sampler is sampler
    assert isinstance(selector.study_.pruner, optuna.pruners.SuccessiveHalvingPruner)


def test_baselines_run_first_zero_shot_then_labeled(two_teachers):
    selector, _ = select(two_teachers, n_trials=3)
    first, second = selector.study_.trials[:2]
    assert first.params == {"self/k": 0} and first.user_attrs["icl_baseline"]
    assert second.params["self/k"] == 4 and second.params["self/pool"] == "labeled"
    assert second.params["self/strategy"] == "random" and second.user_attrs["icl_baseline"]
    zero = next(c for c in selector.report_.candidates if c.meta.get("trial") == 0)
    assert zero.state["self"]["demos"] == []


def test_k_zero_wins_when_every_demo_hurts(two_teachers):
    lm = two_teachers.lm()
    lm.engine.knows = lambda view: not view.demos  # a model that only does well zero-shot
    selector, program = select(two_teachers, lm, n_trials=10, pools=("labeled", "bootstrapped"))
    assert program.demos == []
    assert selector.report_.best_scores["val"] == 1.0
    assert selector.report_.extra["k_curve"]["self"][0]["k"] == 0
    assert all(t.distributions["self/k"].low == 0 for t in selector.study_.trials)  # sampled, not only enqueued


def test_pool_smaller_than_max_demos_clamps_k_with_a_warning(two_teachers, warnings_logged):
    small = type(two_teachers)(two_teachers.train[:3], two_teachers.val[:4], two_teachers.even, two_teachers.odd)
    selector, _ = select(small, max_demos=8, n_trials=6)
    assert any("max_demos=8" in m and "has 3 demo(s)" in m for m in warnings_logged)
    distribution = selector.study_.trials[-1].distributions["self/k"]
    assert (distribution.low, distribution.high) == (0, 3)
    shown = [[d for d in c.state["self"]["demos"] if SELECTION_KEY not in d] for c in selector.report_.candidates]
    assert all(len(demos) <= 3 for demos in shown) and max(map(len, shown)) == 3


def test_instructions_are_preserved_even_when_placed(two_teachers):
    placed = compose_instructions("Base text.", "Reverse the letters.", "q_end")
    student = two_teachers.program(placed)
    selector = DemoSelector(two_teachers.metric, task_model=two_teachers.lm(), max_demos=2, n_trials=4,
                            progress=False)
    program = selector.compile(student, trainset=two_teachers.train, valset=two_teachers.val)
    assert program.signature.instructions == placed
    assert student.signature.instructions == placed and student.demos == []
    assert all(c.state["self"]["instruction"] == "Reverse the letters." for c in selector.report_.candidates)


def test_a_call_cap_ends_between_trials_and_the_finalists_are_always_validated(two_teachers):
    # The real run of the issue: 40/40 examples and a cap near 400; the cap used to end inside a trial
    # (marked PRUNED) before any finalist was validated, and the program as given came back unvalidated.
    task = large(two_teachers, val_size=40)
    lm = task.lm()
    selector = DemoSelector(task.metric, task_model=lm, max_demos=4, pools=("labeled",), pruner=None,
                            budget={"max_task_calls": 150}, progress=False)
    selector.compile(task.program(), trainset=task.train, valset=task.val)
    report, plan = selector.report_, selector.report_.extra["plan"]
    assert lm.engine.call_count == report.spent["task"].calls <= 150
    trials = selector.study_.trials
    assert trials and all(t.state == TrialState.COMPLETE for t in trials)
    assert not any(t.user_attrs.get("icl_stopped_by_budget") for t in trials)
    assert report.stopped_by_budget  # the budget, not n_trials, ended the trials ...
    assert report.finished  # ... as planned: the run itself was not cut
    choice = report.extra["final_choice"]
    assert len(choice["contenders"]) == 1 + plan["settings"]["finalists"] >= 2
    assert choice["examples"] >= plan["settings"]["validation_examples"]
    assert len(trials) >= plan["steps"]  # at least the planned trials ran


def test_a_second_compile_on_a_stored_study_still_validates_the_start_and_its_finalists(tmp_path):
    # The zero-shot baseline already in the stored study is not run again, so the start's validation
    # pairs are not in the second compile's cache: they must stay reserved, not be spent on trials.
    from dspy_icl_opt.testing import planted_rule_task

    task = planted_rule_task("reverse", train_size=10, val_size=20, seed=0)
    for _ in range(2):
        lm = task.lm()
        selector = DemoSelector(task.metric, task_model=lm, max_demos=4, n_trials=None, pools=["labeled"],
                                strategies=["random"], orders=["as_selected"], minibatch_size=10,
                                minibatches_per_trial=2, top_k_full_eval=2, storage=f"sqlite:///{tmp_path}/s.db",
                                study_name="x", budget={"max_task_calls": 60}, progress=False)
        selector.compile(task.program(), trainset=task.train, valset=task.val)
        report = selector.report_
        assert lm.engine.call_count == report.spent["task"].calls <= 60
        choice = report.extra["final_choice"]
        assert choice["start"] in {row["candidate"] for row in choice["contenders"]}  # the start was validated


def test_a_trial_cut_by_the_budget_is_failed_not_pruned_and_keeps_its_scores(two_teachers):
    # A token cap can still end a trial half-way: it is not a pruned trial (the sampler would read it as bad).
    def run(cap=None):
        lm = two_teachers.lm()
        selector = DemoSelector(two_teachers.metric, task_model=lm, max_demos=4, n_trials=6, pools=("labeled",),
                                minibatch_size=4, pruner=None, progress=False,
                                budget=None if cap is None else {"max_task_tokens": cap})
        selector.compile(two_teachers.program(), trainset=two_teachers.train, valset=two_teachers.val)
        return selector, lm

    free, lm = run()
    assert [t.state for t in free.study_.trials[:3]] == [TrialState.COMPLETE] * 3
    # a cap of the tokens the first two trials (16 calls each) and 6 calls of the third spent
    cap = sum(estimate_tokens(prompt_text(call.request)) + estimate_tokens(call.reply) for call in lm.engine.calls[:38])
    cut, lm = run(cap=cap)
    states = [t.state for t in cut.study_.trials]
    assert states[:2] == [TrialState.COMPLETE, TrialState.COMPLETE] and states[2] == TrialState.FAIL
    stopped = cut.study_.trials[2]
    assert stopped.user_attrs["icl_stopped_by_budget"] and 0 < len(stopped.user_attrs["icl_scores"]) < 16
    assert TrialState.PRUNED not in states
    assert cut.report_.extra["k_curve"]["self"] and sum(p["n_cut"] for p in cut.report_.extra["k_curve"]["self"]) == 1
    assert cut.report_.stopped_by_budget and cut.report_.best_state is not None


def test_knn_is_chosen_at_inference_time_and_survives_save_and_load(neighbour_task, tmp_path):
    selector, program = select(neighbour_task, max_demos=2, n_trials=6, strategies=("knn", "random"), seed=0)
    assert selector.report_.best_scores["val"] == 1.0
    assert isinstance(program, DynamicPredict) and SELECTION_KEY in program.demos[0]
    with dspy.context(lm=neighbour_task.lm()):
        assert [program(question=ex.question).answer for ex in neighbour_task.val] == [
            ex.answer for ex in neighbour_task.val]

    program.save(str(tmp_path / "program.json"))
    from dspy_icl_opt.demos import with_dynamic_demos

    loaded = with_dynamic_demos(neighbour_task.program())
    loaded.load(str(tmp_path / "program.json"))
    program.save(str(tmp_path / "whole"), save_program=True)
    pickled = dspy.load(str(tmp_path / "whole"), allow_pickle=True)
    lm = neighbour_task.lm()
    with dspy.context(lm=lm):
        for copy in (loaded, pickled):
            assert [copy(question=ex.question).answer for ex in neighbour_task.val] == [
                ex.answer for ex in neighbour_task.val]
    assert all(len(call.view.demos) <= 2 for call in lm.engine.calls)


def test_a_saved_knn_program_refuses_a_plain_load_instead_of_showing_the_whole_pool(neighbour_task, tmp_path):
    """Issue 16, item 6: the same file behaves the same wherever it loads, or does not load."""
    from dspy_icl_opt.demos import with_dynamic_demos
    from dspy_icl_opt.demos.dynamic import PLAIN_LOAD_REFUSAL

    _, program = select(neighbour_task, max_demos=2, n_trials=6, strategies=("knn",), seed=0)
    assert isinstance(program, DynamicPredict)
    path = tmp_path / "program.json"
    program.save(str(path))
    plain = neighbour_task.program()
    before = plain.dump_state()
    with pytest.raises(ValueError, match=re.escape(PLAIN_LOAD_REFUSAL)):
        plain.load(str(path))
    assert plain.dump_state() == before  # refused before anything changed
    loaded = with_dynamic_demos(neighbour_task.program())
    loaded.load(str(path))
    assert [dict(d) for d in loaded.demos] == [dict(d) for d in program.demos] and not loaded.fields
    loaded.save(str(tmp_path / "again.json"))  # and it saves the same way again
    with pytest.raises(ValueError, match="with_dynamic_demos"):
        neighbour_task.program().load(str(tmp_path / "again.json"))
    lm = neighbour_task.lm()
    with dspy.context(lm=lm):
        assert [loaded(question=ex.question).answer for ex in neighbour_task.val] == [
            program(question=ex.question).answer for ex in neighbour_task.val]
    assert all(len(call.view.demos) <= 2 for call in lm.engine.calls)


def test_static_winner_returns_plain_predictors(two_teachers):
    _, program = select(two_teachers, strategies=("random",), orders=("as_selected",), n_trials=4)
    assert type(program) is dspy.Predict


class TwoSteps(dspy.Module):
    """A draft, then an answer that reads it: two task-model calls per example."""

    def __init__(self):
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.answer = dspy.Predict("question, draft -> answer")

    def forward(self, question):
        return self.answer(question=question, draft=self.draft(question=question).draft)


def two_step_setup():
    lm = simulated_task_lm(solve=lambda inputs: {"draft": "d:" + inputs["question"], "answer": inputs["question"]},
                           knows=always())
    train = [dspy.Example(question=f"w{i}", answer=f"w{i}").with_inputs("question") for i in range(12)]
    metric = lambda ex, pred, trace=None: float(ex.answer == pred.answer)  # noqa: E731
    return lm, train, metric


def test_bootstrapped_pool_holds_traces_of_every_predictor_within_the_cap():
    lm, train, metric = two_step_setup()
    selector = DemoSelector(metric, task_model=lm, max_demos=2, n_trials=2, bootstrap_max_calls=6,
                            pools=("labeled", "bootstrapped"), progress=False)
    selector.compile(TwoSteps(), trainset=train, valset=train[:4])
    pools = selector.pools_
    assert pools["draft"]["labeled"] == [] and len(pools["answer"]["labeled"]) == 12
    assert len(pools["draft"]["bootstrapped"]) == len(pools["answer"]["bootstrapped"]) == 3  # 6 calls, 2 per run
    assert all(d["draft"] == "d:" + d["question"] for d in pools["answer"]["bootstrapped"])


def test_a_trial_the_budget_cannot_pay_for_is_not_started():
    lm, train, metric = two_step_setup()
    # A trial costs 4 examples x 2 calls; after the zero-shot trial one call is left: half an example, so the
    # next trial is not started (it used to be started, cut and marked FAIL).
    selector = DemoSelector(metric, task_model=lm, max_demos=2, n_trials=5, pools=("labeled",), minibatch_size=2,
                            budget={"max_task_calls": 9}, progress=False)
    selector.compile(TwoSteps(), trainset=train, valset=train[:4])
    ran = [t.state for t in selector.study_.trials if t.state != TrialState.WAITING]  # a baseline stays queued
    assert ran == [TrialState.COMPLETE]
    assert lm.engine.call_count == selector.report_.spent["task"].calls == 8
    assert selector.report_.stopped_by_budget and selector.report_.best_candidate is not None


def test_a_user_embedder_drives_knn(neighbour_task):
    def embed(shift):
        def group_vector(texts):  # one dimension per group; validation words ("...oto") moved by `shift` groups
            words = [t.split(": ", 1)[-1] for t in texts]
            moved = [shift if w.endswith("oto") else 0 for w in words]
            return [[float(w.startswith(GROUPS[(i + m) % len(GROUPS)])) for i in range(len(GROUPS))]
                    for w, m in zip(words, moved)]
        return group_vector

    scores = {}
    for shift in (0, 1):
        embedder = embed(shift)
        register_embedder(embedder, name=f"groups-shifted-{shift}")
        selector, program = select(neighbour_task, max_demos=1, n_trials=2, strategies=("knn",),
                                   embedder=f"groups-shifted-{shift}")
        scores[shift] = selector.study_.trials[1].value  # the k=1 kNN baseline
        assert program.demos == [] or program.demos[0][SELECTION_KEY]["embedder"] == f"groups-shifted-{shift}"
    assert scores == {0: 1.0, 1: 0.0}  # the right neighbours teach, the shifted ones never do


def test_settings_are_validated():
    metric = lambda ex, pred, trace=None: 1.0  # noqa: E731
    with pytest.raises(ValueError, match="strategies"):
        DemoSelector(metric, strategies=("nearest",))
    with pytest.raises(ValueError, match="influence"):
        DemoSelector(metric, strategies=("influence",))
    with pytest.raises(ValueError, match="pruner"):
        DemoSelector(metric, pruner="hyperband")
    with pytest.raises(ValueError, match="max_demos"):
        DemoSelector(metric, max_demos=0)
    with pytest.raises(ValueError, match="storage"):
        DemoSelector(metric, storage=3)
    with pytest.raises(TypeError, match="`bootstrap_threshold` must be a number, but got str"):
        DemoSelector(metric, bootstrap_threshold="high")


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_study_is_exposed_for_dashboards(two_teachers):
    selector, _ = select(two_teachers, n_trials=4)
    frame = selector.trials_dataframe()
    assert len(frame) == 4 and "params_self/k" in frame.columns
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from optuna.visualization.matplotlib import plot_optimization_history

    assert plot_optimization_history(selector.study_) is not None
    assert selector.report_.extra["study"]["trials_this_run"] == 4


def test_the_program_as_given_competes_in_the_final_choice(two_teachers):
    # Each program is asked questions in turn: the start (no demos) gets its first four wrong and the
    # rest right, every other program the other way round. Trials see four examples, so the start
    # looks worst there; on the whole valset (16) it is best.
    asked: dict[str, set[str]] = {}

    def knows(view) -> bool:
        seen = asked.setdefault(repr(view.demos), set())
        seen.add(view.inputs["question"])
        return (len(seen) > 4) == (not view.demos)

    reverse = lambda inputs: inputs["question"][::-1]  # noqa: E731
    selector, program = select(two_teachers, lm=simulated_task_lm(solve=reverse, knows=knows),
                               minibatch_size=4, minibatches_per_trial=1, n_trials=6, top_k_full_eval=2, pruner=None)
    report = selector.report_
    assert report.candidates[0].scores["trial"] == 0.0 < max(c.scores["trial"] for c in report.candidates)
    assert report.best_candidate == 0 and report.best_scores["val"] == 0.75
    assert not program.demos


def test_trials_that_score_the_whole_valset_hold_nothing_back_for_validation(two_teachers):
    # 4 minibatches of 4 cover the 16 validation examples: validating the finalists and the start (the
    # zero-shot trial) afterwards is free, so the whole budget goes to trials (whole ones only).
    selector, _ = select(two_teachers, minibatch_size=4, minibatches_per_trial=4, n_trials=40, pruner=None,
                         top_k_full_eval=2, budget={"max_task_calls": 60})
    report = selector.report_
    assert [t.state for t in selector.study_.trials] == [TrialState.COMPLETE] * 3, \
        "60 calls pay for three whole trials of 16; a fourth is not started"
    assert report.stopped_by_budget and report.spent["task"].calls == 48
    assert "val" in report.best_scores, "the choice was still made on the whole valset"
    assert report.extra["final_choice"]["held_out"] is False and report.extra["final_choice"]["z"] > 1.5


def test_capped_search_still_validates_distinct_finalists(two_teachers):
    lm = two_teachers.lm()
    selector = DemoSelector(two_teachers.metric, task_model=lm, max_demos=4, n_trials=40, pools=("labeled",),
                            minibatch_size=4, minibatches_per_trial=1, pruner=None, top_k_full_eval=2,
                            budget={"max_task_calls": 120},
                            progress=False)
    selector.compile(two_teachers.program(), trainset=two_teachers.train, valset=two_teachers.val)
    report = selector.report_
    validated = [c for c in report.candidates if "val" in c.scores]
    assert report.stopped_by_budget and report.spent["task"].calls <= 120
    start = report.candidates[0]
    assert start.meta["choice"] == {"self": "k=0"}, "trial 0 is the program as given (zero-shot)"
    assert len(validated) == 3 and start in validated, \
        "the program as given and the two best distinct trials were validated on the whole valset"
    assert "val" in report.best_scores


def bootstrap_views(lm, train):
    """The requests the bootstrap made: the calls whose input is a training question."""
    questions = {ex.question for ex in train}
    return [call.view for call in lm.engine.calls if call.view.inputs.get("question") in questions]


def test_the_labeled_teacher_bootstraps_what_the_student_alone_cannot_and_never_shows_the_example(two_teachers):
    lm = two_teachers.lm()
    lm.engine.knows = lambda view: bool(view.demos)  # right only with demos: the student alone fails every run
    student = DemoSelector(two_teachers.metric, task_model=lm, max_demos=3, n_trials=1, bootstrap_teacher="student",
                           progress=False)
    student.compile(two_teachers.program(), trainset=two_teachers.train, valset=two_teachers.val)
    assert student.pools_["self"]["bootstrapped"] == []

    lm = two_teachers.lm()
    lm.engine.knows = lambda view: bool(view.demos)
    labeled = DemoSelector(two_teachers.metric, task_model=lm, max_demos=3, n_trials=1, progress=False)
    labeled.compile(two_teachers.program(), trainset=two_teachers.train, valset=two_teachers.val)
    assert len(labeled.pools_["self"]["bootstrapped"]) == 9  # 3 * max_demos, then the bootstrap stops
    views = bootstrap_views(lm, two_teachers.train)
    assert len(views) == 9 and all(len(v.demos) == 3 for v in views)
    assert all(v.inputs["question"] not in {d.inputs["question"] for d in v.demos} for v in views)
    assert labeled.report_.params["bootstrap_teacher"] == "labeled"


def test_a_teacher_program_runs_the_bootstrap_and_a_wrong_one_is_refused(two_teachers):
    lm = two_teachers.lm()
    teacher = two_teachers.program("Reverse the word, letter by letter.")
    teacher.demos = [dspy.Example(question="abc", answer="cba")]
    selector = DemoSelector(two_teachers.metric, task_model=lm, max_demos=2, n_trials=1, progress=False)
    selector.compile(two_teachers.program(), trainset=two_teachers.train, valset=two_teachers.val, teacher=teacher)
    views = bootstrap_views(lm, two_teachers.train)
    assert views and all(v.instruction == "Reverse the word, letter by letter." for v in views)
    assert all([d.inputs["question"] for d in v.demos] == ["abc"] for v in views)
    assert selector.report_.params["bootstrap_teacher"].startswith("program:")

    with pytest.raises(ValueError, match="`teacher` must have the student's predictors"):
        selector.compile(two_teachers.program(), trainset=two_teachers.train, valset=two_teachers.val,
                         teacher=TwoSteps())
    with pytest.raises(TypeError, match="`teacher` must be a dspy.Module"):
        selector.compile(two_teachers.program(), trainset=two_teachers.train, valset=two_teachers.val,
                         teacher="gpt-4o")
    with pytest.raises(ValueError, match="`bootstrap_teacher` must be one of"):
        DemoSelector(two_teachers.metric, bootstrap_teacher="teacher")


def test_the_labeled_teacher_leaves_a_taught_predictor_its_own_demos(two_teachers):
    lm = two_teachers.lm()
    program = two_teachers.program()
    program.demos = [dspy.Example(question="xyz", answer="zyx")]
    selector = DemoSelector(two_teachers.metric, task_model=lm, max_demos=3, n_trials=1, progress=False)
    selector.compile(program, trainset=two_teachers.train, valset=two_teachers.val)
    views = bootstrap_views(lm, two_teachers.train)
    assert views and all([d.inputs["question"] for d in v.demos] == ["xyz"] for v in views)


def test_bfsrs_argument_names_are_accepted_where_the_meaning_is_the_same():
    """Drop-in for BootstrapFewShotWithRandomSearch (issue 16, item 9): its names work, the rest name our equivalent."""
    metric = lambda example, prediction, trace=None: 1.0  # noqa: E731
    selector = DemoSelector(metric, max_bootstrapped_demos=4, max_labeled_demos=16, num_candidate_programs=8,
                            metric_threshold=0.5, num_threads=2)
    assert (selector.max_demos, selector.n_trials, selector.bootstrap_threshold) == (16, 11, 0.5)
    assert DemoSelector(metric, max_bootstrapped_demos=2, max_labeled_demos=0).max_demos == 2
    # the one not given has BFSRS's default (4 bootstrapped, 16 labeled), whose programs show up to the larger
    assert DemoSelector(metric, max_labeled_demos=3).max_demos == 4
    assert DemoSelector(metric, max_bootstrapped_demos=4).max_demos == 16
    with pytest.raises(ValueError, match=r"`max_bootstrapped_demos` and `max_labeled_demos` are both 0"):
        DemoSelector(metric, max_bootstrapped_demos=0, max_labeled_demos=0)  # was silently max_demos=1
    for key, value, equivalent in (("teacher_settings", {"lm": "gpt-4o"}, "compile(..., teacher=program)"),
                                   ("max_rounds", 2, "bootstrap_max_calls"), ("max_errors", 5, "failure_score"),
                                   ("stop_at_score", 0.9, "max_task_calls")):
        with pytest.raises(TypeError, match=rf"^`{key}` \(a BootstrapFewShotWithRandomSearch argument\) has no "
                                            rf"DemoSelector equivalent, but got {key}=.*{re.escape(equivalent)}"):
            DemoSelector(metric, **{key: value})
    with pytest.raises(ValueError, match="num_candidate_programs"):
        DemoSelector(metric, num_candidate_programs=-1)


def test_a_large_valset_is_split_and_the_final_choice_checks_the_examples_no_trial_saw(two_teachers):
    task = large(two_teachers, val_size=40)
    lm = task.lm()
    selector = DemoSelector(task.metric, task_model=lm, max_demos=4, n_trials=8, pools=("labeled",), progress=False)
    selector.compile(task.program(), trainset=task.train, valset=task.val)
    report = selector.report_
    trial_keys = {k for t in selector.study_.trials for k in t.user_attrs.get("icl_scores", {})}
    choice = report.extra["final_choice"]
    assert choice["held_out"] is True and choice["z"] == VALIDATION_Z  # a fresh half: no correction for reuse
    assert report.extra["plan"]["settings"]["held_out"] == 20 and choice["examples"] == 40
    assert (choice["reused_examples"], choice["fresh_examples"]) == (20, 20)
    assert all("fresh_gain" in row for row in choice["contenders"])
    val_keys = {example_key(ex)[:12] for ex in task.val}
    assert len(trial_keys) == 20 and trial_keys < val_keys
    # the trial examples came from the cache: each validation call was on an example the trials never scored
    asked_by_trials = {ex.question for ex in task.val if example_key(ex)[:12] in trial_keys}
    asked = Counter(c.view.inputs["question"] for c in lm.engine.calls if not c.view.demos)
    assert all(asked[q] == 1 for q in asked_by_trials), "the start's trial examples were scored twice"
    start_calls = [q for q in asked if q in {ex.question for ex in task.val} - asked_by_trials]
    assert len(start_calls) == 20  # the start (zero-shot) was validated on the 20 held-out examples


def test_candidate_sets_are_indices_drawn_from_the_seed_without_repeats(two_teachers):
    selector, _ = select(two_teachers, strategies=("random", "slots"), orders=("permutation",), n_trials=12)
    names = {name for t in selector.study_.trials for name in t.params}
    assert "self/set" in names and not any("seed" in n or "slot" in n for n in names)
    for trial in selector.study_.trials:
        if trial.params.get("self/k", 0) > 1:
            assert trial.distributions["self/set"].choices == tuple(range(6))
            assert trial.distributions["self/perm"].choices == (0, 1, 2)
    for candidate in selector.report_.candidates:
        questions_shown = [d["question"] for d in candidate.state["self"]["demos"]]
        assert len(questions_shown) == len(set(questions_shown))
    again, _ = select(two_teachers, strategies=("random", "slots"), orders=("permutation",), n_trials=12)
    other, _ = select(two_teachers, strategies=("random", "slots"), orders=("permutation",), n_trials=12, seed=5)
    state = lambda s: [c.state for c in s.report_.candidates]  # noqa: E731
    assert state(again) == state(selector) and state(other) != state(selector)


def test_mmr_picks_per_call_relevant_to_the_input(neighbour_task):
    # Only a demo of the input's own group teaches; MMR relevant to the input (lambda near 1) covers every group
    # with one demo, as kNN does, where a set relevant to the pool's centre could not.
    selector, program = select(neighbour_task, max_demos=1, n_trials=6, strategies=("mmr",), seed=0)
    assert selector.report_.best_scores["val"] == 1.0
    assert isinstance(program, DynamicPredict) and program.demos[0][SELECTION_KEY]["mode"] == "mmr"


def test_bfsrs_compile_arguments():
    lm, train, metric = two_step_setup()
    selector = DemoSelector(metric, task_model=lm, max_rounds=1, teacher_settings={}, max_labeled_demos=2,
                            n_trials=2, progress=False)
    selector.compile(TwoSteps(), trainset=train, valset=train[:4], labeled_sample=False)
    assert selector.report_.finished
    with pytest.raises(TypeError, match=r"`restrict` .* n_trials=N"):
        selector.compile(TwoSteps(), trainset=train, valset=train[:4], restrict=[1, 2])


def test_the_thread_count_changes_neither_the_bootstrap_nor_the_result(two_teachers):
    # The bootstrap used to run batches of num_threads examples, so more threads paid for examples past
    # the point where the pool was full and left the trials less budget.
    def run(threads):
        lm = two_teachers.lm()
        lm.engine.knows = lambda view: bool(view.demos) or len(view.question) % 2 == 0  # half pass zero-shot
        selector, program = select(two_teachers, lm, n_trials=8, pools=("labeled", "bootstrapped"), num_threads=threads,
                                   seed=5, max_demos=2, budget={"max_task_calls": 150})
        trials = [(t.params, t.value) for t in selector.study_.trials]
        return selector.report_.spent["task"].calls, trials, questions(program)

    one = run(1)
    assert one[0] > 0 and run(4) == one


def test_the_zero_shot_trial_does_not_take_a_finalists_place(two_teachers):
    # The demo CLI on date_understanding: the zero-shot trial tied the labeled one and ranked first (lower
    # number), and with one finalist planned the final choice validated only the start itself.
    reverse = lambda inputs: inputs["question"][::-1]  # noqa: E731
    selector, _ = select(two_teachers, lm=simulated_task_lm(solve=reverse, knows=always()), n_trials=3,
                         top_k_full_eval=1, minibatch_size=4, minibatches_per_trial=1, pruner=None)
    ranked = [t for t in selector.study_.trials if t.value is not None]
    assert len({t.value for t in ranked}) == 1, "every trial ties, so the zero-shot trial (number 0) ranks first"
    contenders = selector.report_.extra["final_choice"]["contenders"]
    start = selector.report_.extra["final_choice"]["start"]
    assert len(contenders) == 2 and contenders[1]["candidate"] != start


def test_a_final_choice_cut_to_the_trial_examples_is_judged_as_one_on_reused_examples(two_teachers):
    # At 60 task calls the plan validates 20 examples, all of them the trials' own: the choice called itself
    # held-out (z 1.0, "must not lose on the held-back examples") with no held-back example in it.
    task = large(two_teachers, val_size=40)
    selector = DemoSelector(task.metric, task_model=task.lm(), max_demos=4, pools=("labeled",),
                            budget={"max_task_calls": 60}, progress=False)
    selector.compile(task.program(), trainset=task.train, valset=task.val)
    choice = selector.report_.extra["final_choice"]
    settings = selector.report_.extra["plan"]["settings"]
    assert choice["examples"] <= settings["trial_examples"]
    assert choice["held_out"] is False and choice["z"] > 1.0


def _two_teachers_on(val_size: int):
    from dspy_icl_opt.testing import planted_rule_task
    from tests.demos.conftest import TwoTeachers

    base = planted_rule_task("reverse", train_size=12, val_size=val_size, seed=0)
    return TwoTeachers(base.train, base.val, even=base.train[5].question, odd=base.train[9].question)


def test_a_cut_final_choice_still_validates_its_cached_finalists():
    # The plan validates the 20 trial examples (scored for the finalists, so free) of a 40-example valset at 60
    # calls; pricing each finalist on all 40 passed every trial over and validated the start alone (val 0.0).
    task = _two_teachers_on(40)
    selector = DemoSelector(task.metric, task_model=task.lm(), max_demos=4, pools=("labeled",),
                            budget={"max_task_calls": 60}, progress=False)
    selector.compile(task.program(), trainset=task.train, valset=task.val)
    choice = selector.report_.extra["final_choice"]
    assert "passed_over_unaffordable" not in choice
    assert len(choice["contenders"]) == 2 and selector.report_.best_scores["val"] > 0.5


@pytest.mark.parametrize("kill", [61, 80, -1])
def test_killed_in_the_final_choice_resumes_identically(tmp_path, kill):
    # Pricing a finalist read its pairs through the cache, which charges replayed pairs: the resumed run then
    # sized the validation from fewer calls left (99 calls on 39 examples against 100 on 40).
    from dspy_icl_opt.testing import make_fake_lm
    from tests.contract.suite import KilledAfter

    task = _two_teachers_on(40)

    def run(log_dir=None, kill_after=None):
        lm = task.lm()
        if kill_after is not None:
            lm = make_fake_lm(KilledAfter(lm.engine, kill_after), name=lm.model)
        program = task.program()
        program.demos = [task.train[0]]  # the start's validation pairs are not cached by a zero-shot trial
        selector = DemoSelector(task.metric, task_model=lm, max_demos=4, pools=("labeled",), top_k_full_eval=3,
                                budget={"max_task_calls": 100}, progress=False, log_dir=log_dir)
        selector.compile(program, trainset=task.train, valset=task.val)
        report = selector.report_
        return report.spent["task"].calls, report.extra["final_choice"]["examples"], report.best_state

    full = run()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, kill_after=kill if kill > 0 else full[0] + kill)  # -1: before the last call
    assert run(tmp_path) == full


@pytest.mark.parametrize("kill", [30, 60])
def test_a_stored_study_resumed_after_a_crash_makes_no_more_real_calls_than_the_cap(tmp_path, kill):
    # With a storage the resumed compile continues the stored study (its trials are not run again) and takes the
    # stored pools (the bootstrap is not run again), so the pairs those spent were never read back: the crashed and
    # the resumed compile together made up to 241 real calls against a cap of 160. A resumed stored study now
    # charges every journaled call up front.
    from dspy_icl_opt.testing import make_fake_lm
    from tests.contract.suite import KilledAfter

    task = _two_teachers_on(40)
    storage = f"sqlite:///{tmp_path}/study.db"

    def run(kill_after):
        engine = KilledAfter(task.lm().engine, kill_after)
        selector = DemoSelector(task.metric, task_model=make_fake_lm(engine, name="fake"), max_demos=4,
                                pools=("labeled", "bootstrapped"), budget={"max_task_calls": 100}, progress=False,
                                storage=storage, study_name="resumed", log_dir=tmp_path / "log", seed=0)
        selector.compile(task.program(), trainset=task.train, valset=task.val)
        return engine.call_count, selector.report_

    with pytest.raises(KeyboardInterrupt):
        run(kill)
    made, report = run(10_000)
    assert kill + made <= 100
    assert report.spent["task"].calls <= 100
