"""How many task-model calls each APO bandit saves against brute force, and whether it picks the same prompts.

Part 1 (synthetic, no LM): ``len(ARM_MEANS)`` = 16 candidate prompts (e.g. an APO beam of 4 with 3
children each), each right on an example with a fixed probability (its true accuracy: 0.30 .. 0.80,
one clear best at 0.80, near-ties below it). Per seed, every
(prompt, example) correctness over a pool of ``--items`` examples is drawn once (so pulling a pair
twice returns the same reward, as with the cached scorer) and the prompts' order is shuffled (ties
in the bandits' rankings go to the earlier arm). Each bandit keeps a beam of ``--beam`` = 4 (APO's
``beam_size``) at APO's reference budget (8 rounds x 8 prompts x 32 samples) and at smaller ones.
Columns, averaged over ``--seeds`` seeds (500: a rate's standard error is at most 2.2 points):

* evaluations: the (arm, example) evaluations the schedule counts (``planned_evaluations``);
* task calls: the distinct (arm, example) pairs it evaluated (what the cached scorer sends to the LM);
* saved: calls saved against brute force scoring every arm on the whole pool (16 x 200 = 3200 calls);
* top-1 = full BF / top-4 = full BF: the bandit's best arm (by its means) / its beam (as a set) is
  the one full brute force picks (ground truth on this pool: the arms' empirical means over it);
* top-1 = true best / best in top-4: the arm with the highest true accuracy is its best / in its beam;
* regret: true accuracy of the best arm minus that of the bandit's top-1.

``brute_force`` at a budget B is APO's ``evaluator="brute_force"``: every arm on the same B // 16
examples. The ``full`` row is brute force on the whole pool (its top-1 = true best rate is the
ceiling set by the pool's sampling noise).

Part 2 (end to end, simulated task model, seconds): APO runs once per evaluator on the planted
"count the vowels" toy task with a scripted prompt model whose edits name the rule in one of three
phrasings (task accuracy 0.80 / 0.88 / 0.90) or a decoy (0.40); paraphrases ("In other words: ...")
cost 0.03 each; the seed prompt is at 0.30. The simulated task model answers an example correctly
when a hash of (instruction, question) falls below the instruction's accuracy, so every prompt is
a fixed Bernoulli arm, as in part 1. Printed: the task-model calls of the run
(``report_.spent["task"].calls``: minibatches, bandit pulls and the final validation), the calls
saved against a run whose brute force scores every candidate on the whole trainset, the final
instruction, its accuracy under the simulated model, and whether it equals the final choice of
the ``brute_force`` run (same budget) and of the full brute-force run.

Everything is seeded (``--seed``); there is no unseeded randomness and no real LM.

Run (the figures in the APO issue come from this command; about 10 s on a busy 2-core machine):
    python examples/benchmarks/bench_bandits.py
Options:
    python examples/benchmarks/bench_bandits.py --seeds 1000 --items 200 --beam 4 \\
        --budgets 8x8x32,4x8x32,4x8x16,2x8x16 --seed 0
    python examples/benchmarks/bench_bandits.py --no-apo        # part 1 only
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loguru import logger

from dspy_icl_opt.optimizers.apo import APO
from dspy_icl_opt.search.bandits import BANDITS, BestArmIdentifier, BruteForce, SelectionResult, make_bandit
from dspy_icl_opt.testing import (
    format_chat_reply,
    last_user_text,
    parse_field_blocks,
    planted_rule_task,
    scripted_lm,
    system_text,
)
from dspy_icl_opt.testing.simulated import PromptView
from dspy_icl_opt.testing.toy import BASE_INSTRUCTION, QUESTION_FIELD

# ------------------------------------------------------------------------------------------ part 1
#: True accuracies of the 16 synthetic prompts: a clear best (0.80), near-ties just below it, a long tail.
ARM_MEANS = (0.80, 0.74, 0.73, 0.72, 0.70, 0.68, 0.66, 0.62, 0.60, 0.55, 0.52, 0.48, 0.45, 0.40, 0.35, 0.30)
DEFAULT_ITEMS = 200
DEFAULT_SEEDS = 500
DEFAULT_BEAM = 4
#: (eval_rounds, eval_prompts_per_round, samples_per_eval); the first is APO's reference budget.
DEFAULT_BUDGETS = "8x8x32,4x8x32,4x8x16,2x8x16"
FULL = "full"
PERCENT = 100.0


@dataclass(frozen=True)
class Arms:
    """One synthetic instance: per arm, its true accuracy and its fixed reward on every pool item."""

    means: tuple[float, ...]
    rewards: tuple[tuple[float, ...], ...]

    def pull(self, arm: int, items: list[int]) -> list[float]:
        return [self.rewards[arm][i] for i in items]

    @property
    def best(self) -> int:
        return max(range(len(self.means)), key=self.means.__getitem__)


@dataclass
class Tally:
    """Per-seed outcomes of one (budget, bandit) cell."""

    evaluations: list[int]
    calls: list[int]
    top1_bf: list[bool]
    beam_bf: list[bool]
    top1_best: list[bool]
    best_in_beam: list[bool]
    regret: list[float]


def make_arms(seed: int, n_items: int) -> Arms:
    rng = random.Random(f"{seed}/arms")  # str seeds are stable across processes; distinct from the bandit's
    means = list(ARM_MEANS)
    rng.shuffle(means)
    rewards = tuple(tuple(float(rng.random() < m) for _ in range(n_items)) for m in means)
    return Arms(tuple(means), rewards)


def run(bandit: BestArmIdentifier, arms: Arms, k: int, seed: int) -> SelectionResult:
    positions = list(range(len(arms.means)))
    return bandit.select(positions, k, arms.pull, len(arms.rewards[0]), random.Random(f"{seed}/bandit"))


def record(tally: Tally, result: SelectionResult, reference: SelectionResult, arms: Arms) -> None:
    top1, beam = result.chosen_indices[0], set(result.chosen_indices)
    tally.evaluations.append(result.evaluations)
    tally.calls.append(result.distinct_evaluations)
    tally.top1_bf.append(top1 == reference.chosen_indices[0])
    tally.beam_bf.append(beam == set(reference.chosen_indices))
    tally.top1_best.append(top1 == arms.best)
    tally.best_in_beam.append(arms.best in beam)
    tally.regret.append(arms.means[arms.best] - arms.means[top1])


def parse_budgets(text: str) -> list[tuple[int, int, int]]:
    budgets = []
    for part in text.split(","):
        rounds, prompts, samples = (int(x) for x in part.lower().split("x"))
        budgets.append((rounds, prompts, samples))
    return budgets


def contenders(budgets: list[tuple[int, int, int]]) -> dict[tuple[str, str], BestArmIdentifier]:
    """(budget label, bandit name) -> bandit, for every budget and every APO evaluator."""
    cells = {}
    for rounds, prompts, samples in budgets:
        label = f"{rounds}x{prompts}x{samples} = {rounds * prompts * samples}"
        for name in BANDITS:
            cells[(label, name)] = make_bandit(name, eval_rounds=rounds, eval_prompts_per_round=prompts,
                                               samples_per_eval=samples)
    return cells


def simulate(args: argparse.Namespace) -> dict[tuple[str, str], Tally]:
    full = BruteForce(len(ARM_MEANS) * args.items)
    cells = {(f"{len(ARM_MEANS)}x{args.items} = {full.budget}", FULL): full, **contenders(args.budgets)}
    tallies = {cell: Tally([], [], [], [], [], [], []) for cell in cells}
    for seed in range(args.seed, args.seed + args.seeds):
        arms = make_arms(seed, args.items)
        reference = run(full, arms, args.beam, seed)
        for cell, bandit in cells.items():
            record(tallies[cell], run(bandit, arms, args.beam, seed), reference, arms)
    return tallies


def rate(flags: Sequence[bool]) -> str:
    return f"{PERCENT * sum(flags) / len(flags):.1f}%"


def synthetic_table(tallies: dict[tuple[str, str], Tally], full_calls: int) -> list[str]:
    lines = ["| budget R x P x S = B | evaluator | evaluations | task calls | saved vs full BF | saved % "
             "| top-1 = full BF | top-4 = full BF | top-1 = true best | best in top-4 | regret |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (label, name), t in tallies.items():
        calls = statistics.fmean(t.calls)
        lines.append(f"| {label} | {name} | {statistics.fmean(t.evaluations):.0f} | {calls:.1f} "
                     f"| {full_calls - calls:.1f} | {PERCENT * (full_calls - calls) / full_calls:.1f}% "
                     f"| {rate(t.top1_bf)} | {rate(t.beam_bf)} | {rate(t.top1_best)} | {rate(t.best_in_beam)} "
                     f"| {statistics.fmean(t.regret):.4f} |")
    return lines


# ------------------------------------------------------------------------------------------ part 2
RULE = "count the vowels"
DECOY = "Answer the question carefully."
#: The prompt model's edits that name the rule, and every core phrasing's accuracy under the simulated task model.
RULE_EDITS = ("Count the vowels in the word.", "Count the vowels (a, e, i, o, u) and give only the number.",
              "Read the word and count the vowels; reply with that number.")
ACCURACY = {BASE_INSTRUCTION: 0.30, DECOY: 0.40, RULE_EDITS[0]: 0.80, RULE_EDITS[1]: 0.88, RULE_EDITS[2]: 0.90}
UNKNOWN_ACCURACY = 0.0
PARAPHRASE_PREFIX = "In other words: "
PARAPHRASE_PENALTY = 0.03
TRAIN_SIZE = 40
VAL_SIZE = 20
HASH_SCALE = 2 ** 64
HASH_BYTES = 8
HASH_SEPARATOR = "\x1f"
PREDICTOR = "self"
APO_SETTINGS = {"rounds": 2, "beam_size": 2, "minibatch_size": 8, "n_gradients": 2, "errors_per_gradient": 2,
                "gradients_per_error": 2, "mc_samples_per_step": 1, "max_expansion_factor": 4, "eval_rounds": 4,
                "eval_prompts_per_round": 4, "samples_per_eval": 8, "progress": False}
#: Most candidates one bandit call can rank: the beam and up to ``max_expansion_factor`` children per member.
MAX_POOL = APO_SETTINGS["beam_size"] * (1 + APO_SETTINGS["max_expansion_factor"])
#: Brute force on every candidate x the whole trainset (budget MAX_POOL x TRAIN_SIZE).
FULL_BF_SETTINGS = {"evaluator": "brute_force", "eval_rounds": 1, "eval_prompts_per_round": MAX_POOL,
                    "samples_per_eval": TRAIN_SIZE}


def accuracy(instruction: str) -> float:
    """The simulated task model's accuracy with this instruction."""
    core, paraphrases = instruction.strip(), 0
    while core.startswith(PARAPHRASE_PREFIX):
        core, paraphrases = core[len(PARAPHRASE_PREFIX):], paraphrases + 1
    return max(0.0, ACCURACY.get(core, UNKNOWN_ACCURACY) - PARAPHRASE_PENALTY * paraphrases)


