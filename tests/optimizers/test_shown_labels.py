"""Meta-prompts show an example's inputs and the labels the program writes, not the labels only the metric reads.

The bundled tasks carry ``choices`` (the option texts the metric reads) beside ``answer``; shown to the prompt
model as an output ("output: choices: [...]"), it reads as a field the program should write.
"""

from __future__ import annotations

import dspy
import pytest

from dspy_icl_opt.optimizers.abo import ABO
from dspy_icl_opt.optimizers.ape import APE
from dspy_icl_opt.optimizers.apo import APO
from dspy_icl_opt.optimizers.opro import OPRO
from dspy_icl_opt.optimizers.promptagent import PromptAgent
from dspy_icl_opt.search.grounding import shown_example
from dspy_icl_opt.testing import format_chat_reply, planted_rule_task, scripted_lm, system_text

MARK = "zzmetadatazz"
REPLIES = {
    "new_instruction": "<INS>Count the vowels of the word and answer with the number.</INS>",
    "instruction": "The instruction was to count the vowels of the word",
    "variation": "Count every vowel in the word, then answer with the count.",
    "reasons": "1. The instruction does not say what to count.",
    "new_instructions": "1. Count the vowels of the word and answer with the number.",
    "paraphrase": "Answer with the number of vowels in the word.",
    "procedure": "1. Read the word.\n2. Count its vowels.\n3. Answer with the count.",
}


def _with_metadata(examples: list[dspy.Example]) -> list[dspy.Example]:
    return [dspy.Example({**e.toDict(), "source": f"{MARK}{i}"}).with_inputs(*e.inputs().keys())
            for i, e in enumerate(examples)]


def test_a_label_the_program_does_not_write_is_left_out():
    example = dspy.Example(question="q", options="(A) x", choices=["x"], answer="x").with_inputs("question", "options")
    shown = shown_example(example, {"answer"})
    assert shown.toDict() == {"question": "q", "options": "(A) x", "answer": "x"}
    assert set(shown.inputs().keys()) == {"question", "options"}
    # labels named otherwise than the program's outputs: all kept, so the answer is still shown
    assert shown_example(example, {"gold"}).toDict() == example.toDict()


@pytest.mark.parametrize("cls", [OPRO, APO, APE, PromptAgent, ABO])
def test_meta_prompts_never_show_a_metric_only_label(cls):
    task = planted_rule_task("vowels", train_size=10, val_size=6, seed=0)
    requests: list[str] = []

    def respond(request) -> str:
        requests.append("\n".join(str(m.text) for m in request.messages))
        fields = [name for name in REPLIES if f"`{name}`" in system_text(request)]
        return format_chat_reply({name: REPLIES[name] for name in fields} or {"answer": "1"})

    optimizer = cls(task.metric, task_model=task.lm(), prompt_model=scripted_lm(respond), progress=False,
                    budget={"max_task_calls": 120, "max_prompt_calls": 8})
    train = _with_metadata(task.train)
    optimizer.compile(task.program(), trainset=train, valset=_with_metadata(task.val))
    shows_examples = [text for text in requests if any(str(e.answer) in text and e.question in text for e in train)]
    assert shows_examples, "no meta-prompt showed a training example: the check below would pass vacuously"
    assert not any(MARK in text for text in requests)
