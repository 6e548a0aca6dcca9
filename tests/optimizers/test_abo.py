"""ABO's own behaviour: failing steps come from the diagnoses, only that step is split, demonstrations
are checked by the metric, the planted sub-step is found, the ablation, budgets and resume."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import dspy
import pytest

from dspy_icl_opt.optimizers.abo import (
    ABO,
    DEMO_EXAMPLE_TRIES,
    DEMO_GIVE_UP,
    MAX_IDLE_ROUNDS,
    STRICT_SENTENCE,
    UNREADABLE_PROBE,
)
from dspy_icl_opt.optimizers.abo_prompts import Procedure, follows_every_step, parse_sub_steps, step_number
from dspy_icl_opt.testing import (
    format_chat_reply,
    last_user_text,
    never,
    parse_field_blocks,
    parse_prompt,
    planted_rule_task,
    rule_in_demos,
    scripted_lm,
    simulated_task_lm,
    system_text,
)

PROCEDURE = "1. Read the word.\n2. Look at its letters.\n3. Decide the answer.\n4. Write the answer."
SUB_STEPS = ["Count the vowels in the word (a, e, i, o, u).", "Write that count as a digit."]
OUTPUT_FIELD = re.compile(r"^\d+\. `(\w+)`", re.MULTILINE)


def meta_prompt(request: Any) -> str:
    """Which ABO meta-prompt a request is, from its first output field."""
    outputs = system_text(request).split("Your output fields are:", 1)[-1]
    first = OUTPUT_FIELD.search(outputs).group(1)
    return {"procedure": "procedure", "execution": "demo", "reason": "locate", "sub_steps": "split"}[first]


def echo_demo(fields: dict[str, str], answer: str | None = None) -> str:
    """A demonstration that carries out every step of the given procedure and ends in the gold answer."""
    procedure = Procedure.parse(fields["procedure"])
    lines = []
    for number, step in enumerate(procedure.steps, start=1):
        lines.append(f"Step {number}: {step.text}")
        lines.extend(f"Step {number}.{j}: {sub}" for j, sub in enumerate(step.sub_steps, start=1))
    gold = parse_field_blocks("[[ ## x ## ]]\n" + fields["correct_outputs"])["x"].split("answer:", 1)[-1].strip()
    return format_chat_reply({"execution": "\n".join(lines), "final_answer": gold if answer is None else answer})


class ABOScript:
    """A scripted prompt model for ABO that routes each meta-prompt to a handler and keeps a log.

    ``procedures`` is a tuple used in turn, or a function of the request's fields (stateless, for
    runs that are resumed: a resumed run starts a fresh script).
    """

    def __init__(self, *, locate: Callable[[dict], tuple[int, str]] = lambda f: (2, "it skipped a detail"),
                 demo: Callable[[dict, int], str] = lambda f, i: echo_demo(f), procedures=(PROCEDURE,),
                 sub_steps=SUB_STEPS) -> None:
        self.locate, self.demo, self.procedures, self.sub_steps = locate, demo, procedures, sub_steps
        self.log: list[tuple[str, dict[str, str]]] = []

    def __call__(self, request: Any) -> str:
        kind, fields = meta_prompt(request), parse_field_blocks(last_user_text(request))
        count = sum(1 for k, _ in self.log if k == kind)
        self.log.append((kind, fields))
        if kind == "procedure":
            procedures = self.procedures
            chosen = procedures(fields) if callable(procedures) else procedures[count % len(procedures)]
            return format_chat_reply({"procedure": chosen})
        if kind == "demo":
            return self.demo(fields, count)
        if kind == "locate":
            step, reason = self.locate(fields)
            return format_chat_reply({"reason": reason, "failing_step": step})
        return format_chat_reply({"sub_steps": "\n".join(f"{i}. {s}" for i, s in enumerate(self.sub_steps, 1))})

    def asked(self, kind: str) -> list[dict[str, str]]:
        return [fields for k, fields in self.log if k == kind]


@pytest.fixture(autouse=True)
def _fresh_dspy_settings():
    with dspy.context(lm=None, adapter=None):
        yield


@pytest.fixture
def task():
    return planted_rule_task("vowels", train_size=6, val_size=4, seed=1)


def make_abo(task, script, task_lm=None, **kwargs):
    settings = {"num_candidates": 1, "rounds": 1, "minibatch_size": 32, "errors_per_round": 8, "progress": False,
                "format_candidate": False}
    settings.update(kwargs)
    return ABO(task.metric, task_model=task_lm or task.lm(knows=never()), prompt_model=scripted_lm(script),
               **settings)


def cot() -> dspy.ChainOfThought:
    return dspy.ChainOfThought(dspy.Signature("question -> answer", "Answer the question."))


# ------------------------------------------------------------------------ localisation, refinement
def test_histogram_comes_from_localisation_and_only_that_step_is_split(task):
    hard = {ex.question for ex in task.train[:4]}

    def locate(fields):
        word = fields["task_input"].split("question:", 1)[1].strip()
        return (3, f"misjudged {word}") if word in hard else (1, "misread the word")

    script = ABOScript(locate=locate)
    abo = make_abo(task, script)
    abo.compile(cot(), trainset=task.train, valset=task.val)

    refinement = [e for e in abo.report_.extra["rounds"] if e["round"] == 1][0]
    assert refinement["histogram"] == {"1": 2, "3": 4}
    assert refinement["failing_step"] == 3
    assert sorted(refinement["reasons"]) == sorted(f"misjudged {w}" for w in hard)
    assert script.asked("split")[0]["step"] == "3. Decide the answer.", "only the failing step is shown to split"
    parent, child = Procedure.parse(PROCEDURE), Procedure.parse(refinement["procedure"])
    assert [s.text for s in child.steps] == [s.text for s in parent.steps]
    assert [s.sub_steps for s in child.steps] == [(), (), tuple(SUB_STEPS), ()]
    assert refinement["kept"] is False, "a refinement that does not score higher is not kept"


def test_localised_step_must_be_a_real_step(task):
    abo = make_abo(task, ABOScript(locate=lambda f: (9, "no such step")), max_retries=0)
    program = abo.compile(cot(), trainset=task.train, valset=task.val)
    refinement = [e for e in abo.report_.extra["rounds"] if e["round"] == 1][0]
    assert refinement["histogram"] == {} and refinement["candidate"] is None
    assert abo.report_.counters.unparsable_answers >= len(task.train)
    assert "2.1" not in program.predict.signature.instructions


# ----------------------------------------------------------------------------------- demonstrations
def demos_in_report(report) -> list[tuple[dict, dict]]:
    return [(c.state, demo) for c in report.candidates for s in c.state.values() for demo in s["demos"]]


def test_demonstration_failing_the_metric_is_never_installed(task):
    wrong_first_two = lambda fields, i: echo_demo(fields, answer="999" if i < 2 else None)  # noqa: E731
    abo = make_abo(task, ABOScript(demo=wrong_first_two), rounds=0, task_lm=task.lm(knows=lambda v: bool(v.demos)))
    program = abo.compile(cot(), trainset=task.train, valset=task.val)
    assert abo.report_.extra["rejected_demonstrations"] == 2
    [demo] = program.predict.demos
    gold = {ex.question: ex.answer for ex in task.train}
    assert demo.answer == gold[demo.question] and "Step 4:" in demo.reasoning
    for _, installed in demos_in_report(abo.report_):
        assert task.metric(dspy.Example(**installed), dspy.Prediction(answer=installed["answer"])) == 1.0


def test_without_a_passing_demonstration_the_predictor_goes_without(task):
    script = ABOScript(demo=lambda fields, i: echo_demo(fields, answer="999"))
    follows = lambda view: "Read the word" in view.instruction and len(view.inputs["question"]) % 2  # noqa: E731
    abo = make_abo(task, script, rounds=1, task_lm=task.lm(knows=follows))
    program = abo.compile(cot(), trainset=task.train, valset=task.val)
    assert program.predict.demos == []
    assert demos_in_report(abo.report_) == []
    assert program.predict.signature.instructions.endswith(STRICT_SENTENCE)
    # 3 examples tried for Step 0, 3 for the refinement: every one rejected
    assert abo.report_.extra["rejected_demonstrations"] == len(script.asked("demo")) == 6


def test_demonstration_that_skips_a_step_is_rejected():
    procedure = Procedure.parse(PROCEDURE).refine(2, SUB_STEPS)
    assert follows_every_step("Step 1: a\nStep 2.1: b\nStep 2.2: c\nStep 3: d\nStep 4: e", procedure)
    assert not follows_every_step("Step 1: a\nStep 2: b\nStep 3: d\nStep 4: e", procedure)
    assert not follows_every_step("Step 1: a\nStep 2.1: b\nStep 2.2: c\nStep 3: d\nStep 40: e", procedure)


def test_predict_gains_a_reasoning_output_for_the_steps(task, tmp_path):
    abo = make_abo(task, ABOScript(), rounds=0, task_lm=task.lm(knows=lambda v: bool(v.demos)), log_dir=tmp_path)
    program = abo.compile(task.program(), trainset=task.train, valset=task.val)
    assert list(program.signature.output_fields) == ["reasoning", "answer"]
    [demo] = program.demos
    assert "Step 4:" in demo.reasoning and program.signature.instructions == Procedure.parse(PROCEDURE).render()
    assert task.program().signature.output_fields.keys() == {"answer"}, "the student is untouched"
    loaded = dspy.load(str(tmp_path / "program"), allow_pickle=True)  # the whole program, field included
    assert list(loaded.signature.output_fields) == ["reasoning", "answer"] and loaded.demos[0].reasoning == demo.reasoning


def test_predict_carries_the_worked_example_in_its_instruction(task):
    abo = make_abo(task, ABOScript(), rounds=0, add_reasoning=False, task_lm=task.lm(knows=lambda v: bool(v.demos)))
    program = abo.compile(task.program(), trainset=task.train, valset=task.val)
    instruction = program.signature.instructions
    assert instruction.startswith(Procedure.parse(PROCEDURE).render())
    assert "A worked example" in instruction and "Step 3: Decide the answer." in instruction
    [demo] = program.demos
    assert set(demo.keys()) == {"question", "answer"} and f"question: {demo.question}" in instruction


def test_demonstration_false_installs_no_demo(task):
    script = ABOScript(locate=lambda f: (2, "skipped"))
    follows = lambda view: "Read the word" in view.instruction and len(view.inputs["question"]) % 2  # noqa: E731
    abo = make_abo(task, script, demonstration=False, rounds=1, task_lm=task.lm(knows=follows))
    student = cot()
    student.predict.demos = [dspy.Example(question="abc", reasoning="r", answer="1")]
    program = abo.compile(student, trainset=task.train, valset=task.val)
    assert program.predict.demos == []
    assert program.predict.signature.instructions == f"{Procedure.parse(PROCEDURE).render()}\n\n{STRICT_SENTENCE}"
    assert script.asked("demo") == [], "no demonstration is even written"
    assert all(not s["demos"] for c in abo.report_.candidates if c.origin != "seed" for s in c.state.values())
    assert script.asked("locate")[0]["demonstration"].startswith("(none")


# ------------------------------------------------------------------------------------ the search
def test_finds_the_planted_sub_step_through_the_demonstration(task):
    """The task model only succeeds when a demo shows the rule; the rule only appears as a sub-step."""
    task_lm = simulated_task_lm(solve=task.solve, knows=rule_in_demos(task.rule))
    abo = make_abo(task, ABOScript(locate=lambda f: (2, "did not count anything")), task_lm=task_lm, rounds=2)
    program = abo.compile(cot(), trainset=task.train, valset=task.val)
    report = abo.report_
    step0, round1, round2 = ([e for e in report.extra["rounds"] if e["round"] == r] for r in (0, 1, 2))
    assert step0[0]["scores"]["search"] == 0.0
    assert round1[0]["kept"] and round1[0]["scores"]["search"] == 1.0
    assert round2[0]["histogram"] == {} and not round2[0]["kept"], "nothing left to fix after round 1"
    assert report.best_scores["val"] == 1.0
    assert "   2.1 Count the vowels" in program.predict.signature.instructions
    [demo] = program.predict.demos
    assert "Step 2.1: Count the vowels" in demo.reasoning
    assert report.steps_completed == 2


def test_beam_keeps_the_best_initial_procedures(task):
    good = f"1. Read the word.\n2. {task.rule.capitalize()} and write the count."
    script = ABOScript(procedures=(PROCEDURE, good, PROCEDURE.replace("Read", "Take")))
    task_lm = simulated_task_lm(solve=task.solve, knows=rule_in_demos(task.rule))
    abo = make_abo(task, script, task_lm=task_lm, num_candidates=3, beam_size=2, rounds=0)
    program = abo.compile(cot(), trainset=task.train, valset=task.val)
    step0 = abo.report_.extra["rounds"]
    # each procedure runs without and with its demonstration: the good one's demo arm first, then on a tie
    # the earliest demo arm (the paper's method over its ablation)
    assert [e["kept"] for e in step0] == [False, True, False, True, False, False]
    assert program.predict.signature.instructions == Procedure.parse(good).render()


def test_two_predictors_optimized_in_turn_with_their_own_traces(task):
    class SpellThenCount(dspy.Module):
        def __init__(self):
            super().__init__()
            self.spell = dspy.ChainOfThought("question -> letters")
            self.count = dspy.ChainOfThought("question, letters -> answer")

        def forward(self, question):
            return self.count(question=question, letters=self.spell(question=question).letters)

    def solve(inputs):
        return " ".join(inputs["question"]) if "letters" not in inputs else task.solve(inputs)

    def knows(view):
        return "letters" in view.output_fields or any(task.rule in d.text.lower() for d in view.demos)

    script = ABOScript()
    abo = make_abo(task, script, task_lm=simulated_task_lm(solve=solve, knows=knows), rounds=1)
    program = abo.compile(SpellThenCount(), trainset=task.train, valset=task.val)
    assert program.spell.predict.demos == [], "`letters` is no label: its demonstration cannot be checked"
    spell_arms = [c for c in abo.report_.candidates if c.predictor == "spell.predict" and c.origin == "procedure"]
    assert spell_arms and all(c.state["spell.predict"]["instruction"].endswith(STRICT_SENTENCE) for c in spell_arms)
    assert program.spell.predict.signature.instructions == SpellThenCount().spell.predict.signature.instructions, \
        "spelling was already right: a procedure that only ties keeps the predictor as it was"
    [demo] = program.count.predict.demos
    assert demo.letters == " ".join(demo.question), "the demo's inputs come from the program's trace"
    located = script.asked("locate")
    assert "letters:" in located[0]["model_output"] and "letters:" in located[-1]["task_input"]
    steps = {c.predictor: c.step for c in abo.report_.candidates if c.origin == "procedure"}
    assert steps == {"spell.predict": 0, "count.predict": 2}
    assert abo.report_.best_scores["val"] == 1.0


# --------------------------------------------------------------------------------- budget, resume
@pytest.mark.parametrize("cap, role", [({"max_prompt_calls": 3}, "prompt"), ({"max_task_calls": 9}, "task")])
def test_budget_cap_stops_exactly(task, cap, role):
    task_lm = task.lm(knows=never())
    script = ABOScript()
    abo = make_abo(task, script, task_lm=task_lm, budget=cap, num_candidates=2, rounds=2)
    abo.compile(cot(), trainset=task.train, valset=task.val)
    report = abo.report_
    assert report.stopped_by_budget
    assert report.spent[role].calls == next(iter(cap.values()))
    engine_calls = len(script.log) if role == "prompt" else task_lm.engine.call_count
    assert engine_calls == report.spent[role].calls


class _Killed(ABOScript):
    """Answers ``n`` meta-prompts, then stops the run as Ctrl-C would (a cap would change the plan)."""

    def __init__(self, n: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n = n

    def __call__(self, request: Any) -> str:
        if len(self.log) >= self.n:
            raise KeyboardInterrupt
        return super().__call__(request)


@pytest.mark.parametrize("cap", [{"max_task_calls": 9}, {"killed_after_prompts": 4}, {"max_task_calls": 20}])
def test_resume_makes_no_repeated_call(task, tmp_path, cap):
    made = []

    def run(log_dir=None, budget=None, killed=None):
        task_lm = simulated_task_lm(solve=task.solve, knows=rule_in_demos(task.rule))
        made.append(task_lm)
        locate = lambda f: (2, "did not count")  # noqa: E731
        script = ABOScript(locate=locate) if killed is None else _Killed(killed, locate=locate)
        abo = make_abo(task, script, task_lm=task_lm, budget=budget, num_candidates=2, rounds=2, log_dir=log_dir)
        program = abo.compile(cot(), trainset=task.train, valset=task.val)
        return abo.report_, program, task_lm.engine.call_count, len(script.log)

    full, full_program, full_task, full_prompt = run()
    if "killed_after_prompts" in cap:
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, killed=cap["killed_after_prompts"])
        cut_task, cut_prompt = made[-1].engine.call_count, cap["killed_after_prompts"]
    else:
        cut, _, cut_task, cut_prompt = run(tmp_path, cap)
        assert cut.stopped_by_budget
    resumed, program, task_calls, prompt_calls = run(tmp_path)
    assert (cut_task + task_calls, cut_prompt + prompt_calls) == (full_task, full_prompt)
    assert resumed.best_state == full.best_state
    assert resumed.extra["rounds"] == full.extra["rounds"]
    assert program.dump_state() == full_program.dump_state()
    again, _, task_calls, prompt_calls = run(tmp_path)
    assert (task_calls, prompt_calls) == (0, 0) and again.best_state == full.best_state


# -------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("kwargs, error, message", [
    ({"rounds": -1}, ValueError, "`rounds` must be an integer >= 0, but got -1. Use 0 to keep"),
    ({"num_candidates": 0}, ValueError, "`num_candidates` must be an integer >= 1, but got 0."),
    ({"minibatch_size": 2.5}, TypeError, "`minibatch_size` must be an integer >= 1, but got float 2.5."),
    ({"errors_per_round": 0}, ValueError, "`errors_per_round` must be an integer >= 1"),
    ({"num_candidates": 2, "beam_size": 3}, ValueError, "`beam_size` must be <= `num_candidates` (2), but got 3."),
    ({"demonstration": "yes"}, TypeError, "`demonstration` must be True or False"),
    ({"temperature": -0.5}, ValueError, "`temperature` must be a number >= 0"),
])
def test_bad_settings_are_named(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        ABO(lambda e, p, t=None: 1.0, **kwargs)


def test_unlabeled_trainset_is_refused(task):
    abo = make_abo(task, ABOScript())
    unlabeled = [dspy.Example(question=ex.question).with_inputs("question") for ex in task.train]
    with pytest.raises(ValueError, match="gold outputs"):
        abo.compile(cot(), trainset=unlabeled, valset=task.val)


# ------------------------------------------------------------------------------------- parsing
def test_procedure_parsing_rendering_and_splice():
    text = "Here is how:\n**Step 1:** Read the word.\n2) Look at\n   its letters.\n3. Answer."
    procedure = Procedure.parse(text)
    assert [s.text for s in procedure.steps] == ["Read the word.", "Look at its letters.", "Answer."]
    refined = procedure.refine(2, ["Spell it.", "Mark the vowels."])
    assert Procedure.parse(refined.render()) == refined
    assert refined.render_step(2) == "2. Look at its letters.\n   2.1 Spell it.\n   2.2 Mark the vowels."
    assert refined.refine(2, ["a", "b", "c"]).steps[1].sub_steps == ("a", "b", "c"), "a step can be split again"
    assert Procedure.parse("Just answer the question.") is None
    assert Procedure.parse("1. Only one step.") is None
    with pytest.raises(ValueError, match="must be a step"):
        procedure.refine(4, ["a", "b"])


def test_sub_step_lists_and_step_numbers():
    assert parse_sub_steps("2.1 Spell it.\n2.2 Mark\nthe vowels.") == ["Spell it.", "Mark the vowels."]
    assert parse_sub_steps("a) one\n- two") == ["one", "two"]
    assert parse_sub_steps("1. only one") is None
    assert [step_number(v, 4) for v in (1, "4", " 2. ", 0, 5, True, "two", None)] == [1, 4, 2, None, None, None,
                                                                                       None, None]


def test_a_student_better_than_every_procedure_is_kept(task):
    from dspy_icl_opt.testing import rule_in_instruction, simulated_task_lm

    task_lm = simulated_task_lm(solve=task.solve, knows=rule_in_instruction(task.rule))
    student = dspy.ChainOfThought(dspy.Signature("question -> answer", f"Answer: {task.rule}."))
    abo = make_abo(task, ABOScript(), task_lm=task_lm, rounds=0)
    program = abo.compile(student, trainset=task.train, valset=task.val)
    assert program.predict.signature.instructions == f"Answer: {task.rule}."
    assert abo.report_.best_candidate == 0 and abo.report_.best_scores["val"] == 1.0


def test_procedures_paid_for_before_the_prompt_budget_ends_are_compared(task):
    knows = lambda view: "Look at its letters" in view.instruction  # noqa: E731
    abo = make_abo(task, ABOScript(), task_lm=simulated_task_lm(solve=task.solve, knows=knows),
                   demonstration=False, num_candidates=3, budget={"max_prompt_calls": 1})
    program = abo.compile(cot(), trainset=task.train, valset=task.val)
    assert abo.report_.stopped_by_budget and abo.report_.spent["prompt"].calls == 1
    assert "Look at its letters" in program.predict.signature.instructions


class _FreshSubSteps(ABOScript):
    """Every split answers with new sub-steps, so every refinement is a new candidate."""

    def __call__(self, request: Any) -> str:
        if meta_prompt(request) == "split":
            self.log.append(("split", {}))
            n = len(self.log)
            return format_chat_reply({"sub_steps": f"1. Look again ({n}).\n2. Check once more ({n})."})
        return super().__call__(request)


def test_at_a_users_budget_abo_refines_at_least_twice_and_spends_the_task_cap():
    # One Predict, 40 train / 40 val, 400 task + 40 prompt calls: ABO used to refine once.
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    abo = ABO(big.metric, task_model=big.lm(knows=never()), prompt_model=scripted_lm(_FreshSubSteps()),
              budget={"max_task_calls": 400, "max_prompt_calls": 40}, progress=False)
    plan = abo.plan(big.program(), trainset=big.train, valset=big.val)
    assert plan.steps >= 2 and plan.task_calls <= 400 and plan.prompt_calls <= 40
    abo.compile(big.program(), trainset=big.train, valset=big.val)
    report = abo.report_
    refinements = {e["round"] for e in report.extra["rounds"] if e["round"] > 0 and e["candidate"] is not None}
    assert len(refinements) >= 2
    assert 0.9 * 400 <= report.spent["task"].calls <= 400 and report.spent["prompt"].calls <= 40


def test_a_writer_that_cannot_demonstrate_is_not_asked_again_and_the_rounds_still_run():
    # As the 0.5B writer on date_understanding: every demonstration ends in a wrong answer. It used to take
    # the prompt budget (3 examples x 3 tries per demonstration) before the second refinement round.
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    script = _FreshSubSteps(demo=lambda fields, i: echo_demo(fields, answer="999"))
    abo = ABO(big.metric, task_model=big.lm(knows=never()), prompt_model=scripted_lm(script),
              budget={"max_task_calls": 400, "max_prompt_calls": 40}, progress=False)
    abo.compile(big.program(), trainset=big.train, valset=big.val)
    report = abo.report_
    assert report.extra["demonstrations_given_up"] == ["self"]
    assert len(script.asked("demo")) == DEMO_GIVE_UP * DEMO_EXAMPLE_TRIES
    refinements = {e["round"] for e in report.extra["rounds"] if e["round"] > 0 and e["candidate"] is not None}
    assert len(refinements) >= 2
    assert 0.9 * 400 <= report.spent["task"].calls <= 400 and report.spent["prompt"].calls <= 40


def test_sub_steps_from_a_paragraph_and_echoes_of_the_procedure():
    assert parse_sub_steps("Find the date. Then add one day to it.") == ["Find the date.", "Then add one day to it."]
    assert parse_sub_steps("3") is None
    echo = "1. Read the word.\n2. Look at its letters.\n3. Decide the answer."
    assert parse_sub_steps(echo, other_steps=["Read the word.", "Look at its letters.", "Decide the answer."]) is None


def test_demonstrations_the_writer_botches_spend_no_more_than_the_plan_gave_them():
    # As the 0.5B writer on hyperbaton: its demonstrations skip the steps, so each is retried (3 examples x 3
    # tries); 28 of 40 prompt calls went to them and one refinement round ran. Their share is now the plan's.
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    script = _FreshSubSteps(demo=lambda fields, i: format_chat_reply({"execution": "The answer is plain.",
                                                                      "final_answer": "1"}))
    abo = ABO(big.metric, task_model=big.lm(knows=never()), prompt_model=scripted_lm(script),
              budget={"max_task_calls": 400, "max_prompt_calls": 40}, progress=False)
    plan = abo.plan(big.program(), trainset=big.train, valset=big.val)
    allowance = plan.settings["num_candidates"] + plan.steps * abo.beam_size
    abo.compile(big.program(), trainset=big.train, valset=big.val)
    report = abo.report_
    assert len(script.asked("demo")) == report.extra["demonstration_calls"] <= allowance
    assert not any(e["demonstration"] for e in report.extra["rounds"])
    refinements = {e["round"] for e in report.extra["rounds"] if e["round"] > 0 and e["candidate"] is not None}
    assert len(refinements) >= 2
    assert report.spent["prompt"].calls <= 40


def test_a_round_whose_split_was_unusable_is_followed_by_another_round():
    # ABO on hyperbaton split 2 refined once of three planned rounds: round 1's split answers were unusable
    # and the loop took "no new candidate" for "nothing left to split". The next round asks again.
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    script = _FreshSubSteps()
    calls = {"split": 0}

    def writer(request):
        if meta_prompt(request) == "split":
            calls["split"] += 1
            if calls["split"] <= 1 + 2:  # round 1: the first try and its 2 retries all repeat the procedure
                script.log.append(("split", {}))
                return format_chat_reply({"sub_steps": PROCEDURE})
        return script(request)

    abo = ABO(big.metric, task_model=big.lm(knows=never()), prompt_model=scripted_lm(writer),
              budget={"max_task_calls": 400, "max_prompt_calls": 40}, progress=False)
    abo.compile(big.program(), trainset=big.train, valset=big.val)
    rounds = abo.report_.extra["rounds"]
    first = [e for e in rounds if e["round"] == 1]
    assert first and all(e["candidate"] is None for e in first), "round 1 had no usable split"
    later = {e["round"] for e in rounds if e["round"] > 1 and e["candidate"] is not None}
    assert later, "a later round asked for the split again and refined"
    assert abo.report_.spent["prompt"].calls <= 40 and abo.report_.spent["task"].calls <= 400


def test_a_round_that_only_repeats_known_candidates_counts_as_idle_and_the_search_ends():
    # A writer that gives the same split every round rebuilt candidates already scored: they cost no task call,
    # so with no prompt cap the rounds never ended (a review found it at 300 prompt calls and counting).
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    script = ABOScript()  # the same sub-steps for every split
    abo = ABO(big.metric, task_model=big.lm(knows=never()), prompt_model=scripted_lm(script),
              budget={"max_task_calls": 400}, progress=False)
    abo.compile(big.program(), trainset=big.train, valset=big.val)
    rounds = {e["round"] for e in abo.report_.extra["rounds"]}
    # round 1 splits each procedure; rounds that add nothing new end the search after MAX_IDLE_ROUNDS
    assert max(rounds) <= 1 + MAX_IDLE_ROUNDS
    assert len(script.asked("split")) <= (1 + MAX_IDLE_ROUNDS) * abo.beam_size * (abo.max_retries + 1)


def test_with_rounds_from_the_budget_an_earlier_predictor_leaves_the_later_ones_their_share():
    # A review found the first of two predictors refining 14 rounds under a 1000-call cap while the second, the
    # one making the errors, got only its start: the first now stops at the planned rounds.
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)

    class SpellThenCount(dspy.Module):
        def __init__(self):
            super().__init__()
            self.spell = dspy.Predict("question -> letters")
            self.count = dspy.Predict("question, letters -> answer")

        def forward(self, question):
            return self.count(question=question, letters=self.spell(question=question).letters)

    def solve(inputs):
        return " ".join(inputs["question"]) if "letters" not in inputs else big.solve(inputs)

    abo = ABO(big.metric, task_model=simulated_task_lm(solve=solve, knows=never()),
              prompt_model=scripted_lm(_FreshSubSteps()), budget={"max_task_calls": 1000, "max_prompt_calls": 80},
              progress=False)
    plan = abo.plan(SpellThenCount(), trainset=big.train, valset=big.val)
    abo.compile(SpellThenCount(), trainset=big.train, valset=big.val)
    rounds = abo.report_.extra["rounds"]
    spell = {e["round"] for e in rounds if e["predictor"] == "spell"}
    count = {e["round"] for e in rounds if e["predictor"] == "count" and e["candidate"] is not None}
    assert max(spell) <= plan.steps
    assert 0 in count and max(count) >= 1, "the second predictor gets procedures and at least one round"
    assert abo.report_.spent["task"].calls <= 1000 and abo.report_.spent["prompt"].calls <= 80


def test_demonstrations_are_written_on_training_examples_outside_the_search_set():
    # A demonstration of a search example the procedure got wrong would hand the arm that shows it that example.
    # Six seeds: each draws its first demonstration's example at random (23 of the 40 are outside the search set).
    from dspy_icl_opt.search.plan import search_subset

    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    inside = outside = 0
    for seed in range(6):
        abo = ABO(big.metric, task_model=big.lm(knows=never()), prompt_model=scripted_lm(_FreshSubSteps()),
                  budget={"max_task_calls": 400, "max_prompt_calls": 40}, progress=False, seed=seed)
        plan = abo.plan(big.program(), trainset=big.train, valset=big.val)
        searched = set(search_subset(len(big.train), plan.settings["search_examples"], abo.seed))
        abo.compile(big.program(), trainset=big.train, valset=big.val)
        shown = {e["demonstration"]["example_index"] for e in abo.report_.extra["rounds"] if e["demonstration"]}
        inside += len(shown & searched)
        outside += len(shown - searched)
    assert outside >= 6 and inside == 0


def test_a_spent_demonstration_allowance_is_not_the_writer_giving_up():
    # Every other try of the writer skips a step (asked again); the plan's allowance for writing demonstrations
    # then runs out, and the procedures after it went without one *counted as the writer's failure*: the report
    # named the predictor under "demonstrations_given_up" though every demonstration asked for was written.
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    tries = {"n": 0}

    def demo(fields, i):
        tries["n"] += 1
        if tries["n"] % 2:
            return format_chat_reply({"execution": "The answer is plain.", "final_answer": "1"})
        return echo_demo(fields)

    script = _FreshSubSteps(demo=demo)
    abo = ABO(big.metric, task_model=big.lm(knows=never()), prompt_model=scripted_lm(script),
              budget={"max_task_calls": 400, "max_prompt_calls": 40}, progress=False)
    plan = abo.plan(big.program(), trainset=big.train, valset=big.val)
    abo.compile(big.program(), trainset=big.train, valset=big.val)
    report = abo.report_
    assert report.extra["demonstration_calls"] == plan.settings["demonstration_calls"], "the allowance is spent"
    assert "demonstrations_given_up" not in report.extra
    assert any(e["demonstration"] for e in report.extra["rounds"])


def test_starting_over_removes_the_whole_program_an_earlier_run_saved(task, tmp_path):
    # log_dir/program (the whole program, saved when a reasoning output was added) stayed after a fresh run whose
    # result has no such output: dspy.load(log_dir/program) gave the earlier run's program.
    knows = lambda v: bool(v.demos)  # noqa: E731
    make_abo(task, ABOScript(), rounds=0, task_lm=task.lm(knows=knows), log_dir=tmp_path).compile(
        task.program(), trainset=task.train, valset=task.val)
    assert (tmp_path / "program" / "program.pkl").exists()
    again = make_abo(task, ABOScript(), rounds=0, add_reasoning=False, task_lm=task.lm(knows=knows), log_dir=tmp_path)
    again.compile(task.program(), trainset=task.train, valset=task.val, resume=False)
    assert not (tmp_path / "program").exists() and (tmp_path / "program.json").exists()


def test_starting_over_leaves_files_it_did_not_write(task, tmp_path):
    knows = lambda v: bool(v.demos)  # noqa: E731
    make_abo(task, ABOScript(), rounds=0, task_lm=task.lm(knows=knows), log_dir=tmp_path).compile(
        task.program(), trainset=task.train, valset=task.val)
    (tmp_path / "program" / "notes.txt").write_text("mine")
    again = make_abo(task, ABOScript(), rounds=0, add_reasoning=False, task_lm=task.lm(knows=knows), log_dir=tmp_path)
    again.compile(task.program(), trainset=task.train, valset=task.val, resume=False)
    assert (tmp_path / "program" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "program" / "program.pkl").exists()


# ------------------------------------------------------------------ demonstrations that break the answers
def copies_the_demonstration(plain_readable: Callable[[dict], bool] = lambda inputs: True):
    """A task model that, shown a demonstration, restates it and never reaches its output fields (the 0.5B model
    with the 1.5B writer's demonstrations: every answer cut at the token cap); without one it answers in format
    (wrongly) where ``plain_readable(inputs)``, else rambles too. Returns the LM and the questions asked with a demo."""
    asked_with_demo: list[str] = []

    def reply(request: Any) -> str:
        view = parse_prompt(request)
        if view.demos:
            asked_with_demo.append(view.inputs.get("question", ""))
            return "Step 1: The question is " + view.inputs.get("question", "") + " and the options are"
        if not plain_readable(view.inputs):
            return "I think it could be several things"
        return format_chat_reply({name: "0" for name in view.output_fields})

    return scripted_lm(reply, name="fake/task-model"), asked_with_demo


def test_a_demonstration_that_makes_every_answer_unreadable_is_run_on_the_probe_examples_only(task):
    task_lm, asked_with_demo = copies_the_demonstration()
    script = ABOScript()
    abo = make_abo(task, script, task_lm=task_lm, rounds=1)
    program = abo.compile(cot(), trainset=task.train, valset=task.val)
    report = abo.report_
    assert program.predict.demos == [] and demos_in_report(report) == [], "no arm shows the demonstration"
    # Step 0 and round 1 each wrote a demonstration (a success resets nothing: both count towards giving up)
    assert report.extra["unreadable_demonstrations"] == 2 == len(script.asked("demo"))
    assert report.extra["demonstrations_given_up"] == ["predict"]
    search = [c for c in report.candidates if c.origin == "procedure"][0]
    probe_questions = {ex.question for ex in task.train} & set(asked_with_demo)
    assert len(probe_questions) == UNREADABLE_PROBE < len(task.train), "only the first examples were run"
    assert set(asked_with_demo) == probe_questions and "search" in search.scores
    assert all(e["demonstration"] is None for e in report.extra["rounds"])


def test_a_writer_whose_demonstrations_break_the_answers_is_given_up_on():
    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    task_lm, _ = copies_the_demonstration()
    script = _FreshSubSteps()
    abo = ABO(big.metric, task_model=task_lm, prompt_model=scripted_lm(script),
              budget={"max_task_calls": 400, "max_prompt_calls": 40}, progress=False)
    abo.compile(big.program(), trainset=big.train, valset=big.val)
    report = abo.report_
    assert len(script.asked("demo")) == DEMO_GIVE_UP == report.extra["unreadable_demonstrations"]
    assert report.extra["demonstrations_given_up"] == ["self"]
    refinements = {e["round"] for e in report.extra["rounds"] if e["round"] > 0 and e["candidate"] is not None}
    assert len(refinements) >= 2 and report.spent["task"].calls <= 400 and report.spent["prompt"].calls <= 40


def test_a_demonstration_is_scored_in_full_when_the_procedure_alone_was_unreadable_there_too(task):
    first = {ex.question for ex in task.train[:4]}  # 4 of the 6: every 3 examples of the search set hold one
    task_lm, asked_with_demo = copies_the_demonstration(plain_readable=lambda inputs: inputs["question"] not in first)
    abo = make_abo(task, ABOScript(), task_lm=task_lm, rounds=0)
    abo.compile(cot(), trainset=task.train, valset=task.val)
    assert abo.report_.extra["unreadable_demonstrations"] == 0
    assert {ex.question for ex in task.train} <= set(asked_with_demo), "no evidence against the demonstration"
    assert len(demos_in_report(abo.report_)) == 1
