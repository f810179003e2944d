"""Pure pieces of the SCIM engine: no server, no real sleeping."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from scim2_models import ScimFilter

from daemon.scim import (
    AdaptiveRateLimiter,
    RetryPolicy,
    ScimAuthError,
    ScimConflictError,
    ScimInvalidResponseError,
    ScimTransport,
    diff_operations,
    eq_filter,
    parse_retry_after,
)
from daemon.scim.ratelimit import RECOVERY_SUCCESSES
from daemon.scim.transport import ScimResponse, normalise_base_url

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


class FakeTime:
    """A monotonic clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


# -- Retry-After and backoff ----------------------------------------------------------


def test_retry_after_delta_seconds() -> None:
    assert parse_retry_after("120", now=0) == 120
    assert parse_retry_after(" 0 ", now=0) == 0


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 -0000", now=0) == 784111777


@pytest.mark.parametrize("bad", [None, "", "soon", "-5", "1.5", "1e9", "Mon, 99 Foo 2020"])
def test_malformed_retry_after_is_ignored(bad: str | None) -> None:
    assert parse_retry_after(bad, now=0) is None


def test_backoff_is_full_jitter_under_a_cap() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    assert [policy.backoff(n, rng=lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        4.0,
    ]
    assert policy.backoff(3, rng=lambda: 0.0) == 0


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1)


# -- adaptive rate limiter ------------------------------------------------------------


def _limiter(fake: FakeTime, **kwargs: float) -> AdaptiveRateLimiter:
    settings: dict[str, float] = {"max_rate": 10.0, "min_rate": 1.0, "burst": 1.0}
    settings.update(kwargs)
    return AdaptiveRateLimiter(clock=fake.clock, sleep=fake.sleep, **settings)


async def test_limiter_spaces_requests_at_its_rate() -> None:
    fake = FakeTime()
    limiter = _limiter(fake)
    assert await limiter.acquire() == 0
    assert await limiter.acquire() == pytest.approx(0.1)
    assert await limiter.acquire() == pytest.approx(0.1)


async def test_limiter_slows_on_pushback_and_recovers_on_success() -> None:
    fake = FakeTime()
    limiter = _limiter(fake, decrease_factor=0.5, increase_per_success=1.0)
    limiter.on_pushback()
    limiter.on_pushback()
    assert limiter.rate == pytest.approx(2.5)
    await limiter.acquire()
    assert await limiter.acquire() == pytest.approx(1 / 2.5)
    for _ in range(3):
        limiter.on_success()
    assert limiter.rate == pytest.approx(5.5)
    for _ in range(20):
        limiter.on_success()
    assert limiter.rate == 10.0


@pytest.mark.parametrize("ceiling", [4.0, 20.0, 10_000.0])
async def test_default_recovery_scales_with_the_ceiling(ceiling: float) -> None:
    limiter = AdaptiveRateLimiter(max_rate=ceiling, min_rate=min(0.2, ceiling))
    for _ in range(4):
        limiter.on_pushback()
    slowed = limiter.rate
    assert slowed == pytest.approx(ceiling / 16)
    limiter.on_success()
    # Additive: one success is a step proportional to the ceiling, not a jump back...
    assert limiter.rate == pytest.approx(slowed + ceiling / RECOVERY_SUCCESSES)
    # ...so the ceiling is back within RECOVERY_SUCCESSES successes, at any ceiling.
    for _ in range(RECOVERY_SUCCESSES - 1):
        limiter.on_success()
    assert limiter.rate == ceiling


async def test_limiter_never_goes_below_its_floor() -> None:
    limiter = _limiter(FakeTime(), min_rate=1.0)
    for _ in range(50):
        limiter.on_pushback()
    assert limiter.rate == 1.0


async def test_retry_after_pauses_every_request() -> None:
    fake = FakeTime()
    limiter = _limiter(fake, burst=5.0)
    limiter.on_pushback(retry_after=3.0)
    assert limiter.paused_for == pytest.approx(3.0)
    waited = await limiter.acquire()
    assert waited >= 3.0
    assert limiter.paused_for == 0


def test_limiter_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        AdaptiveRateLimiter(min_rate=5, max_rate=1)
    with pytest.raises(ValueError):
        AdaptiveRateLimiter(decrease_factor=1.5)
    with pytest.raises(ValueError):
        AdaptiveRateLimiter(increase_per_success=0)


# -- filters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ['a"b', "back\\slash", 'x" or userName pr or userName eq "y', "ünï\ncode"]
)
def test_eq_filter_keeps_any_value_a_single_literal(value: str) -> None:
    expression = eq_filter("userName", value)
    node = ScimFilter(expression).ast
    assert type(node).__name__ == "Comparison"
    assert node.value == value  # type: ignore[attr-defined]


