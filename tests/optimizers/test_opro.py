"""OPRO's own behaviour: the planted instruction wins, the meta-prompt is built as the paper says."""

from __future__ import annotations

import re

import dspy
import pytest

from dspy_icl_opt.optimizers.opro import OPRO
from dspy_icl_opt.optimizers.opro_prompts import (
    TrajectoryEntry,
    extract_instruction,
    render_exemplars,
    render_trajectory,
    shown_trajectory,
)
from dspy_icl_opt.search.placement import split_instructions
from dspy_icl_opt.testing import format_chat_reply, planted_rule_task, scripted_lm, simulated_task_lm
from tests.optimizers.two_step import LettersThenAnswer as TwoStep


def proposal(text: str) -> str:
    return format_chat_reply({"new_instruction": f"<INS>{text}</INS>"})


def step_of(request) -> int:
    """How many scored instructions the meta-prompt shows: grows by step, tells steps apart."""
    return len(re.findall(r"^score:$", request.messages[-1].text, re.MULTILINE))


@pytest.fixture
def task():
    return planted_rule_task("vowels", train_size=8, val_size=6, seed=1)


def planted_at_step_two(task):
    """Step 1 proposes useless instructions; step 2 proposes the one that carries the rule."""
    answers = iter([proposal("Think about the word."), proposal("Look at each letter."),
                    proposal("Be careful."), proposal(f"For each word, {task.rule} and answer with the number.")])
    return scripted_lm([lambda request: next(answers)] * 4)


def test_planted_instruction_found_at_step_two(task):
    opro = OPRO(task.metric, task_model=task.lm(), prompt_model=planted_at_step_two(task), steps=2,
                candidates_per_step=2, progress=False)
    program = opro.compile(task.program(), trainset=task.train, valset=task.val)
    assert task.rule in program.signature.instructions
    report = opro.report_
    trajectory = report.extra["trajectory"]["self"]
    winner = [e for e in trajectory if task.rule in e["instruction"]]
    assert len(winner) == 1 and winner[0]["step"] == 2 and winner[0]["score"] == 1.0
    assert all(e["score"] == 0.0 for e in trajectory if e is not winner[0])
    assert report.best_scores["val"] == 1.0
    assert report.candidate(report.best_candidate).step == 2


def test_meta_prompt_ascending_truncated_with_exemplars(task):
    seen_requests = []

    def respond(request):
        seen_requests.append(request)
        return proposal(f"Instruction number {len(seen_requests)}.")

    # Scores vary with the instruction: it is right only on words whose length is in the instruction.
    def knows(view):
        return str(len(view.inputs["question"])) in view.instruction

    lm = simulated_task_lm(solve=task.solve, knows=knows)
    opro = OPRO(task.metric, task_model=lm, prompt_model=scripted_lm(respond), steps=4, candidates_per_step=3,
                max_trajectory=5, num_exemplars=2, progress=False)
    opro.compile(task.program(), trainset=task.train, valset=task.val)
    last = seen_requests[-1].messages[-1].text
    scores = [int(s) for s in re.findall(r"score:\n(\d+)", last)]
    assert len(scores) == 5, "the trajectory is cut to max_trajectory"
    assert scores == sorted(scores), "the trajectory is shown in ascending order"
    assert last.count("<INS>") >= 2 and "Problem 2:" in last and "Problem 3:" not in last
    trajectory = opro.report_.extra["trajectory"]["self"]
    best_five = sorted(e["score"] for e in trajectory)[-5:]
    assert [round(s * 100) for s in best_five] == scores


def test_shown_trajectory_threshold_and_dedup():
    entries = [TrajectoryEntry(i, i, f"ins {i % 3}", "system", s) for i, s in enumerate([0.1, 0.5, 0.3, 0.9, 0.2])]
    shown = shown_trajectory(entries, max_entries=10, threshold=0.25)
    # "ins 0" shown once at its best (0.9, not 0.1); "ins 1" at 0.5 (its 0.2 is under the threshold)
    assert [(e.instruction, e.score) for e in shown] == [("ins 2", 0.3), ("ins 1", 0.5), ("ins 0", 0.9)]
    assert [e.score for e in shown_trajectory(entries, max_entries=2, threshold=0.0)] == [0.5, 0.9]
    assert "score:\n50" in render_trajectory(shown)


