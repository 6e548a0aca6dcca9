"""The declarative run description: a YAML or JSON file checked by a pydantic schema.

A file names the program, the data, the metric, the two LMs, the optimizer steps (applied in
order, each to the previous step's result), a budget, a seed and an output directory. Loading
checks everything that can be checked without an LM call (the schema, the optimizer names and
their parameters by building each optimizer, the metric and program import paths, the data
source), and reports every problem as ``path: expected ..., got ...``.

A config is as trusted as code: a ``pkg.module:factory`` program or ``pkg.module:function`` metric
is imported (running the module) and called. Nothing is imported until every other check passed,
so a rejected config runs no code of its own; never run a config you would not run as a script.

Relative ``data.path`` values are read relative to the config file; ``output`` relative to the
working directory.

Example:
    >>> cfg = parse_config({"data": {"task": "hyperbaton"}, "optimize": ["labeled"]})
    >>> cfg.optimize[0].optimizer, cfg.lm.task.model
    ('labeled', 'embedded')
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dspy_icl_opt.pipeline.errors import ConfigError, at
from dspy_icl_opt.search.budget import BUDGET_PRESETS, Budget

#: File suffixes read as YAML (anything else must be JSON).
YAML_SUFFIXES = (".yaml", ".yml")
#: Suffixes of local data files the loader understands.
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
#: Where a run writes when the config does not say.
DEFAULT_OUTPUT = "runs/latest"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LMSpec(_Strict):
    """One LM for :func:`dspy_icl_opt.lm.resolve_lm`; a bare string is shorthand for ``model``."""

    model: str = Field("embedded", description="'embedded' (or 'embedded-1.5b', the proposer extra), a .gguf path, "
                                               "or provider/model")
    temperature: float | None = Field(None, ge=0.0)
    max_tokens: int | None = Field(None, ge=1)
    cache: bool = True
    options: dict[str, Any] = Field(default_factory=dict, description="other resolve_lm keywords (n_ctx ...)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"model": value} if isinstance(value, str) else value


class LMConfig(_Strict):
    """The task model (runs the program) and the prompt model (writes instructions; default: the task model)."""

    task: LMSpec = Field(default_factory=LMSpec)
    prompt: LMSpec | None = None


class ProgramConfig(_Strict):
    """A bundled program name (``qa``, ``cot``, ``two_step``) or a ``pkg.module:factory`` import path."""

    name: str = "qa"
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class DataConfig(_Strict):
    """Exactly one source: a bundled ``task``, a local ``path`` (JSON/JSONL/CSV/Parquet) or a ``hub`` dataset."""

    task: str | None = None
    path: str | None = None
    hub: str | None = Field(None, description="a `datasets` hub name, e.g. 'gsm8k'")
    subset: str | None = Field(None, description="hub configuration name")
    split: str = Field("train", description="hub split to read (then cut into train/val/test)")
    fields: dict[str, str] = Field(default_factory=dict, description="example field -> source column")
    input_keys: list[str] | None = None
    train_size: int | None = Field(None, ge=1)
    val_size: int | None = Field(None, ge=0)
    test_size: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0, description="shuffle seed (default: the run's seed)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"path": value} if value.lower().endswith(DATA_SUFFIXES) else {"task": value}
        return value

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        given = [k for k in ("task", "path", "hub") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of `task`, `path` or `hub`, but got {given or 'none'}")
        return self


def _coerce_budget(value: Any) -> Any:
    if isinstance(value, str):
        if value not in BUDGET_PRESETS:
            raise ValueError(f"must be one of the presets {sorted(BUDGET_PRESETS)} or a mapping of caps "
                             f"(max_task_calls, max_prompt_calls, ...), but got {value!r}")
        return BUDGET_PRESETS[value]
    return value


class StepConfig(_Strict):
    """One optimizer step: a registry name (see ``dspy-icl-opt run --help``) and its parameters."""

    optimizer: str
    params: dict[str, Any] = Field(default_factory=dict)
    budget: Budget | None = Field(None, description="overrides the run's budget for this step")
    label: str | None = Field(None, description="names the step's directory (default: the optimizer)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"optimizer": value} if isinstance(value, str) else value

    @field_validator("budget", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        return _coerce_budget(value)

    def slug(self, index: int) -> str:
        text = self.label or self.optimizer
        return f"{index:02d}-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


class EvaluateConfig(_Strict):
    """Held-out evaluation around the optimization."""

    before: bool = True
    after: bool = True
    split: Literal["test", "val"] = "test"


class PipelineConfig(_Strict):
    """A whole run. See the module docstring; ``examples/configs/`` has one file per strategy."""

    name: str | None = None
    program: ProgramConfig = Field(default_factory=ProgramConfig)
    data: DataConfig
    metric: str | None = Field(None, description="exact_match, choice_match or pkg.module:function")
    lm: LMConfig = Field(default_factory=LMConfig)
    optimize: list[StepConfig] = Field(default_factory=list)
    bench: list[StepConfig] = Field(default_factory=list, description="competitors for `dspy-icl-opt bench`")
    budget: Budget | None = None
    seed: int = Field(0, ge=0)
    num_threads: int = Field(1, ge=1)
    output: str = DEFAULT_OUTPUT
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @field_validator("budget", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        return _coerce_budget(value)

    def step_budget(self, step: StepConfig) -> Budget:
        return step.budget or self.budget or Budget()

    def fingerprint(self) -> str:
        """A digest of what decides a run's results (not where it is written or how it is evaluated)."""
        data = self.model_dump(mode="json", exclude={"output", "bench", "name", "num_threads", "evaluate"})
        blob = json.dumps(data, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------ loading
def load_config(path: str | Path, *, check: bool = True) -> PipelineConfig:
    """Read, validate and (with ``check``) semantically check a YAML/JSON run description.

    Raises:
        ConfigError: every problem, each naming the field, what was expected and what was found.
    """
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror or exc}", source=source) from None
    data = _parse_text(text, path)
    try:
        config = parse_config(data, base_dir=path.resolve().parent, check=check)
    except ConfigError as exc:
        raise exc.with_source(source) from None
    return config


