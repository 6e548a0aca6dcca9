"""InstructionDemoSearch's own behaviour: both lists are searched, the budget is spent exactly, influence joins in."""

from __future__ import annotations

import json
import os
import uuid

import dspy
import optuna
import pytest

from dspy_icl_opt.demos.study import make_storage
from dspy_icl_opt.optimizers.joint import InstructionDemoSearch
from dspy_icl_opt.optimizers.joint_prompts import STYLE_HINTS, read_instruction
from dspy_icl_opt.optimizers.joint_space import k_choices
from dspy_icl_opt.testing import (
    all_of,
    correct_demos,
    format_chat_reply,
    planted_rule_task,
    rule_in_instruction,
    scripted_lm,
    simulated_task_lm,
)
from tests.optimizers.two_step import LettersThenAnswer as TwoStep

#: The style hint whose proposal states the rule (the others do not).
PLANTED_HINT = STYLE_HINTS[2]


def planted_proposer(task, *, hint: str = PLANTED_HINT):
    """Proposes the rule only under one style hint; every other proposal is distinct and useless."""

    def respond(request):
        text = request.messages[-1].text
        if hint in text:
            return format_chat_reply({"instruction": f"For each word, {task.rule} and answer with the number."})
        number = sum(map(ord, text)) % 1000
        return format_chat_reply({"instruction": f"Think about the word carefully ({number})."})

    return scripted_lm(respond)


def joint_task_lm(task, *, at_least: int = 3):
    """Right only with the rule in the instruction AND at least ``at_least`` demos showing correct answers."""
    return task.lm(knows=all_of(rule_in_instruction(task.rule), correct_demos(task.solve, at_least=at_least)))


@pytest.fixture
def task():
    return planted_rule_task("vowels", train_size=16, val_size=8, seed=2)


def make(task, **kwargs):
    settings = {"task_model": joint_task_lm(task), "prompt_model": planted_proposer(task), "auto": None,
                "num_candidates": 6, "max_bootstrapped_demos": 2, "max_labeled_demos": 2, "progress": False}
    settings.update(kwargs)
    return InstructionDemoSearch(task.metric, **settings)


def test_finds_the_one_instruction_and_demo_count_that_work_together(task):
    opt = make(task, budget={"max_task_calls": 600, "max_prompt_calls": 12})
    program = opt.compile(task.program(), trainset=task.train, valset=task.val)
    assert task.rule in program.signature.instructions
    assert len(program.demos) >= 3
    rows = opt.report_.extra["joint"]["trials"]
    assert any(r["choice"]["self"]["k"] < 3 for r in rows), "k was searched, not fixed"
    assert len({r["choice"]["self"]["instruction"] for r in rows}) > 1, "instructions were searched"
    with dspy.context(lm=joint_task_lm(task)):
        assert task.score(program) == 1.0
    assert opt.report_.extra["final_choice"]["chosen"] != opt.report_.extra["final_choice"]["start"]


def test_at_a_users_budget_trials_are_planned_and_the_task_cap_is_spent_exactly():
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    opt = InstructionDemoSearch(big.metric, task_model=joint_task_lm(big), prompt_model=planted_proposer(big),
                                budget={"max_task_calls": 400, "max_prompt_calls": 40}, progress=False)
    plan = opt.plan(big.program(), trainset=big.train, valset=big.val)
    assert plan.steps >= 10 and plan.task_calls <= 400 and plan.prompt_calls <= 40
    assert plan.settings["validation_examples"] == 40
    opt.compile(big.program(), trainset=big.train, valset=big.val)
    report = opt.report_
    actual = report.extra["plan_vs_actual"]
    assert actual["steps"]["run"] >= plan.steps, "every planned trial ran"
    assert 0.9 * 400 <= report.spent["task"].calls <= 400
    assert report.spent["prompt"].calls <= 40
    assert report.extra["final_choice"]["examples"] == 40, "the finalists were validated on the whole valset"
    assert report.finished


