"""RETRY_SCHEDULE, RATE_LIMIT and their keys, decided without I/O."""

from __future__ import annotations

import pytest

from relay import sinks
from relay.config import ConfigError, load_settings, load_sinks
from relay.delivery.dispatcher import Policy
from relay.delivery.plan import Limits, Round, plan
from relay.delivery.ratelimit import TokenBucket
from relay.queue.log import LogEntry
from relay.sinks.base import Retryable
from tests.support.pipeline import minio_event


def spec(**keys: str):  # type: ignore[no-untyped-def]
    env = {"RUSTFS_NOTIFY_WEBHOOK_ENABLE_P": "on",
           "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_P": "http://127.0.0.1:9/hook",
           **{f"RUSTFS_NOTIFY_WEBHOOK_{k}_P": v for k, v in keys.items()}}  # fmt: skip
    specs, _ = load_sinks(env, sinks.declared_options(), load_settings(env))
    return specs[0]


def failing_round(attempts_before: int, now: float) -> Round:
    entry = LogEntry(seq=7, event=minio_event("b", "k", 1), received_at=now - 1)
    prior = {7: (attempts_before, now - 100)} if attempts_before else {}
    return Round("webhook:p", [entry], [Retryable("HTTP 503")], scan_end=7, prior=prior)


def test_a_retry_schedule_is_followed_as_written_then_dead_letters() -> None:
    policy = Policy.from_spec(spec(RETRY_SCHEDULE="5s,30s,5m"))
    assert policy.retry_schedule == (5.0, 30.0, 300.0)
    assert policy.max_attempts == 4  # the first attempt and one per step
    assert policy.quick_attempts == 1  # nothing in between the steps
    now = 1_000.0
    for before, step in ((0, 5.0), (1, 30.0), (2, 300.0)):
        out = plan(failing_round(before, now), policy.limits, now)
        ((seq, attempts, _, next_at, _),) = out.settlement.retries
        assert (seq, attempts, next_at - now) == (7, before + 1, step)
    out = plan(failing_round(3, now), policy.limits, now)
    assert out.settlement.retries == [] and out.settlement.dead == [(7, 4, "HTTP 503")]


def test_max_attempts_past_the_schedule_repeats_its_last_step() -> None:
    limits = Policy.from_spec(spec(RETRY_SCHEDULE="1s,2s", MAX_ATTEMPTS="10")).limits
    assert limits.max_attempts == 10
    out = plan(failing_round(6, 50.0), limits, 50.0)
    assert out.settlement.retries[0][3] == 52.0


def test_without_a_schedule_the_backoff_is_exponential_with_jitter() -> None:
    limits = Limits(backoff_max=30.0)
    waits = {plan(failing_round(4, 0.0), limits, 0.0).settlement.retries[0][3] for _ in range(20)}
    assert len(waits) > 1 and all(0.0 <= w <= 16.0 for w in waits)


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [("RETRY_SCHEDULE", "5s,soon", "not a duration"), ("RATE_LIMIT", "fast", "not a number"),
     ("RATE_LIMIT", "-1", "must not be negative"), ("PAUSE_AFTER", "3 days", "not a duration")],
)  # fmt: skip
def test_a_bad_policy_key_names_its_variable(key: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as error:
        spec(**{key: value})
    assert f"RUSTFS_NOTIFY_WEBHOOK_{key}_P" in str(error.value) and says in str(error.value)


def test_rate_limit_keeps_rounds_to_a_burst() -> None:
    assert Policy.from_spec(spec(RATE_LIMIT="200")).batch_limit == 100  # BATCH_SIZE
    assert Policy.from_spec(spec(RATE_LIMIT="20")).batch_limit == 20  # a second's worth
    assert Policy.from_spec(spec(RATE_LIMIT="0.5")).batch_limit == 1
    assert Policy.from_spec(spec(RATE_LIMIT="200", RATE_BURST="10")).batch_limit == 10
    assert Policy.from_spec(spec()).batch_limit == 100


def test_the_token_bucket_lets_a_burst_through_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=100.0, burst=50, clock=lambda: now[0])
    assert bucket.take(50) == 0.0  # the burst, at once
    assert bucket.take(10) == pytest.approx(0.1)  # then 10 events cost 0.1 s
    now[0] = 0.1
    assert bucket.take(10) == pytest.approx(0.1)
    now[0] = 10.0  # idle: the bucket fills up to the burst, not beyond
    assert bucket.take(50) == 0.0
    assert bucket.take(1) == pytest.approx(0.01)
    # a drain of 1,000 events in rounds of 50 waits 950 events' worth: 9.5 s
    bucket, now[0], waited = TokenBucket(100.0, 50, clock=lambda: now[0]), 100.0, 0.0
    for _ in range(20):
        wait = bucket.take(50)
        waited += wait
        now[0] += wait
    assert waited == pytest.approx(9.5)
