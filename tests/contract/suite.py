"""The contract every optimizer must pass. Subclass `ContractSuite` in `test_<name>_contract.py`.

A subclass implements `make(task, *, task_lm, prompt_lm, **common)` returning a configured
optimizer (small settings, so a run takes well under a second with the fakes), and may override
`prompt_responder(task)`: a callable `(request) -> reply text` for the prompt model. The default
reply fills every output field the meta-prompt asks for with text that states the planted rule,
so any strategy has something to work with; int fields get 1, list fields a one-item list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import dspy
import pytest

from dspy_icl_opt.search.base import ICLOptimizer
from dspy_icl_opt.testing import format_chat_reply, planted_rule_task, scripted_lm, system_text
from dspy_icl_opt.testing.scripted import make_fake_lm

FIELD_LINE = re.compile(r"^\d+\. `(\w+)` \(([^)]*)\)", re.MULTILINE)


def rule_stating_responder(rule: str) -> Callable[[Any], str]:
    """Reply to any meta-prompt with the rule, varied by a hash of the request so samples differ."""

    def respond(request: Any) -> str:
        system = system_text(request)
        outputs = system.split("Your output fields are:", 1)[-1].split("All interactions", 1)[0]
        variant = sum(map(ord, str(request.messages[-1].text))) % 97
        config = request.config
        variant += int(config.temperature * 1000) if config.temperature else 0
        fields: dict[str, Any] = {}
        for name, kind in FIELD_LINE.findall(outputs):
            if kind.startswith("int"):
                fields[name] = 1
            elif kind.startswith("list"):
                fields[name] = [f"Step 1: {rule}.", "Step 2: give the answer."]
            elif kind.startswith("float"):
                fields[name] = 0.5
            elif kind.startswith("bool"):
                fields[name] = True
            else:
                fields[name] = f"<INS>To answer, {rule} ({variant}).</INS>"
        return format_chat_reply(fields)

    return respond


class KilledAfter:
    """An engine that answers ``n`` requests, then stops the process as Ctrl-C (or kill -9) would."""

    def __init__(self, engine: Any, n: int) -> None:
        self.engine, self.n, self.call_count = engine, n, 0

    def complete(self, request: Any) -> Any:
        if self.call_count >= self.n:
            raise KeyboardInterrupt
        self.call_count += 1
        return self.engine.complete(request)

    def stream(self, request: Any) -> Any:
        return self.engine.stream(request)

    def close(self) -> None:
        self.engine.close()

    @property
    def supports_continuation_scoring(self) -> bool:  # what the wrapped engine can do, this one can
        return bool(getattr(self.engine, "supports_continuation_scoring", False))


def state_of(program: dspy.Module) -> str:
    return json.dumps(program.dump_state(), sort_keys=True, default=str)


class ContractSuite:
    """Budget caps exact, seed determinism, resume without repeated calls, student untouched, report."""

    #: Set False for strategies that make no prompt-model calls.
    uses_prompt_model = True

    def make(self, task: Any, *, task_lm: dspy.BaseLM, prompt_lm: dspy.BaseLM, **common: Any) -> ICLOptimizer:
        raise NotImplementedError

    def prompt_responder(self, task: Any) -> Callable[[Any], str]:
        return rule_stating_responder(task.rule)

    # ------------------------------------------------------------------ helpers
    def _task(self):
        return planted_rule_task("vowels", train_size=8, val_size=6, seed=0)

    def _run(self, tmp_path=None, *, budget=None, seed=0, resume=None, kill_task_after=None):
        task = self._task()
        task_lm = task.lm()
        if kill_task_after is not None:
            task_lm = make_fake_lm(KilledAfter(task_lm.engine, kill_task_after), name=task_lm.model)
        prompt_lm = scripted_lm(self.prompt_responder(task))
        common: dict[str, Any] = {"seed": seed, "budget": budget, "progress": False}
        if tmp_path is not None:
            common["log_dir"] = tmp_path
        optimizer = self.make(task, task_lm=task_lm, prompt_lm=prompt_lm, **common)
        student = task.program()
        before = state_of(student)
        program = optimizer.compile(student, trainset=task.train, valset=task.val, resume=resume)
        return optimizer, program, student, before, task_lm, prompt_lm

    # -------------------------------------------------------------------- tests
    def test_student_untouched_and_program_returned(self):
        optimizer, program, student, before, *_ = self._run()
        assert state_of(student) == before
        assert program is not student
        assert optimizer.report_ is not None and optimizer.report_.candidates

    def test_task_call_cap_is_exact(self):
        optimizer, _, _, _, task_lm, _ = self._run(budget={"max_task_calls": 5})
        report = optimizer.report_
        assert report.stopped_by_budget
        assert report.spent["task"].calls == 5
        assert task_lm.engine.call_count == 5

    def test_prompt_call_cap_is_respected(self):
        if not self.uses_prompt_model:
            pytest.skip("this strategy makes no prompt-model calls")
        optimizer, _, _, _, _, prompt_lm = self._run(budget={"max_prompt_calls": 1})
        report = optimizer.report_
        assert report.spent["prompt"].calls == prompt_lm.engine.call_count <= 1

    def test_same_seed_same_report(self):
        first, *_ = self._run(seed=3)
        second, *_ = self._run(seed=3)
        strip = lambda r: [(c.state, c.scores) for c in r.candidates]  # noqa: E731
        assert strip(first.report_) == strip(second.report_)
        assert first.report_.best_state == second.report_.best_state

    def test_resume_after_interruption_makes_no_repeated_call(self, tmp_path):
        full, full_program, _, _, full_task, full_prompt = self._run()
        cut, _, _, _, cut_task, cut_prompt = self._run(tmp_path, budget={"max_task_calls": 6})
        assert cut.report_.stopped_by_budget
        resumed, program, _, _, task_lm, prompt_lm = self._run(tmp_path)
        # Together, the interrupted and the resumed run call the LMs exactly as often as one run.
        assert cut_task.engine.call_count + task_lm.engine.call_count == full_task.engine.call_count
        assert cut_prompt.engine.call_count + prompt_lm.engine.call_count == full_prompt.engine.call_count
        assert resumed.report_.best_state == full.report_.best_state
        assert state_of(program) == state_of(full_program)

    @pytest.mark.parametrize("where", [0.5, "validation"])
    def test_killed_mid_search_or_in_validation_resumes_identically(self, tmp_path, where):
        full, full_program, _, _, full_task, full_prompt = self._run()
        total = full_task.engine.call_count
        validation = full.report_.extra.get("final_choice", {}).get("examples", 0) * len(full.report_.best_state or {})
        cut_at = max(1, total - max(1, validation // 2)) if where == "validation" else max(1, int(total * where))
        with pytest.raises(KeyboardInterrupt):
            self._run(tmp_path, kill_task_after=cut_at)
        resumed, program, _, _, task_lm, prompt_lm = self._run(tmp_path)
        # the killed run made cut_at task calls; together with the resumed run, exactly one run's worth
        assert cut_at + task_lm.engine.call_count == total
        assert resumed.report_.best_state == full.report_.best_state
        assert state_of(program) == state_of(full_program)
        # the report counts the replayed work as the uninterrupted run's does (parse rates per meta-prompt included)
        assert resumed.report_.counters == full.report_.counters
        assert resumed.report_.extra.get("meta_prompts") == full.report_.extra.get("meta_prompts")

    def test_finished_run_resumes_with_zero_calls(self, tmp_path):
        self._run(tmp_path)
        _, _, _, _, task_lm, prompt_lm = self._run(tmp_path)
        assert task_lm.engine.call_count == 0
        assert prompt_lm.engine.call_count == 0

    def test_report_and_program_saved(self, tmp_path):
        optimizer, program, *_ = self._run(tmp_path)
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["optimizer"] == type(optimizer).__name__
        assert report["finished"] is True
        if (tmp_path / "program").is_dir():  # a signature changed (a reasoning field added): the whole program
            loaded = dspy.load(str(tmp_path / "program"), allow_pickle=True)
        else:
            loaded = self._task().program()
            loaded.load(str(tmp_path / "program.json"))
        assert state_of(loaded) == state_of(program)

    def test_bad_input_is_named(self):
        task = self._task()
        optimizer = self.make(task, task_lm=task.lm(), prompt_lm=scripted_lm(self.prompt_responder(task)),
                              progress=False)
        with pytest.raises(ValueError, match="trainset"):
            optimizer.compile(task.program(), trainset=[])
        with pytest.raises(ValueError, match=r"input field\(s\) \['question'\]"):
            optimizer.compile(task.program(), trainset=[dspy.Example(text="x", answer="1").with_inputs("text")])
        with pytest.raises(ValueError, match="at least one dspy.Predict"):
            optimizer.compile(dspy.Module(), trainset=task.train)
