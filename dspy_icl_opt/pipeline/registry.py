"""The optimizers a run can name: ours and DSPy's, imported lazily by module path.

A missing module (a strategy not installed or not written yet) only makes its own name fail,
with a clear message, never the CLI. :class:`~dspy_icl_opt.optimizers.sequential.Sequential` is not
listed: it takes optimizer objects, and a config's ``optimize:`` list is already a chain (each
step with its own log_dir, resumable step by step). Every step runs through :func:`run_step`, which gives all
optimizers one shape: our strategies meter and journal themselves; DSPy's are run with both LMs
wrapped in :class:`~dspy_icl_opt.search.budget.MeteredLM` (counting only: their budgets are their
own knobs) and get an :class:`~dspy_icl_opt.search.report.OptimizationReport` written for them.

Example:
    >>> lookup("MIPROv2").name, lookup("labeled").family
    ('mipro', 'dspy')
"""

from __future__ import annotations

import importlib
import inspect
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dspy

from dspy_icl_opt._log import logger
from dspy_icl_opt.lm.soft_programs import save_program
from dspy_icl_opt.pipeline.errors import ConfigError, at
from dspy_icl_opt.search.budget import Budget, BudgetMeter, MeteredLM, unwrap_lm
from dspy_icl_opt.search.faults import LMFault, RunInterrupted
from dspy_icl_opt.search.placement import PlacementAdapter
from dspy_icl_opt.search.report import REPORT_FILE, CandidateRecord, OptimizationReport
from dspy_icl_opt.search.surgery import read_state

if TYPE_CHECKING:
    from dspy_icl_opt.pipeline.config import PipelineConfig, StepConfig

#: Parameters the pipeline sets itself; a step's ``params`` may not.
RESERVED_PARAMS = frozenset({"metric", "task_model", "prompt_model", "reflection_lm", "budget", "log_dir",
                             "progress", "student", "trainset", "valset", "teacher"})
#: Exceptions that optimizer constructors raise for bad settings (DSPy's use asserts).
SETTING_ERRORS = (ValueError, TypeError, AssertionError)


@dataclass(frozen=True)
class OptimizerEntry:
    """One registry name.

    Args:
        name: the canonical name used in configs.
        target: ``"package.module:ClassName"``.
        family: ``"ours"`` (an ICLOptimizer) or ``"dspy"``.
        summary: one line for ``--help``.
        defaults: parameters used unless the step sets them (small, for quick runs).
        displaces: a parameter the step sets -> defaults it removes (e.g. GEPA's ``auto`` removes the
            default ``max_metric_calls``, as only one of them may be set).
        lm_params: role (``task``/``prompt``) -> the constructor keyword taking that LM.
        takes_metric: whether the constructor takes the metric.
        gepa_metric: wrap the metric in GEPA's five-argument form.
    """

    name: str
    target: str
    family: Literal["ours", "dspy"]
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    displaces: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    lm_params: Mapping[str, str] = field(default_factory=dict)
    takes_metric: bool = True
    gepa_metric: bool = False

    def load(self) -> type:
        module_name, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module_name), attr)

    @property
    def class_name(self) -> str:
        return self.target.partition(":")[2]

    def merged_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        dropped = {d for key in params for d in self.displaces.get(key, ())}
        return {**{k: v for k, v in self.defaults.items() if k not in dropped}, **params}


