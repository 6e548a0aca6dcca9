"""Render a run directory as Markdown or self-contained HTML (images inlined as base64).

What is shown is what the reports hold, in the order a reader needs it: for a pipeline run the
held-out accuracy before and after first; then per step which program was returned and why (the
final choice: the start and the finalists on the validation examples, ``report.extra["final_choice"]``,
the chosen one marked), its prompt per predictor, every candidate with its search score beside its
validation score (search scores are minibatch scores: they rank proposals, they are not the result),
the plan made before any LM call beside what was spent (``report.extra["plan"]``), the budget, for a
tree search (PromptAgent) its tree with the chosen path marked (``report.extra["tree"]``), for
DemoSelector the accuracy-against-k curve and the demo influence ranking, for SoftPromptTuner its
training curve (loss and validation accuracy per epoch); for a benchmark its
table and chart. ``examples/tools/check_report_in_browser.py`` checks a page in headless Chromium.

Example:
    >>> render_report("runs/demo", fmt="html")  # doctest: +SKIP
    PosixPath('runs/demo/report.html')
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dspy_icl_opt.pipeline import plots
from dspy_icl_opt.pipeline.errors import ConfigError, at
from dspy_icl_opt.search.base import VAL_LABEL
from dspy_icl_opt.search.report import REPORT_FILE, CandidateRecord, OptimizationReport, atomic_write_text

#: Longest cell text in tables (demo fields, instructions in candidate lists).
CELL_CHARS = 160
#: Rows shown in the candidate, demo and influence tables.
TOP_ROWS = 10
Format = Literal["md", "html"]


# ------------------------------------------------------------------------ document model
@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Code:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]
    highlight: set[int] = field(default_factory=set)  # row indices drawn as the chosen one


@dataclass
class Image:
    name: str
    alt: str
    png: bytes


@dataclass
class TreeNode:
    """One node of a search tree as drawn: nested under its parent, marked when on the chosen path."""

    id: int
    parent: int | None
    label: str
    detail: str
    marks: list[str] = field(default_factory=list)  # "path" (the chosen path), "chosen" (the returned program)


@dataclass
class Tree:
    nodes: list[TreeNode]


Block = Heading | Para | Code | Table | Image | Tree


@dataclass
class RunView:
    """What a directory holds: a pipeline summary, step reports, a benchmark."""

    root: Path
    summary: dict[str, Any] | None = None
    reports: list[tuple[str, OptimizationReport]] = field(default_factory=list)
    bench: dict[str, Any] | None = None


# --------------------------------------------------------------------------------- loading
def load_run(run_dir: str | Path) -> RunView:
    """Read a pipeline run, a benchmark, or a single optimizer's ``log_dir``."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ConfigError(at("RUN_DIR", f"must be a directory holding a run, but {str(root)!r} is not one"))
    view = RunView(root)
    if (root / "summary.json").exists():
        view.summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    if (root / "bench.json").exists():
        view.bench = json.loads((root / "bench.json").read_text(encoding="utf-8"))
    pattern = "*/" if view.bench is not None else "steps/*/"  # a benchmark keeps one directory per competitor
    step_reports = sorted(p for p in root.glob(pattern + REPORT_FILE))
    if step_reports:
        view.reports = [(f"Step {p.parent.name}", OptimizationReport.load(p)) for p in step_reports]
    elif (root / REPORT_FILE).exists():
        view.reports = [("Optimization", OptimizationReport.load(root / REPORT_FILE))]
    if not view.reports and view.bench is None and view.summary is None:
        raise ConfigError(at("RUN_DIR", f"{str(root)!r} holds no summary.json, report.json, steps/ or bench.json"))
    return view


# ------------------------------------------------------------------------------- content
def build_document(view: RunView) -> list[Block]:
    title = (view.summary or {}).get("name") or view.root.name
    blocks: list[Block] = [Heading(1, f"Optimization report: {title}")]
    if view.summary:
        blocks += summary_blocks(view.summary)
    if view.bench:
        blocks += bench_blocks(view.bench, view.root)
    for index, (heading, report) in enumerate(view.reports):
        blocks += report_blocks(report, f"{heading}: {report.optimizer}", index)
    return blocks


def _pct(result: dict[str, Any] | None) -> str:
    return "-" if not result else f"{100 * result['score']:.1f}% (n={result['n']}, errors {result.get('errors', 0)})"


