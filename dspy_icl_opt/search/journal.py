"""The run journal: an append-only JSONL file of every LM-dependent result of a search.

Two kinds of record: ``score`` (one program state on one example: score, prediction, trace, cost)
and ``ask`` (one answer of the prompt model to one meta-prompt, by a deterministic key). A resumed
run re-executes the search from its seed; each result already in the journal is replayed instead
of asking the LM again, and its original cost is charged once, so the resumed run spends and
decides exactly what an uninterrupted run would have, with no repeated LM call.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from loguru import logger

from dspy_icl_opt.search.budget import Cost

JOURNAL_FILE = "journal.jsonl"


class Journal:
    """Thread-safe JSONL journal; in memory only when ``path`` is None."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], dict[str, Any]] = {}
        self._uncharged: set[tuple[str, str]] = set()
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        bad = 0
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                    key = (record["kind"], record["key"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    bad += 1  # a line cut short by a crash: that work is simply redone
                    continue
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
                cost = record.get("cost") or {}
                return record, Cost(int(cost.get("calls", 0)), int(cost.get("tokens", 0)))
            return record, None

    def put(self, kind: str, key: str, record: dict[str, Any]) -> None:
        record = {"kind": kind, "key": key, **record}
        line = json.dumps(record, ensure_ascii=False, default=str) if self.path is not None else ""
        with self._lock:
            self._records[(kind, key)] = record
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
