"""Pool the rows of several ``bench_optimizers.py`` runs (one JSONL file per seed) and compare methods.

No LM call: it reads the files. For every method it prints the mean test accuracy and task calls
over every (seed, task) cell it has, and for each pair named with ``--pair A,B`` the cells both
have: a seed x task grid of both, how often A is above, level with or below B, and the mean
difference with its paired standard error. A row's seed is its ``seed`` field, else a ``seed<N>``
in its file's name, else the file's name itself (so rows of different files never mix unless they
name the same seed).

``--curve FILE.png`` draws test accuracy against the calls spent (task + prompt model) for every method,
one point per budget a method was run at (each budget's rows in their own ``--out`` file, since a file
keeps one row per task and method): the point at N calls is the program a run capped at N returned,
so "as good at half the calls" is read off one picture (``--one-point demos``: one point for a method run at
each cell's own calls). The same points are printed as a table. A cell
run twice at one budget counts once, the row the targets would read (the later commit, else the later file;
``--since`` and ``--legacy-machine`` apply). ``--methods A,B`` keeps only those methods.

A chain's row (e.g. ``opro+soft``) carries the test accuracy of each earlier step's program; those are read as
rows of their own named ``CHAIN/OPTIMIZER`` (``opro+soft/OPRO``), so ``--pair opro+soft,opro+soft/OPRO`` is the
soft part's gain over the hard prompt it was trained under, cell by cell.

``--targets`` reads issues 12-14's targets off the cells: each comparison's paired mean difference (s.e.), the
cells it rests on out of the 4 tasks x 3 splits the issues ask for, the calls (task + prompt) each side spent,
and a verdict: "met" or "missed", called "so far" until both methods share 3 splits on each of 4 tasks. "Level"
is read as a paired mean difference no more than one standard error below zero. ``--since [METHOD=]COMMIT``
(repeatable) keeps only rows run at COMMIT or a later commit (``git merge-base --is-ancestor``), for every
method or for METHOD alone: rows an algorithm change made stale drop out. Below the targets, each instruction
search run with the 1.5B proposer (``opro@embedded-1.5b``) is paired with the same search with the 0.5B one.
``--machine TAG`` keeps only one machine's rows (tagged rows, and untagged ones ``--legacy-machine`` gives it),
so a comparison whose cells mix builds can be read on one alone.

``--choices`` checks the final choice's threshold on the rows themselves: every cell whose final choice replaced
the program as given (``kept_start`` false), with the chosen finalist's paired z on the validation examples and
its test gain over the program as given on the same split; then how many gained, tied and lost, per z band.
``--overshoot`` shows, per method, how far the search's score of the validated start and finalists sits above
their validation means (a search score that is not an accuracy, APE's likelihood, is not comparable).
``--search-health`` is the part of the search each instruction strategy reaches, per method: steps run against the
plan (mean and fewest), the share of the task and prompt caps spent, how often the start was kept, the test gain
over the program as given on the same cells, and per meta-prompt how many of the prompt model's answers were usable
(parsed, and past the strategy's check: the proposal check, or for ABO's demonstration the metric on its final
answer), with the proposals the check turned down or scored with a flag: the figures issue 12 asks for where a
target is missed.

Run (the README's figures come from this command):
    python examples/benchmarks/summarize_runs.py examples/benchmarks/results/run_e_seed*.jsonl \
        --pair demos,bfsrs --pair demos,uncompiled --pair bfsrs,uncompiled
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


#: ``--legacy-machine``'s help: rows written before rows named their machine have none; the two as-given rows
#: checked (disambiguation_qa and reasoning_about_colored_objects, split 0) reproduce exactly on the AVX2 build
#: (``bench_optimizers.REFERENCE_MACHINE``), but earlier sessions ran on several machines, so by default they
#: stay apart from tagged rows.
LEGACY_HELP = ("treat rows that name no machine as rows of this machine tag (e.g. c5a720e7, the AVX2 build whose "
               "as-given rows they reproduce); by default they pair only with each other")


#: The machine tag ``--legacy-until`` gives to untagged rows run at or before its commit.
EARLY_LEGACY = "legacy-early"


def seeded_rows(paths: Sequence[str], legacy_machine: str | None = None,
                machine_of: Callable[[dict], str | None] | None = None) -> Iterator[tuple[str, dict]]:
    """``(seed, row)`` for every row the files hold, in file order, skipped rows left out. The seed is the
    row's ``seed``, else a ``seed<N>`` in its file's name, else the file's name; with ``/<machine>`` appended when
    the row names the machine it ran on, so rows of different machines never pair (their model's numerics
    differ: see ``bench_optimizers.machine_fingerprint``). Rows from before that field pair with each other, or
    take the machine ``machine_of(row)`` names for them, else ``legacy_machine``."""
    for path in paths:
        match = re.search(r"seed(\d+)", Path(path).name)
        default = match.group(1) if match else Path(path).name
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a process killed while writing its row
                    print(f"{path}:{number}: not a row (a half-written line?); skipped", file=sys.stderr)
                    continue
                if "skipped" not in row:
                    seed = str(row.get("seed", default))
                    machine = row.get("machine") or (machine_of(row) if machine_of else None) or legacy_machine
                    yield (f"{seed}/{machine}" if machine else seed), row


def split_of(seed: str) -> str:
    """The split of a seed label (``"0/1a2b3c4d"`` -> ``"0"``)."""
    return seed.split("/", 1)[0]


def machine_of_seed(seed: str) -> str:
    """The machine tag of a seed label (``"0/1a2b3c4d"`` -> ``"1a2b3c4d"``; ``""`` when it names none)."""
    return seed.partition("/")[2]


def git_is_ancestor(old: str, new: str) -> bool:
    """Whether commit ``old`` is ``new`` or an ancestor of it in this checkout (False when either is unknown)."""
    import subprocess

    return subprocess.run(["git", "merge-base", "--is-ancestor", old, new], capture_output=True,
                          cwd=Path(__file__).resolve().parent).returncode == 0


def read_cells(paths: Sequence[str], is_ancestor=git_is_ancestor, since: Sequence[str] = (),
               legacy_machine: str | None = None, by_budget: bool = False,
               legacy_until: str | None = None, machine: str | None = None) -> dict[tuple, dict]:
    """``{(method, seed, task): row}`` from the files (``(method, seed, task, budget)`` with ``by_budget``: a
    method's rows at several task-call budgets kept apart). A cell run twice keeps the row of the later commit (the
    other's commit is its ancestor, ``is_ancestor(old, new)``), else the later file's row: files sort by name,
    not by when they ran. ``since``: ``[METHOD=]COMMIT`` specs: ``COMMIT`` applies to every method,
    ``METHOD=COMMIT`` to METHOD's rows (and its chain stages) only, and a row is kept only if it ran at or after
    each spec that applies to it (:func:`passes_since`); they are applied to every row before a cell's rows are
    compared, so a stale row never hides one that qualifies. ``legacy_until``: untagged rows run at this commit
    or an ancestor of it are rows of another build (:data:`EARLY_LEGACY`), never given ``legacy_machine``; the
    committed rows need ``d0ce1f0``: every untagged as-given figure up to it differs from the AVX2 build's on its
    cell, every one after it matches. ``legacy_machine``: the
    machine tag given to rows that name none (see :data:`LEGACY_HELP`). ``machine``: keep only the rows of that
    machine tag (as the seed labels name it, after ``legacy_machine`` and ``legacy_until``), so every pair is read
    on one build."""
    cells: dict[tuple, dict] = {}  # with by_budget the keys carry the budget too
    rules = since_rules(since)

    def put(key: tuple[str, str, str], row: dict, commit: str) -> None:
        if not passes_since(key[0], commit, rules, is_ancestor):
            return
        held = cells.get(key)
        old = str((held or {}).get("_commit") or "")
        if held is not None and commit and old and commit != old and is_ancestor(commit, old):
            return  # the held row ran at a later commit
        cells[key] = dict(row, _commit=commit)

    early: dict[str, bool] = {}

    def machine_of(row: dict) -> str | None:
        commit = str(row.get("commit") or "")
        if legacy_until is None or not commit:
            return None
        if commit not in early:
            early[commit] = is_ancestor(commit, legacy_until)
        return EARLY_LEGACY if early[commit] else None

    for seed, row in seeded_rows(paths, legacy_machine, machine_of):
        if machine is not None and machine_of_seed(seed) != machine:
            continue
        commit = str(row.get("commit") or "")
        budget = (row.get("budget"),) if by_budget else ()
        put((row["method"], seed, row["task"], *budget), row, commit)
        for stage in stage_rows(row):
            put((stage["method"], seed, row["task"], *budget), stage, commit)
    return {key: {k: v for k, v in row.items() if k != "_commit"} for key, row in cells.items()}


def stage_rows(row: dict) -> list[dict]:
    """A chain's earlier steps as rows of their own, named ``CHAIN/OPTIMIZER`` (e.g. ``opro+soft/OPRO``): the
    program each handed on, scored on the same test set, so the chain pairs with its own first step."""
    return [{**{k: v for k, v in stage.items() if k != "optimizer"}, "task": row["task"],
             "method": f"{row['method']}/{stage['optimizer']}", "seed": row.get("seed"), "commit": row.get("commit")}
            for stage in row.get("stages", [])]


def method_table(cells: dict[tuple[str, str, str], dict]) -> str:
    methods = list(dict.fromkeys(m for m, _, _ in cells))
    header = ("| method | cells | mean test acc | mean task calls | mean prompt calls | steps run (planned) | start kept "
              "| mean compile s | peak RSS MB |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for method in methods:
        rows = [r for (m, _, _), r in cells.items() if m == method]
        acc = sum(r["test_accuracy"] for r in rows) / len(rows)
        calls = sum(r["task_calls"] for r in rows) / len(rows)
        prompt = sum(r.get("prompt_calls", 0) for r in rows) / len(rows)
        searched = [r for r in rows if r.get("steps") is not None]
        steps = (f"{sum(r['steps'] for r in searched) / len(searched):.1f} "
                 f"({sum(r.get('planned_steps') or 0 for r in searched) / len(searched):.1f})" if searched else "-")
        kept = [r["kept_start"] for r in rows if r.get("kept_start") is not None]
        kept_cell = f"{sum(kept)}/{len(kept)}" if kept else "-"
        timed = [r["compile_s"] for r in rows if r.get("compile_s") is not None]
        wall = f"{sum(timed) / len(timed):.0f}" if timed else "-"
        rss = max((r["peak_rss_mb"] for r in rows if r.get("peak_rss_mb") is not None), default=None)
        lines.append(f"| {method} | {len(rows)} | {acc:.3f} | {calls:.1f} | {prompt:.1f} | {steps} | {kept_cell} "
                     f"| {wall} | {'-' if rss is None else rss} |")
    return "\n".join(lines)


def up_level_down(diffs: Sequence[float]) -> tuple[int, int, int]:
    """How many differences are above zero, level with it (within 1e-9, float noise) and below it."""
    return (sum(d > 1e-9 for d in diffs), sum(abs(d) <= 1e-9 for d in diffs), sum(d < -1e-9 for d in diffs))


def pair_line(cells: dict[tuple[str, str, str], dict], a: str, b: str) -> str:
    both = sorted((s, t) for m, s, t in cells if m == a and (b, s, t) in cells)
    if not both:
        return f"{a} vs {b}: no cell has both"
    diffs = [cells[(a, s, t)]["test_accuracy"] - cells[(b, s, t)]["test_accuracy"] for s, t in both]
    calls = [cells[(a, s, t)]["task_calls"] - cells[(b, s, t)]["task_calls"] for s, t in both]
    above, level, below = up_level_down(diffs)
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) if len(diffs) > 1 else 0.0
    se = f"{math.sqrt(var / len(diffs)):.3f}" if len(diffs) > 1 else "n/a, one cell"
    per_cell = ", ".join(f"seed {s} {t} {d:+.2f}" for (s, t), d in zip(both, diffs))
    return (f"{a} vs {b} on {len(both)} cells: above {above}, level {level}, below {below}; "
            f"mean difference {mean:+.3f} (paired s.e. {se}); {a} spent {sum(calls) / len(calls):+.1f} task "
            f"calls per cell against {b}\n  {per_cell}")


def pair_grid(cells: dict[tuple[str, str, str], dict], a: str, b: str) -> str:
    """One line per seed, one column per task: ``A / B`` test accuracy (task calls)."""
    seeds = sorted({s for m, s, _ in cells if m in (a, b)},
                   key=lambda s: (0, int(split_of(s)), s) if split_of(s).isdigit() else (1, 0, s))
    tasks = list(dict.fromkeys(t for m, _, t in cells if m in (a, b)))

    def cell(seed: str, task: str) -> str:
        parts = [cells.get((m, seed, task)) for m in (a, b)]
        return " / ".join("-" if r is None else f"{r['test_accuracy']:.2f} ({r['task_calls']})" for r in parts)

    lines = ["| seed | " + " | ".join(f"{t}: {a} / {b}" for t in tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    lines += [f"| {seed} | " + " | ".join(cell(seed, t) for t in tasks) + " |" for seed in seeds]
    return "\n".join(lines)


def coverage_table(cells: dict[tuple[str, str, str], dict]) -> str:
    """One line per method, one column per task: the seeds with a row, each with its commit (``0@abc1234``);
    ``-`` where the method has none on that task."""
    methods = list(dict.fromkeys(m for m, _, _ in cells))
    tasks = sorted({t for _, _, t in cells})

    def order(seed: str) -> tuple:
        split = split_of(seed)
        return (0, int(split), seed) if split.isdigit() else (1, 0, seed)

    lines = ["| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for method in methods:
        row = []
        for task in tasks:
            seeds = sorted((s for m, s, t in cells if m == method and t == task), key=order)
            row.append(" ".join(f"{s}@{str(cells[(method, s, task)].get('commit', '?'))[:7]}" for s in seeds) or "-")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def curve_points(paths: Sequence[str], is_ancestor=git_is_ancestor, since: Sequence[str] = (),
                 legacy_machine: str | None = None, one_point: Sequence[str] = (),
                 legacy_until: str | None = None, machine: str | None = None) -> dict[str, list[dict]]:
    """Per method, one point per budget: mean calls (task + prompt), mean test accuracy and its standard
    error over the cells (seed x task) run at that budget. A method's rows at several budgets all count;
    a cell run twice at one budget counts once, chosen as ``read_cells`` chooses (the later commit, else the
    later file; ``since`` and ``legacy_machine`` alike), so the curve and the targets read the same rows.
    ``one_point``: methods whose rows make one point whatever their budgets (budget ``"per cell"``), for a
    method run at each cell's own reference calls (DemoSelector at BFSRS's, ``--budget-from``)."""
    latest = read_cells(paths, is_ancestor=is_ancestor, since=since, legacy_machine=legacy_machine, by_budget=True,
                        legacy_until=legacy_until, machine=machine)
    groups: dict[tuple[str, object], list[dict]] = {}
    for (method, _, _, budget), row in latest.items():
        groups.setdefault((method, "per cell" if method in one_point else budget), []).append(row)
    points: dict[str, list[dict]] = {}
    for (method, budget), rows in groups.items():
        accs = [r["test_accuracy"] for r in rows]
        mean = sum(accs) / len(accs)
        se = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1) / len(accs)) if len(accs) > 1 else None
        calls = sum(r["task_calls"] + r.get("prompt_calls", 0) for r in rows) / len(rows)
        points.setdefault(method, []).append({"budget": budget, "cells": len(rows), "calls": calls,
                                              "accuracy": mean, "se": se})
    for method_points in points.values():
        method_points.sort(key=lambda p: p["calls"])
    return points


def curve_table(points: dict[str, list[dict]]) -> str:
    lines = ["| method | budget | cells | mean calls (task + prompt) | mean test acc (s.e.) |", "|---|---|---|---|---|"]
    for method, method_points in points.items():
        for p in method_points:
            se = f" ({p['se']:.3f})" if p["se"] is not None else ""
            lines.append(f"| {method} | {p['budget'] if p['budget'] is not None else '-'} | {p['cells']} | "
                         f"{p['calls']:.0f} | {p['accuracy']:.3f}{se} |")
    return "\n".join(lines)


def plot_curve(points: dict[str, list[dict]], path: str) -> None:
    """Test accuracy against calls, a line and markers per method (error bars where there are several cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, method_points in points.items():
        xs, ys = [p["calls"] for p in method_points], [p["accuracy"] for p in method_points]
        errs = [p["se"] or 0.0 for p in method_points]
        ax.errorbar(xs, ys, yerr=errs if any(errs) else None, marker="o", capsize=3, label=method)
    ax.set_xlabel("LM calls spent (task + prompt model)")
    ax.set_ylabel("mean test accuracy")
    ax.set_title("Accuracy against calls (one point per budget run)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


#: The grid issues 12-14 ask for: bundled tasks x seeded splits.
GRID_TASKS, GRID_SPLITS = 4, 3
GRID_CELLS = GRID_TASKS * GRID_SPLITS


def paired(cells: dict[tuple[str, str, str], dict], a: str, b: str) -> dict | None:
    """A against B on the cells both have: ``n``, paired ``mean`` difference of test accuracy and its ``se``
    (``None`` for one cell), and each side's mean calls, task + prompt model; ``None`` when no cell has both."""
    both = [(s, t) for m, s, t in cells if m == a and (b, s, t) in cells]
    if not both:
        return None
    diffs = [cells[(a, s, t)]["test_accuracy"] - cells[(b, s, t)]["test_accuracy"] for s, t in both]
    mean = sum(diffs) / len(diffs)
    se = (math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
          if len(diffs) > 1 else None)

    def calls(method: str, key: str) -> float:
        rows = [cells[(method, s, t)] for s, t in both]
        return sum(r.get(key, 0) for r in rows) / len(rows)

    per_task: dict[str, set[str]] = {}
    for seed, task in both:
        if split_of(seed).isdigit():  # a row without a seed is labelled by its file's name: not a split
            per_task.setdefault(task, set()).add(split_of(seed))
    full = sum(len(splits) >= GRID_SPLITS for splits in per_task.values()) >= GRID_TASKS
    task_a, task_b = calls(a, "task_calls"), calls(b, "task_calls")
    prompt_a, prompt_b = calls(a, "prompt_calls"), calls(b, "prompt_calls")
    return {"n": len(both), "mean": mean, "se": se, "task_a": task_a, "task_b": task_b, "prompt_a": prompt_a,
            "prompt_b": prompt_b, "calls_a": task_a + prompt_a, "calls_b": task_b + prompt_b, "full": full}


def _level(p: dict) -> bool:
    """Level or above: the paired mean difference is no more than one standard error below zero."""
    return p["mean"] + (p["se"] or 0.0) >= 0


#: (issue, target, A, B, test on the paired figures). A of "best:X|Y|Z" is whichever of X, Y, Z has the highest
#: paired mean against the program as given (:func:`best_of`); A of "first:X|Y" is X where it has cells paired with
#: B, else Y (``opro@copro-calls``: OPRO run with ``--calls-from FILE:copro``, capped at the task and prompt calls
#: COPRO spent on that cell; else OPRO at 400 + 40); "calls" tests compare the mean calls (task + prompt) both
#: sides spent on the same cells.
TARGETS: list[tuple[str, str, str, str, object]] = [
    *[("12", f"{m} above the program as given", m, "uncompiled", lambda p: p["mean"] > 0)
      for m in ("opro", "apo", "abo")],
    ("12", "the best of OPRO/APO/ABO above the program as given by >= 3 points", "best:opro|apo|abo", "uncompiled",
     lambda p: p["mean"] >= 0.03),
    *[("12", f"{m} level with COPRO or above, at no more calls", f"first:{m}@copro-calls|{m}", "copro",
       lambda p: _level(p) and p["calls_a"] <= p["calls_b"]) for m in ("opro", "apo", "abo")],
    ("12", "the best of OPRO/APO/ABO level with GEPA or above", "best:opro|apo|abo", "gepa", _level),
    ("13", "joint >= MIPROv2 (light) at <= half its calls", "joint", "mipro_light",
     lambda p: p["mean"] >= 0 and p["calls_a"] <= p["calls_b"] / 2),
    ("13", "joint above BFSRS by more than one paired s.e.", "joint", "bfsrs",
     lambda p: p["se"] is not None and p["mean"] > p["se"]),
    ("13", "DemoSelector above BFSRS at equal calls", "demos", "bfsrs",
     lambda p: p["mean"] > 0 and p["calls_a"] <= p["calls_b"]),
    *[("14", f"{m} above the program as given", m, "uncompiled", lambda p: p["mean"] > 0)
      for m in ("ape", "iterative_ape", "promptagent")],
    ("14", "Iterative-APE at least APE", "iterative_ape", "ape", lambda p: p["mean"] >= 0),
    ("14", "PromptAgent level with GEPA or above, at no more calls", "promptagent", "gepa",
     lambda p: _level(p) and p["calls_a"] <= p["calls_b"]),
]


#: Issue 12's "the search and the proposer measured apart": each instruction search with the 1.5B proposer
#: (``--prompt-lm embedded-1.5b``, task model the 0.5B) against the same search with the 0.5B proposer. Figures, not
#: targets: the issue asks for both rows, not for a margin.
PROPOSER_PAIRS = [(f"{m}@embedded-1.5b", m) for m in ("opro", "apo", "abo")]

#: The issues' user's case: 40 train / 40 val / 100 test examples (rows since these were recorded) at a budget of
#: a few hundred calls (400 for ours; the joint search at about half of MIPROv2's; DSPy's sized to match).
USERS_CASE_SIZES = {"train": 40, "val": 40, "test": 100}
USERS_CASE_MIN_BUDGET = 200


def users_case(row: dict) -> bool:
    """Whether a row is one of the issues' user's case: a seeded split (``seed`` recorded), a budget of at least
    ``USERS_CASE_MIN_BUDGET`` and, where recorded, the 40/40/100 sizes. Earlier benchmarks (80 calls, 10/10/40,
    rows labelled by their file's name) are other settings, and their rows must not pair with these."""
    sizes = row.get("sizes")
    return ("seed" in row and (row.get("budget") or 0) >= USERS_CASE_MIN_BUDGET
            and (sizes is None or sizes == USERS_CASE_SIZES))


def best_of(cells: dict[tuple[str, str, str], dict], methods: Sequence[str]) -> str | None:
    """The method of ``methods`` with the highest mean gain over the program as given, compared on the cells all
    of them share (on each one's own cells when they share none); ``None`` when none has a paired cell."""
    found = {m: paired(cells, m, "uncompiled") for m in methods}
    found = {m: p for m, p in found.items() if p is not None}
    if not found:
        return None
    shared = set.intersection(*({(s, t) for mm, s, t in cells if mm == m} for m in found))
    if len(found) > 1 and shared:
        common = {key: row for key, row in cells.items() if key[0] not in found or (key[1], key[2]) in shared}
        found = {m: paired(common, m, "uncompiled") or found[m] for m in found}
    return max(found, key=lambda m: found[m]["mean"])


def targets_table(cells: dict[tuple[str, str, str], dict]) -> str:
    """Issues 12-14's targets, each with its figures and verdict (see the module's docstring), on the rows of
    the user's case only (:func:`users_case`)."""
    left_out = sum(not users_case(row) for row in cells.values())
    cells = {key: row for key, row in cells.items() if users_case(row)}
    lines = [f"Rows of the user's case: {len(cells)} ({left_out} of other settings left out).", "",
             "| issue | target | A vs B | cells | mean difference (s.e.) | calls A / B (task+prompt) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for issue, text, a, b, test in TARGETS:
        if a.startswith("best:"):
            a = best_of(cells, a[len("best:"):].split("|")) or a
        elif a.startswith("first:"):
            options = a[len("first:"):].split("|")
            a = next((m for m in options if paired(cells, m, b) is not None), options[-1])
        p = paired(cells, a, b)
        if p is None:
            lines.append(f"| {issue} | {text} | {a} vs {b} | 0/{GRID_CELLS} | - | - | not measured |")
            continue
        se = "n/a" if p["se"] is None else f"{p['se']:.3f}"
        verdict = "met" if test(p) else "missed"
        if not p["full"]:
            verdict += " so far"
        lines.append(f"| {issue} | {text} | {a} vs {b} | {p['n']}/{GRID_CELLS} | {p['mean']:+.3f} ({se}) | "
                     f"{p['task_a']:.0f}+{p['prompt_a']:.0f} / {p['task_b']:.0f}+{p['prompt_b']:.0f} | {verdict} |")
    lines += ["", "The proposer apart from the search (issue 12; the task model is the 0.5B model in both):", "",
              "| A vs B | cells | mean difference (s.e.) | calls A / B (task+prompt) |", "|---|---|---|---|"]
    for a, b in PROPOSER_PAIRS:
        p = paired(cells, a, b)
        if p is None:
            lines.append(f"| {a} vs {b} | 0/{GRID_CELLS} | - | - |")
            continue
        se = "n/a" if p["se"] is None else f"{p['se']:.3f}"
        lines.append(f"| {a} vs {b} | {p['n']}/{GRID_CELLS} | {p['mean']:+.3f} ({se}) | "
                     f"{p['task_a']:.0f}+{p['prompt_a']:.0f} / {p['task_b']:.0f}+{p['prompt_b']:.0f} |")
    return "\n".join(lines)


#: z bands of the ``--choices`` summary: [low, high).
Z_BANDS = ((1.0, 1.5), (1.5, 2.0), (2.0, float("inf")))


def choices_table(cells: dict[tuple[str, str, str], dict]) -> str:
    """Cells whose final choice replaced the start: the chosen finalist's z and the test gain it brought."""
    found = []
    for (method, seed, task), r in cells.items():
        base = cells.get(("uncompiled", seed, task))
        if r.get("kept_start") is not False or base is None:
            continue
        if "soft" in method:  # a soft prompt's start runs in PyTorch (its control is uncompiled_fp32), not llama.cpp
            continue
        passed = [c for c in r.get("final_choice") or [] if isinstance(c, dict) and c.get("passed")]
        # the row names the chosen since ac46f11; before it, the best validation mean won
        chosen = next((c for c in passed if c.get("chosen")), None) or max(passed, key=lambda c: c.get("val", 0.0),
                                                                            default=None)
        z = None
        if chosen is not None and chosen.get("gain") is not None:
            z = chosen["gain"] / chosen["se"] if chosen.get("se") else float("inf")
        found.append((r["test_accuracy"] - base["test_accuracy"], method, seed, task, z))
    found.sort(key=lambda f: (f[0], f[1]))
    lines = ["| method | seed | task | z of the chosen | test gain over the program as given |",
             "|---|---|---|---|---|"]
    lines += [f"| {m} | {s} | {t} | {'-' if z is None else f'{z:.2f}'} | {d:+.2f} |" for d, m, s, t, z in found]
    lines += ["", "| z band | rows | gained | level | lost | mean test gain |", "|---|---|---|---|---|---|"]
    for low, high in Z_BANDS:
        band = [d for d, *_, z in found if z is not None and low <= z < high]
        if band:
            gained, level, lost = up_level_down(band)
            lines.append(f"| [{low:g}, {high:g}) | {len(band)} | {gained} | {level} | {lost} | "
                         f"{sum(band) / len(band):+.3f} |")
    return "\n".join(lines)


def overshoot_table(cells: dict[tuple[str, str, str], dict]) -> str:
    """How far the search's score of each validated candidate sits above its validation mean, per method, for the
    start and for the finalists: the search's last score of a candidate that is not a bandit round's (PromptAgent's
    reward, OPRO's training score, APO's last shared minibatch, ABO's search score; APE's and Iterative-APE's
    search score is the mean over the examples their bandit drew for it, so over a few examples for an arm dropped
    early), else its last bandit mean (an APO child never a beam parent), minus its mean on the validation
    examples. The finalists' excess over the start's is the selection's winner's curse plus any fit of
    the candidates to the examples that scored them."""
    found: dict[str, dict[str, list[float]]] = {}
    for (method, _, _), r in cells.items():
        for choice in r.get("final_choice") or []:
            search = choice.get("search") if isinstance(choice, dict) else None
            if not isinstance(search, dict) or not search or choice.get("val") is None:
                continue
            side = "start" if choice.get("origin") == "seed" else "finalists"
            whole = [v for k, v in search.items() if not k.startswith("bandit_")]
            score = (whole or list(search.values()))[-1]
            found.setdefault(method, {"start": [], "finalists": []})[side].append(score - choice["val"])
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    cell = lambda xs: f"{len(xs)}, {mean(xs):+.3f}" if xs else "0, -"  # noqa: E731
    lines = ["| method | start: validated, search - val | finalists: validated, search - val | finalists - start |",
             "|---|---|---|---|"]
    for method, sides in found.items():
        start, fin = sides["start"], sides["finalists"]
        gap = f"{mean(fin) - mean(start):+.3f}" if start and fin else "-"
        lines.append(f"| {method} | {cell(start)} | {cell(fin)} | {gap} |")
    return "\n".join(lines)


def search_health_table(cells: dict[tuple[str, str, str], dict],
                        baselines: dict[tuple[str, str, str], dict] | None = None) -> str:
    """Per searching method (rows with ``steps``): how much of the plan and the caps the search used, how often it
    kept the start, what it gained on test over the program as given, and per meta-prompt the share of usable
    answers, so a missed target can be put down to the step of the search that falls short. The program as given
    is read from ``baselines`` (default ``cells``), so ``--methods`` can leave it out of the table."""
    baselines = cells if baselines is None else baselines
    by_method: dict[str, list[tuple[dict, dict | None]]] = {}
    for (method, seed, task), r in cells.items():
        if r.get("steps") is not None:
            by_method.setdefault(method, []).append((r, baselines.get(("uncompiled", seed, task))))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    lines = ["| method | cells | steps run: mean, fewest (planned) | task calls / cap | prompt calls / cap "
             "| start kept | test gain over as given: mean (cells up, level, down) |", "|---|---|---|---|---|---|---|"]
    usable_lines = ["| method | meta-prompt | answers | usable | share usable |", "|---|---|---|---|---|"]
    check_lines = ["| method | proposals turned down (reasons) | scored with a flag (reasons) |", "|---|---|---|"]
    for method, found in by_method.items():
        rows = [r for r, _ in found]
        steps = [r["steps"] for r in rows]
        planned = mean([r.get("planned_steps") or 0 for r in rows])
        share = lambda spent, cap: [r.get(spent, 0) / r[cap] for r in rows if r.get(cap)]  # noqa: E731
        task_share, prompt_share = share("task_calls", "budget"), share("prompt_calls", "prompt_budget")
        kept = [r["kept_start"] for r in rows if r.get("kept_start") is not None]
        gains = [r["test_accuracy"] - base["test_accuracy"] for r, base in found if base is not None]
        gain = f"{mean(gains):+.3f} ({', '.join(map(str, up_level_down(gains)))})" if gains else "-"
        lines.append(f"| {method} | {len(rows)} | {mean(steps):.1f}, {min(steps)} ({planned:.1f}) "
                     f"| {f'{mean(task_share):.0%}' if task_share else '-'} "
                     f"| {f'{mean(prompt_share):.0%}' if prompt_share else '-'} "
                     f"| {f'{sum(kept)}/{len(kept)}' if kept else '-'} | {gain} |")
        totals: dict[str, list[int]] = {}
        for r in rows:
            for name, counts in (r.get("meta_prompts") or {}).items():
                pooled = totals.setdefault(name, [0, 0])
                pooled[0] += counts.get("answers", 0)
                pooled[1] += counts.get("usable", 0)
        for name, (answers, usable) in totals.items():
            usable_lines.append(f"| {method} | {name} | {answers} | {usable} | "
                                f"{f'{usable / answers:.0%}' if answers else '-'} |")
        said = []
        for key in ("rejected_proposals", "admitted_proposals"):
            counts: Counter[str] = Counter()
            for r in rows:
                counts.update(r.get(key) or {})
            by_count = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            said.append(f"{sum(counts.values())} (" + "; ".join(f"{k}: {v}" for k, v in by_count) + ")"
                        if counts else "0")
        check_lines.append(f"| {method} | {said[0]} | {said[1]} |")
    return "\n".join(lines + [""] + usable_lines + [""] + check_lines)


def since_rules(specs: Sequence[str]) -> list[tuple[str, str]]:
    """``(method or "", commit)`` per ``[METHOD=]COMMIT`` spec."""
    return [tuple(spec.partition("=")[::2]) if "=" in spec else ("", spec) for spec in specs]


def passes_since(method: str, commit: str, rules: Sequence[tuple[str, str]], is_ancestor) -> bool:
    """Whether a row of ``method`` run at ``commit`` is at or after every rule that applies to it (a rule names
    no method, the method, or the chain the method is a stage of); a row without a commit passes none."""
    applies = [c for m, c in rules if not m or m == method or method.startswith(m + "/")]
    return all(commit and commit != "?" and is_ancestor(c, commit) for c in applies)


def check_commits(specs: Sequence[str], option: str = "--since") -> None:
    """Refuse a ``--since`` (or ``--legacy-until``) commit this checkout does not know (it would drop every row,
    or set none apart, silently)."""
    import subprocess

    for _, commit in since_rules(specs):
        known = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                               capture_output=True, cwd=Path(__file__).resolve().parent).returncode == 0
        if not known:
            raise SystemExit(f"{option} {commit}: no such commit in this checkout; pass a commit of its history.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="JSONL files written by bench_optimizers.py --out")
    parser.add_argument("--pair", action="append", default=[], metavar="A,B", help="compare method A with B")
    parser.add_argument("--curve", default=None, metavar="FILE.png",
                        help="draw test accuracy against calls spent, one point per budget, and print its table")
    parser.add_argument("--one-point", action="append", default=[], metavar="A,B",
                        help="with --curve: these methods' rows make one point whatever their budgets (a method "
                             "run at each cell's own reference calls, e.g. demos with --budget-from)")
    parser.add_argument("--coverage", action="store_true",
                        help="print which seeds each method has per task, with the commit each row ran at")
    parser.add_argument("--methods", default=None, metavar="A,B,...",
                        help="only these methods (their rows are read from every file; others are ignored)")
    parser.add_argument("--targets", action="store_true",
                        help="print issues 12-14's targets with their paired figures and verdicts")
    parser.add_argument("--since", action="append", default=[], metavar="[METHOD=]COMMIT",
                        help="keep only rows run at COMMIT or later (for METHOD only when named); repeatable")
    parser.add_argument("--legacy-machine", default=None, metavar="TAG", help=LEGACY_HELP)
    parser.add_argument("--legacy-until", default=None, metavar="COMMIT",
                        help="rows that name no machine and ran at COMMIT or before it are another build's "
                             f"({EARLY_LEGACY!r}): they pair only with each other (d0ce1f0 for the committed rows)")
    parser.add_argument("--machine", default=None, metavar="TAG",
                        help="keep only the rows of this machine tag (after --legacy-machine and --legacy-until), "
                             "so every comparison and curve point is read on one build (a tag no row has is "
                             "refused, with the tags the rows have)")
    parser.add_argument("--choices", action="store_true",
                        help="rows whose final choice replaced the start: the chosen z and the test gain it brought")
    parser.add_argument("--overshoot", action="store_true",
                        help="per method: the search's score of the validated start and finalists minus their "
                             "validation means")
    parser.add_argument("--search-health", action="store_true",
                        help="per searching method: steps run against the plan, share of the caps spent, start kept, "
                             "test gain, and per meta-prompt the share of usable answers")
    args = parser.parse_args(argv)
    if args.since:
        check_commits(args.since)
    if args.legacy_until:
        if "=" in args.legacy_until:
            parser.error(f"--legacy-until {args.legacy_until}: takes a bare COMMIT (it sets rows of every method "
                         "apart), not METHOD=COMMIT; drop the METHOD= part.")
        check_commits([args.legacy_until], "--legacy-until")
    cells = read_cells(args.files, since=args.since, legacy_machine=args.legacy_machine,
                       legacy_until=args.legacy_until, machine=args.machine)
    if args.machine is not None and not cells:
        seen = read_cells(args.files, since=args.since, legacy_machine=args.legacy_machine,
                          legacy_until=args.legacy_until)
        tags = sorted({machine_of_seed(seed) or "(none)" for _, seed, _ in seen})
        parser.error(f"--machine {args.machine}: no row of these files has that machine tag; the tags they have "
                     f"(after --legacy-machine and --legacy-until) are: {', '.join(tags) or 'none'}.")
    every_method = cells
    if args.methods:
        wanted = set(args.methods.split(","))
        cells = {key: r for key, r in cells.items() if key[0] in wanted}
    print(method_table(cells))
    if args.coverage:
        print()
        print(coverage_table(cells))
    if args.targets:
        print()
        print(targets_table(cells))
    if args.choices:
        print()
        print(choices_table(cells))
    if args.overshoot:
        print()
        print(overshoot_table(cells))
    if args.search_health:
        print()
        print(search_health_table(cells, every_method))
    for pair in args.pair:
        a, _, b = pair.partition(",")
        print()
        print(pair_grid(cells, a, b))
        print()
        print(pair_line(cells, a, b))
    if args.curve:
        one_point = [m for spec in args.one_point for m in spec.split(",") if m]
        points = curve_points(args.files, since=args.since, legacy_machine=args.legacy_machine, one_point=one_point,
                              legacy_until=args.legacy_until, machine=args.machine)
        if args.methods:
            points = {m: p for m, p in points.items() if m in wanted}
        plot_curve(points, args.curve)
        print()
        print(curve_table(points))
        print(f"curve written to {args.curve}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