def _sizes(sizes: Any) -> str:
    if not isinstance(sizes, dict):
        return str(sizes)
    return " / ".join(f"{n} {name}" for name, n in sizes.items()) + " examples"


def summary_blocks(summary: dict[str, Any]) -> list[Block]:
    """Held-out accuracy before and after first: the result the rest of the page explains."""
    split = summary["split"]
    before, after = summary.get("before"), summary.get("after")
    blocks: list[Block] = [Heading(2, f"Result: {split} accuracy before and after")]
    if before and after:
        gain = 100 * (after["score"] - before["score"])
        blocks.append(Para(f"Held-out {split} accuracy: {100 * before['score']:.1f}% before, "
                           f"{100 * after['score']:.1f}% after ({gain:+.1f} points) on {after['n']} examples "
                           f"the optimization never saw."))
    blocks += [
        Table([f"{split} accuracy", "value"], [["before", _pct(before)], ["after", _pct(after)]]),
        Para(f"Status: {summary['status']}. Task {summary['task']}, program {summary['program']}, "
             f"task LM {summary['task_lm']}, prompt LM {summary['prompt_lm']}. "
             f"Splits: {_sizes(summary.get('sizes'))}.")]
    steps = summary.get("steps") or []
    if steps:
        rows = [[s["index"], s["class"], s["spent"]["task"]["calls"], s["spent"]["prompt"]["calls"],
                 sum(v.get("tokens", 0) for v in s["spent"].values()), f"{s['seconds']:.1f}",
                 "yes" if s["finished"] else "budget" if s["stopped_by_budget"] else "no"] for s in steps]
        blocks.append(Table(["step", "optimizer", "task calls", "prompt calls", "tokens", "seconds", "finished"],
                            rows))
    return blocks


def bench_blocks(bench: dict[str, Any], root: Path) -> list[Block]:
    columns = bench.get("columns") or list((bench.get("rows") or [{}])[0])
    blocks: list[Block] = [Heading(2, "Benchmark"), Table(columns, [[r.get(c) for c in columns]
                                                                   for r in bench.get("rows", [])])]
    chart = root / "bench.png"
    if chart.exists():
        blocks.append(Image("bench.png", "held-out accuracy per optimizer", chart.read_bytes()))
    return blocks


def report_blocks(report: OptimizationReport, title: str, index: int = 0) -> list[Block]:
    status = "finished" if report.finished else "stopped by its budget" if report.stopped_by_budget else "unfinished"
    blocks: list[Block] = [
        Heading(2, title),
        Para(f"{report.optimizer}, seed {report.seed}: {len(report.candidates)} candidate(s) over "
             f"{report.steps_completed} step(s), {status}, {report.timings.get('elapsed_s', 0):.1f} s."),
    ]
    blocks += final_choice_blocks(report)
    blocks += best_prompt_blocks(report)
    blocks += trajectory_blocks(report, index)
    blocks += tree_blocks(report, index)
    blocks += plan_blocks(report)
    blocks += budget_blocks(report)
    blocks += joint_blocks(report)
    blocks += demo_selector_blocks(report, index)
    blocks += soft_prompt_blocks(report, index)
    if report.params:
        blocks += [Heading(3, "Parameters"),
                   Table(["parameter", "value"], [[k, _param_text(k, v)] for k, v in sorted(report.params.items())])]
    return blocks


def _param_text(key: str, value: Any) -> str:
    """A parameter as a reader wants it: lists joined, None as '-', fingerprints said to be fingerprints."""
    if key == "influence" and isinstance(value, int):
        return "none" if value == _no_influence() else f"a ranking from an earlier run (fingerprint {value})"
    if isinstance(value, str) and value.startswith("program:"):
        return f"a program of yours (fingerprint {value.partition(':')[2][:12]})"
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return _short(value)


def _no_influence() -> int:
    from dspy_icl_opt.search.base import stable_int

    return stable_int([])


def _chosen(report: OptimizationReport) -> int | None:
    choice = report.extra.get("final_choice")
    if isinstance(choice, dict) and isinstance(choice.get("chosen"), int):
        return choice["chosen"]
    return report.best_candidate