REGISTRY: dict[str, OptimizerEntry] = {e.name: e for e in (
    OptimizerEntry("opro", "dspy_icl_opt.optimizers.opro:OPRO", "ours",
                   "OPRO: the prompt model proposes instructions from a scored trajectory"),
    OptimizerEntry("apo", "dspy_icl_opt.optimizers.apo:APO", "ours",
                   "APO/ProTeGi: textual gradients from errors, beam search over edited instructions"),
    OptimizerEntry("abo", "dspy_icl_opt.optimizers.abo:ABO", "ours",
                   "ABO: step-by-step procedures, a worked demonstration, the failing step found and refined"),
    OptimizerEntry("promptagent", "dspy_icl_opt.optimizers.promptagent:PromptAgent", "ours",
                   "PromptAgent: Monte Carlo tree search over prompts rewritten from error analyses"),
    OptimizerEntry("ape", "dspy_icl_opt.optimizers.ape:APE", "ours",
                   "APE: instructions induced from demonstrations, scored by a UCB bandit"),
    OptimizerEntry("iterative_ape", "dspy_icl_opt.optimizers.ape:IterativeAPE", "ours",
                   "Iterative-APE: APE, then variations of the best instructions for further rounds"),
    OptimizerEntry("demos", "dspy_icl_opt.demos:DemoSelector", "ours",
                   "DemoSelector: Optuna search over few-shot demonstrations (k curve, influence)"),
    OptimizerEntry("joint", "dspy_icl_opt.optimizers.joint:InstructionDemoSearch", "ours",
                   "InstructionDemoSearch: instruction x demo set searched with Optuna (MIPROv2 drop-in, budgeted)"),
    OptimizerEntry("soft_prompt", "dspy_icl_opt.optimizers.soft_prompt:SoftPromptTuner", "ours",
                   "SoftPromptTuner: a PEFT soft prompt (prompt/prefix/p-tuning) for a local task model, "
                   "beside the hard prompt (needs the soft extra)"),
    OptimizerEntry("labeled", "dspy.teleprompt:LabeledFewShot", "dspy",
                   "DSPy LabeledFewShot: k labeled training examples as demos", defaults={"k": 4},
                   takes_metric=False),
    OptimizerEntry("bootstrap", "dspy.teleprompt:BootstrapFewShot", "dspy",
                   "DSPy BootstrapFewShot: demos from the program's own successful traces",
                   defaults={"max_bootstrapped_demos": 2, "max_labeled_demos": 2}),
    OptimizerEntry("random_search", "dspy.teleprompt:BootstrapFewShotWithRandomSearch", "dspy",
                   "DSPy BootstrapFewShotWithRandomSearch: several bootstrapped demo sets, best on val",
                   defaults={"num_candidate_programs": 2, "max_bootstrapped_demos": 2, "max_labeled_demos": 2}),
    OptimizerEntry("mipro", "dspy.teleprompt:MIPROv2", "dspy",
                   "DSPy MIPROv2: proposed instructions and demo sets searched with Optuna",
                   defaults={"auto": None, "num_candidates": 3, "num_trials": 4, "max_bootstrapped_demos": 2,
                             "max_labeled_demos": 2},
                   displaces={"auto": ("num_candidates", "num_trials")},
                   lm_params={"task": "task_model", "prompt": "prompt_model"}),
    OptimizerEntry("copro", "dspy.teleprompt:COPRO", "dspy",
                   "DSPy COPRO: coordinate ascent over proposed instructions",
                   defaults={"breadth": 2, "depth": 1}, lm_params={"prompt": "prompt_model"}),
    OptimizerEntry("gepa", "dspy.teleprompt:GEPA", "dspy",
                   "DSPy GEPA: reflective instruction evolution with a Pareto front",
                   defaults={"max_metric_calls": 60},
                   displaces={"auto": ("max_metric_calls",), "max_full_evals": ("max_metric_calls",)},
                   lm_params={"prompt": "reflection_lm"}, gepa_metric=True),
)}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_ALIASES: dict[str, str] = {**{_norm(e.name): e.name for e in REGISTRY.values()},
                            **{_norm(e.class_name): e.name for e in REGISTRY.values()},
                            "demoselection": "demos", "protegi": "apo",
                            "instructiondemos": "joint", "jointsearch": "joint", "bootstrapfewshotrs": "random_search",
                            "prompttuning": "soft_prompt"}


def lookup(name: str) -> OptimizerEntry:
    """The entry for a name, class name or alias (case, ``-`` and ``_`` ignored).

    Raises:
        KeyError: with the known names.
    """
    key = _ALIASES.get(_norm(str(name)))
    if key is None:
        raise KeyError(f"unknown optimizer {name!r}; expected one of {sorted(REGISTRY)}")
    return REGISTRY[key]


def available() -> dict[str, str | None]:
    """Each registry name -> ``None`` if importable, else why not."""
    out: dict[str, str | None] = {}
    for name, entry in REGISTRY.items():
        try:
            entry.load()
            out[name] = None
        except Exception as exc:  # noqa: BLE001 - an absent strategy is reported, not raised
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


