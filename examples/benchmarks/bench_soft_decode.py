"""How much the soft-prompt decoder's prompt cache saves, on the embedded model and a bundled task's prompts.

Consecutive calls of one program share their system message (DSPy's field descriptions and the
instruction), so ``soft_decode`` keeps the last prompt's keys and values and runs only the tokens
after the shared start. This script renders ``--n`` test questions of a bundled task as DSPy's
ChatAdapter prompts the ``qa`` program, attaches a fresh prompt-tuning soft prompt (8 virtual
tokens; the cost does not depend on its values) and decodes each prompt twice, alternating, with
the cache and without it. It prints the median seconds per call of both, their ratio, the share of
prompt tokens the cache served, and how many answers were identical (the two paths compute the
same function in other chunks, so they may differ by floating-point rounding only).

Run (one model process, one thread):
    OMP_NUM_THREADS=1 python examples/benchmarks/bench_soft_decode.py --task date_understanding --n 12
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="date_understanding")
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--base-model", default="embedded")
    args = parser.parse_args(argv)

    import dspy
    import torch
    from dspy_icl_opt.programs import load_task, make_program
    from peft import get_peft_model

    from dspy_icl_opt.lm.hf_models import load_model
    from dspy_icl_opt.lm.soft_prompt import peft_config
    from dspy_icl_opt.lm.transformers_engine import (
        PromptCache,
        _stop_ids,
        encode,
        prompt_text,
        soft_decode,
    )
    from dspy_icl_opt.optimizers.soft_training import example_messages

    torch.set_num_threads(1)
    task = load_task(args.task, seed=0, train_size=10, val_size=10, test_size=args.n)
    predictor = make_program("qa", task).named_predictors()[0][1]
    adapter = dspy.ChatAdapter()
    loaded = load_model(args.base_model)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = get_peft_model(loaded.model, peft_config("prompt_tuning", 8, inference_mode=True))
    stops, options = _stop_ids(loaded), {"max_new_tokens": args.max_tokens}
    cache = PromptCache()
    times: dict[str, list[float]] = {"cached": [], "fresh": []}
    same, prompt_tokens, served = 0, 0, 0
    for example in task.test:
        messages = example_messages(predictor, example, adapter)[:-1]  # as the trainer renders it, less the answer
        ids = torch.tensor([encode(loaded.tokenizer, prompt_text(loaded.tokenizer, messages))])
        answers = {}
        with torch.no_grad():
            for mode in ("cached", "fresh"):
                shared = cache.shared(ids[0].tolist()) if mode == "cached" else 0
                started = time.perf_counter()
                answers[mode] = soft_decode(model, loaded.model, ids, options, stop_ids=stops,
                                            prompt_cache=cache if mode == "cached" else None)
                times[mode].append(time.perf_counter() - started)
                if mode == "cached":
                    prompt_tokens, served = prompt_tokens + ids.shape[1], served + shared
        same += answers["cached"] == answers["fresh"]
    cached, fresh = statistics.median(times["cached"]), statistics.median(times["fresh"])
    print(f"{args.n} prompts of {args.task}, {prompt_tokens / args.n:.0f} prompt tokens on average, "
          f"{served / max(1, prompt_tokens):.0%} of them served by the cache")
    print(f"median seconds per call: with the cache {cached:.2f}, without {fresh:.2f}; ratio {cached / fresh:.2f} "
          f"(total {sum(times['cached']):.1f} s against {sum(times['fresh']):.1f} s)")
    print(f"identical answers: {same} of {args.n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
