"""How often a prompt model's answer to each meta-prompt of OPRO, APO, APE, ABO and PromptAgent is usable.

Each meta-prompt is asked ``--tries`` times (temperature 1.0, a different seed each time) with inputs
built from a bundled task, through the same adapter and the same checks the strategies use: an answer
is parsed when the adapter reads every output field, and usable when the strategy's own check accepts it
too (an instruction between or without tags that passes the shared check of
:mod:`dspy_icl_opt.search.proposals`, a numbered reason, a procedure of at least two steps, a step
number in range, a demonstration that labels every step ...). No retries: first answers only (a strategy
retries an unusable answer up to ``max_retries`` times).

Run (the README's figures come from this command):
    python examples/benchmarks/bench_meta_prompts.py --task date_understanding --tries 20
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import dspy

from dspy_icl_opt.optimizers.abo_prompts import (
    LocateFailingStep,
    Procedure,
    SplitStep,
    WriteProcedure,
    demonstration_signature,
    follows_every_step,
    format_fields,
    parse_sub_steps,
    step_number,
)
from dspy_icl_opt.optimizers.ape_prompts import (
    InduceInstruction,
    VaryInstruction,
    read_instruction,
    render_demonstrations,
)
from dspy_icl_opt.optimizers.apo_prompts import DiagnoseErrors, FixInstruction, Paraphrase, clean_text, edited_instructions
from dspy_icl_opt.optimizers.opro_prompts import ProposeInstruction, extract_instruction, render_exemplars
from dspy_icl_opt.optimizers.promptagent_prompts import AnalyzeErrors, RewriteInstruction, usable_instruction
from dspy_icl_opt.search.grounding import data_summary, shown_example
from dspy_icl_opt.search.meta import MetaPromptAdapter, numbered_items
from dspy_icl_opt.search.proposals import ProposalChecker, clean_proposal
from dspy_icl_opt.search.surgery import describe_signature

PROCEDURE = ("1. Read the question and find the reference date it gives.\n2. Work out the date it asks for from that "
             "reference.\n3. Write that date as MM/DD/YYYY and pick the option that matches it.")
MAX_INSTRUCTION_CHARS = 500


def probes(task: Any, program: dspy.Module) -> dict[str, tuple[type[dspy.Signature], dict[str, Any], Callable]]:
    """Each meta-prompt: its signature, realistic inputs, and the check its strategy applies."""
    checker = ProposalChecker.for_program(program, task.train)  # as the strategies check (field names too)
    program = program.named_predictors()[0][1]  # the bundled QA program has one predictor
    outputs = set(program.signature.output_fields)
    train = [shown_example(e, outputs) for e in task.train]  # as the strategies show them (no metric-only labels)
    example, wrong = train[0], dict(train[1].inputs())
    signature = describe_signature(program)
    summary = data_summary(program, train)
    failure = (f"## Example 1\nInputs:\n  question: {wrong['question']}\nOutput of this step:\n  answer: "
               f"(A) 01/01/2019\nExpected output:\n  answer: {train[1].answer}")
    wrong_answer = (f"Example 1\nInput:\n  question: {wrong['question']}\nModel output:\n  answer: (A) 01/01/2019\n"
                    f"Correct output:\n  answer: {train[1].answer}")
    procedure = Procedure.parse(PROCEDURE)
    final = {"answer": program.signature.output_fields["answer"]}

    def instruction(text: str, signature: type[dspy.Signature], allowed: str = "") -> bool:
        """An instruction by the strategies' shared check (not a copied example, question or echo)."""
        text = clean_proposal(text)
        return bool(text) and checker.problem(text, allowed=allowed, meta_texts=[signature.instructions]) is None

    return {
        "OPRO ProposeInstruction": (ProposeInstruction, {
            "task": signature, "data_summary": summary,
            "previous_instructions": "text:\nAnswer the question.\nscore:\n42\n\ntext:\nThink about the dates, then "
                                     "answer with the option letter.\nscore:\n47",
            "example_problems": render_exemplars(train[:3], "system")},
            lambda a: 0 < len(extract_instruction(a.new_instruction)) <= MAX_INSTRUCTION_CHARS
            and instruction(extract_instruction(a.new_instruction), ProposeInstruction,
                            "Answer the question.\nThink about the dates, then answer with the option letter.")),
        "APO DiagnoseErrors": (DiagnoseErrors, {
            "task": signature, "data_summary": summary, "instruction": "Answer the question.", "failures": failure,
            "n_reasons": 1}, lambda a: bool(numbered_items(a.reasons))),
        "APO FixInstruction": (FixInstruction, {
            "task": signature, "data_summary": summary, "instruction": "Answer the question.", "failures": failure,
            "problem": "The instruction does not say to compute the date from the reference date.",
            "n_instructions": 1},
            lambda a: any(instruction(t, FixInstruction, "Answer the question.")
                          for t in edited_instructions(a.new_instructions, 1))),
        "APO Paraphrase": (Paraphrase, {"instruction": "Work out the date step by step, then answer with the option "
                                                       "letter."},
                           lambda a: instruction(clean_text(a.paraphrase), Paraphrase, "Work out the date step by step, "
                                                 "then answer with the option letter.")),
        "PromptAgent AnalyzeErrors": (AnalyzeErrors, {
            "task": signature, "data_summary": summary, "instruction": "Answer the question.",
            "wrong_answers": wrong_answer, "n_reasons": 3}, lambda a: bool(numbered_items(a.reasons))),
        "PromptAgent RewriteInstruction": (RewriteInstruction, {
            "task": signature, "data_summary": summary, "earlier_versions": "1. Answer the question.",
            "instruction": "Answer the question with the option letter.", "wrong_answers": wrong_answer,
            "reasons": "1. It does not say to compute the date from the reference date."},
            lambda a: usable_instruction(a.new_instruction, MAX_INSTRUCTION_CHARS) is not None
            and instruction(usable_instruction(a.new_instruction, MAX_INSTRUCTION_CHARS), RewriteInstruction,
                            "Answer the question.\nAnswer the question with the option letter.")),
        "APE InduceInstruction": (InduceInstruction, {
            "task": signature, "demonstrations": render_demonstrations(train[:5])},
            lambda a: bool(read_instruction(a.instruction))
            and instruction(read_instruction(a.instruction), InduceInstruction)),
        "APE VaryInstruction": (VaryInstruction, {"instruction": "Work out the date the question asks for, then answer "
                                                                 "with the option letter."},
                                lambda a: bool(read_instruction(a.variation))
                                and instruction(read_instruction(a.variation), VaryInstruction,
                                                "Work out the date the question asks for, then answer with the "
                                                "option letter.")),
        "ABO WriteProcedure": (WriteProcedure, {
            "task": f"{signature}\nCurrent instruction: Answer the question.",
            "examples": "\n\n".join(f"Example {i}:\n{format_fields(dict(e.inputs()))}\n{format_fields(dict(e.labels()))}"
                                    for i, e in enumerate(train[:3], 1))},
            lambda a: Procedure.parse(a.procedure) is not None),
        "ABO WriteDemonstration": (demonstration_signature(final), {
            "task": signature, "procedure": procedure.render(),
            "example_inputs": format_fields(dict(example.inputs())),
            "correct_outputs": format_fields(dict(example.labels()))},
            lambda a: follows_every_step(a.execution, procedure)),
        "ABO LocateFailingStep": (LocateFailingStep, {
            "procedure": procedure.render(), "demonstration": "(none)", "task_input": f"question: {wrong['question']}",
            "model_output": "reasoning: The date is 01/01/2019.\nanswer: (A) 01/01/2019",
            "correct_output": f"answer: {train[1].answer}"},
            lambda a: step_number(a.failing_step, len(procedure)) is not None),
        "ABO SplitStep": (SplitStep, {
            "task": signature, "step": procedure.render_step(2),
            "failures": "- it added days to the wrong date\n- it forgot that the month changes"},
            lambda a: parse_sub_steps(a.sub_steps, other_steps=[s.text for s in procedure.steps]) is not None),
    }


