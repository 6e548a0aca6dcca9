"""Which step of an instruction search fails: the proposals, or the choice among them?

A search that returns the program as given can fail in two ways: its proposals are no better than
the start (the proposer's ceiling is low), or some are better and the search could not tell which
(selection). This script takes the program states one benchmark row's search scored (its
``candidate_states``, written by ``bench_optimizers.py``), scores each on the same held-out test
examples as the row, and prints:

- every candidate's test accuracy and its paired difference to the start (same examples) with the
  standard error, beside the scores the search saw (search set, validation);
- **the search's pick**: the test gain of the candidate the search ranked first;
- **a selection-free estimate of the best proposal**: the candidate best on one half of the test
  examples, scored on the other half (both ways round, averaged); the best-on-all-examples figure is
  printed too, but it is biased upwards by the choice;
- **the spread of true quality**: the variance of the candidates' paired differences to the start
  minus their mean sampling variance, as a standard deviation in accuracy points (0 when the
  observed spread is no larger than the noise).

If the split-half best is level with the start, no selection rule could have gained on these
proposals: the proposals are the failing step. If it is clearly above and the search's pick is not,
selection is.

``--instructions FILE`` (a JSON list of strings) adds instructions written by hand, scored the same way
and reported apart: if careful hand-written instructions do not beat the start either, the task model
does not respond to instruction wording on this task, and no proposer or selection rule can gain there.
With ``--format-candidate`` the grounding's format candidate as the current code builds it is added too.

With ``--finalists`` only the start and the contenders the row's final choice validated are scored: what
another choice rule would have returned, on test (the final choice's threshold was set from these figures).

Without ``--rows``, the program as given is the start and only the hand-written and format candidates
are scored (any bundled task, no benchmark row needed).

Run (one task-model process; the row must come from the same ``--train/--val/--test`` sizes):
    python examples/benchmarks/instruction_ceiling.py --rows examples/benchmarks/results/run_k_date_understanding_seed0.jsonl \
        --task date_understanding --method opro+soft/OPRO --seed 0 --out ceiling.jsonl

``--method`` names a row (``opro``) or a chain's earlier step (``opro+soft/OPRO``). Each candidate's
scores are appended to ``--out`` as they finish; a re-run skips the candidates already there.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import dspy
from dspy_icl_opt.demos.dynamic import with_dynamic_demos
from dspy_icl_opt.programs import load_task, make_program

from dspy_icl_opt.lm import resolve_lm
from dspy_icl_opt.search.base import paired_gain
from dspy_icl_opt.search.grounding import format_instruction, output_spaces
from dspy_icl_opt.search.placement import PlacementAdapter
from dspy_icl_opt.search.surgery import ProgramState, apply_state, read_state


def find_row(path: str, task: str, method: str, seed: int) -> dict[str, Any]:
    """The row (or a chain's earlier step, ``CHAIN/OPTIMIZER``) whose candidates are to be scored."""
    chain, _, step = method.partition("/")
    for line in Path(path).read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if row.get("task") != task or row.get("method") != chain or int(row.get("seed", -1)) != seed:
            continue
        if not step:
            found = row
        else:
            found = next((s for s in row.get("stages", []) if s.get("optimizer") == step), None)
            if found is None:
                raise SystemExit(f"--method {method}: the {chain!r} row has no {step!r} step; it has "
                                 f"{[s.get('optimizer') for s in row.get('stages', [])]}.")
        if "candidate_states" not in found:
            raise SystemExit(f"--method {method}: its row records no candidate_states (rows written before the "
                             "benchmark kept them); run bench_optimizers.py again for this cell.")
        return found
    raise SystemExit(f"--rows {path}: no row for task {task!r}, method {chain!r}, seed {seed}.")


def score_candidate(program: dspy.Module, state: dict, examples: list[dspy.Example], metric: Any,
                    lm: dspy.BaseLM) -> list[float]:
    """The per-example scores of ``program`` carrying ``state`` (its instruction positions applied). Its predictors
    are the dynamic ones, as the CLI and the runner load a saved program: a kNN state (the joint search's and
    DemoSelector's) shows k demos of its pool a call as the search did, and fixed demos are shown as they are."""
    candidate = apply_state(with_dynamic_demos(program), ProgramState.from_dict(state))
    evaluator = dspy.Evaluate(devset=examples, metric=metric, num_threads=1, display_progress=False,
                              failure_score=0.0, max_errors=len(examples) + 1)
    with dspy.context(lm=lm, adapter=PlacementAdapter()):
        result = evaluator(candidate)
    return [float(score) for _, _, score in result.results]


def analyse(start: list[float], others: dict[int, list[float]], search_rank: list[int]) -> dict[str, Any]:
    """The figures the module docstring lists, from per-example scores (the start's and each other candidate's)."""
    n = len(start)
    gains = {cid: paired_gain(scores, start) for cid, scores in others.items()}
    out: dict[str, Any] = {"examples": n, "candidates": len(others)}
    if not others:
        return out
    pick = next((cid for cid in search_rank if cid in others), None)
    out["search_pick"] = None if pick is None else {"candidate": pick, "gain": gains[pick][0], "se": gains[pick][1]}
    best_all = max(others, key=lambda cid: (gains[cid][0], -cid))
    out["best_on_all"] = {"candidate": best_all, "gain": gains[best_all][0], "se": gains[best_all][1]}
    halves = [list(range(n // 2)), list(range(n // 2, n))]
    split = []
    for choose, judge in (halves, halves[::-1]):
        chosen = max(others, key=lambda cid: (sum(others[cid][i] - start[i] for i in choose), -cid))
        split.append(sum(others[chosen][i] - start[i] for i in judge) / len(judge))
    out["split_half_best_gain"] = sum(split) / 2
    diffs = [g for g, _ in gains.values()]
    if len(diffs) > 1:
        mean = sum(diffs) / len(diffs)
        observed = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
        noise = sum(se ** 2 for _, se in gains.values()) / len(gains)
        out["true_spread_sd"] = math.sqrt(max(0.0, observed - noise))
        out["observed_spread_sd"] = math.sqrt(observed)
    out["above_start"] = sum(g > 0 for g in diffs)
    out["below_start"] = sum(g < 0 for g in diffs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=None,
                        help="a bench_optimizers.py --out file; without it only the program as given and the "
                             "--instructions / --format-candidate candidates are scored")
    parser.add_argument("--task", required=True)
    parser.add_argument("--method", default="program",
                        help="the row's method, or CHAIN/OPTIMIZER for a chain's step (needed with --rows)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--program", default="qa")
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--val", type=int, default=40)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--lm", default="embedded")
    parser.add_argument("--max-candidates", type=int, default=None,
                        help="score only the start and this many others, the search's top-ranked first")
    parser.add_argument("--finalists", action="store_true",
                        help="score only the candidates the row's final choice validated (the start among them), "
                             "e.g. to see on test what a different choice rule would have returned")
    parser.add_argument("--candidates", default=None, metavar="ID,ID",
                        help="score only the start and these candidates (ids of the row's candidate_states), e.g. "
                             "the one finalist a lower threshold would have returned")
    parser.add_argument("--out", default=None, help="append each candidate's scores here; a re-run skips those done")
    parser.add_argument("--instructions", default=None,
                        help="a JSON file holding a list of hand-written instructions to score beside the search's")
    parser.add_argument("--format-candidate", action="store_true",
                        help="also score the format candidate the current grounding code builds")
    args = parser.parse_args(argv)
    task = load_task(args.task, seed=args.seed, train_size=args.train, val_size=args.val, test_size=args.test)
    program = make_program(args.program, task)
    found = find_row(args.rows, args.task, args.method, args.seed) if args.rows is not None else None
    if found is not None:
        states = found["candidate_states"]
    elif args.instructions or args.format_candidate:
        states = [{"id": 0, "step": 0, "origin": "seed", "scores": {}, "state": read_state(program).to_dict()}]
    else:
        raise SystemExit("Nothing to score: pass --rows (a row's candidates) or --instructions / --format-candidate.")
    start = next((c for c in states if c["origin"] == "seed" and c["step"] == 0), states[0])
    if args.finalists:
        if args.rows is None:
            raise SystemExit("--finalists needs --rows (the row whose final choice names them).")
        table = found.get("final_choice") or []
        if not table:
            raise SystemExit(f"--finalists: the row of {args.method} records no final_choice table.")
        # the table lists the start the choice compared with first (DemoSelector's is a trial, not a "seed")
        start = next((c for c in states if c["id"] == table[0]["candidate"]), start)
        validated = {entry["candidate"] for entry in table[1:]}
        states = [start, *(c for c in states if c["id"] in validated)]
    if args.candidates is not None:
        if found is None:
            raise SystemExit("--candidates needs --rows (ids of that row's candidates).")
        try:
            wanted = {int(part) for part in args.candidates.split(",") if part.strip()}
        except ValueError:
            raise SystemExit(f"--candidates must be candidate ids separated by commas (e.g. 7,12), but got "
                             f"{args.candidates!r}.") from None
        missing = wanted - {c["id"] for c in states}
        if missing:
            raise SystemExit(f"--candidates: no candidate {sorted(missing)} among those scored here "
                             f"({sorted(c['id'] for c in states)}).")
        states = [start, *(c for c in states if c["id"] in wanted and c["id"] != start["id"])]
    if args.max_candidates is not None:
        ranked = sorted((c for c in states if c["id"] != start["id"]), key=_search_key)[: args.max_candidates]
        states = [start, *sorted(ranked, key=lambda c: c["id"])]
    extra = _extra_candidates(args, start, program, task)
    states = [*states, *extra]
    done = _read_done(args.out, args)
    lm = None
    scores: dict[int, list[float]] = {}
    for candidate in states:
        earlier = done.get(candidate["id"])
        if earlier is not None and earlier.get("instruction") == candidate.get("instruction"):
            scores[candidate["id"]] = earlier["scores"]
            continue
        if lm is None:
            lm = resolve_lm(args.lm, temperature=0.0, max_tokens=256, cache=False)
        scores[candidate["id"]] = score_candidate(program, candidate["state"], task.test, task.metric, lm)
        record = {"task": args.task, "method": args.method, "seed": args.seed, "candidate": candidate["id"],
                  "origin": candidate["origin"], "scores": scores[candidate["id"]], "rows": _rows_name(args)}
        if "instruction" in candidate:  # written here: a changed text is scored again
            record["instruction"] = candidate["instruction"]
        _append(args.out, record)
        print(f"candidate {candidate['id']} ({candidate['origin']}): test "
              f"{sum(scores[candidate['id']]) / len(task.test):.3f}", file=sys.stderr)
    searched = [c for c in states if c not in extra]
    others = {c["id"]: scores[c["id"]] for c in searched if c["id"] != start["id"]}
    rank = [c["id"] for c in sorted(searched, key=_search_key)]
    print(render(searched, scores, start["id"], analyse(scores[start["id"]], others, rank)))
    if extra:
        print("\nwritten by hand or by the current grounding code (not the search's):")
        hand = {c["id"]: scores[c["id"]] for c in extra}
        print(render([start, *extra], scores, start["id"], analyse(scores[start["id"]], hand, [])))
        for c in extra:
            print(f"- {c['id']} ({c['origin']}): {c['instruction']!r}")
    return 0


#: Ids of candidates this script adds (kept apart from the search's, whose ids count from 0).
HAND_IDS = 1000


def _extra_candidates(args: argparse.Namespace, start: dict, program: dspy.Module, task: Any) -> list[dict]:
    """Candidates written by hand (``--instructions``) and the current format candidate (``--format-candidate``),
    each the start's state with its one predictor's instruction replaced."""
    texts: list[tuple[str, str]] = []
    if args.instructions:
        loaded = json.loads(Path(args.instructions).read_text())
        if not isinstance(loaded, list) or not all(isinstance(t, str) and t.strip() for t in loaded):
            raise SystemExit(f"--instructions {args.instructions}: expected a JSON list of non-empty strings.")
        texts += [("hand", t) for t in loaded]
    if args.format_candidate:
        predictor = program.predictors()[0]
        given = start["state"][next(iter(start["state"]))]["instruction"]
        text = format_instruction(given, output_spaces(predictor, task.train))
        if text is not None:
            texts.append(("format_now", text))
    if texts and len(start["state"]) != 1:
        raise SystemExit("--instructions / --format-candidate: the program must have one predictor; it has "
                         f"{sorted(start['state'])}.")
    out = []
    for i, (origin, text) in enumerate(texts):
        state = copy.deepcopy(start["state"])
        state[next(iter(state))]["instruction"] = text
        out.append({"id": HAND_IDS + i, "step": 0, "origin": origin, "scores": {}, "state": state,
                    "instruction": text})
    return out


def _search_key(candidate: dict) -> tuple[float, int]:
    """The search's ranking: best search-set score first, then the earliest."""
    return -candidate["scores"].get("train", -1.0), candidate["id"]


def render(states: list[dict], scores: dict[int, list[float]], start: int, figures: dict[str, Any]) -> str:
    lines = ["| candidate | origin | step | search | val | test | gain over start (s.e.) |", "|---|---|---|---|---|---|---|"]
    for c in states:
        mine = scores[c["id"]]
        gain, se = paired_gain(mine, scores[start])
        search = c["scores"].get("train")
        val = c["scores"].get("val")
        lines.append(f"| {c['id']} | {c['origin']} | {c['step']} | {'-' if search is None else f'{search:.3f}'} | "
                     f"{'-' if val is None else f'{val:.3f}'} | {sum(mine) / len(mine):.3f} | "
                     + ("start |" if c["id"] == start else f"{gain:+.3f} ({se:.3f}) |"))
    lines.append("")
    lines.append(f"on {figures['examples']} test examples, {figures['candidates']} candidates beside the start:")
    if figures.get("search_pick"):
        p = figures["search_pick"]
        lines.append(f"- the search's top-ranked candidate ({p['candidate']}): {p['gain']:+.3f} (s.e. {p['se']:.3f})")
    if figures.get("best_on_all"):
        b = figures["best_on_all"]
        lines.append(f"- best on all test examples ({b['candidate']}, biased upwards by the choice): "
                     f"{b['gain']:+.3f} (s.e. {b['se']:.3f})")
        lines.append(f"- best on one half, scored on the other (both ways, averaged): "
                     f"{figures['split_half_best_gain']:+.3f}")
        lines.append(f"- above the start: {figures['above_start']}, below: {figures['below_start']}")
    if "true_spread_sd" in figures:
        lines.append(f"- spread of the gains: observed s.d. {figures['observed_spread_sd']:.3f}, beyond sampling noise "
                     f"{figures['true_spread_sd']:.3f}")
    return "\n".join(lines)


def _read_done(path: str | None, args: argparse.Namespace) -> dict[int, dict]:
    """The records of candidates scored before, by id (the last one of an id wins)."""
    if not path or not Path(path).exists():
        return {}
    done = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            # records of another rows file (two rows of one cell share candidate ids) are not this row's; records
            # written before the file was recorded are read as before
            same_rows = r.get("rows") in (None, _rows_name(args))
            if (r["task"], r["method"], r["seed"]) == (args.task, args.method, args.seed) and same_rows:
                done[int(r["candidate"])] = r
    return done


def _rows_name(args: argparse.Namespace) -> str | None:
    """The rows file a record's candidate ids belong to (its name: results move between machines)."""
    return None if args.rows is None else Path(args.rows).name


def _append(path: str | None, record: dict) -> None:
    if path:
        with Path(path).open("a") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