def _what(record: CandidateRecord) -> str:
    """What a candidate is: DemoSelector's k / pool / strategy / order, else the instruction it changed."""
    choice = record.meta.get("choice")
    if isinstance(choice, dict) and choice and all(isinstance(c, dict) for c in choice.values()):
        return _joint_choice(choice)
    if isinstance(choice, dict) and choice:
        if len(choice) == 1:
            return _demo_choice(str(next(iter(choice.values()))))
        return "; ".join(f"{name}: {_demo_choice(str(text))}" for name, text in choice.items())
    return _changed_text(record.state, record.predictor)


def _demo_choice(text: str) -> str:
    """DemoSelector's ``k=3 labeled/random#2 permutation#1`` in words: k, pool, strategy, candidate set, order."""
    match = re.fullmatch(r"k=(\d+) (\w+)/(.+) (\S+)", text.strip())
    if not match:
        return "no demos (k=0)" if text.strip() == "k=0" else text
    k, pool, strategy, order = match.groups()
    name, _, index = strategy.partition("#")
    strategy = f"{name}, candidate set {index}" if index.isdigit() else strategy
    name, _, index = order.partition("#")
    order = f"{name} {index}" if index.isdigit() else order
    return f"k={k}, pool {pool}, strategy {strategy}, order {order}"


def _joint_choice(choice: dict[str, dict[str, Any]]) -> str:
    """InstructionDemoSearch's per-predictor choice: instruction index (origin), demo set, k."""

    def one(c: dict[str, Any]) -> str:
        text = f"instruction #{c.get('instruction')} ({c.get('instruction_origin', '?')})"
        return text + (f", demo set {c['demo_set']}, k={c.get('k')}" if "demo_set" in c else "")

    if len(choice) == 1:
        return one(next(iter(choice.values())))
    return "; ".join(f"{name}: {one(c)}" for name, c in choice.items())


def joint_blocks(report: OptimizationReport) -> list[Block]:
    """InstructionDemoSearch: the candidate lists once (texts, sets), then one row per trial with indices, set and k."""
    joint = report.extra.get("joint")
    if not isinstance(joint, dict) or not joint.get("instructions"):
        return []
    blocks: list[Block] = [Heading(3, "Instruction and demo-set candidates")]
    for name, items in sorted(joint["instructions"].items()):
        blocks += [Para(f"Predictor {name}: instructions"),
                   Table(["#", "origin", "text"], [[i["index"], i["origin"], _short(i["text"])] for i in items])]
        sets = (joint.get("demo_sets") or {}).get(name) or []
        if sets:
            blocks += [Para(f"Predictor {name}: demo sets (a trial shows the first k; k in {joint.get('k_choices')})"),
                       Table(["#", "set", "demos"], [[d["index"], d["name"], d["size"]] for d in sets])]
    trials = joint.get("trials") or []
    if trials:
        rows = [[t["trial"], t["phase"], t["candidate"], _joint_choice(t["choice"]), _num(t.get("value")),
                 t.get("examples"), _num(t.get("full"))] for t in trials]
        blocks += [Heading(3, "Trials: instruction x demo set x k"),
                   Para(f"{len(trials)} trial(s) on minibatches of the {joint.get('search_examples')} trial examples "
                        f"(validation examples; {joint.get('held_out_examples', 0)} more held back for the final "
                        "choice; phase 2 starts when the influence demo set is added); 'full' is the score on all "
                        "the trial examples."
                        + (f" {joint['repeats_told']} more configuration(s) the sampler asked for were a program "
                           "already scored (e.g. k=0 with any demo set) and were told its mean, at no call."
                           if joint.get("repeats_told") else "")),
                   Table(["trial", "phase", "candidate", "choice", "minibatch", "examples", "full"], rows)]
    return blocks


def _labels(report: OptimizationReport) -> list[str]:
    """Every score label in the report, validation last (the one the final choice used)."""
    seen: list[str] = []
    for record in report.candidates:
        seen += [label for label in record.scores if label not in seen]
    return sorted(seen, key=lambda label: (label == VAL_LABEL, seen.index(label)))