def test_trials_score_the_valset_and_the_final_choice_adds_the_examples_they_did_not_see():
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    lm = joint_task_lm(big)
    opt = InstructionDemoSearch(big.metric, task_model=lm, prompt_model=planted_proposer(big),
                                budget={"max_task_calls": 220, "max_prompt_calls": 13}, progress=False)
    plan = opt.plan(big.program(), trainset=big.train, valset=big.val)
    assert (plan.settings["search_examples"], plan.settings["held_out"]) == (30, 10)
    assert plan.settings["finalists"] == 2, "10 trials end in 2 full evaluations: a third place would stay empty"
    assert plan.settings["minibatch_size"] == 10, "the place's 10 held-back calls went to the trials"
    program = opt.compile(big.program(), trainset=big.train, valset=big.val)
    report = opt.report_
    first = report.extra["joint"]["trials"][0]["choice"]["self"]
    assert (first["instruction_origin"], first["k"]) == ("given", 0), "the program as given is the first trial"
    trial_ids = {row["candidate"] for row in report.extra["joint"]["trials"]}
    assert all(report.candidates[i].n_scored["search"] <= 30 for i in trial_ids), "no trial saw a held-back example"
    choice = report.extra["final_choice"]
    assert choice["reused_examples"] == 30 and choice["fresh_examples"] >= 10
    assert all("fresh_gain" in row for row in choice["contenders"])
    assert len(choice["contenders"]) >= 3, "the start and at least two finalists were validated"
    assert choice["chosen"] != choice["start"] and big.rule in program.signature.instructions
    assert lm.engine.call_count == report.spent["task"].calls <= 220


def test_the_first_trials_survey_the_demo_kinds_then_the_instructions_with_the_best_kind():
    # the planted task needs the rule instruction (a proposal) and at least 3 demos: random startup trials found
    # that pair by luck at 10 trials; the survey tries each proposal with the best demo kind by design
    from dspy_icl_opt.optimizers.joint import SURVEY_ORDER

    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    opt = InstructionDemoSearch(big.metric, task_model=joint_task_lm(big), prompt_model=planted_proposer(big),
                                budget={"max_task_calls": 220, "max_prompt_calls": 13}, progress=False)
    program = opt.compile(big.program(), trainset=big.train, valset=big.val)
    joint = opt.report_.extra["joint"]
    rows = [r["choice"]["self"] for r in joint["trials"]]
    kinds = [d["name"] for d in joint["demo_sets"]["self"] if d["name"] in SURVEY_ORDER]
    kinds.sort(key=SURVEY_ORDER.index)
    survey = rows[1: 1 + len(kinds)]
    assert [r["demo_set"] for r in survey] == kinds and len(kinds) >= 3
    assert {(r["instruction_origin"], r["k"]) for r in survey} == {("format", 4)}, "one instruction, a middle k"
    values = [r["value"] for r in joint["trials"][1: 1 + len(kinds)]]
    best = survey[values.index(max(values))]
    instructions = joint["instructions"]["self"]
    others = [i for i in range(2, len(instructions))] + [0]  # the proposals, then the instruction as given
    then = [row["choice"]["self"] for row in joint["trials"] if row["stage"] == "instructions"]
    assert [r["instruction"] for r in then] == others
    assert all((r["demo_set"], r["k"]) == (best["demo_set"], best["k"]) for r in then)
    assert big.rule in program.signature.instructions and len(program.demos) >= 3


def test_a_configuration_whose_program_was_scored_is_told_its_mean_for_free(task):
    # k=0 shows no demo, so with the instruction as given every demo set is the program as given again
    opt = make(task, budget={"max_task_calls": 220, "max_prompt_calls": 6})
    opt.compile(task.program(), trainset=task.train, valset=task.val)
    joint = opt.report_.extra["joint"]
    assert joint["repeats_told"] > 0
    programs = [json.dumps(opt.report_.candidates[r["candidate"]].state, sort_keys=True) for r in joint["trials"]]
    assert len(programs) == len(set(programs)), "each scored trial is a program no trial scored before"
    repeats = [t for t in opt.study_.trials if "icl_repeat_of_candidate" in t.user_attrs]
    scored = {r["candidate"]: r for r in joint["trials"]}
    assert repeats and all(t.user_attrs["icl_repeat_of_candidate"] in scored for t in repeats)


