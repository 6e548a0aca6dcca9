"""Measure the overhead of `LlamaCppEngine` (through `dspy.LM`) over bare llama.cpp.

Three arms answer the same DSPy-formatted prompts on the *same* loaded
`llama_cpp.Llama` instance with identical settings (temperature 0, fixed
max_tokens, same seed and top_p):

* ``bare``:   ``llama.create_chat_completion(**kwargs)`` with pre-built kwargs;
* ``engine``: ``LlamaCppEngine.complete(Request)`` (conversion, lock, Response);
* ``dspy``:   ``dspy.LM(..., engine=engine, cache=False)(request)``, the
  full DSPy call path (request building, history, usage, callbacks).

The arms are interleaved call by call (prompt by prompt, arm order rotating),
so slow periods on a shared machine hit all arms alike, and llama.cpp's KV cache
is reset before every call so no arm reuses the prompt another arm has just
evaluated. A warm-up call per arm is not timed. Outputs must match (greedy).
"overhead" is the ratio of total times; "paired median" the median ratio of
the same prompt's back-to-back calls. "fixed" is the noise-free per-call cost of
each path measured on an instant fake model (pure Python/DSPy work).

Command (from the repository root, with the ``local`` extra installed):

    python examples/benchmarks/bench_engine.py --prompts 10 --repeats 3 --max-tokens 32

The last line is the figure to quote, e.g.
``RESULT: dspy.LM + LlamaCppEngine vs bare llama.cpp: +0.40% (paired median ratio 1.0040; ...``.
The verdict uses the paired median, which a busy shared machine cannot skew the
way it skews summed times; both figures are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dspy
from dspy.adapters import ChatAdapter
from dspy.lm15 import Config, Message, Request
from loguru import logger

from dspy_icl_opt.lm import EMBEDDED_LM_NAME, LlamaCppEngine, ensure_embedded_model

DEFAULT_PROMPTS = 10
DEFAULT_REPEATS = 3
DEFAULT_MAX_TOKENS = 32
DEFAULT_N_CTX = 2048
FIXED_COST_CALLS = 300
TARGET_OVERHEAD_PERCENT = 5.0
PERCENT = 100.0
ARMS = ("bare", "engine", "dspy")
QUESTIONS = (
    "What is the capital of France?",
    "Write a Python expression that reverses a list named xs.",
    "What is 17 * 3?",
    "Name the largest planet in the solar system.",
    "What does HTTP status code 404 mean?",
    "Give one synonym for 'quick'.",
    "Which keyword defines a function in Python?",
    "What is the boiling point of water in Celsius at sea level?",
    "Translate 'thank you' into Spanish.",
    "What is the square root of 144?",
    "What data structure uses FIFO order?",
    "Who wrote 'Romeo and Juliet'?",
)


@dataclass
class ArmStats:
    """Per-arm timings (seconds, in run order) and the last output per prompt."""

    seconds: list[float] = field(default_factory=list)
    outputs: dict[int, str] = field(default_factory=dict)

    def record(self, index: int, elapsed: float, text: str) -> None:
        self.seconds.append(elapsed)
        self.outputs[index] = text

    @property
    def total(self) -> float:
        return sum(self.seconds)


class InstantLlama:
    """A stand-in model that answers at once: isolates the fixed per-call cost of each path."""

    RESULT = {"id": "x", "choices": [{"message": {"role": "assistant", "content": "[[ ## answer ## ]]\nok"},
                                      "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    def create_chat_completion(self, **kwargs: object) -> dict:
        return self.RESULT


def build_prompts(count: int) -> list[list[dict[str, str]]]:
    """Format ``count`` questions with DSPy's ChatAdapter, as a real program would."""
    signature = dspy.Signature("question -> answer")
    adapter = ChatAdapter()
    return [adapter.format(signature, demos=[], inputs={"question": QUESTIONS[i % len(QUESTIONS)]})
            for i in range(count)]


def to_request(messages: list[dict[str, str]], *, max_tokens: int) -> Request:
    """Turn a system + user message pair into the canonical request DSPy would send."""
    system, user = messages[0]["content"], messages[1]["content"]
    return Request(model=EMBEDDED_LM_NAME, system=system, messages=(Message.user(user),),
                   config=Config(temperature=0.0, max_tokens=max_tokens))


def make_arms(engine: LlamaCppEngine, llama: object, prompts: list[list[dict[str, str]]], *,
              max_tokens: int) -> dict[str, Callable[[int], str]]:
    """Build one callable per arm (prompt index -> completion text) on one model object."""
    requests = [to_request(p, max_tokens=max_tokens) for p in prompts]
    bare_kwargs = [engine.completion_kwargs(r) for r in requests]  # Pre-built: the bare arm pays nothing.
    lm = dspy.LM(EMBEDDED_LM_NAME, engine=engine, temperature=0.0, max_tokens=max_tokens, cache=False)

    def bare(i: int) -> str:
        return llama.create_chat_completion(**bare_kwargs[i])["choices"][0]["message"]["content"]

    def via_engine(i: int) -> str:
        return engine.complete(requests[i]).message.text

    def via_dspy(i: int) -> str:
        return lm(requests[i]).message.text  # Full DSPy path: prepare, execute, history, usage.

    return {"bare": bare, "engine": via_engine, "dspy": via_dspy}