def final_choice_blocks(report: OptimizationReport) -> list[Block]:
    """Which program was returned and why: the start and the finalists on the validation examples."""
    choice = report.extra.get("final_choice")
    chosen = _chosen(report)
    if not isinstance(choice, dict) or not choice.get("contenders"):
        if chosen is None:
            return []
        return [Heading(3, "Program returned"), Para(f"Candidate {chosen} (no validation record).")]
    by_id = {r.id: r for r in report.candidates}
    start = choice.get("start")
    record = by_id.get(chosen)
    what = "the starting program, unchanged" if chosen == start else \
        f"candidate {chosen} ({record.origin if record else '?'}, step {record.step if record else '?'})"
    val = {c["candidate"]: c.get("val") for c in choice["contenders"]}
    text = (f"Returned: {what}. The final choice validated the start and {len(choice['contenders']) - 1} "
            f"finalist(s) on {choice.get('examples')} validation examples")
    if chosen in val and start in val and val[chosen] is not None and val[start] is not None:
        text += f": val {val[chosen]:.3f} for the returned program, {val[start]:.3f} for the start"
    text += f". Rule: {choice.get('rule', 'best validation score')}."
    if chosen == start:
        text += " No finalist passed it, so search scores above the start's did not carry over to validation."
    if report.extra.get("search_score"):  # what the search column holds when it is not the metric's mean
        text += f" Search score: {report.extra['search_score']}."
    label = plots.main_label(report)
    rows, highlight = [], set()
    for i, c in enumerate(choice["contenders"]):
        rec = by_id.get(c["candidate"])
        search = rec.scores.get(label) if rec is not None and label and label != VAL_LABEL else None
        marks = [m for m, on in (("\u2605 chosen", c["candidate"] == chosen), ("start", c["candidate"] == start))
                 if on]
        if c["candidate"] == chosen:
            highlight.add(i)
        rows.append([c["candidate"], rec.origin if rec else "-", _short(_what(rec)) if rec else "-",
                     "-" if search is None else f"{search:.3f}", _num(c.get("val")), _num(c.get("gain")),
                     _num(c.get("se")), "yes" if c.get("passed") else "no", ", ".join(marks)])
    headers = ["candidate", "origin", "what", f"search ({label})" if label and label != VAL_LABEL else "search",
               "val", "gain over start", "std. error", "passed", "chosen"]
    return [Heading(3, "Program returned (final choice on validation)"), Para(text),
            Table(headers, rows, highlight)]


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, (int, float)) else str(value)


def plan_blocks(report: OptimizationReport) -> list[Block]:
    """The plan made before any LM call, beside what the run spent."""
    plan = report.extra.get("plan")
    if not isinstance(plan, dict) or not plan.get("phases"):
        return []
    rows = [[p.get("name", ""), p.get("task_calls", 0), p.get("prompt_calls", 0), p.get("note", "")]
            for p in plan["phases"]]
    projected = plan.get("projected") or {}
    rows.append(["projected in total", projected.get("task_calls", "-"), projected.get("prompt_calls", "-"), ""])
    spent = {role: report.spent[role].calls if role in report.spent else "-" for role in ("task", "prompt")}
    rows.append(["spent", spent["task"], spent["prompt"],
                 "the search runs at least the planned steps while the budget pays for more"])
    settings = plan.get("settings") or {}
    blocks: list[Block] = [
        Heading(3, "Plan and spending"),
        Para(f"Planned before any LM call: {plan.get('steps')} step(s); "
             + ", ".join(f"{k} {v}" for k, v in settings.items()) + "."),
        Table(["phase", "task calls", "prompt calls", "note"], rows)]
    blocks += [Para(f"Note: {n}") for n in plan.get("notes") or []]
    return blocks


def best_prompt_blocks(report: OptimizationReport) -> list[Block]:
    state = report.best_state or (report.candidates[-1].state if report.candidates else None)
    if not state:
        return [Para("No candidate was recorded.")]
    blocks: list[Block] = [Heading(3, "Prompt of the returned program, per predictor")]
    for name, pstate in sorted(state.items()):
        blocks += [Heading(4, name), Para(f"Instruction (position: {pstate.get('position', 'system')}):"),
                   Code(pstate.get("instruction", ""))]
        demos = pstate.get("demos") or []
        if demos:
            fields = sorted({k for demo in demos for k in demo})
            rows = [[_short(demo.get(f, "")) for f in fields] for demo in demos[:TOP_ROWS]]
            blocks += [Para(f"{len(demos)} demo(s):"), Table(fields, rows)]
        else:
            blocks.append(Para("No demos."))
    return blocks


