"""How APE's and Iterative-APE's schedules choose, in a simulated world where each instruction's accuracy is known.

Rows of the real benchmark take 20 minutes each and differ by a few examples, so whether Iterative-APE's split of
the budget (fewer forward generations, bandits spread over iterations, variations of the leaders) can beat APE's
single large pool at 400 task + 40 prompt calls is not something a handful of real cells can settle. This script
runs the real optimizers (their plans, bandits, top-up and final choice) against simulated models:

- the prompt model: each demonstration subset has a latent pool of ``--pool`` distinct instructions, and each
  forward generation draws one of them at random (so duplicates appear as the 0.5B model's do: 8 draws per subset
  give about 28 distinct of 40, 4 draws about 17 of 20, as measured on hyperbaton); each instruction's accuracy is
  drawn once, ``N(--gen-mean, --gen-sd)``; a variation of an instruction has its parent's accuracy plus
  ``N(--var-shift, --var-sd)``;
  with probability ``--var-garbage`` a variation is instead unrelated to its parent: a text that loses the task
  (accuracy ``--garbage``), or with ``--garbage -1`` one as good as a new forward generation;
- the task model: it answers an example correctly with the instruction's accuracy, examples differing in
  difficulty for every instruction alike (``--rho``: the share of an outcome's variance that is the example's),
  so paired comparisons are as correlated as real ones.

Each world (seed) is shared by the configurations compared, so differences are paired; the figure of merit is the
true accuracy of the instruction each run returns (its expected test accuracy, free of test-set noise).

    python examples/benchmarks/sim_ape_schedules.py --worlds 40
"""

from __future__ import annotations

import argparse
import hashlib
import math
import statistics
import sys
from typing import Any

import dspy

from dspy_icl_opt.optimizers.ape import APE
from dspy_icl_opt.testing import format_chat_reply, parse_field_blocks, scripted_lm, simulated_task_lm
from dspy_icl_opt.testing.chat import last_user_text, system_text

START = "Answer the question."
GARBAGE_ACCURACY = 0.3  # a text that loses the task (--garbage), or an instruction the world never wrote


def _unit(*parts: Any) -> float:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2**64


def _normal(*parts: Any) -> float:
    u1, u2 = _unit(*parts, "a"), _unit(*parts, "b")
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


class World:
    """The hidden accuracies of one seed's instructions, and the models that follow them."""

    def __init__(self, seed: int, args: argparse.Namespace) -> None:
        self.seed, self.args = seed, args
        self.accuracy: dict[str, float] = {START: args.start}
        self.asked: dict[str, int] = {}

    def clip(self, value: float) -> float:
        return min(0.98, max(0.02, value))

    def generated(self, request_text: str) -> str:
        """The next forward generation for this demonstration subset: one of its latent instructions."""
        subset = hashlib.sha256(request_text.encode()).hexdigest()[:8]
        k = self.asked[subset] = self.asked.get(subset, 0) + 1
        pick = int(_unit(self.seed, "pick", subset, k) * self.args.pool)
        text = f"Solve it by method {subset}-{pick}."
        self.accuracy.setdefault(text, self.clip(self.args.gen_mean + self.args.gen_sd * _normal(self.seed, text)))
        return text

    def varied(self, parent: str) -> str:
        k = self.asked[parent] = self.asked.get(parent, 0) + 1
        text = f"{parent.rstrip('.')} (version {k})."
        base = self.true_accuracy(parent)  # the format candidate's too (the start with a format sentence)
        if _unit(self.seed, "garbage", text) < self.args.var_garbage:  # not a variation of its parent
            unrelated = self.args.gen_mean + self.args.gen_sd * _normal(self.seed, "unrelated", text)
            self.accuracy.setdefault(text, self.clip(unrelated) if self.args.garbage < 0 else self.args.garbage)
        shift = self.args.var_shift + self.args.var_sd * _normal(self.seed, "vary", text)
        self.accuracy.setdefault(text, self.clip(base + shift))
        return text

    def true_accuracy(self, instruction: str) -> float:
        if instruction in self.accuracy:
            return self.accuracy[instruction]
        if instruction.startswith(START):  # the format candidate: the start with an answer-format sentence
            return self.clip(self.args.start + self.args.format_gain)
        return GARBAGE_ACCURACY

    def prompt_lm(self) -> dspy.LM:
        def respond(request: Any) -> str:
            if "Write one variation" in system_text(request):
                parent = parse_field_blocks(last_user_text(request))["instruction"].strip()
                return format_chat_reply({"variation": self.varied(parent)})
            return format_chat_reply({"instruction": self.generated(last_user_text(request))})

        return scripted_lm(respond)

    def task_lm(self) -> dspy.LM:
        rho = self.args.rho

        def knows(view: Any) -> bool:
            question = view.inputs.get("question", "")
            z = math.sqrt(rho) * _normal(self.seed, "example", question) + math.sqrt(1 - rho) * _normal(
                self.seed, "pair", view.instruction.strip(), question)
            return _phi(z) < self.true_accuracy(view.instruction.strip())

        return simulated_task_lm(solve=lambda inputs: "right", knows=knows, wrong=lambda inputs: "wrong")


