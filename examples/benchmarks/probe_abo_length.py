"""How long ABO's procedures are, and whether the task model's work under them fits its token cap.

ABO's run with the 1.5B proposer on date_understanding split 2 (last session, stopped) had 89 task answers cut
at the task model's 256-token cap in step 0, where each procedure is run as it is ("Follow the steps strictly."):
a cut answer has no `answer` field, so it scores 0 and costs about 35 s. This probe asks ABO's ``WriteProcedure``
meta-prompt for procedures as ABO asks it (three solved training examples, the task with its data summary) and
runs the 0.5B task model (temperature 0, 256 tokens, as the benchmark) with each procedure on the first training
examples, counting steps, words, cut answers and correct answers.

Variants: ``W`` the meta-prompt as ABO asks it; ``WB`` the same with a bound on length in its instructions and
output field ("3 to 5 steps, one short sentence each ..."); a ``D`` (``WD``, ``WBD``) runs the procedure as
ABO's demonstration arm does: with a worked example the prompt model writes (``WriteDemonstration`` on one of the
last three training examples, kept when it labels every step and passes the metric) installed as a demo whose
`reasoning` is the worked steps; ``WDB`` asks for that demonstration in brief (one short labelled line per
step, under 80 words in all). A fourth argument names the prompt model (default embedded).

Measured with the 1.5B proposer (4 training examples per procedure; answers cut / correct):
``W`` 4 procedures of 4.8 steps, 90 words on average (most 217): 0/16 cut, 5/16 correct, 71 tokens an answer;
``WB`` 53 words (most 92): 0/16 cut, 3/16 correct, 73 tokens; ``WD`` demonstrations of 162 words (most 200):
16/16 cut, 0/16 correct; ``WDB`` demonstrations of 106 words (most 115; asked for under 80): 8/8 cut, 1/8
correct. (Measured before the probe showed the solved examples as ABO does, without the `choices` label the metric
reads; the procedures were written from examples that showed it.) The procedure's length does not cut the task model's answers; a written demonstration does: the task
model copies its shape (the ``WDB`` answers restate the question and all six options under "Step 1" before any
reasoning) and runs out of its 256 tokens. So the length bound is not adopted; ABO instead stops a demonstration
arm whose first 3 answers cannot be read while the procedure's alone were (``UNREADABLE_PROBE``, 9d76c65).

Run (one model process; it loads the task model beside the prompt model):
    python examples/benchmarks/probe_abo_length.py 4 4 W,WB embedded-1.5b
    python examples/benchmarks/probe_abo_length.py 4 4 WD embedded-1.5b
    python examples/benchmarks/probe_abo_length.py 2 4 WDB embedded-1.5b
"""

from __future__ import annotations

import random
import sys
from statistics import mean

import dspy

from dspy_icl_opt.lm import resolve_lm
from dspy_icl_opt.optimizers.abo import PROCEDURE_EXAMPLES, arm_instruction, task_description
from dspy_icl_opt.optimizers.abo_prompts import (
    Demonstration,
    Procedure,
    WriteProcedure,
    demonstration_signature,
    follows_every_step,
    format_fields,
    render_solved_examples,
)
from dspy_icl_opt.programs import load_task, make_program
from dspy_icl_opt.search.grounding import format_sentence, output_spaces, shown_example
from dspy_icl_opt.search.meta import MetaPromptAdapter
from dspy_icl_opt.search.surgery import apply_state, demo_to_dict, read_state

TASK_MAX_TOKENS = 256

BOUNDED = ("Write a short procedure that a less capable model can follow to do this task: 3 to 5 numbered steps, in "
           "the order it should act, each one short sentence naming one concrete action on the inputs. The model "
           "writes its work for every step within about 150 words, so keep the steps few and brief. Say how to work, "
           "not what the task is.")
BOUNDED_DESC = "3 to 5 numbered steps, one short sentence per line ('1. ...', '2. ...')"
BRIEF_WORK = ("Solve the example by carrying out the procedure exactly, in order: one short line per step (at most 15 "
              "words), starting with the step's label ('Step 1:', 'Step 2.1:' ...) and giving its intermediate result. "
              "Keep the whole work under 80 words. The work must arrive at the given correct outputs.")
BRIEF_WORK_DESC = "the step-by-step work, one short labelled line per step"


def _demonstration(prompt_lm: dspy.BaseLM, signature: type[dspy.Signature], about: str, procedure: Procedure,
                   task, final_fields: dict, t: int) -> Demonstration | None:
    """A worked training example (from outside the examples run) written as ABO's ``_demo_attempt`` asks for it:
    kept when it labels every step and its final answer passes the metric; up to three examples are tried."""
    for j, example in enumerate(task.train[-3:]):
        inputs = demo_to_dict(example.inputs())
        gold = {k: v for k, v in demo_to_dict(example.labels()).items() if k in final_fields}
        try:
            with dspy.context(lm=prompt_lm, adapter=MetaPromptAdapter()):
                answer = dspy.Predict(signature)(task=about, procedure=procedure.render(),
                                                 example_inputs=format_fields(inputs),
                                                 correct_outputs=format_fields(gold),
                                                 config={"temperature": 1.0, "seed": 6000 + 10 * t + j,
                                                         "rollout_id": 6000 + 10 * t + j})
        except Exception:  # an unreadable answer
            continue
        demo = Demonstration(-1, inputs, str(answer.execution),
                             {n: answer.get(f"final_{n}") for n in final_fields})
        prediction = dspy.Prediction(reasoning=demo.execution, **demo.outputs)
        if follows_every_step(demo.execution, procedure) and float(task.metric(example, prediction)) >= 1.0:
            return demo
    return None