def test_exemplars_mark_the_instruction_position():
    ex = dspy.Example(question="abc", answer="1").with_inputs("question")
    assert render_exemplars([ex], "system").index("<INS>") < render_exemplars([ex], "system").index("question")
    q_end = render_exemplars([ex], "q_end")
    assert q_end.index("question: abc") < q_end.index("<INS>") < q_end.index("answer: 1")
    assert "output:\n<INS> answer: 1" in render_exemplars([ex], "a_begin")
    # a slot on a line of its own is labelled: a bare "<INS>" opening a problem reads as a problem to write
    assert "instruction: <INS>\ninput:" in render_exemplars([ex], "system")
    assert "instruction: <INS>\noutput:" in q_end


def test_extract_instruction_cuts_the_slot_label_an_answer_repeats():
    assert extract_instruction("<INS>instruction: Count the vowels.</INS>") == "Count the vowels."
    assert extract_instruction("instruction: Count the vowels.") == "Count the vowels."
    # an echoed problem that opens with the slot's line is not an instruction
    assert extract_instruction("<INS>\ninstruction: <INS>\ninput:\nquestion: abc\noutput:\nanswer: 1\n</INS>",
                               ("question", "answer")) == ""
    # the answer ends where a next problem's slot line starts
    assert extract_instruction("<INS>Count the vowels.\ninstruction: next</INS>") == "Count the vowels."


def test_extract_instruction_between_tags():
    assert extract_instruction('Sure! <INS>"Count them."</INS> Good luck') == "Count them."
    assert extract_instruction("no tags here") == "no tags here"
    assert extract_instruction("<INS>cut short") == "cut short"


def test_duplicates_and_overlong_proposals_are_dropped(task):
    replies = [proposal("Same idea."), proposal("same   IDEA!"), proposal("Answer with care. " * 40), proposal(task.rule)]
    opro = OPRO(task.metric, task_model=task.lm(), prompt_model=scripted_lm(replies), steps=1,
                candidates_per_step=4, format_candidate=False, progress=False)
    opro.compile(task.program(), trainset=task.train, valset=task.val)
    assert opro.report_.extra["dropped_proposals"] == {"duplicate": 1, "too_long": 1}
    assert len(opro.report_.candidates) == 3  # seed + two distinct proposals


def test_plain_text_answers_without_markers_or_tags_are_read(task):
    # A small model often writes just the instruction: no [[ ## field ## ]] marker, no <INS> tags.
    opro = OPRO(task.metric, task_model=task.lm(), prompt_model=scripted_lm(lambda r: f"To answer, {task.rule}."),
                steps=1, candidates_per_step=1, format_candidate=False, progress=False)
    program = opro.compile(task.program(), trainset=task.train, valset=task.val)
    assert opro.report_.extra["meta_prompts"]["ProposeInstruction"] == {"answers": 1, "usable": 1, "unusable": 0}
    assert program.signature.instructions == f"To answer, {task.rule}."


def test_unparsable_answers_are_retried_then_skipped(task):
    opro = OPRO(task.metric, task_model=task.lm(), prompt_model=scripted_lm(lambda r: "<INS></INS>"), steps=1,
                candidates_per_step=2, max_retries=1, progress=False)
    program = opro.compile(task.program(), trainset=task.train, valset=task.val)
    assert opro.report_.counters.unparsable_answers >= 2
    assert opro.report_.extra["dropped_proposals"] == {"unparsable": 2}
    assert program.signature.instructions == task.program().signature.instructions


