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
    for expected in ("Best prompt per predictor", "Score trajectory", "Budget spent", "before", "after", "OPRO"):
        assert expected in text
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert base64.b64decode(page.images[0].split(",", 1)[1]).startswith(b"\x89PNG")


def test_markdown_report_writes_images_beside_it(opro_run, tmp_path):
    path = render_report(opro_run, fmt="md", out=tmp_path / "out" / "r.md")
    text = path.read_text()
    assert f"```text\n{PROPOSAL}\n```" in text
    assert "![score by step](r_files/00_opro_trajectory.png)" in text
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
        assert "Accuracy against k" in text
        assert len(page.images) >= 2
    if report.extra.get("influence"):
        assert "Demo influence" in text
        first = next(iter(report.extra["influence"].values()))[0]
        assert str(first["id"]) in text


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
