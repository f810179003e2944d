"""Retries, pacing and typed errors, against a real server behind the fault proxy."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from scim2_models import Group, User

from daemon.scim import (
    AdaptiveRateLimiter,
    RateLimitWaited,
    RequestDone,
    RetryPolicy,
    RetryScheduled,
    ScimAuthError,
    ScimClient,
    ScimEvent,
    ScimInvalidResponseError,
    ScimOutcomeUnknownError,
    ScimPermanentError,
    ScimRateLimitedError,
    ScimTransientError,
    Timeouts,
    eq_filter,
)
from tests.scim.conftest import FAST_RETRY, TOKEN
from tests.scim.faults import Fault, FaultProxy
from tests.scim.harness import unique

#: Generous slack: timestamps come from two processes on a busy 2-core machine.
SLACK = 0.15


async def _user(client: ScimClient) -> str:
    created: User[Any] = await client.create(User(user_name=f"{unique()}@example.org"))
    assert created.id
    return created.id


def _gaps(proxy: FaultProxy, method: str, path: str) -> list[float]:
    times = [r.at for r in proxy.requests(method, path)]
    return [b - a for a, b in itertools.pairwise(times)]


@pytest.mark.parametrize("fault", [Fault.RATE_LIMIT_SECONDS, Fault.RATE_LIMIT_DATE])
async def test_429_honours_retry_after_in_both_forms(
    client: ScimClient, proxy: FaultProxy, fault: Fault
) -> None:
    user_id = await _user(client)
    proxy.script(fault, method="GET", path="/Users")
    before = client.rate_limiter.rate
    fetched = await client.get(User, user_id)
    assert fetched.id == user_id
    assert [r.status for r in proxy.requests("GET", "/Users")] == [429, 200]
    (gap,) = _gaps(proxy, "GET", "/Users")
    assert gap >= proxy.retry_after - SLACK
    assert gap < proxy.retry_after + 3
    assert client.rate_limiter.rate < before


async def test_503_is_retried_after_its_retry_after(client: ScimClient, proxy: FaultProxy) -> None:
    proxy.script(Fault.UNAVAILABLE, path="/ServiceProviderConfig")
    caps = await client.discover()
    assert caps.patch
    statuses = [r.status for r in proxy.requests("GET", "/ServiceProviderConfig")]
    assert statuses == [503, 200]
    (gap,) = _gaps(proxy, "GET", "/ServiceProviderConfig")
    assert gap >= proxy.retry_after - SLACK


def _impatient_client(proxy: FaultProxy, events: list[ScimEvent]) -> ScimClient:
    """A fresh client with a short timeout, recording its events."""
    return ScimClient(
        proxy.url,
        lambda: TOKEN,
        retry=FAST_RETRY,
        timeouts=Timeouts(total=0.5, connect=0.5),
        observer=events.append,
    )


@pytest.mark.parametrize(
    ("fault", "reason", "method"),
    [
        (Fault.SERVER_ERROR, "5xx", "POST"),
        (Fault.RESET, "connection", "PUT"),
        (Fault.HANG, "timeout", "PUT"),
    ],
)
async def test_transient_faults_are_retried(
    proxy: FaultProxy, fault: Fault, reason: str, method: str
) -> None:
    """A server error is retried for any method; a lost answer only where repeating is safe.

    (A POST whose answer was lost is never repeated blindly: see the next test.)
    """
    events: list[ScimEvent] = []
    if method == "PUT":
        async with ScimClient(proxy.url, lambda: TOKEN, retry=FAST_RETRY) as setup:
            existing = await setup.create(User(user_name=f"{unique()}@example.org"))
    async with _impatient_client(proxy, events) as client:
        # A fresh connection: aiohttp itself repeats idempotent requests on a reused one.
        if method == "PUT":
            created: User[Any] = existing
            created.display_name = "Retried"
            # aiohttp repeats an idempotent request once itself when the connection drops;
            # the second drop reaches the client's own retry.
            proxy.script(*[fault] * (2 if fault is Fault.RESET else 1), method="PUT")
            created = await client.replace(created)
            assert created.display_name == "Retried"
        else:
            proxy.script(fault, method="POST")
            created = await client.create(User(user_name=f"{unique()}@example.org"))
    assert created.id
    sent = len(proxy.requests(method, "/Users"))
    assert sent == (3 if fault is Fault.RESET else 2)
    retries = [e for e in events if isinstance(e, RetryScheduled)]
    assert [(e.method, e.resource, e.reason) for e in retries] == [(method, "Users", reason)]
    done = [e for e in events if isinstance(e, RequestDone)]
    assert done[-1].status_class == "2xx"
    assert done[0].status_class == ("5xx" if fault is Fault.SERVER_ERROR else "error")


@pytest.mark.parametrize("fault", [Fault.RESET, Fault.HANG, Fault.LOST_REPLY])
async def test_a_post_whose_answer_was_lost_is_not_repeated(
    proxy: FaultProxy, fault: Fault
) -> None:
    """It may have created the resource: the caller must look before sending it again."""
    events: list[ScimEvent] = []
    async with _impatient_client(proxy, events) as client:
        proxy.script(fault, method="POST")
        with pytest.raises(ScimOutcomeUnknownError) as caught:
            await client.create(User(user_name=f"{unique()}@example.org"))
    assert caught.value.transient
    assert len(proxy.requests("POST", "/Users")) == 1
    assert not [e for e in events if isinstance(e, RetryScheduled)]


async def test_slow_answer_within_timeout_is_not_retried(
    client: ScimClient, proxy: FaultProxy
) -> None:
    proxy.script(Fault.SLOW, path="/ServiceProviderConfig")
    await client.discover()
    assert len(proxy.requests("GET", "/ServiceProviderConfig")) == 1


async def test_retries_stop_at_the_attempt_cap(client: ScimClient, proxy: FaultProxy) -> None:
    proxy.script(*[Fault.SERVER_ERROR] * 6, path="/Groups")
    with pytest.raises(ScimTransientError) as caught:
        await client.find(Group, eq_filter("displayName", "x"))
    error = caught.value
    assert error.status == 500 and error.attempts == FAST_RETRY.max_attempts
    assert error.transient
    assert "GET /Groups" in str(error) and "after 4 attempts" in str(error)
    assert len(proxy.requests("GET", "/Groups")) == 4


async def test_retry_after_beyond_the_wait_cap_surfaces_at_once(proxy: FaultProxy) -> None:
    proxy.retry_after = 30
    proxy.script(Fault.RATE_LIMIT_SECONDS)
    policy = RetryPolicy(max_attempts=5, max_total_wait=2.0, base_delay=0.01)
    async with ScimClient(proxy.url, lambda: TOKEN, retry=policy) as client:
        with pytest.raises(ScimRateLimitedError) as caught:
            await client.discover()
        # Other callers are held back at most for the wait cap, not for the full 30 s.
        assert 0 < client.rate_limiter.paused_for <= policy.max_total_wait
    assert caught.value.status == 429
    assert caught.value.retry_after == 30
    assert len(proxy.log) == 1


class RotatingToken:
    """A token provider whose value the test changes, counting reads."""

    def __init__(self, *values: str) -> None:
        self._values: Iterator[str] = iter(values)
        self.current = next(self._values)
        self.reads = 0

    def rotate(self) -> None:
        self.current = next(self._values)

    def __call__(self) -> str:
        self.reads += 1
        return self.current

    def rotating_after_first_read(self) -> Callable[[], str]:
        """A provider that rotates the secret while the first request is in flight."""

        def provider() -> str:
            value = self()
            if self.reads == 1:
                self.rotate()
            return value

        return provider


async def test_401_retries_once_with_a_rotated_token(proxy: FaultProxy) -> None:
    token = RotatingToken("old-token-aaaaaaaa", "new-token-bbbbbbbb")
    proxy.required_token = "new-token-bbbbbbbb"
    provider = token.rotating_after_first_read()
    async with ScimClient(proxy.url, provider, retry=FAST_RETRY) as client:
        await client.discover()
    auths = [r.authorization for r in proxy.requests("GET", "/ServiceProviderConfig")]
    assert auths == ["Bearer old-token-aaaaaaaa", "Bearer new-token-bbbbbbbb"]
    assert [r.status for r in proxy.requests("GET", "/ServiceProviderConfig")] == [401, 200]


async def test_401_with_an_unchanged_token_is_an_auth_error(proxy: FaultProxy) -> None:
    proxy.required_token = "something-else-entirely"
    async with ScimClient(proxy.url, lambda: TOKEN, retry=FAST_RETRY) as client:
        with pytest.raises(ScimAuthError) as caught:
            await client.discover()
    message = str(caught.value)
    assert "revoked" in message and "lost the rights" in message
    assert TOKEN not in message and TOKEN not in repr(caught.value)
    assert caught.value.status == 401 and not caught.value.transient
    assert len(proxy.log) == 1


async def test_401_after_rotation_is_retried_only_once(proxy: FaultProxy) -> None:
    token = RotatingToken("first-token-aaaaaaa", "second-token-bbbbbbb")
    proxy.required_token = "neither-of-them-cccccc"
    provider = token.rotating_after_first_read()
    async with ScimClient(proxy.url, provider, retry=FAST_RETRY) as client:
        with pytest.raises(ScimAuthError):
            await client.discover()
    assert len(proxy.log) == 2


async def test_later_requests_use_the_rotated_token(proxy: FaultProxy) -> None:
    token = RotatingToken("token-one-aaaaaaaa", "token-two-bbbbbbbb")
    async with ScimClient(proxy.url, token, retry=FAST_RETRY) as client:
        await client.discover()
        token.rotate()
        proxy.required_token = "token-two-bbbbbbbb"
        proxy.log.clear()
        await client.discover()
    assert {r.authorization for r in proxy.log} == {"Bearer token-two-bbbbbbbb"}
    assert all(r.status == 200 for r in proxy.log)


@pytest.mark.parametrize("bad", ["", "two words", "line\nbreak", "Bearer\r\nX-Injected: 1"])
async def test_unusable_token_is_refused_before_sending(proxy: FaultProxy, bad: str) -> None:
    async with ScimClient(proxy.url, lambda: bad) as client:
        with pytest.raises(ScimAuthError, match="secret file"):
            await client.discover()
    assert proxy.log == []


async def test_failing_token_provider_is_an_auth_error(proxy: FaultProxy) -> None:
    def provider() -> str:
        raise FileNotFoundError("/run/secrets/scim-token")

    async with ScimClient(proxy.url, provider) as client:
        with pytest.raises(ScimAuthError, match="FileNotFoundError"):
            await client.discover()
    assert proxy.log == []


async def test_body_that_is_not_json_is_an_invalid_response(
    client: ScimClient, proxy: FaultProxy
) -> None:
    user_id = await _user(client)
    proxy.script(Fault.NOT_JSON, method="GET")
    with pytest.raises(ScimInvalidResponseError) as caught:
        await client.get(User, user_id)
    message = str(caught.value)
    assert f"GET /Users/{user_id}" in message and "not JSON" in message
    assert "<html>proxy error</html>" in message
    assert len(proxy.requests("GET")) == 1


async def test_body_that_breaks_the_schema_is_an_invalid_response(
    client: ScimClient, proxy: FaultProxy
) -> None:
    user_id = await _user(client)
    proxy.script(Fault.SCHEMA_VIOLATION, method="GET")
    with pytest.raises(ScimInvalidResponseError, match="breaks the SCIM schema") as caught:
        await client.get(User, user_id)
    assert "userName" in str(caught.value)
    proxy.script(Fault.SCHEMA_VIOLATION, method="GET")
    with pytest.raises(ScimInvalidResponseError, match="totalResults"):
        await client.find(User, eq_filter("userName", "x"))
    proxy.script(Fault.SCHEMA_VIOLATION, path="/ServiceProviderConfig")
    with pytest.raises(ScimInvalidResponseError, match="GET /ServiceProviderConfig"):
        await client.discover()


async def test_hidden_patch_support_is_discovered_and_refused(
    client: ScimClient, proxy: FaultProxy
) -> None:
    proxy.hide_patch = True
    caps = await client.discover()
    assert not caps.patch and caps.filter
    created: User[Any] = await client.create(User(user_name=f"{unique()}@example.org"))
    assert created.id
    with pytest.raises(ScimPermanentError) as caught:
        await client.patch(User, created.id, [{"op": "replace", "path": "title", "value": "x"}])
    assert caught.value.status == 501
    assert len(proxy.requests("PATCH")) == 1
    created.title = "via PUT"
    assert (await client.replace(created)).title == "via PUT"


async def test_hidden_filter_support_is_discovered_and_refused(
    client: ScimClient, proxy: FaultProxy
) -> None:
    proxy.hide_filter = True
    caps = await client.discover()
    assert not caps.filter and caps.patch
    with pytest.raises(ScimPermanentError) as caught:
        await client.find(User, eq_filter("userName", "x"))
    assert caught.value.status == 400 and caught.value.scim_type == "invalidFilter"
    listed = [u async for u in client.iter_resources(User, page_size=50)]
    assert listed  # the shared server holds users from other tests


async def test_random_faults_are_absorbed(scim_server: object, proxy: FaultProxy) -> None:
    proxy.rates = {Fault.SERVER_ERROR: 0.15, Fault.RESET: 0.1, Fault.SLOW: 0.1}
    events: list[ScimEvent] = []
    policy = RetryPolicy(max_attempts=10, max_total_wait=10.0, base_delay=0.01, max_delay=0.05)
    async with ScimClient(proxy.url, lambda: TOKEN, retry=policy, observer=events.append) as client:
        ids = [await _user(client) for _ in range(10)]
    assert len(set(ids)) == 10
    failed = [r for r in proxy.log if r.fault in (Fault.SERVER_ERROR, Fault.RESET)]
    assert len([e for e in events if isinstance(e, RetryScheduled)]) == len(failed)
    assert not [e for e in events if isinstance(e, RateLimitWaited) and e.seconds > 1]


async def test_429_without_retry_after_backs_off_and_slows_down(
    client: ScimClient, proxy: FaultProxy
) -> None:
    proxy.script(Fault.RATE_LIMIT_BARE, Fault.RATE_LIMIT_BARE, path="/ServiceProviderConfig")
    before = client.rate_limiter.rate
    await client.discover()
    assert [r.status for r in proxy.requests("GET", "/ServiceProviderConfig")] == [429, 429, 200]
    assert client.rate_limiter.rate < before / 2


async def test_concurrency_is_bounded_and_a_broken_observer_is_harmless(
    proxy: FaultProxy,
) -> None:
    def observer(event: ScimEvent) -> None:
        raise RuntimeError("metrics backend down")

    proxy.rates = {Fault.SLOW: 1.0}
    proxy.slow_seconds = 0.2
    async with ScimClient(
        proxy.url, lambda: TOKEN, max_concurrency=2, observer=observer, retry=FAST_RETRY
    ) as client:
        await asyncio.gather(*(client.discover() for _ in range(3)))
    assert len(proxy.log) == 9  # three discovery documents each
    assert proxy.max_in_flight == 2


async def test_requests_queued_for_a_connection_slot_wait_out_a_retry_after(
    proxy: FaultProxy,
) -> None:
    # Eight slots, 24 requests: 16 queue for a slot while the first wave is out. One
    # of the wave gets 429 + Retry-After; the rest of the wave is slow, so slots free
    # up during the pause. The queued requests must wait for the pause, not the slot.
    proxy.retry_after = 1
    proxy.slow_seconds = 0.5
    proxy.script(Fault.RATE_LIMIT_SECONDS, *[Fault.SLOW] * 7, path="/ServiceProviderConfig")
    # A limiter that would let every request through at once, but for the pause.
    limiter = AdaptiveRateLimiter(max_rate=1000.0, burst=32.0)
    async with ScimClient(
        proxy.url,
        lambda: TOKEN,
        max_concurrency=8,
        rate_limiter=limiter,
        retry=FAST_RETRY,
        timeouts=Timeouts(total=5.0, connect=5.0),
    ) as client:
        await asyncio.gather(
            *(client.transport.request("GET", "/ServiceProviderConfig") for _ in range(24))
        )
    log = proxy.requests("GET", "/ServiceProviderConfig")
    assert len(log) == 25  # 24 answers and the one retry
    (pushed,) = [r for r in log if r.status == 429]
    # Everything but the first wave (the scripted faults) is a queued request or
    # the retry: none may reach the server before the pause is over.
    later = [r.at - pushed.at for r in log if r.fault is None]
    assert len(later) == 17
    assert min(later) >= proxy.retry_after - SLACK, sorted(later)


async def test_create_json_refuses_an_answer_without_a_usable_id(
    client: ScimClient, proxy: FaultProxy
) -> None:
    body = {"schemas": [User.__schema__], "userName": f"{unique()}@example.org"}
    proxy.script(Fault.SCHEMA_VIOLATION, method="POST")
    with pytest.raises(ScimInvalidResponseError, match="no id") as caught:
        await client.create_json(User, body)
    assert "POST /Users" in str(caught.value)
    proxy.script(Fault.NOT_JSON, method="POST")
    body["userName"] = f"{unique()}@example.org"
    with pytest.raises(ScimInvalidResponseError, match="not JSON"):
        await client.create_json(User, body)
