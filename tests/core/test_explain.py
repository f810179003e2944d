"""``explain``: every scope case, the pending change, errors, holds and sign-in."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from daemon.engine import Engine
from daemon.explain import SignInRules, SignOn, UnknownUser, explain
from daemon.model import AccountState, Snapshot, make_group
from daemon.store import REJECTED, FactorRecord

from .support import FedSource, RecordingTarget, engine, slot, user

BOUND = "App Users"
RULES = SignInRules(True, {"app": SignOn(True)})


def world(n: int = 30, members: list[str] | None = None, **changed: object) -> Snapshot:
    users = [user(f"u{i}", given_name="Given") for i in range(n)]
    users = [msgspec.structs.replace(u, **changed.get(u.id, {})) for u in users]  # type: ignore[arg-type]
    ids = members if members is not None else [u.id for u in users if u.id != "u29"]
    return Snapshot.of(
        users, [make_group("g-app", BOUND, ids), make_group("g-eng", "Engineering", ["u1"])]
    )


async def setup(tmp_path: Path) -> tuple[Engine, FedSource, RecordingTarget]:
    source = FedSource(world())
    target = RecordingTarget()
    eng = await engine(tmp_path, source, [slot(target, [BOUND])], retry_base=30, retry_max=60)
    await eng.cycle()
    return eng, source, target


async def test_a_granted_user_by_username_email_or_id(tmp_path: Path) -> None:
    eng, _s, _t = await setup(tmp_path)
    targets = [s.settings for s in eng.targets]
    for login in ("u1", "U1@X.example", " u1 "):
        e = await explain(eng.store, login, targets, RULES)
        assert e.user_id == "u1" and e.groups == ["App Users", "Engineering"]
        [t] = e.targets
        assert (t.in_scope, t.scope, t.state) == (True, "granted by App Users", "active")
        assert t.granting_groups == ["App Users"]
        assert t.remote_id == "r-u1" and t.last_written is not None
        assert t.last_written_at is not None and t.pending == []
        assert (t.may_sign_in, t.sign_in) == (True, "yes")
        assert [x.outcome for x in t.log] == ["delivered", "planned"]
    assert e.directory is not None and e.directory["given_name"] == "Given"
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_a_user_in_no_bound_group(tmp_path: Path) -> None:
    eng, _s, _t = await setup(tmp_path)
    [t] = (await explain(eng.store, "u29", [s.settings for s in eng.targets], RULES)).targets
    assert not t.in_scope
    assert t.scope == "in none of the groups bound to app (bound: App Users)"
    assert t.state == "not provisioned" and not t.may_sign_in
    assert "not granted app" in t.sign_in
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_suspended_failing_removed_and_unknown(tmp_path: Path) -> None:
    eng, source, target = await setup(tmp_path)
    targets = [s.settings for s in eng.targets]
    snap = world(u2={"state": AccountState.SUSPENDED}, u3={"title": "CTO"})
    del snap.users["u4"]
    source.set(
        Snapshot.of(
            list(snap.users.values()),
            [make_group("g-app", BOUND, [u for u in snap.users if u != "u29"])],
        )
    )
    target.fail = {"u3"}
    await eng.cycle()

    [t] = (await explain(eng.store, "u2", targets, RULES)).targets
    assert not t.in_scope and t.state == "deactivated"
    assert t.scope == "in App Users, but suspended in the directory" and not t.may_sign_in
    assert t.sign_in == "suspended in the directory"

    [t] = (await explain(eng.store, "u3", targets, RULES)).targets
    assert t.in_scope and t.pending_status == "retry"
    assert t.pending == ["update user u3: title"]
    assert t.last_error == "refused by the test" and t.attempts == 1
    assert t.next_retry_at is not None
    assert [x.outcome for x in t.log[:2]] == ["failed", "planned"]
    # Granted (the committed desired state is active): sign-in does not wait for delivery.
    assert t.may_sign_in

    e = await explain(eng.store, "u4", targets, RULES)
    assert e.directory is None and e.username == "u4"
    [t] = e.targets
    assert (t.in_scope, t.scope) == (False, "removed from the directory")
    assert t.sign_in == "removed from the directory"

    with pytest.raises(UnknownUser, match="'nobody'"):
        await explain(eng.store, "nobody", targets, RULES)
    with pytest.raises(UnknownUser):
        await explain(eng.store, "  ", targets, RULES)
    await eng.store.aclose()  # type: ignore[attr-defined]


async def test_held_and_rejected_and_sign_in_rules(tmp_path: Path) -> None:
    eng, source, _t = await setup(tmp_path)
    targets = [s.settings for s in eng.targets]
    source.set(world(members=[]))  # everyone leaves the bound group: held
    await eng.cycle()
    [t] = (await explain(eng.store, "u5", targets, RULES)).targets
    assert t.pending_status == "held" and not t.in_scope
    assert t.held_reason == "left every group bound to the target: would be deactivated"
    assert t.state == "active"  # the target keeps it until an operator decides
    await eng.store.decide("app", [("user", "u5")], REJECTED, "ops", 1.0)
    [t] = (await explain(eng.store, "u5", targets, RULES)).targets
    assert t.decision == REJECTED
    assert (t.decided_by, t.decided_at) == ("ops", 1.0)  # as `provisiond held` shows it
    # Once a cycle has used the rejection (the user is no longer held), it still says who.
    await eng.cycle()
    [t] = (await explain(eng.store, "u5", targets, RULES)).targets
    assert t.pending_status != "held"
    assert (t.decision, t.decided_by, t.decided_at) == (REJECTED, "ops", 1.0)

    off = SignInRules(False, {"app": SignOn(True)})
    [t] = (await explain(eng.store, "u1", targets, off)).targets
    assert t.sign_in == "the public listener is off (http.public.enabled)"
    [t] = (await explain(eng.store, "u1", targets, SignInRules(True))).targets
    assert t.sign_in == "target app has no SAML sign-on (options.sso.enabled)"
    mfa = SignInRules(True, {"app": SignOn(True, require_mfa=True)})
    [t] = (await explain(eng.store, "u1", targets, mfa)).targets
    assert t.may_sign_in and "none enrolled" in t.sign_in
    await eng.store.put_factor(FactorRecord("u1", "totp", "totp", "phone", "{}", 1.0))
    [t] = (await explain(eng.store, "u1", targets, mfa)).targets
    assert t.sign_in == "yes, with a second factor (1 enrolled)"
    doc = (await explain(eng.store, "u1", targets, mfa)).to_json()
    assert doc["targets"][0]["log"][0]["key"] == "user:u1"
    await eng.store.aclose()  # type: ignore[attr-defined]