def answer_rates(lm: dspy.BaseLM, signature: type[dspy.Signature], inputs: dict[str, Any], check: Callable,
                 tries: int, show: Callable[[str], None] | None = None) -> tuple[int, int, int]:
    """(parsed, usable, tries): one call per try, no retry, no JSON fallback. Parsed: the adapter read every
    output field; usable: the strategy's own check accepts the answer too. ``show`` gets each parsed answer
    the check refused (its output fields, one line)."""
    parsed = usable = 0
    for seed in range(tries):
        try:
            with dspy.context(lm=lm, adapter=MetaPromptAdapter()):
                answer = dspy.Predict(signature)(**inputs, config={"temperature": 1.0, "seed": 1000 + seed,
                                                                   "rollout_id": 1000 + seed})
        except Exception:  # an unreadable answer
            continue
        parsed += 1
        ok = bool(check(answer))
        usable += ok
        if show is not None and not ok:
            fields = {name: " ".join(str(answer.get(name, "")).split())[:300] for name in signature.output_fields}
            show(str(fields))
    return parsed, usable, tries


def measure(lm: dspy.BaseLM, task_name: str = "date_understanding", tries: int = 20,
            only: tuple[str, ...] = (), show: bool = False) -> dict[str, tuple[float, float]]:
    """Per meta-prompt whose name starts with one of ``only`` (all when empty): (share parsed, share usable)."""
    from dspy_icl_opt.programs import load_task, make_program

    task = load_task(task_name, seed=0, train_size=8, val_size=2, test_size=2)
    program = make_program("qa", task)
    rates = {}
    for name, (signature, inputs, check) in probes(task, program).items():
        if only and not name.startswith(only):
            continue
        printer = (lambda line, name=name: print(f"refused ({name}): {line}")) if show else None
        parsed, usable, total = answer_rates(lm, signature, inputs, check, tries, printer)
        rates[name] = (parsed / total, usable / total)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="date_understanding")
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--lm", default="embedded")
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--only", default="", help="comma-separated name prefixes, e.g. APE,PromptAgent (default: all)")
    parser.add_argument("--show", action="store_true", help="print each parsed answer the strategy's check refused")
    args = parser.parse_args(argv)
    from loguru import logger

    from dspy_icl_opt.lm import resolve_lm

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    lm = resolve_lm(args.lm, temperature=1.0, max_tokens=args.max_tokens, cache=False)
    rates = measure(lm, args.task, args.tries, tuple(p for p in args.only.split(",") if p), show=args.show)
    print(f"| meta-prompt | parsed | usable by the strategy ({args.tries} first answers, {args.lm}) |\n|---|---|---|")
    for name, (parsed, usable) in rates.items():
        print(f"| {name} | {parsed:.0%} | {usable:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
