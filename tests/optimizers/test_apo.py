"""APO with a scripted prompt model and a simulated task model (no real LM)."""

from __future__ import annotations

import json
import re
from typing import Any

import dspy
import pytest

from dspy_icl_opt.optimizers.apo import APO, MAX_IDLE_ROUNDS
from dspy_icl_opt.search.scorer import example_key
from dspy_icl_opt.search.surgery import ProgramState
from dspy_icl_opt.testing import (
    format_chat_reply,
    last_user_text,
    parse_field_blocks,
    planted_rule_task,
    rule_in_instruction,
    scripted_lm,
    simulated_task_lm,
    system_text,
)
from tests.optimizers.two_step import NotesThenAnswer as TwoStep

DECOY = "Answer the question carefully."
TINY = {"rounds": 2, "beam_size": 2, "minibatch_size": 6, "n_gradients": 2, "errors_per_gradient": 2,
        "gradients_per_error": 2, "mc_samples_per_step": 1, "max_expansion_factor": 4, "eval_rounds": 3,
        "eval_prompts_per_round": 3, "samples_per_eval": 6, "progress": False}


def responder(rule: str, log: list[dict[str, str]] | None = None):
    """The prompt model: the first reason names the planted rule, the second is a decoy.

    Replies depend only on the request, so a resumed run would get the same answers.
    """

    def respond(request: Any) -> str:
        system, fields = system_text(request), parse_field_blocks(last_user_text(request))
        if log is not None:
            log.append({"system": system, **fields})
        if "`reasons`" in system:
            return format_chat_reply({"reasons": f"1. The instruction never says to {rule}.\n2. It is too vague."})
        if "`new_instructions`" in system:
            fixed = f"Read the word and {rule}; reply with that number." if rule in fields["problem"] else DECOY
            return format_chat_reply({"new_instructions": fixed})
        if "`paraphrase`" in system:
            return format_chat_reply({"paraphrase": f"In other words: {fields['instruction']}"})
        raise AssertionError(f"unexpected meta-prompt: {system[:200]}")

    return respond


def interrupt_after(n: int, respond):
    """A responder that answers ``n`` requests, then stops the run as Ctrl-C would."""
    seen = []

    def reply(request: Any) -> str:
        if len(seen) >= n:
            raise KeyboardInterrupt
        seen.append(1)
        return respond(request)

    return reply


def shown_examples(failures: str) -> list[dict[str, str]]:
    """Parse the failures block of a gradient request: question, the step's answer, the expected answer."""
    pattern = r"Inputs:\n  question: (\S+)\nOutput of this step:\n  answer: (.*)\nExpected output:\n  answer: (.*)"
    return [{"question": q, "output": o, "expected": e} for q, o, e in re.findall(pattern, failures)]


def run_apo(task, *, task_lm=None, prompt_lm=None, student=None, **settings):
    options = {**TINY, **settings}
    apo = APO(task.metric, task_model=task_lm or task.lm(), prompt_model=prompt_lm or scripted_lm(responder(task.rule)),
              **options)
    program = apo.compile(student or task.program(), trainset=task.train, valset=task.val)
    return apo, program


def instruction_of(record, name: str = "self") -> str:
    return record.state[name]["instruction"]


@pytest.mark.parametrize("evaluator", ["ucb", "ucb-e", "successive_rejects", "successive_halving", "brute_force"])
def test_edit_carrying_the_planted_rule_wins_the_beam(evaluator):
    task = planted_rule_task("vowels", train_size=16, val_size=8, seed=0)
    apo, program = run_apo(task, evaluator=evaluator)
    report = apo.report_
    assert task.rule in program.signature.instructions.lower()
    best = report.candidate(report.best_candidate)
    assert best.origin in ("edit", "paraphrase") and best.scores["val"] == 1.0
    # The decoy edit was proposed too, and lost.
    assert any(instruction_of(c) == DECOY for c in report.candidates)
    round1 = report.extra["beams"][1]
    assert task.rule in instruction_of(report.candidate(round1["beam"][0])).lower()
    # The winner descends from an edit made for the gradient that named the rule.
    record = best
    while record.origin != "edit":
        record = report.candidate(record.parent)
    assert task.rule in record.meta["problem"]


