"""report RUN_DIR: what the report holds is what the page shows; the HTML is well formed and self-contained."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import pytest

from dspy_icl_opt.pipeline import ConfigError, parse_config, render_report, run_pipeline

from .conftest import PROPOSAL

VOID = {"meta", "img", "br", "hr", "input", "link"}


class PageChecker(HTMLParser):
    """Collects text, <pre> text and images, and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []
        self.pre: list[str] = []
        self.images: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")

    def handle_data(self, data):
        self.text.append(data)
        if "pre" in self.stack:
            self.pre.append(data)


def parse(path) -> PageChecker:
    checker = PageChecker()
    checker.feed(path.read_text(encoding="utf-8"))
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    return checker


@pytest.fixture
def opro_run(config_dict, task_lm, prompt_lm, tmp_path):
    pytest.importorskip("dspy_icl_opt.optimizers.opro")
    config_dict["optimize"] = [{"optimizer": "opro", "params": {"steps": 2, "candidates_per_step": 1}}]
    run_pipeline(parse_config(config_dict), task_lm=task_lm, prompt_lm=prompt_lm, progress=False)
    return tmp_path / "run"


def test_html_report_shows_best_instruction_trajectory_and_budget(opro_run):
    page = parse(render_report(opro_run, fmt="html"))
    text = " ".join(page.text)
    assert PROPOSAL in page.pre  # the best instruction, verbatim
    for expected in ("Prompt of the returned program", "Candidates and their scores", "Program returned",
                     "Plan and spending", "Budget spent", "before", "after", "OPRO"):
        assert expected in text
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert base64.b64decode(page.images[0].split(",", 1)[1]).startswith(b"\x89PNG")


def test_markdown_report_writes_images_beside_it(opro_run, tmp_path):
    path = render_report(opro_run, fmt="md", out=tmp_path / "out" / "r.md")
    text = path.read_text()
    assert f"```text\n{PROPOSAL}\n```" in text
    assert ("![search and validation scores by step, chosen candidate marked](r_files/00_opro_trajectory.png)"
            in text)
    assert (tmp_path / "out" / "r_files" / "00_opro_trajectory.png").read_bytes().startswith(b"\x89PNG")


def test_demo_selector_report_shows_k_curve_and_influence(config_dict, task_lm):
    pytest.importorskip("dspy_icl_opt.demos")
    config_dict["optimize"] = [{"optimizer": "demos", "params": {
        "max_demos": 3, "n_trials": 4, "strategies": ["random"], "minibatch_size": 4, "minibatches_per_trial": 1,
        "bootstrap_max_calls": 4, "top_k_full_eval": 1}}]
    result = run_pipeline(parse_config(config_dict), task_lm=task_lm, progress=False)
    report = result.reports[0]
    page = parse(render_report(result.output, fmt="html"))
    text = " ".join(page.text)
    if report.extra.get("k_curve"):
        assert "Accuracy against k" in text and "optimistic" in text and "val (finalists)" in text
        assert len(page.images) >= 2
    if report.extra.get("influence"):
        assert "Demo influence" in text
        first = next(iter(report.extra["influence"].values()))[0]
        assert str(first["id"]) in text


def test_joint_report_lists_candidates_once_and_one_row_per_trial(config_dict, task_lm, prompt_lm):
    config_dict["optimize"] = [{"optimizer": "joint", "params": {
        "auto": None, "num_candidates": 3, "max_bootstrapped_demos": 1, "max_labeled_demos": 2}}]
    config_dict["budget"] = {"max_task_calls": 120, "max_prompt_calls": 3}
    result = run_pipeline(parse_config(config_dict), task_lm=task_lm, prompt_lm=prompt_lm, progress=False)
    joint = result.reports[0].extra["joint"]
    page = parse(render_report(result.output, fmt="html"))
    text = " ".join(page.text)
    assert "Instruction and demo-set candidates" in text and "Trials: instruction x demo set x k" in text
    name = next(iter(joint["instructions"]))
    given = joint["instructions"][name][0]["text"]
    assert text.count(given) >= 1
    first = joint["trials"][0]["choice"][name]
    assert f"instruction #{first['instruction']} ({first['instruction_origin']}), demo set {first['demo_set']}, " \
           f"k={first['k']}" in text
    # the text of an instruction appears in the candidate list, not once per trial row
    assert text.count(given) < len(joint["trials"])
    assert joint["repeats_told"] > 0 and f"{joint['repeats_told']} more configuration(s)" in text, \
        "the configurations told a scored program's mean are counted"


def test_report_of_a_dspy_step_says_it_was_counted_not_capped(config_dict, task_lm):
    result = run_pipeline(parse_config(config_dict), task_lm=task_lm, progress=False)
    page = parse(render_report(result.output, fmt="html"))
    text = " ".join(page.text)
    assert "LabeledFewShot" in text and "counted, not capped" in text
    demo_question = result.reports[0].best_state["predictor"]["demos"][0]["question"]
    assert demo_question in text


def test_report_of_a_directory_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="holds no summary.json, report.json"):
        render_report(tmp_path)