# ---------------------------------------------------------------------------- building
class _PlaceholderLM(dspy.BaseLM):
    """Stands in for the LMs while settings are validated; it is never called."""

    def __init__(self) -> None:
        super().__init__(model="placeholder/validation")

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("The validation placeholder LM must not be called.")


@dataclass
class Built:
    """A constructed optimizer and what its ``compile`` call needs beyond the data."""

    optimizer: Any
    compile_kwargs: dict[str, Any]
    params: dict[str, Any]


def _accepts(func: Callable[..., Any], name: str) -> bool:
    params = inspect.signature(func).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _named_params(func: Callable[..., Any]) -> tuple[set[str], bool]:
    params = inspect.signature(func).parameters
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}
    return named, any(p.kind is p.VAR_KEYWORD for p in params.values())


#: Constructor keywords that set the prompt model's sampling temperature (ours: ``temperature``; COPRO, MIPROv2:
#: ``init_temperature``; OPRO takes COPRO's name too).
TEMPERATURE_PARAMS = ("temperature", "init_temperature")


def temperature_param(entry: OptimizerEntry) -> str | None:
    """The keyword through which ``entry``'s optimizer sets the prompt model's temperature, if it has one."""
    names, _ = _named_params(entry.load().__init__)
    return next((name for name in TEMPERATURE_PARAMS if name in names), None)


def step_params(entry: OptimizerEntry, params: Mapping[str, Any], prompt_temperature: float | None,
                where: str) -> dict[str, Any]:
    """A step's params with the configured prompt-model temperature applied (no LM call).

    DSPy's optimizers sample their prompt model at a temperature of their own (COPRO 1.4 ...), which
    would silently override ``lm.prompt.temperature``; ours use the prompt LM's own temperature, but a
    prompt LM passed in ready-made (``run_pipeline(prompt_lm=...)``) need not carry the configured one.
    So the temperature the user wrote is passed to every step that has one, and a step that sets
    another one is refused.

    Raises:
        ConfigError: the step's params set a temperature other than ``lm.prompt.temperature``.
    """
    params = dict(params)
    if prompt_temperature is None:
        return params
    name = temperature_param(entry)
    if name is None:
        return params
    for key in TEMPERATURE_PARAMS:
        given = params.get(key)
        if given is not None and (not isinstance(given, (int, float)) or float(given) != prompt_temperature):
            raise ConfigError(at(f"{where}.params.{key}", f"must equal lm.prompt.temperature ({prompt_temperature}) "
                                                          f"when both are set, but got {given!r}. The prompt model "
                                                          "samples at one temperature: set it in one place"))
    if not any(key in params for key in TEMPERATURE_PARAMS):
        params[name] = prompt_temperature
    return params


def build_optimizer(entry: OptimizerEntry, params: Mapping[str, Any], *, metric: Callable[..., Any],
                    task_lm: dspy.BaseLM | None, prompt_lm: dspy.BaseLM | None, budget: Budget, seed: int,
                    num_threads: int, log_dir: Path | None, progress: bool = True) -> Built:
    """Construct the optimizer of ``entry`` (no LM call). Raises ValueError/TypeError/AssertionError."""
    cls = entry.load()
    reserved = sorted(RESERVED_PARAMS & set(params))
    if reserved:
        raise TypeError(f"`{reserved[0]}` is set by the pipeline (metric, LMs, budget, log_dir come from the "
                        "config), but got it in params. Remove it from params.")
    if entry.family == "ours":
        kwargs = dict(params)
        kwargs.setdefault("seed", seed)
        kwargs.setdefault("num_threads", num_threads)
        if _accepts(cls.__init__, "progress"):
            kwargs["progress"] = progress
        optimizer = cls(metric, task_model=task_lm, prompt_model=prompt_lm, budget=budget, log_dir=log_dir,
                        **kwargs)
        return Built(optimizer, {}, dict(params))
    return _build_dspy(entry, cls, entry.merged_params(params), metric=metric, task_lm=task_lm,
                       prompt_lm=prompt_lm, seed=seed, num_threads=num_threads, log_dir=log_dir)