def test_gradient_calls_are_shown_errors_only():
    task = planted_rule_task("vowels", train_size=16, val_size=6, seed=1)
    # Without the rule the model is still right on words of even length.
    lm = task.lm(wrong=lambda inputs: task.solve(inputs) if len(inputs["question"]) % 2 == 0 else "unsure")
    log: list[dict[str, str]] = []
    apo, _ = run_apo(task, task_lm=lm, prompt_lm=scripted_lm(responder(task.rule, log)), minibatch_size=10)
    gradient_requests = [entry for entry in log if "`reasons`" in entry["system"]]
    assert gradient_requests
    for entry in gradient_requests:
        for shown in shown_examples(entry["failures"]):
            assert shown["output"] != shown["expected"]
            assert len(shown["question"]) % 2 == 1
    minibatch = apo.report_.extra["beams"][1]["minibatch"]
    assert any(len(task.train[i].question) % 2 == 0 for i in minibatch), "the minibatch had correct answers too"


def test_one_minibatch_is_shared_by_the_beam_within_a_round(tmp_path):
    task = planted_rule_task("vowels", train_size=16, val_size=6, seed=2)
    # Even with the rule, words of 3, 6 or 9 letters stay wrong, so every beam member has errors.
    lm = simulated_task_lm(solve=lambda i: task.solve(i) if len(i["question"]) % 3 else "unsure",
                           knows=rule_in_instruction(task.rule))
    log: list[dict[str, str]] = []
    apo, _ = run_apo(task, task_lm=lm, prompt_lm=scripted_lm(responder(task.rule, log)), log_dir=tmp_path)
    report = apo.report_
    gradients = report.extra["gradients"]
    requests = [entry for entry in log if "`reasons`" in entry["system"]]
    assert len(gradients) == len(requests)
    for record, entry in zip(gradients, requests):  # what was recorded is what was shown
        assert [s["question"] for s in shown_examples(entry["failures"])] == [task.train[i].question
                                                                                for i in record["errors"]]
    scored = {json.loads(line)["key"] for line in (tmp_path / "journal.jsonl").read_text().splitlines()}
    round2 = report.extra["beams"][2]
    parents = report.extra["beams"][1]["beam"]
    assert {g["beam"] for g in gradients if g["round"] == 2} == {0, 1}
    for g in (g for g in gradients if g["round"] == 2):
        assert set(g["errors"]) <= set(round2["minibatch"])
    for parent in parents:
        state = ProgramState.from_dict(report.candidate(parent).state)
        assert all(f"{state.key()}:{example_key(task.train[i])}" in scored for i in round2["minibatch"])
        assert report.candidate(parent).n_scored["minibatch_round2"] == len(round2["minibatch"]) == 6


@pytest.mark.parametrize("cap", [{"max_prompt_calls": 4}, {"max_task_calls": 7}])
def test_budget_cap_stops_exactly(cap):
    task = planted_rule_task("vowels", train_size=16, val_size=6, seed=0)
    task_lm, prompt_lm = task.lm(), scripted_lm(responder(task.rule))
    paraphrase_lm = scripted_lm(responder(task.rule))
    apo, program = run_apo(task, task_lm=task_lm, prompt_lm=prompt_lm, paraphrase_model=paraphrase_lm, budget=cap)
    report = apo.report_
    if "max_prompt_calls" in cap:  # the plan sizes gradients and paraphrases to the prompt cap
        assert report.spent["prompt"].calls == 4 == prompt_lm.engine.call_count + paraphrase_lm.engine.call_count
        assert "val" in report.best_scores, "a spent prompt budget ends the search, not the final validation"
    else:
        assert report.stopped_by_budget
        assert report.spent["task"].calls == 7 == task_lm.engine.call_count
    assert isinstance(program, dspy.Predict)


def test_paraphrases_come_from_the_paraphrase_model_metered_as_prompt():
    task = planted_rule_task("vowels", train_size=16, val_size=6, seed=0)
    prompt_log: list[dict[str, str]] = []
    paraphrase_log: list[dict[str, str]] = []
    prompt_lm = scripted_lm(responder(task.rule, prompt_log))
    paraphrase_lm = scripted_lm(responder(task.rule, paraphrase_log))
    apo, _ = run_apo(task, prompt_lm=prompt_lm, paraphrase_model=paraphrase_lm, rounds=1)
    assert paraphrase_log and all("`paraphrase`" in entry["system"] for entry in paraphrase_log)
    assert prompt_log and not any("`paraphrase`" in entry["system"] for entry in prompt_log)
    assert apo.report_.spent["prompt"].calls == len(prompt_log) + len(paraphrase_log)


