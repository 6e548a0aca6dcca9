"""What a run works on: the data splits, the program, the metric, resolved from a config.

Data comes from a bundled task (:func:`dspy_icl_opt.programs.load_task`), a local JSON/JSONL/CSV/Parquet file,
or a `datasets` hub name (only where the hub is reachable; otherwise the error says so). Rows are
mapped to example fields with ``data.fields`` (example field -> column), the program's signature
field names; a ``choices`` list makes a multiple-choice example with an ``options`` input, as for
the bundled tasks. Without ``fields``, a column named ``answer`` (else ``label``, ``target``,
``output`` or ``gold``) is the gold answer and the other columns are inputs. Once the program is
built, :func:`check_program_fields` checks the examples against it (before any LM call): its inputs
are there, and the gold field is one it outputs, so nothing scores 0 for a naming mistake.

Example:
    >>> from dspy_icl_opt.pipeline.config import parse_config
    >>> cfg = parse_config({"data": {"task": "hyperbaton", "train_size": 4, "val_size": 4, "test_size": 4}})
    >>> task = load_data(cfg)
    >>> len(task.train), task.input_keys
    (4, ('question', 'options'))
"""

from __future__ import annotations

import importlib
import inspect
import os
import random
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dspy

from dspy_icl_opt._log import logger
from dspy_icl_opt.pipeline.config import DATA_SUFFIXES, DataConfig, PipelineConfig
from dspy_icl_opt.pipeline.errors import ConfigError, at

#: Default split sizes for files and hub data (as for the bundled tasks).
DEFAULT_TRAIN, DEFAULT_VAL, DEFAULT_TEST_CAP = 30, 30, 100
#: Seconds to wait when checking that the hub answers at all (datasets itself retries for ~25 s).
HUB_PROBE_TIMEOUT = 3.0
METRICS = ("exact_match", "choice_match")
#: ``package.module:name`` (dotted identifiers on both sides), checked before anything is imported.
IMPORT_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
ANSWER, CHOICES, OPTIONS, QUESTION = "answer", "choices", "options", "question"
#: Columns read as the gold answer when there is no ``answer`` column and no ``data.fields`` (first found wins).
LABEL_COLUMNS = ("label", "target", "output", "gold")


# ------------------------------------------------------------------------------- checks
def check_sources(config: PipelineConfig) -> list[str]:
    """Problems with the data source, metric, program and LM specs (no download, no LM call)."""
    from dspy_icl_opt.programs import task_names

    problems = []
    data = config.data
    if data.task and data.task not in task_names():
        problems.append(at("data.task", f"must be one of the bundled tasks {task_names()} (or use `path` for a "
                                        f"file), but got {data.task!r}"))
    if data.path:
        path = Path(data.path)
        if not path.is_file():
            problems.append(at("data.path", f"must be an existing file, but {data.path!r} does not exist"))
        elif path.suffix.lower() not in DATA_SUFFIXES:
            problems.append(at("data.path", f"must end with one of {list(DATA_SUFFIXES)}, but got {path.name!r}"))
    for path, spec, expected in _import_specs(config):
        if not IMPORT_SPEC.match(spec):
            problems.append(at(path, f"must be {expected}, but got {spec!r} (expected the form package.module:name)"))
    problems += _lm_problems(config)
    return problems


def _import_specs(config: PipelineConfig) -> list[tuple[str, str, str]]:
    """The (field, spec, expected) of every ``pkg.module:name`` the config asks to import."""
    from dspy_icl_opt.programs.programs import PROGRAM_NAMES

    specs = []
    if config.metric and config.metric not in METRICS:
        specs.append(("metric", config.metric, f"one of {list(METRICS)} or pkg.module:function"))
    if config.program.name not in PROGRAM_NAMES:
        specs.append(("program.name", config.program.name, f"one of {list(PROGRAM_NAMES)} or pkg.module:factory"))
    return specs


def check_imports(config: PipelineConfig) -> list[str]:
    """Import the config's ``pkg.module:name`` objects and check them; call it only once all else validated.

    A config is as trusted as code: importing a module runs it. So nothing is imported for a config
    that the schema, the ``pkg.module:name`` form or any other check rejects.
    """
    problems = []
    for path, spec, expected in _import_specs(config):
        problems += _import_problem(path, spec, expected)
    return problems


