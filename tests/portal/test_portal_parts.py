"""The portal's parts on their own: throttle, paths, session key, sessions, failures."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from daemon import logs
from daemon.config import PublicListenerSettings
from daemon.directory import Directory
from daemon.portal import build_public_app
from daemon.portal.mfa.flow import needs_second_factor
from daemon.portal.paths import local_path
from daemon.portal.pending import PendingFull, PendingRequests
from daemon.portal.session_key import (
    GENERATED_KEY_NAME,
    STORE_KEY_NAME,
    SessionKey,
    SessionKeyError,
    load_session_key,
)
from daemon.portal.sessions import IdpSession, MemorySessionStore, StoreSessionStore
from daemon.portal.throttle import FailureWindow, StoreThrottle
from daemon.secrets import SECRETS, SecretStore
from daemon.store import SessionRecord
from daemon.store.sqlite import SqliteStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failure_window_slides():
    clock = Clock()
    window = FailureWindow(3, 60, clock=clock)
    for _ in range(3):
        window.fail("k")
    assert window.blocked("k")
    clock.now += 61
    assert not window.blocked("k")
    window.fail("k")
    assert not window.blocked("k")


def test_failure_window_is_bounded():
    window = FailureWindow(1, 60, capacity=10, clock=Clock())
    for n in range(100):
        window.fail(f"k{n}")
    assert window.blocked("k99")
    assert not window.blocked("k0")  # forgotten, not kept forever


async def test_store_throttle_slides_and_keeps_no_typed_username(tmp_path: Path):
    clock = Clock()
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    key = SessionKey(b"k" * 32)
    try:
        throttle = StoreThrottle(
            store,
            per_user=3,
            per_address=5,
            window=60,
            user_key=lambda login: key.digest("throttle", login),
            clock=clock,
        )
        typed = "Correct-Horse-Typed-Into-Username"
        for _ in range(3):
            assert not await throttle.blocked(typed, "192.0.2.1", account=None)
            await throttle.failed(typed, "192.0.2.1", account=None)
        # Per name, without regard to case and blanks around it; from any address.
        assert await throttle.blocked(f"  {typed.lower()} ", "198.51.100.7", account=None)
        assert not await throttle.blocked("someone-else", "198.51.100.7", account=None)
        # A name that resolves to an account counts as the account, whatever is typed.
        await throttle.failed("alice", "198.51.100.7", account="u-alice")
        await throttle.failed("alice@nordlys.example", "198.51.100.7", account="u-alice")
        assert not await throttle.blocked(typed, "198.51.100.7", account="u-alice")
        await throttle.failed(typed, "198.51.100.7", account="u-alice")
        assert await throttle.blocked("ALICE", "198.51.100.7", account="u-alice")
        assert not await throttle.blocked("alice", "198.51.100.7", account=None)
        # A success resets the account's count, not the address's nor a name's.
        await throttle.succeeded(account="u-alice")
        assert not await throttle.blocked("alice", "198.51.100.7", account="u-alice")
        assert await throttle.blocked(typed, "198.51.100.7", account=None)
        clock.now += 61
        assert not await throttle.blocked(typed, "198.51.100.7", account=None)
        await throttle.failed("other", "192.0.2.1", account=None)
        await throttle.failed("other", "192.0.2.1", account=None)
        await throttle.failed("other", "192.0.2.1", account=None)
        await throttle.failed("other", "192.0.2.1", account="u-bob")
        await throttle.failed("other", "192.0.2.1", account="u-bob")
        assert await throttle.blocked("third", "192.0.2.1", account=None)  # 5 from this address
        await throttle.succeeded(account="u-bob")
        assert await throttle.blocked("third", "192.0.2.1", account="u-carol")
        clock.now += 61
        assert not await throttle.blocked("third", "192.0.2.1", account=None)
    finally:
        await store.aclose()
    with sqlite3.connect(tmp_path / "state.db") as db:
        keys = [row[0] for row in db.execute("SELECT key FROM login_failures")]
    assert keys and all(typed.casefold() not in k.casefold() for k in keys)
    assert all("u-alice" not in k and "u-bob" not in k for k in keys)


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ("/saml2/x?resume=a", "/saml2/x?resume=a"),
        ("/", "/"),
        (None, "/"),
        ("", "/"),
        ("https://evil.example", "/"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("/\nx", "/"),
        ("http:/evil.example", "/"),
        ("x" * 5000, "/"),
    ],
)
def test_local_path(candidate, expected):
    assert local_path(candidate) == expected


async def test_without_a_key_file_the_key_is_kept_in_the_store(tmp_path: Path):
    secrets = SecretStore()
    one, two = SqliteStore(tmp_path / "state.db"), SqliteStore(tmp_path / "state.db")
    await one.open()
    await two.open()
    try:
        # Two replicas starting at once on one store agree on one key.
        first, second = await asyncio.gather(
            load_session_key(None, tmp_path, secrets, one),
            load_session_key(None, tmp_path, secrets, two),
        )
        assert first.sign("x") == second.sign("x")
        assert not (tmp_path / GENERATED_KEY_NAME).exists()
        stored = await one.get_meta(STORE_KEY_NAME)
        assert stored is not None and len(stored) == 64
        # Known as a secret, so the log redacts it and the suite's scan looks for it.
        assert stored not in secrets.redact(f"key {stored}")
    finally:
        await one.aclose()
        await two.aclose()
    again = SqliteStore(tmp_path / "state.db")
    await again.open()
    try:
        third = await load_session_key(None, tmp_path, SecretStore(), again)
        assert third.sign("x") == first.sign("x")  # a restart keeps the key
    finally:
        await again.aclose()


async def test_a_key_file_an_older_provisiond_generated_keeps_working(tmp_path: Path):
    path = tmp_path / GENERATED_KEY_NAME
    path.write_text("0123456789abcdef" * 4 + "\n")
    path.chmod(0o600)
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        key = await load_session_key(None, tmp_path, SecretStore(), store)
        assert key.sign("x") == SessionKey(b"0123456789abcdef" * 4).sign("x")
        assert await store.get_meta(STORE_KEY_NAME) is None
    finally:
        await store.aclose()


async def test_configured_session_key_must_be_long(tmp_path: Path):
    short = tmp_path / "key"
    short.write_text("only-sixteen-chr")
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        with pytest.raises(SessionKeyError, match="at least 32"):
            await load_session_key(short, tmp_path, SecretStore(), store)
        with pytest.raises(SessionKeyError, match="does not exist"):
            await load_session_key(tmp_path / "missing", tmp_path, SecretStore(), store)
    finally:
        await store.aclose()


def test_signed_values_and_csrf_tokens():
    key = SessionKey(b"k" * 32)
    other = SessionKey(b"o" * 32)
    signed = key.sign("abc")
    assert key.unsign(signed) == "abc"
    assert other.unsign(signed) is None
    assert key.unsign("abc.forged") is None
    assert key.unsign(None) is None
    assert key.csrf_ok("abc", key.csrf_token("abc"))
    assert not key.csrf_ok("abd", key.csrf_token("abc"))
    assert not key.csrf_ok(None, key.csrf_token("abc"))


async def test_session_store_revokes_by_index_and_user():
    store = MemorySessionStore(capacity=2)
    a = IdpSession(user_id="u1", username="a", authenticated_at=0, last_seen=0)
    b = IdpSession(user_id="u1", username="a", authenticated_at=0, last_seen=0)
    await store.put(a)
    await store.put(b)
    assert await store.delete_by_index(a.session_index) == 1
    assert await store.get(a.id) is None
    assert await store.delete_user("u1") == 1
    for _ in range(3):
        await store.put(IdpSession(user_id="u2", username="b", authenticated_at=0, last_seen=0))
    assert len(store) == 2


async def test_store_sessions_record_a_use_at_most_every_few_seconds(tmp_path: Path):
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        sessions = StoreSessionStore(store, idle_timeout=1000, absolute_timeout=5000)
        s = IdpSession(user_id="u1", username="a", authenticated_at=100, last_seen=100)
        await sessions.put(s)
        assert await sessions.get(s.id) == s
        # 1% of the idle timeout: a use 5 s later is not written...
        assert await sessions.touch(s, 105) == s
        record = await store.get_session(s.id)
        assert record is not None and (record.last_seen, record.expires_at) == (100, 1100)
        # ... one 10 s later is, with the expiry it implies.
        touched = await sessions.touch(s, 110)
        assert touched is not None and touched.last_seen == 110
        record = await store.get_session(s.id)
        assert record is not None and (record.last_seen, record.expires_at) == (110, 1110)
        # The absolute timeout caps the expiry.
        late = await sessions.touch(touched, 4500)
        assert late is not None
        record = await store.get_session(s.id)
        assert record is not None and record.expires_at == 5100
        # Revoked elsewhere: a touch does not bring it back.
        assert await sessions.delete_by_index(s.session_index) == 1
        assert await sessions.touch(late, 4600) is None
        assert await sessions.get(s.id) is None
    finally:
        await store.aclose()


def test_session_timeouts():
    s = IdpSession(user_id="u", username="u", authenticated_at=0, last_seen=0)
    assert not s.expired(10, idle_timeout=60, absolute_timeout=100)
    assert s.expired(61, idle_timeout=60, absolute_timeout=100)
    assert s.touched(95).expired(101, idle_timeout=60, absolute_timeout=100)


async def test_pending_requests_are_single_use_and_bounded(tmp_path: Path):
    clock = Clock()
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        pending: PendingRequests[str] = PendingRequests(
            store, "test", encode=str, decode=str, capacity=2, lifetime=10, clock=clock
        )
        handle = await pending.park("a")
        assert await pending.take(handle) is not None
        assert await pending.take(handle) is None
        await pending.park("b")
        await pending.park("c")
        with pytest.raises(PendingFull):
            await pending.park("d")
        clock.now += 11
        late = await pending.park("e")  # the expired ones made room
        clock.now += 11
        assert await pending.take(late) is None
        # Another namespace (another sign-on endpoint) does not know this one's handles.
        other: PendingRequests[str] = PendingRequests(
            store, "other", encode=str, decode=str, clock=clock
        )
        mine = await pending.park("f")
        assert await other.take(mine) is None
        parked = await pending.take(mine)
        assert parked is not None and parked.value == "f"
    finally:
        await store.aclose()


async def test_unexpected_failure_is_a_plain_500(tmp_path: Path):
    SECRETS.register("a-secret-value-that-must-not-leak")

    async def broken(_: web.Request) -> web.Response:
        raise RuntimeError("boom a-secret-value-that-must-not-leak")

    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        app = await build_public_app(
            PublicListenerSettings(enabled=True, base_url="http://127.0.0.1:1"),
            directory=Directory(store, source=None),  # type: ignore[arg-type]
            plugin_routes=[[web.get("/broken", broken)]],
            state_dir=tmp_path,
            config_dir=tmp_path,
        )
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            response = await client.get("/broken")
            assert response.status == 500
            text = await response.text()
    finally:
        logs.unconfigure()
        await store.aclose()
    assert "boom" not in text and "Traceback" not in text
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    # The operator gets the traceback, with the secret redacted.
    log = stream.getvalue()
    assert "RuntimeError" in log
    assert "a-secret-value-that-must-not-leak" not in log


def test_a_second_factor_counts_once_passed_and_for_force_authn_only_after_the_request():
    s = IdpSession(user_id="u", username="u", authenticated_at=100, last_seen=100)
    assert needs_second_factor(s, since=None)
    passed = replace(s, mfa_at=200, factors=("totp",))
    assert not needs_second_factor(passed, since=None)
    assert not needs_second_factor(passed, since=200)
    assert needs_second_factor(passed, since=201)
    assert (s.last_authenticated, passed.last_authenticated) == (100, 200)


async def test_sessions_keep_the_second_factor_and_old_rows_still_read(tmp_path: Path):
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        sessions = StoreSessionStore(store, idle_timeout=1000, absolute_timeout=5000)
        s = IdpSession(user_id="u1", username="a", authenticated_at=100, last_seen=100)
        await sessions.put(s)
        passed = replace(s, mfa_at=150, factors=("totp", "recovery"), last_seen=150)
        assert await sessions.update(passed)
        assert await sessions.get(s.id) == passed
        # A row written before second factors existed: a session that passed none.
        old = SessionRecord(
            id="old", session_index="_sold", user_id="u1",
            data='{"username": "a", "authenticated_at": 90}', last_seen=95, expires_at=1095,
        )  # fmt: skip
        await store.put_session(old, 95, 50)
        read = await sessions.get("old")
        assert read is not None and (read.mfa_at, read.factors) == (None, ())
        # Revoked elsewhere: an update does not bring it back.
        await sessions.delete(s.id)
        assert not await sessions.update(passed)
        assert await sessions.get(s.id) is None
        memory = MemorySessionStore()
        assert not await memory.update(passed)
        await memory.put(s)
        assert await memory.update(passed) and await memory.get(s.id) == passed
    finally:
        await store.aclose()
