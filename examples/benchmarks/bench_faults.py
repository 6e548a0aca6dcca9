"""Faults must never become results (issue 17): the figures, measured with fake LMs and a loopback LM server.

Prints, for every strategy (the contract suite's small settings, ``tests/contract``):

* capped runs: task and prompt call caps, 1 and 4 threads, with and without injected faults; a run is
  "over" when it spent more than its cap or when the meter disagrees with the calls the fake model answered;
* kill points survived: the task (or prompt) model dies mid-run at several points (API), the loopback
  server dies mid-run under the CLI, and a compiling process is killed with SIGKILL; a point is
  survived when the resumed run ends with the same program and scores as an uninterrupted one and the
  answered calls of both parts add up to one uninterrupted run (no successful call repeated);
* faults injected, and how many of them became a scored outcome (must be 0);
* bad inputs tried (API and CLI), each of which must fail with a named error (the argument or the
  config path, what was expected, no raw pydantic / SQLAlchemy / OSError text, no traceback);
* trials lost or duplicated by several workers on one SQLite and one PostgreSQL study (the latter
  with ``DSPY_ICL_OPT_TEST_PG_URL``, as CI's ``.ci/run`` sets it; otherwise "skipped (no server)").

Nothing here reaches the network beyond 127.0.0.1. Takes about a minute on 2 cores.

Run:
    python examples/benchmarks/bench_faults.py
    python examples/benchmarks/bench_faults.py --quick      # fewer kill points and caps
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the contract suites in tests/ hold each strategy's small settings
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy  # noqa: E402
import yaml  # noqa: E402
from loguru import logger  # noqa: E402

from dspy_icl_opt.search.faults import RunInterrupted  # noqa: E402
from dspy_icl_opt.testing import (  # noqa: E402
    always,
    any_of,
    correct_demos,
    make_words,
    planted_rule_task,
    rule_in_instruction,
    scripted_lm,
    simulated_task_lm,
)
from dspy_icl_opt.testing.faulty import faulty_lm  # noqa: E402
from dspy_icl_opt.testing.http_server import LoopbackLMServer  # noqa: E402

PG_ENV = "DSPY_ICL_OPT_TEST_PG_URL"
#: Marks of raw library text that a named error must not show.
RAW_MARKS = ("errors.pydantic.dev", "validation error for", "sqlalche.me", "[SQL:", "Traceback", "Errno")


@dataclass
class Tally:
    capped_runs: int = 0
    capped_over: int = 0
    kill_points: int = 0
    kill_survived: int = 0
    faults_injected: int = 0
    faults_scored: int = 0
    bad_api: int = 0
    bad_cli: int = 0
    bad_named: int = 0
    failures: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- strategies
def suites() -> dict[str, Any]:
    from tests.contract import test_abo_contract as abo
    from tests.contract import test_apo_contract as apo
    from tests.contract import test_demoselector_contract as demos
    from tests.contract import test_opro_contract as opro

    return {"OPRO": opro.TestOPROContract(), "OPRO racing": opro.TestOPRORacingContract(),
            "APO": apo.TestAPOContract(), "APO successive rejects": apo.TestAPOSuccessiveRejectsContract(),
            "ABO": abo.TestABOContract(), "DemoSelector": demos.TestDemoSelectorContract(),
            "DemoSelector kNN": demos.TestDemoSelectorKnnContract()}


def _task():
    return planted_rule_task("vowels", train_size=8, val_size=6, seed=0)


def _compile(suite, task_lm, prompt_lm, *, log_dir=None, **common):
    task = _task()
    optimizer = suite.make(task, task_lm=task_lm, prompt_lm=prompt_lm, seed=0, progress=False,
                           **({"log_dir": log_dir} if log_dir else {}), **common)
    program = optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    return optimizer, program


def _journal_errors(log_dir: Path) -> int:
    path = log_dir / "journal.jsonl"
    if not path.exists():
        return 0
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(1 for r in records if r.get("kind") == "score" and r.get("error"))


def _state(program) -> str:
    return json.dumps(program.dump_state(), sort_keys=True, default=str)


# ------------------------------------------------------------------------------------- capped runs
def capped_runs(tally: Tally, quick: bool) -> None:
    caps = (4, 13) if quick else (4, 9, 17, 33)
    for name, suite in suites().items():
        task = _task()
        for threads in (1, 4):
            for blips in ((), (2, 9, 17)):
                for role, cap in [("task", c) for c in caps] + [("prompt", c) for c in (1, 3)]:
                    if role == "prompt" and not suite.uses_prompt_model:
                        continue
                    task_lm = faulty_lm(task.lm().engine, fail_calls=blips if role == "task" else ())
                    prompt_lm = faulty_lm(scripted_lm(suite.prompt_responder(task)).engine, name="fake/prompt",
                                          fail_calls=blips if role == "prompt" else ())
                    opt, _ = _compile(suite, task_lm, prompt_lm, budget={f"max_{role}_calls": cap},
                                      num_threads=threads)
                    lm = task_lm if role == "task" else prompt_lm
                    spent = opt.report_.spent[role]
                    tally.capped_runs += 1
                    tally.faults_injected += task_lm.engine.faults + prompt_lm.engine.faults
                    exact = spent.calls == lm.engine.inner.call_count and spent.failed_calls == lm.engine.faults
                    if spent.calls > cap or not exact:
                        tally.capped_over += 1
                        tally.failures.append(f"cap {name} {role}={cap} threads={threads}: spent {spent}, "
                                              f"answered {lm.engine.inner.call_count}")
                    tally.faults_scored += opt.report_.counters.program_errors


# ------------------------------------------------------------------------------------- kill points
def api_kill_points(tally: Tally, quick: bool) -> None:
    fractions = (0.0, 0.5) if quick else (0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9)
    for name, suite in suites().items():
        task = _task()
        full_task, full_prompt = task.lm(), scripted_lm(suite.prompt_responder(task))
        full, full_program = _compile(suite, full_task, full_prompt)
        points = [("task", int(full_task.engine.call_count * f)) for f in fractions]
        if suite.uses_prompt_model:
            points += [("prompt", int(full_prompt.engine.call_count * f)) for f in (0.0, 0.5)]
        for role, die_after in points:
            with tempfile.TemporaryDirectory() as tmp:
                log_dir = Path(tmp)
                engines = {"task": task.lm().engine, "prompt": scripted_lm(suite.prompt_responder(task)).engine}
                lms = {r: faulty_lm(e, name=f"fake/{r}", die_after=die_after if r == role else None)
                       for r, e in engines.items()}
                tally.kill_points += 1
                try:
                    _compile(suite, lms["task"], lms["prompt"], log_dir=log_dir)
                    interrupted = False
                except RunInterrupted:
                    interrupted = True
                tally.faults_injected += lms[role].engine.faults
                tally.faults_scored += _journal_errors(log_dir)
                lms[role].engine.recover()
                resumed, program = _compile(suite, lms["task"], lms["prompt"], log_dir=log_dir)
                same = (interrupted and resumed.report_.finished
                        and resumed.report_.best_state == full.report_.best_state
                        and resumed.report_.best_scores == full.report_.best_scores
                        and _state(program) == _state(full_program)
                        and engines["task"].call_count == full_task.engine.call_count
                        and engines["prompt"].call_count == full_prompt.engine.call_count)
                tally.kill_survived += int(same)
                if not same:
                    tally.failures.append(f"kill {name} {role} after {die_after}: interrupted={interrupted}")


def _solve(inputs):
    return str(inputs["question"]).strip()[::-1]


def _reverse_engine():
    return simulated_task_lm(solve=_solve, knows=any_of(rule_in_instruction("reverse the word"),
                                                        correct_demos(_solve, at_least=2))).engine


def _data_file(folder: Path) -> Path:
    data = folder / "reverse.jsonl"
    data.write_text("\n".join(json.dumps({"question": w, "answer": w[::-1]}) for w in make_words(30, seed=1)),
                    encoding="utf-8")
    return data


def _quiet_main(argv: list[str]) -> tuple[int, str]:
    from dspy_icl_opt.pipeline.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    logger.remove()
    logging.getLogger("dspy_icl_opt").handlers.clear()  # main() installed its own handler
    return code, err.getvalue()


def cli_kill_points(tally: Tally, quick: bool) -> None:
    points = (3, 20) if quick else (3, 9, 14, 20, 30, 40)
    with tempfile.TemporaryDirectory() as tmp, LoopbackLMServer(_reverse_engine()) as server, \
            LoopbackLMServer(simulated_task_lm(solve=lambda i: "<INS>Reverse the word letter by letter.</INS>",
                                               knows=always()).engine) as prompt_server:
        folder = Path(tmp)

        def lm(name, srv):
            return {"model": f"openai/{name}", "cache": False,
                    "options": {"api_base": srv.url, "api_key": "test", "num_retries": 0}}

        config = {"program": "qa", "metric": "exact_match",
                  "data": {"path": str(_data_file(folder)), "train_size": 10, "val_size": 6, "test_size": 8},
                  "lm": {"task": lm("task", server), "prompt": lm("prompt", prompt_server)},
                  "optimize": [{"optimizer": "opro", "params": {"steps": 2, "candidates_per_step": 2}}],
                  "budget": {"max_task_calls": 200, "max_prompt_calls": 20}}
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        code, err = _quiet_main(["--no-progress", "run", str(path), "--output", str(folder / "healthy")])
        healthy = json.loads((folder / "healthy" / "summary.json").read_text())
        healthy_answers = server.answered
        for die_after in points:
            out = folder / f"cut-{die_after}"
            server.answered, server.refused, server.die_after = 0, 0, die_after
            tally.kill_points += 1
            first, _ = _quiet_main(["--no-progress", "run", str(path), "--output", str(out)])
            tally.faults_injected += server.refused
            status = json.loads((out / "summary.json").read_text())["status"]
            server.die_after = None
            second, err = _quiet_main(["--no-progress", "run", str(path), "--output", str(out)])
            summary = json.loads((out / "summary.json").read_text())
            same = (first == 3 and status == "interrupted" and second == 0 and summary["status"] == "complete"
                    and summary["after"]["score"] == healthy["after"]["score"]
                    and summary["before"]["score"] == healthy["before"]["score"]
                    and server.answered == healthy_answers)
            tally.kill_survived += int(same)
            if not same:
                tally.failures.append(f"CLI kill after {die_after}: exits {first}/{second}, answered "
                                      f"{server.answered} vs {healthy_answers}: {err[-300:]}")


WORKER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from dspy_icl_opt.testing import planted_rule_task, scripted_lm
    from tests.contract.suite import rule_stating_responder
    from dspy_icl_opt.optimizers.opro import OPRO

    task = planted_rule_task("vowels", train_size=8, val_size=6, seed=0)
    lm = task.lm()
    inner = lm.engine.complete
    def slow(request):
        time.sleep(0.03)
        return inner(request)
    lm.engine.complete = slow
    opt = OPRO(task.metric, task_model=lm, prompt_model=scripted_lm(rule_stating_responder(task.rule)), steps=2,
               candidates_per_step=2, seed=0, progress=False, log_dir=sys.argv[1])
    opt.compile(task.program(), trainset=task.train, valset=task.val)
""")