def _import_problem(path: str, spec: str, expected: str) -> list[str]:
    try:
        obj = import_object(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        return [at(path, f"must be {expected}, but got {spec!r} ({exc})")]
    if inspect.isbuiltin(obj):  # os:system and friends build no program and score nothing
        return [at(path, f"must be {expected} written in Python, but {spec!r} is a builtin")]
    return [] if callable(obj) else [at(path, f"must name something callable, but {spec!r} is a "
                                              f"{type(obj).__name__}")]


def _lm_problems(config: PipelineConfig) -> list[str]:
    from dspy_icl_opt.lm.model_store import EMBEDDED_MODELS
    from dspy_icl_opt.lm.resolve import PROVIDER_MODEL_PATTERN

    problems = []
    for role, spec in (("task", config.lm.task), ("prompt", config.lm.prompt)):
        if spec is None or spec.model.strip().lower() in EMBEDDED_MODELS:
            continue
        model = spec.model
        if model.lower().endswith(".gguf"):
            if not Path(model).expanduser().is_file():
                problems.append(at(f"lm.{role}.model", f"must be an existing .gguf file, but {model!r} does not exist"))
        elif not PROVIDER_MODEL_PATTERN.match(model) and not Path(model).is_file():
            problems.append(at(f"lm.{role}.model", "must be 'embedded' (or 'embedded-1.5b'), a .gguf path or "
                                                   f"provider/model (e.g. 'openai/gpt-4o-mini'), but got {model!r}"))
    return problems


def import_object(spec: str) -> Any:
    """The object a ``package.module:attribute`` string names (importing the module runs its code)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr or not IMPORT_SPEC.match(spec):
        raise ValueError("expected the form package.module:name")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------------------------- data
def load_data(config: PipelineConfig) -> Any:
    """The run's :class:`dspy_icl_opt.programs.Task` (train/val/test, metric, input keys)."""
    from dspy_icl_opt.programs import load_task

    data = config.data
    seed = config.seed if data.seed is None else data.seed
    if data.task:
        try:
            return load_task(data.task, seed=seed, train_size=data.train_size, val_size=data.val_size,
                             test_size=data.test_size)
        except ValueError as exc:
            raise ConfigError(at("data", str(exc))) from None
    if data.path:
        rows, name = _read_file(Path(data.path)), Path(data.path).stem
    else:
        rows, name = _read_hub(data), str(data.hub).replace("/", "_")
    return rows_to_task(rows, data, seed=seed, name=name)


def _read_file(path: Path) -> list[dict[str, Any]]:
    import datasets

    builder = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}[path.suffix.lower()]
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train").to_list()
    except Exception as exc:  # noqa: BLE001 - any parse failure is the file's problem
        raise ConfigError(at("data.path", f"could not read {str(path)!r} as {builder}: {exc}")) from None
    finally:
        datasets.enable_progress_bars()


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (honours ``HF_ENDPOINT``)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _read_hub(data: DataConfig) -> list[dict[str, Any]]:
    import datasets

    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    if not offline and not hub_reachable():
        raise ConfigError(at("data.hub", f"the Hugging Face hub is not reachable from here, so {data.hub!r} cannot "
                                         "be downloaded. Run where the hub is reachable, or save the data as a "
                                         "JSON/JSONL/CSV/Parquet file and give it as data.path"))
    logger.info("Loading {} ({}, split {}) from the hub", data.hub, data.subset or "default", data.split)
    try:
        return datasets.load_dataset(data.hub, data.subset, split=data.split).to_list()
    except ConnectionError as exc:
        raise ConfigError(at("data.hub", f"the Hugging Face hub is not reachable ({exc})")) from None
    except Exception as exc:  # noqa: BLE001 - unknown dataset, bad subset or split
        raise ConfigError(at("data.hub", f"could not load {data.hub!r}: {type(exc).__name__}: {exc}")) from None


