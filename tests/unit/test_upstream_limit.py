"""The upstream limit's rules, fed answers directly (no server, no clock): slow start, the
queue estimate, per-token judgement, halving on push-back, and decreases only on news."""

from __future__ import annotations

from batchd.engines.upstream_limit import Sent, Target


def target(limit: float = 32, ceiling: int = 1024) -> Target:
    return Target(base_url="http://gpu", limit=limit, ceiling=ceiling, tolerance=1.5)


def answer(t: Target, *, seconds: float, tokens: int = 16, with_in_flight: int = 1,
           fresh: bool = True) -> None:
    t._judge(Sent(at=0.0, with_in_flight=with_in_flight), seconds, tokens, fresh=fresh)


def test_slow_start_grows_about_fourfold_per_round_trip() -> None:
    t = target(limit=32)
    for _ in range(32):  # one round trip's answers, none queued
        answer(t, seconds=1.0)
    assert t.limit == 128 and t.slow_start


def test_a_queue_sets_the_limit_to_what_keeps_latency_tolerable() -> None:
    t = target(limit=256)
    answer(t, seconds=1.0)  # the best: 1 s for 16 tokens
    # A 128-slot FIFO server with 256 at it: answers take 2 s (a queue of one service).
    for _ in range(Target.MIN_SAMPLES):
        answer(t, seconds=2.0, with_in_flight=256)
    assert not t.slow_start
    assert t.limit == 192  # 256 * 1.5 / 2: saturated, with a short queue


def test_one_slow_answer_is_noise_not_a_queue() -> None:
    t = target(limit=64)
    for _ in range(10):
        answer(t, seconds=1.0)
    answer(t, seconds=3.0, with_in_flight=64)  # a new connection, a busy moment
    assert t.slow_start and t.limit > 64


def test_a_long_generation_is_not_mistaken_for_a_queue() -> None:
    t = target(limit=64)
    answer(t, seconds=1.0, tokens=16)
    for _ in range(20):
        answer(t, seconds=8.0, tokens=128)  # 8x the time for 8x the tokens
    assert t.slow_start and t.limit > 64


def test_the_median_answer_of_a_burst_sets_the_limit() -> None:
    t = target(limit=1024)
    answer(t, seconds=2.0)  # the best: 2 s for 16 tokens, a 512-slot server
    # 1,024 sent at once reach the server in another order than they were sent: one sent
    # early arrived late (1.6x), one sent late arrived early (not queued at all).
    answer(t, seconds=3.2, with_in_flight=149)
    answer(t, seconds=2.0, with_in_flight=1000)
    for _ in range(Target.MIN_SAMPLES):
        answer(t, seconds=4.0, with_in_flight=700)
    assert t.limit == 700 * 1.5 / 2  # 525: neither 149 * 1.5 / 1.6 (140) nor 1000


def test_a_decrease_loses_at_most_an_eighth_and_only_on_answers_sent_after_it() -> None:
    t = target(limit=1024)
    answer(t, seconds=1.0)
    for _ in range(Target.MIN_SAMPLES):
        answer(t, seconds=100.0, with_in_flight=512)  # looks like a huge queue
    assert t.limit == 1024 / 8
    before = t.limit
    for _ in range(50):
        answer(t, seconds=100.0, with_in_flight=512, fresh=False)  # sent before: old news
    assert t.limit == before


def test_push_back_halves_the_limit_once_per_round_trip() -> None:
    t = target(limit=64)
    t.in_flight = 3
    early = Sent(at=float("-inf"), with_in_flight=3)
    t.settle(Sent(at=1e12, with_in_flight=3), ok=False, overloaded=True)
    assert t.limit == 32 and not t.slow_start
    t.settle(early, ok=False, overloaded=True)  # sent before that decrease
    assert t.limit == 32


def test_the_limit_never_passes_the_ceiling() -> None:
    t = target(limit=32, ceiling=40)
    for _ in range(100):
        answer(t, seconds=1.0)
    assert t.limit == 40