def parse_config(data: Any, *, base_dir: Path | None = None, check: bool = True) -> PipelineConfig:
    """Validate a mapping into a :class:`PipelineConfig` (and check it, see :func:`check_config`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"the config must be a mapping of fields (program, data, optimize ...), "
                          f"but got {type(data).__name__}")
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    if base_dir is not None and config.data.path and not Path(config.data.path).is_absolute():
        config.data.path = str((base_dir / config.data.path).resolve())
    if check:
        check_config(config)
    return config


def dump_config(config: PipelineConfig, path: str | Path | None = None, *, redact: bool = False) -> str:
    """The config as YAML text (written to ``path`` if given); loading it back gives an equal config.

    With ``redact`` (what a run writes into its output folder) secrets are replaced by ``***``: option
    values whose name says key, token, secret or password, and passwords inside URLs (storage ...).
    """
    data = config.model_dump(mode="json")
    text = yaml.safe_dump(redact_secrets(data) if redact else data, sort_keys=False, allow_unicode=True)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


_SECRET_NAME = re.compile(r"(api_?key|token|secret|password|passwd|credential)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(//[^:/@\s]+):[^@/\s]*@")
REDACTED = "***"


def redact_secrets(value: Any, name: str = "") -> Any:
    """A copy of ``value`` with secrets replaced by ``***`` (by key name, and passwords inside URLs)."""
    if isinstance(value, dict):
        return {k: redact_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_secrets(v, name) for v in value]
    if value is not None and _SECRET_NAME.search(name):
        return REDACTED
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\1:{REDACTED}@", value)
    return value


def check_config(config: PipelineConfig) -> None:
    """Checks beyond the schema, none of which calls an LM: optimizers, parameters, metric, program, data."""
    from dspy_icl_opt.pipeline.data import check_imports, check_sources
    from dspy_icl_opt.pipeline.registry import check_steps

    problems = check_sources(config)
    problems += check_steps(config.optimize, "optimize", config)
    problems += check_steps(config.bench, "bench", config)
    if problems:  # a rejected config imports nothing: its modules' code never runs
        raise ConfigError(problems)
    problems = check_imports(config)
    if problems:
        raise ConfigError(problems)


def _parse_text(text: str, path: Path) -> Any:
    source = str(path)
    if path.suffix.lower() in YAML_SUFFIXES:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"{where}not valid YAML ({problem})", source=source) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg}); "
                          f"use a .yaml/.yml suffix for YAML", source=source) from None


# ---------------------------------------------------------------------- error formatting
_EXPECTATIONS = {
    "missing": "is required",
    "int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "float_parsing": "must be a number",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false",
    "string_type": "must be a string", "dict_type": "must be a mapping", "list_type": "must be a list",
    "model_type": "must be a mapping", "model_attributes_type": "must be a mapping",
}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def format_validation_error(exc: ValidationError) -> list[str]:
    """Pydantic's errors as ``path: expected, got`` lines."""
    return [_format_one(err) for err in exc.errors(include_url=False)]


def _format_one(err: dict[str, Any]) -> str:
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx") or {}
    got = f", but got {err.get('input')!r}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        return at(_path(loc), f"must be {_BOUNDS[kind]} {bound}{got}")
    if kind == "value_error":
        return at(_path(loc), str(err["msg"]).removeprefix("Value error, "))
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        hint = f" (expected one of {allowed})" if allowed else ""
        return at(_path(loc), f"is not a known field{hint}{got}")
    if kind == "literal_error":
        return at(_path(loc), f"must be one of {ctx.get('expected', '?')}{got}")
    if kind == "missing":
        return at(_path(loc), "is required")
    message = _EXPECTATIONS.get(kind, str(err["msg"]).lower())
    return at(_path(loc), f"{message}{got}")


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-before", "function-after") or "[" in str(part):
            continue  # pydantic's validator tags, not fields
        else:
            out += f".{part}" if out else str(part)
    return out


def _allowed_fields(loc: tuple[Any, ...]) -> list[str] | None:
    model: type[BaseModel] = PipelineConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        nested = _model_in(field.annotation)
        if nested is None:
            return None
        model = nested
    return sorted(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
