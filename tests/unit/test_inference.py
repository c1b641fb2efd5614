"""tasks/inference.py: the smoke answer check (pure parts)."""

from tasks.inference import contains_expected, visible_answer


def test_thinking_block_is_not_the_answer():
    assert visible_answer("<think>\n12*17 is 12*10 + 12*7 = 204? let me see\n</think>\n\n204") == "204"
    assert visible_answer("<think>unfinished 204 thoughts") == ""
    assert visible_answer(None) == ""


def test_expected_number_must_stand_alone():
    assert contains_expected("12 * 17 = **204**")
    assert not contains_expected("2040")
    assert not contains_expected("1204")
    assert not contains_expected("")