def rows_to_task(rows: list[Mapping[str, Any]], data: DataConfig, *, seed: int, name: str) -> Any:
    """Map, check, shuffle and split rows into a :class:`dspy_icl_opt.programs.Task`."""
    from dspy_icl_opt.programs import Task, choice_match, exact_match

    if not rows:
        raise ConfigError(at("data", "the data source has no rows"))
    fields = dict(data.fields) or _default_fields(rows[0])
    mapped = [_map_row(row, fields, i) for i, row in enumerate(rows)]
    multiple_choice = all(isinstance(r.get(CHOICES), (list, tuple)) and r.get(CHOICES) for r in mapped)
    input_keys = _input_keys(mapped[0], data, multiple_choice)
    labels = _label_keys(mapped[0], input_keys)
    examples = [_example(r, input_keys, labels, multiple_choice, i) for i, r in enumerate(mapped)]
    random.Random(seed).shuffle(examples)
    train, val, test = _split(examples, data)
    return Task(name=name, description=f"loaded from {data.path or data.hub}", train=train, val=val, test=test,
                metric=choice_match if multiple_choice else exact_match, input_keys=input_keys,
                multiple_choice=multiple_choice)


def _default_fields(row: Mapping[str, Any]) -> dict[str, str]:
    """No ``data.fields``: every column as it is, except a ``label``-like column that stands for ``answer``."""
    if ANSWER in row:
        return {}
    label = next((c for c in LABEL_COLUMNS if c in row), None)
    if label is None:
        return {}
    logger.info("Column {!r} is the gold answer (field `answer`); map it otherwise with data.fields", label)
    return {**{c: c for c in row if c != label}, ANSWER: label}


def _map_row(row: Mapping[str, Any], fields: Mapping[str, str], index: int) -> dict[str, Any]:
    if not fields:
        return dict(row)
    out = {}
    for field, column in fields.items():
        if column not in row:
            raise ConfigError(at(f"data.fields.{field}", f"must name a column of the data {sorted(row)}, "
                                                         f"but got {column!r} (row {index})"))
        out[field] = row[column]
    return out


def _input_keys(row: Mapping[str, Any], data: DataConfig, multiple_choice: bool) -> tuple[str, ...]:
    if data.input_keys:
        keys = tuple(data.input_keys)
    elif QUESTION in row:
        keys = (QUESTION,)
    else:
        keys = tuple(k for k in row if k not in (ANSWER, CHOICES, *LABEL_COLUMNS))
    if multiple_choice and OPTIONS not in keys:
        keys = (*keys, OPTIONS)
    missing = [k for k in keys if k not in row and not (k == OPTIONS and multiple_choice)]
    if missing or not keys:
        raise ConfigError(at("data.input_keys", f"must be fields of the examples {sorted(row)}, but got "
                                                f"{list(keys)}"))
    return keys


def _label_keys(row: Mapping[str, Any], input_keys: tuple[str, ...]) -> tuple[str, ...]:
    """The examples' gold fields: what is neither an input nor the choices."""
    labels = tuple(k for k in row if k not in input_keys and k not in (CHOICES, OPTIONS))
    if not labels:
        raise ConfigError(at("data.fields", f"the examples need a gold-answer field besides their inputs "
                                            f"{list(input_keys)}, but have {sorted(row)}; name the label column "
                                            f"`answer` (or one of {list(LABEL_COLUMNS)}), or map it onto the "
                                            "program's output field with fields: {answer: <column>}"))
    return labels


def _example(row: Mapping[str, Any], input_keys: tuple[str, ...], labels: tuple[str, ...], multiple_choice: bool,
             index: int) -> dspy.Example:
    from dspy_icl_opt.programs import format_options

    fields = {k: ("" if v is None else v if k == CHOICES else str(v)) for k, v in row.items()}
    if multiple_choice:
        fields[CHOICES] = [str(c) for c in row[CHOICES]]
        fields[OPTIONS] = format_options(fields[CHOICES])
    for label in labels:
        if row.get(label) is None:
            raise ConfigError(at("data", f"row {index} has no `{label}` value"))
    return dspy.Example(**fields).with_inputs(*input_keys)


def program_fields(program: dspy.Module) -> tuple[list[str], list[str]]:
    """``(inputs the program cannot do without, fields its predictors output)`` (no LM call)."""
    from dspy_icl_opt.search.base import _required_inputs

    outputs: list[str] = []
    for _, predictor in program.named_predictors():
        outputs += [f for f in predictor.signature.output_fields if f not in outputs]
    return _required_inputs(program), outputs