def _build_dspy(entry: OptimizerEntry, cls: type, params: dict[str, Any], *, metric: Callable[..., Any],
                task_lm: dspy.BaseLM | None, prompt_lm: dspy.BaseLM | None, seed: int, num_threads: int,
                log_dir: Path | None) -> Built:
    ctor_names, _ = _named_params(cls.__init__)
    compile_names, _ = _named_params(cls.compile)
    compile_names -= {"student", "trainset", "valset", "teacher"}
    ctor_kwargs, compile_kwargs = {}, {}
    for key, value in params.items():
        if key in ctor_names:
            ctor_kwargs[key] = value
        elif key in compile_names:
            compile_kwargs[key] = value
        else:
            known = sorted((ctor_names | compile_names) - RESERVED_PARAMS - {"metric"})
            raise TypeError(f"`{key}` is not a parameter of {cls.__name__} (expected one of {known}), "
                            f"but got {key}={value!r}.")
    lms = {"task": task_lm, "prompt": prompt_lm}
    ctor_kwargs.update({kw: lms[role] for role, kw in entry.lm_params.items()})
    for key, value in (("seed", seed), ("num_threads", num_threads), ("log_dir", str(log_dir) if log_dir else None)):
        if key in ctor_names and key not in ctor_kwargs and value is not None:
            ctor_kwargs[key] = value
    if entry.takes_metric:
        ctor_kwargs["metric"] = _gepa_metric(metric) if entry.gepa_metric else metric
    return Built(cls(**ctor_kwargs), compile_kwargs, params)


def _gepa_metric(metric: Callable[..., Any]) -> Callable[..., Any]:
    def gepa_metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
        return metric(gold, pred, trace)

    return gepa_metric


# -------------------------------------------------------------------------- validation
def check_steps(steps: list[StepConfig], where: str, config: PipelineConfig) -> list[str]:
    """Problems with the optimizer names and parameters of ``steps`` (each optimizer is built, no LM call)."""
    problems = []
    for i, step in enumerate(steps):
        prefix = f"{where}[{i}]"
        try:
            entry = lookup(step.optimizer)
        except KeyError as exc:
            problems.append(at(f"{prefix}.optimizer", exc.args[0]))
            continue
        try:
            build_optimizer(entry, step.params, metric=_placeholder_metric, task_lm=_PlaceholderLM(),
                            prompt_lm=_PlaceholderLM(), budget=config.step_budget(step), seed=config.seed,
                            num_threads=config.num_threads, log_dir=None, progress=False)
        except ImportError as exc:
            problems.append(at(f"{prefix}.optimizer", f"{entry.name!r} is not available here ({exc})"))
        except SETTING_ERRORS as exc:
            problems.append(param_problem(prefix, entry, step.params, exc))
    return problems


def _placeholder_metric(example: Any, prediction: Any, trace: Any = None) -> float:
    return 0.0


