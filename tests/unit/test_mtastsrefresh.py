"""Rules of the MTA-STS cache refresher: what happens to a cached policy, and when (spec 02 §2.3 item 6)."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from domain.mtasts import Mode, Record
from domain.mtastsrefresh import RefreshAction, refresh_action, refresh_offsets


@pytest.mark.parametrize("mode", list(Mode))
def test_unchanged_record_id_only_extends_the_policy(mode: Mode) -> None:
    assert refresh_action(mode, "1", Record("1"), lookup_failed=False) == RefreshAction.EXTEND


@pytest.mark.parametrize("mode", list(Mode))
def test_changed_record_id_fetches_the_policy_again(mode: Mode) -> None:
    assert refresh_action(mode, "1", Record("2"), lookup_failed=False) == RefreshAction.REFETCH


def test_mode_none_policy_whose_record_is_gone_is_deleted() -> None:
    assert refresh_action(Mode.NONE, "1", None, lookup_failed=False) == RefreshAction.DELETE


def test_mode_none_policy_whose_record_lookup_fails_is_left_alone() -> None:
    assert refresh_action(Mode.NONE, "1", None, lookup_failed=True) == RefreshAction.KEEP


@pytest.mark.parametrize("mode", [Mode.ENFORCE, Mode.TESTING])
@pytest.mark.parametrize("lookup_failed", [False, True])
def test_enforced_or_tested_policy_without_a_record_is_fetched_again(mode: Mode, lookup_failed: bool) -> None:
    # DNS may be what is broken: the policy must not lapse meanwhile.
    assert refresh_action(mode, "1", None, lookup_failed=lookup_failed) == RefreshAction.REFETCH


@pytest.mark.parametrize("count", [0, 1])
def test_a_single_refresh_starts_at_once(count: int) -> None:
    assert refresh_offsets(count, timedelta(hours=3), random.Random(1)) == [timedelta(0)] * count


@pytest.mark.parametrize("seed", range(20))
def test_refreshes_spread_evenly_over_three_hours_with_jitter(seed: int) -> None:
    spread, count = timedelta(hours=3), 7
    offsets = refresh_offsets(count, spread, random.Random(seed))
    step = spread / (count - 1)
    assert len(offsets) == count and offsets[0] == timedelta(0)
    assert offsets == sorted(offsets)
    assert all(timedelta(0) <= o <= spread for o in offsets)
    # Each one within half a step of its even slot: no two bunch up, none is left out.
    assert all(abs(o - step * i) <= step / 2 for i, o in enumerate(offsets))


def test_jitter_differs_between_runs() -> None:
    runs = {tuple(refresh_offsets(5, timedelta(hours=3), random.Random(seed))) for seed in range(5)}
    assert len(runs) == 5
