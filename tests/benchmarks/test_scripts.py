"""The benchmark scripts' bookkeeping (no LM): pooling per-seed rows and the reference budget."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "examples" / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def row(task, method, acc, calls, **extra):
    return {"task": task, "method": method, "test_accuracy": acc, "task_calls": calls, **extra}


def test_rows_pool_by_seed_and_pairs_compare_cell_by_cell(tmp_path, capsys):
    summarize = load("summarize_runs")
    a = write(tmp_path / "run_seed0.jsonl", [row("t1", "demos", 0.5, 60), row("t1", "bfsrs", 0.4, 62),
                                             row("t2", "demos", 0.3, 70), row("t2", "bfsrs", 0.3, 70)])
    b = write(tmp_path / "other.jsonl", [row("t1", "demos", 0.2, 50, seed=1), row("t1", "bfsrs", 0.6, 50, seed=1),
                                         row("t2", "demos", 0.9, 50), {"task": "t2", "method": "x", "skipped": "no"}])
    cells = summarize.read_cells([a, b])
    assert ("demos", "1", "t1") in cells and ("demos", "other.jsonl", "t2") in cells  # never mixed with seed 0
    assert summarize.main([a, b, "--pair", "demos,bfsrs"]) == 0
    out = capsys.readouterr().out
    assert "| demos | 4 | 0.475 | 57.5 |" in out and "| bfsrs | 3 | 0.433 | 60.7 |" in out
    assert "demos vs bfsrs on 3 cells: above 1, level 1, below 1; mean difference -0.100" in out
    assert "demos spent -0.7 task calls per cell" in out
    assert "| 0 | 0.50 (60) / 0.40 (62) | 0.30 (70) / 0.30 (70) |" in out  # the seed x task grid
    assert "| 1 | 0.20 (50) / 0.60 (50) | - / - |" in out


def test_a_cell_run_twice_keeps_the_row_of_the_later_commit_whatever_order_the_files_come_in(tmp_path):
    summarize = load("summarize_runs")
    later = write(tmp_path / "run_seed2_a.jsonl", [row("t1", "joint", 0.36, 212, commit="new")])
    earlier = write(tmp_path / "run_seed2_b.jsonl", [row("t1", "joint", 0.27, 198, commit="old"),
                                                     row("t1", "bfsrs", 0.35, 263)])
    order = {"old": 0, "new": 1}
    is_ancestor = lambda old, new: order[old] <= order[new]  # noqa: E731
    for files in ([later, earlier], [earlier, later]):
        cells = summarize.read_cells(files, is_ancestor=is_ancestor)
        assert cells[("joint", "2", "t1")]["test_accuracy"] == 0.36 and cells[("joint", "2", "t1")]["commit"] == "new"
    unrelated = write(tmp_path / "run_seed2_c.jsonl", [row("t1", "joint", 0.30, 200, commit="elsewhere")])
    cells = summarize.read_cells([later, unrelated], is_ancestor=lambda old, new: False)
    assert cells[("joint", "2", "t1")]["test_accuracy"] == 0.30  # commits not in line: the later file's row


def test_coverage_names_the_seeds_and_commits_each_method_has_per_task(tmp_path, capsys):
    summarize = load("summarize_runs")
    a = write(tmp_path / "run_seed0.jsonl", [row("t1", "opro", 0.5, 60, commit="aaaaaaa111"),
                                             row("t2", "opro", 0.3, 70, commit="bbbbbbb")])
    b = write(tmp_path / "run_seed2.jsonl", [row("t1", "opro", 0.6, 60, commit="ccccccc"),
                                             row("t1", "apo", 0.4, 50)])
    assert summarize.main([a, b, "--coverage"]) == 0
    out = capsys.readouterr().out
    assert "| method | t1 | t2 |" in out
    assert "| opro | 0@aaaaaaa 2@ccccccc | 0@bbbbbbb |" in out  # commits cut to 7 characters, seeds in order
    assert "| apo | 2@? | - |" in out  # a row without a commit, and a task the method has no row on


def test_targets_read_each_issue_comparison_off_the_paired_cells_and_say_so_far_until_the_grid_is_full(tmp_path,
                                                                                                      capsys):
    summarize = load("summarize_runs")
    rows = []
    for seed in range(3):
        for task in ("t1", "t2", "t3", "t4"):
            rows.append(row(task, "uncompiled", 0.40, 0, seed=seed, budget=400))
            rows.append(row(task, "opro", 0.45 + 0.01 * seed, 380, prompt_calls=40, seed=seed, budget=400))
            rows.append(row(task, "copro", 0.46, 320, prompt_calls=10, seed=seed, budget=400))
    old_setting = [row("t1", "apo", 0.90, 60, seed=1, budget=80),  # another benchmark's setting: never paired
                   row("t1", "abo", 0.90, 60, budget=400)]  # no seed recorded: labelled by its file
    path = write(tmp_path / "grid.jsonl", rows + [row("t1", "apo", 0.30, 100, seed=0, budget=400)] + old_setting)
    cells = summarize.read_cells([path])
    table = summarize.targets_table(cells)
    assert "Rows of the user's case: 37 (2 of other settings left out)." in table
    assert ("| 12 | opro above the program as given | opro vs uncompiled | 12/12 | +0.060 (0.002) | 380+40 / 0+0 "
            "| met |") in table
    assert "| apo vs uncompiled | 1/12 | -0.100 (n/a) | 100+0 / 0+0 | missed so far |" in table  # one cell
    assert "| abo vs uncompiled | 0/12 | - | - | not measured |" in table
    # level with COPRO (+0.000, within a s.e.) but at more calls (420 against 330): missed
    assert "| opro vs copro | 12/12 | +0.000 (0.002) | 380+40 / 320+10 | missed |" in table
    # "the best of" is the best against the program as given (OPRO here), then compared with GEPA: no GEPA row
    assert "| 12 | the best of OPRO/APO/ABO level with GEPA or above | opro vs gepa | 0/12 | - | - | not measured |" \
        in table
    assert "| opro@embedded-1.5b vs opro | 0/12 | - | - |" in table  # no 1.5B-proposer row yet
    assert summarize.main([path, "--targets"]) == 0
    assert "| 14 | Iterative-APE at least APE |" in capsys.readouterr().out
    proposer = [row("t1", "opro@embedded-1.5b", 0.50, 390, prompt_calls=16, seed=0, budget=400),
                row("t2", "opro@embedded-1.5b", 0.41, 390, prompt_calls=18, seed=0, budget=400)]
    table = summarize.targets_table(summarize.read_cells([write(tmp_path / "grid2.jsonl", rows + proposer)]))
    # the same search with the 1.5B proposer against the 0.5B one, on the cells both ran: +0.05 and -0.04
    assert "| opro@embedded-1.5b vs opro | 2/12 | +0.005 (0.045) | 390+17 / 380+40 |" in table
    # OPRO run at COPRO's calls (--calls-from FILE:copro) is what "at no more calls" reads, where it has cells
    capped = [row(t, "opro@copro-calls", 0.46, 318, prompt_calls=10, seed=0, budget=320) for t in ("t1", "t2")]
    table = summarize.targets_table(summarize.read_cells([write(tmp_path / "grid3.jsonl", rows + capped)]))
    assert "| opro@copro-calls vs copro | 2/12 | +0.000 (0.000) | 318+10 / 320+10 | met so far |" in table
    assert "| apo vs copro | 0/12 |" in table  # no APO row at COPRO's calls, nor at 400 + 40


def test_the_best_of_several_methods_is_chosen_on_the_cells_they_share(tmp_path):
    summarize = load("summarize_runs")
    rows = [row(t, "uncompiled", 0.4, 0, seed=s, budget=400) for s in range(3) for t in ("t1", "t2")]
    rows += [row(t, "opro", 0.45, 400, seed=s, budget=400) for s in range(3) for t in ("t1", "t2")]  # +0.05 on all 6
    rows += [row("t1", "abo", 0.55, 400, seed=0, budget=400), row("t2", "abo", 0.38, 400, seed=2, budget=400)]
    cells = summarize.read_cells([write(tmp_path / "r.jsonl", rows)])
    # ABO's own cells average +0.065 (two cells); on the two cells both have it is +0.065 against OPRO's +0.05 ...
    assert summarize.best_of(cells, ["opro", "abo"]) == "abo"
    rows += [row("t2", "abo", 0.10, 400, seed=1, budget=400)]
    cells = summarize.read_cells([write(tmp_path / "r2.jsonl", rows)])
    assert summarize.best_of(cells, ["opro", "abo"]) == "opro"  # ... and a lost third cell turns it


def test_choices_pair_each_replaced_start_with_its_z_and_test_gain(tmp_path):
    summarize = load("summarize_runs")
    chosen = lambda gain, se: [{"candidate": 0, "passed": False}, {"candidate": 3, "gain": gain, "se": se,  # noqa: E731
                                                                     "passed": True}]
    path = write(tmp_path / "run_seed0.jsonl", [
        row("t1", "uncompiled", 0.40, 0), row("t2", "uncompiled", 0.50, 0),
        row("t1", "abo", 0.32, 380, kept_start=False, final_choice=chosen(0.12, 0.09)),  # z 1.33, lost 0.08
        row("t2", "abo", 0.60, 380, kept_start=False, final_choice=chosen(0.25, 0.1)),  # z 2.5, gained 0.10
        row("t1", "opro", 0.40, 380, kept_start=True, final_choice=chosen(0.0, 0.1))])  # the start kept: not listed
    table = summarize.choices_table(summarize.read_cells([path]))
    assert "| abo | 0 | t1 | 1.33 | -0.08 |" in table and "| abo | 0 | t2 | 2.50 | +0.10 |" in table
    assert "opro" not in table
    # the z shown is the chosen finalist's (the best validation mean among those that passed), not the largest
    two = [{"candidate": 3, "val": 0.80, "gain": 0.2, "se": 0.1, "passed": True},
           {"candidate": 4, "val": 0.76, "gain": 0.16, "se": 0.04, "passed": True}]
    path = write(tmp_path / "run_seed1.jsonl", [row("t1", "uncompiled", 0.4, 0), row("t1", "apo", 0.5, 400, kept_start=False,
                                                                                   final_choice=two)])
    assert "| apo | 1 | t1 | 2.00 | +0.10 |" in summarize.choices_table(summarize.read_cells([path]))
    # since ac46f11 a row names the chosen (one level with the leader may win on the search's evidence)
    two[1]["chosen"] = True
    path = write(tmp_path / "run_seed2.jsonl", [row("t1", "uncompiled", 0.4, 0),
                                                row("t1", "apo", 0.5, 400, kept_start=False, final_choice=two)])
    assert "| apo | 2 | t1 | 4.00 | +0.10 |" in summarize.choices_table(summarize.read_cells([path]))
    assert "| [1, 1.5) | 1 | 0 | 0 | 1 | -0.080 |" in table and "| [2, inf) | 1 | 1 | 0 | 0 | +0.100 |" in table


def test_since_keeps_only_rows_run_at_or_after_a_commit_for_every_method_or_one(tmp_path):
    summarize = load("summarize_runs")
    path = write(tmp_path / "run_seed0.jsonl", [row("t1", "ape", 0.5, 60, commit="old"),
                                                row("t2", "ape", 0.6, 60, commit="new"),
                                                row("t1", "opro", 0.3, 70, commit="old"),
                                                row("t1", "uncompiled", 0.3, 0)])
    order = {"old": 0, "new": 1}
    is_ancestor = lambda old, new: order[old] <= order[new]  # noqa: E731
    kept = summarize.read_cells([path], is_ancestor=is_ancestor, since=["ape=new"])
    assert set(kept) == {("ape", "0", "t2"), ("opro", "0", "t1"), ("uncompiled", "0", "t1")}
    kept = summarize.read_cells([path], is_ancestor=is_ancestor, since=["old"])
    assert set(kept) == {("ape", "0", "t1"), ("ape", "0", "t2"), ("opro", "0", "t1")}  # no commit: dropped


def test_copro_is_sized_to_spend_the_task_calls_ours_are_capped_at():
    bench = load("bench_optimizers")
    breadth = bench.copro_breadth(400, 40)
    assert breadth == 5 and breadth * bench.COPRO_DEPTH * 40 == 400  # 320 at the earlier breadth 4
    assert bench.copro_breadth(80, 10) == 4
    assert bench.copro_breadth(50, 40) == 2  # COPRO's minimum breadth, even when one round costs more


def test_the_reference_budget_is_what_the_reference_row_spent(tmp_path):
    bench = load("bench_optimizers")
    ref = write(tmp_path / "ref.jsonl", [row("t1", "bfsrs", 0.4, 61)])
    assert bench._reference_budget(f"{ref}:bfsrs", "t1", 80) == 61
    assert bench._reference_budget(f"{ref}:bfsrs", "t1", 50) == 50  # never above --budget
    assert bench._reference_budget(None, "t1", 80) == 80
    with pytest.raises(SystemExit, match="no 'bfsrs' row for task 't2'"):
        bench._reference_budget(f"{ref}:bfsrs", "t2", 80)


def test_the_reference_calls_cap_both_models_at_what_the_reference_row_spent(tmp_path):
    bench = load("bench_optimizers")
    ref = write(tmp_path / "ref.jsonl", [row("t1", "copro", 0.4, 400, prompt_calls=18)])
    assert bench._reference_calls(f"{ref}:copro", "t1", 400, 40) == (400, 18)
    assert bench._reference_calls(f"{ref}:copro", "t1", 300, 10) == (300, 10)  # never above the given caps
    with pytest.raises(SystemExit, match="no 'copro' row for task 't2'"):
        bench._reference_calls(f"{ref}:copro", "t2", 400, 40)


def test_the_curve_has_one_point_per_budget_with_calls_of_both_models(tmp_path, capsys):
    summarize = load("summarize_runs")
    low = write(tmp_path / "low_seed0.jsonl", [row("t1", "joint", 0.5, 190, prompt_calls=4, budget=200),
                                               row("t2", "joint", 0.7, 196, prompt_calls=4, budget=200)])
    high = write(tmp_path / "high_seed0.jsonl", [row("t1", "joint", 0.6, 390, prompt_calls=4, budget=400),
                                                 row("t1", "mipro_light", 0.55, 600, prompt_calls=14, budget=400)])
    points = summarize.curve_points([low, high])
    assert [(p["budget"], p["cells"], p["calls"]) for p in points["joint"]] == [(200, 2, 197.0), (400, 1, 394.0)]
    assert points["joint"][0]["accuracy"] == pytest.approx(0.6) and points["joint"][0]["se"] == pytest.approx(0.1)
    assert points["joint"][1]["se"] is None  # one cell: no standard error claimed
    png = tmp_path / "curve.png"
    assert summarize.main([low, high, "--curve", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    out = capsys.readouterr().out
    assert "| joint | 200 | 2 | 197 | 0.600 (0.100) |" in out and "| mipro_light | 400 | 1 | 614 | 0.550 |" in out
    assert summarize.main([low, high, "--curve", str(png), "--methods", "mipro_light"]) == 0
    only = capsys.readouterr().out
    assert "| mipro_light | 400 |" in only and "| joint |" not in only
    rerun = write(tmp_path / "rerun_seed0.jsonl", [row("t1", "joint", 0.9, 198, prompt_calls=4, budget=200)])
    again = summarize.curve_points([low, high, rerun])["joint"][0]  # the same cell at the same budget: replaced
    assert (again["cells"], again["accuracy"]) == (2, pytest.approx(0.8))


def test_the_curve_reads_the_rows_the_targets_read(tmp_path):
    # a later file holding an older commit's row of the same cell does not replace the newer one, and a row
    # without a machine pairs with the tagged ones under --legacy-machine (as in read_cells)
    summarize = load("summarize_runs")
    new = write(tmp_path / "a_seed0.jsonl", [row("t1", "joint", 0.6, 210, budget=220, commit="new", machine="m1"),
                                             row("t2", "joint", 0.4, 210, budget=220, commit="new", machine="m1")])
    old = write(tmp_path / "b_seed0.jsonl", [row("t1", "joint", 0.2, 200, budget=220, commit="old")])
    is_ancestor = lambda a, b: (a, b) in {("old", "new"), ("old", "old"), ("new", "new")}  # noqa: E731
    split = summarize.curve_points([new, old], is_ancestor=is_ancestor)["joint"][0]
    assert split["cells"] == 3, "an untagged row is a cell of its own by default"
    merged = summarize.curve_points([new, old], is_ancestor=is_ancestor, legacy_machine="m1")["joint"][0]
    assert (merged["cells"], merged["accuracy"]) == (2, pytest.approx(0.5)), "the newer commit's 0.6 stays"
    since = summarize.curve_points([new, old], is_ancestor=is_ancestor, since=["joint=new"])["joint"][0]
    assert since["cells"] == 2


def test_a_method_run_at_each_cells_own_calls_can_be_one_point(tmp_path, capsys):
    summarize = load("summarize_runs")
    rows = write(tmp_path / "r_seed0.jsonl", [row("t1", "demos", 0.4, 250, budget=260),
                                              row("t2", "demos", 0.6, 270, budget=272)])
    assert len(summarize.curve_points([rows])["demos"]) == 2
    [point] = summarize.curve_points([rows], one_point=["demos"])["demos"]
    assert (point["budget"], point["cells"], point["calls"]) == ("per cell", 2, 260.0)
    assert summarize.main([rows, "--curve", str(tmp_path / "c.png"), "--one-point", "demos"]) == 0
    assert "| demos | per cell | 2 | 260 | 0.500 (0.100) |" in capsys.readouterr().out


def test_the_fp32_control_runs_the_given_program_on_a_pytorch_lm_with_the_task_models_settings(monkeypatch):
    import dspy

    from dspy_icl_opt.lm import transformers_engine

    bench = load("bench_optimizers")
    built = []

    def fake_transformers_lm(base_model, **kwargs):
        built.append((base_model, kwargs))
        return dspy.utils.DummyLM([{"answer": "x"}])

    monkeypatch.setattr(transformers_engine, "transformers_lm", fake_transformers_lm)
    given = dspy.Predict("question -> answer")
    task_lm = dspy.LM("openai/unused", temperature=0.0, max_tokens=256, cache=False)
    program = bench.method_registry()["uncompiled_fp32"]({"program": given, "task_lm": task_lm})
    assert built == [("embedded", {"temperature": 0.0, "max_tokens": 256, "cache": False})]
    assert [p.lm for _, p in program.named_predictors()] == [program.lm] and isinstance(program.lm, dspy.utils.DummyLM)
    assert given.lm is None and program is not given  # the caller's program is left as it was


def test_a_rows_calls_include_what_each_chained_optimizer_counted_beyond_the_meter(monkeypatch):
    # A soft prompt validates on a PyTorch LM of its own, which the benchmark's meter does not wrap:
    # the row must still show those calls (the optimizers' own counts, summed over a chain).
    import argparse
    import types

    import dspy

    from dspy_icl_opt.search.budget import Spent

    bench = load("bench_optimizers")

    class Counted:
        def __init__(self, metric, **kwargs):
            self.report_ = None

        def compile(self, program, *, trainset, valset):
            self.report_ = types.SimpleNamespace(spent={"task": Spent(calls=120), "prompt": Spent(calls=3)},
                                                 stopped_by_budget=False, steps_completed=1, extra={},
                                                 candidates=[], counters=None)
            return program

    monkeypatch.setitem(sys.modules, "fake_optimizers", types.SimpleNamespace(Counted=Counted))

    def chain(ctx):
        half = dict(ctx, budget=ctx["budget"] // 2)
        half["program"] = bench._ours(half, "fake_optimizers", "Counted")
        return bench._ours(half, "fake_optimizers", "Counted")

    monkeypatch.setattr(bench, "method_registry", lambda: {"chain": chain})
    args = argparse.Namespace(seed=0, train=4, val=4, test=3, program="qa", budget=400, prompt_budget=40)
    lm = dspy.utils.DummyLM([{"answer": "x"}] * 10)
    row = bench.run_method("chain", "disambiguation_qa", args, (lm, lm))
    assert (row["task_calls"], row["prompt_calls"]) == (240, 6)


def test_a_chains_row_scores_each_earlier_steps_program_on_its_own(monkeypatch):
    # "hard then soft" must sit beside the hard prompt it started from: the row scores the program the
    # first step handed on, not the chain's final program twice.
    import argparse
    import types

    import dspy

    from dspy_icl_opt.search.budget import Spent

    bench = load("bench_optimizers")
    scores = {}

    class Step:
        def __init__(self, metric, **kwargs):
            self.score, self.report_ = kwargs.get("score"), None

        def compile(self, program, *, trainset, valset):
            self.report_ = types.SimpleNamespace(spent={"task": Spent(calls=50), "prompt": Spent(calls=2)},
                                                 stopped_by_budget=False, steps_completed=4,
                                                 extra={"plan": {"steps": 5}}, candidates=[], counters=None)
            out = program.deepcopy()
            scores[id(out)] = self.score
            return out

    monkeypatch.setitem(sys.modules, "fake_steps", types.SimpleNamespace(Step=Step))
    monkeypatch.setattr(bench, "evaluate", lambda program, examples, metric, lm: scores[id(program)])

    def chain(ctx):
        ctx["program"] = bench._ours(ctx, "fake_steps", "Step", score=0.25)
        return bench._ours(ctx, "fake_steps", "Step", score=0.5)

    monkeypatch.setattr(bench, "method_registry", lambda: {"chain": chain, "single": lambda ctx: chain(ctx) and
                                                           bench._ours(ctx, "fake_steps", "Step", score=0.75)})
    args = argparse.Namespace(seed=0, train=4, val=4, test=3, program="qa", budget=400, prompt_budget=40)
    lm = dspy.utils.DummyLM([{"answer": "x"}])
    row = bench.run_method("chain", "disambiguation_qa", args, (lm, lm))
    assert row["test_accuracy"] == 0.5
    (name, final), = row["final_program"].items()  # the program handed back: its instruction and demo count
    assert final["demos"] == 0 and final["instruction"] == bench.make_program("qa", bench.load_task(
        "disambiguation_qa", seed=0, train_size=4, val_size=4, test_size=3)).named_predictors()[0][1].signature.instructions
    assert [(s["optimizer"], s["test_accuracy"], s["task_calls"], s["steps"], s["planned_steps"])
            for s in row["stages"]] == [("Step", 0.25, 50, 4, 5)]
    assert row["peak_rss_mb"] > 10
    one = bench.run_method("single", "disambiguation_qa", args, (lm, lm))
    assert [s["test_accuracy"] for s in one["stages"]] == [0.25, 0.5]  # every step but the last


def test_a_chains_earlier_steps_are_read_as_rows_that_pair_with_the_chain(tmp_path, capsys):
    summarize = load("summarize_runs")
    stage = {"optimizer": "OPRO", "test_accuracy": 0.3, "task_calls": 196, "prompt_calls": 5, "steps": 5,
             "planned_steps": 5, "kept_start": True}
    a = write(tmp_path / "run_seed0.jsonl", [row("t1", "opro+soft", 0.45, 356, seed=0, stages=[stage],
                                                 compile_s=2000.0, peak_rss_mb=3100),
                                             row("t2", "opro+soft", 0.3, 356, seed=0, stages=[dict(stage, test_accuracy=0.3)],
                                                 compile_s=1000.0, peak_rss_mb=2900)])
    cells = summarize.read_cells([a])
    assert cells[("opro+soft/OPRO", "0", "t1")]["test_accuracy"] == 0.3
    assert summarize.main([a, "--pair", "opro+soft,opro+soft/OPRO"]) == 0
    out = capsys.readouterr().out
    assert "opro+soft vs opro+soft/OPRO on 2 cells: above 1, level 1, below 0; mean difference +0.075" in out
    assert "| opro+soft | 2 | 0.375 | 356.0 | 0.0 | - | - | 1500 | 3100 |" in out
    assert "| opro+soft/OPRO | 2 | 0.300 | 196.0 | 5.0 | 5.0 (5.0) | 2/2 | - | - |" in out


def test_a_row_shows_each_finalists_search_score_beside_its_validation():
    # "the search's ranking did not hold on new examples" must be readable from the row itself
    import types

    from dspy_icl_opt.search.report import CandidateRecord

    bench = load("bench_optimizers")
    start = CandidateRecord(id=0, step=0, origin="seed", state={}, scores={"train": 0.4375, "val": 0.3})
    best = CandidateRecord(id=7, step=2, origin="proposal", state={}, scores={"train": 0.6875, "val": 0.275})
    choice = {"start": 0, "chosen": 0, "examples": 40, "contenders": [
        {"candidate": 0, "val": 0.3, "gain": 0.0, "se": 0.0, "passed": False},
        {"candidate": 7, "val": 0.275, "gain": -0.025, "se": 0.04, "passed": False}]}
    admitted = {"a question, not an instruction": 3}
    report = types.SimpleNamespace(steps_completed=6, extra={"plan": {"steps": 5}, "final_choice": choice,
                                                             "admitted_proposals": admitted},
                                   candidates=[start, best], counters=None)
    figures = bench._search_figures(report)
    assert figures["kept_start"] is True
    assert figures["admitted_proposals"] == admitted and figures["rejected_proposals"] == {}
    assert figures["final_choice"] == [
        {"candidate": 0, "origin": "seed", "search": {"train": 0.4375}, "val": 0.3, "gain": 0.0, "se": 0.0,
         "passed": False, "chosen": True},
        {"candidate": 7, "origin": "proposal", "search": {"train": 0.6875}, "val": 0.275, "gain": -0.025,
         "se": 0.04, "passed": False, "chosen": False}]


def test_a_joint_row_keeps_its_trials_and_the_repeats_told_for_free():
    bench = load("bench_optimizers")
    choice = {"self": {"instruction": 2, "instruction_origin": "proposal", "demo_set": "mmr", "k": 4, "extra": 1}}
    joint = {"repeats_told": 3, "trials": [
        {"candidate": 0, "phase": 1, "value": 0.5, "examples": 10, "choice": choice},
        {"candidate": 5, "phase": 1, "value": 0.7, "examples": 10, "full": 0.6, "choice": choice}]}
    figures = bench._joint_trials(joint)
    assert (figures["repeats_told"], figures["programs"], figures["full_evaluations"]) == (3, 2, 1)
    assert figures["trials"][1]["full"] == 0.6 and "extra" not in figures["trials"][0]["choice"]["self"]
    assert bench._joint_trials(None) is None


def test_the_ceiling_separates_a_lucky_half_from_a_real_gain():
    ceiling = load("instruction_ceiling")
    start = [1.0, 0.0] * 10
    same = list(start)
    lucky = [1.0] * 10 + start[10:]  # +5 examples, all in the first half
    real = [1.0 if i % 4 == 1 else s for i, s in enumerate(start)]  # +5 examples, spread over both halves
    figures = ceiling.analyse(start, {1: same, 2: lucky}, search_rank=[2, 1, 0])
    assert figures["search_pick"]["candidate"] == 2 and figures["search_pick"]["gain"] == pytest.approx(0.25)
    assert figures["best_on_all"]["candidate"] == 2
    assert figures["split_half_best_gain"] == pytest.approx(0.0)  # chosen on one half, nothing on the other
    assert (figures["above_start"], figures["below_start"]) == (1, 0)
    spread = ceiling.analyse(start, {1: same, 3: real}, search_rank=[0, 1, 3])
    assert spread["split_half_best_gain"] == pytest.approx(0.25)
    assert spread["search_pick"]["candidate"] == 1 and spread["search_pick"]["gain"] == 0.0
    assert spread["true_spread_sd"] > 0.1
    assert ceiling.analyse(start, {1: same, 4: same}, [1])["true_spread_sd"] == 0.0  # no spread beyond noise


def fake_ceiling(monkeypatch, marker: str, better_on: int):
    """instruction_ceiling with its LM and scoring faked: an instruction containing ``marker`` is right on the
    first ``better_on`` examples and on every second one after; any other on every second one. Returns the
    module and the instructions scored, in order."""
    import dspy

    ceiling = load("instruction_ceiling")
    calls = []

    def fake_score(program, state, examples, metric, lm):
        text = next(iter(state.values()))["instruction"]
        calls.append(text)
        return [1.0 if marker in text and i < better_on else float(i % 2) for i in range(len(examples))]

    monkeypatch.setattr(ceiling, "score_candidate", fake_score)
    monkeypatch.setattr(ceiling, "resolve_lm", lambda *a, **k: dspy.utils.DummyLM([{"answer": "x"}]))
    return ceiling, calls


def test_the_ceiling_scores_a_rows_candidates_once_and_resumes(tmp_path, monkeypatch, capsys):
    ceiling, calls = fake_ceiling(monkeypatch, "Think", 10)
    states = [{"id": 0, "step": 0, "origin": "seed", "state": {"predict": {"instruction": "Answer."}},
               "scores": {"train": 0.4, "val": 0.3}},
              {"id": 5, "step": 1, "origin": "proposal", "state": {"predict": {"instruction": "Think, then answer."}},
               "scores": {"train": 0.6}}]
    rows = write(tmp_path / "run_seed0.jsonl", [
        row("date_understanding", "opro+soft", 0.44, 356, seed=0,
            stages=[{"optimizer": "OPRO", "test_accuracy": 0.31, "candidate_states": states}])])
    out = tmp_path / "ceiling.jsonl"
    argv = ["--rows", rows, "--task", "date_understanding", "--method", "opro+soft/OPRO", "--seed", "0",
            "--test", "20", "--out", str(out)]
    assert ceiling.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| 5 | proposal | 1 | 0.600 | - | 0.750 | +0.250 (0.099) |" in printed
    assert "the search's top-ranked candidate (5): +0.250" in printed
    assert ceiling.main(argv) == 0 and len(calls) == 2  # the second run read both from --out
    capsys.readouterr()
    assert ceiling.main([*argv, "--max-candidates", "0"]) == 0 and len(calls) == 2
    only_start = capsys.readouterr().out
    assert "| 0 | seed | 0 |" in only_start and "| 5 |" not in only_start
    with pytest.raises(SystemExit, match="no 'APO' step"):
        ceiling.main([*argv[:5], "opro+soft/APO", *argv[6:]])


def test_the_ceiling_scores_only_the_finalists_the_rows_final_choice_validated(tmp_path, monkeypatch, capsys):
    ceiling, calls = fake_ceiling(monkeypatch, "Think", 10)
    states = [{"id": i, "step": min(i, 1), "origin": "seed" if i == 0 else "proposal",
               "state": {"predict": {"instruction": text}}, "scores": {"search": score}}
              for i, text, score in [(0, "Answer.", 0.4), (5, "Reply briefly.", 0.9), (7, "Think, then answer.", 0.6)]]
    table = [{"candidate": 0, "val": 0.4, "gain": 0.0, "se": 0.0, "passed": False},
             {"candidate": 7, "val": 0.5, "gain": 0.1, "se": 0.08, "passed": False}]
    rows = write(tmp_path / "run_seed0.jsonl", [row("hyperbaton", "apo", 0.62, 400, seed=0,
                                                    candidate_states=states, final_choice=table)])
    argv = ["--rows", rows, "--task", "hyperbaton", "--method", "apo", "--seed", "0", "--test", "20", "--finalists"]
    assert ceiling.main(argv) == 0
    assert calls == ["Answer.", "Think, then answer."]  # not candidate 5, the search's top-ranked: not validated
    assert "| 7 | proposal | 1 |" in capsys.readouterr().out
    no_table = write(tmp_path / "run_seed1.jsonl", [row("hyperbaton", "apo", 0.62, 400, seed=0,
                                                        candidate_states=states)])
    with pytest.raises(SystemExit, match="no final_choice table"):
        ceiling.main(["--rows", no_table, *argv[2:]])


def test_the_ceiling_scores_only_the_candidates_named(tmp_path, monkeypatch):
    ceiling, calls = fake_ceiling(monkeypatch, "Think", 10)
    states = [{"id": i, "step": min(i, 1), "origin": "seed" if i == 0 else "proposal",
               "state": {"predict": {"instruction": text}}, "scores": {}}
              for i, text in [(0, "Answer."), (5, "Reply briefly."), (7, "Think, then answer.")]]
    table = [{"candidate": 0, "val": 0.4, "gain": 0.0, "se": 0.0, "passed": False},
             {"candidate": 5, "val": 0.4, "gain": 0.0, "se": 0.05, "passed": False},
             {"candidate": 7, "val": 0.5, "gain": 0.1, "se": 0.08, "passed": False}]
    rows = write(tmp_path / "run_seed0.jsonl", [row("hyperbaton", "apo", 0.62, 400, seed=0,
                                                    candidate_states=states, final_choice=table)])
    argv = ["--rows", rows, "--task", "hyperbaton", "--method", "apo", "--seed", "0", "--test", "20", "--finalists"]
    out = str(tmp_path / "ceiling.jsonl")
    assert ceiling.main([*argv, "--candidates", "7", "--out", out]) == 0
    assert calls == ["Answer.", "Think, then answer."]  # the start and the one named, not finalist 5
    with pytest.raises(SystemExit, match=r"no candidate \[9\]"):
        ceiling.main([*argv, "--candidates", "7,9"])
    with pytest.raises(SystemExit, match="candidate ids separated by commas"):
        ceiling.main([*argv, "--candidates", "seven"])
    # another row of the same cell and method: its candidate 7 is another program, not read back from --out
    other = [dict(c, state={"predict": {"instruction": "Think twice."}}) if c["id"] == 7 else c for c in states]
    rows2 = write(tmp_path / "run_seed0_b.jsonl", [row("hyperbaton", "apo", 0.62, 400, seed=0,
                                                       candidate_states=other, final_choice=table)])
    assert ceiling.main(["--rows", rows2, *argv[2:], "--candidates", "7", "--out", out]) == 0
    assert calls[2:] == ["Answer.", "Think twice."]
    assert ceiling.main([*argv, "--candidates", "7", "--out", out]) == 0 and len(calls) == 4  # the first row's, read


def test_the_ceiling_picks_demos_per_call_where_the_state_says_so():
    """A joint-search or DemoSelector state carries a kNN pool behind a selection demo: scored as the search ran
    it, each call shows k demos of the pool, not the whole pool (which overflowed the context: test 0.000)."""
    import dspy

    from dspy_icl_opt.demos.dynamic import selection_demo
    from dspy_icl_opt.testing import format_chat_reply, scripted_lm
    from dspy_icl_opt.testing.chat import prompt_text

    ceiling = load("instruction_ceiling")
    pool = [{"question": f"pool question {i}", "answer": f"a{i}"} for i in range(6)]
    state = {"self": {"instruction": "Answer.", "position": "system", "base_instruction": "",
                      "demos": [selection_demo(mode="knn", k=2, order="as_selected"), *pool]}}
    shown = []

    def reply(request):
        text = prompt_text(request)
        shown.append(sum(f"pool question {i}" in text for i in range(6)))
        return format_chat_reply({"answer": "a1"})

    examples = [dspy.Example(question="pool question 1?", answer="a1").with_inputs("question"),
                dspy.Example(question="something else", answer="zz").with_inputs("question")]
    metric = lambda example, prediction, trace=None: float(prediction.answer == example.answer)
    program = dspy.Predict("question -> answer")
    scores = ceiling.score_candidate(program, state, examples, metric, scripted_lm(reply))
    assert scores == [1.0, 0.0]
    assert shown == [2, 2]  # k of the 6 each call
    static = {"self": {**state["self"], "demos": pool}}
    shown.clear()
    ceiling.score_candidate(program, static, examples, metric, scripted_lm(reply))
    assert shown == [6, 6]  # a fixed set is shown whole, as before


def test_the_ceiling_scores_hand_written_instructions_apart(tmp_path, monkeypatch, capsys):
    ceiling, calls = fake_ceiling(monkeypatch, "Work out", 10)
    states = [{"id": 0, "step": 0, "origin": "seed", "state": {"predict": {"instruction": "Answer."}},
               "scores": {"train": 0.4, "val": 0.3}},
              {"id": 5, "step": 1, "origin": "proposal", "state": {"predict": {"instruction": "Answer now."}},
               "scores": {"train": 0.6}}]
    rows = write(tmp_path / "run_seed0.jsonl", [row("date_understanding", "opro", 0.31, 392, seed=0,
                                                     candidate_states=states)])
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps(["Work out the date, then answer.", "Reply with the option's text."]))
    out = tmp_path / "ceiling.jsonl"
    argv = ["--rows", rows, "--task", "date_understanding", "--method", "opro", "--seed", "0", "--test", "20",
            "--out", str(out), "--instructions", str(hand)]
    assert ceiling.main(argv) == 0
    printed = capsys.readouterr().out
    searched, _, written = printed.partition("written by hand")
    assert "| 1000 |" not in searched and "the search's top-ranked candidate (5): +0.000" in searched
    assert "| 1000 | hand | 0 | - | - | 0.750 | +0.250 (0.099) |" in written
    assert "best on all test examples (1000" in written and repr("Reply with the option's text.") in written
    # a changed hand-written text is scored again; the unchanged ones are read from --out
    hand.write_text(json.dumps(["Work out the date, then answer.", "Reply with the letter."]))
    assert ceiling.main(argv) == 0 and calls[-1] == "Reply with the letter." and len(calls) == 5
    with pytest.raises(SystemExit, match="JSON list of non-empty strings"):
        hand.write_text(json.dumps({"a": 1}))
        ceiling.main(argv)


def test_the_ceiling_without_rows_scores_the_program_as_given_and_hand_written_instructions(tmp_path, monkeypatch,
                                                                                          capsys):
    ceiling, calls = fake_ceiling(monkeypatch, "adjective order", 4)
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps(["Use the usual adjective order, then answer."]))
    argv = ["--task", "hyperbaton", "--seed", "0", "--test", "20", "--instructions", str(hand)]
    assert ceiling.main(argv) == 0
    printed = capsys.readouterr().out
    assert calls[0] == "Answer the multiple-choice question. Reply with the exact text of the correct option."
    assert "| 1000 | hand | 0 | - | - | 0.600 | +0.100 (0.069) |" in printed
    with pytest.raises(SystemExit, match="Nothing to score"):
        ceiling.main(["--task", "hyperbaton", "--test", "20"])


def test_check_proposals_names_what_is_not_an_instruction(tmp_path, capsys):
    check = load("check_proposals")
    states = [{"id": 0, "step": 0, "origin": "seed", "state": {"p": {"instruction": "Answer."}}, "scores": {}},
              {"id": 1, "step": 1, "origin": "edit", "state": {"p": {"instruction": "02/14/2026"}}, "scores": {}},
              {"id": 2, "step": 1, "origin": "paraphrase",
               "state": {"p": {"instruction": "Work out the date, then reply with the matching option."}},
               "scores": {}},
              {"id": 3, "step": 2, "origin": "edit",
               "state": {"p": {"instruction": "What is the date today in MM/DD/YYYY?"}}, "scores": {}}]
    rows = write(tmp_path / "rows.jsonl", [row("date_understanding", "apo", 0.31, 392, seed=0,
                                               candidate_states=states)])
    assert check.main(["--rows", rows, "--task", "date_understanding", "--method", "apo", "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "| 1 | edit | a bare answer, not an instruction | 02/14/2026 |" in printed
    # on this split the phrase is a few training examples' own: a copy, which the strategies score by default
    assert ("| 3 | edit | copies a training example (scored unless check_proposals='strict') | "
            "What is the date today in MM/DD/YYYY? |") in printed
    assert "3 proposals: a bare answer, not an instruction 1, an instruction 1, copies a training example" in printed
    assert any("Reword an instruction" in text for text in check.meta_texts("apo"))
    assert check.meta_texts("opro+soft/OPRO") and check.meta_texts("uncompiled") == []


def test_the_final_choice_simulation_ranks_the_rules_by_the_true_gain_they_keep():
    sim = load("sim_final_choice")
    helps = sim.simulate(0.15, 0.05, reps=200)
    hurts = sim.simulate(-0.10, 0.05, reps=200)
    assert set(helps) == set(sim.RULES)
    # using the trials' cached half as well finds more of a real gain than the held-back half alone ...
    assert helps["all, fresh >= 0"] > helps["held-out"] > 0
    # ... while choosing the best mean with no test (BFSRS) is what does harm when demos hurt
    assert hurts["best of all (BFSRS)"] < hurts["all, fresh >= 0"] <= 0
    nothing = sim.simulate(0.0, 0.0, reps=20)  # every demo set as good as the start: no rule can gain or lose
    assert all(value == 0.0 for value in nothing.values())
    quarter = sim.simulate(0.15, 0.05, reps=200, n_trial=30, n_held=10, p0=0.3)  # InstructionDemoSearch's split
    assert quarter["all, fresh >= 0"] > quarter["held-out"] > 0
    with pytest.raises(SystemExit):
        sim.main(["--held", "40"])  # nothing left for the trials: refused by name


def test_the_simulation_sweeps_the_threshold_on_the_same_draws():
    sim = load("sim_final_choice")
    helps = sim.simulate_thresholds(0.08, 0.05, [0.0, 1.0, 3.0], reps=300)
    hurts = sim.simulate_thresholds(-0.10, 0.05, [0.0, 1.0, 3.0], reps=300)
    # a lower bar keeps more of a real gain, and more often picks a worse program where demo sets hurt
    assert helps[0.0][0] > helps[1.0][0] > helps[3.0][0] > 0
    assert hurts[0.0][0] < hurts[1.0][0] <= 0 and hurts[0.0][1] > hurts[1.0][1] > 0
    # the rule's own threshold reproduces its column of the first table (same draws, same seed)
    assert sim.simulate_thresholds(0.08, 0.05, [sim.VALIDATION_Z], reps=300)[sim.VALIDATION_Z][0] == \
        pytest.approx(sim.simulate(0.08, 0.05, reps=300)["all, fresh >= 0"])
    with pytest.raises(SystemExit):
        sim.main(["--z", "low"])  # not numbers: refused by name


def test_the_simulation_compares_search_shapes_at_the_same_trial_calls():
    sim = load("sim_final_choice")
    helps = sim.simulate_shapes(0.15, 0.05, reps=200)
    hurts = sim.simulate_shapes(-0.10, 0.05, reps=200)
    assert set(helps) == set(sim.SHAPES)
    # a test corrected for picking among the trials keeps less of a real gain than the uncorrected one ...
    assert 0 < helps["whole, Bonferroni"] < helps["whole, z"]
    # ... and choosing the best with no test is what does harm when demos hurt
    assert hurts["whole, best (BFSRS)"] < hurts["whole, z"] <= 0
    nothing = sim.simulate_shapes(0.0, 0.0, reps=20)
    assert all(value == 0.0 for value in nothing.values())


def test_the_grid_plans_the_cells_without_a_row_split_by_split_each_reference_first(tmp_path):
    grid = load("run_grid")
    write(tmp_path / "run_grid_t1_seed0_opro.jsonl", [row("t1", "opro", 0.5, 400)])
    (tmp_path / "run_grid_t2_seed0_opro.jsonl").write_text('{"task": "t2", "meth')  # a killed process's half line
    cells = grid.plan_cells(["t1", "t2"], [0, 1], ["demos", "opro", "bfsrs"], tmp_path)
    assert [str(c) for c in cells] == [
        "t1 seed 0 bfsrs", "t1 seed 0 demos", "t2 seed 0 bfsrs", "t2 seed 0 demos", "t2 seed 0 opro",
        "t1 seed 1 bfsrs", "t1 seed 1 demos", "t1 seed 1 opro", "t2 seed 1 bfsrs", "t2 seed 1 demos", "t2 seed 1 opro"]
    demos = grid.command_for(grid.Cell("t1", 0, "demos"), tmp_path)
    assert demos[demos.index("--budget-from") + 1] == f"{tmp_path}/run_grid_t1_seed0_bfsrs.jsonl:bfsrs"
    joint = grid.command_for(grid.Cell("t1", 0, "joint"), tmp_path, ["--prompt-lm", "embedded-1.5b"])
    assert joint[-6:] == ["--budget", "220", "--prompt-budget", "13", "--prompt-lm", "embedded-1.5b"]


def test_the_grid_runs_at_most_its_lanes_at_once_and_a_cell_waits_for_its_reference(tmp_path):
    grid = load("run_grid")
    log = tmp_path / "events.txt"

    def command(cell):  # a stand-in for bench_optimizers.py: note start and end, write the row (BFSRS t2 fails)
        fails = cell.method == "bfsrs" and cell.task == "t2"
        code = (f"import json, os, time, pathlib\n"
                f"open({str(log)!r}, 'a').write('start {cell}\\n'); time.sleep(0.3)\n"
                f"open({str(log)!r}, 'a').write('end {cell}\\n')\n"
                + ("raise SystemExit(3)\n" if fails else
                   f"pathlib.Path({str(cell.out(tmp_path))!r}).write_text(json.dumps("
                   f"{{'task': {cell.task!r}, 'method': {cell.method!r}, 'task_calls': 10, "
                   f"'side': os.environ['DSPY_ICL_OPT_BENCH_SIDE_BY_SIDE']}}) + '\\n')\n"))
        return [sys.executable, "-c", code]

    cells = grid.plan_cells(["t1", "t2"], [0], ["opro", "demos", "bfsrs"], tmp_path)
    codes = grid.run_cells(cells, tmp_path, lanes=2, command=command, poll_s=0.05, say=lambda text: None)
    busy, most = 0, 0
    events = log.read_text().splitlines()
    for event in events:
        busy += 1 if event.startswith("start") else -1
        most = max(most, busy)
    assert most == 2
    assert events.index("start t1 seed 0 demos") > events.index("end t1 seed 0 bfsrs")  # waited for its reference
    assert codes[grid.Cell("t2", 0, "bfsrs")] == 3 and codes[grid.Cell("t2", 0, "demos")] is None  # skipped
    assert "start t2 seed 0 demos" not in events
    assert json.loads(grid.Cell("t1", 0, "opro").out(tmp_path).read_text())["side"] == "2"  # rows say it ran beside 1
    assert grid.plan_cells(["t1", "t2"], [0], ["opro", "demos", "bfsrs"], tmp_path) == [
        grid.Cell("t2", 0, "bfsrs"), grid.Cell("t2", 0, "demos")]  # a re-run starts only what has no row


def test_rows_of_different_machines_never_pair(tmp_path):
    # The program as given scored 0.37 on one machine's llama.cpp build and 0.34 on another's: a method run on the
    # second paired with the first's as-given row would read 0.03 of machine as the method's effect.
    summarize = load("summarize_runs")
    path = write(tmp_path / "run_seed0.jsonl", [
        row("t1", "uncompiled", 0.37, 0, seed=0),  # before rows named their machine
        row("t1", "uncompiled", 0.34, 0, seed=0, machine="bbbb"),
        row("t1", "ape", 0.34, 400, seed=0, machine="bbbb"),
        row("t1", "opro", 0.37, 400, seed=0)])
    cells = summarize.read_cells([path])
    assert summarize.paired(cells, "ape", "uncompiled")["mean"] == 0.0  # its own machine's program as given
    assert summarize.paired(cells, "opro", "uncompiled")["mean"] == 0.0  # old rows pair with old rows
    assert summarize.paired(cells, "ape", "opro") is None
    assert "| uncompiled | 0@? 0/bbbb@? |" in summarize.coverage_table(cells)  # split/machine@commit
    # rows that name no machine can be declared rows of one (when their as-given rows reproduce there)
    legacy = summarize.read_cells([path], legacy_machine="bbbb")
    assert summarize.paired(legacy, "opro", "ape")["mean"] == pytest.approx(0.03)
    assert legacy[("uncompiled", "0/bbbb", "t1")]["test_accuracy"] == 0.34  # a cell run twice: the later file row


def test_untagged_rows_up_to_a_commit_are_another_builds(tmp_path):
    # untagged rows of the early sessions reproduce another build's as-given figures: with --legacy-until they
    # pair only with each other, while later untagged rows still join the tagged build's
    summarize = load("summarize_runs")
    path = write(tmp_path / "run_seed0.jsonl", [
        row("t1", "uncompiled", 0.31, 0, seed=0, commit="early"),
        row("t1", "apo", 0.31, 400, seed=0, commit="early"),  # kept the start: 0.31 is that build's as given
        row("t1", "uncompiled", 0.28, 0, seed=0, commit="late", machine="bbbb"),
        row("t1", "opro", 0.38, 400, seed=0, commit="late")])
    order = ["early", "late"]
    is_ancestor = lambda old, new: order.index(old) <= order.index(new)  # noqa: E731
    before = summarize.read_cells([path], is_ancestor=is_ancestor, legacy_machine="bbbb")
    assert summarize.paired(before, "apo", "uncompiled")["mean"] == pytest.approx(0.03)  # a build read as a gain
    cells = summarize.read_cells([path], is_ancestor=is_ancestor, legacy_machine="bbbb", legacy_until="early")
    assert summarize.paired(cells, "apo", "uncompiled")["mean"] == 0.0
    assert summarize.paired(cells, "opro", "uncompiled")["mean"] == pytest.approx(0.10)
    assert ("apo", f"0/{summarize.EARLY_LEGACY}", "t1") in cells and ("opro", "0/bbbb", "t1") in cells


def test_one_machine_s_rows_can_be_read_alone(tmp_path):
    # a comparison whose cells mix builds (one split per build here) is read on one build with --machine
    summarize = load("summarize_runs")
    paths = [write(tmp_path / "run_seed0.jsonl", [
        row("t1", "uncompiled", 0.31, 0, seed=0, commit="early"),
        row("t1", "demos", 0.41, 200, seed=0, commit="early"),
        row("t1", "uncompiled", 0.28, 0, seed=0, commit="late", machine="bbbb"),
        row("t1", "demos", 0.30, 200, seed=0, commit="late", machine="bbbb")]),
        write(tmp_path / "run_seed1.jsonl", [
            row("t1", "uncompiled", 0.50, 0, seed=1, commit="late"),  # untagged, after "early": bbbb's
            row("t1", "demos", 0.54, 200, seed=1, commit="late", machine="bbbb")])]
    order = ["early", "late"]
    is_ancestor = lambda old, new: order.index(old) <= order.index(new)  # noqa: E731
    both = summarize.read_cells(paths, is_ancestor=is_ancestor, legacy_machine="bbbb", legacy_until="early")
    assert summarize.paired(both, "demos", "uncompiled")["mean"] == pytest.approx((0.10 + 0.02 + 0.04) / 3)
    one = summarize.read_cells(paths, is_ancestor=is_ancestor, legacy_machine="bbbb", legacy_until="early",
                               machine="bbbb")
    assert summarize.paired(one, "demos", "uncompiled")["mean"] == pytest.approx(0.03)
    assert {seed for _, seed, _ in one} == {"0/bbbb", "1/bbbb"}
    points = summarize.curve_points(paths, is_ancestor=is_ancestor, legacy_machine="bbbb", legacy_until="early",
                                    machine="bbbb")
    assert [p["cells"] for p in points["demos"]] == [2]


def test_an_unknown_commit_is_refused_not_read_as_no_rows(tmp_path):
    summarize = load("summarize_runs")
    path = write(tmp_path / "run_seed0.jsonl", [row("t1", "uncompiled", 0.3, 0)])
    for option in ("--since", "--legacy-until"):
        with pytest.raises(SystemExit, match=f"{option} 0000000: no such commit"):
            summarize.main([path, option, "0000000"])


def test_a_legacy_until_with_a_method_or_an_unknown_machine_tag_is_refused(tmp_path, capsys):
    # --legacy-until sets every method's early rows apart: a METHOD=COMMIT value would pass the commit check and
    # then set nothing apart; a --machine tag no row has would print empty tables as if nothing ran
    summarize = load("summarize_runs")
    path = write(tmp_path / "run_seed0.jsonl", [row("t1", "uncompiled", 0.3, 0, seed=0, machine="bbbb")])
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()
    with pytest.raises(SystemExit):
        summarize.main([path, "--legacy-until", f"apo={head}"])
    assert f"--legacy-until apo={head}: takes a bare COMMIT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        summarize.main([path, "--machine", "cccc"])
    err = capsys.readouterr().err
    assert "--machine cccc: no row of these files has that machine tag" in err and "are: bbbb." in err
    assert summarize.main([path, "--machine", "bbbb"]) == 0
    assert "| uncompiled | 1 |" in capsys.readouterr().out


def test_a_row_names_the_machine_whose_kernels_ran_the_model():
    bench = load("bench_optimizers")
    first, again = bench.machine_fingerprint(), bench.machine_fingerprint()
    assert first == again and len(first["machine"]) == 8
    assert {"llama_cpp", "platform", "cpu"} <= set(first["machine_info"])
    assert bench.SIDE_BY_SIDE_ENV == load("run_grid").SIDE_BY_SIDE_ENV  # the name run_grid sets is the one read


def test_the_grid_knows_the_rows_of_another_proposer_and_retries_a_skipped_method(tmp_path):
    grid = load("run_grid")
    extra = ["--prompt-lm", "embedded-1.5b"]
    suffix = grid.method_suffix(extra)
    assert suffix == "@embedded-1.5b" and grid.method_suffix(["--prompt-lm", "embedded"]) == ""
    write(tmp_path / "run_grid_t1_seed0_opro.jsonl", [row("t1", "opro@embedded-1.5b", 0.5, 400)])
    write(tmp_path / "run_grid_t1_seed0_apo.jsonl", [{"task": "t1", "method": "apo", "skipped": "not available"}])
    assert grid.plan_cells(["t1"], [0], ["opro"], tmp_path, suffix) == []  # bench named the row with the proposer
    assert grid.plan_cells(["t1"], [0], ["opro"], tmp_path) == [grid.Cell("t1", 0, "opro")]
    assert grid.plan_cells(["t1"], [0], ["apo"], tmp_path) == [grid.Cell("t1", 0, "apo")]  # skipped: run again
    demos = grid.command_for(grid.Cell("t1", 0, "demos"), tmp_path, extra)
    assert demos[demos.index("--budget-from") + 1].endswith("run_grid_t1_seed0_bfsrs.jsonl:bfsrs@embedded-1.5b")


def test_a_half_written_row_neither_stops_the_benchmark_nor_swallows_the_next_row(tmp_path):
    bench = load("bench_optimizers")
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row("t1", "opro", 0.5, 400)) + "\n" + '{"task": "t1", "meth')  # killed mid-write
    path.open("a").write("")
    assert set(bench._read_rows(str(path))) == {("t1", "opro")}
    bench._append_row(str(path), row("t1", "apo", 0.4, 400))
    assert set(bench._read_rows(str(path))) == {("t1", "opro"), ("t1", "apo")}
    write(tmp_path / "skipped.jsonl", [{"task": "t1", "method": "soft", "skipped": "no torch"}])
    assert bench._read_rows(str(tmp_path / "skipped.jsonl")) == {}  # a skipped method is run again


def test_overshoot_takes_each_validated_candidates_last_search_score_minus_its_validation_mean(tmp_path):
    summarize = load("summarize_runs")
    choice = [{"candidate": 0, "origin": "seed", "search": {"search": 0.50, "bandit_round1": 0.0}, "val": 0.40},
              {"candidate": 3, "origin": "edit", "search": {"bandit_round1": 0.5, "minibatch_round2": 0.70,
                                                            "bandit_round2": 0.9}, "val": 0.45},
              {"candidate": 5, "origin": "paraphrase", "search": {"bandit_round2": 0.60}, "val": 0.50},
              {"candidate": 6, "origin": "edit", "search": {}, "val": 0.2}]  # never scored by the search: left out
    path = write(tmp_path / "run_seed0.jsonl", [
        row("t1", "uncompiled", 0.40, 0), row("t1", "apo", 0.5, 400, kept_start=False, final_choice=choice),
        row("t2", "apo", 0.5, 400, kept_start=True, final_choice=[{"candidate": 0, "origin": "seed",
                                                                   "search": {"search": 0.34}, "val": 0.40}])])
    table = summarize.overshoot_table(summarize.read_cells([path]))
    # the last whole-search-set score, not a bandit's mean over a few pulls; a bandit mean only where it is all
    # there is. start: (0.50 - 0.40, 0.34 - 0.40) -> +0.020; finalists: (0.70 - 0.45, 0.60 - 0.50) -> +0.175
    assert "| apo | 2, +0.020 | 2, +0.175 | +0.155 |" in table
    assert "uncompiled" not in table


def test_search_health_pools_steps_caps_start_kept_gain_and_usable_answers_per_meta_prompt(tmp_path, capsys):
    summarize = load("summarize_runs")
    path = write(tmp_path / "run_seed0.jsonl", [
        row("t1", "uncompiled", 0.40, 0), row("t2", "uncompiled", 0.50, 0),
        row("t1", "opro", 0.50, 400, steps=6, planned_steps=5, budget=400, prompt_calls=30, prompt_budget=40,
            kept_start=False, meta_prompts={"ProposeInstruction": {"answers": 10, "usable": 8, "unusable": 2}},
            rejected_proposals={"a bare answer, not an instruction": 2}, admitted_proposals={"a question": 1}),
        row("t2", "opro", 0.50, 300, steps=2, planned_steps=5, budget=400, prompt_calls=40, prompt_budget=40,
            kept_start=True, meta_prompts={"ProposeInstruction": {"answers": 6, "usable": 6, "unusable": 0}},
            rejected_proposals={"a bare answer, not an instruction": 1, "copies the meta-prompt": 3})])
    table = summarize.search_health_table(summarize.read_cells([path]))
    # steps (6 + 2) / 2 = 4.0, fewest 2, plan 5; task calls (400 + 300) / 2 / 400 = 88%; prompt (30 + 40) / 80 = 88%
    assert "| opro | 2 | 4.0, 2 (5.0) | 88% | 88% | 1/2 | +0.050 (1, 1, 0) |" in table
    assert "| opro | ProposeInstruction | 16 | 14 | 88% |" in table  # answers pooled over cells, not averaged
    # reasons pooled over cells, the most frequent first, ties by name
    assert "| opro | 6 (a bare answer, not an instruction: 3; copies the meta-prompt: 3) | 1 (a question: 1) |" in table
    assert "uncompiled" not in table  # no search, no row
    assert summarize.main([path, "--search-health", "--methods", "opro"]) == 0
    out = capsys.readouterr().out  # --methods leaves the program as given out of the tables, not out of the gain
    assert "| opro | ProposeInstruction | 16 | 14 | 88% |" in out and "| 1/2 | +0.050 (1, 1, 0) |" in out