def check_program_fields(program: dspy.Module, task: Any, metric: Callable[..., Any]) -> None:
    """The examples fit the program: its inputs are there, and their gold field is one it outputs (no LM call).

    Raises:
        ConfigError: naming the field and how to map it; otherwise every example would fail, or score 0.
    """
    from dspy_icl_opt.programs import choice_match, exact_match

    examples = [*task.train, *task.val, *task.test]
    if not examples:
        return
    first = examples[0]
    inputs = sorted(first.inputs().keys())
    labels = [k for k in first.labels().keys() if k not in (CHOICES, OPTIONS)]
    required, outputs = program_fields(program)
    missing = [k for k in required if k not in inputs]
    if missing:
        raise ConfigError(at("data.fields", f"the program's input field(s) {missing} must be inputs of the "
                                            f"examples, but their inputs are {inputs}; map a column onto each: "
                                            f"fields: {{{missing[0]}: <column>, ...}} (or set data.input_keys)"))
    if outputs and not set(labels) & set(outputs):
        raise ConfigError(at("data.fields", f"the examples' gold field(s) {labels} must be output(s) of the "
                                            f"program {outputs}, but none is: the metric would compare a field "
                                            "the program never writes and score 0 on every example. Map the "
                                            f"label column onto an output: fields: {{{outputs[-1]}: <column>}}"))
    if metric in (exact_match, choice_match) and not (ANSWER in outputs and ANSWER in labels):
        raise ConfigError(at("metric", f"{metric.__name__} compares the `{ANSWER}` fields of the example and the "
                                       f"prediction, but the program outputs {outputs} and the examples hold "
                                       f"{labels}. Map the label column onto `{ANSWER}` (fields: {{{ANSWER}: "
                                       "<column>}) with a program that outputs it, or name your own metric "
                                       "(pkg.module:function)"))


def _split(examples: list[dspy.Example], data: DataConfig) -> tuple[list, list, list]:
    total = len(examples)
    train = data.train_size if data.train_size is not None else max(1, min(DEFAULT_TRAIN, total // 3))
    val = data.val_size if data.val_size is not None else min(DEFAULT_VAL, total // 3)
    rest = total - train - val
    test = data.test_size if data.test_size is not None else max(0, min(DEFAULT_TEST_CAP, rest))
    if train + val + test > total:
        raise ConfigError(at("data", f"train_size + val_size + test_size must be at most the {total} examples, "
                                     f"but got {train} + {val} + {test} = {train + val + test}"))
    return examples[:train], examples[train:train + val], examples[train + val:train + val + test]


# ------------------------------------------------------------------------ program/metric
def build_program(config: PipelineConfig, task: Any) -> dspy.Module:
    """The program to optimize: a bundled one for ``task``, or a user factory called with its args."""
    from dspy_icl_opt.programs import make_program
    from dspy_icl_opt.programs.programs import PROGRAM_NAMES

    spec = config.program
    try:
        if spec.name in PROGRAM_NAMES:
            program = make_program(spec.name, task, **spec.args)
        else:
            factory = import_object(spec.name)
            program = factory(**_factory_kwargs(factory, spec.args, task))
    except (TypeError, ValueError) as exc:
        raise ConfigError(at("program.args", f"{spec.name} rejected its arguments: {exc}")) from None
    if not isinstance(program, dspy.Module):
        raise ConfigError(at("program.name", f"must build a dspy.Module, but {spec.name} returned "
                                             f"{type(program).__name__}"))
    return program


def _factory_kwargs(factory: Callable[..., Any], args: Mapping[str, Any], task: Any) -> dict[str, Any]:
    kwargs = dict(args)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return kwargs
    if "task" in params and "task" not in kwargs:
        kwargs["task"] = task
    if "input_keys" in params and "input_keys" not in kwargs:
        kwargs["input_keys"] = task.input_keys
    return kwargs


def resolve_metric(config: PipelineConfig, task: Any) -> Callable[..., Any]:
    """The metric named in the config, else the task's own."""
    from dspy_icl_opt import programs

    if config.metric is None:
        return task.metric
    if config.metric in METRICS:
        return getattr(programs, config.metric)
    return import_object(config.metric)