def test_two_predictor_program_gets_an_instruction_each(task):
    def respond(request):
        if "Outputs:\n- letters" in request.messages[-1].text:  # the meta-prompt for the extractor
            return proposal("Write the letters separated by spaces.")
        return proposal(f"Use the letters: {task.rule}.")

    def spaced(word):
        return " ".join(word)

    def solve(inputs):
        return task.solve(inputs) if "letters" in inputs else spaced(inputs["question"])

    def knows(view):
        if "letters" in view.output_fields:  # the extractor needs its own instruction fixed
            return "separated by spaces" in view.instruction
        question = view.inputs["question"]
        letters_ok = view.inputs.get("letters") == spaced(question)
        # with good letters, short words come out right anyway; long ones need the rule too
        return letters_ok and (task.rule in view.instruction or len(question) <= 5)

    lm = simulated_task_lm(solve=solve, knows=knows)
    opro = OPRO(task.metric, task_model=lm, prompt_model=scripted_lm(respond), steps=2, candidates_per_step=1,
                progress=False)
    program = opro.compile(TwoStep(), trainset=task.train, valset=task.val)
    assert program.extract.signature.instructions == "Write the letters separated by spaces."
    assert task.rule in program.answer.signature.instructions
    steps = {c.predictor: c.step for c in opro.report_.candidates if c.origin == "proposal"}
    assert steps == {"extract": 1, "answer": 2}, "steps alternate between predictors"


def test_q_end_position_wins_when_only_it_works(task):
    def knows(view):  # the model only follows text placed after the inputs
        return task.rule in view.user_text and task.rule not in view.instruction

    lm = simulated_task_lm(solve=task.solve, knows=knows)
    replies = [proposal(f"Please {task.rule}."), proposal(f"Now {task.rule}.")]
    opro = OPRO(task.metric, task_model=lm, prompt_model=scripted_lm(replies), steps=1, candidates_per_step=2,
                positions=("system", "q_end"), progress=False)
    program = opro.compile(task.program(), trainset=task.train, valset=task.val)
    base, text, position = split_instructions(program.signature.instructions)
    assert position == "q_end" and text == f"Now {task.rule}." and base == "Answer the question."
    assert opro.report_.extra["positions"]["self"] == {"system": 0.0, "q_end": 1.0}


def test_the_start_moved_to_another_position_can_win_the_final_choice(task):
    # The start's words at q_end are a program of their own; they were left out of the finalists with the start.
    def knows(view):  # the model only follows text placed after the inputs
        return task.rule in view.user_text

    lm = simulated_task_lm(solve=task.solve, knows=knows)
    replies = [proposal(f"Try variant {i}.") for i in range(2)]
    opro = OPRO(task.metric, task_model=lm, prompt_model=scripted_lm(replies), steps=1, candidates_per_step=2,
                positions=("system", "q_end"), format_candidate=False, progress=False)
    program = opro.compile(task.program(instructions=f"Please {task.rule}."), trainset=task.train, valset=task.val)
    base, text, position = split_instructions(program.signature.instructions)
    assert position == "q_end" and text == f"Please {task.rule}."
    assert opro.report_.best_scores["val"] == 1.0


def test_accumulative_exemplars_show_the_most_often_wrong(task):
    hard = {ex.question for ex in task.train[:3]}
    requests = []

    def respond(request):
        requests.append(request.messages[-1].text)
        return proposal(f"Variant {len(requests)}")

    lm = simulated_task_lm(solve=task.solve, knows=lambda view: view.inputs["question"] not in hard)
    opro = OPRO(task.metric, task_model=lm, prompt_model=scripted_lm(respond), steps=2, candidates_per_step=1,
                num_exemplars=3, exemplar_selection="accumulative_most_frequent", progress=False)
    opro.compile(task.program(), trainset=task.train, valset=task.val)
    shown = set(re.findall(r"question: (\w+)", requests[-1]))
    assert shown == hard


