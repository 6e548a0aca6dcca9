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
so "as good at half the calls" is read off one picture. The same points are printed as a table. A cell
run twice at one budget counts once (the later file's row). ``--methods A,B`` keeps only those methods.

A chain's row (e.g. ``opro+soft``) carries the test accuracy of each earlier step's program; those are read as
rows of their own named ``CHAIN/OPTIMIZER`` (``opro+soft/OPRO``), so ``--pair opro+soft,opro+soft/OPRO`` is the
soft part's gain over the hard prompt it was trained under, cell by cell.

Run (the README's figures come from this command):
    python examples/benchmarks/summarize_runs.py examples/benchmarks/results/run_e_seed*.jsonl \
        --pair demos,bfsrs --pair demos,uncompiled --pair bfsrs,uncompiled
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path


def seeded_rows(paths: Sequence[str]) -> Iterator[tuple[str, dict]]:
    """``(seed, row)`` for every row the files hold, in file order, skipped rows left out. The seed is the
    row's ``seed``, else a ``seed<N>`` in its file's name, else the file's name."""
    for path in paths:
        match = re.search(r"seed(\d+)", Path(path).name)
        default = match.group(1) if match else Path(path).name
        for line in Path(path).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if "skipped" not in row:
                    yield str(row.get("seed", default)), row


def read_cells(paths: Sequence[str]) -> dict[tuple[str, str, str], dict]:
    """``{(method, seed, task): row}`` from the files (a later file's row wins)."""
    cells: dict[tuple[str, str, str], dict] = {}
    for seed, row in seeded_rows(paths):
        cells[(row["method"], seed, row["task"])] = row
        for stage in stage_rows(row):
            cells[(stage["method"], seed, row["task"])] = stage
    return cells


def stage_rows(row: dict) -> list[dict]:
    """A chain's earlier steps as rows of their own, named ``CHAIN/OPTIMIZER`` (e.g. ``opro+soft/OPRO``): the
    program each handed on, scored on the same test set, so the chain pairs with its own first step."""
    return [{**{k: v for k, v in stage.items() if k != "optimizer"}, "task": row["task"],
             "method": f"{row['method']}/{stage['optimizer']}", "seed": row.get("seed")}
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


def pair_line(cells: dict[tuple[str, str, str], dict], a: str, b: str) -> str:
    both = sorted((s, t) for m, s, t in cells if m == a and (b, s, t) in cells)
    if not both:
        return f"{a} vs {b}: no cell has both"
    diffs = [cells[(a, s, t)]["test_accuracy"] - cells[(b, s, t)]["test_accuracy"] for s, t in both]
    calls = [cells[(a, s, t)]["task_calls"] - cells[(b, s, t)]["task_calls"] for s, t in both]
    above, level = sum(d > 1e-9 for d in diffs), sum(abs(d) <= 1e-9 for d in diffs)
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) if len(diffs) > 1 else 0.0
    se = f"{math.sqrt(var / len(diffs)):.3f}" if len(diffs) > 1 else "n/a, one cell"
    per_cell = ", ".join(f"seed {s} {t} {d:+.2f}" for (s, t), d in zip(both, diffs))
    return (f"{a} vs {b} on {len(both)} cells: above {above}, level {level}, below {len(both) - above - level}; "
            f"mean difference {mean:+.3f} (paired s.e. {se}); {a} spent {sum(calls) / len(calls):+.1f} task "
            f"calls per cell against {b}\n  {per_cell}")


def pair_grid(cells: dict[tuple[str, str, str], dict], a: str, b: str) -> str:
    """One line per seed, one column per task: ``A / B`` test accuracy (task calls)."""
    seeds = sorted({s for m, s, _ in cells if m in (a, b)}, key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s))
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
        return (0, int(seed), "") if seed.isdigit() else (1, 0, seed)

    lines = ["| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for method in methods:
        row = []
        for task in tasks:
            seeds = sorted((s for m, s, t in cells if m == method and t == task), key=order)
            row.append(" ".join(f"{s}@{str(cells[(method, s, task)].get('commit', '?'))[:7]}" for s in seeds) or "-")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def curve_points(paths: Sequence[str]) -> dict[str, list[dict]]:
    """Per method, one point per budget: mean calls (task + prompt), mean test accuracy and its standard
    error over the cells (seed x task) run at that budget. A method's rows at several budgets all count;
    a cell run twice at one budget counts once, the later file's row (as in ``read_cells``)."""
    latest = {(row["method"], row.get("budget"), seed, row["task"]): row for seed, row in seeded_rows(paths)}
    groups: dict[tuple[str, object], list[dict]] = {}
    for (method, budget, _, _), row in latest.items():
        groups.setdefault((method, budget), []).append(row)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="JSONL files written by bench_optimizers.py --out")
    parser.add_argument("--pair", action="append", default=[], metavar="A,B", help="compare method A with B")
    parser.add_argument("--curve", default=None, metavar="FILE.png",
                        help="draw test accuracy against calls spent, one point per budget, and print its table")
    parser.add_argument("--coverage", action="store_true",
                        help="print which seeds each method has per task, with the commit each row ran at")
    parser.add_argument("--methods", default=None, metavar="A,B,...",
                        help="only these methods (their rows are read from every file; others are ignored)")
    args = parser.parse_args(argv)
    cells = read_cells(args.files)
    if args.methods:
        wanted = set(args.methods.split(","))
        cells = {key: r for key, r in cells.items() if key[0] in wanted}
    print(method_table(cells))
    if args.coverage:
        print()
        print(coverage_table(cells))
    for pair in args.pair:
        a, _, b = pair.partition(",")
        print()
        print(pair_grid(cells, a, b))
        print()
        print(pair_line(cells, a, b))
    if args.curve:
        points = curve_points(args.files)
        if args.methods:
            points = {m: p for m, p in points.items() if m in wanted}
        plot_curve(points, args.curve)
        print()
        print(curve_table(points))
        print(f"curve written to {args.curve}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