def run(arms: dict[str, Callable[[int], str]], *, reset: Callable[[], None], prompts: int, repeats: int
        ) -> dict[str, ArmStats]:
    """Time every arm on every prompt, interleaved call by call with a rotating arm order.

    ``reset`` clears llama.cpp's KV cache before each call, so no arm profits from
    the previous arm having just evaluated the same prompt.
    """
    stats = {name: ArmStats() for name in ARMS}
    for call in arms.values():  # Untimed warm-up of every arm.
        call(0)
    for repeat in range(repeats):
        for index in range(prompts):
            shift = (repeat + index) % len(ARMS)
            for name in ARMS[shift:] + ARMS[:shift]:
                reset()
                start = time.perf_counter()
                text = arms[name](index)
                stats[name].record(index, time.perf_counter() - start, text)
        logger.info("repeat {}/{}: bare {:.1f}s, engine {:.1f}s, dspy {:.1f}s", repeat + 1, repeats,
                    *(stats[name].total for name in ARMS))
    return stats


def fixed_cost_seconds(prompts: list[list[dict[str, str]]], *, max_tokens: int, calls: int) -> dict[str, float]:
    """Mean seconds per call of each arm on `InstantLlama` (pure Python/DSPy overhead)."""
    instant = InstantLlama()
    engine = LlamaCppEngine("instant.gguf", llama=instant)
    arms = make_arms(engine, instant, prompts, max_tokens=max_tokens)
    costs = {}
    for name in ARMS:
        start = time.perf_counter()
        for i in range(calls):
            arms[name](i % len(prompts))
        costs[name] = (time.perf_counter() - start) / calls
    return costs


def report(stats: dict[str, ArmStats], fixed: dict[str, float], *, prompts: int, repeats: int,
           max_tokens: int, n_threads: int) -> None:
    """Print per-arm totals, ratios over the bare arm, fixed costs, and the quotable result line."""
    bare = stats["bare"]
    print(f"\n{'arm':<8}{'total s':>9}{'ms/call':>9}{'ratio':>8}{'overhead':>10}{'paired median':>15}"
          f"{'fixed us/call':>15}")
    for name in ARMS:
        arm = stats[name]
        ratio = arm.total / bare.total
        paired = statistics.median(a / b for a, b in zip(arm.seconds, bare.seconds))
        print(f"{name:<8}{arm.total:>9.2f}{arm.total / len(arm.seconds) * 1000:>9.1f}{ratio:>8.4f}"
              f"{(ratio - 1) * PERCENT:>+9.2f}%{(paired - 1) * PERCENT:>+14.2f}%{fixed[name] * 1e6:>15.0f}")
    same = sum(stats[name].outputs[i] == bare.outputs[i] for name in ("engine", "dspy") for i in range(prompts))
    print(f"\nidentical outputs vs bare: {same}/{2 * prompts}")
    ratio = stats["dspy"].total / bare.total
    paired = statistics.median(a / b for a, b in zip(stats["dspy"].seconds, bare.seconds))
    fixed_share = (fixed["dspy"] - fixed["bare"]) / statistics.median(bare.seconds) * PERCENT
    overhead = (paired - 1) * PERCENT
    verdict = "PASS" if overhead <= TARGET_OVERHEAD_PERCENT else "FAIL"
    if abs(ratio - paired) * PERCENT > TARGET_OVERHEAD_PERCENT:
        print("note: total-time ratio and paired median disagree: the machine was busy; rerun when idle.")
    print(f"RESULT: dspy.LM + LlamaCppEngine vs bare llama.cpp: {overhead:+.2f}% (paired median ratio "
          f"{paired:.4f}; total-time ratio {ratio:.4f} = {(ratio - 1) * PERCENT:+.2f}%; fixed Python cost "
          f"{(fixed['dspy'] - fixed['bare']) * 1e3:.2f} ms/call = {fixed_share:.3f}% of a median call); "
          f"{prompts} prompts x {repeats} repeats interleaved, max_tokens={max_tokens}, temperature=0, "
          f"n_threads={n_threads}; target <= {TARGET_OVERHEAD_PERCENT:.0f}%: {verdict}")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load the model once, run the interleaved benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF path (default: the embedded model)")
    parser.add_argument("--prompts", type=int, default=DEFAULT_PROMPTS)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    parser.add_argument("--n-ctx", type=int, default=DEFAULT_N_CTX)
    parser.add_argument("--n-threads", type=int, default=None)
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    from dspy_icl_opt.pipeline.cli import setup_logging  # the library logs through `logging`, quiet by default

    setup_logging("INFO")
    engine = LlamaCppEngine(args.model or ensure_embedded_model(), n_ctx=args.n_ctx, n_threads=args.n_threads)
    llama = engine.llama  # Loads the model once; all three arms use this instance.
    prompts = build_prompts(args.prompts)
    fixed = fixed_cost_seconds(prompts, max_tokens=args.max_tokens, calls=FIXED_COST_CALLS)
    arms = make_arms(engine, llama, prompts, max_tokens=args.max_tokens)
    stats = run(arms, reset=llama.reset, prompts=args.prompts, repeats=args.repeats)
    report(stats, fixed, prompts=args.prompts, repeats=args.repeats, max_tokens=args.max_tokens,
           n_threads=engine.n_threads)


if __name__ == "__main__":
    main()
