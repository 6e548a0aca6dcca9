"""Is a proposal an instruction? The checks run on answers the 0.5B proposer really wrote (APO and OPRO
on date_understanding and disambiguation_qa), against examples shaped like those tasks."""

from __future__ import annotations

import dspy
import pytest

from dspy_icl_opt.search.proposals import (
    ABOUT_ONE_EXAMPLE,
    COPIES_EXAMPLE,
    DESCRIBES_INSTRUCTION,
    LENIENT_PROBLEMS,
    QUESTION,
    ProposalChecker,
    clean_proposal,
)

# every question carries the task's own wording (as disambiguation_qa's do); the sentences differ
TASK_WORDING = ("In the following sentences, explain the antecedent of the pronoun (which thing the pronoun "
                "refers to), or state that it is ambiguous.")
PEOPLE = ["librarian", "chef", "carpenter", "nurse", "reporter", "customer", "janitor", "assistant", "mechanic",
          "writer"]
OTHERS = ["CEO", "clerk", "manager", "patient", "editor", "driver", "child", "physician", "teacher", "baker"]


def _examples() -> list[dspy.Example]:
    out = []
    for i, (a, b) in enumerate(zip(PEOPLE, OTHERS, strict=True)):
        sentence = f"Sentence: The {a} helped the {b} {i + 2} times because they asked on day {10 + i}."
        options = f"(A) The {a} asked\n(B) The {b} asked\n(C) Ambiguous"
        out.append(dspy.Example(question=f"{TASK_WORDING}\n\n{sentence}", options=options,
                                answer=f"The {b} asked").with_inputs("question", "options"))
    return out


META = "Reword an instruction: keep its meaning and every requirement it states, change the wording."


@pytest.fixture(scope="module")
def checker() -> ProposalChecker:
    return ProposalChecker(_examples())


@pytest.mark.parametrize("text", [
    "Answer the multiple-choice question. Reply with the exact text of the correct option.",
    "Read the sentence, decide which person the pronoun points to, and reply with that option's text.",
    # the task's own wording, shared by every example, is the task's and may be used
    "Explain the antecedent of the pronoun (which thing the pronoun refers to), or state that it is ambiguous.",
    "Answer the question.",
    # asking for a function is worded as a request: the task model reads it as one
    "Write a function to find the correct adjective order in the given sentence.",
    "Decide which option to return, then return only its letter.",
    "From the two options, import nothing of your own: pick the sentence whose adjectives are in order.",
    "If you are unsure, say sorry and pick the most likely option.",
    "I want you to find the date the question asks for, then reply with that option's text.",
])
def test_instructions_pass(checker, text):
    assert checker.problem(text, meta_texts=[META]) is None


@pytest.mark.parametrize(("text", "reason"), [
    ("The librarian helped the CEO 2 times because they asked on day 10.", "copies a training example"),
    ("What does the pronoun refer to in the librarian sentence?", "a question, not an instruction"),
    ("02/14/2026", "a bare answer, not an instruction"),
    ("Reword an instruction: keep its meaning and every requirement it states.", "copies the meta-prompt"),
    ("The chef and the nurse met on day 13 and 17, 2023.", "about one example (its names or numbers), not the task"),
    ("Python def find_order(sentence): # Split the sentence into words words = sentence.split()",
     "program code, not an instruction"),
    ("```python\nimport re\nprint(answer)\n```", "program code, not an instruction"),
    # the 0.5B proposer on date_understanding split 1, answering OPRO's meta-prompt without its problems
    ("I'm sorry, but I don't have access to the example problems to create a different instruction.",
     "a refusal or apology, not an instruction"),
    ("Unfortunately, I cannot write a better instruction without more examples.",
     "a refusal or apology, not an instruction"),
])
def test_what_is_not_an_instruction_is_named(checker, text, reason):
    assert checker.problem(text, meta_texts=[META]) == reason


def test_a_paraphrase_may_repeat_the_instruction_it_rewrites(checker):
    start = "Answer as in: The librarian helped the CEO 2 times because they asked on day 10."
    assert checker.problem(start) == "copies a training example"
    assert checker.problem(start, allowed=start) is None


def test_field_markers_are_removed_before_the_checks(checker):
    text = "[[ ## instruction ## ]]\nAnswer the question with the option's text.[[ ## completed ## ]]"
    assert clean_proposal(text) == "Answer the question with the option's text."
    assert checker.problem(text) is None


def test_template_placeholders_are_removed_but_braces_in_an_instruction_stay():
    # the 1.5B proposer's APO paraphrase on date_understanding split 2 ended with the adapter's "{paraphrase}"
    assert clean_proposal("Choose the correct answer from the choices. {paraphrase}") == \
        "Choose the correct answer from the choices."
    assert clean_proposal("[[ ## new_instructions ## ]]\n{ new_instructions }") == ""
    assert clean_proposal('Reply as {"answer": "(A)"}.') == 'Reply as {"answer": "(A)"}.'
    assert clean_proposal("Count the {Items} listed.") == "Count the {Items} listed."