def main(argv: list[str]) -> int:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    tries, n_examples, variants = int(argv[0]), int(argv[1]), argv[2].split(",")
    lm_name = argv[3] if len(argv) > 3 else "embedded"
    task = load_task("date_understanding", seed=2, train_size=40, val_size=40, test_size=100)
    program = make_program("qa", task)
    name, predictor = program.named_predictors()[0]
    state = read_state(program)
    about = task_description(predictor, state[name].instruction, task.train)
    outputs = set(predictor.signature.output_fields)
    fmt = format_sentence(output_spaces(predictor, task.train))
    prompt_lm = resolve_lm(lm_name, temperature=1.0, max_tokens=400, cache=False)
    task_lm = resolve_lm("embedded", temperature=0.0, max_tokens=TASK_MAX_TOKENS, cache=False)
    final_fields = dict(predictor.signature.output_fields)
    demo_signature = demonstration_signature(final_fields)
    brief_demo_signature = demo_signature.with_instructions(BRIEF_WORK).with_updated_fields("execution",
                                                                                            desc=BRIEF_WORK_DESC)
    bounded = WriteProcedure.with_instructions(BOUNDED).with_updated_fields("procedure", desc=BOUNDED_DESC)
    runs = task.train[:n_examples]
    for variant in variants:
        signature = bounded if variant.startswith("WB") else WriteProcedure
        steps, words, cut, correct, tokens, demo_words = [], [], 0, 0, [], []
        for t in range(tries):
            shown = render_solved_examples([shown_example(ex, outputs) for ex in
                                            random.Random(5000 + t).sample(task.train, PROCEDURE_EXAMPLES)])
            try:
                with dspy.context(lm=prompt_lm, adapter=MetaPromptAdapter()):
                    answer = dspy.Predict(signature)(task=about, examples=shown,
                                                     config={"temperature": 1.0, "seed": 5000 + t,
                                                             "rollout_id": 5000 + t})
                procedure = Procedure.parse(answer.procedure)
            except Exception as exc:  # an unreadable answer
                print(f"{variant} try {t}: not parsed ({type(exc).__name__})", flush=True)
                continue
            if procedure is None:
                print(f"{variant} try {t}: fewer than two steps", flush=True)
                continue
            text = procedure.render()
            pstate = state[name].with_reasoning_field("reasoning")
            demo = None
            if "D" in variant:  # ABO's demonstration arm: a worked example the prompt model writes
                writer = brief_demo_signature if variant.endswith("DB") else demo_signature
                demo = _demonstration(prompt_lm, writer, about, procedure, task, final_fields, t)
                if demo is None:
                    print(f"{variant} try {t}: no demonstration that follows every step and passes the metric",
                          flush=True)
                    continue
                demo_words.append(len(demo.execution.split()))
                pstate = pstate.with_demos([demo.as_demo("reasoning")])
            pstate = pstate.with_instruction(arm_instruction(procedure, demo, fmt=fmt, reasoning="reasoning"))
            steps.append(len(procedure))  # the procedures run (with a demonstration where one is asked for)
            words.append(len(text.split()))
            candidate = apply_state(program, state.replace(name, pstate))
            row = []
            for example in runs:
                with dspy.context(lm=task_lm):
                    try:
                        prediction = candidate(**example.inputs())
                        score = float(task.metric(example, prediction))
                    except Exception:  # an answer the adapter could not read
                        score = 0.0
                usage = task_lm.history[-1].get("usage") or {}
                n = int(usage.get("completion_tokens") or 0)
                tokens.append(n)
                cut += n >= TASK_MAX_TOKENS
                correct += score >= 1.0
                row.append(f"{n}{'*' if n >= TASK_MAX_TOKENS else ''}/{int(score)}")
                if example is runs[0]:
                    first = " ".join(str((task_lm.history[-1].get("outputs") or [""])[0]).split())
            shown_demo = f", demonstration {demo_words[-1]} words" if "D" in variant else ""
            print(f"{variant} try {t}: {len(procedure)} steps, {words[-1]} words{shown_demo} | tokens/correct "
                  f"{' '.join(row)} | {' '.join(text.split())[:200]}\n    first answer: {first[:300]}", flush=True)
        runs_done = len(tokens)
        if runs_done:
            print(f"== {variant}: {len(steps)}/{tries} procedures, steps {mean(steps):.1f} (most {max(steps)}), "
                  f"words {mean(words):.0f} (most {max(words)}); task answers: {cut}/{runs_done} cut at "
                  f"{TASK_MAX_TOKENS} tokens, {correct}/{runs_done} correct, mean {mean(tokens):.0f} tokens"
                  + (f"; demonstrations {mean(demo_words):.0f} words (most {max(demo_words)})" if demo_words else ""),
                  flush=True)
        else:
            print(f"== {variant}: no usable procedure in {tries} tries", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
