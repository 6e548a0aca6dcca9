"""Bundled BIG-bench tasks and loaders that turn JSONL files into DSPy train/val/test splits.

Each bundled task is a JSONL file in ``programs/data`` with one JSON object a line:
``question``, optional ``choices`` (multiple choice) and ``answer`` (the gold choice text or
string). `load_task` shuffles the examples with a seed and splits them; `load_jsonl_task` does
the same for a user's own file in that format.

Example:
    >>> from dspy_icl_opt.programs.tasks import load_task
    >>> task = load_task("date_understanding", seed=0, train_size=20, val_size=20, test_size=50)
    >>> len(task.train), len(task.val), len(task.test)
    (20, 20, 50)
    >>> list(task.train[0].inputs().keys())
    ['question', 'options']
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from dspy_icl_opt.programs.metrics import Metric, choice_match, exact_match, format_options

DATA_DIR = Path(__file__).resolve().parent / "data"
"""Where the bundled JSONL files live (shipped as package data)."""

DEFAULT_TRAIN_SIZE = 30
"""Enough labeled examples for demo bootstrapping and instruction proposals, as in the paper setups."""
DEFAULT_VAL_SIZE = 30
"""A validation set big enough to rank prompts, small enough for a local CPU model."""
DEFAULT_TEST_CAP = 100
"""The default test split takes the remaining examples, capped to keep evaluation cheap."""
DEFAULT_SPLIT_FRACTION = 3
"""For small files the default train and val sizes are each at most a third of the examples."""

QUESTION_KEY = "question"
OPTIONS_KEY = "options"
CHOICES_KEY = "choices"
ANSWER_KEY = "answer"


@dataclass(frozen=True)
class TaskInfo:
    """A bundled task: its file and what it asks.

    Args:
        filename: The JSONL file name inside ``programs/data``.
        description: One sentence about the task.
        multiple_choice: Whether examples carry ``choices``.
    """

    filename: str
    description: str
    multiple_choice: bool


TASKS: dict[str, TaskInfo] = {
    "date_understanding": TaskInfo(
        "date_understanding.jsonl", "Infer a date from a short description and give it as MM/DD/YYYY.", True
    ),
    "disambiguation_qa": TaskInfo(
        "disambiguation_qa.jsonl", "Find the antecedent of a pronoun in a sentence, or say it is ambiguous.", True
    ),
    "formal_fallacies": TaskInfo(
        "formal_fallacies.jsonl", "Decide whether an argument is deductively valid given its premises.", True
    ),
    "hyperbaton": TaskInfo("hyperbaton.jsonl", "Pick the sentence whose adjectives follow English order.", True),
    "penguins_in_a_table": TaskInfo(
        "penguins_in_a_table.jsonl", "Answer a question about a small table of penguins.", False
    ),
    "reasoning_about_colored_objects": TaskInfo(
        "reasoning_about_colored_objects.jsonl", "Answer questions about the colors and positions of objects.", True
    ),
    "temporal_sequences": TaskInfo(
        "temporal_sequences.jsonl", "Find when someone could have done something, given a day's schedule.", True
    ),
    "tracking_shuffled_objects_three_objects": TaskInfo(
        "tracking_shuffled_objects_three_objects.jsonl",
        "Track which object each of three people holds after a series of swaps.",
        True,
    ),
    "word_sorting": TaskInfo("word_sorting.jsonl", "Sort a list of words alphabetically.", False),
}
"""The bundled tasks by name."""


@dataclass(frozen=True)
class Task:
    """A loaded task: splits of ``dspy.Example`` with inputs set, and its metric.

    Args:
        name: The task name.
        description: One sentence about the task.
        train: Training examples (demos and proposals come from here).
        val: Validation examples (prompt selection).
        test: Held-out examples (final evaluation).
        metric: DSPy metric ``(example, prediction, trace=None) -> float``.
        input_keys: The input field names (``("question",)`` or ``("question", "options")``).
        multiple_choice: Whether examples carry ``choices`` and an ``options`` input.
    """

    name: str
    description: str
    train: list[dspy.Example]
    val: list[dspy.Example]
    test: list[dspy.Example]
    metric: Metric
    input_keys: tuple[str, ...]
    multiple_choice: bool


def task_names() -> list[str]:
    """Return the names of the bundled tasks, sorted.

    Returns:
        The task names `load_task` accepts.

    Example:
        >>> "word_sorting" in task_names()
        True
    """
    return sorted(TASKS)


def load_task(
    name: str,
    *,
    seed: int = 0,
    train_size: int | None = None,
    val_size: int | None = None,
    test_size: int | None = None,
) -> Task:
    """Load a bundled BIG-bench task, shuffled with ``seed`` and split into train/val/test.

    Args:
        name: One of `task_names()`.
        seed: Seed of the shuffle; the same seed gives the same splits.
        train_size: Training examples. Defaults to 30 (at most a third of the examples).
        val_size: Validation examples. Defaults to 30 (at most a third of the examples).
        test_size: Test examples. Defaults to the rest, capped at 100.

    Returns:
        The loaded `Task`, with disjoint splits.

    Raises:
        ValueError: For an unknown name or sizes the file cannot supply.

    Example:
        >>> task = load_task("hyperbaton", seed=1)
        >>> task.multiple_choice, len(task.train)
        (True, 30)
    """
    if name not in TASKS:
        raise ValueError(
            f"`name` must be one of the bundled tasks {task_names()}, but got {name!r}. "
            "Pick one of those names, or load your own file with `load_jsonl_task`."
        )
    info = TASKS[name]
    return load_jsonl_task(
        DATA_DIR / info.filename,
        name=name,
        description=info.description,
        seed=seed,
        train_size=train_size,
        val_size=val_size,
        test_size=test_size,
        shuffle_choices=True,
    )


def load_jsonl_task(
    path: str | Path,
    *,
    name: str | None = None,
    description: str = "",
    seed: int = 0,
    train_size: int | None = None,
    val_size: int | None = None,
    test_size: int | None = None,
    shuffle_choices: bool = False,
) -> Task:
    """Load a task from a JSONL file with ``question``, optional ``choices`` and ``answer`` per line.

    A task is multiple choice when every line has ``choices``; then the ``options`` input is the
    lettered list of choices and the gold ``answer`` must be one of them. With ``shuffle_choices`` the
    choices of each example are put in an order drawn from the example's own text (the same in every
    split and run), so the gold answer's position carries no signal: in the BIG-bench files bundled
    here the gold answer is listed first in 364 of 369 date_understanding and 400 of 400
    temporal_sequences examples, which a program answering "(A)" (or a soft prompt, or demos that
    all answer "(A)") would exploit. `load_task` always shuffles.

    Args:
        path: The JSONL file.
        name: Task name; defaults to the file name without extension.
        description: One sentence about the task.
        seed: Seed of the shuffle.
        train_size: Training examples (default as in `load_task`).
        val_size: Validation examples (default as in `load_task`).
        test_size: Test examples (default: the rest, capped at 100).
        shuffle_choices: Reorder each example's choices by a draw seeded from its text (see above).

    Returns:
        The loaded `Task`.

    Raises:
        FileNotFoundError: When ``path`` does not exist.
        ValueError: For malformed lines or sizes the file cannot supply.

    Example:
        >>> task = load_jsonl_task("my_task.jsonl", train_size=10, val_size=10)  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"`path` must be an existing JSONL file, but got {str(path)!r}. Check the path, or use `load_task`."
        )
    _check_seed(seed)
    rows = _read_rows(path)
    multiple_choice = _is_multiple_choice(rows, path)
    examples = [
        _to_example(row, multiple_choice=multiple_choice, where=f"{path}:{line}", shuffle_choices=shuffle_choices)
        for line, row in enumerate(rows, 1)
    ]
    random.Random(seed).shuffle(examples)
    train, val, test = _split(examples, train_size=train_size, val_size=val_size, test_size=test_size)
    input_keys = (QUESTION_KEY, OPTIONS_KEY) if multiple_choice else (QUESTION_KEY,)
    return Task(
        name=name or path.stem,
        description=description,
        train=train,
        val=val,
        test=test,
        metric=choice_match if multiple_choice else exact_match,
        input_keys=input_keys,
        multiple_choice=multiple_choice,
    )


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Read a local JSONL file with `datasets` (the packaged json builder; no hub access)."""
    import datasets

    bars_were_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        dataset = datasets.load_dataset("json", data_files=str(path), split="train")
    finally:
        if not bars_were_disabled:
            datasets.enable_progress_bars()
    if QUESTION_KEY not in dataset.column_names or ANSWER_KEY not in dataset.column_names:
        raise ValueError(
            f"Each line of `path` must have `question` and `answer` keys, but {str(path)!r} has columns "
            f"{dataset.column_names}. Write one JSON object a line with those keys."
        )
    return dataset.to_list()


def _is_multiple_choice(rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """True when every row has choices; a file mixing both kinds is refused."""
    with_choices = sum(1 for row in rows if row.get(CHOICES_KEY))
    if 0 < with_choices < len(rows):
        raise ValueError(
            f"`choices` must be given on every line or on none, but {str(path)!r} has them on {with_choices} of "
            f"{len(rows)} lines. Split the file into a multiple-choice and a free-answer task."
        )
    return with_choices > 0


def _choice_order(question: str, choices: list[str]) -> list[str]:
    """``choices`` in an order drawn from the example's own text: stable across runs, splits and machines."""
    digest = hashlib.sha256("\x1f".join([question, *choices]).encode("utf-8")).digest()
    shuffled = list(choices)
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(shuffled)
    return shuffled