def param_problem(prefix: str, entry: OptimizerEntry, params: Mapping[str, Any], exc: BaseException) -> str:
    """An optimizer's complaint about its settings as ``prefix.params.name: message``."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    match = re.match(r"^`(\w+)` (.*)$", message)
    if match:
        return at(f"{prefix}.params.{match.group(1)}", match.group(2))
    match = re.search(r"unexpected (?:keyword )?argument '?(\w+)'?", message)
    if match:
        return at(f"{prefix}.params.{match.group(1)}", f"is not a parameter of {entry.class_name} ({message})")
    named = [k for k in params if re.search(rf"\b{re.escape(k)}\b", message, re.IGNORECASE)]
    if named:
        return at(f"{prefix}.params.{named[0]}", message)
    return at(f"{prefix}.params", f"{entry.class_name} rejected its settings: {message}")


# ----------------------------------------------------------------------------- running
@dataclass
class StepResult:
    """What one optimizer step produced."""

    program: dspy.Module
    report: OptimizationReport
    seconds: float


def run_step(entry: OptimizerEntry, params: Mapping[str, Any], *, student: dspy.Module,
             trainset: list[dspy.Example], valset: list[dspy.Example], metric: Callable[..., Any],
             task_lm: dspy.BaseLM, prompt_lm: dspy.BaseLM, budget: Budget, seed: int, num_threads: int,
             log_dir: Path, progress: bool = True, resume: bool | None = None) -> StepResult:
    """Run one optimizer on ``student``; the report and ``program.json`` end up in ``log_dir``."""
    started = time.perf_counter()
    if entry.family == "ours":
        built = build_optimizer(entry, params, metric=metric, task_lm=task_lm, prompt_lm=prompt_lm, budget=budget,
                                seed=seed, num_threads=num_threads, log_dir=log_dir, progress=progress)
        program = built.optimizer.compile(student, trainset=trainset, valset=valset, resume=resume,
                                          log_dir=log_dir)
        return StepResult(program, built.optimizer.report_, time.perf_counter() - started)
    meter = BudgetMeter(Budget())  # counting only: DSPy's optimizers are bounded by their own settings
    task = MeteredLM(unwrap_lm(task_lm), meter, "task")
    prompt = MeteredLM(unwrap_lm(prompt_lm), meter, "prompt")
    built = build_optimizer(entry, params, metric=metric, task_lm=task, prompt_lm=prompt, budget=budget, seed=seed,
                            num_threads=num_threads, log_dir=log_dir, progress=progress)
    try:
        program = _compile_dspy(built, student, trainset, valset, task)
    except LMFault as fault:  # DSPy's optimizers do not know faults: one that escapes stops the step
        raise RunInterrupted(fault.role, 1, str(fault.cause)) from fault
    meter.faults.check()  # an outage DSPy's optimizer swallowed (its Evaluate scores errors 0): no result
    seconds = time.perf_counter() - started
    report = _dspy_report(entry, built, student, program, meter, budget, seed, seconds)
    log_dir.mkdir(parents=True, exist_ok=True)
    report.save(log_dir / REPORT_FILE)
    save_program(program, log_dir)  # a soft prompt the student carried stays beside program.json
    return StepResult(program, report, seconds)


def _compile_dspy(built: Built, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example],
                  task_lm: MeteredLM) -> dspy.Module:
    copy = student.deepcopy()
    copy._compiled = False  # a chained step's input counts as a fresh student for DSPy
    kwargs = dict(built.compile_kwargs)
    compile_fn = built.optimizer.compile
    if "valset" in inspect.signature(compile_fn).parameters:
        kwargs["valset"] = valset
    if "minibatch_size" in inspect.signature(compile_fn).parameters and "minibatch_size" not in kwargs:
        kwargs["minibatch_size"] = max(1, min(35, len(valset)))  # MIPROv2 refuses a minibatch above the valset
    logger.info("{}: compiling with {} train / {} val examples", type(built.optimizer).__name__, len(trainset),
                len(valset))
    with dspy.context(lm=task_lm, adapter=PlacementAdapter()):
        return compile_fn(copy, trainset=trainset, **kwargs)


def _dspy_report(entry: OptimizerEntry, built: Built, student: dspy.Module, program: dspy.Module,
                 meter: BudgetMeter, budget: Budget, seed: int, seconds: float) -> OptimizationReport:
    initial, final = read_state(student), read_state(program)
    report = OptimizationReport(optimizer=type(built.optimizer).__name__, params=_jsonable(built.params), seed=seed,
                                budget=budget, finished=True, steps_completed=1)
    report.candidates = [CandidateRecord(id=0, step=0, origin="seed", state=initial.to_dict()),
                         CandidateRecord(id=1, step=1, origin="final", parent=0, state=final.to_dict())]
    report.best_candidate, report.best_state = 1, final.to_dict()
    report.spent = meter.snapshot()
    report.timings["elapsed_s"] = round(seconds, 3)
    over = [role for role in ("task", "prompt")
            if budget.call_cap(role) is not None and report.spent[role].calls > budget.call_cap(role)]
    report.extra.update({"family": entry.family, "budget_enforced": False, "over_budget": over})
    if over:
        logger.warning("{} spent more {} calls than the budget allows (DSPy's optimizers are only counted)",
                       report.optimizer, "/".join(over))
    return report


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def step_error(prefix: str, entry: OptimizerEntry, exc: BaseException) -> ConfigError:
    """A setting problem found when a step starts (e.g. resuming a run with other settings)."""
    return ConfigError(at(prefix, f"{entry.class_name}: {' '.join(str(exc).split())}"))
