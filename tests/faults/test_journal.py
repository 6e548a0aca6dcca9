"""Item 7: a torn last line does not swallow the next record; malformed records are skipped with a warning."""

from __future__ import annotations

import json

import pytest
from dspy_icl_opt.search.journal import Journal


@pytest.fixture
def warnings(caplog):
    caplog.set_level("WARNING", logger="dspy_icl_opt")

    class Messages:
        def __iter__(self):
            return iter([r.getMessage() for r in caplog.records if r.levelno >= 30])

        def __len__(self):
            return len(list(iter(self)))

        def __getitem__(self, i):
            return list(iter(self))[i]

    return Messages()


def test_a_record_after_a_torn_line_starts_a_new_line(tmp_path):
    path = tmp_path / "journal.jsonl"
    good = json.dumps({"kind": "score", "key": "a", "score": 1.0, "cost": {"calls": 1, "tokens": 3}})
    path.write_text(good + "\n" + '{"kind": "score", "key": "b", "sco', encoding="utf-8")  # killed mid-write
    journal = Journal(path)
    assert len(journal) == 1
    journal.put("score", "c", {"score": 0.5, "cost": {"calls": 1, "tokens": 2}})
    again = Journal(path)
    assert again.get("score", "c")[0]["score"] == 0.5  # not glued onto the torn line
    assert again.get("score", "a")[0]["score"] == 1.0 and len(again) == 2


@pytest.mark.parametrize("record", [
    {"kind": "score", "key": "x"},  # no score
    {"kind": "score", "key": "x", "score": "high"},
    {"kind": "score", "key": "x", "score": None},
    {"kind": "score", "key": "x", "score": True},
    {"kind": "score", "key": "x", "score": 1.0, "cost": {"calls": "one"}},
    {"kind": "ask", "key": "x", "outputs": "text"},
    {"key": "x", "score": 1.0},
    ["not", "a", "record"],
])
def test_malformed_records_are_skipped_with_a_warning(tmp_path, warnings, record):
    path = tmp_path / "journal.jsonl"
    good = {"kind": "score", "key": "ok", "score": 1.0, "cost": {"calls": 1, "tokens": 1}}
    path.write_text(json.dumps(record) + "\n" + json.dumps(good) + "\n", encoding="utf-8")
    journal = Journal(path)
    assert len(journal) == 1 and journal.get("score", "ok")[0]["score"] == 1.0
    assert journal.get("score", "x") == (None, None)
    assert any("line 1" in m and "skipped" in m for m in warnings)


def test_nan_from_a_hand_edited_journal_is_refused(tmp_path, warnings):
    path = tmp_path / "journal.jsonl"
    path.write_text('{"kind": "score", "key": "x", "score": NaN}\n', encoding="utf-8")
    assert len(Journal(path)) == 0 and warnings


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\x0b", "\x1c"])
def test_a_record_holding_a_unicode_line_separator_is_replayed(tmp_path, char):
    # Records are written with ensure_ascii=False, so such characters are written as they are; str.splitlines()
    # broke the record at them and both halves were skipped as cut short (the pair was then run again).
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.put("ask", "k", {"outputs": {"text": f"one{char}two"}, "cost": {"calls": 1, "tokens": 2}})
    journal.put("score", "s", {"score": 1.0, "cost": {"calls": 1, "tokens": 3}})
    again = Journal(path)
    assert len(again) == 2 and again.get("ask", "k")[0]["outputs"]["text"] == f"one{char}two"
