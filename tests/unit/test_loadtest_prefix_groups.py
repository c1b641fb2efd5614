"""Workload.prefix_groups: several shared prefixes (system prompts, conversations) in one level.

Why: with one prefix for every prompt, any routing policy sends every Spark the same prefix and a
prefix-aware router has nothing to do; bench/router.py compares cache_aware with round_robin on
several groups. One group must stay exactly today's prompts (bench-qwen's results stay comparable).
"""

from __future__ import annotations

import numpy as np
import pytest

from tasks.loadtest.load import PROMPT_TOKEN_RANGE, Workload, make_prompts


def _before_groups(workload: Workload, count: int, salt: int) -> list[list[int]]:
    """make_prompts as it was before prefix_groups (the reference one group must still match)."""
    low, high = PROMPT_TOKEN_RANGE
    prefix = np.random.default_rng([workload.seed, salt, 1]).integers(low, high, size=workload.prefix_len).tolist()
    rng = np.random.default_rng([workload.seed, salt, 2])
    return [
        prefix + rng.integers(low, high, size=workload.input_len - workload.prefix_len).tolist() for _ in range(count)
    ]


@pytest.mark.parametrize("prefix_len", [0, 24])
def test_one_group_is_the_prompts_of_before(prefix_len):
    workload = Workload(input_len=64, prefix_len=prefix_len, seed=11)
    assert workload.prefix_groups == 1
    assert make_prompts(workload, 7, salt=3) == _before_groups(workload, 7, salt=3)


def test_each_prompt_starts_with_one_of_the_groups_prefixes():
    workload = Workload(input_len=48, prefix_len=32, prefix_groups=4, seed=5)
    prompts = make_prompts(workload, 64, salt=1)
    assert all(len(p) == 48 for p in prompts)
    prefixes = {tuple(p[:32]) for p in prompts}
    assert len(prefixes) == 4  # 64 draws over 4 groups: every group is used
    assert len({tuple(p[32:]) for p in prompts}) == 64  # each prompt's own tokens differ
    low, high = PROMPT_TOKEN_RANGE
    assert all(low <= t < high for p in prompts for t in p)


def test_groups_keep_the_first_prefix_and_the_prompts_own_tokens():
    one = make_prompts(Workload(input_len=40, prefix_len=16, seed=2), 20)
    many = make_prompts(Workload(input_len=40, prefix_len=16, prefix_groups=3, seed=2), 20)
    assert [p[16:] for p in many] == [p[16:] for p in one]
    assert one[0][:16] in [p[:16] for p in many]  # group 0 is the one prefix of a single group


def test_groups_are_drawn_at_random_not_in_turn():
    """In turn (i % groups) with an even count of groups would land each group on one Spark under a
    round-robin router over two: the comparison with cache_aware would measure nothing."""
    workload = Workload(input_len=24, prefix_len=16, prefix_groups=2, seed=9)
    prompts = make_prompts(workload, 40)
    first = prompts[0][:16]
    in_turn = [i % 2 == 0 for i in range(40)]
    assert [p[:16] == first for p in prompts] != in_turn


def test_groups_are_deterministic_per_seed_and_salt():
    workload = Workload(input_len=32, prefix_len=16, prefix_groups=3, seed=4)
    assert make_prompts(workload, 10, salt=2) == make_prompts(workload, 10, salt=2)
    assert {tuple(p[:16]) for p in make_prompts(workload, 30, salt=2)}.isdisjoint(
        {tuple(p[:16]) for p in make_prompts(workload, 30, salt=3)}
    )  # another level misses the last level's prefixes


def test_groups_need_a_shared_prefix():
    with pytest.raises(ValueError, match="prefix_groups"):
        Workload(input_len=32, prefix_groups=2)
    with pytest.raises(ValueError):
        Workload(input_len=32, prefix_len=8, prefix_groups=0)
