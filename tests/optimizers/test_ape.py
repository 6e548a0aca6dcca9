"""APE and Iterative-APE with a scripted prompt model and a simulated task model (no real LM)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import dspy
import pytest

from dspy_icl_opt.optimizers.ape import APE, IterativeAPE, _Run
from dspy_icl_opt.optimizers.ape_prompts import InduceInstruction, read_instruction
from dspy_icl_opt.search.meta import MetaPromptAdapter
from dspy_icl_opt.search.report import CandidateRecord
from dspy_icl_opt.testing import (
    format_chat_reply,
    last_user_text,
    make_fake_lm,
    parse_field_blocks,
    planted_rule_task,
    rule_in_instruction,
    scripted_lm,
    system_text,
)
from tests.contract.suite import KilledAfter
from tests.optimizers.two_step import NotesThenAnswer as TwoStep

SMALL = {"num_subsamples": 3, "num_demos": 3, "prompts_per_subsample": 2, "eval_rounds": 3,
         "eval_prompts_per_round": 4, "samples_per_eval": 4, "progress": False}
USERS_BUDGET = {"max_task_calls": 400, "max_prompt_calls": 40}


def sample_of(request: Any) -> int:
    """The request's sampling seed: the optimizer derives it from the answer's journal key."""
    return (request.config.seed or 0) % 10_007


def responder(rule: str, *, every: int = 3, log: list[dict[str, str]] | None = None):
    """Generations: one in ``every`` samples states the rule, the others a decoy; every answer is new (numbered
    by its sampling seed). A variation keeps the rule when its instruction has it."""

    def respond(request: Any) -> str:
        system, fields = system_text(request), parse_field_blocks(last_user_text(request))
        if log is not None:
            log.append({"system": system, **fields})
        n = sample_of(request)
        if "`variation`" in system:
            kept = rule if rule in fields["instruction"] else "answer as you see fit"
            return format_chat_reply({"variation": f"Please {kept}, then answer (variant {n})."})
        said = f"{rule}, way {n}" if n % every == 0 else f"answer the question, version {n}"
        return format_chat_reply({"instruction": f"The instruction was to {said}"})

    return respond


def instruction(record) -> str:
    return record.state["self"]["instruction"]


def distinct_responder(text: str):
    """Every answer new (numbered by its sampling seed), none stating the rule."""
    return lambda request: format_chat_reply({"instruction": f"The instruction was to {text} ({sample_of(request)})",
                                              "variation": f"Please {text} (variant {sample_of(request)})."})


def run(cls=APE, task=None, *, respond=None, budget=None, **settings):
    task = task or planted_rule_task("vowels", train_size=12, val_size=8, seed=0)
    options = {**SMALL, **settings}
    optimizer = cls(task.metric, task_model=task.lm(), prompt_model=scripted_lm(respond or responder(task.rule)),
                    budget=budget, **options)
    program = optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    return optimizer, program, task


# ------------------------------------------------------------------------------ the method
def test_the_instruction_that_states_the_rule_wins():
    ape, program, task = run()
    assert task.rule in program.signature.instructions.lower()
    assert ape.report_.best_scores["val"] == 1.0
    assert ape.report_.extra["final_choice"]["chosen"] != ape.report_.extra["final_choice"]["start"]


def test_forward_generation_shows_input_output_pairs_of_the_training_set():
    log: list[dict[str, str]] = []
    task = planted_rule_task("vowels", train_size=12, val_size=8, seed=0)
    run(task=task, respond=responder(task.rule, log=log))
    generations = [entry for entry in log if "`instruction`" in entry["system"] and "demonstrations" in entry]
    assert len(generations) == SMALL["num_subsamples"] * SMALL["prompts_per_subsample"]
    questions = {ex.question for ex in task.train}
    for entry in generations:
        shown = [line.split(": ", 1)[1] for line in entry["demonstrations"].splitlines() if "question: " in line]
        assert len(shown) == SMALL["num_demos"] and set(shown) <= questions
        assert "Output:" in entry["demonstrations"]
    subsets = {entry["demonstrations"] for entry in generations}
    assert len(subsets) == SMALL["num_subsamples"], "each subset is sampled several times, and subsets differ"


def test_duplicate_instructions_are_dropped():
    def same(request):
        return format_chat_reply({"instruction": "The instruction was to count the vowels"})

    ape, program, _ = run(respond=same)
    generated = [c for c in ape.report_.candidates if c.origin == "generation"]
    assert len(generated) == 1
    assert ape.report_.extra["dropped_proposals"]["duplicate"] == SMALL["num_subsamples"] * SMALL[
        "prompts_per_subsample"] - 1
    assert program.signature.instructions == "Count the vowels."


def test_a_generation_that_repeats_the_start_is_a_duplicate():
    def echo(request):
        return format_chat_reply({"instruction": "The instruction was to answer the question"})

    ape, _, task = run(respond=echo)
    assert task.program().signature.instructions == "Answer the question."
    assert not [c for c in ape.report_.candidates if c.origin == "generation"]
    assert ape.report_.extra["dropped_proposals"]["duplicate"] == SMALL["num_subsamples"] * SMALL[
        "prompts_per_subsample"]
    pool = ape.report_.extra["iterations"][0]["pool"]
    assert len(pool) == len(set(pool))


@pytest.mark.parametrize("start,kept", [
    ("Answer the question.", False),
    ("Write an instruction for a language model that solves the question.", True),
])
def test_a_generation_that_asks_for_an_instruction_is_refused_unless_the_program_writes_instructions(start, kept):
    """"Write instructions for ..." echoes the meta-prompt's request, unless the program's own task is to write
    instructions (its instruction says so): then it is what the demonstrations show."""
    def writes(request):
        return format_chat_reply({"instruction": "The instruction was to write instructions for a model that "
                                                 f"counts the vowels (draft {sample_of(request)})"})

    task = planted_rule_task("vowels", train_size=12, val_size=8, seed=0)
    program = task.program()
    program.signature = program.signature.with_instructions(start)
    ape = APE(task.metric, task_model=task.lm(), prompt_model=scripted_lm(writes), **{**SMALL, "max_retries": 0})
    ape.compile(program, trainset=task.train, valset=task.val)
    generated = [instruction(c) for c in ape.report_.candidates if c.origin == "generation"]
    refused = ape.report_.extra.get("rejected_proposals", {})
    asked = sum(n for reason, n in refused.items() if reason.startswith("asks for an instruction"))
    if kept:
        assert generated and all(text.startswith("Write instructions for a model") for text in generated)
        assert asked == 0
    else:
        assert not generated
        assert asked == SMALL["num_subsamples"] * SMALL["prompts_per_subsample"]


def test_the_start_is_kept_when_no_generated_instruction_is_better():
    task = planted_rule_task("vowels", train_size=12, val_size=8, seed=0)
    ape, program, _ = run(task=task, respond=distinct_responder("say a number"), format_candidate=False)
    assert program.signature.instructions == task.program().signature.instructions
    assert ape.report_.extra["final_choice"]["chosen"] == ape.report_.extra["final_choice"]["start"]


def test_the_bandit_spends_more_on_good_candidates_than_on_bad_ones():
    task = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    ape, _, _ = run(task=task, budget=USERS_BUDGET, num_subsamples=5, prompts_per_subsample=None,
                    eval_prompts_per_round=50, samples_per_eval=50, eval_rounds=5)
    generated = [c for c in ape.report_.candidates if c.origin == "generation"]
    good = [c.n_scored.get("search", 0) for c in generated if task.rule in instruction(c).lower()]
    bad = [c.n_scored.get("search", 0) for c in generated if task.rule not in instruction(c).lower()]
    assert good and bad
    assert sum(good) / len(good) > 2 * sum(bad) / len(bad)
    assert min(bad) >= 1, "every candidate was tried"


def test_two_lucky_examples_do_not_outrank_a_long_good_record():
    records = [CandidateRecord(id=i, step=1, origin="generation", state={}) for i in (1, 2, 3)]
    run_state = _Run(names=["self"], tasks={}, search=list(range(24)))
    run_state.item_scores = {1: {0: 1.0, 1: 1.0},  # two lucky examples
                             2: {i: float(i % 10 != 0) for i in range(24)},  # 21 of 24
                             3: {i: 0.0 for i in range(10)}}
    chosen = []
    APE(lambda example, prediction, trace=None: 1.0)._rank(SimpleNamespace(set_best=chosen.append), run_state, records)
    assert [r.id for r in run_state.ranked] == [2, 1, 3] and chosen[-1].id == 2
    assert records[0].scores["search"] == 1.0 and records[0].n_scored["search"] == 2, "the plain mean is reported"


def test_level_on_validation_the_final_choice_prefers_the_long_good_record_to_two_lucky_examples():
    from dspy_icl_opt.optimizers.ape import _search_record, _shrunk_order

    records = [CandidateRecord(id=i, step=1, origin="generation", state={}) for i in (1, 2, 3)]
    item_scores = {1: {0: 1.0, 1: 1.0}, 2: {i: float(i % 10 != 0) for i in range(24)}, 3: {i: 0.0 for i in range(10)}}
    for record in records:  # the plain search means the report keeps: 1.0, 0.875, 0.0
        values = item_scores[record.id]
        record.scores["search"], record.n_scored["search"] = sum(values.values()) / len(values), len(values)
    key = _search_record(_shrunk_order(records, item_scores))
    # before: the tiebreak was the plain search mean, and the reserve with 2 of 2 passed the one with 21 of 24
    assert max(records[:2], key=key).id == 2
    assert key(records[2]) < key(records[0]) < key(records[1])


def test_iterative_ape_varies_the_kept_candidates():
    log: list[dict[str, str]] = []
    task = planted_rule_task("vowels", train_size=12, val_size=8, seed=0)
    ape, program, _ = run(IterativeAPE, task=task, respond=responder(task.rule, log=log), iterations=2,
                          variations_per_candidate=2, keep_fraction=0.25)
    report = ape.report_
    first, second = report.extra["iterations"]
    kept = [cid for cid in first["ranked"][: len(second["pool"])] if cid in second["pool"]]
    variations = [c for c in report.candidates if c.origin == "variation"]
    assert variations and {c.parent for c in variations} <= set(kept)
    assert set(first["ranked"][:2]) <= set(second["pool"]), "the best of iteration 1 compete again"
    varied = {entry["instruction"] for entry in log if "`variation`" in entry["system"]}
    instructions = {c.id: instruction(c) for c in report.candidates}
    assert varied == {instructions[c.parent] for c in variations}
    assert task.rule in program.signature.instructions.lower()


def test_each_predictor_gets_instructions_in_turn_and_the_other_keeps_its_own():
    task = planted_rule_task("vowels", train_size=12, val_size=8, seed=0)
    ape = APE(task.metric, task_model=task.lm(knows=rule_in_instruction(task.rule)),
              prompt_model=scripted_lm(responder(task.rule, every=1)), **{**SMALL, "num_subsamples": 2})
    program = ape.compile(TwoStep(), trainset=task.train, valset=task.val)
    generated = [c for c in ape.report_.candidates if c.origin == "generation"]
    assert {c.predictor for c in generated} == {"draft", "answer"}
    for c in generated:
        other = "answer" if c.predictor == "draft" else "draft"
        assert c.state[other]["instruction"] == ape.report_.candidates[0].state[other]["instruction"]
    with dspy.context(lm=task.lm(knows=rule_in_instruction(task.rule))):
        assert task.score(program) == 1.0


# ----------------------------------------------------------------------------- the budget
@pytest.mark.parametrize("cap", [3, 17, 40])
def test_task_cap_is_spent_exactly(cap):
    # 12 training examples: 6 give the demonstrations, 6 score; at cap 17 the leaders had seen all 6 with a call to
    # spare, so the top-up goes on with the demonstration half's examples no subset showed
    ape, _, _ = run(budget={"max_task_calls": cap})
    assert ape.report_.spent["task"].calls == cap, "the search, its top-up and the validation use every call"
    assert "val" in ape.report_.best_scores, "the held-back calls validated the start at least"


def test_the_plan_fits_the_prompt_cap():
    ape, program, task = run(budget={"max_prompt_calls": 3}, format_candidate=False)
    report = ape.report_
    assert report.spent["prompt"].calls == 3 and not report.stopped_by_budget
    assert len([c for c in report.candidates if c.origin == "generation"]) == 3
    assert task.rule in program.signature.instructions.lower(), "the answer that states the rule won"


def test_retries_that_end_the_prompt_budget_keep_what_was_paid_for():
    task = planted_rule_task("vowels", train_size=12, val_size=8, seed=0)
    inner = responder(task.rule, every=1)
    answers = iter(range(100))

    def chatty(request):  # every other answer unusable: the retries eat the prompt budget
        return format_chat_reply({"instruction": "Ok"}) if next(answers) % 2 else inner(request)

    ape, program, _ = run(task=task, respond=chatty, budget={"max_prompt_calls": 4}, format_candidate=False)
    report = ape.report_
    assert report.spent["prompt"].calls == 4 and report.stopped_by_budget
    generated = [c for c in report.candidates if c.origin == "generation"]
    assert len(generated) == 2 and all("search" in c.scores for c in generated)
    assert task.rule in program.signature.instructions.lower()


@pytest.mark.parametrize("cls", [APE, IterativeAPE])
def test_at_a_users_budget_the_search_is_more_than_a_token(cls):
    # One Predict, 40 train / 40 val, 400 task + 40 prompt calls; every answer is new and none states the rule.
    task = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    optimizer = cls(task.metric, task_model=task.lm(), prompt_model=scripted_lm(distinct_responder("say a number")),
                    budget=USERS_BUDGET,
                    progress=False)
    plan = optimizer.plan(task.program(), trainset=task.train, valset=task.val)
    assert plan.task_calls <= 400 and plan.prompt_calls <= 40
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    report = optimizer.report_
    proposed = [c for c in report.candidates if c.origin in ("generation", "variation")]
    assert len(proposed) >= 20
    assert 0.9 * 400 <= report.spent["task"].calls <= 400 and report.spent["prompt"].calls <= 40
    assert report.extra["final_choice"]["examples"] >= 40, "the whole valset (and training examples no step used)"
    if cls is IterativeAPE:
        assert plan.steps >= 2 and len(report.extra["iterations"]) >= 2
        assert any(c.origin == "variation" for c in proposed)


@pytest.mark.parametrize("prompt_cap", [6, 20, 40])
def test_iterative_ape_plans_every_prompt_call_and_at_least_two_iterations(prompt_cap):
    task = planted_rule_task("vowels", train_size=20, val_size=20, seed=0)
    optimizer = IterativeAPE(task.metric, iterations=2, num_subsamples=4,
                             budget={"max_task_calls": 200, "max_prompt_calls": prompt_cap})
    plan = optimizer.plan(task.program(), trainset=task.train, valset=task.val)
    assert plan.steps == 2 and plan.prompt_calls == prompt_cap
    assert plan.settings["variations"][0] >= 1 and plan.task_calls <= 200


@pytest.mark.parametrize("share, generations", [(None, 21), (0.5, 21), (0.75, 30), (1.0, 40)])
def test_the_generation_share_sets_iterative_apes_forward_generation_calls(share, generations):
    # half of 40 by default, plus the one call the variations' planned sizes leave over
    task = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    optimizer = IterativeAPE(task.metric, generation_share=share, budget=USERS_BUDGET)
    plan = optimizer.plan(task.program(), trainset=task.train, valset=task.val)
    planned = plan.settings["subsamples"] * plan.settings["prompts_per_subsample"] + plan.settings["extra_samples"]
    assert planned == generations and plan.prompt_calls == 40
    if share == 1.0:  # nothing left to vary: the plan drops to one iteration (APE's) and says so
        assert plan.steps == 1 and any("iteration(s) fit" in note for note in plan.notes)
    else:
        assert plan.steps == 3 and planned + sum(plan.settings["variations"]) == 40


def test_the_generation_share_is_in_the_report_only_when_set():
    # a default run's params stay those of runs before the setting existed, so their logs still resume
    default, _, _ = run(IterativeAPE, budget={"max_task_calls": 120, "max_prompt_calls": 8})
    shared, _, _ = run(IterativeAPE, budget={"max_task_calls": 120, "max_prompt_calls": 8}, generation_share=0.75)
    assert "generation_share" not in default.report_.params
    assert shared.report_.params["generation_share"] == 0.75
    generated = [sum(c.origin == "generation" for c in o.report_.candidates) for o in (default, shared)]
    # 3 subsets: half of the 8 prompt calls pays one sample a subset, three quarters two
    assert generated == [3, 6]


@pytest.mark.parametrize("cls, prompt_cap", [(APE, 13), (APE, 14), (IterativeAPE, 21)])
def test_a_prompt_cap_the_subsets_do_not_divide_is_planned_and_spent_to_the_last_call(cls, prompt_cap):
    # 5 subsets: the calls the whole rounds leave (fewer than the subsets) are one more sample of the first subsets
    task = planted_rule_task("vowels", train_size=20, val_size=10, seed=0)
    optimizer = cls(task.metric, task_model=task.lm(), prompt_model=scripted_lm(distinct_responder("say a number")),
                    num_subsamples=5, num_demos=3, progress=False,
                    budget={"max_task_calls": 200, "max_prompt_calls": prompt_cap})
    plan = optimizer.plan(task.program(), trainset=task.train, valset=task.val)
    assert plan.prompt_calls == prompt_cap
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    assert optimizer.report_.spent["prompt"].calls == prompt_cap
    per, extra = plan.settings["prompts_per_subsample"], plan.settings["extra_samples"]
    samples = [sum(1 for c in optimizer.report_.candidates if c.origin == "generation" and c.meta["subset"] == j)
               for j in range(5)]
    assert samples == [per + 1] * extra + [per] * (5 - extra) and sum(samples) + sum(plan.settings["variations"]) \
        == prompt_cap


# ------------------------------------------------------------------------ resume and seed
def test_killed_while_asking_for_variations_resumes_identically(tmp_path):
    task = planted_rule_task("vowels", train_size=12, val_size=8, seed=0)
    settings = {"iterations": 2, "variations_per_candidate": 2}
    full, full_program, _ = run(IterativeAPE, task=task, **settings)
    calls = [0]
    inner = responder(task.rule)
    generations = SMALL["num_subsamples"] * SMALL["prompts_per_subsample"]

    def killed(request):
        if calls[0] == generations + 1:  # one variation answered, then Ctrl-C
            raise KeyboardInterrupt
        calls[0] += 1
        return inner(request)

    with pytest.raises(KeyboardInterrupt):
        run(IterativeAPE, task=task, respond=killed, log_dir=tmp_path, **settings)
    prompt_lm = scripted_lm(inner)
    resumed = IterativeAPE(task.metric, task_model=task.lm(), prompt_model=prompt_lm, log_dir=tmp_path,
                           **{**SMALL, **settings})
    program = resumed.compile(task.program(), trainset=task.train, valset=task.val)
    asked = sum(full.report_.extra["meta_prompts"][name]["answers"] for name in full.report_.extra["meta_prompts"])
    assert calls[0] + prompt_lm.engine.call_count == asked
    assert resumed.report_.best_state == full.report_.best_state
    assert program.signature.instructions == full_program.signature.instructions


@pytest.mark.parametrize("fraction", [0.3, 0.75, 0.9])
def test_a_capped_run_killed_in_its_bandit_or_top_up_resumes_identically(tmp_path, fraction):
    task = planted_rule_task("vowels", train_size=12, val_size=8, seed=0)
    settings = {"iterations": 2, "budget": {"max_task_calls": 70}}
    full, full_program, _ = run(IterativeAPE, task=task, **settings)
    total = full.report_.spent["task"].calls
    assert full.report_.extra["iterations"][-1]["top_up"] > 0, "the setting reaches the top-up"
    cut_at = int(total * fraction)
    killed_lm = make_fake_lm(KilledAfter(task.lm().engine, cut_at), name=task.lm().model)
    optimizer = IterativeAPE(task.metric, task_model=killed_lm, prompt_model=scripted_lm(responder(task.rule)),
                             log_dir=tmp_path, **{**SMALL, **settings})
    with pytest.raises(KeyboardInterrupt):
        optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    task_lm = task.lm()
    resumed = IterativeAPE(task.metric, task_model=task_lm, prompt_model=scripted_lm(responder(task.rule)),
                           log_dir=tmp_path, **{**SMALL, **settings})
    program = resumed.compile(task.program(), trainset=task.train, valset=task.val)
    assert cut_at + task_lm.engine.call_count == total
    assert resumed.report_.best_state == full.report_.best_state
    assert program.signature.instructions == full_program.signature.instructions


def test_another_seed_draws_other_demonstrations():
    def subsets(seed):
        ape, _, _ = run(seed=seed)
        return sorted(tuple(c.meta["demos"]) for c in ape.report_.candidates if c.origin == "generation")

    assert subsets(1) == subsets(1)
    assert subsets(1) != subsets(2)


# ----------------------------------------------------------------------- reading answers
@pytest.mark.parametrize("answer,expected", [
    ("The instruction was to count the vowels in the word", "Count the vowels in the word."),
    ('"Reverse the word."', "Reverse the word."),
    ("1. Count the vowels.\n2. Then write the number.", "Count the vowels."),
    ("Instruction: to find the date one week later", "Find the date one week later."),
    ("**Sort the words alphabetically**", "Sort the words alphabetically."),
    ("the teacher's instruction was: decide which option is right", "Decide which option is right."),
    ("Count the vowels.\n\nThis works because every output is a count.", "Count the vowels."),
    ("The instruction was:\n\nReverse the word.", "Reverse the word."),
    ("Here is the instruction:\n1. Count the vowels in the word.\n2. Answer with a number.",
     "Count the vowels in the word."),
    ("Sort the words alphabetically:\n1. Split them.\n2. Sort.", "Sort the words alphabetically:"),
    ("Sure! The instruction was to count the vowels.", "Count the vowels."),
    ("**Instruction:** Count the vowels in the word.", "Count the vowels in the word."),
    ("Instructions: Count the vowels in the word.", "Count the vowels in the word."),
    ("The instruction is to count the vowels.", "Count the vowels."),
    ("The instruction was to: count the vowels.", "Count the vowels."),
    ("The instructions were to count the vowels.", "Count the vowels."),
    ("Ok", ""),
    ("", ""),
    ("x " * 400, ""),
])
def test_messy_answers_are_read_as_one_instruction(answer, expected):
    assert read_instruction(answer) == expected


def test_an_answer_without_field_markers_is_still_read():
    adapter = MetaPromptAdapter()
    parsed = adapter.parse(InduceInstruction, "The instruction was to count the vowels\nin each word.")
    assert read_instruction(parsed["instruction"]) == "Count the vowels in each word."


def test_unusable_answers_are_counted_per_meta_prompt():
    def chatter(request):
        n = sample_of(request)
        return format_chat_reply({"instruction": "Ok" if n % 2 else f"The instruction was to count the vowels ({n})"})

    ape, _, _ = run(respond=chatter, max_retries=0)
    stats = ape.report_.extra["meta_prompts"]["InduceInstruction"]
    assert stats["answers"] == SMALL["num_subsamples"] * SMALL["prompts_per_subsample"]
    assert stats["unusable"] > 0 and stats["usable"] + stats["unusable"] == stats["answers"]
    assert ape.report_.extra["dropped_proposals"]["unusable"] == stats["unusable"]


# --------------------------------------------------------------------------- bad settings
def test_likelihood_scoring_refuses_a_model_that_cannot_score_given_text():
    task = planted_rule_task("vowels", train_size=12, val_size=8, seed=0)
    plain = scripted_lm(lambda request: format_chat_reply({"answer": "1"}))  # its engine only samples
    ape = APE(task.metric, task_model=plain, prompt_model=scripted_lm(responder(task.rule)), scoring="likelihood",
              progress=False)
    with pytest.raises(ValueError, match=r"`scoring='likelihood'` needs a task model that can score given text"):
        ape.compile(task.program(), trainset=task.train, valset=task.val)


def test_likelihood_scoring_refuses_outputs_the_data_does_not_label():
    task = planted_rule_task("vowels", train_size=12, val_size=8, seed=0)
    ape = APE(task.metric, task_model=task.lm(), prompt_model=scripted_lm(responder(task.rule)), scoring="likelihood",
              progress=False)
    with pytest.raises(ValueError, match=r"trainset\[0\] has no label for \['reasoning'\]"):
        ape.compile(dspy.ChainOfThought("question -> answer"), trainset=task.train, valset=task.val)


def test_likelihood_scoring_ranks_by_the_gold_answers_probability():
    """The simulated model finds the gold answer likely (0.9) only under an instruction stating the rule; the
    search scores are those probabilities, one task call per (candidate, example), none twice."""
    ape, program, task = run(scoring="likelihood", budget=USERS_BUDGET)
    report = ape.report_
    assert task.rule in program.signature.instructions.lower()
    assert report.extra["search_score"].startswith("mean probability of the gold answer")
    engine = ape.task_model.engine
    scored = [call for call in engine.calls if call.request.config.extensions]
    assert scored, "the search asked for no likelihoods"
    pairs = [(call.view.instruction, call.view.user_text) for call in scored]
    assert len(pairs) == len(set(pairs))  # never the same (state, example) twice
    searched = [r for r in report.candidates if "search" in r.scores]
    assert all(0.05 - 1e-9 <= r.scores["search"] <= 0.9 + 1e-9 for r in searched)
    best = max(searched, key=lambda r: r.scores["search"])
    assert task.rule in instruction(best).lower() and best.scores["search"] == pytest.approx(0.9)
    assert report.best_scores["val"] == 1.0  # the final choice is by accuracy
    assert report.spent["task"].calls == len(engine.calls) <= USERS_BUDGET["max_task_calls"]


@pytest.mark.parametrize("settings,match", [
    ({"iterations": 0}, "`iterations`"),
    ({"keep_fraction": 0}, "`keep_fraction` must be above 0"),
    ({"keep_fraction": 1.5}, "`keep_fraction`"),
    ({"evaluator": "thompson"}, "`evaluator` must be one of"),
    ({"scoring": "bleu"}, "`scoring` must be one of"),
    ({"prompts_per_subsample": 0}, "`prompts_per_subsample`"),
    ({"generation_share": 0}, "`generation_share` must be above 0"),
    ({"generation_share": 1.2}, "`generation_share`"),
])
def test_bad_settings_are_named(settings, match):
    with pytest.raises(ValueError, match=match):
        APE(lambda example, prediction, trace=None: 1.0, **settings)


def test_a_seeded_run_without_the_task_model_set_says_how_to_set_it():
    task = planted_rule_task("vowels", train_size=12, val_size=8, seed=0)
    ape = APE(task.metric, prompt_model=scripted_lm(responder(task.rule)), progress=False)
    with dspy.context(lm=None), pytest.raises(ValueError, match="No task model"):
        ape.compile(task.program(), trainset=task.train, valset=task.val)


def test_rejected_generations_leave_the_later_iterations_their_prompt_calls():
    # At a user's budget, two in three generations are unusable ("Ok"), so their retries would spend the
    # whole prompt cap in forward generation; the variations of iterations 2 and 3 keep their planned share.
    task = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    inner = responder(task.rule, every=2)

    def mostly_unusable(request):
        if "`variation`" not in system_text(request) and sample_of(request) % 3:
            return format_chat_reply({"instruction": "Ok"})
        return inner(request)

    optimizer = IterativeAPE(task.metric, task_model=task.lm(), prompt_model=scripted_lm(mostly_unusable),
                             budget=USERS_BUDGET, progress=False)
    plan = optimizer.plan(task.program(), trainset=task.train, valset=task.val)
    reserved = sum(plan.settings["variations"])
    assert plan.steps == 3 and reserved > 0
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    report = optimizer.report_
    phases = report.extra["proposing"]
    assert [p["iteration"] for p in phases] == [1, 2, 3]
    assert phases[0]["prompt_calls"] <= 40 - reserved and phases[0]["cut_short"]
    assert all(p["prompt_calls"] >= 1 and p["candidates"] >= 1 for p in phases[1:])
    assert sum(p["prompt_calls"] for p in phases) == report.spent["prompt"].calls <= 40
    assert len(report.extra["iterations"]) == 3
    assert any(c.origin == "variation" and c.step == 3 for c in report.candidates)


def test_task_calls_a_short_pool_leaves_go_to_candidates_earlier_iterations_dropped():
    # As on date_understanding split 1: most answers are unusable, so the iterations rank few candidates and the
    # last ranking holds little beyond the finalists; the calls left validate candidates dropped earlier.
    task = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    inner = responder(task.rule, every=2)

    def mostly_unusable(request):
        if sample_of(request) % 3:
            return format_chat_reply({"instruction": "Ok", "variation": "Ok"})
        return inner(request)

    optimizer = IterativeAPE(task.metric, task_model=task.lm(), prompt_model=scripted_lm(mostly_unusable),
                             budget=USERS_BUDGET, progress=False)
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    report = optimizer.report_
    last = set(report.extra["iterations"][-1]["pool"])
    reserves = report.extra["final_choice"]["reserves_validated"]
    assert any(cid not in last for cid in reserves), "a candidate an earlier iteration dropped was validated"
    assert report.spent["task"].calls >= 0.9 * 400


def test_the_top_up_scores_the_future_finalists_not_the_start(monkeypatch):
    # The start is validated whatever its search score, and _choose_final leaves it out of the finalists; the
    # top-up used to give it (and a start-like format candidate) the spare calls while a real finalist got none.
    topped: list[str] = []
    original = APE._score

    def logged(self, ctx, run, record, indices, desc):
        if desc == "top-up":
            topped.append(record.origin)
        return original(self, ctx, run, record, indices, desc)

    monkeypatch.setattr(APE, "_score", logged)
    for seed in range(3):
        task = planted_rule_task("vowels", train_size=40, val_size=40, seed=seed)
        ape = APE(task.metric, task_model=task.lm(), prompt_model=scripted_lm(responder(task.rule, every=5)),
                  budget=USERS_BUDGET, progress=False, seed=seed)
        ape.compile(task.program(instructions=f"For each word, {task.rule}."), trainset=task.train, valset=task.val)
    assert topped and "seed" not in topped


def test_a_prompt_budget_that_ends_the_search_early_leaves_the_task_calls_to_its_last_bandit():
    # A prompt token cap ended Iterative-APE after its first iteration, whose bandit had a third of the task calls
    # (planned for 3 iterations): 349 of 400 were spent. That iteration is now the last: all of them, and the top-up.
    task = planted_rule_task("vowels", train_size=40, val_size=40, seed=0)
    opt = IterativeAPE(task.metric, task_model=task.lm(), prompt_model=scripted_lm(responder(task.rule, every=7)),
                       budget={**USERS_BUDGET, "max_prompt_tokens": 3000}, progress=False)
    opt.compile(task.program(), trainset=task.train, valset=task.val)
    report = opt.report_
    assert len(report.extra["iterations"]) < report.extra["plan"]["steps"], "the prompt budget ended the search"
    assert report.spent["task"].calls >= 0.9 * 400 and report.spent["prompt"].tokens <= 3000 + 400


def test_no_candidate_is_scored_on_the_examples_its_instruction_was_induced_from():
    # The reference splits its training data: half gives the demonstrations, the rest scores the candidates. Scored
    # on its own demonstrations, an instruction that restates them reads its answers back (the search picked it for
    # the examples it had been shown).
    task = planted_rule_task("vowels", train_size=20, val_size=8, seed=0)
    lm = task.lm()
    ape = APE(task.metric, task_model=lm, prompt_model=scripted_lm(responder(task.rule)),
              budget={"max_task_calls": 120}, **SMALL)
    ape.compile(task.program(), trainset=task.train, valset=task.val)
    report = ape.report_
    shown = {task.train[i].question for c in report.candidates if c.origin == "generation" for i in c.meta["demos"]}
    asked = {call.view.inputs.get("question") for call in lm.engine.calls}
    train = {ex.question for ex in task.train}
    assert shown and asked & train, "demonstrations were shown and the search scored training examples"
    assert not shown & asked, "a demonstration's example was scored"
    assert report.extra["plan"]["settings"]["search_examples"] == len(task.train) - len(task.train) // 2
