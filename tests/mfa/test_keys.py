"""The MFA key: generated once into the state directory or read from the configured file,
checked against the id the store remembers, sealing with AES-GCM, redacted everywhere."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import anyio
import pyotp
import pytest
from structlog.testing import capture_logs

from daemon import logs
from daemon.portal.errors import PortalConfigError
from daemon.portal.mfa.factors import Factors
from daemon.portal.mfa.keys import (
    GENERATED_KEY_NAME,
    STORE_KEY_ID,
    MfaKey,
    MfaKeyError,
    MfaKeyNotCurrent,
    key_is_current,
    load_mfa_key,
)
from daemon.secrets import REDACTED, SecretStore
from daemon.store import FactorRecord, Store
from daemon.store.sqlite import SqliteStore
from tests.store.backends import StoreFactory

KEY_A = "a" * 16 + "0123456789abcdef0123456789abcdef"
KEY_B = "b" * 16 + "0123456789abcdef0123456789abcdef"


def write(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    return path


async def enrolled(store: Store) -> None:
    """Someone has a second factor: from now on the store's key id binds."""
    record = FactorRecord("u1", "recovery:00", "recovery", "recovery code", "{}", created_at=1.0)
    await store.put_factor(record)


async def test_a_key_is_generated_once_into_the_state_dir(
    store: SqliteStore, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    first = await load_mfa_key(None, state_dir, store, SecretStore())
    path = state_dir / GENERATED_KEY_NAME
    content = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(content.strip()) == 64
    assert await store.get_meta(STORE_KEY_ID) == first.id
    again = await load_mfa_key(None, state_dir, store, SecretStore())
    assert again.id == first.id
    assert path.read_text() == content
    # The same key: what one seals, the other opens.
    assert again.open(first.seal(b"JBSWY3DP", aad="u1"), aad="u1") == b"JBSWY3DP"


async def test_the_configured_file_is_used_and_nothing_is_generated(
    store: SqliteStore, tmp_path: Path
) -> None:
    configured = write(tmp_path / "mfa.key", KEY_A)
    key = await load_mfa_key(configured, tmp_path / "state", store, SecretStore())
    assert key.id == MfaKey(KEY_A.encode()).id
    assert not (tmp_path / "state" / GENERATED_KEY_NAME).exists()
    assert await store.get_meta(STORE_KEY_ID) == key.id


async def test_another_key_than_the_stores_is_refused_naming_the_setting(
    store: SqliteStore, tmp_path: Path
) -> None:
    first = await load_mfa_key(write(tmp_path / "a.key", KEY_A), tmp_path, store, SecretStore())
    await enrolled(store)
    other = write(tmp_path / "b.key", KEY_B)
    with pytest.raises(MfaKeyError) as caught:
        await load_mfa_key(other, tmp_path, store, SecretStore())
    message = str(caught.value)
    assert f"http.public.mfa_key_file {other}" in message
    assert f"holds MFA key {MfaKey(KEY_B.encode()).id}" in message
    assert f"sealed with MFA key {first.id}" in message
    assert "provisiond mfa reset --all" in message
    assert KEY_A not in message and KEY_B not in message
    assert isinstance(caught.value, PortalConfigError)  # the service's start-up error
    assert await store.get_meta(STORE_KEY_ID) == first.id


async def test_a_generated_key_replaced_by_another_is_refused(
    store: SqliteStore, tmp_path: Path
) -> None:
    await load_mfa_key(None, tmp_path, store, SecretStore())
    await enrolled(store)
    write(tmp_path / GENERATED_KEY_NAME, KEY_B)
    with pytest.raises(MfaKeyError, match=r"http.public.mfa_key_file is not set"):
        await load_mfa_key(None, tmp_path, store, SecretStore())


async def test_a_missing_generated_file_is_refused_while_the_store_has_a_key_id(
    store: SqliteStore, tmp_path: Path
) -> None:
    key = await load_mfa_key(None, tmp_path, store, SecretStore())
    await enrolled(store)
    (tmp_path / GENERATED_KEY_NAME).unlink()
    with pytest.raises(MfaKeyError) as caught:
        await load_mfa_key(None, tmp_path, store, SecretStore())
    message = str(caught.value)
    assert str(tmp_path / GENERATED_KEY_NAME) in message and "does not exist" in message
    assert "http.public.mfa_key_file" in message and key.id in message
    # Not silently replaced by a new key.
    assert not (tmp_path / GENERATED_KEY_NAME).exists()


async def test_a_missing_configured_file_is_refused(store: SqliteStore, tmp_path: Path) -> None:
    path = tmp_path / "mfa.key"
    with pytest.raises(MfaKeyError, match=r"http.public.mfa_key_file .*mfa.key does not exist"):
        await load_mfa_key(path, tmp_path, store, SecretStore())
    key = await load_mfa_key(write(path, KEY_A), tmp_path, store, SecretStore())
    await enrolled(store)
    path.unlink()
    with pytest.raises(MfaKeyError, match=rf"does not exist, but .* MFA key {key.id}"):
        await load_mfa_key(path, tmp_path, store, SecretStore())


async def test_a_short_key_is_refused(store: SqliteStore, tmp_path: Path) -> None:
    with pytest.raises(MfaKeyError, match=r"http.public.mfa_key_file .* at least 32 characters"):
        await load_mfa_key(write(tmp_path / "k", "tooshort-key"), tmp_path, store, SecretStore())
    assert await store.get_meta(STORE_KEY_ID) is None


async def test_a_forgotten_key_id_takes_the_next_key(store: SqliteStore, tmp_path: Path) -> None:
    await load_mfa_key(write(tmp_path / "a.key", KEY_A), tmp_path, store, SecretStore())
    await store.set_meta(STORE_KEY_ID, "")  # what `provisiond mfa reset --all` leaves
    key = await load_mfa_key(write(tmp_path / "b.key", KEY_B), tmp_path, store, SecretStore())
    assert await store.get_meta(STORE_KEY_ID) == key.id == MfaKey(KEY_B.encode()).id


async def test_replicas_starting_with_different_keys_on_one_store_agree_on_one(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    stores = [await store_factory.open(), await store_factory.open()]
    files = [write(tmp_path / "a.key", KEY_A), write(tmp_path / "b.key", KEY_B)]
    loaded: list[MfaKey] = []
    refused: list[MfaKeyError] = []

    async def start(store: Store, path: Path) -> None:
        try:
            loaded.append(await load_mfa_key(path, tmp_path, store, SecretStore()))
        except MfaKeyError as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tg:
        for store, path in zip(stores, files, strict=True):
            tg.start_soon(start, store, path)
    # No one has a second factor yet: both start, and exactly one key is the store's.
    assert len(loaded) == 2 and not refused
    current = [k for k, s in zip(loaded, stores, strict=True) if await key_is_current(s, k)]
    assert len(current) == 1
    assert await stores[0].get_meta(STORE_KEY_ID) == current[0].id
    # Once someone enrolled, the other key is refused at start-up.
    await enrolled(stores[0])
    other = files[1] if current[0].id == MfaKey(KEY_A.encode()).id else files[0]
    with pytest.raises(MfaKeyError, match="sealed with MFA key"):
        await load_mfa_key(other, tmp_path, stores[1], SecretStore())


async def test_before_anyone_enrols_another_key_takes_over_with_a_warning(
    store: SqliteStore, tmp_path: Path
) -> None:
    # Two replicas with their own generated keys, upgraded from a version without MFA.
    first = await load_mfa_key(None, tmp_path / "r1", store, SecretStore())
    with capture_logs() as logged:
        second = await load_mfa_key(None, tmp_path / "r2", store, SecretStore())
    assert first.id != second.id
    assert await store.get_meta(STORE_KEY_ID) == second.id
    [warning] = [e for e in logged if e["log_level"] == "warning"]
    assert warning["previous_key_id"] == first.id and warning["key_id"] == second.id
    said = repr(logged)
    assert "no one has a second factor yet" in said and "http.public.mfa_key_file" in said
    assert (tmp_path / "r1" / GENERATED_KEY_NAME).read_text().strip() not in said
    # A missing generated file is simply generated again while nothing is sealed.
    (tmp_path / "r1" / GENERATED_KEY_NAME).unlink()
    again = await load_mfa_key(None, tmp_path / "r1", store, SecretStore())
    assert await store.get_meta(STORE_KEY_ID) == again.id != first.id


async def test_a_replica_whose_key_is_not_the_stores_enrols_no_one(
    store: SqliteStore, tmp_path: Path
) -> None:
    first = await load_mfa_key(None, tmp_path / "r1", store, SecretStore())
    await load_mfa_key(None, tmp_path / "r2", store, SecretStore())  # took the id over
    factors = Factors(store, first, clock=lambda: 1_800_000_000.0)
    secret = factors.new_totp_secret()
    code = pyotp.TOTP(secret).at(1_800_000_000)
    with capture_logs() as logged, pytest.raises(MfaKeyNotCurrent, match="mfa_key_file"):
        await factors.confirm_totp("u1", secret, code)
    with pytest.raises(MfaKeyNotCurrent):
        await factors.new_recovery_codes("u1")
    assert await store.factors("u1") == []
    [error] = [e for e in logged if e["log_level"] == "error"]
    assert "enrolment refused" in error["event"] and "http.public.mfa_key_file" in error["event"]


def test_sealed_values_open_only_with_the_key_and_the_same_binding() -> None:
    key, other = MfaKey(KEY_A.encode()), MfaKey(KEY_B.encode())
    sealed = key.seal(b"secret bytes", aad="factor:u1:totp")
    assert key.open(sealed, aad="factor:u1:totp") == b"secret bytes"
    assert key.seal(b"secret bytes", aad="factor:u1:totp") != sealed  # a fresh nonce each time
    assert b"secret bytes".hex() not in sealed
    with pytest.raises(MfaKeyError, match=rf"does not open with MFA key {key.id}"):
        key.open(sealed, aad="factor:u2:totp")  # copied to another user
    with pytest.raises(MfaKeyError):
        other.open(sealed, aad="factor:u1:totp")
    flipped = sealed[:20] + ("A" if sealed[20] != "A" else "B") + sealed[21:]
    for tampered in (flipped, sealed[:-2], sealed + "AAAA", "", "!!!", "é" * 40, "A" * 10_000):
        with pytest.raises(MfaKeyError):
            key.open(tampered, aad="factor:u1:totp")


def test_digests_are_keyed_and_separated_by_purpose() -> None:
    key, other = MfaKey(KEY_A.encode()), MfaKey(KEY_B.encode())
    assert key.digest("recovery", "abcd") == key.digest("recovery", "abcd")
    assert len(key.digest("recovery", "abcd")) == 64
    assert key.digest("recovery", "abcd") != other.digest("recovery", "abcd")
    assert key.digest("recovery", "abcd") != key.digest("throttle", "abcd")
    assert key.id != other.id and len(key.id) == 16
    assert KEY_A not in repr(key) and key.id in repr(key)


def test_a_key_shorter_than_32_bytes_is_refused() -> None:
    with pytest.raises(MfaKeyError, match="at least 32 bytes"):
        MfaKey(b"short")


async def test_the_key_is_redacted_from_logs(store: SqliteStore, tmp_path: Path) -> None:
    secrets = SecretStore()
    configured = write(tmp_path / "mfa.key", KEY_A)
    await load_mfa_key(configured, tmp_path, store, secrets)
    generated_dir = tmp_path / "other"
    other_store = SqliteStore(tmp_path / "other.db")
    await other_store.open()
    try:
        await load_mfa_key(None, generated_dir, other_store, secrets)
    finally:
        await other_store.aclose()
    generated = (generated_dir / GENERATED_KEY_NAME).read_text().strip()
    assert secrets.redact(f"a={KEY_A} b={generated}") == f"a={REDACTED} b={REDACTED}"

    stream_path = tmp_path / "log.txt"
    with stream_path.open("w") as stream:
        logs.configure("info", "json", secrets=secrets, stream=stream)
        try:
            logging.getLogger("provisiond.test").warning("leaked %s", KEY_A)
        finally:
            logs.unconfigure()
    text = stream_path.read_text()
    assert KEY_A not in text and REDACTED in text