def _data(seed: int, n: int) -> list[dspy.Example]:
    return [dspy.Example(question=f"q{seed}-{i}", answer="right").with_inputs("question") for i in range(n)]


def _metric(example: dspy.Example, prediction: Any, trace: Any = None) -> float:
    return float(str(getattr(prediction, "answer", "")).strip() == example.answer)


def run_one(world_seed: int, config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    world = World(world_seed, args)
    data = _data(world_seed, args.train + args.val)
    student = dspy.Predict(dspy.Signature("question -> answer", START))
    optimizer = APE(_metric, task_model=world.task_lm(), prompt_model=world.prompt_lm(), seed=world_seed,
                    budget={"max_task_calls": args.task_calls, "max_prompt_calls": args.prompt_calls},
                    check_proposals=False, progress=False, **config)
    compiled = optimizer.compile(student, trainset=data[: args.train], valset=data[args.train:])
    instruction = compiled.predictors()[0].signature.instructions.strip()
    report = optimizer.report_
    searched = [(r.origin, r.scores["search"]) for r in report.candidates if "search" in r.scores]
    generated = sorted((score for origin, score in searched if origin == "generation"), reverse=True)
    varied = [score for origin, score in searched if origin == "variation"]
    # what the benchmark rows can show of the variations: their mean search score less that of the 5 best
    # generations (parents are among those, their scores inflated by being picked on few examples)
    gap = statistics.mean(varied) - statistics.mean(generated[:5]) if varied and generated else None
    return {"variation_gap": gap, "accuracy": world.true_accuracy(instruction), "kept_start": instruction == START,
            "best_written": max(v for k, v in world.accuracy.items() if k != START),
            "candidates": len(world.accuracy) - 1}


def _mean_or_dash(values: list[float]) -> str:
    return f"{statistics.mean(values):+.3f}" if values else "-"


CONFIGS = {
    "ape": {"iterations": 1},
    "iterative_ape": {"iterations": 3},
    "iterative_ape_2": {"iterations": 2},
    "iterative_ape_share_75": {"iterations": 3, "generation_share": 0.75},
    "iterative_ape_2_share_75": {"iterations": 2, "generation_share": 0.75},
    "ape_10_subsets": {"iterations": 1, "num_subsamples": 10},
    "iterative_ape_10_subsets": {"iterations": 3, "num_subsamples": 10},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, default=30)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--task-calls", type=int, default=400)
    parser.add_argument("--prompt-calls", type=int, default=40)
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--val", type=int, default=40)
    parser.add_argument("--pool", type=int, default=10, help="latent distinct instructions per demonstration subset")
    parser.add_argument("--start", type=float, default=0.55)
    parser.add_argument("--format-gain", type=float, default=0.1)
    parser.add_argument("--gen-mean", type=float, default=0.6)
    parser.add_argument("--gen-sd", type=float, default=0.1)
    parser.add_argument("--var-shift", type=float, default=-0.03)
    parser.add_argument("--var-sd", type=float, default=0.08)
    parser.add_argument("--var-garbage", type=float, default=0.0,
                        help="share of variations that lose the task (the 0.5B model's texts about one example)")
    parser.add_argument("--garbage", type=float, default=GARBAGE_ACCURACY,
                        help="accuracy of such a text; below 0: drawn as a forward generation's (a new instruction "
                             "unrelated to its parent)")
    parser.add_argument("--rho", type=float, default=0.5)
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("dspy_icl_opt").setLevel(logging.WARNING)
    names = args.configs.split(",")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for w in range(args.worlds):
        for name in names:
            results[name].append(run_one(w, CONFIGS[name], args))
    base = results[names[0]]
    print(f"world: {vars(args)}")
    print(f"| config | mean true accuracy | vs {names[0]} (s.e.) | best written | start kept | mean candidates "
          f"| variations' search mean less the top 5 generations' |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        rows = results[name]
        diffs = [r["accuracy"] - b["accuracy"] for r, b in zip(rows, base)]
        gaps = [r["variation_gap"] for r in rows if r["variation_gap"] is not None]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        print(f"| {name} | {statistics.mean(r['accuracy'] for r in rows):.3f} | {statistics.mean(diffs):+.3f} "
              f"({se:.3f}) | {statistics.mean(r['best_written'] for r in rows):.3f} | "
              f"{sum(r['kept_start'] for r in rows)}/{len(rows)} | "
              f"{statistics.mean(r['candidates'] for r in rows):.1f} | {_mean_or_dash(gaps)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