def test_full_evaluations_go_to_contenders_not_to_the_program_as_given():
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    opt = InstructionDemoSearch(big.metric, task_model=big.lm(knows=lambda view: True),  # every program ties
                                prompt_model=planted_proposer(big), budget={"max_task_calls": 220,
                                                                             "max_prompt_calls": 13}, progress=False)
    opt.compile(big.program(), trainset=big.train, valset=big.val)
    rows = opt.report_.extra["joint"]["trials"]
    start = rows[0]["candidate"]  # the first trial is the program as given, and wins every tie by being first
    assert rows[0]["choice"]["self"]["k"] == 0 and not any("full" in r for r in rows if r["candidate"] == start)
    fully = {r["candidate"] for r in rows if "full" in r}
    assert len(fully) >= 2, "each full evaluation made another contender a finalist"
    validated = {row["candidate"] for row in opt.report_.extra["final_choice"]["contenders"]}
    assert fully <= validated


def test_the_task_engine_never_sees_more_calls_than_the_cap(task):
    lm = joint_task_lm(task)
    opt = make(task, task_model=lm, budget={"max_task_calls": 57, "max_prompt_calls": 3})
    opt.compile(task.program(), trainset=task.train, valset=task.val)
    assert lm.engine.call_count == opt.report_.spent["task"].calls <= 57
    assert opt.report_.extra["final_choice"]["contenders"], "the final validation still ran"


def test_two_predictor_program_gets_instruction_and_demos_each(task):
    def spaced(word):
        return " ".join(word)

    def solve(inputs):
        return task.solve(inputs) if "letters" in inputs else spaced(inputs["question"])

    def knows(view):
        if "letters" in view.output_fields:
            return True  # the extractor always works
        taught = task.rule in view.instruction or len(view.demos) >= 2  # the answerer learns from either
        return taught and view.inputs.get("letters") == spaced(view.inputs["question"])

    lm = simulated_task_lm(solve=solve, knows=knows)
    opt = make(task, task_model=lm, budget={"max_task_calls": 900})
    program = opt.compile(TwoStep(), trainset=task.train, valset=task.val)
    with dspy.context(lm=lm):
        assert task.score(program) == 1.0
    rows = opt.report_.extra["joint"]["trials"]
    assert set(rows[0]["choice"]) == {"extract", "answer"}, "every trial chooses for both predictors"
    sets = opt.report_.extra["joint"]["demo_sets"]
    assert sets["extract"] and sets["answer"], "both predictors have demo sets (bootstrapped traces for extract)"
    assert any(s["name"].startswith("bootstrapped") for s in sets["extract"])


def test_chain_of_thought_in_threads_gets_bootstrapped_reasoning_demos(task):
    from dspy_icl_opt.testing import any_of, rule_in_instruction

    lm = task.lm(knows=any_of(rule_in_instruction(task.rule), correct_demos(task.solve, at_least=2)))
    program = dspy.ChainOfThought(dspy.Signature("question -> answer", "Answer the question."))
    opt = make(task, task_model=lm, num_threads=2, budget={"max_task_calls": 200})
    compiled = opt.compile(program, trainset=task.train, valset=task.val)
    with dspy.context(lm=lm):
        assert task.score(compiled) == 1.0
    assert opt.report_.spent["task"].calls <= 200
    boot = [s for s in opt.report_.extra["joint"]["demo_sets"]["predict"] if s["name"].startswith("bootstrapped")]
    assert boot, "the taught program passed on demo-source examples, so its traces became demo sets"
    demos = [d for c in opt.report_.candidates for d in c.state["predict"]["demos"]]
    assert any("reasoning" in d for d in demos), "a bootstrapped demo carries the model's reasoning"


