"""The run journal: an append-only JSONL file of every LM-dependent result of a search.

Two kinds of record: ``score`` (one program state on one example: score, prediction, trace, cost)
and ``ask`` (one answer of the prompt model to one meta-prompt, by a deterministic key). A resumed
run re-executes the search from its seed; each result already in the journal is replayed instead
of asking the LM again, and its original cost is charged once, so the resumed run spends and
decides exactly what an uninterrupted run would have, with no repeated LM call.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

from dspy_icl_opt._log import logger
from dspy_icl_opt.search.budget import Cost

JOURNAL_FILE = "journal.jsonl"


class Journal:
    """Thread-safe JSONL journal; in memory only when ``path`` is None."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], dict[str, Any]] = {}
        self._uncharged: set[tuple[str, str]] = set()
        self._torn_tail = False
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        bad = 0
        text = path.read_bytes().decode("utf-8", errors="replace")
        # A crash can cut the last line short: the next record must start on a line of its own.
        self._torn_tail = bool(text) and not text.endswith("\n")
        # records end in "\n" only: str.splitlines() also breaks at U+2028, U+2029 and U+0085, which a record
        # written with ensure_ascii=False may hold inside a string (the record was then skipped and its work redone)
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            problem = None
            try:
                record = json.loads(line)
                problem = _problem(record)
            except json.JSONDecodeError:
                problem = "not valid JSON (cut short by a crash?)"
            if problem is not None:
                bad += 1  # that work is simply redone
                logger.warning("Journal {} line {}: {}; skipped (its work is redone)", path, number, problem)
                continue
            key = (record["kind"], record["key"])
            self._records[key] = record
            self._uncharged.add(key)
        logger.info("Journal {}: {} records to replay ({} unreadable lines skipped)", path, len(self._records), bad)

    def __len__(self) -> int:
        return len(self._records)

    def get(self, kind: str, key: str) -> tuple[dict[str, Any] | None, Cost | None]:
        """The record and, the first time a replayed record is read, the cost still to charge."""
        with self._lock:
            record = self._records.get((kind, key))
            if record is None:
                return None, None
            if (kind, key) in self._uncharged:
                self._uncharged.discard((kind, key))
                return record, record_cost(record)
            return record, None

    def peek(self, kind: str, key: str) -> tuple[dict[str, Any] | None, bool]:
        """The record and whether it is a replayed one not charged yet, without charging it."""
        with self._lock:
            return self._records.get((kind, key)), (kind, key) in self._uncharged

    def charge_all(self, kinds: tuple[str, ...] = ("score", "ask")) -> dict[str, Cost]:
        """Mark the replayed records of ``kinds`` charged and return their summed cost per kind: for a resume
        that will not read them all back (a stored study continues instead of re-running its trials), so the
        work they stand for is charged once, up front. Other kinds (``faults``, say) replay as before."""
        totals: dict[str, Cost] = {}
        with self._lock:
            for kind, key in sorted(k for k in self._uncharged if k[0] in kinds):
                cost = record_cost(self._records[(kind, key)])
                totals.setdefault(kind, Cost()).add(cost.calls, cost.tokens)
                self._uncharged.discard((kind, key))
        return totals

    def put(self, kind: str, key: str, record: dict[str, Any]) -> None:
        record = {"kind": kind, "key": key, **record}
        line = json.dumps(record, ensure_ascii=False, default=str) if self.path is not None else ""
        with self._lock:
            self._records[(kind, key)] = record
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(("\n" if self._torn_tail else "") + line + "\n")
                self._torn_tail = False


def cost_entry(cost: Cost) -> dict[str, int]:
    """A record's ``cost`` field: the calls and tokens its work cost (read back by :func:`record_cost`)."""
    return {"calls": cost.calls, "tokens": cost.tokens}


def record_cost(record: dict[str, Any] | None) -> Cost:
    """The calls and tokens a journal record says its work cost (none when it has no ``cost``)."""
    cost = (record or {}).get("cost") or {}
    return Cost(int(cost.get("calls", 0)), int(cost.get("tokens", 0)))


def _problem(record: Any) -> str | None:
    """Why a journal line cannot be replayed, or None when it can."""
    if not isinstance(record, dict):
        return f"a record must be a JSON object, but got {type(record).__name__}"
    if not isinstance(record.get("kind"), str) or not isinstance(record.get("key"), str):
        return "a record needs string `kind` and `key` fields"
    if record["kind"] == "score":
        score = record.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            return f"a score record needs a finite numeric `score`, but got {score!r}"
    if record["kind"] == "ask" and not isinstance(record.get("outputs"), (dict, type(None))):
        return f"an ask record needs `outputs` as a mapping or null, but got {type(record.get('outputs')).__name__}"
    cost = record.get("cost")
    if cost is not None and (not isinstance(cost, dict) or not all(
            isinstance(cost.get(k, 0), int) and not isinstance(cost.get(k, 0), bool) for k in ("calls", "tokens"))):
        return f"`cost` must be a mapping of integer calls and tokens, but got {cost!r}"
    return None