def _to_example(row: Mapping[str, Any], *, multiple_choice: bool, where: str,
                shuffle_choices: bool = False) -> dspy.Example:
    """One JSON row as a ``dspy.Example`` with its inputs set."""
    question, answer = row.get(QUESTION_KEY), row.get(ANSWER_KEY)
    if not isinstance(question, str) or not question.strip() or answer is None:
        raise ValueError(
            f"Each line must have a non-empty string `question` and an `answer`, but line {where} has "
            f"question={question!r}, answer={answer!r}. Fix or drop that line."
        )
    answer = str(answer)
    if not multiple_choice:
        return dspy.Example(question=question, answer=answer).with_inputs(QUESTION_KEY)
    choices = [str(choice) for choice in row[CHOICES_KEY]]
    if answer not in choices:
        raise ValueError(
            f"The `answer` must be one of the `choices`, but line {where} has answer {answer!r} and choices "
            f"{choices}. Make the answer the exact text of the gold choice."
        )
    if shuffle_choices:
        choices = _choice_order(question, choices)
    example = dspy.Example(question=question, options=format_options(choices), choices=choices, answer=answer)
    return example.with_inputs(QUESTION_KEY, OPTIONS_KEY)


def _split(
    examples: list[dspy.Example], *, train_size: int | None, val_size: int | None, test_size: int | None
) -> tuple[list[dspy.Example], list[dspy.Example], list[dspy.Example]]:
    """Cut shuffled examples into consecutive, disjoint train/val/test slices."""
    total = len(examples)
    share = total // DEFAULT_SPLIT_FRACTION
    train_n = _check_size("train_size", train_size, minimum=1, default=min(DEFAULT_TRAIN_SIZE, share))
    val_n = _check_size("val_size", val_size, minimum=0, default=min(DEFAULT_VAL_SIZE, share))
    rest = total - train_n - val_n
    test_n = _check_size("test_size", test_size, minimum=0, default=max(0, min(DEFAULT_TEST_CAP, rest)))
    if train_n + val_n + test_n > total:
        raise ValueError(
            f"`train_size + val_size + test_size` must be at most the {total} examples of the task, but got "
            f"{train_n} + {val_n} + {test_n} = {train_n + val_n + test_n}. Ask for smaller splits."
        )
    return (
        examples[:train_n],
        examples[train_n : train_n + val_n],
        examples[train_n + val_n : train_n + val_n + test_n],
    )


def _check_size(label: str, value: int | None, *, minimum: int, default: int) -> int:
    """A split size: the default when ``None``, else an int at least ``minimum``."""
    if value is None:
        value = default
        if value < minimum:
            raise ValueError(
                f"`{label}` must be at least {minimum}, but the task is too small for the default ({value}). "
                "Add examples to the file, or pass explicit split sizes."
            )
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{label}` must be an int >= {minimum}, but got {value!r}. Pass a whole number of examples.")
    return value


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an int, but got {seed!r}. Pass a whole number such as 0.")
