"""The optimization report: results are data, saved as JSON beside the compiled program after every step."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dspy_icl_opt.search.budget import Budget, Spent

REPORT_FILE = "report.json"
PROGRAM_FILE = "program.json"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class CandidateRecord(BaseModel):
    """One program state an optimizer proposed, with where it came from and how it scored."""

    model_config = ConfigDict(extra="allow")

    id: int
    step: int
    origin: str = Field(description="what produced it: seed, proposal, edit, paraphrase, refinement ...")
    predictor: str | None = Field(default=None, description="the predictor it changed, if one")
    parent: int | None = None
    state: dict[str, Any] = Field(description="ProgramState.to_dict()")
    scores: dict[str, float] = Field(default_factory=dict, description="mean score per split/minibatch label")
    n_scored: dict[str, int] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)


class Counters(BaseModel):
    """Failures handled during the run (never raised)."""

    metric_errors: int = 0
    program_errors: int = 0
    unparsable_answers: int = 0
    prompt_model_errors: int = 0
    task_parse_failures: int = 0
    lm_faults: int = Field(0, description="units of work run again because an LM did not answer (never scored)")


class OptimizationReport(BaseModel):
    """Everything a run did, in order; rewritten atomically after every step.

    Example:
        >>> r = OptimizationReport(optimizer="OPRO", params={}, seed=0)
        >>> r.optimizer
        'OPRO'
    """

    model_config = ConfigDict(extra="forbid")

    optimizer: str
    params: dict[str, Any]
    seed: int
    version: int = 1
    started_at: str = Field(default_factory=_now)
    updated_at: str = Field(default_factory=_now)
    steps_completed: int = 0
    candidates: list[CandidateRecord] = Field(default_factory=list)
    best_candidate: int | None = None
    best_state: dict[str, Any] | None = None
    best_scores: dict[str, float] = Field(default_factory=dict)
    budget: Budget = Field(default_factory=Budget)
    fingerprint: dict[str, str] = Field(default_factory=dict, description="data, program, models and metric")
    spent: dict[str, Spent] = Field(default_factory=lambda: {"task": Spent(), "prompt": Spent()})
    stopped_by_budget: bool = False
    finished: bool = False
    interrupted: bool = Field(False, description="stopped because an LM stopped answering; resume to go on")
    timings: dict[str, float] = Field(default_factory=dict)
    counters: Counters = Field(default_factory=Counters)
    extra: dict[str, Any] = Field(default_factory=dict, description="strategy-specific records")

    def candidate(self, candidate_id: int) -> CandidateRecord:
        for record in self.candidates:
            if record.id == candidate_id:
                return record
        raise KeyError(f"No candidate {candidate_id} in the report.")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON atomically (a crash never leaves half a file)."""
        self.updated_at = _now()
        return atomic_write_text(Path(path), self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OptimizationReport:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


def current_umask() -> int:
    """The process umask, read without changing it where the OS tells it (Linux), else by setting it back at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 less the user's umask), not the
    0600 of the temporary file, so results are as readable as the program DSPy saves beside them.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
