"""A search tree in the report (PromptAgent's) is drawn: every node nested under its parent, the chosen path marked."""

from __future__ import annotations

import re

from dspy_icl_opt.optimizers.promptagent import PromptAgent
from dspy_icl_opt.pipeline import render_report
from dspy_icl_opt.search.report import OptimizationReport
from dspy_icl_opt.testing import planted_rule_task, scripted_lm
from tests.optimizers.test_promptagent import TINY, two_step_responder, two_step_task_lm

from .test_render import parse


def promptagent_run(tmp_path) -> OptimizationReport:
    task = planted_rule_task("vowels", train_size=16, val_size=10, seed=0)
    agent = PromptAgent(task.metric, task_model=two_step_task_lm(task), prompt_model=scripted_lm(two_step_responder()),
                        log_dir=tmp_path, **TINY)
    agent.compile(task.program(), trainset=task.train, valset=task.val)
    return agent.report_


def test_html_report_draws_the_tree_with_the_chosen_path_marked(tmp_path):
    report = promptagent_run(tmp_path)
    tree = report.extra["tree"]
    page = render_report(tmp_path, fmt="html")
    checker = parse(page)
    html = page.read_text(encoding="utf-8")
    text = " ".join(checker.text)
    assert "Search tree" in text
    for node in tree["nodes"]:
        assert f'id="node-{node["id"]}"' in html and f"#{node['id']} depth {node['depth']}" in text
    marked = set(map(int, re.findall(r'class="node path[^"]*" id="node-(\d+)"', html)))
    assert marked == set(tree["best_path"])
    chosen = report.extra["final_choice"]["chosen"]
    assert re.search(rf'class="node[^"]*chosen" id="node-{chosen}"', html)
    # a child's box is inside its parent's item: the nesting follows the tree
    for node in tree["nodes"]:
        if node["parent"] is not None:
            parent_at = html.index(f'id="node-{node["parent"]}"')
            assert parent_at < html.index(f'id="node-{node["id"]}"')
    assert any(src.startswith("data:image/png;base64,") for src in checker.images)


def test_markdown_report_lists_the_tree(tmp_path):
    report = promptagent_run(tmp_path)
    text = render_report(tmp_path, fmt="md").read_text(encoding="utf-8")
    for node in report.extra["tree"]["nodes"]:
        assert f"#{node['id']} depth {node['depth']}" in text
    assert "**#0 depth 0" in text  # the root is on every path, so on the marked one
