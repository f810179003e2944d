"""Passkey ceremonies (daemon/portal/mfa/passkeys.py) against a software authenticator.

A real SqliteStore holds the challenges and the factor records; the
authenticator (tests/portal/authenticator.py) builds the bytes a browser
and a security key would send, so each check of the ceremony can be made
to fail on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from daemon import logs
from daemon.metrics import REGISTRY
from daemon.model import User
from daemon.portal.mfa.passkeys import (
    CHALLENGE_GONE,
    KIND,
    MALFORMED,
    MAX_NAME,
    NOT_VERIFIED,
    NOT_YOURS,
    POSSIBLE_CLONE,
    Passkey,
    PasskeyRefused,
    Passkeys,
    clean_name,
)
from daemon.store.sqlite import SqliteStore
from tests.portal.authenticator import SoftAuthenticator, b64, unb64

BASE_URL = "https://sso.example.com"
ALICE = User(id="u-alice", username="alice", email="alice@example.com", given_name="Alice")
BOB = User(id="u-bob", username="bob", email="bob@example.com")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.db")
    await s.open()
    yield s
    await s.aclose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def passkeys(store: SqliteStore, clock: Clock) -> Passkeys:
    return Passkeys(
        store,
        base_url=BASE_URL,
        rp_name="provisiond",
        user_handle=lambda uid: hashlib.sha256(b"handle\0" + uid.encode()).digest(),
        clock=clock,
    )


@pytest.fixture
def audit_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    yield stream
    logs.unconfigure()


def audit_events(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def metric(result: str) -> float:
    value = REGISTRY.get_sample_value(
        "provisiond_mfa_total", {"factor": "passkey", "result": result}
    )
    return value or 0.0


def authenticator() -> SoftAuthenticator:
    return SoftAuthenticator(origin=BASE_URL, rp_id="sso.example.com")


async def register(
    passkeys: Passkeys, user: User, device: SoftAuthenticator, session: str = "s1", name: str = ""
) -> Passkey:
    handle, options = await passkeys.registration_options(user, session)
    return await passkeys.register(
        user, session, handle, device.create(options), name, client="192.0.2.1"
    )


async def assert_with(
    passkeys: Passkeys, user: User, device: SoftAuthenticator, session: str = "s1", **wrong: str
) -> Passkey:
    handle, options = await passkeys.authentication_options(user.id, session)
    return await passkeys.authenticate(
        user.id, session, handle, device.get(options, **wrong), client="192.0.2.1"
    )


async def test_register_then_authenticate(passkeys, store, clock, audit_log):
    device = authenticator()
    enrolled, used = metric("enrolled"), metric("success")
    handle, options = await passkeys.registration_options(ALICE, "s1")
    assert options["rp"] == {"id": "sso.example.com", "name": "provisiond"}
    assert options["attestation"] == "none"
    assert options["authenticatorSelection"]["userVerification"] == "preferred"
    assert options["authenticatorSelection"]["residentKey"] == "preferred"
    assert {p["alg"] for p in options["pubKeyCredParams"]} >= {-7, -257}
    # The user handle is a keyed digest, not the directory id.
    assert b"u-alice" not in unb64(options["user"]["id"])
    assert options["user"]["name"] == "alice"
    assert options["excludeCredentials"] == []

    passkey = await passkeys.register(
        ALICE, "s1", handle, device.create(options), "  My <b>laptop</b>\n ", client="192.0.2.1"
    )
    assert passkey.id == b64(device.credential_id)
    assert passkey.name == "My <b>laptop</b>"  # kept as typed; escaped where it is shown
    [record] = await store.factors(ALICE.id)
    assert (record.kind, record.id, record.created_at) == (KIND, passkey.id, clock.now)
    data = json.loads(record.data)
    assert data["sign_count"] == 0 and data["transports"] == ["internal"]
    assert data["public_key"] and data["user_handle"] == options["user"]["id"]

    # A second registration excludes the first passkey and keeps the same user handle.
    _, again = await passkeys.registration_options(ALICE, "s1")
    assert [c["id"] for c in again["excludeCredentials"]] == [passkey.id]
    assert again["user"]["id"] == options["user"]["id"]

    clock.now += 60
    handle, request = await passkeys.authentication_options(ALICE.id, "s1")
    assert request["rpId"] == "sso.example.com"
    assert [c["id"] for c in request["allowCredentials"]] == [passkey.id]
    assert request["userVerification"] == "preferred"
    used_passkey = await passkeys.authenticate(
        ALICE.id, "s1", handle, device.get(request), client="192.0.2.1"
    )
    assert used_passkey.sign_count == 1 and used_passkey.record.used_at == clock.now
    [record] = await store.factors(ALICE.id)
    assert json.loads(record.data)["sign_count"] == 1 and record.used_at == clock.now
    assert (await assert_with(passkeys, ALICE, device)).sign_count == 2

    assert metric("enrolled") == enrolled + 1 and metric("success") == used + 2
    events = audit_events(audit_log)
    assert [e["event"] for e in events if e["event"].startswith("mfa")] == [
        "mfa enrolled",
        "mfa used",
        "mfa used",
    ]
    assert all(e["factor"] == "passkey" and e["user_id"] == "u-alice" for e in events)
    assert all(e["client"] == "192.0.2.1" for e in events)


async def test_wrong_origin_is_refused(passkeys, audit_log):
    device = authenticator()
    handle, options = await passkeys.registration_options(ALICE, "s1")
    wrong = device.create(options, origin="https://sso.example.com.evil.example")
    with pytest.raises(PasskeyRefused) as refused:
        await passkeys.register(ALICE, "s1", handle, wrong, "", client="c")
    assert refused.value.message == NOT_VERIFIED
    assert await passkeys.passkeys(ALICE.id) == []

    await register(passkeys, ALICE, device)
    failures = metric("failure")
    with pytest.raises(PasskeyRefused) as refused:
        await assert_with(passkeys, ALICE, device, origin="http://sso.example.com")
    assert refused.value.message == NOT_VERIFIED and metric("failure") == failures + 1
    [failed] = [e for e in audit_events(audit_log) if e["event"] == "mfa failed"][-1:]
    assert failed["reason"] == "assertion not verified" and "origin" in str(failed["detail"])


async def test_wrong_rp_id_is_refused(passkeys):
    device = authenticator()
    handle, options = await passkeys.registration_options(ALICE, "s1")
    with pytest.raises(PasskeyRefused, match="could not be verified"):
        await passkeys.register(
            ALICE, "s1", handle, device.create(options, rp_id="example.com"), "", client="c"
        )
    await register(passkeys, ALICE, device)
    with pytest.raises(PasskeyRefused, match="could not be verified"):
        await assert_with(passkeys, ALICE, device, rp_id="evil.example")
    # The counter the refused assertion carried is not recorded.
    [passkey] = await passkeys.passkeys(ALICE.id)
    assert passkey.sign_count == 0


async def test_a_challenge_works_once(passkeys):
    device = authenticator()
    handle, options = await passkeys.registration_options(ALICE, "s1")
    answer = device.create(options)
    await passkeys.register(ALICE, "s1", handle, answer, "", client="c")
    with pytest.raises(PasskeyRefused) as refused:
        await passkeys.register(ALICE, "s1", handle, answer, "", client="c")
    assert refused.value.message == CHALLENGE_GONE

    handle, request = await passkeys.authentication_options(ALICE.id, "s1")
    assertion = device.get(request)
    await passkeys.authenticate(ALICE.id, "s1", handle, assertion, client="c")
    with pytest.raises(PasskeyRefused) as refused:
        await passkeys.authenticate(ALICE.id, "s1", handle, assertion, client="c")
    assert refused.value.message == CHALLENGE_GONE
    # Nor does an old assertion pass with a new challenge: it signed the old one.
    handle, _ = await passkeys.authentication_options(ALICE.id, "s1")
    with pytest.raises(PasskeyRefused, match="could not be verified"):
        await passkeys.authenticate(ALICE.id, "s1", handle, assertion, client="c")
    # And made-up handles are unknown.
    for made_up in ("", "x" * 32, "y" * 5000):
        with pytest.raises(PasskeyRefused, match="expired or was already used"):
            await passkeys.authenticate(ALICE.id, "s1", made_up, assertion, client="c")


async def test_a_challenge_expires(passkeys, clock):
    device = authenticator()
    await register(passkeys, ALICE, device)
    handle, request = await passkeys.authentication_options(ALICE.id, "s1")
    clock.now += 5 * 60 + 1
    with pytest.raises(PasskeyRefused, match="expired or was already used"):
        await passkeys.authenticate(ALICE.id, "s1", handle, device.get(request), client="c")


async def test_a_challenge_of_another_session_or_ceremony_is_refused(passkeys):
    device = authenticator()
    handle, options = await passkeys.registration_options(ALICE, "s1")
    with pytest.raises(PasskeyRefused, match="expired or was already used"):
        await passkeys.register(ALICE, "s2", handle, device.create(options), "", client="c")
    # Bound to its session: the refused attempt left it parked for that session,
    # which uses it once.
    await passkeys.register(ALICE, "s1", handle, device.create(options), "", client="c")
    with pytest.raises(PasskeyRefused, match="expired or was already used"):
        await passkeys.register(ALICE, "s1", handle, device.create(options), "", client="c")

    handle, request = await passkeys.authentication_options(ALICE.id, "s1")
    with pytest.raises(PasskeyRefused, match="expired or was already used"):
        await passkeys.authenticate(ALICE.id, "s2", handle, device.get(request), client="c")
    # A registration challenge does not answer an authentication, nor the reverse.
    handle, options = await passkeys.registration_options(ALICE, "s1")
    with pytest.raises(PasskeyRefused, match="expired or was already used"):
        await passkeys.authenticate(ALICE.id, "s1", handle, device.get(options), client="c")
    _, options = await passkeys.registration_options(ALICE, "s1")
    handle, request = await passkeys.authentication_options(ALICE.id, "s1")
    answer = authenticator().create(options, challenge=request["challenge"])
    with pytest.raises(PasskeyRefused, match="expired or was already used"):
        await passkeys.register(ALICE, "s1", handle, answer, "", client="c")
    # Nor does one user's challenge serve another in the same session.
    await register(passkeys, BOB, authenticator())
    handle, _ = await passkeys.authentication_options(ALICE.id, "s1")
    with pytest.raises(PasskeyRefused, match="expired or was already used"):
        await passkeys.authenticate(BOB.id, "s1", handle, device.get(request), client="c")


async def test_a_passkey_of_another_user_is_refused(passkeys, audit_log):
    alices, bobs = authenticator(), authenticator()
    await register(passkeys, ALICE, alices, session="sa")
    await register(passkeys, BOB, bobs, session="sb")
    handle, request = await passkeys.authentication_options(ALICE.id, "sa")
    with pytest.raises(PasskeyRefused) as refused:
        await passkeys.authenticate(ALICE.id, "sa", handle, bobs.get(request), client="c")
    assert refused.value.message == NOT_YOURS
    # Bob's key signed, but nothing of his changed, and nothing of Alice's.
    [bob_key] = await passkeys.passkeys(BOB.id)
    [alice_key] = await passkeys.passkeys(ALICE.id)
    assert bob_key.sign_count == 0 and alice_key.sign_count == 0
    failed = [e for e in audit_events(audit_log) if e["event"] == "mfa failed"]
    assert failed[-1]["user_id"] == "u-alice"
    assert failed[-1]["reason"] == "credential of another user or unknown"


async def test_a_user_handle_that_differs_is_refused(passkeys):
    device = authenticator()
    await register(passkeys, ALICE, device)
    device.user_handle = b"someone else"
    with pytest.raises(PasskeyRefused) as refused:
        await assert_with(passkeys, ALICE, device)
    assert refused.value.message == NOT_YOURS


async def test_a_counter_that_does_not_grow_is_refused_and_audited(passkeys, audit_log):
    device = authenticator()
    await register(passkeys, ALICE, device)
    await assert_with(passkeys, ALICE, device)
    await assert_with(passkeys, ALICE, device)  # stored counter: 2
    replayed = metric("replayed")
    for presented in (1, 2):  # backwards, then equal
        device.sign_count, device.counting = presented, False
        with pytest.raises(PasskeyRefused) as refused:
            await assert_with(passkeys, ALICE, device)
        assert refused.value.message == POSSIBLE_CLONE and refused.value.result == "replayed"
    assert metric("replayed") == replayed + 2
    [passkey] = await passkeys.passkeys(ALICE.id)
    assert passkey.sign_count == 2
    failed = [e for e in audit_events(audit_log) if e["event"] == "mfa failed"]
    assert [(e["stored_count"], e["presented_count"]) for e in failed] == [(2, 1), (2, 2)]
    assert all("cloned" in str(e["reason"]) for e in failed)
    # A zero counter after a non-zero one is also a step back.
    device.sign_count = 0
    with pytest.raises(PasskeyRefused, match="copied"):
        await assert_with(passkeys, ALICE, device)
    # Forward again: accepted.
    device.sign_count = 7
    assert (await assert_with(passkeys, ALICE, device)).sign_count == 7


async def test_an_authenticator_without_a_counter_is_accepted(passkeys):
    device = authenticator()
    device.counting = False  # always 0, as many platform authenticators send
    await register(passkeys, ALICE, device)
    for _ in range(3):
        assert (await assert_with(passkeys, ALICE, device)).sign_count == 0


async def test_racing_uses_of_a_cloned_key_let_one_through(passkeys, store):
    device = authenticator()
    await register(passkeys, ALICE, device)
    twin = device.clone()
    first, second = (
        await passkeys.authentication_options(ALICE.id, "s1"),
        await passkeys.authentication_options(ALICE.id, "s1"),
    )
    answers = (device.get(first[1]), twin.get(second[1]))  # both say counter 1
    results = await asyncio.gather(
        passkeys.authenticate(ALICE.id, "s1", first[0], answers[0], client="c"),
        passkeys.authenticate(ALICE.id, "s1", second[0], answers[1], client="c"),
        return_exceptions=True,
    )
    passed = [r for r in results if isinstance(r, Passkey)]
    refused = [r for r in results if isinstance(r, PasskeyRefused)]
    assert len(passed) == 1 and len(refused) == 1, results
    assert refused[0].result == "replayed"


async def test_malformed_answers_are_refused_plainly(passkeys):
    device = authenticator()
    await register(passkeys, ALICE, device)
    good = device.get((await passkeys.authentication_options(ALICE.id, "s1"))[1])
    broken: list[dict[str, object]] = [
        {},
        {"id": 5},
        {**good, "response": "nope"},
        {**good, "type": "password"},
        {**good, "rawId": "!!!not base64!!!", "id": "!!!not base64!!!"},
        {**good, "response": {**good["response"], "clientDataJSON": b64(b"\xff{")}},
        {**good, "response": {**good["response"], "authenticatorData": b64(b"short")}},
        {**good, "response": {**good["response"], "signature": b64(b"\x30\x02")}},
    ]
    for answer in broken:
        handle, _ = await passkeys.authentication_options(ALICE.id, "s1")
        with pytest.raises(PasskeyRefused) as refused:
            await passkeys.authenticate(ALICE.id, "s1", handle, answer, client="c")
        assert refused.value.message in (MALFORMED, NOT_VERIFIED, NOT_YOURS), answer

    handle, options = await passkeys.registration_options(ALICE, "s1")
    created = authenticator().create(options)
    created["response"]["attestationObject"] = b64(b"\xa1\x63fmt")  # truncated CBOR
    with pytest.raises(PasskeyRefused, match="could not be verified"):
        await passkeys.register(ALICE, "s1", handle, created, "", client="c")
    assert len(await passkeys.passkeys(ALICE.id)) == 1


async def test_names_rename_and_a_removed_passkey(passkeys, store, clock, audit_log):
    assert clean_name(None) == clean_name("  \t ") == "Passkey"
    assert clean_name("a\x00b\u202ec\nd") == "abc d"
    assert len(clean_name("x" * 1000)) == MAX_NAME
    device, other = authenticator(), authenticator()
    first = await register(passkeys, ALICE, device, name="Laptop")
    clock.now += 1
    second = await register(passkeys, ALICE, other)
    assert [p.name for p in await passkeys.passkeys(ALICE.id)] == ["Laptop", "Passkey"]
    assert await passkeys.rename(ALICE.id, second.id, "Phone", client="c")
    assert not await passkeys.rename(BOB.id, second.id, "Mine now", client="c")
    assert [p.name for p in await passkeys.passkeys(ALICE.id)] == ["Laptop", "Phone"]
    # A rename keeps the counter: the key still signs in, and its count still counts.
    await assert_with(passkeys, ALICE, other)
    assert await passkeys.rename(ALICE.id, second.id, "Work phone", client="c")
    assert (await assert_with(passkeys, ALICE, other)).sign_count == 2

    # Removed (the security page removes any factor through the store): gone for good.
    assert await store.delete_factor(ALICE.id, first.id)
    assert [p.id for p in await passkeys.passkeys(ALICE.id)] == [second.id]
    with pytest.raises(PasskeyRefused) as refused:
        await assert_with(passkeys, ALICE, device)
    assert refused.value.message == NOT_YOURS
    assert "mfa renamed" in [e["event"] for e in audit_events(audit_log)]


async def test_no_passkey_no_options(passkeys):
    with pytest.raises(PasskeyRefused, match="no passkey"):
        await passkeys.authentication_options(ALICE.id, "s1")