@pytest.mark.parametrize("attribute", ["userName or 1", 'userName eq "a" or userName', ""])
def test_eq_filter_refuses_a_malformed_attribute(attribute: str) -> None:
    with pytest.raises(ValueError, match="cannot build a filter"):
        eq_filter(attribute, "x")


# -- PATCH diff -----------------------------------------------------------------------


def _dumped(ops: list) -> list[dict[str, object]]:  # type: ignore[type-arg]
    return [op.model_dump() for op in ops]


def test_diff_of_equal_resources_is_empty() -> None:
    user = {"userName": "a", "emails": [{"type": "work", "value": "a@x"}], "id": "1"}
    assert diff_operations(user, dict(user, id="2", meta={"version": "x"})) == []


def test_diff_orders_of_multi_valued_entries_do_not_matter() -> None:
    old = {"emails": [{"type": "work", "value": "a"}, {"type": "home", "value": "b"}]}
    new = {"emails": [{"type": "home", "value": "b"}, {"type": "work", "value": "a"}]}
    assert diff_operations(old, new) == []


def test_diff_by_type_path() -> None:
    old = {"phoneNumbers": [{"type": "work", "value": "+1"}, {"type": "fax", "value": "+2"}]}
    new = {"phoneNumbers": [{"type": "work", "value": "+3", "primary": True}]}
    assert _dumped(diff_operations(old, new)) == [
        {"op": "remove", "path": 'phoneNumbers[type eq "fax"]'},
        {"op": "add", "path": 'phoneNumbers[type eq "work"].primary', "value": True},
        {"op": "replace", "path": 'phoneNumbers[type eq "work"].value', "value": "+3"},
    ]


def test_diff_quotes_hostile_types() -> None:
    old = {"emails": [{"type": 'w"x', "value": "a"}]}
    new = {"emails": [{"type": 'w"x', "value": "b"}]}
    (op,) = _dumped(diff_operations(old, new))
    assert op["path"] == 'emails[type eq "w\\"x"].value'


def test_diff_falls_back_to_whole_replace_without_distinct_types() -> None:
    old = {"emails": [{"type": "work", "value": "a"}, {"type": "work", "value": "b"}]}
    new = {"emails": [{"type": "work", "value": "a"}]}
    assert _dumped(diff_operations(old, new)) == [
        {"op": "replace", "path": "emails", "value": [{"type": "work", "value": "a"}]}
    ]
    assert _dumped(diff_operations({"roles": ["a"]}, {"roles": []})) == [
        {"op": "remove", "path": "roles"}
    ]


def test_diff_extension_and_complex_attributes() -> None:
    old = {"name": {"givenName": "A", "familyName": "B"}, ENTERPRISE: {"department": "d"}}
    new = {"name": {"givenName": "A"}, "active": False}
    assert _dumped(diff_operations(old, new)) == [
        {"op": "add", "path": "active", "value": False},
        {"op": "remove", "path": "name.familyName"},
        {"op": "remove", "path": f"{ENTERPRISE}:department"},
    ]


def test_diff_clears_a_whole_complex_attribute() -> None:
    assert _dumped(diff_operations({"name": {"givenName": "A"}}, {})) == [
        {"op": "remove", "path": "name"}
    ]


# -- transport edges ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://scim.example.com/v2",
        "ftp://127.0.0.1/",
        "https://user:pw@scim.example.com",
        "https://scim.example.com/v2?x=1",
        "not a url",
    ],
)
def test_unsafe_base_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="SCIM base URL"):
        normalise_base_url(url)


def test_base_url_forms_that_are_accepted() -> None:
    assert normalise_base_url("https://api.example.com/v1/scim/v2/") == (
        "https://api.example.com/v1/scim/v2"
    )
    assert normalise_base_url("http://[::1]:8080") == "http://[::1]:8080"


def test_server_error_text_never_carries_the_token() -> None:
    transport = ScimTransport("https://scim.example.com", lambda: "s3cret-token-value")
    body = (
        b'{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"409",'
        b'"scimType":"uniqueness","detail":"token s3cret-token-value already used"}'
    )
    error = transport._failure(409, body, {}, "POST", "/Users", "s3cret-token-value", None)
    assert isinstance(error, ScimConflictError)
    assert error.scim_type == "uniqueness"
    assert "s3cret-token-value" not in str(error)
    auth = transport._failure(401, b"nope", {}, "GET", "/Users", "s3cret-token-value", None)
    assert isinstance(auth, ScimAuthError) and "no SCIM error body" in str(auth)


def test_json_of_an_empty_body_is_an_invalid_response() -> None:
    response = ScimResponse(200, {}, b"", "GET", "/Users")
    with pytest.raises(ScimInvalidResponseError, match="GET /Users: HTTP 200"):
        response.json()
    with pytest.raises(ScimInvalidResponseError, match="not JSON"):
        ScimResponse(200, {}, b"\xff\xfe", "GET", "/Users").json()