def test_the_influence_phase_adds_a_set_of_the_demos_that_helped(task):
    from dspy_icl_opt.demos import demo_id

    def run(knows):
        opt = make(task, task_model=task.lm(knows=knows), max_bootstrapped_demos=0, max_labeled_demos=4,
                   prompt_model=scripted_lm(lambda r: format_chat_reply({"instruction": "Answer."})),
                   budget={"max_task_calls": 700})
        opt.compile(task.program(), trainset=task.train, valset=task.val)
        return opt, opt.report_.extra["joint"]

    _, blind = run(lambda view: False)  # no bootstrapping: the demo sets do not depend on the task model
    mmr = next(s for s in blind["demo_sets"]["self"] if s["name"] == "mmr")
    key = mmr["ids"][-1]  # shown only when a trial takes all four demos of that set
    assert not any(s["name"] == "influence" for s in blind["demo_sets"]["self"]), "nothing helped: no set"
    opt, joint = run(lambda view: any(demo_id({**d.inputs, **d.outputs}) == key for d in view.demos))
    influence = next(s for s in joint["demo_sets"]["self"] if s["name"] == "influence")
    # k takes 0, 1, 2 and 4, so the set's third and fourth demos are only ever shown together: the trials cannot
    # tell them apart, and the one that helped shares the top weight with its companion
    top = joint["influence_phase"]["top"]["self"]
    tied = [entry["id"] for entry in top if entry["weight"] == top[0]["weight"]]
    assert key in tied and len(tied) <= 2 and set(influence["ids"][: len(tied)]) == set(tied), \
        "the demo that helped comes first (beside the one it is always shown with)"
    phase_two = [r for r in joint["trials"] if r["phase"] == 2]
    assert phase_two and phase_two[0]["choice"]["self"]["demo_set"] == "influence", "its first trial is queued"
    assert opt.study_.study_name.endswith("-influence")
    scored = [t for t in opt.study_.trials if t.user_attrs.get("icl_scores")]
    assert len(scored) == len(joint["trials"]), "phase one's scored trials were copied in beside phase two's"
    final = opt.report_.extra["influence"]["self"]  # refitted on every trial, with the demo's content
    assert key in [entry["id"] for entry in final[:2]] and final[0]["demo"]["answer"]


def test_report_lists_candidates_once_and_choices_per_trial():
    task = planted_rule_task("vowels", train_size=32, val_size=8, seed=2)  # 16 search examples: minibatches of 8
    opt = make(task, budget={"max_task_calls": 400, "max_prompt_calls": 12})
    opt.compile(task.program(), trainset=task.train, valset=task.val)
    joint = opt.report_.extra["joint"]
    instructions = joint["instructions"]["self"]
    assert [i["origin"] for i in instructions[:2]] == ["given", "format"]
    assert all("text" in i for i in instructions)
    for row in joint["trials"]:
        choice = row["choice"]["self"]
        assert set(choice) == {"instruction", "instruction_origin", "demo_set", "k"}
        assert 0 <= choice["instruction"] < len(instructions) and choice["k"] in k_choices(4)
        assert "text" not in choice, "the text is listed once, not repeated per trial"
    assert any("full" in row for row in joint["trials"]), "the best configuration was fully evaluated"


def test_same_seed_same_trials_other_seed_other_trials(task):
    def rows(seed):
        opt = make(task, seed=seed, budget={"max_task_calls": 250, "max_prompt_calls": 6})
        opt.compile(task.program(), trainset=task.train, valset=task.val)
        return [(r["choice"], r["value"]) for r in opt.report_.extra["joint"]["trials"]]

    assert rows(4) == rows(4)
    assert rows(4) != rows(5)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_study_is_stored_with_a_named_objective(task, tmp_path, backend):
    if backend == "postgresql":
        url = os.environ.get("DSPY_ICL_OPT_TEST_PG_URL")
        if not url:
            pytest.skip("DSPY_ICL_OPT_TEST_PG_URL is not set: no PostgreSQL server to test against.")
    else:
        url = f"sqlite:///{tmp_path / 'joint.db'}"
    name = f"joint-test-{uuid.uuid4().hex[:8]}"
    opt = make(task, storage=url, study_name=name, budget={"max_task_calls": 200, "max_prompt_calls": 6},
               influence=False)
    opt.compile(task.program(), trainset=task.train, valset=task.val)
    study = optuna.load_study(study_name=name, storage=make_storage(url))
    assert study.metric_names == ["mean score on the trial's minibatch"]
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    joint = opt.report_.extra["joint"]
    assert len(trials) == len(joint["trials"]) + joint["repeats_told"], "scored trials and repeats told for free"
    assert len([t for t in trials if "icl_repeat_of_candidate" in t.user_attrs]) == joint["repeats_told"]
    assert {"self/instruction", "self/demos", "self/k"} <= set(trials[0].params)
    assert "self/instruction_text" in trials[0].user_attrs and "self/demo_set" in trials[0].user_attrs
    assert study.user_attrs["icl_instructions"]["self"][0] == "Answer the question."
    assert opt.report_.extra["study"]["storage"].startswith(backend)
    if backend == "postgresql":
        optuna.delete_study(study_name=name, storage=make_storage(url))


