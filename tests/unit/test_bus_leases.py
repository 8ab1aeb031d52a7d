"""How the Redis bus's shard leases are shared out: balanced, sticky, the same for every member."""

from __future__ import annotations

import pytest

from sysmon.core.bus.leases import balance, holder_of


def shares(out: dict[str, frozenset[int]]) -> dict[str, int]:
    return {m: len(s) for m, s in out.items()}


@pytest.mark.parametrize(("shards", "members"), [(12, 1), (12, 2), (12, 5), (4, 3), (3, 4), (1, 2), (16, 16)])
def test_every_shard_has_one_member_and_shares_differ_by_at_most_one(shards: int, members: int) -> None:
    names = [f"alerts-{i}" for i in range(members)]
    out = balance(names, {}, shards)
    assert set(out) == set(names)
    every = [p for s in out.values() for p in s]
    assert sorted(every) == list(range(shards))
    assert max(shares(out).values()) - min(shares(out).values()) <= 1


def test_no_members_no_assignment() -> None:
    assert balance([], {0: "gone"}, 4) == {}


def test_a_member_joining_takes_half_and_the_other_keeps_the_rest_of_what_it_held() -> None:
    alone = balance(["a"], {}, 12)
    assert alone == {"a": frozenset(range(12))}
    out = balance(["a", "b"], dict.fromkeys(range(12), "a"), 12)
    assert shares(out) == {"a": 6, "b": 6}
    assert out["a"] <= alone["a"]


def test_a_member_leaving_gives_its_shards_to_the_others_and_nothing_else_moves() -> None:
    before = balance(["a", "b", "c"], {}, 12)
    holders = {p: m for m, s in before.items() for p in s}
    # c stopped (its heartbeat ran out) but its leases are still alive: they go to a and b.
    after = balance(["a", "b"], holders, 12)
    assert shares(after) == {"a": 6, "b": 6}
    assert before["a"] <= after["a"]
    assert before["b"] <= after["b"]
    assert after["a"] | after["b"] == frozenset(range(12))


def test_the_extra_shard_stays_with_who_holds_it() -> None:
    # 5 shards over 2: b holds 3 now, so b keeps its 3 and a gets 2 (nothing moves).
    holders = {0: "a", 1: "a", 2: "b", 3: "b", 4: "b"}
    assert balance(["a", "b"], holders, 5) == {"a": frozenset({0, 1}), "b": frozenset({2, 3, 4})}


def test_every_member_computes_the_same_assignment_whatever_the_order() -> None:
    holders = {0: "c", 3: "a", 7: "gone"}
    assert balance(["c", "a", "b"], holders, 8) == balance(["b", "c", "a", "a"], holders, 8)


def test_holders_out_of_range_are_ignored() -> None:
    out = balance(["a", "b"], {9: "a", 1: "a"}, 4)
    assert sorted(p for s in out.values() for p in s) == [0, 1, 2, 3]
    assert 1 in out["a"]


def test_holder_of_a_lease_value() -> None:
    assert holder_of(b"alerts-7f9c-x 42") == "alerts-7f9c-x"
    assert holder_of("a b 3") == "a b"
    assert holder_of(None) is None