# ------------------------------------------------- a report that tells the truth (issue 16, item 2)
def _seed_wins_report():
    """The issue's case: a proposal led on the train minibatch (0.6 vs 0.5) but the seed won on val (0.5 vs 0.3)."""
    from dspy_icl_opt.search.report import CandidateRecord, OptimizationReport

    seed = {"predictor": {"instruction": "Answer the question.", "demos": []}}
    other = {"predictor": {"instruction": "Think hard, then answer.", "demos": []}}
    report = OptimizationReport(optimizer="OPRO", params={"steps": 2, "positions": ["system"], "influence": None},
                                seed=0, best_candidate=0, best_state=seed, steps_completed=2, finished=True)
    report.candidates = [
        CandidateRecord(id=0, step=0, origin="seed", state=seed, scores={"search": 0.5, "val": 0.5}),
        CandidateRecord(id=1, step=1, origin="proposal", predictor="predictor", state=other,
                        scores={"search": 0.6, "val": 0.3}),
        CandidateRecord(id=2, step=2, origin="proposal", predictor="predictor", state=other | {},
                        scores={"search": 0.4})]
    report.extra["final_choice"] = {
        "rule": "paired: mean gain > 0 and >= 1.5 standard errors over the start", "examples": 10, "start": 0,
        "contenders": [{"candidate": 0, "val": 0.5, "gain": 0.0, "se": 0.0, "passed": False},
                       {"candidate": 1, "val": 0.3, "gain": -0.2, "se": 0.13, "passed": False}], "chosen": 0}
    report.extra["plan"] = {"steps": 2, "settings": {"candidates_per_step": 2},
                            "phases": [{"name": "steps 1-2", "task_calls": 24, "prompt_calls": 2, "note": ""},
                                       {"name": "final validation", "task_calls": 30, "prompt_calls": 0,
                                        "note": ""}],
                            "projected": {"task_calls": 54, "prompt_calls": 2}, "notes": ["finalists cut to 1"]}
    return report


def test_a_seed_that_wins_on_val_is_reported_as_returned_with_val_beside_the_search_scores(tmp_path):
    report = _seed_wins_report()
    report.save(tmp_path / "report.json")
    text = render_report(tmp_path, fmt="md").read_text()
    assert "Returned: the starting program, unchanged." in text
    assert "val 0.500 for the returned program, 0.500 for the start" in text
    assert ("| candidate | origin | what | search (search) | val | gain over start | std. error | passed | chosen |"
            in text)
    assert "| 0 | seed | Answer the question. | 0.500 | 0.500 | 0.000 | 0.000 | no | ★ chosen, start |" in text
    assert "| 1 | proposal | Think hard, then answer. | 0.600 | 0.300 | -0.200 | 0.130 | no |  |" in text
    assert "| id | step | origin | predictor | search | val | chosen | what |" in text
    assert text.index("| 0 | 0 | seed |") < text.index("| 1 | 1 | proposal |")  # the chosen row first
    assert "| projected in total | 54 | 2 |  |" in text and "Note: finalists cut to 1" in text
    assert "| positions | system |" in text and "| influence | - |" in text  # no Python reprs


def test_a_search_scored_by_likelihood_says_what_its_search_column_holds(tmp_path):
    report = _seed_wins_report()
    report.extra["search_score"] = "mean probability of the gold answer on training examples"
    report.save(tmp_path / "report.json")
    text = render_report(tmp_path, fmt="md").read_text()
    assert "Search score: mean probability of the gold answer on training examples." in text


def test_demo_selector_rows_say_k_pool_strategy_and_order(tmp_path):
    from dspy_icl_opt.pipeline.render import _what
    from dspy_icl_opt.search.report import CandidateRecord

    record = CandidateRecord(id=3, step=3, origin="trial", state={"p": {"instruction": "same"}},
                             meta={"choice": {"p": "k=2 bootstrapped/slots[2, 1] most_similar_last"}})
    assert _what(record) == "k=2, pool bootstrapped, strategy slots[2, 1], order most_similar_last"
    indexed = CandidateRecord(id=4, step=4, origin="trial", state={"p": {"instruction": "same"}},
                              meta={"choice": {"p": "k=3 labeled/random#2 permutation#1"}})
    assert _what(indexed) == "k=3, pool labeled, strategy random, candidate set 2, order permutation 1"


def test_demo_selector_rows_of_a_run_name_each_trial_and_the_start_not_the_instruction(tmp_path):
    import dspy

    from dspy_icl_opt.demos import DemoSelector
    from dspy_icl_opt.testing import planted_rule_task

    task = planted_rule_task("reverse", train_size=10, val_size=8, seed=0)
    student = task.program()
    student.demos = [dspy.Example(question="abc", answer="cba")]  # the start is its own candidate
    selector = DemoSelector(task.metric, task_model=task.lm(), max_demos=3, n_trials=6, pools=("labeled",),
                            strategies=("random", "slots"), orders=("as_selected", "permutation"), progress=False,
                            log_dir=tmp_path)
    selector.compile(student, trainset=task.train, valset=task.val)
    text = render_report(tmp_path, fmt="md").read_text()
    instruction = student.signature.instructions
    rows = [line for line in text.splitlines() if line.startswith("| ") and ("| trial |" in line or "| seed |" in line)]
    assert rows and not any(instruction in row for row in rows)
    assert any("candidate set" in row for row in rows) and any("as given (1 demo(s))" in row for row in rows)


def test_the_report_in_a_real_browser_shows_the_val_column_and_the_chosen_row(opro_run, tmp_path):
    """Chromium renders the page; the rendered DOM and the screenshot are checked (skipped without Chromium)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "tools" / "check_report_in_browser.py"
    spec = importlib.util.spec_from_file_location("check_report_in_browser", script)
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    browser = checker.find_browser()
    if browser is None:
        pytest.skip("Chromium is not installed (.ci/run installs it)")
    html = render_report(opro_run, fmt="html")
    shot = tmp_path / "report.png"
    assert checker.check_report(html, shot, browser=browser) == []
    assert shot.read_bytes().startswith(b"\x89PNG")
    bare = tmp_path / "bare.html"  # the same page without the chosen row's highlight must fail
    bare.write_text(html.read_text().replace('class="chosen"', ""), encoding="utf-8")
    problems = checker.check_report(bare, tmp_path / "bare.png", browser=browser)
    assert any("not drawn as chosen" in p for p in problems) and any("pixels" in p for p in problems)