def test_resume_from_the_journal_rebuilds_the_stored_study_without_calls(task, tmp_path):
    url = f"sqlite:///{tmp_path / 'joint.db'}"
    first = make(task, storage=url, log_dir=tmp_path / "run", budget={"max_task_calls": 200, "max_prompt_calls": 6})
    first.compile(task.program(), trainset=task.train, valset=task.val)
    first_trials = len(first.study_.trials)  # read now: the resumed compile rewrites the studies of its name
    lm, proposer = joint_task_lm(task), planted_proposer(task)
    again = make(task, storage=url, log_dir=tmp_path / "run", task_model=lm, prompt_model=proposer,
                 budget={"max_task_calls": 200, "max_prompt_calls": 6})
    again.compile(task.program(), trainset=task.train, valset=task.val)
    assert lm.engine.call_count == 0 and proposer.engine.call_count == 0
    assert again.report_.best_state == first.report_.best_state
    names = optuna.get_all_study_names(storage=url)
    stored = optuna.load_study(study_name=again.study_.study_name, storage=url)
    assert len(names) == len(set(names)) and len(stored.trials) == first_trials


def test_zero_demos_searches_instructions_only(task):
    opt = make(task, task_model=task.lm(), max_bootstrapped_demos=0, max_labeled_demos=0,
               budget={"max_task_calls": 200, "max_prompt_calls": 6})
    program = opt.compile(task.program(), trainset=task.train, valset=task.val)
    assert task.rule in program.signature.instructions and not program.demos
    assert set(opt.study_.trials[0].params) == {"self/instruction"}


@pytest.mark.parametrize("kwargs,error,message", [
    ({"teacher_settings": {}}, TypeError, "teacher_settings"),
    ({"max_errors": 3}, TypeError, "failure_score"),
    ({"auto": "huge"}, ValueError, "`auto`"),
    ({"auto": None}, ValueError, "`num_candidates` must be set"),
    ({"auto": "light", "num_candidates": 4}, ValueError, "`num_candidates` must be None"),
    ({"minibatch": "yes"}, TypeError, "`minibatch`"),
    ({"storage": 3}, ValueError, "`storage`"),
])
def test_mipro_names_it_cannot_honour_are_refused_by_name(kwargs, error, message):
    with pytest.raises(error, match=message):
        InstructionDemoSearch(lambda e, p, t=None: 1.0, **kwargs)


def test_mipro_code_runs_with_the_class_name_swapped(task):
    opt = InstructionDemoSearch(metric=task.metric, prompt_model=planted_proposer(task),
                                task_model=joint_task_lm(task), auto="light", max_bootstrapped_demos=2,
                                max_labeled_demos=2, num_threads=1, seed=9, verbose=False, init_temperature=1.0,
                                track_stats=True, budget={"max_task_calls": 300}, progress=False)
    program = opt.compile(task.program(), trainset=task.train, valset=task.val, minibatch_size=4,
                          minibatch_full_eval_steps=3, requires_permission_to_run=False)
    assert opt.report_.extra["plan"]["settings"]["minibatch_size"] == 4
    assert opt.report_.extra["plan"]["settings"]["full_eval_every"] == 3
    assert opt.minibatch_size == 35, "compile settings apply to that call only"
    assert program is not None
    with pytest.raises(TypeError, match="program_aware_proposer"):
        opt.compile(task.program(), trainset=task.train, program_aware_proposer=False)