@pytest.mark.parametrize("remark", [
    # what APO's 1.5B proposer wrote as edits and paraphrases on date_understanding split 2
    "The instruction should specify the format for the date (MM/DD/YYYY) in the `answer` field of the output.",
    "The instruction states that the user needs to answer the multiple-choice question.",
    "The user needs to provide the correct answer to a multiple-choice question.",
    "This prompt must tell the model to copy the option's text.",
    # ... and the 0.5B proposer's
    "The instruction was not correctly formatted for the date input.",
])
def test_a_remark_about_an_instruction_is_named(checker, remark):
    assert checker.problem(remark) == DESCRIBES_INSTRUCTION
    # not when the instruction being rewritten is itself worded so (a user's start, or its paraphrase)
    assert checker.problem(remark, allowed="The instruction is: answer with the option's text.") is None


@pytest.mark.parametrize("text", [
    "The instruction is to find the sentence with the correct adjective order.",
    "Follow the instruction in the question, then write the option's text.",
    "The user's question has one correct option: write its text.",
    "Instructions should be read twice: answer with the letter only.",
])
def test_an_instruction_that_names_the_instruction_is_not_a_remark(checker, text):
    assert checker.problem(text) is None


def test_a_preface_before_the_instruction_is_dropped():
    assert clean_proposal("The improved instruction is:\nAnswer with the option's text.") == \
        "Answer with the option's text."
    assert clean_proposal("Here is the reworded instruction: Answer with the letter.") == "Answer with the letter."
    # nothing after it: the text is kept for the checks to name
    assert clean_proposal("The improved instruction is:") == "The improved instruction is:"
    assert clean_proposal("Answer: the new instruction is: x") == "Answer: the new instruction is: x"


def test_a_fields_value_is_not_an_instruction():
    # what the 0.5B model wrote as APO edits on hyperbaton: the output field's value, labelled
    checker = ProposalChecker(_examples(), fields=["question", "options", "answer"])
    for text in ("answer: a", "answer: (B) b", "Answer: the janitor", "options: (A) x"):
        assert checker.problem(text) == "a field's value, not an instruction"
    # deliberately strict, as OPRO's own echo filter: a labelled text is read as that field's value
    assert checker.problem("Answer: write only the letter of the right option.") == \
        "a field's value, not an instruction"
    assert checker.problem("Answer with the option's letter.") is None
    assert ProposalChecker(_examples()).problem("answer: a") is None  # without field names: no such check


def test_a_checker_without_examples_still_rejects_non_instructions():
    empty = ProposalChecker()
    assert empty.problem("Answer the question.") is None
    assert empty.problem("42") == "a bare answer, not an instruction"
    assert empty.problem("Which option is right?") == "a question, not an instruction"


def test_a_checker_for_a_program_knows_its_field_names():
    program = dspy.ChainOfThought("question, options -> answer")
    checker = ProposalChecker.for_program(program, _examples())
    assert checker.problem("answer: a") == "a field's value, not an instruction"
    assert checker.problem("reasoning: it is a") == "a field's value, not an instruction"
    assert checker.problem("Answer with the option's letter.") is None


def test_dspys_own_prompt_text_echoed_is_the_meta_prompt():
    # OPRO's 0.5B proposer on hyperbaton split 2 wrote the tail of the chat adapter's format line
    checker = ProposalChecker()
    assert checker.problem(", and then ending with the marker for") == "copies the meta-prompt"
    assert checker.problem("All interactions will be structured in the following way.") == "copies the meta-prompt"
    assert checker.problem("Think step by step, and then answer with the letter of the option.") is None


PROPOSER_META = ("Read the task's fields, the summary of the data and the solved problems. Write ONE new instruction for "
                 "this task, following the style hint. Write only the instruction, in plain text.")


def test_sentences_that_restate_the_meta_prompt_are_dropped_and_the_rest_kept():
    # the joint search's chosen instruction on date_understanding split 0 (d0ce1f0) went on like this
    checker = ProposalChecker()
    text = ("Read the input and answer questions, providing answers with correct letter combinations. Read the "
            "task's inputs, the summary of the data, and the solved problems. Provide one new instruction for this "
            "task, following the style hint.")
    assert checker.without_meta_sentences(text, meta_texts=[PROPOSER_META]) == (
        "Read the input and answer questions, providing answers with correct letter combinations.")
    # line breaks and the sentences of the task stay as they were
    steps = "Work out the date.\n\n1. Find the reference date.\n2. Count the days, then pick the option."
    assert checker.without_meta_sentences(steps, meta_texts=[PROPOSER_META]) == steps
    # a short sentence is anyone's; DSPy's adapter text is meta-prompt text without being named
    assert checker.without_meta_sentences("Answer the question. Write only the letter.",
                                          meta_texts=[PROPOSER_META]) == "Answer the question. Write only the letter."
    assert checker.without_meta_sentences(
        "Pick the option. All interactions will be structured in the following way.") == "Pick the option."
    # nothing but the meta-prompt: nothing left
    assert checker.without_meta_sentences(PROPOSER_META, meta_texts=[PROPOSER_META]) == ""


