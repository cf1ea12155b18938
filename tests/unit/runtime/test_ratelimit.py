"""Rate limiters, with a fake clock."""

from __future__ import annotations

from kaitopy.runtime import (
    BucketRateLimiter,
    FakeClock,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    default_controller_rate_limiter,
)


def test_exponential_per_item_from_5ms_to_1000s() -> None:
    rl = ItemExponentialFailureRateLimiter()
    delays = [rl.when("a") for _ in range(20)]
    assert delays[:4] == [0.005, 0.01, 0.02, 0.04]
    assert delays[-1] == 1000.0
    assert rl.when("b") == 0.005  # items are independent
    rl.forget("a")
    assert rl.when("a") == 0.005


def test_exponential_survives_many_failures() -> None:
    rl = ItemExponentialFailureRateLimiter()
    for _ in range(200):
        delay = rl.when("a")
    assert delay == 1000.0


def test_bucket_allows_burst_then_spaces_at_qps() -> None:
    clock = FakeClock()
    rl = BucketRateLimiter(qps=10, burst=100, clock=clock)
    assert all(rl.when(i) == 0 for i in range(100))
    assert round(rl.when("x"), 6) == 0.1
    assert round(rl.when("y"), 6) == 0.2  # reservations queue up
    clock.advance(1.0)  # 10 tokens refill, 2 were owed: 8 left
    assert rl.when("z") == 0
    assert round(sum(rl.when(i) for i in range(7)), 6) == 0.0
    assert round(rl.when("w"), 6) == 0.1


def test_max_of_takes_the_longest_wait() -> None:
    clock = FakeClock()
    rl = MaxOfRateLimiter(ItemExponentialFailureRateLimiter(1.0, 100.0), BucketRateLimiter(1, 1, clock))
    assert rl.when("a") == 1.0  # bucket has a token, item limiter says 1 s
    assert rl.when("b") == 1.0  # bucket empty: 1 s; item limiter: 1 s
    assert rl.when("a") == 2.0
    assert rl.num_requeues("a") == 2
    rl.forget("a")
    assert rl.num_requeues("a") == 0


def test_default_controller_rate_limiter() -> None:
    rl = default_controller_rate_limiter(FakeClock())
    assert rl.when("a") == 0.005
    assert rl.when("a") == 0.01