def test_num_trials_is_run_exactly(task):
    opt = make(task, num_trials=7, budget={"max_task_calls": 2000})
    opt.compile(task.program(), trainset=task.train, valset=task.val)
    assert len(opt.report_.extra["joint"]["trials"]) == 7
    frame = opt.trials_dataframe()
    assert len(frame) >= 7 and "params_self/instruction" in frame.columns


def test_proposals_are_read_from_plain_text():
    assert read_instruction('Instruction: "Count the vowels."', 100) == "Count the vowels."
    assert read_instruction("x" * 101, 100) == ""
    assert read_instruction("Count the vowels of the word.\n\nThis instruction is clear and helpful.", 100) == \
        "Count the vowels of the word."


def test_the_thread_count_changes_neither_the_calls_nor_the_result(task):
    # Bootstrapping used to run examples in batches of num_threads, so more threads ran (and paid for)
    # examples past the point where enough traces were found, and the trials had less budget left.
    from dspy_icl_opt.testing import any_of

    def run(threads):  # the teacher (two labeled demos) passes, so its runs become bootstrapped demos
        lm = task.lm(knows=any_of(rule_in_instruction(task.rule), correct_demos(task.solve, at_least=2)))
        opt = make(task, task_model=lm, num_threads=threads, seed=3,
                   budget={"max_task_calls": 300, "max_prompt_calls": 12})
        program = opt.compile(task.program(), trainset=task.train, valset=task.val)
        joint = opt.report_.extra["joint"]
        return (opt.report_.spent["task"].calls, joint["demo_sets"], [t["choice"] for t in joint["trials"]],
                program.signature.instructions, [dict(d) for d in program.demos])

    one = run(1)
    assert any(s["name"].startswith("bootstrapped") for s in one[1]["self"]), "the bootstrap ran"
    assert run(4) == one


def test_a_proposal_keeps_its_instruction_without_the_meta_prompt_it_restates(task):
    # a 0.5B proposer appends the meta-prompt's own request in other words; the trials get the instruction only
    def respond(request):
        rule = f"For each word, {task.rule} and answer with the number."
        return format_chat_reply({"instruction": f"{rule} Provide one new instruction for this task, following the "
                                                 "style hint."})

    opt = make(task, prompt_model=scripted_lm(respond), budget={"max_task_calls": 120, "max_prompt_calls": 4})
    opt.compile(task.program(), trainset=task.train, valset=task.val)
    proposals = [i["text"] for i in opt.report_.extra["joint"]["instructions"]["self"] if i["origin"] == "proposal"]
    assert proposals, "the proposal was kept"
    assert all("style hint" not in text and task.rule in text for text in proposals), proposals


def test_each_predictor_gets_its_share_of_the_prompt_calls_whatever_the_retries():
    # Every other answer unusable: the first predictor's retries used to take the whole prompt cap (8 calls, 4
    # proposals) and the second got no proposal at all.
    task = planted_rule_task("vowels", train_size=16, val_size=8, seed=2)

    def solve(inputs):
        return task.solve(inputs) if "letters" in inputs else " ".join(inputs["question"])

    asked = []

    def respond(request):
        asked.append(1)
        if len(asked) % 2:
            return format_chat_reply({"instruction": "Ok"})  # a bare word: not an instruction, asked again
        return format_chat_reply({"instruction": f"Carefully do the task step {len(asked)} and answer with it."})

    opt = InstructionDemoSearch(task.metric, task_model=simulated_task_lm(solve=solve, knows=lambda v: True),
                                prompt_model=scripted_lm(respond), auto=None, num_candidates=6,
                                max_bootstrapped_demos=2, max_labeled_demos=2, progress=False,
                                budget={"max_task_calls": 400, "max_prompt_calls": 8})
    opt.compile(TwoStep(), trainset=task.train, valset=task.val)
    origins = {name: [row["origin"] for row in rows] for name, rows in opt.report_.extra["joint"]["instructions"].items()}
    assert origins["extract"].count("proposal") == 2 and origins["answer"].count("proposal") == 2
    assert opt.report_.spent["prompt"].calls == 8