def test_copro_drop_in():
    task = planted_rule_task("reverse", train_size=6, val_size=4, seed=2)
    prompt_lm = scripted_lm(lambda r: proposal(f"Please {task.rule}."))
    opro = OPRO(metric=task.metric, prompt_model=prompt_lm, breadth=2, depth=1, init_temperature=1.2,
                track_stats=True, progress=False)
    assert (opro.candidates_per_step, opro.steps, opro.temperature) == (2, 1, 1.2)
    with dspy.context(lm=task.lm()):
        program = opro.compile(task.program(), trainset=task.train, eval_kwargs={"num_threads": 2,
                                                                               "display_progress": False})
    assert task.rule in program.signature.instructions
    with pytest.raises(TypeError, match="unexpected argument 'verbose'"):
        OPRO(metric=task.metric, verbose=True)
    with pytest.raises(TypeError, match="display_table"):
        opro.compile(task.program(), trainset=task.train, eval_kwargs={"display_table": 5})


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": -1}, "`steps` must be an integer >= 0"),
    ({"candidates_per_step": 0}, "`candidates_per_step` must be an integer >= 1"),
    ({"positions": ("middle",)}, "`positions` must be distinct values"),
    ({"exemplar_selection": "best"}, "`exemplar_selection` must be one of"),
    ({"scoring": "half"}, "`scoring` must be one of"),
    ({"racing_alpha": 1.5}, "`racing_alpha` must be a number in [0, 1]"),
    ({"temperature": float("nan")}, "`temperature` must be a number >= 0"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        OPRO(lambda e, p, t=None: 1.0, **kwargs)


def test_no_task_model_is_a_clear_error(task):
    opro = OPRO(task.metric, prompt_model=scripted_lm(["x"]), progress=False)
    with pytest.raises(ValueError, match="No task model"):
        opro.compile(task.program(), trainset=task.train)


def test_the_starting_instruction_competes_in_the_final_choice(task):
    # The start is wrong on every training example and right on every validation one, every proposal
    # the other way round: the search ranks the start last, and only the valset shows it is best.
    start, val_words = task.program().signature.instructions, {ex.question for ex in task.val}
    knows = lambda view: (view.instruction == start) == (view.inputs["question"] in val_words)  # noqa: E731
    opro = OPRO(task.metric, task_model=simulated_task_lm(solve=task.solve, knows=knows),
                prompt_model=planted_at_step_two(task), steps=2, candidates_per_step=2, final_candidates=1,
                progress=False)
    program = opro.compile(task.program(), trainset=task.train, valset=task.val)
    report = opro.report_
    assert max(c.scores["train"] for c in report.candidates) == 1.0, "the search preferred a proposal"
    assert report.best_candidate == 0 and report.best_scores == {"train": 0.0, "val": 1.0}
    assert program.signature.instructions == start


def test_budget_keeps_room_for_the_final_validation(task):
    opro = OPRO(task.metric, task_model=task.lm(), prompt_model=planted_at_step_two(task), steps=5,
                candidates_per_step=2, final_candidates=4, format_candidate=False,
                budget={"max_task_calls": 56}, progress=False)
    opro.compile(task.program(), trainset=task.train, valset=task.val)
    report = opro.report_
    plan = report.extra["plan"]
    # 4 finalists and the start would take 30 of 56 calls: the plan cuts finalists, never the start's validation
    assert plan["settings"]["finalists"] == 2 and plan["settings"]["validation_examples"] == 6
    assert report.stopped_by_budget and report.spent["task"].calls <= 56
    assert report.extra["final_choice"]["examples"] == 6, "the start and the finalists were validated in full"
    assert "val" in report.candidates[0].scores


def test_prompt_budget_end_still_validates(task):
    opro = OPRO(task.metric, task_model=task.lm(), prompt_model=planted_at_step_two(task),
                candidates_per_step=2, budget={"max_prompt_calls": 3}, progress=False)
    opro.compile(task.program(), trainset=task.train, valset=task.val)
    report = opro.report_
    assert report.stopped_by_budget and report.spent["prompt"].calls == 3
    assert "val" in report.best_scores


def test_minibatch_budget_end_inside_a_step_still_validates(task):
    opro = OPRO(task.metric, task_model=task.lm(), prompt_model=planted_at_step_two(task), steps=2,
                candidates_per_step=2, scoring="minibatch", minibatch_size=4, final_candidates=1,
                budget={"max_task_calls": 20}, progress=False)
    opro.compile(task.program(), trainset=task.train, valset=task.val)
    report = opro.report_
    assert report.stopped_by_budget and "val" in report.best_scores
    assert report.spent["task"].calls <= 20


def test_answers_paid_before_the_prompt_budget_ends_are_scored(task):
    replies = [proposal("Be careful."), proposal("Look closely."), proposal(f"Please {task.rule}.")]
    opro = OPRO(task.metric, task_model=task.lm(), prompt_model=scripted_lm(replies), steps=1,
                candidates_per_step=4, budget={"max_prompt_calls": 3}, progress=False)
    program = opro.compile(task.program(), trainset=task.train, valset=task.val)
    assert task.rule in program.signature.instructions


def test_raced_out_candidates_stay_in_the_trajectory_and_are_not_proposed_again(task):
    replies = iter([proposal("Bad idea."), proposal(f"Please {task.rule}."), proposal("Bad idea."),
                    proposal("Another bad idea.")])
    opro = OPRO(task.metric, task_model=task.lm(), prompt_model=scripted_lm(lambda r: next(replies)), steps=2,
                candidates_per_step=2, scoring="racing", racing_block=2, progress=False)
    opro.compile(task.program(), trainset=task.train, valset=task.val)
    trajectory = opro.report_.extra["trajectory"]["self"]
    assert [e["instruction"] for e in trajectory].count("Bad idea.") == 1
    assert opro.report_.extra["dropped_proposals"] == {"duplicate": 1}
    seed = opro.report_.candidate(0)
    assert "raced_out_at_block" not in seed.meta or seed.id not in {e["candidate"] for e in trajectory}


def test_extract_ignores_an_echoed_slot_marker():
    assert extract_instruction("I think <INS> is where it goes. <INS>Count vowels.</INS>") == "Count vowels."
    assert extract_instruction("<INS>Use <INS> here.") == "here."
    assert extract_instruction("<INS>a</INS> then <INS>b <INS></INS>") == "a"


def test_positions_refuse_an_adapter_that_ignores_them(task):
    opro = OPRO(task.metric, task_model=task.lm(), prompt_model=scripted_lm(["x"]), positions=("system", "q_end"),
                progress=False)
    with dspy.context(adapter=dspy.ChatAdapter()):
        with pytest.raises(ValueError, match="need dspy_icl_opt.PlacementAdapter"):
            opro.compile(task.program(), trainset=task.train, valset=task.val)


def test_a_proposer_that_only_repeats_itself_ends_the_search(task):
    # Without a prompt cap, only the task cap would bound the loop, and duplicates cost no task call.
    opro = OPRO(task.metric, task_model=task.lm(), prompt_model=scripted_lm(lambda r: "<INS>Same idea.</INS>"),
                format_candidate=False, budget={"max_task_calls": 400}, progress=False)
    opro.compile(task.program(), trainset=task.train, valset=task.val)
    report = opro.report_
    assert report.extra["dropped_proposals"]["duplicate"] > 0
    assert report.steps_completed <= 1 + 1 + 3, "one new instruction, then three idle steps at most"


def test_at_a_users_budget_opro_runs_five_steps_and_spends_the_task_cap(task):
    # The user's case: one Predict, 40 train / 40 val, 400 task + 40 prompt calls. It used to run 0 steps.
    from dspy_icl_opt.testing import planted_rule_task
    from tests.contract.suite import rule_stating_responder

    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    distinct = iter(range(10_000))
    respond = rule_stating_responder("guess")  # never states the rule: every proposal is new, none is right
    opro = OPRO(big.metric, task_model=big.lm(), prompt_model=scripted_lm(lambda r: respond(r).replace(
                "guess", f"guess {next(distinct)}")), budget={"max_task_calls": 400, "max_prompt_calls": 40},
                progress=False)
    plan = opro.plan(big.program(), trainset=big.train, valset=big.val)
    assert plan.steps >= 5 and plan.task_calls <= 400 and plan.prompt_calls <= 40
    retries = [note for note in plan.notes if "asked again up to 2 time(s)" in note]
    assert retries and f"up to {min(40, 3 * plan.prompt_calls)} prompt calls" in retries[0] and retries[0] in plan.render()
    opro.compile(big.program(), trainset=big.train, valset=big.val)
    report = opro.report_
    actual = report.extra["plan_vs_actual"]
    assert actual["steps"]["run"] >= 5
    assert 0.9 * 400 <= report.spent["task"].calls <= 400 and report.spent["prompt"].calls <= 40
    choice = report.extra["final_choice"]
    assert choice["examples"] == 40 + choice["unseen_training_examples"], "the start and the finalists saw the whole valset"


def test_task_calls_a_prompt_cap_left_unspent_validate_on_unused_training_examples():
    # When refusals spend the prompt cap early (seen on hyperbaton: 264 of 400 task calls), the calls left
    # go to the final choice: the valset, then training examples no candidate was scored on and no
    # meta-prompt showed.
    from dspy_icl_opt.testing import planted_rule_task

    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    opro = OPRO(big.metric, task_model=big.lm(), prompt_model=_mostly_refusals(),
                budget={"max_task_calls": 400, "max_prompt_calls": 40}, progress=False)
    opro.compile(big.program(), trainset=big.train, valset=big.val)
    report = opro.report_
    choice = report.extra["final_choice"]
    assert report.stopped_by_budget and report.spent["prompt"].calls == 40
    assert sum(report.extra["rejected_proposals"].values()) >= 20
    assert choice["unseen_training_examples"] > 0 and choice["examples"] == 40 + choice["unseen_training_examples"]
    search_set = report.extra["plan"]["settings"]["search_examples"]
    assert report.spent["task"].calls >= 0.9 * 400 or choice["unseen_training_examples"] == 40 - search_set, \
        "the calls left were spent, or every unused example was"
    assert report.spent["task"].calls <= 400
    start = next(c for c in report.candidates if c.origin == "seed")
    assert start.n_scored["val"] == choice["examples"]


def _mostly_refusals():
    calls = iter(range(10_000))
    from tests.contract.suite import rule_stating_responder

    respond = rule_stating_responder("guess")

    def proposer(request):  # three answers in four are a refusal, which the proposal check turns down
        n = next(calls)
        reply = respond(request).replace("guess", f"guess {n}")
        return reply if n % 4 == 0 else re.sub(r"<INS>.*?</INS>", f"<INS>I'm sorry, I cannot write that ({n}).</INS>",
                                               reply)

    return scripted_lm(proposer)


@pytest.mark.parametrize("capped", [True, False])
def test_calls_left_after_the_finalists_validate_the_next_best_candidates(capped):
    from dspy_icl_opt.testing import planted_rule_task

    big = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    budget = {"max_task_calls": 400, "max_prompt_calls": 12} if capped else {"max_prompt_calls": 12}
    opro = OPRO(big.metric, task_model=big.lm(), prompt_model=_mostly_refusals(), budget=budget,
                final_candidates=2, progress=False)
    opro.compile(big.program(), trainset=big.train, valset=big.val)
    report = opro.report_
    choice = report.extra["final_choice"]
    complete = [c for c in report.candidates if c.origin != "seed" and "train" in c.scores]
    validated = [row["candidate"] for row in choice["contenders"]]
    if not capped:  # nothing is left to spend: the valset and the planned finalists only
        assert choice["reserves_validated"] == [] and choice["examples"] == 40 and len(validated) <= 3
        return
    assert choice["reserves_validated"], "the calls left paid for more than the planned finalists"
    assert len(validated) == 3 + len(choice["reserves_validated"]) and len(complete) >= len(validated) - 1
    ranked = [c.id for c in sorted(complete, key=lambda c: (-c.scores["train"], c.id))]
    assert validated[1:] == ranked[: len(validated) - 1], "in rank order"
    left = 400 - report.spent["task"].calls
    assert 0 <= left < choice["examples"] or len(validated) - 1 == len(complete), "stopped when no more was paid for"


@pytest.mark.parametrize("answer, expected", [
    # what the 0.5B proposer wrote on disambiguation_qa (instruction_ceiling.py, split 0)
    ("Answer the following multiple-choice question. Reply with the exact text of the correct option.  score: 17",
     "Answer the following multiple-choice question. Reply with the exact text of the correct option."),
    ("input: question: In the following sentences, explain the antecedent of the", ""),
    ("answer: the carpenter made a desk for the clerk and gave him a discount.", ""),
    ("<INS>text:\nBe concise.\nscore:\n40</INS>", "Be concise."),
    ("<INS>Solve it step by step.\n\nProblem 1:\ninput:\nquestion: 2+2</INS>", "Solve it step by step."),
    ("score: 40", ""),
    ("Read the question: then answer in one word.", "Read the question: then answer in one word."),
])
def test_echoed_meta_prompt_scaffolding_is_cut_or_rejected(answer, expected):
    assert extract_instruction(answer, ("question", "options", "answer")) == expected


def test_an_echoed_problem_is_asked_again_not_scored(task):
    echo = proposal("input:\nquestion: abc")  # the exemplar copied back: not an instruction
    opro = OPRO(task.metric, task_model=task.lm(), prompt_model=scripted_lm([echo, proposal("Count vowels.")]),
                steps=1, candidates_per_step=1, format_candidate=False, progress=False)
    opro.compile(task.program(), trainset=task.train, valset=task.val)
    stats = opro.report_.extra["meta_prompts"]["ProposeInstruction"]
    assert (stats["answers"], stats["usable"], stats["unusable"]) == (2, 1, 1)
    texts = [c.state[n]["instruction"] for c in opro.report_.candidates for n in c.state]
    assert "Count vowels." in texts and not any(t.startswith("input") for t in texts)


def test_minibatch_finalists_are_the_incumbents_not_the_luckiest_minibatch(monkeypatch):
    # Means over different minibatches do not rank: an instruction scored only on an easy minibatch has a higher
    # mean than the incumbent that beat the start on a hard one (and tied it on the easy one). The finalist was
    # the lucky one (no better than the start on the valset), so the start came back.
    task = planted_rule_task("vowels", train_size=8, val_size=12, seed=1)
    hard = {task.train[0].question, task.train[1].question}
    val_even = {ex.question for i, ex in enumerate(task.val) if i % 2 == 0}

    def knows(view):
        question = view.inputs.get("question", "")
        if "each letter" in view.instruction:  # the good instruction: misses one hard example only
            return question != task.train[1].question
        return question not in hard and (question not in {ex.question for ex in task.val} or question in val_even)

    answers = iter([proposal("Think about the word."), proposal("Look at each letter closely."),
                    proposal("Be careful."), proposal("Read the word slowly.")])
    minibatches = {0: [0, 1, 2, 3], 1: [0, 1, 2, 3], 2: [4, 5, 6, 7]}  # step 2's minibatch is all easy
    monkeypatch.setattr(OPRO, "_scoring_items", lambda self, ctx, run, step: minibatches[step])
    opro = OPRO(task.metric, task_model=task.lm(knows=knows), prompt_model=scripted_lm([lambda r: next(answers)] * 4),
                steps=2, candidates_per_step=2, scoring="minibatch", minibatch_size=4, final_candidates=1,
                format_candidate=False, progress=False)
    program = opro.compile(task.program(), trainset=task.train, valset=task.val)
    report = opro.report_
    by_text = {c.state["self"]["instruction"]: c for c in report.candidates}
    good, lucky = by_text["Look at each letter closely."], by_text["Read the word slowly."]
    assert lucky.scores["train"] > good.scores["train"], "the scenario: the lucky one has the higher mean"
    assert [row["candidate"] for row in report.extra["final_choice"]["contenders"]][1:] == [good.id]
    assert program.signature.instructions == "Look at each letter closely."


def _task_with_its_own_wording(n: int, offset: int = 0) -> list[dspy.Example]:
    """Every question repeats the task's instruction, as the BIG-bench tasks do."""
    return [dspy.Example(question=f"Count the vowels of the word below. Word: {w}",
                         answer=str(sum(ch in "aeiou" for ch in w))).with_inputs("question")
            for w in (f"{'ab' * (i % 3 + 1)}x{i + offset}" for i in range(n))]


def test_the_tasks_own_wording_is_a_step_zero_candidate_and_can_win():
    train, val = _task_with_its_own_wording(8), _task_with_its_own_wording(6, offset=100)
    lm = simulated_task_lm(solve=lambda inputs: str(sum(ch in "aeiou" for ch in inputs["question"].split(": ")[-1])),
                           knows=lambda view: "count the vowels" in view.instruction.lower())
    prompts = scripted_lm([lambda request: proposal("Think about the word.")] * 8)
    opro = OPRO(lambda ex, pred, trace=None: ex.answer == pred.answer, task_model=lm, prompt_model=prompts,
                steps=1, candidates_per_step=1, progress=False, seed=3)
    program = opro.compile(dspy.Predict("question -> answer"), trainset=train, valset=val)
    wording = [c for c in opro.report_.candidates if c.origin == "wording"]
    assert [c.step for c in wording] == [0, 0], "with the answer-format sentence and alone"
    assert program.signature.instructions.startswith("Count the vowels of the word below.")
    assert opro.report_.best_candidate in {c.id for c in wording}
    assert opro.report_.params["wording_candidate"] is True

    off = OPRO(lambda ex, pred, trace=None: ex.answer == pred.answer, task_model=lm, prompt_model=prompts,
               steps=1, candidates_per_step=1, progress=False, seed=3, wording_candidate=False)
    kept = off.compile(dspy.Predict("question -> answer"), trainset=train, valset=val)
    assert not [c for c in off.report_.candidates if c.origin == "wording"]
    assert "Count the vowels" not in kept.signature.instructions


def test_the_plan_counts_the_grounded_candidates_the_data_gives(task):
    def first_step(data, **kwargs):
        opro = OPRO(task.metric, task_model=task.lm(), prompt_model=planted_at_step_two(task), progress=False,
                    budget={"max_task_calls": 400, "max_prompt_calls": 40}, **kwargs)
        plan = opro.plan(dspy.Predict("question -> answer"), trainset=data, valset=data[:4])
        return plan.phases[0].task_calls, plan.settings["search_examples"]

    worded = _task_with_its_own_wording(24)
    calls, size = first_step(worded)
    assert calls == 4 * size, "the start, the format candidate and the wording with and without the format sentence"
    calls, size = first_step(worded, wording_candidate=False)
    assert calls == 2 * size
    calls, size = first_step(worded, wording_candidate=False, format_candidate=False)
    assert calls == size
    # the toy words repeat no sentence: no wording candidate is planned, as none will be scored
    calls, size = first_step(task.train)
    assert calls == 2 * size
    assert first_step(task.train) == first_step(task.train, wording_candidate=False)


def test_a_non_boolean_wording_candidate_is_a_type_error():
    with pytest.raises(TypeError, match="`wording_candidate`"):
        OPRO(lambda *a: 1.0, wording_candidate="yes")


def test_the_best_grounded_candidate_takes_the_last_finalist_slot_from_a_lucky_proposal():
    from dspy_icl_opt.optimizers.opro import _with_grounded_finalist
    from dspy_icl_opt.search.report import CandidateRecord

    def record(i, origin, train):
        return CandidateRecord(id=i, step=0, origin=origin, state={}, scores={"train": train})

    # disambiguation_qa split 2's row: the wording candidate led the start on the search set, two copied
    # sentences led it by more and took both slots, and validation saw neither grounded candidate
    start, fmt, worded, bare = record(0, "seed", 0.30), record(1, "format", 0.30), record(2, "wording", 0.35), \
        record(3, "wording", 0.30)
    lucky, luckier = record(5, "proposal", 0.45), record(8, "proposal", 0.50)
    everyone = [start, fmt, worded, bare, lucky, luckier]
    ranked = sorted(everyone[1:], key=lambda r: (-r.scores["train"], r.id))
    assert [r.id for r in _with_grounded_finalist(ranked, 2, everyone)] == [8, 2]
    assert [r.id for r in _with_grounded_finalist(ranked, 3, everyone)] == [8, 5, 2]
    assert [r.id for r in _with_grounded_finalist(ranked, 1, everyone)] == [8], "one slot: the best by score"
    # a grounded candidate already among the top keeps the order as it is
    ahead = sorted([*everyone[1:3], record(9, "proposal", 0.32)], key=lambda r: (-r.scores["train"], r.id))
    assert [r.id for r in _with_grounded_finalist(ahead, 2, everyone)] == [2, 9]
    # grounded candidates below the start on the search set do not take a slot
    below = [record(0, "seed", 0.40), record(1, "format", 0.35), lucky, luckier]
    ranked_below = sorted(below[1:], key=lambda r: (-r.scores["train"], r.id))
    assert [r.id for r in _with_grounded_finalist(ranked_below, 2, below)] == [8, 5]
