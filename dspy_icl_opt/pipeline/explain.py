"""What a run changed in the program, why that program was kept, and how sure its held-out gain is: one line each.

The demo prints these lines after its before/after accuracies; they read only the starting and final
program states, the last step's report and the summary (no LM call).

Example:
    >>> from dspy_icl_opt.search.surgery import PredictorState, ProgramState
    >>> start = ProgramState.of({"self": PredictorState("Answer the question.")})
    >>> final = start.replace("self", start["self"].with_demos([{"question": "q", "answer": "a"}] * 3))
    >>> what_changed(start, final)
    'the program now shows 3 worked examples; the instruction is unchanged'
"""

from __future__ import annotations

import math
import re
from typing import Any

from dspy_icl_opt.demos.dynamic import split_demos
from dspy_icl_opt.search.base import VALIDATION_Z
from dspy_icl_opt.search.report import OptimizationReport
from dspy_icl_opt.search.surgery import PredictorState, ProgramState

#: A changed instruction is quoted up to this many characters (the report holds it whole).
SHOWN_INSTRUCTION_CHARS = 120


# ------------------------------------------------------------------------------ what changed
def what_changed(start: ProgramState, final: ProgramState, report: OptimizationReport | None = None) -> str:
    """The demos and instruction of each predictor that changed, in words (DemoSelector's choice when known)."""
    before = start.as_dict()
    choices = _chosen_choice(report)
    parts = []
    for name, new in final.predictors:
        old = before.get(name, PredictorState(""))
        if new == old:
            continue
        text = f"{_demos_change(old, new, choices.get(name))}; {_instruction_change(old, new)}"
        parts.append(text if len(final.predictors) == 1 else f"predictor `{name}`: {text}")
    return "; ".join(parts) if parts else "nothing: the program is returned as it was given"


def _demos_change(old: PredictorState, new: PredictorState, choice: str | None) -> str:
    settings, pool = split_demos(list(new.demos))
    how = f" ({_choice_words(choice)})" if choice else ""
    if settings is not None:
        return f"the program now picks {settings.get('k')} of {len(pool)} worked examples per question{how}"
    if list(new.demos) == list(old.demos):
        return "the demos are unchanged" if new.demos else "it still shows no worked example"
    count = len(new.demos)
    was = f", instead of {len(old.demos)}" if old.demos else ""
    noun = "worked example" if count == 1 else "worked examples"
    return f"the program now shows {count} {noun}{how}{was}" if count else "the program now shows no worked example"


def _instruction_change(old: PredictorState, new: PredictorState) -> str:
    if new.instruction == old.instruction and new.position == old.position:
        return "the instruction is unchanged"
    text = " ".join(new.instruction.split())
    if len(text) > SHOWN_INSTRUCTION_CHARS:
        text = text[: SHOWN_INSTRUCTION_CHARS - 3].rstrip() + "..."
    where = "" if new.position == "system" else f" (placed at {new.position})"
    return f'the instruction is now "{text}"{where}'


def _chosen_choice(report: OptimizationReport | None) -> dict[str, str]:
    """DemoSelector's description of the returned trial per predictor (``k=4 labeled/random(seed=0) as_selected``)."""
    if report is None or report.best_candidate is None:
        return {}
    record = next((r for r in report.candidates if r.id == report.best_candidate), None)
    choice = record.meta.get("choice") if record is not None else None
    return {str(k): str(v) for k, v in choice.items()} if isinstance(choice, dict) else {}


def _choice_words(text: str) -> str:
    """``k=4 labeled/random#2 as_selected`` (DemoSelector's ``Choice.describe``) in words."""
    match = re.fullmatch(r"k=(\d+) (\w+)/(.+) (\S+)", text.strip())
    if not match:
        return text
    k, pool, strategy, order = match.groups()
    indexed = re.fullmatch(r"(\w+)#(\d+)", strategy)
    if indexed:
        how = f"candidate set {indexed.group(2)} drawn {_STRATEGY_WORDS.get(indexed.group(1), 'by ' + indexed.group(1))}"
    else:
        how = f"picked by {strategy}"
    permuted = re.fullmatch(r"permutation#(\d+)", order)
    order = f"permutation {permuted.group(1)}" if permuted else order
    return f"k={k} from the {pool} pool, {how}, order {order}"


#: How DemoSelector's indexed strategies draw their candidate sets, in words.
_STRATEGY_WORDS = {"random": "at random", "slots": "to cover the pool"}


# --------------------------------------------------------------------------------- why kept
def why_kept(report: OptimizationReport | None) -> str:
    """Why the returned program was returned: its validation score against the start's, and the rule applied."""
    if report is None:
        return "no optimizer ran"
    choice = report.extra.get("final_choice")
    if not isinstance(choice, dict) or not choice.get("contenders"):
        return (f"{report.optimizer} returns its result without validating it against the start, so the held-out "
                "test above is the only comparison")
    rows = {row["candidate"]: row for row in choice["contenders"]}
    start, chosen, n = rows.get(choice.get("start")), rows.get(choice.get("chosen")), choice.get("examples")
    if start is None or chosen is None:
        return "the final choice's record is incomplete (see report.json)"
    z = float(choice.get("z", VALIDATION_Z))  # DemoSelector raises it when the trials ranked on the same examples
    rule = f"a candidate must beat the start by more than 0 and by at least {z:.1f} standard errors"
    if choice.get("fresh_examples"):  # DemoSelector: part of the examples ranked the trials
        rule += (f", and not lose on the {choice['fresh_examples']} of them the search did not select on "
                 f"(the other {choice.get('reused_examples')} ranked the trials)")
    if chosen is start:
        others = [row["val"] for row in choice["contenders"] if row is not start and row.get("val") is not None]
        best = f"the best other scored {max(others):.2f}, " if others else ""
        return (f"no candidate beat the start surely enough on the {n} validation examples ({best}the start "
                f"{start['val']:.2f}; {rule}), so the program was kept as given")
    gain, se = float(chosen.get("gain", 0.0)), float(chosen.get("se", 0.0))
    sure = f"{gain / se:.1f} standard errors" if se > 0 else "the same gain on every example"
    return (f"it scored {chosen['val']:.2f} on the {n} validation examples against the start's {start['val']:.2f}, "
            f"a paired gain of {gain:+.2f} ({sure}; {rule})")


# ------------------------------------------------------------------------------ held-out gain
def held_out_gain(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str | None:
    """The change in held-out accuracy in points, with its standard error for a 0/1 metric (None without both)."""
    if not before or not after or not before.get("n") or not after.get("n"):
        return None
    p, q = float(before["score"]), float(after["score"])
    se = math.sqrt(p * (1 - p) / before["n"] + q * (1 - q) / after["n"])
    return (f"{100 * (q - p):+.1f} points on {after['n']} held-out examples (standard error about "
            f"{100 * se:.1f} points for a 0/1 metric, the two accuracies taken as independent)")
