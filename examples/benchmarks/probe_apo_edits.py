"""How often APO's edit and paraphrase meta-prompts get an instruction back, rather than a remark about one.

The 1.5B proposer's APO run on date_understanding split 2 (``results/run_aw15_date_understanding_seed2.jsonl``)
kept the program as given; 16 of its 26 candidates were remarks about an instruction ("The instruction should
specify the format for the date (MM/DD/YYYY) in the `answer` field of the output.", "The instruction states that
the user needs to answer the multiple-choice question. ..."). This probe asks the two meta-prompts with what a round of
that run gives them (the program's instruction, three training examples answered wrongly, a gradient in the
1.5B proposer's words) and reads each answer as APO reads it (the shared proposal check, no retry).

Variants: ``E`` the edit meta-prompt as APO asks it, ``P`` the paraphrase of the program's instruction, ``PF`` the
paraphrase of the format candidate (the program's instruction with "Answer format: the `answer` must be ..."), which
the run's first paraphrase turned into "The instruction states that the user needs to answer the multiple-choice
question. ..."; a trailing ``I`` asks for "the instruction itself, addressed to the model ..., not a remark about
an instruction" in the meta-prompt's instructions and output field. A third argument names the prompt model
(default embedded).

Measured with the checks of 7055156 (10 tries each, usable / remarks): the 1.5B proposer E 7/10 (0), EI 9/10 (0), P 9/10 (0), PI
8/10 (0), PF 8/10 (0), PFI 9/10 (0); the 0.5B E 3/10 (0), EI 2/10 (0), P 9/10 (0), PI 6/10 (0). No variant wrote a
remark in 60 tries of the 1.5B, so the wording is not what the run needed, and the ``I`` wording was not adopted
(it cost the 0.5B 3 of 10 usable paraphrases). The run's remarks came from one lineage: its first remark (a
paraphrase of the format candidate, round 1, one of four children) scored 0.47 on the 17-example minibatch against
the start's 0.35, stayed in the beam until round 4, and 15 of the 20 children of rounds 2-5 repeat its wording.

Run (one model process):
    python examples/benchmarks/probe_apo_edits.py 10 E,EI,P,PI embedded-1.5b
    python examples/benchmarks/probe_apo_edits.py 10 E,EI,P,PI
    python examples/benchmarks/probe_apo_edits.py 10 PF,PFI embedded-1.5b
"""

from __future__ import annotations

import sys

import dspy

from dspy_icl_opt.lm import resolve_lm
from dspy_icl_opt.optimizers.apo_prompts import (
    Failure,
    FixInstruction,
    Paraphrase,
    clean_text,
    edited_instructions,
    render_failures,
)
from dspy_icl_opt.programs import load_task, make_program
from dspy_icl_opt.search.grounding import data_summary, format_instruction, output_spaces, shown_example
from dspy_icl_opt.search.meta import MetaPromptAdapter
from dspy_icl_opt.search.proposals import DESCRIBES_INSTRUCTION, ProposalChecker, clean_proposal
from dspy_icl_opt.search.scorer import Outcome
from dspy_icl_opt.search.surgery import describe_signature

#: A gradient as the 1.5B proposer wrote them on that run (its edits repeat this wording).
GRADIENT = "The instruction does not specify the format for the date (MM/DD/YYYY) in the `answer` field of the output."

#: The wording tried (variants ending in ``I``): the instruction itself, not a remark about one.
ITSELF_FIX = ("Improve an instruction so that it no longer causes a known problem.\n\n"
              "One step of a language-model program ran with the instruction below and got the listed examples wrong, "
              "for the stated reason. Write `n_instructions` improved instructions that fix that problem and would get "
              "such examples right, for the same task with the same inputs and outputs. Write each instruction itself, "
              "the text the step will read, addressed to the model that does the task (\"Answer ...\", \"Read ...\"), "
              "not a remark about an instruction. Each must be complete and stand on its own.")
ITSELF_FIX_DESC = ("the improved instruction itself, as the model will read it; when asked for several, a numbered list "
                   "('1. ...'), each complete")
ITSELF_PARAPHRASE = ("Reword an instruction: keep its meaning and every requirement it states, change the wording.\n"
                     "Write the reworded instruction itself, addressed to the model that follows it, not a remark about it.")
ITSELF_PARAPHRASE_DESC = "the reworded instruction itself"


def _failures(examples: list[dspy.Example], outputs: set[str]) -> str:
    """Three examples answered with a wrong option, rendered by APO's own :func:`render_failures`."""
    failures = [Failure(i, shown_example(example, outputs),
                        Outcome(0.0, {"answer": next(c for c in example.choices if c != example.answer)}))
                for i, example in enumerate(examples)]
    return render_failures(failures, "predictor")


def main(argv: list[str]) -> int:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    tries, variants = int(argv[0]), argv[1].split(",")
    lm_name = argv[2] if len(argv) > 2 else "embedded"
    task = load_task("date_understanding", seed=2, train_size=40, val_size=40, test_size=100)
    program = make_program("qa", task)
    predictor = program.named_predictors()[0][1]
    checker = ProposalChecker.for_program(program, task.train)
    start = predictor.signature.instructions
    lm = resolve_lm(lm_name, temperature=1.0, max_tokens=400, cache=False)
    edit_inputs = {"task": describe_signature(predictor), "data_summary": data_summary(predictor, task.train),
                   "instruction": start, "problem": GRADIENT, "n_instructions": 1,
                   "failures": _failures(task.train[:3], set(predictor.signature.output_fields))}
    itself_fix = FixInstruction.with_instructions(ITSELF_FIX).with_updated_fields("new_instructions",
                                                                                  desc=ITSELF_FIX_DESC)
    itself_paraphrase = Paraphrase.with_instructions(ITSELF_PARAPHRASE).with_updated_fields(
        "paraphrase", desc=ITSELF_PARAPHRASE_DESC)
    for variant in variants:
        edit = variant.startswith("E")
        if variant.endswith("I"):
            signature = itself_fix if edit else itself_paraphrase
        else:
            signature = FixInstruction if edit else Paraphrase
        source = format_instruction(start, output_spaces(predictor, task.train)) if "F" in variant else start
        inputs = edit_inputs if edit else {"instruction": source}
        usable = described = 0
        for t in range(tries):
            try:
                with dspy.context(lm=lm, adapter=MetaPromptAdapter()):
                    answer = dspy.Predict(signature)(**inputs, config={"temperature": 1.0, "seed": 3000 + t,
                                                                       "rollout_id": 3000 + t})
                raw = (edited_instructions(answer.new_instructions, 1) or [""])[0] if edit else clean_text(
                    answer.paraphrase)
                text = clean_proposal(raw)
                meta = [signature.instructions]
                text = checker.without_meta_sentences(text, meta_texts=meta, allowed=inputs["instruction"]) or text
                why = checker.problem(text, allowed=inputs["instruction"], meta_texts=meta) if text else "nothing read"
            except Exception as exc:  # an unreadable answer
                text, why = "", f"not parsed ({type(exc).__name__})"
            usable += why is None
            described += why == DESCRIBES_INSTRUCTION
            print(f"{variant} try {t}: {'usable' if why is None else why} | {' '.join(text.split())[:160]}", flush=True)
        print(f"== {variant}: {usable}/{tries} usable, {described}/{tries} describe an instruction", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