def trajectory_blocks(report: OptimizationReport, index: int = 0) -> list[Block]:
    label = plots.main_label(report)
    if label is None:
        return []
    chosen = _chosen(report)
    png = plots.trajectory_png(report, chosen=chosen)
    points = plots.trajectory_points(report, label)
    val_at = plots.trajectory_points(report, VAL_LABEL) if label != VAL_LABEL else []
    val_by_step = {s: v for s, v, _ in val_at}
    blocks: list[Block] = [Heading(3, f"Candidates and their scores (search on {label}, choice on {VAL_LABEL})")]
    if label != VAL_LABEL:
        blocks.append(Para(f"Search scores ({label}) are on the examples the search used, often small minibatches: "
                           f"they rank proposals but are not the result. The returned program was chosen on "
                           f"{VAL_LABEL}, shown beside them; the chosen candidate is marked."))
    if png:
        blocks.append(Image(f"{index:02d}_{_slug(report.optimizer)}_trajectory.png",
                            "search and validation scores by step, chosen candidate marked", png))
    blocks.append(Table(["step", f"best {label} at step", f"best {label} so far", f"best {VAL_LABEL} at step"],
                        [[s, f"{v:.3f}", f"{b:.3f}", _num(val_by_step.get(s))] for s, v, b in points]))
    labels = _labels(report)

    def order(r: CandidateRecord) -> tuple:
        return (r.id != chosen, -r.scores.get(VAL_LABEL, -1.0), -r.scores.get(label, -1.0), r.id)

    ranked = sorted((r for r in report.candidates if r.scores), key=order)
    shown = ranked[:TOP_ROWS]
    rows = [[r.id, r.step, r.origin, r.predictor or "-", *(_num(r.scores.get(lb)) for lb in labels),
             "\u2605 chosen" if r.id == chosen else "", _short(_what(r))] for r in shown]
    highlight = {i for i, r in enumerate(shown) if r.id == chosen}
    blocks += [Para(f"{len(shown)} of {len(ranked)} scored candidate(s), the chosen one first, then by "
                    f"{VAL_LABEL} and {label}:"),
               Table(["id", "step", "origin", "predictor", *labels, "chosen", "what"], rows, highlight)]
    return blocks


def tree_blocks(report: OptimizationReport, index: int = 0) -> list[Block]:
    """A search tree (``report.extra["tree"]``, e.g. PromptAgent's) drawn as nested boxes and a chart, with
    the chosen path and the returned program marked."""
    tree = report.extra.get("tree")
    if not isinstance(tree, dict) or not tree.get("nodes"):
        return []
    path = set(tree.get("best_path") or [])
    chosen = _chosen(report)
    pick = tree.get("paper_choice")
    nodes = []
    for node in tree["nodes"]:
        marks = [m for m, on in (("path", node["id"] in path), ("chosen", node["id"] == chosen)) if on]
        words = [w for w, on in (("\u2605 returned", node["id"] == chosen),
                                 ("best node of the best path", node["id"] == pick)) if on]
        label = (f"#{node['id']} depth {node['depth']}: reward {_num(node.get('reward'))}, "
                 f"visits {node.get('visits', 0)}, Q {_num(node.get('q'))}")
        label += f" ({'; '.join(words)})" if words else ""
        nodes.append(TreeNode(node["id"], node.get("parent"), label, _short(node.get("prompt", "")), marks))
    blocks: list[Block] = [
        Heading(3, "Search tree"),
        Para(f"{len(nodes)} node(s); rewards are mean scores on the fixed evaluation split. Marked: the path with "
             f"the highest mean reward ({' -> '.join(map(str, tree.get('best_path') or [])) or '-'}) and the "
             f"returned program (\u2605)."),
        Tree(nodes)]
    png = plots.tree_png(tree, chosen=chosen)
    if png:
        blocks.append(Image(f"{index:02d}_{_slug(report.optimizer)}_tree.png", "the search tree, chosen path marked",
                            png))
    return blocks


def _changed_text(state: dict[str, Any], predictor: str | None) -> str:
    if predictor and predictor in state:
        return state[predictor].get("instruction", "")
    return " / ".join(s.get("instruction", "") for s in state.values())


