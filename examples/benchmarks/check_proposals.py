"""Which of a benchmark row's proposals pass the shared proposal check (no LM call).

Reads the program states a row's search scored (``candidate_states``, written by ``bench_optimizers.py``)
and runs :class:`dspy_icl_opt.search.proposals.ProposalChecker` on each instruction, against the row's
training examples and the meta-prompts of the strategy's module, as the strategies now do before a
proposal costs task calls. Rows written before the check existed show what it would have turned down. A
copied example, a question or a text about one example is named with "(scored unless check_proposals='strict')":
the strategies score those by default.

Run:
    python examples/benchmarks/check_proposals.py --rows examples/benchmarks/results/run_k_date_understanding_seed0.jsonl \
        --task date_understanding --method apo --seed 0
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections import Counter
from pathlib import Path

import dspy
from dspy_icl_opt.programs import load_task, make_program

from dspy_icl_opt.search.proposals import LENIENT_PROBLEMS, ProposalChecker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from instruction_ceiling import find_row  # noqa: E402

#: The meta-prompt module of each strategy a row can name (its signatures' wording is checked for echoes).
META_MODULES = {"opro": "opro_prompts", "apo": "apo_prompts", "promptagent": "promptagent_prompts",
                "ape": "ape_prompts", "iterative_ape": "ape_prompts", "joint": "joint_prompts", "abo": "abo_prompts"}


def meta_texts(method: str) -> list[str]:
    """The instructions and field descriptions of every meta-prompt signature of the strategy behind ``method``
    (``opro+soft/OPRO``: OPRO): the wording the copy check compares proposals with, as the strategies' check does."""
    from dspy_icl_opt.search.base import meta_prompt_texts

    step = method.partition("/")[2] or method.partition("+")[0]
    name = META_MODULES.get(step.lower().partition("@")[0])
    if name is None:
        return []
    module = importlib.import_module(f"dspy_icl_opt.optimizers.{name}")
    return [text for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, dspy.Signature) and obj is not dspy.Signature
            for text in meta_prompt_texts(obj, fields=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", required=True, help="a bench_optimizers.py --out file")
    parser.add_argument("--task", required=True)
    parser.add_argument("--method", required=True, help="the row's method, or CHAIN/OPTIMIZER for a chain's step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--program", default="qa", help="the bundled program the row compiled (its field names)")
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--val", type=int, default=40)
    parser.add_argument("--test", type=int, default=100)
    args = parser.parse_args(argv)
    row = find_row(args.rows, args.task, args.method, args.seed)
    task = load_task(args.task, seed=args.seed, train_size=args.train, val_size=args.val, test_size=args.test)
    checker = ProposalChecker.for_program(make_program(args.program, task), task.train)
    copied_from = meta_texts(args.method)
    verdicts: Counter[str] = Counter()
    print("| candidate | origin | verdict | instruction |\n|---|---|---|---|")
    for candidate in row["candidate_states"]:
        if candidate["origin"] in ("seed", "format", "wording"):
            continue  # the program as given and the deterministic format and wording candidates are not proposals
        for name, state in candidate["state"].items():
            text = state["instruction"]
            verdict = checker.problem(text, meta_texts=copied_from) or "an instruction"
            if verdict in LENIENT_PROBLEMS:
                verdict += " (scored unless check_proposals='strict')"
            verdicts[verdict] += 1
            shown = " ".join(text.split())[:90].replace("|", "/")
            print(f"| {candidate['id']} | {candidate['origin']} | {verdict} | {shown} |")
    total = sum(verdicts.values())
    print(f"\n{total} proposals: " + ", ".join(f"{k} {n}" for k, n in verdicts.most_common()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