def test_resume_makes_no_repeated_lm_call(tmp_path):
    task = planted_rule_task("vowels", train_size=16, val_size=6, seed=0)

    def run(**settings):
        lms = {"task_lm": task.lm(), "prompt_lm": scripted_lm(responder(task.rule)),
               "paraphrase_model": scripted_lm(responder(task.rule))}
        apo, program = run_apo(task, **lms, **settings)
        return apo.report_, program, [lm.engine.call_count for lm in lms.values()]

    full, full_program, full_calls = run()
    # killed after 9 prompt-model answers (a cap would change the plan; a kill does not)
    lms = {"task_lm": task.lm(), "prompt_lm": scripted_lm(interrupt_after(9, responder(task.rule))),
           "paraphrase_model": scripted_lm(responder(task.rule))}
    with pytest.raises(KeyboardInterrupt):
        run_apo(task, **lms, log_dir=tmp_path)
    cut_calls = [lm.engine.call_count for lm in lms.values()]
    cut_calls[1] -= 1  # the request the kill interrupted was never answered: the resumed run asks it again
    resumed, program, resumed_calls = run(log_dir=tmp_path)
    assert [a + b for a, b in zip(cut_calls, resumed_calls)] == full_calls
    assert resumed.best_state == full.best_state and resumed.extra["beams"] == full.extra["beams"]
    assert program.signature.instructions == full_program.signature.instructions
    _, _, again = run(log_dir=tmp_path)
    assert again == [0, 0, 0]


def test_two_predictor_program_blames_the_answering_predictor():
    task = planted_rule_task("vowels", train_size=16, val_size=6, seed=3)
    apo, program = run_apo(task, student=TwoStep(), task_lm=task.lm(knows=rule_in_instruction(task.rule)))
    gradients = apo.report_.extra["gradients"]
    assert gradients and all(g["predictor"] == "answer" and g["blame"] == "trace" for g in gradients)
    assert task.rule in program.answer.signature.instructions.lower()
    assert program.draft.signature.instructions == "Take notes on the question."
    with dspy.context(lm=task.lm(knows=rule_in_instruction(task.rule))):
        assert task.score(program) == 1.0


def test_two_predictor_program_with_blame_each_edits_both():
    task = planted_rule_task("vowels", train_size=16, val_size=6, seed=3)
    apo, program = run_apo(task, student=TwoStep(), task_lm=task.lm(knows=rule_in_instruction(task.rule)),
                           blame="each", n_gradients=2)
    report = apo.report_
    assert {g["predictor"] for g in report.extra["gradients"]} == {"draft", "answer"}
    edited = {c.predictor for c in report.candidates if c.origin == "edit"}
    assert edited == {"draft", "answer"}
    assert task.rule in program.answer.signature.instructions.lower()


def test_reject_on_errors_keeps_the_children_that_fix_the_errors():
    task = planted_rule_task("vowels", train_size=16, val_size=6, seed=4)
    apo, _ = run_apo(task, rounds=1, max_expansion_factor=1, reject_on_errors=True, format_candidate=False, seed=1)
    children = [c for c in apo.report_.candidates if c.step == 1]
    assert len(children) == 1
    assert task.rule in instruction_of(children[0]).lower() and children[0].meta["error_score"] == 1.0


def test_the_starting_prompt_competes_in_the_final_choice():
    # The start is wrong on every training example and right on every validation one, every edit the
    # other way round: the bandit drops the start from the beam, and only the valset shows it is best.
    task = planted_rule_task("vowels", train_size=8, val_size=6, seed=0)
    start, val_words = task.program().signature.instructions, {ex.question for ex in task.val}
    knows = lambda view: (view.instruction == start) == (view.inputs["question"] in val_words)  # noqa: E731
    apo, program = run_apo(task, task_lm=simulated_task_lm(solve=task.solve, knows=knows), beam_size=1)
    report = apo.report_
    assert 0 not in report.extra["beams"][-1]["beam"], "the start fell out of the final beam"
    assert report.best_candidate == 0 and report.best_scores["val"] == 1.0
    assert program.signature.instructions == start


