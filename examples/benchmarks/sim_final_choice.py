"""How DemoSelector's final choice should use a valset that the trials saw half of: rules compared on a simulation.

No LM call. DemoSelector splits a valset of 40: trials rank demo sets on 20 examples, 20 are held back; the
start and the best few trials (finalists) are then validated. Which evidence should the paired test see?

- ``held-out``: only the 20 held-back examples, at ``VALIDATION_Z`` (the rule before this script).
- ``all, fresh >= 0``: all 40 (the finalists' trial examples are cached, so they cost nothing) at
  ``VALIDATION_Z``, and the finalist must not lose on the held-back 20 (the rule after it).
- ``all, Bonferroni``: all 40 at :func:`~dspy_icl_opt.demos.selector.reuse_z` over the trials.
- ``all``: all 40 at ``VALIDATION_Z``, no check on the held-back half.
- ``best of all (BFSRS)``: the best mean on all 40, the start one candidate among the trials, no test.

The model: a start of true accuracy ``p0`` and ``trials`` demo sets whose true accuracies are ``p0 + mean``
plus a normal spread; each example's outcome for a program is ``u < p``, with ``u`` shared by all programs
on that example with probability ``rho`` (else drawn afresh): hyperbaton's 0.5B answers are close to coin
flips, and 42% of the held-back pairs disagreed there, so ``rho`` is low. The figure is the chosen program's
true accuracy minus the start's, averaged over repetitions: positive is gained, negative is harm done.

A second table compares search *shapes* at the same trial calls (``--trials`` trials of ``val - held``
examples, or half as many of the whole valset, as BootstrapFewShotWithRandomSearch spends its calls):

- ``split (now)``: DemoSelector's shape and rule (trials on one part, the rule ``all, fresh >= 0``).
- ``whole, Bonferroni``: trials on the whole valset, the best 3 tested against the start on those examples
  at :func:`~dspy_icl_opt.demos.selector.reuse_z` over the trials.
- ``whole, z``: the same at ``VALIDATION_Z`` (no correction for picking the best of the trials).
- ``whole, best (BFSRS)``: the best of those trials if its mean beats the start's, no test.

A third table runs the rule ``all, fresh >= 0`` at the thresholds ``--z`` names, on the same draws: what a lower
threshold for demo searches would gain where demo sets help and cost where they hurt, and how often its choice
is worse than the start.

Run (BENCHMARKS.md's figures come from this command; ``--held 10`` is InstructionDemoSearch's split):
    python examples/benchmarks/sim_final_choice.py --reps 4000
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Sequence

from dspy_icl_opt.demos.selector import reuse_z
from dspy_icl_opt.search.base import VALIDATION_Z, paired_test

RULES = ("held-out", "all, fresh >= 0", "all, Bonferroni", "all", "best of all (BFSRS)")
#: (mean gain of a demo set over the start, spread of the gains): demos help, help a little, do nothing, hurt
SCENARIOS = ((0.15, 0.05), (0.08, 0.05), (0.0, 0.05), (-0.05, 0.05), (-0.1, 0.05))


def outcomes(rng: random.Random, p: float, shared: Sequence[float], rho: float) -> list[float]:
    return [float((u if rng.random() < rho else rng.random()) < p) for u in shared]


def passes(scores: Sequence[float], start: Sequence[float], z: float, reused: int = 0) -> bool:
    return paired_test(scores, start, z, reused).passed  # the rule choose_by_validation applies


def choose(rule: str, trial: list[list[float]], held: list[list[float]], start_trial: list[float],
           start_held: list[float], finalists: list[int], z: float = VALIDATION_Z) -> int | None:
    """The index of the trial the rule returns, or None for the start; ``z`` is the threshold of the rules that
    test at ``VALIDATION_Z``."""
    both = [t + h for t, h in zip(trial, held)]
    start_both = start_trial + start_held
    if rule == "best of all (BFSRS)":
        best = max(range(len(both)), key=lambda i: (sum(both[i]), -i))
        return best if sum(both[best]) > sum(start_both) else None
    tests: dict[str, Callable[[int], bool]] = {
        "held-out": lambda i: passes(held[i], start_held, z),
        # the trial examples first, as DemoSelector orders its final examples: the rest are the fresh ones
        "all, fresh >= 0": lambda i: passes(both[i], start_both, z, reused=len(start_trial)),
        "all, Bonferroni": lambda i: passes(both[i], start_both, reuse_z(len(trial))),
        "all": lambda i: passes(both[i], start_both, z),
    }
    judged = held if rule == "held-out" else both
    passed = [i for i in finalists if tests[rule](i)]
    return max(passed, key=lambda i: (sum(judged[i]), -i)) if passed else None


def simulate(mean: float, spread: float, *, reps: int, trials: int = 8, n_trial: int = 20, n_held: int = 20,
             finalists: int = 3, rho: float = 0.2, p0: float = 0.6, seed: int = 0) -> dict[str, float]:
    rng = random.Random(seed)
    gained = {rule: 0.0 for rule in RULES}
    for _ in range(reps):
        ps, drawn = draw(rng, mean, spread, trials, n_trial, n_held, finalists, rho, p0)
        for rule in RULES:
            chosen = choose(rule, *drawn)
            gained[rule] += 0.0 if chosen is None else ps[chosen] - p0
    return {rule: total / reps for rule, total in gained.items()}


def draw(rng: random.Random, mean: float, spread: float, trials: int, n_trial: int, n_held: int, finalists: int,
         rho: float, p0: float) -> tuple[list[float], tuple]:
    """One repetition: the trials' true accuracies, and :func:`choose`'s arguments after ``rule`` (the trials' and
    the start's outcomes on the trial and held-back examples, and the finalists: the best trials on theirs)."""
    ps = [min(0.98, max(0.02, p0 + mean + spread * rng.gauss(0, 1))) for _ in range(trials)]
    u_trial = [rng.random() for _ in range(n_trial)]
    u_held = [rng.random() for _ in range(n_held)]
    start_trial, start_held = outcomes(rng, p0, u_trial, rho), outcomes(rng, p0, u_held, rho)
    trial = [outcomes(rng, p, u_trial, rho) for p in ps]
    held = [outcomes(rng, p, u_held, rho) for p in ps]
    top = sorted(range(trials), key=lambda i: (-sum(trial[i]), i))[:finalists]
    return ps, (trial, held, start_trial, start_held, top)


def simulate_thresholds(mean: float, spread: float, zs: Sequence[float], *, reps: int, trials: int = 8,
                        n_trial: int = 20, n_held: int = 20, finalists: int = 3, rho: float = 0.2, p0: float = 0.6,
                        seed: int = 0) -> dict[float, tuple[float, float]]:
    """The rule ``all, fresh >= 0`` at each threshold in ``zs``: (true gain of the choice, share of repetitions
    whose choice is worse than the start). Every threshold judges the same draws."""
    rng = random.Random(seed)
    gained = {z: 0.0 for z in zs}
    harmed = {z: 0 for z in zs}
    for _ in range(reps):
        ps, drawn = draw(rng, mean, spread, trials, n_trial, n_held, finalists, rho, p0)
        for z in zs:
            chosen = choose("all, fresh >= 0", *drawn, z=z)
            if chosen is not None:
                gained[z] += ps[chosen] - p0
                harmed[z] += ps[chosen] < p0
    return {z: (gained[z] / reps, harmed[z] / reps) for z in zs}


SHAPES = ("split (now)", "whole, Bonferroni", "whole, z", "whole, best (BFSRS)")


def simulate_shapes(mean: float, spread: float, *, reps: int, trials: int = 8, n_trial: int = 20,
                    n_held: int = 20, finalists: int = 3, rho: float = 0.2, p0: float = 0.6,
                    seed: int = 0) -> dict[str, float]:
    """The true gain of each shape's choice; the whole-valset shapes get as many trials as the same trial calls
    pay for (``trials * n_trial // (n_trial + n_held)``, at least 1)."""
    rng = random.Random(seed)
    n_val = n_trial + n_held
    whole_trials = max(1, trials * n_trial // n_val)
    gained = {shape: 0.0 for shape in SHAPES}
    for _ in range(reps):
        ps = [min(0.98, max(0.02, p0 + mean + spread * rng.gauss(0, 1))) for _ in range(trials)]
        shared = [rng.random() for _ in range(n_val)]
        start = outcomes(rng, p0, shared, rho)
        scores = [outcomes(rng, p, shared, rho) for p in ps]  # trial examples first, as DemoSelector orders them
        top = sorted(range(trials), key=lambda i: (-sum(scores[i][:n_trial]), i))[:finalists]
        passed = [i for i in top if passes(scores[i], start, VALIDATION_Z, reused=n_trial)]
        picks: dict[str, int | None] = {
            "split (now)": max(passed, key=lambda i: (sum(scores[i]), -i)) if passed else None}
        whole = sorted(range(whole_trials), key=lambda i: (-sum(scores[i]), i))
        for shape, z in (("whole, Bonferroni", reuse_z(whole_trials)), ("whole, z", VALIDATION_Z)):
            ok = [i for i in whole[:finalists] if passes(scores[i], start, z)]
            picks[shape] = ok[0] if ok else None
        picks["whole, best (BFSRS)"] = whole[0] if sum(scores[whole[0]]) > sum(start) else None
        for shape, chosen in picks.items():
            gained[shape] += 0.0 if chosen is None else ps[chosen] - p0
    return {shape: total / reps for shape, total in gained.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=2000, help="repetitions per scenario (default 2000)")
    parser.add_argument("--trials", type=int, default=8, help="trials whose best 3 are validated (default 8)")
    parser.add_argument("--rho", type=float, default=0.2, help="share of examples all programs find equally hard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val", type=int, default=40, help="validation examples (default 40)")
    parser.add_argument("--held", type=int, default=20,
                        help="of them held back from the trials (default 20, DemoSelector's half; "
                             "InstructionDemoSearch holds back a quarter: 10)")
    parser.add_argument("--p0", type=float, default=0.6, help="the start's true accuracy (default 0.6)")
    parser.add_argument("--z", default="0,0.5,0.75,1.0",
                        help="thresholds the third table compares for the rule 'all, fresh >= 0' "
                             "(comma-separated; default 0,0.5,0.75,1.0; VALIDATION_Z is "
                             f"{VALIDATION_Z})")
    args = parser.parse_args(argv)
    try:
        zs = [float(z) for z in args.z.split(",") if z.strip()]
    except ValueError:
        parser.error(f"--z must be comma-separated numbers such as 0.5,1.0, but got {args.z!r}")
    if not zs:
        parser.error("--z must name at least one threshold, such as 0.5,1.0")
    if not 0 < args.held < args.val:
        parser.error(f"--held must be between 1 and --val - 1 ({args.val - 1}), but got {args.held}")
    n_trial = args.val - args.held
    print(f"true gain of the chosen program over the start; {args.trials} trials on {n_trial} examples, "
          f"{args.held} held back, 3 finalists, start at {args.p0}, rho {args.rho}, {args.reps} repetitions")
    print("| demo sets' mean gain, spread | " + " | ".join(RULES) + " |")
    print("|---|" + "---|" * len(RULES))
    for mean, spread in SCENARIOS:
        result = simulate(mean, spread, reps=args.reps, trials=args.trials, n_trial=n_trial, n_held=args.held,
                          rho=args.rho, p0=args.p0, seed=args.seed)
        print(f"| {mean:+.2f}, {spread:.2f} | " + " | ".join(f"{result[r]:+.4f}" for r in RULES) + " |")
    whole = max(1, args.trials * n_trial // args.val)
    print(f"\nsearch shapes at the same trial calls: {args.trials} trials on {n_trial} examples, or {whole} on all "
          f"{args.val}")
    print("| demo sets' mean gain, spread | " + " | ".join(SHAPES) + " |")
    print("|---|" + "---|" * len(SHAPES))
    for mean, spread in SCENARIOS:
        result = simulate_shapes(mean, spread, reps=args.reps, trials=args.trials, n_trial=n_trial,
                                 n_held=args.held, rho=args.rho, p0=args.p0, seed=args.seed)
        print(f"| {mean:+.2f}, {spread:.2f} | " + " | ".join(f"{result[r]:+.4f}" for r in SHAPES) + " |")
    print("\nthe rule 'all, fresh >= 0' at other thresholds: true gain (share of choices worse than the start)")
    print("| demo sets' mean gain, spread | " + " | ".join(f"z {z:g}" for z in zs) + " |")
    print("|---|" + "---|" * len(zs))
    for mean, spread in SCENARIOS:
        swept = simulate_thresholds(mean, spread, zs, reps=args.reps, trials=args.trials, n_trial=n_trial,
                                    n_held=args.held, rho=args.rho, p0=args.p0, seed=args.seed)
        print(f"| {mean:+.2f}, {spread:.2f} | "
              + " | ".join(f"{swept[z][0]:+.4f} ({swept[z][1]:.3f})" for z in zs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