def unit_hash(*parts: str) -> float:
    """A stable number in [0, 1) for these strings (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256(HASH_SEPARATOR.join(parts).encode()).digest()
    return int.from_bytes(digest[:HASH_BYTES], "big") / HASH_SCALE


def knows(view: PromptView) -> bool:
    """Right on an example iff its (instruction, question) hash falls below the instruction's accuracy."""
    return unit_hash(view.instruction, view.inputs.get(QUESTION_FIELD, "")) < accuracy(view.instruction)


def respond(request: Any) -> str:
    """The scripted prompt model (replies depend only on the request, as in tests/optimizers/test_apo.py)."""
    system, fields = system_text(request), parse_field_blocks(last_user_text(request))
    if "`reasons`" in system:
        return format_chat_reply({"reasons": [f"The instruction never says to {RULE}.", "It is too vague."]})
    if "`new_instructions`" in system:
        pick = RULE_EDITS[int(unit_hash(fields.get("failures", "")) * len(RULE_EDITS))]
        return format_chat_reply({"new_instructions": [pick if RULE in fields["problem"] else DECOY]})
    if "`paraphrase`" in system:
        return format_chat_reply({"paraphrase": PARAPHRASE_PREFIX + fields["instruction"]})
    raise ValueError(f"The scripted prompt model got an unexpected meta-prompt: {system[:200]!r}")