def test_the_instruction_being_rewritten_is_never_the_meta_prompts_wording():
    checker = ProposalChecker()
    meta = "Rewrite the instruction so that the model answers with the text of the correct option."
    kept = "Answer with the text of the correct option."
    assert checker.without_meta_sentences(f"Think first. {kept}", meta_texts=[meta]) == "Think first."
    assert checker.without_meta_sentences(f"Think first. {kept}", meta_texts=[meta], allowed=kept) == (
        f"Think first. {kept}")


@pytest.mark.parametrize("request_echoed", [
    # the joint search's 0.5B proposer on hyperbaton split 0 (956276d): two of its six proposals
    "Write an instruction for a language model to solve the problem below.",
    "Write a single imperative sentence that instructs a language model to solve the task below.",
    "Provide one new instruction for this task, following the style hint.",
])
def test_a_sentence_asking_for_an_instruction_is_the_request_echoed(checker, request_echoed):
    assert checker.problem(request_echoed) == "asks for an instruction (the meta-prompt's request), not the task"
    assert checker.without_meta_sentences(f"Pick the option whose adjectives are in order. {request_echoed}") == (
        "Pick the option whose adjectives are in order.")
    # unless the instruction being rewritten asks for one itself (a program that writes instructions)
    assert checker.problem(request_echoed, allowed="Write an instruction for the user's task.") is None


@pytest.mark.parametrize("text", [
    "Write only the letter of the answer, following the instruction above.",
    "Follow the instructions in the question and write the date.",
    "Read each instruction in the question carefully, then answer.",
])
def test_instructions_that_mention_instructions_are_still_instructions(checker, text):
    assert checker.problem(text) is None
    assert checker.without_meta_sentences(text) == text


def test_the_lenient_problems_are_named_only_when_nothing_else_is_wrong(checker):
    assert LENIENT_PROBLEMS == {COPIES_EXAMPLE, QUESTION, ABOUT_ONE_EXAMPLE, DESCRIBES_INSTRUCTION}
    # a question that is a training example copied back is named a copy
    # the meta-prompt's wording is named before a copied example, which the strategies score
    assert checker.problem(META + " The librarian helped the CEO 2 times because they asked on day 10.",
                           meta_texts=[META]) == "copies the meta-prompt"
    copied = "Sentence: The librarian helped the CEO 2 times because they asked on day 10?"
    assert checker.problem(copied) == "copies a training example"
    # what GEPA chose on date_understanding split 1: a question, scored by the strategies unless strict
    assert checker.problem("Today is the second day of the third month, what is the date today in MM/DD/YYYY?") \
        == QUESTION


@pytest.mark.parametrize("bad", ["yes", 1, None, "Strict"])
def test_check_proposals_takes_true_false_or_strict(bad):
    from dspy_icl_opt.optimizers.opro import OPRO

    for good in (True, False, "strict"):
        assert OPRO(metric=lambda e, p, t=None: 1.0, check_proposals=good).check_proposals == good
    with pytest.raises(TypeError, match="`check_proposals` must be True, False or 'strict'"):
        OPRO(metric=lambda e, p, t=None: 1.0, check_proposals=bad)


def _all_meta_texts() -> list[str]:
    """Every meta-prompt's instructions and field descriptions, as the checker reads them."""
    import importlib

    from dspy_icl_opt.search.base import meta_prompt_texts

    texts = []
    for module in ("opro_prompts", "apo_prompts", "abo_prompts", "ape_prompts", "promptagent_prompts",
                   "joint_prompts"):
        mod = importlib.import_module(f"dspy_icl_opt.optimizers.{module}")
        for value in vars(mod).values():
            if isinstance(value, type) and issubclass(value, dspy.Signature) and value is not dspy.Signature:
                texts += meta_prompt_texts(value, fields=True)
    return texts


def test_a_meta_prompt_field_description_copied_back_is_the_meta_prompt():
    """OPRO on hyperbaton (split 0, c05065b) returned "what the training data looks like, and the answers its labels
    use", the description of its meta-prompt's data_summary field: the fields' descriptions are meta-prompt text."""
    from dspy_icl_opt.optimizers.opro_prompts import ProposeInstruction
    from dspy_icl_opt.search.base import meta_prompt_texts

    echoed = "what the training data looks like, and the answers its labels use"
    checker = ProposalChecker(_examples())
    assert checker.problem(echoed, meta_texts=meta_prompt_texts(ProposeInstruction)) is None  # instructions alone
    assert checker.problem(echoed, meta_texts=meta_prompt_texts(ProposeInstruction, fields=True)) == "copies the meta-prompt"


@pytest.mark.parametrize("text", [
    "Answer the multiple-choice question. Reply with the exact text of the correct option.",
    "Read the sentence, decide which person the pronoun points to, and reply with that option's text.",
    "Decide which option to return, then return only its letter.",
    "Look at the labels the examples use and answer with one of them, nothing else.",
    "Think step by step about the order of the adjectives, then give the letter of the correct sentence.",
])
def test_instructions_pass_beside_every_meta_prompts_field_descriptions(checker, text):
    assert checker.problem(text, meta_texts=_all_meta_texts()) is None
