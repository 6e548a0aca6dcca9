"""Meta-prompt answers a small model writes: markers missing, labelled lines, lists in prose."""

from __future__ import annotations

import pytest
from dspy.utils.exceptions import AdapterParseError

from dspy_icl_opt.optimizers.abo_prompts import LocateFailingStep
from dspy_icl_opt.optimizers.opro_prompts import ProposeInstruction
from dspy_icl_opt.search.meta import MetaPromptAdapter, first_number_in, numbered_items


@pytest.mark.parametrize("text, expected", [
    ("[[ ## reason ## ]]\nbad\n[[ ## failing_step ## ]]\n2", {"reason": "bad", "failing_step": "2"}),
    ("**Reason:** it miscounted\nand more\nFailing step: Step 3",
     {"reason": "it miscounted\nand more", "failing_step": "Step 3"}),
    ("It skipped a day.\nFailing step: 2", {"reason": "It skipped a day.", "failing_step": "2"}),
    ("[[ ## reason ## ]]\nit skipped a day\nFailing step: 2", {"reason": "it skipped a day\nFailing step: 2",
                                                               "failing_step": "2"}),  # the last marker forgotten
    ("[[ ## failing_step ## ]]\n2", None),  # the reason is nowhere
    ("Failing step: 9", None),
    ("no idea", None),
])
def test_two_text_fields_are_read_from_markers_or_labelled_lines(text, expected):
    adapter = MetaPromptAdapter()
    if expected is None:
        with pytest.raises(AdapterParseError):
            adapter.parse(LocateFailingStep, text)
    else:
        assert adapter.parse(LocateFailingStep, text) == expected


def test_one_text_field_takes_an_unmarked_answer_whole():
    assert MetaPromptAdapter().parse(ProposeInstruction, "Here: <INS>Count.</INS>") == {
        "new_instruction": "Here: <INS>Count.</INS>"}
    assert not MetaPromptAdapter().use_json_adapter_fallback, "no second call in another format"


def test_numbered_items_and_step_numbers():
    assert numbered_items("1) first\n2. second\n   continued") == ["first", "second continued"]
    assert numbered_items("- one\n* two") == ["one", "two"]
    assert numbered_items('"Just one reason."') == ["Just one reason."]
    assert numbered_items("") == []
    assert numbered_items("1. a\n2. b\n3. c", 2) == ["a", "b"]
    # a line that introduces the list is not its first item (APO's gradient read "Here is the reason:" as the reason)
    assert numbered_items("Here is the reason:\n1. It never says to count.", 1) == ["It never says to count."]
    assert numbered_items("Two edits follow:\n- first\n- second") == ["first", "second"]
    assert numbered_items("It fails on long words.\n1. a") == ["It fails on long words.", "a"]  # no colon: an item
    assert numbered_items("Sort them:\n1. split", drop_lead_in=False) == ["Sort them:", "split"]
    assert first_number_in("Step 3", 1, 4) == 3 and first_number_in("step 7", 1, 4) is None
    assert first_number_in("2.1", 1, 4) == 2 and first_number_in("none", 1, 4) is None