def run_apo(task: Any, seed: int, **settings: Any) -> APO:
    apo = APO(task.metric, task_model=task.lm(knows=knows), prompt_model=scripted_lm(respond), seed=seed,
              **{**APO_SETTINGS, **settings})
    apo.compile(task.program(), trainset=task.train, valset=task.val)
    return apo


def final_instruction(apo: APO) -> str:
    return apo.report_.best_state[PREDICTOR]["instruction"]


def end_to_end(seed: int) -> list[tuple[str, APO]]:
    task = planted_rule_task("vowels", train_size=TRAIN_SIZE, val_size=VAL_SIZE, seed=seed)
    runs = [(f"brute_force (full: {MAX_POOL} x {TRAIN_SIZE})", run_apo(task, seed, **FULL_BF_SETTINGS))]
    return runs + [(name, run_apo(task, seed, evaluator=name)) for name in BANDITS]


def apo_table(runs: list[tuple[str, APO]]) -> list[str]:
    full = runs[0][1]
    full_calls, full_choice = full.report_.spent["task"].calls, final_instruction(full)
    same_budget = final_instruction(dict(runs)["brute_force"])
    lines = ["| evaluator | task calls | saved vs full BF | saved % | final instruction | accuracy "
             "| = brute_force | = full BF |", "|---|---:|---:|---:|---|---:|---:|---:|"]
    for name, apo in runs:
        calls, choice = apo.report_.spent["task"].calls, final_instruction(apo)
        lines.append(f"| {name} | {calls} | {full_calls - calls} | {PERCENT * (full_calls - calls) / full_calls:.1f}% "
                     f"| {choice} | {accuracy(choice):.2f} | {_yes(choice == same_budget)} "
                     f"| {_yes(choice == full_choice)} |")
    return lines


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