def test_report_records_the_beam_of_every_round():
    task = planted_rule_task("vowels", train_size=16, val_size=6, seed=0)
    apo, _ = run_apo(task, rounds=3)
    report = apo.report_
    beams = report.extra["beams"]
    assert [b["round"] for b in beams] == [0, 1, 2, 3]
    assert all(1 <= len(b["beam"]) <= 2 for b in beams)
    assert report.best_candidate in beams[-1]["beam"] and report.steps_completed == 3 and report.finished
    assert all(b["bandit"]["evaluations"] >= 0 for b in beams[1:])


@pytest.mark.parametrize(("settings", "message"), [
    ({"beam_size": 0}, r"`beam_size` must be an integer >= 1, but got 0"),
    ({"n_gradients": 0, "mc_samples_per_step": 0}, r"must not both be 0"),
    ({"evaluator": "thompson"}, r"`evaluator` must be one of"),
    ({"blame": "first"}, r"`blame` must be one of"),
    ({"c": -1.0}, r"`c` must be a number >= 0"),
    ({"temperature": -0.1}, r"`temperature` must be a number >= 0"),
])
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        APO(lambda ex, pred, trace=None: 1.0, **settings)


def test_a_non_integer_count_is_a_type_error_naming_the_default():
    with pytest.raises(TypeError, match=r"`rounds` must be an integer >= 1, but got float 1.5. The paper's default is 6."):
        APO(lambda ex, pred, trace=None: 1.0, rounds=1.5)


def test_paraphrase_model_type_is_checked():
    with pytest.raises(TypeError, match="`paraphrase_model` must be a dspy.BaseLM"):
        APO(lambda ex, pred, trace=None: 1.0, paraphrase_model="openai/gpt-4o-mini")


def test_task_budget_ending_mid_round_keeps_the_final_validation():
    task = planted_rule_task("vowels", train_size=16, val_size=6, seed=0)
    apo, _ = run_apo(task, budget={"max_task_calls": 20})
    report = apo.report_
    assert report.stopped_by_budget and report.spent["task"].calls <= 20
    assert "val" in report.best_scores, "the held-back calls paid for validating the last beam"


def test_edits_paid_for_before_the_prompt_budget_ends_are_kept():
    task = planted_rule_task("vowels", train_size=16, val_size=6, seed=0)
    apo, program = run_apo(task, rounds=1, budget={"max_prompt_calls": 2})
    assert apo.report_.stopped_by_budget and apo.report_.spent["prompt"].calls == 2
    assert task.rule in program.signature.instructions, "the paid edit naming the rule was scored and won"


@pytest.mark.parametrize("task_cap", [1000, None])
def test_a_spent_prompt_cap_ends_the_search_before_a_round_that_could_propose_nothing(task_cap):
    # The cap pays round 1's gradient, edit and paraphrase calls exactly; a round 2 would score its beam on a
    # minibatch (task calls) and then learn it cannot ask for a child. It used to, and to log "no beam prompt
    # made an error to learn from" as the reason the search ended; with or without a task cap.
    task = planted_rule_task("vowels", train_size=16, val_size=6, seed=0)
    spent = run_apo(task, rounds=1, beam_size=1, n_gradients=1, mc_samples_per_step=0)[0].report_.spent["prompt"].calls
    budget = {"max_prompt_calls": spent} | ({} if task_cap is None else {"max_task_calls": task_cap})
    apo, _ = run_apo(task, rounds=3, beam_size=1, n_gradients=1, mc_samples_per_step=0, budget=budget)
    report = apo.report_
    assert report.spent["prompt"].calls == spent and report.stopped_by_budget
    assert [b["round"] for b in report.extra["beams"]] == [0, 1], "no round without a prompt call to make"
    assert not any(label.startswith("minibatch_round2") for record in report.candidates for label in record.scores)