@pytest.mark.parametrize("cap", [150, 300])
def test_minibatch_false_scores_every_trial_on_the_whole_search_set_under_a_cap(cap):
    # The plan used to shrink the trials' examples to fit more of them (8 of 30 at 150 calls), which
    # minibatch=False says not to do; it now runs fewer trials and says so.
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    opt = InstructionDemoSearch(big.metric, task_model=big.lm(), prompt_model=planted_proposer(big), minibatch=False,
                                budget={"max_task_calls": cap, "max_prompt_calls": 40}, progress=False)
    plan = opt.plan(big.program(), trainset=big.train, valset=big.val)
    assert plan.settings["minibatch_size"] == plan.settings["search_examples"] == 30
    assert plan.steps >= 1 and any("trial(s) fit the caps" in note for note in plan.notes)


def test_one_full_trial_plans_no_finalist_and_the_start_is_kept():
    # minibatch=False with one trial: that trial is the start, so no other configuration is fully evaluated; the plan
    # used to hold back a finalist's validation for a configuration that cannot exist
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    opt = InstructionDemoSearch(big.metric, task_model=big.lm(), prompt_model=planted_proposer(big), minibatch=False,
                                num_trials=1, progress=False)
    plan = opt.plan(big.program(), trainset=big.train, valset=big.val)
    assert plan.settings["finalists"] == 0 and "start + 0 finalist(s)" in plan.phases[-1].name
    assert plan.settings["validation_calls"] == plan.settings["validation_examples"]
    opt.compile(big.program(), trainset=big.train, valset=big.val)
    choice = opt.report_.extra["final_choice"]
    assert choice["chosen"] == choice["start"]


NEIGHBOUR_GROUPS = ("zor", "mip", "kal", "tev", "bun", "ghe", "dax", "wol")


def neighbour_task():
    """Each word's answer is its group (first three letters), known to the model only when a demo of the same
    group is shown: eight groups, at most two demos, so only demos picked per input (kNN) answer every word."""
    from dspy_icl_opt.testing import toy_metric

    def example(word):
        return dspy.Example(question=word, answer=word[:3]).with_inputs("question")

    train = [example(f"{g}{suffix}") for g in NEIGHBOUR_GROUPS for suffix in ("ana", "ila")]
    val = [example(f"{g}oto") for g in NEIGHBOUR_GROUPS]

    def knows(view):
        group = view.inputs.get("question", "")[:3]
        return any(demo.inputs.get("question", "").startswith(group) for demo in view.demos)

    def lm():
        return simulated_task_lm(solve=lambda inputs: inputs["question"][:3], knows=knows)

    return train, val, lm, toy_metric