def process_kills(tally: Tally, quick: bool) -> None:
    """kill -9 a compiling process after N journal lines, then resume in this process."""
    from dspy_icl_opt.optimizers.opro import OPRO
    from tests.contract.suite import rule_stating_responder

    task = _task()
    full_lm = task.lm()
    full = OPRO(task.metric, task_model=full_lm, prompt_model=scripted_lm(rule_stating_responder(task.rule)),
                steps=2, candidates_per_step=2, seed=0, progress=False)
    full_program = full.compile(task.program(), trainset=task.train, valset=task.val)
    for lines in ((8,) if quick else (3, 12, 25)):
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "worker.py"
            script.write_text(WORKER.format(root=str(ROOT)), encoding="utf-8")
            log_dir = Path(tmp) / "run"
            proc = subprocess.Popen([sys.executable, str(script), str(log_dir)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            journal = log_dir / "journal.jsonl"
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                if journal.exists() and journal.read_text().count("\n") >= lines:
                    break
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            tally.kill_points += 1
            journaled = 0  # task calls the killed process finished and journaled (a torn last line is redone)
            for line in (journal.read_text().splitlines() if journal.exists() else []):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("kind") == "score":
                        journaled += int((record.get("cost") or {}).get("calls", 0))
            lm = task.lm()
            resumed = OPRO(task.metric, task_model=lm, prompt_model=scripted_lm(rule_stating_responder(task.rule)),
                           steps=2, candidates_per_step=2, seed=0, progress=False, log_dir=log_dir)
            program = resumed.compile(task.program(), trainset=task.train, valset=task.val)
            same = (resumed.report_.best_state == full.report_.best_state and _state(program) == _state(full_program)
                    and resumed.report_.best_scores == full.report_.best_scores
                    and lm.engine.call_count == full_lm.engine.call_count - journaled)
            tally.kill_survived += int(same)
            if not same:
                tally.failures.append(f"SIGKILL after {lines} journal lines: resumed calls {lm.engine.call_count}")


# -------------------------------------------------------------------------------------- bad inputs
def _named(message: str, name: str) -> bool:
    return name in message and not any(mark in message for mark in RAW_MARKS)


def api_bad_inputs(folder: Path) -> list[tuple[str, Callable[[], Any], str]]:
    """(label, call that must raise, the name its message must carry)."""
    from dspy_icl_opt.demos import DemoSelector
    from dspy_icl_opt.optimizers.abo import ABO
    from dspy_icl_opt.optimizers.apo import APO
    from dspy_icl_opt.optimizers.opro import OPRO

    task = _task()
    lm = task.lm()
    classes = {"OPRO": OPRO, "APO": APO, "ABO": ABO, "DemoSelector": DemoSelector}
    common_bad = [("budget", {"max_task_calls": -1}), ("budget", {"max_task_calls": "lots"}),
                  ("budget", {"max_calls": 3}), ("budget", "huge"), ("budget", 42), ("budget", [1]),
                  ("budget", {"max_prompt_tokens": 2.5}),
                  ("failure_score", math.nan), ("failure_score", math.inf), ("failure_score", "abc"),
                  ("failure_score", None), ("seed", -1), ("seed", "0"), ("num_threads", 0), ("num_threads", "4"),
                  ("max_retries", -1), ("log_dir", 3), ("task_model", "openai/gpt-4o-mini")]
    cases: list[tuple[str, Callable[[], Any], str]] = []
    for cls_name, cls in classes.items():
        for arg, value in common_bad:
            cases.append((f"{cls_name}({arg}={value!r})",
                          lambda cls=cls, arg=arg, value=value: cls(task.metric, **{"task_model": lm, arg: value}),
                          f"`{arg}"))
        cases.append((f"{cls_name}(metric=None)", lambda cls=cls: cls(None, task_model=lm), "`metric`"))
    demos_bad = [("max_demos", 0), ("n_trials", 0), ("strategies", ("bogus",)), ("pools", ("nope",)),
                 ("orders", ("sideways",)), ("pruner", "bogus"), ("minibatch_size", 0), ("top_k_full_eval", 0),
                 ("bootstrap_teacher", "nobody"), ("storage", 42)]
    for arg, value in demos_bad:
        cases.append((f"DemoSelector({arg}={value!r})",
                      lambda arg=arg, value=value: DemoSelector(task.metric, task_model=lm, **{arg: value}),
                      f"`{arg}"))
    blocker = folder / "file"
    blocker.write_text("x")
    for url in ("not-a-url", "sqlite:////no/such/folder/x.db", "postgresql://u:pw@127.0.0.1:1/db", "nosuch://x"):
        cases.append((f"DemoSelector(storage={url!r}).compile",
                      lambda url=url: DemoSelector(task.metric, task_model=task.lm(), storage=url, n_trials=1,
                                                   progress=False).compile(task.program(), trainset=task.train,
                                                                           valset=task.val), "`storage`"))
    opro = lambda **kw: OPRO(task.metric, task_model=task.lm(), progress=False, **kw)  # noqa: E731
    compile_bad = [("trainset=[]", lambda: opro().compile(task.program(), trainset=[]), "`trainset`"),
                   ("trainset='abc'", lambda: opro().compile(task.program(), trainset="abc"), "`trainset`"),
                   ("trainset=[1, 2]", lambda: opro().compile(task.program(), trainset=[1, 2]), "`trainset[0]`"),
                   ("no inputs marked", lambda: opro().compile(task.program(), trainset=[dspy.Example(question="a",
                                                                                                      answer="b")]),
                    "`trainset[0]`"),
                   ("missing input field", lambda: opro().compile(
                       task.program(), trainset=[dspy.Example(text="a", answer="b").with_inputs("text")]),
                    "`trainset[0]`"),
                   ("valset=[]", lambda: opro().compile(task.program(), trainset=task.train, valset=[]), "`valset`"),
                   ("student without predictors", lambda: opro().compile(dspy.Module(), trainset=task.train),
                    "dspy.Predict"),
                   ("unknown compile argument", lambda: opro().compile(task.program(), trainset=task.train, teacher=1),
                    "teacher"),
                   ("resume=True without log_dir", lambda: opro().compile(task.program(), trainset=task.train,
                                                                          resume=True), "`resume=True`"),
                   ("unwritable log_dir", lambda: opro(log_dir=blocker / "sub").compile(task.program(),
                                                                                     trainset=task.train),
                    "`log_dir`")]
    cases += compile_bad
    return cases


def cli_bad_inputs(folder: Path) -> list[tuple[str, list[str], str]]:
    """(label, argv that must exit 2, the config path or flag its message must carry)."""
    data = _data_file(folder)
    base = {"program": "qa", "metric": "exact_match", "output": str(folder / "out"),
            "data": {"path": str(data), "train_size": 6, "val_size": 6, "test_size": 6},
            "lm": {"task": {"model": "openai/fake", "options": {"api_base": "http://127.0.0.1:9/v1", "api_key": "k"}}},
            "optimize": [{"optimizer": "labeled", "params": {"k": 2}}]}
    foreign = folder / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine", encoding="utf-8")
    blocker = folder / "a-file"
    blocker.write_text("x", encoding="utf-8")
    edits: list[tuple[str, dict[str, Any], str]] = [
        ("seed=-1", {"seed": -1}, "seed"), ("seed='x'", {"seed": "x"}, "seed"),
        ("num_threads=0", {"num_threads": 0}, "num_threads"), ("budget cap -1", {"budget": {"max_task_calls": -1}},
                                                               "budget.max_task_calls"),
        ("budget preset", {"budget": "huge"}, "budget"), ("budget extra", {"budget": {"max_calls": 1}}, "budget"),
        ("unknown field", {"optimise": []}, "optimise"), ("no data", {"data": None}, "data"),
        ("unknown task", {"data": {"task": "no_such_task"}}, "data.task"),
        ("missing file", {"data": {"path": str(folder / "missing.jsonl")}}, "data.path"),
        ("two sources", {"data": {"task": "hyperbaton", "path": str(data)}}, "data"),
        ("train_size=0", {"data": {"path": str(data), "train_size": 0}}, "data.train_size"),
        ("split", {"evaluate": {"split": "train"}}, "evaluate.split"),
        ("lm spec", {"lm": {"task": "not a model"}}, "lm.task.model"),
        ("temperature", {"lm": {"task": {"model": "openai/x", "temperature": -1}}}, "lm.task.temperature"),
        ("max_tokens", {"lm": {"task": {"model": "openai/x", "max_tokens": 0}}}, "lm.task.max_tokens"),
        ("optimizer", {"optimize": [{"optimizer": "nope"}]}, "optimize[0].optimizer"),
        ("abo beam", {"optimize": [{"optimizer": "abo", "params": {"beam_size": 0}}]}, "optimize[0].params.beam_size"),
        ("reserved", {"optimize": [{"optimizer": "labeled", "params": {"budget": 3}}]}, "optimize[0].params.budget"),
        ("opro param", {"optimize": [{"optimizer": "opro", "params": {"no_such": 1}}]}, "optimize[0].params.no_such"),
        ("demos param", {"optimize": [{"optimizer": "demos", "params": {"max_demos": 0}}]},
         "optimize[0].params.max_demos"),
        ("step budget", {"optimize": [{"optimizer": "labeled", "budget": {"max_task_calls": -2}}]},
         "optimize[0].budget.max_task_calls"),
        ("program form", {"program": "os.system; rm"}, "program.name"),
        ("program builtin", {"program": {"name": "os:system", "args": {"command": "true"}}}, "program.name"),
        ("program missing", {"program": "no_such_module:factory"}, "program.name"),
        ("metric name", {"metric": "nope"}, "metric"), ("metric missing", {"metric": "no_such_module:f"}, "metric"),
        ("bench optimizer", {"bench": [{"optimizer": "nope"}]}, "bench[0].optimizer"),
        ("storage url", {"optimize": [{"optimizer": "demos", "params": {"storage": "not a url"}}]},
         "optimize[0].params.storage"),
        ("storage folder", {"optimize": [{"optimizer": "demos", "params": {"storage": "sqlite:////no/x/d.db"}}]},
         "optimize[0].params.storage"),
        ("storage server", {"optimize": [{"optimizer": "demos", "params": {"storage": "postgresql://u:p@127.0.0.1:1/d"}}]},
         "optimize[0].params.storage"),
        ("storage kind", {"optimize": [{"optimizer": "demos", "params": {"storage": "nosuch://x/y"}}]},
         "optimize[0].params.storage"),
        ("output foreign", {"output": str(foreign)}, "output"),
        ("output file", {"output": str(blocker)}, "output"),
        ("output unwritable", {"output": str(blocker / "sub")}, "output"),
    ]
    cases: list[tuple[str, list[str], str]] = []
    for i, (label, edit, name) in enumerate(edits):
        config = {**base, **edit}
        if edit.get("data") and "path" in (edit["data"] or {}) and "train_size" not in edit["data"]:
            config["data"] = {**edit["data"]}
        config = {k: v for k, v in config.items() if v is not None}
        path = folder / f"bad-{i}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        cases.append((f"run: {label}", ["--no-progress", "run", str(path)], name))
        if label.startswith(("seed", "budget", "program", "output", "storage")):
            cases.append((f"run --fresh: {label}", ["--no-progress", "run", str(path), "--fresh"], name))
    good = folder / "good.yaml"
    good.write_text(yaml.safe_dump(base), encoding="utf-8")
    (folder / "list.yaml").write_text("- a\n- b\n", encoding="utf-8")
    (folder / "broken.yaml").write_text("a: [1, 2\n", encoding="utf-8")
    (folder / "broken.json").write_text("{\"a\": ", encoding="utf-8")
    cases += [
        ("missing config", ["run", str(folder / "nope.yaml")], "config file"),
        ("config is a list", ["run", str(folder / "list.yaml")], "mapping"),
        ("broken YAML", ["run", str(folder / "broken.yaml")], "not valid YAML"),
        ("broken JSON", ["run", str(folder / "broken.json")], "not valid JSON"),
        ("compile --param", ["compile", "--config", str(good), "--optimizer", "opro", "--param", "steps"], "--param"),
        ("compile --budget", ["compile", "--config", str(good), "--optimizer", "opro", "--budget", "huge"], "budget"),
        ("compile --budget cap", ["compile", "--config", str(good), "--optimizer", "opro", "--budget",
                                  "max_task_calls=-1"], "budget.max_task_calls"),
        ("compile --optimizer", ["compile", "--config", str(good), "--optimizer", "nope"], "optimize[0].optimizer"),
        ("compile no data", ["compile", "--optimizer", "opro"], "--task"),
        ("compile --task", ["compile", "--task", "no_such_task", "--optimizer", "opro"], "data.task"),
        ("compile --program", ["compile", "--config", str(good), "--optimizer", "opro", "--program", "os:system"],
         "program.name"),
        ("compile --seed", ["compile", "--config", str(good), "--optimizer", "opro", "--seed", "-3"], "seed"),
        ("compile opro param", ["compile", "--config", str(good), "--optimizer", "opro", "--param", "steps=abc"],
         "optimize[0].params.steps"),
        ("eval --load", ["eval", "--config", str(good), "--load", str(folder / "none.json")], "--load"),
        ("report dir", ["report", str(folder / "no-run")], "run"),
    ]
    return cases


def bad_inputs(tally: Tally) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        api_cases = api_bad_inputs(Path(tmp))
        _try_api(tally, api_cases)
    with tempfile.TemporaryDirectory() as tmp:
        for label, argv, name in cli_bad_inputs(Path(tmp)):
            tally.bad_cli += 1
            code, err = _quiet_main(argv)
            if code == 2 and "error:" in err and _named(err, name):
                tally.bad_named += 1
            else:
                tally.failures.append(f"CLI {label}: exit {code}, {err.strip()[:300]!r}")


def _try_api(tally: Tally, cases: list[tuple[str, Callable[[], Any], str]]) -> None:
    for label, call, name in cases:
        tally.bad_api += 1
        try:
            call()
        except (TypeError, ValueError) as exc:
            if _named(str(exc), name):
                tally.bad_named += 1
            else:
                tally.failures.append(f"API {label}: not named {name!r}: {exc}")
        except Exception as exc:  # noqa: BLE001 - anything else is a failure of the check
            tally.failures.append(f"API {label}: {type(exc).__name__}: {exc}")
        else:
            tally.failures.append(f"API {label}: accepted")


# ------------------------------------------------------------------------------------ shared study
SHARED_WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from dspy_icl_opt.demos import DemoSelector
    from dspy_icl_opt.testing import planted_rule_task

    storage, study_name, n_trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
    task = planted_rule_task("reverse", train_size=10, val_size=8, seed=0)
    DemoSelector(task.metric, task_model=task.lm(), max_demos=3, n_trials=n_trials, storage=storage,
                 study_name=study_name, minibatch_size=4, progress=False).compile(
        task.program(), trainset=task.train, valset=task.val)
""")


def shared_study(url: str, workers: int, trials: int) -> str:
    import optuna

    from dspy_icl_opt.demos.study import make_storage

    name = f"bench-faults-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "worker.py"
        script.write_text(SHARED_WORKER.format(root=str(ROOT)), encoding="utf-8")
        procs = [subprocess.Popen([sys.executable, str(script), url, name, str(trials)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(workers)]
        errors = [p.communicate(timeout=600)[1] for p in procs]
        if any(p.returncode for p in procs):
            return f"worker failed: {errors[0][-300:]}"
        storage = make_storage(url)
        numbers = [t.number for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)]
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=storage)
    expected = workers * trials
    lost = max(0, expected - len(set(numbers)))
    duplicated = len(numbers) - len(set(numbers))
    return f"{workers} workers x {trials} trials: {lost} lost, {duplicated} duplicated ({len(numbers)} trials)"


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer caps and kill points")
    args = parser.parse_args(argv)
    logger.remove()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tally = Tally()
    started = time.perf_counter()
    steps: list[tuple[str, Callable[[], None]]] = [
        ("capped runs", lambda: capped_runs(tally, args.quick)),
        ("API kill points", lambda: api_kill_points(tally, args.quick)),
        ("CLI kill points", lambda: cli_kill_points(tally, args.quick)),
        ("SIGKILL points", lambda: process_kills(tally, args.quick)),
        ("bad inputs", lambda: bad_inputs(tally)),
    ]
    for label, step in steps:
        t0 = time.perf_counter()
        step()
        print(f"  ({label}: {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = shared_study(f"sqlite:///{Path(tmp) / 'shared.db'}", 2, 4)
    pg_url = os.environ.get(PG_ENV)
    pg = shared_study(pg_url, 3, 4) if pg_url else "skipped (no server)"

    print("Faults must never become results (issue 17): fake LMs and a loopback LM server")
    print(f"capped runs:            {tally.capped_runs} (1 and 4 threads, every strategy, faults injected in half), "
          f"{tally.capped_over} over their cap or miscounted")
    print(f"kill points survived:   {tally.kill_survived} of {tally.kill_points} "
          "(LM outage via API and CLI, SIGKILL of a compiling process)")
    print(f"faults injected:        {tally.faults_injected}, scored as outcomes: {tally.faults_scored}")
    print(f"bad inputs tried:       {tally.bad_api + tally.bad_cli} ({tally.bad_api} API, {tally.bad_cli} CLI), "
          f"{tally.bad_named} with a named error")
    print(f"shared SQLite study:    {sqlite}")
    print(f"shared PostgreSQL study: {pg}")
    print(f"wall time:              {time.perf_counter() - started:.0f} s")
    for failure in tally.failures:
        print(f"FAILED: {failure}")
    ok = (not tally.failures and tally.capped_over == 0 and tally.faults_scored == 0
          and tally.kill_survived == tally.kill_points and tally.bad_named == tally.bad_api + tally.bad_cli)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