def budget_blocks(report: OptimizationReport) -> list[Block]:
    rows = []
    for role in ("task", "prompt"):
        spent = report.spent.get(role)
        if spent is None:
            continue
        rows.append([role, spent.calls, _cap(report.budget.call_cap(role)), spent.tokens,
                     _cap(report.budget.token_cap(role)), spent.cache_hits, spent.failed_calls])
    blocks: list[Block] = [Heading(3, "Budget spent"),
                           Table(["model", "calls", "call cap", "tokens", "token cap", "cache hits", "failed"], rows)]
    if report.extra.get("budget_enforced") is False:
        blocks.append(Para("DSPy's optimizers are counted, not capped: their own settings bound them."))
    counters = {k: v for k, v in report.counters.model_dump().items() if v}
    if counters:
        blocks.append(Table(["failure handled", "count"], [[k, v] for k, v in counters.items()]))
    return blocks


def demo_selector_blocks(report: OptimizationReport, index: int = 0) -> list[Block]:
    blocks: list[Block] = []
    curve = report.extra.get("k_curve")
    if isinstance(curve, dict) and curve:
        blocks.append(Heading(3, "Accuracy against k"))
        png = plots.k_curve_png(curve)
        if png:
            blocks.append(Image(f"{index:02d}_k_curve.png", "accuracy against k", png))
        note = report.extra.get("k_curve_note")
        if note:
            blocks.append(Para(str(note)))
        rows = [[name, p.get("k"), p.get("n"), p.get("mean"), p.get("best"), _num(p.get("val")), p.get("n_pruned"),
                 p.get("n_cut", 0)] for name, points in sorted(curve.items()) for p in points]
        blocks.append(Table(["predictor", "k", "trials", "mean (trials)", "best (trials)", "val (finalists)",
                             "pruned", "cut by budget"], rows))
    influence = report.extra.get("influence")
    if isinstance(influence, dict) and influence:
        blocks.append(Heading(3, "Demo influence (most helpful first)"))
        for name, entries in sorted(influence.items()):
            rows = [[i + 1, e.get("id"), e.get("weight"), e.get("n_in"), _short(json.dumps(e.get("demo", ""),
                                                                                          default=str))]
                    for i, e in enumerate(entries[:TOP_ROWS])]
            blocks += [Para(f"Predictor {name}:"), Table(["rank", "demo", "weight", "rows", "content"], rows)]
    return blocks


def soft_prompt_blocks(report: OptimizationReport, index: int = 0) -> list[Block]:
    """SoftPromptTuner's training curve: loss and validation accuracy per epoch, and what training spent."""
    info = report.extra.get("soft_prompt")
    if not isinstance(info, dict) or not info.get("epochs"):
        return []
    blocks: list[Block] = [Heading(3, "Soft prompt training")]
    png = plots.soft_prompt_png(info)
    if png:
        blocks.append(Image(f"{index:02d}_soft_prompt.png", "soft prompt loss and validation by epoch", png))
    rows = [[e.get("epoch"), _num(e.get("loss")), _num(e.get("val")), e.get("forward_passes"),
             e.get("backward_passes"), e.get("tokens"), e.get("seconds")] for e in info["epochs"]]
    blocks.append(Table(["epoch", "loss", "validation", "forward passes", "backward passes", "tokens", "seconds"],
                        rows, highlight={i for i, e in enumerate(info["epochs"])
                                         if e.get("epoch") == info.get("chosen_epoch")}))
    base = info.get("base_model") or {}
    totals = info.get("training") or {}
    chosen = info.get("chosen_epoch")
    blocks.append(Para(f"{info.get('method')} on {base.get('name', '?')} ({info.get('examples', 0)} training examples"
                       f", {info.get('skipped_examples', 0)} too long to train on); training spent "
                       f"{totals.get('forward_passes', 0)} forward and {totals.get('backward_passes', 0)} backward "
                       f"passes over {totals.get('tokens', 0)} tokens, beside the task calls of its validations. "
                       + (f"Kept: the soft prompt of epoch {chosen}." if chosen is not None
                          else "Kept: the program as given (no epoch beat it on validation).")))
    return blocks


def _cap(value: int | None) -> str:
    return "-" if value is None else str(value)


def _short(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower())