# ------------------------------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="synthetic instances (part 1)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (part 1) and APO/task seed (part 2)")
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS, help="example pool size (part 1)")
    parser.add_argument("--beam", type=int, default=DEFAULT_BEAM, help="arms kept, APO's beam_size (part 1)")
    parser.add_argument("--budgets", type=parse_budgets, default=parse_budgets(DEFAULT_BUDGETS),
                        help=f"comma-separated RxPxS budgets (default {DEFAULT_BUDGETS})")
    parser.add_argument("--no-apo", action="store_true", help="skip part 2")
    return parser.parse_args()


def timed(label: str, work: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = work()
    print(f"({label}: {time.perf_counter() - started:.1f} s)\n")
    return result


def main() -> None:
    args = parse_args()
    logger.remove()
    print(f"## Part 1: synthetic arms ({len(ARM_MEANS)} prompts, {args.items} examples, beam {args.beam}, "
          f"{args.seeds} seeds from {args.seed})\n")
    tallies = timed("part 1", lambda: simulate(args))
    print("\n".join(synthetic_table(tallies, len(ARM_MEANS) * args.items)) + "\n")
    if args.no_apo:
        return
    print(f"## Part 2: APO end to end (simulated task model, train {TRAIN_SIZE}, val {VAL_SIZE}, seed {args.seed}; "
          f"{', '.join(f'{k}={v}' for k, v in APO_SETTINGS.items() if k != 'progress')})\n")
    runs = timed("part 2", lambda: end_to_end(args.seed))
    print("\n".join(apo_table(runs)))


if __name__ == "__main__":
    main()
