"""attestd/ratelimit.py: token buckets and the per-key rate of a setting."""

from __future__ import annotations

from attestd.ratelimit import PerKeyRate


def test_per_key_rate_allows_bursts_of_twice_the_rate_per_key() -> None:
    limit = PerKeyRate()
    assert [limit.wait(1, "a") for _ in range(2)] == [0.0, 0.0]
    assert limit.wait(1, "a") > 0  # the burst of 2 is spent; refill is 1/s
    assert limit.wait(1, "b") == 0.0  # another key has its own bucket


def test_per_key_rate_of_zero_is_no_limit_and_a_new_rate_starts_afresh() -> None:
    limit = PerKeyRate()
    assert all(limit.wait(0, "a") == 0.0 for _ in range(100))
    assert [limit.wait(1, "a") for _ in range(3)][-1] > 0
    assert [limit.wait(2, "a") for _ in range(4)] == [0.0] * 4  # rate changed: burst of 4