# ---------------------------------------------------------------------------- renderers
def to_markdown(blocks: list[Block], image_dir: Path, rel: str) -> str:
    """Markdown text; images are written as PNG files into ``image_dir`` (linked as ``rel/name``)."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Para):
            out.append(block.text)
        elif isinstance(block, Code):
            fence = "~~~~" if "```" in block.text else "```"
            out.append(f"{fence}text\n{block.text}\n{fence}")
        elif isinstance(block, Table):
            out.append(_md_table(block))
        elif isinstance(block, Tree):
            out.append(_md_tree(block))
        elif isinstance(block, Image):
            image_dir.mkdir(parents=True, exist_ok=True)
            (image_dir / block.name).write_bytes(block.png)
            out.append(f"![{block.alt}]({rel}/{block.name})")
        out.append("")
    return "\n".join(out)


def _tree_children(tree: Tree) -> tuple[list[TreeNode], dict[int, list[TreeNode]]]:
    ids = {node.id for node in tree.nodes}
    children: dict[int, list[TreeNode]] = {}
    for node in tree.nodes:
        if node.parent in ids:
            children.setdefault(node.parent, []).append(node)
    return [node for node in tree.nodes if node.parent not in ids], children


def _md_tree(tree: Tree) -> str:
    roots, children = _tree_children(tree)
    lines: list[str] = []

    def walk(node: TreeNode, depth: int) -> None:
        label = f"**{node.label}**" if "path" in node.marks else node.label
        lines.append(f"{'  ' * depth}- {label}: {node.detail.replace('|', '/')}")
        for child in children.get(node.id, []):
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return "\n".join(lines)


def _html_tree(tree: Tree) -> str:
    """Nested lists of boxes: a node's children are drawn inside its item, under its box."""
    esc = html.escape
    roots, children = _tree_children(tree)

    def item(node: TreeNode) -> str:
        classes = " ".join(["node", *node.marks])
        below = children.get(node.id, [])
        nested = f"<ul>{''.join(item(child) for child in below)}</ul>" if below else ""
        box = f'<div class="{classes}" id="node-{node.id}"><b>{esc(node.label)}</b><br>{esc(node.detail)}</div>'
        return f"<li>{box}{nested}</li>"

    return f'<ul class="tree">{"".join(item(root) for root in roots)}</ul>'


def _md_table(table: Table) -> str:
    def cell(value: Any) -> str:
        return _short("" if value is None else value).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows]
    return "\n".join(lines)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;"
        "text-align:left;vertical-align:top}th{background:#f3f3f3}pre{background:#f6f8fa;padding:.75rem;"
        "white-space:pre-wrap}img{max-width:100%}tr.chosen td{background:#fff3c4;font-weight:600}"
        "ul.tree,ul.tree ul{list-style:none;padding-left:1.25rem;border-left:1px dashed #bbb}"
        "ul.tree{border-left:none;padding-left:0}.node{border:1px solid #ccc;border-radius:4px;padding:.25rem .5rem;"
        "margin:.25rem 0;font-size:.9rem}.node.path{border:2px solid #c0392b}.node.chosen{background:#fff3c4}")


def to_html(blocks: list[Block], title: str) -> str:
    """One self-contained HTML page (images as base64 data URIs)."""
    esc = html.escape
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            body.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Code):
            body.append(f"<pre><code>{esc(block.text)}</code></pre>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{esc(str(h))}</th>" for h in block.headers)
            rows = "".join(("<tr class=\"chosen\">" if i in block.highlight else "<tr>")
                           + "".join(f"<td>{esc(_short('' if v is None else v))}</td>" for v in row) + "</tr>"
                           for i, row in enumerate(block.rows))
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Tree):
            body.append(_html_tree(block))
        elif isinstance(block, Image):
            data = base64.b64encode(block.png).decode("ascii")
            body.append(f'<p><img alt="{esc(block.alt)}" src="data:image/png;base64,{data}"></p>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def render_report(run_dir: str | Path, *, fmt: Format = "html", out: str | Path | None = None) -> Path:
    """Render ``run_dir`` to ``out`` (default ``run_dir/report.md`` or ``run_dir/report.html``)."""
    if fmt not in ("md", "html"):
        raise ConfigError(at("--format", f"must be 'md' or 'html', but got {fmt!r}"))
    view = load_run(run_dir)
    blocks = build_document(view)
    target = Path(out) if out is not None else view.root / f"report.{fmt}"
    if fmt == "html":
        title = blocks[0].text if isinstance(blocks[0], Heading) else "report"
        return atomic_write_text(target, to_html(blocks, title))
    image_dir = target.parent / f"{target.stem}_files"
    return atomic_write_text(target, to_markdown(blocks, image_dir, image_dir.name))