def test_a_knn_demo_set_shows_each_input_its_nearest_demos_and_the_program_keeps_it(tmp_path):
    from dspy_icl_opt.demos import with_dynamic_demos
    from dspy_icl_opt.demos.dynamic import SELECTION_KEY, DynamicPredict

    train, val, lm, metric = neighbour_task()
    program = dspy.Predict(dspy.Signature("question -> answer", "Name the word's group."))
    settings = {"task_model": lm(), "auto": None, "num_candidates": 4, "max_bootstrapped_demos": 0,
                "max_labeled_demos": 2, "progress": False, "seed": 0,
                "prompt_model": scripted_lm(lambda r: format_chat_reply({"instruction": "Answer with the group."})),
                "budget": {"max_task_calls": 300, "max_prompt_calls": 4}}
    opt = InstructionDemoSearch(metric, **settings)
    compiled = opt.compile(program, trainset=train, valset=val)
    sets = opt.report_.extra["joint"]["demo_sets"]["self"]
    assert [s["name"] for s in sets][:3] == ["labeled", "mmr", "knn"] and sets[2]["size"] == len(train)
    assert isinstance(compiled, DynamicPredict) and SELECTION_KEY in compiled.demos[0]
    with dspy.context(lm=lm()):
        assert [compiled(question=ex.question).answer for ex in val] == [ex.answer for ex in val]
    # the influence fit saw, per example, the demos the rule picked (not the whole pool, not none)
    knn_trials = [t for t in opt.study_.trials if t.user_attrs.get("icl_dynamic")]
    assert knn_trials
    shown = next(iter(knn_trials[0].user_attrs["icl_dynamic"].values()))["self"]
    assert 1 <= len(shown) <= 2
    compiled.save(str(tmp_path / "program.json"))
    loaded = with_dynamic_demos(dspy.Predict(dspy.Signature("question -> answer", "Name the word's group.")))
    loaded.load(str(tmp_path / "program.json"))
    with dspy.context(lm=lm()):
        assert [loaded(question=ex.question).answer for ex in val] == [ex.answer for ex in val]

    # without the rule every candidate is a fixed set: two demos cover two groups of eight, and the program
    # stays a plain Predict
    plain = InstructionDemoSearch(metric, **{**settings, "task_model": lm(), "knn_demos": False})
    fixed = plain.compile(program, trainset=train, valset=val)
    assert "knn" not in [s["name"] for s in plain.report_.extra["joint"]["demo_sets"]["self"]]
    assert type(fixed) is dspy.Predict and plain.report_.best_scores.get("val", 0.0) <= 0.25


def test_num_trials_beyond_what_the_cap_fits_runs_the_planned_trials_and_validates_a_finalist():
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    opt = InstructionDemoSearch(big.metric, task_model=joint_task_lm(big), prompt_model=planted_proposer(big),
                                num_trials=6, budget={"max_task_calls": 120, "max_prompt_calls": 13}, progress=False)
    plan = opt.plan(big.program(), trainset=big.train, valset=big.val)
    assert plan.steps < 6 and plan.settings["finalists"] >= 1  # the cap fits fewer trials than asked
    opt.compile(big.program(), trainset=big.train, valset=big.val)
    trials = opt.report_.extra["joint"]["trials"]
    # before: 4 trials ran on the calls held for the full evaluation, so no finalist met the start
    assert len(trials) == plan.steps
    assert any("full" in row for row in trials)
    assert len(opt.report_.extra["final_choice"]["contenders"]) >= 2


def test_a_demo_survey_shorter_than_its_block_leaves_the_rest_to_the_sampler_and_the_instructions_one_block():
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    opt = InstructionDemoSearch(big.metric, task_model=joint_task_lm(big), prompt_model=planted_proposer(big),
                                max_bootstrapped_demos=0, max_labeled_demos=4, progress=False,
                                budget={"max_task_calls": 400, "max_prompt_calls": 13})
    opt.compile(big.program(), trainset=big.train, valset=big.val)
    rows = opt.report_.extra["joint"]["trials"]
    every = opt.minibatch_full_eval_steps
    kinds = len(opt.report_.extra["joint"]["demo_sets"]["self"])
    assert 1 + kinds < every  # labeled, mmr, knn after the start: the first block has room left
    assert [r["stage"] for r in rows[:every]] == ["start"] + ["demos"] * kinds + ["sampler"] * (every - 1 - kinds)
    survey = [i for i, r in enumerate(rows) if r["stage"] == "instructions"]
    # before: the survey began inside the first block and ran into the second minibatch
    assert survey and survey[0] == every and {i // every for i in survey} == {1}


def test_a_demo_set_shows_a_training_example_once_bootstrapped_or_labeled():
    from collections import Counter

    from dspy_icl_opt.optimizers.joint_space import demo_sets

    predictor = dspy.ChainOfThought("question -> answer").predict
    train = [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in [("a", "1"), ("b", "2")]]
    boot = [{"question": "a", "reasoning": "one vowel", "answer": "1"}]  # train[0]'s passing trace
    sets = demo_sets(predictor, "predict", train, boot, max_labeled=2, max_bootstrapped=1, count=4, seed=0)
    assert any(s.name.startswith("bootstrapped") for s in sets)
    for demo_set in sets:
        assert max(Counter(d["question"] for d in demo_set.demos).values()) == 1, demo_set.name
