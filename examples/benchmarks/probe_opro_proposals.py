"""How often OPRO's proposer writes a usable instruction from the inputs a real run gives it, per meta-prompt variant.

``bench_meta_prompts.py`` asks OPRO's meta-prompt with a hand-written trajectory ("Think about the dates ...");
this probe asks it with what step 1 of a run on the bundled ``qa`` program shows: the program's own instruction
and the format candidate as the scored trajectory, and three training problems. Each answer is read and checked as
OPRO reads it (``extract_instruction``, the meta-prompt's sentences dropped, the shared proposal check). No retry.

Variants (letters combine): ``A`` the exemplars with every label (as OPRO showed them before
``SearchContext.shown_example``: the bundled tasks' ``choices`` shown as an output), ``F`` only the labels the program writes, ``R`` the example
problems before the scored instructions (the instructions last, nearest the answer), ``2`` two problems instead
of three, ``N`` no example problems at all, ``T`` a later step's trajectory (three proposals of the 1.5B proposer's
date_understanding split 2 run added, scored as there), ``B`` the instruction slot as a bare ``<INS>`` line (as
before the slot was labelled ``instruction: <INS>``). A fifth argument names the prompt model (default embedded).

Run (the BENCHMARKS.md figures come from these commands; one model process each):
    python examples/benchmarks/probe_opro_proposals.py date_understanding 1 8 A,F,FR,FR2,N,FN
    python examples/benchmarks/probe_opro_proposals.py date_understanding 2 12 FT,FTB
    python examples/benchmarks/probe_opro_proposals.py date_understanding 2 10 FT,FTB embedded-1.5b
"""

from __future__ import annotations

import sys

import dspy

from dspy_icl_opt.lm import resolve_lm
from dspy_icl_opt.optimizers.opro_prompts import (
    INS_OPEN,
    LABELLED_SLOT,
    ProposeInstruction,
    TrajectoryEntry,
    extract_instruction,
    render_exemplars,
    render_trajectory,
)
from dspy_icl_opt.programs import load_task, make_program
from dspy_icl_opt.search.grounding import data_summary, format_instruction, output_spaces, shown_example
from dspy_icl_opt.search.meta import MetaPromptAdapter
from dspy_icl_opt.search.proposals import ProposalChecker, clean_proposal
from dspy_icl_opt.search.surgery import describe_signature


#: Three proposals of the 1.5B proposer's run on date_understanding split 2 (step 1) with their minibatch scores:
#: a later step's trajectory (variant ``T``).
LATER = (("Answer the multiple-choice question. Reply with the exact text of the correct option. The correct answer is "
          "the one that is 2 hours after the current date. Make sure to include the month, day and year.", 0.44),
         ("Answer the multiple-choice question. The correct answer is the one that is 1 hour after the current date. "
          "Make sure to include the month, day and year in MM/DD/YYYY format.", 0.44),
         ("Answer the multiple-choice question. Reply with the exact text of the correct option. Make sure the date is "
          "accurate and the answer is 1 day after the current date.", 0.38))

#: OPRO's meta-prompt with the example problems before the scored instructions (variant ``R``).
ProblemsFirst = ProposeInstruction.delete("example_problems").insert(
    2, "example_problems", ProposeInstruction.input_fields["example_problems"], str)


def main(argv: list[str]) -> int:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    task_name, seed, tries, variants = argv[0], int(argv[1]), int(argv[2]), argv[3].split(",")
    lm_name = argv[4] if len(argv) > 4 else "embedded"
    task = load_task(task_name, seed=seed, train_size=40, val_size=40, test_size=100)
    program = make_program("qa", task)
    predictor = program.named_predictors()[0][1]
    checker = ProposalChecker.for_program(program, task.train)
    start = predictor.signature.instructions
    formatted = format_instruction(start, output_spaces(predictor, task.train)) or start
    first = [TrajectoryEntry(0, 0, start, "system", 0.30), TrajectoryEntry(1, 0, formatted, "system", 0.31)]
    later = first + [TrajectoryEntry(2 + i, 1, text, "system", score) for i, (text, score) in enumerate(LATER)]
    fields = (*predictor.signature.input_fields, *predictor.signature.output_fields)
    outputs = set(predictor.signature.output_fields)
    lm = resolve_lm(lm_name, temperature=1.0, max_tokens=400, cache=False)
    for variant in variants:
        trajectory = later if "T" in variant else first
        shown = "\n".join(entry.instruction for entry in trajectory)
        signature = ProblemsFirst if "R" in variant else ProposeInstruction
        problems = [shown_example(e, outputs) if "F" in variant else e for e in task.train[:3]]
        problems = problems[:2] if "2" in variant else problems
        inputs = {"task": describe_signature(predictor), "data_summary": data_summary(predictor, task.train),
                  "previous_instructions": render_trajectory(trajectory),
                  "example_problems": "(none)" if "N" in variant else render_exemplars(problems, "system")}
        if "B" in variant:
            inputs["example_problems"] = inputs["example_problems"].replace(LABELLED_SLOT, INS_OPEN)
        usable = 0
        for t in range(tries):
            try:
                with dspy.context(lm=lm, adapter=MetaPromptAdapter()):
                    answer = dspy.Predict(signature)(**inputs, config={"temperature": 1.0, "seed": 2000 + t,
                                                                       "rollout_id": 2000 + t})
                text = clean_proposal(extract_instruction(answer.new_instruction, fields))
                meta = [ProposeInstruction.instructions]
                text = checker.without_meta_sentences(text, meta_texts=meta, allowed=shown) or text
                why = checker.problem(text, allowed=shown, meta_texts=meta) if text else "nothing read"
            except Exception as exc:  # an unreadable answer
                text, why = "", f"not parsed ({type(exc).__name__})"
            usable += why is None
            print(f"{variant} try {t}: {'usable' if why is None else why} | {' '.join(text.split())[:160]}", flush=True)
        print(f"== {variant}: {usable}/{tries} usable", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