def test_at_a_users_budget_apo_runs_three_rounds_and_spends_the_task_cap():
    # One Predict, 40 train / 40 val, 400 task + 40 prompt calls: APO used to run one round.
    task = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    counter = iter(range(10_000))

    def respond(request):  # every reason, edit and paraphrase is new, and none states the rule
        system = system_text(request)
        n = next(counter)
        if "`reasons`" in system:
            return format_chat_reply({"reasons": f"1. It is vague ({n})."})
        if "`new_instructions`" in system:
            return format_chat_reply({"new_instructions": f"Answer the question with care, version {n}."})
        return format_chat_reply({"paraphrase": f"Please answer the question, variant {n}."})

    apo = APO(task.metric, task_model=task.lm(), prompt_model=scripted_lm(respond),
              budget={"max_task_calls": 400, "max_prompt_calls": 40}, progress=False)
    plan = apo.plan(task.program(), trainset=task.train, valset=task.val)
    assert plan.steps >= 3 and plan.task_calls <= 400 and plan.prompt_calls <= 40
    apo.compile(task.program(), trainset=task.train, valset=task.val)
    report = apo.report_
    assert report.extra["plan_vs_actual"]["steps"]["run"] >= 3
    assert 0.9 * 400 <= report.spent["task"].calls <= 400 and report.spent["prompt"].calls <= 40
    choice = report.extra["final_choice"]
    assert choice["examples"] == 40 + choice["unseen_training_examples"], "the whole valset, then unused examples"


def echoing_responder(rule: str):
    """The prompt model as the 0.5B model answers APO on date_understanding: the edit is right, but every
    paraphrase is a question about one example instead of an instruction."""
    base = responder(rule)

    def respond(request: Any) -> str:
        if "`paraphrase`" in system_text(request):
            return format_chat_reply({"paraphrase": "What is the answer to this word?"})
        return base(request)

    return respond


@pytest.mark.parametrize("check", ["strict", True, False])
def test_a_paraphrase_that_is_a_question_is_scored_unless_the_check_is_strict(check):
    task = planted_rule_task("vowels", train_size=16, val_size=6, seed=0)
    apo, _ = run_apo(task, prompt_lm=scripted_lm(echoing_responder(task.rule)), check_proposals=check,
                     max_retries=1)
    report = apo.report_
    scored = [instruction_of(c) for c in report.candidates]
    stats = report.extra["meta_prompts"]["Paraphrase"]
    if check == "strict":  # turned down, asked again, dropped
        assert "What is the answer to this word?" not in scored
        assert stats["usable"] == 0 and stats["unusable"] == stats["answers"] > 0
        assert report.extra["rejected_proposals"] == {"a question, not an instruction": stats["answers"]}
        assert "admitted_proposals" not in report.extra and report.params["check_proposals"] == "strict"
    elif check:  # a question can be the best prompt: scored, and counted apart
        assert "What is the answer to this word?" in scored
        assert stats["usable"] == stats["answers"] > 0 and "rejected_proposals" not in report.extra
        assert report.extra["admitted_proposals"] == {"a question, not an instruction": stats["answers"]}
        assert "check_proposals" not in report.params
    else:
        assert "What is the answer to this word?" in scored
        assert "rejected_proposals" not in report.extra and "admitted_proposals" not in report.extra
        assert report.params["check_proposals"] is False
    # the edits are instructions either way, and the planted rule still wins
    assert any(task.rule in text.lower() for text in scored)


def test_rounds_that_only_repeat_known_programs_end_the_search():
    # A proposer that repeats its reason, edit and paraphrase rebuilt programs already scored: they cost no task
    # call, so with rounds from the budget and no prompt cap the rounds never ended (a review: 400 prompt calls
    # and counting). Two such rounds in a row now end the search.
    task = planted_rule_task("vowels", train_size=16, val_size=8, seed=0)
    asked = []

    def respond(request):
        asked.append(1)
        if len(asked) > 200:  # ends a search that would not end otherwise (no answer, no child), and fails below
            return "no answer"
        system = system_text(request)
        if "`reasons`" in system:
            return format_chat_reply({"reasons": "1. It is too vague."})
        if "`new_instructions`" in system:
            return format_chat_reply({"new_instructions": "Answer the question carefully."})
        return format_chat_reply({"paraphrase": "Please answer the question with care."})

    apo = APO(task.metric, task_model=task.lm(), prompt_model=scripted_lm(respond),
              budget={"max_task_calls": 400}, progress=False)
    apo.compile(task.program(), trainset=task.train, valset=task.val)
    rounds = [b["round"] for b in apo.report_.extra["beams"]]
    assert len(asked) <= 200 and max(rounds) <= 1 + MAX_IDLE_ROUNDS
