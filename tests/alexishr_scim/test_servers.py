"""Server variants (no PATCH, no filter), faults, tokens, hostile bodies, drift, quarantine.

The token tests run against the AlexisHR preset and a ``kind: scim`` application
configured in YAML (``kind``).
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from daemon.model import Snapshot, make_group
from daemon.secrets import REDACTED, SECRETS
from tests.scim.faults import Fault
from tests.scim.harness import default_service_provider_config

from .world import (
    BOUND,
    KIND_INFO,
    KINDS,
    Kind,
    converge,
    expected_mapping,
    mapped,
    person,
    world,
)


def _org(n: int, title: str = "Engineer", members: int | None = None) -> Snapshot:
    users = [person(f"s{i:03d}", title=title) for i in range(n)]
    ids = [u.id for u in users][: members if members is not None else n]
    return Snapshot.of(users, [make_group("g-app", BOUND, ids)])


def _spc(**changes: Any) -> dict[str, Any]:
    spc = default_service_provider_config()
    for key, value in changes.items():
        spc[key] = value
    return spc


async def test_without_patch_the_target_uses_put(tmp_path: Path) -> None:
    async with world(tmp_path, _org(3), spc=_spc(patch={"supported": False})) as w:
        await converge(w)
        w.source.set(_org(3, title="Staff", members=2))
        await converge(w)
        assert not w.proxy.requests("PATCH")
        assert w.proxy.requests("PUT", "/Users/")
        users = w.users_by_external()
        assert {u["title"] for u in users.values()} == {"Staff"}
        assert users["s002"]["active"] is False
        assert len(w.dump("Groups")[0]["members"]) == 2


async def test_without_filter_matching_uses_a_paged_listing(tmp_path: Path) -> None:
    spc = _spc(filter={"supported": False, "maxResults": 2})
    async with world(tmp_path, _org(5), spc=spc) as w:
        w.raw(
            "POST",
            "/Users",
            {
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "s001@corp.example",
            },
        )
        await converge(w)
        assert not [r for r in w.proxy.log if "filter" in r.query]
        assert len(w.dump("Users")) == 5
        w.source.set(_org(5, title="Lead"))
        await converge(w)
        assert {u["title"] for u in w.dump("Users")} == {"Lead"}


@pytest.mark.parametrize("kind", KINDS)
async def test_token_rotation_needs_no_restart_and_fails_nothing(
    tmp_path: Path, kind: Kind
) -> None:
    token = KIND_INFO[kind].token
    new = f"{kind}-rotated-token-9876543210"
    async with world(tmp_path, _org(10), proxy_kw={"required_token": token}, kind=kind) as w:
        await converge(w)
        # The server switches to the new token; the file follows a moment later.
        w.proxy.required_token = new
        w.source.set(_org(10, title="Rotated"))
        import anyio

        async def rotate() -> None:
            await anyio.sleep(0.5)
            w.token_file.write_text(new)

        async with anyio.create_task_group() as tg:
            tg.start_soon(rotate)
            report = await w.engine.cycle()
        assert report.targets[w.name].failed == 0
        assert report.targets[w.name].dirty == 0
        assert {u["title"] for u in w.dump("Users")} == {"Rotated"}
        wanted = w.source.snapshot.users
        for user in w.dump("Users"):
            assert mapped(kind, user) == expected_mapping(kind, wanted[user["externalId"]])


@pytest.mark.parametrize("kind", KINDS)
async def test_a_revoked_token_marks_the_target_unhealthy_without_a_tight_loop(
    tmp_path: Path, kind: Kind
) -> None:
    token = KIND_INFO[kind].token
    async with world(
        tmp_path,
        _org(3),
        proxy_kw={"required_token": "some-other-token-123456"},
        token_rotation_wait=0.2,
        kind=kind,
    ) as w:
        report = await w.engine.cycle()
        assert report.targets[w.name].failed == 4
        problems = await w.engine.store.problems(w.name, 5)
        assert all("revoked" in (p.last_error or "") for p in problems)
        assert all((p.last_error or "").startswith(w.refusal) for p in problems)
        sent = len(w.proxy.log)
        # The next deliveries are refused locally, without calling the application.
        outcomes = await w.target.deliver([])
        assert outcomes == []
        assert w.target.health.blocked(False) is not None
        assert len(w.proxy.log) == sent
        # A new token in the file ends the block at once.
        w.proxy.required_token = token
        w.token_file.write_text(token + "-new")
        w.proxy.required_token = token + "-new"
        assert w.target.health.blocked(w.target.token.changed) is None


@pytest.mark.parametrize("kind", KINDS)
async def test_no_log_line_or_error_holds_the_token(tmp_path: Path, kind: Kind) -> None:
    token = KIND_INFO[kind].token
    lines: list[str] = []

    def capture(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        lines.append(json.dumps(event, default=str))
        return event

    structlog.configure(processors=[capture, structlog.processors.KeyValueRenderer()])
    try:
        async with world(
            tmp_path,
            _org(3),
            proxy_kw={"required_token": token + "x"},
            token_rotation_wait=0.1,
            kind=kind,
        ) as w:
            # The token is known to the suite-wide secret scan (tests/conftest.py).
            assert SECRETS.redact(f"Bearer {token}") == f"Bearer {REDACTED}"
            w.proxy.script(Fault.SERVER_ERROR, Fault.NOT_JSON)
            await w.engine.cycle()
            problems = await w.engine.store.problems(w.name, 10)
            texts = lines + [p.last_error or "" for p in problems]
            assert texts
            assert not [t for t in texts if token in t]
            assert not list((tmp_path / "state").glob("*.db")) or all(
                token.encode() not in p.read_bytes() for p in (tmp_path / "state").glob("*")
            )
    finally:
        structlog.reset_defaults()


async def test_invalid_json_and_schema_violations_fail_the_object_not_the_engine(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, _org(4)) as w:
        await w.target._ready()
        w.proxy.script(Fault.NOT_JSON, Fault.SCHEMA_VIOLATION, Fault.NOT_JSON, method="POST")
        w.proxy.script(Fault.SCHEMA_VIOLATION, method="GET")
        report = await w.engine.cycle()
        assert report.result == "ok"
        problems = await w.engine.store.problems("alexishr", 10)
        assert any("not JSON" in (p.last_error or "") for p in problems)
        assert any("SCIM schema" in (p.last_error or "") for p in problems)
        await converge(w)
        assert len(w.dump("Users")) == 4  # no duplicate from a POST whose answer was garbled


async def test_reconciliation_repairs_drift(tmp_path: Path) -> None:
    snap = _org(4, members=3)
    async with world(tmp_path, _org(4)) as w:
        await converge(w)
        w.source.set(snap)
        await converge(w)
        users = w.users_by_external()
        w.raw(
            "PATCH",
            f"/Users/{users['s003']['id']}",
            {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "path": "active", "value": True}],
            },
        )
        w.raw(
            "PATCH",
            f"/Users/{users['s000']['id']}",
            {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "path": "title", "value": "Edited by hand"}],
            },
        )
        stray = w.raw(
            "POST",
            "/Users",
            {
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "x@other.example",
            },
        )
        group = w.dump("Groups")[0]
        w.raw(
            "PATCH",
            f"/Groups/{group['id']}",
            {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "add", "path": "members", "value": [{"value": stray["id"]}]}],
            },
        )
        repaired = await w.target.reconcile()
        assert repaired == {"user_reactivated": 1, "user_attributes": 1, "group_stray_member": 1}
        users = w.users_by_external()
        assert users["s003"]["active"] is False
        assert users["s000"]["title"] == "Engineer"
        assert stray["id"] not in {m["value"] for m in w.dump("Groups")[0]["members"]}
        assert len(w.dump("Users")) == 5  # the unmanaged user is left alone
        assert await w.target.reconcile() == {}


async def test_quarantine_backs_off_and_recovers(tmp_path: Path) -> None:
    now = [5000.0]
    async with world(
        tmp_path, _org(3), clock=lambda: now[0], quarantine_after=2, quarantine_base=100
    ) as w:
        await w.target._ready()
        w.proxy.rates = {Fault.SERVER_ERROR: 1.0}
        await w.engine.cycle()
        now[0] += 10
        await w.engine.cycle()
        assert w.target.health.quarantined
        sent = len(w.proxy.log)
        now[0] += 50
        await w.engine.cycle()
        assert len(w.proxy.log) == sent  # backed off: AlexisHR was not called
        problems = await w.engine.store.problems("alexishr", 5)
        assert any("quarantined" in (p.last_error or "") for p in problems)
        w.proxy.rates = {}
        now[0] += 100
        await converge(w, within=10)
        assert not w.target.health.quarantined
        assert len(w.dump("Users")) == 3


async def test_check_reports_capabilities_and_write_test_cleans_up(tmp_path: Path) -> None:
    spc = _spc(bulk={"supported": True, "maxOperations": 50, "maxPayloadSize": 1048576})
    async with world(tmp_path, _org(1), spc=spc) as w:
        lines = await w.target.check(write_test=True)
        text = "\n".join(lines)
        assert "PATCH supported" in text and "filter supported" in text
        assert "maxOperations 50" in text
        assert "created, deactivated and deleted" in text
        assert w.dump("Users") == []
        assert [r.method for r in w.proxy.log if r.method != "GET"] == ["POST", "PATCH", "DELETE"]


async def test_an_unbound_group_is_left_as_it_is(tmp_path: Path) -> None:
    users = [person(f"s{i:03d}") for i in range(4)]
    snap = Snapshot.of(
        users,
        [
            make_group("g-app", BOUND, [u.id for u in users]),
            make_group("g-extra", "Extra", ["s000", "s001"]),
        ],
    )
    async with world(tmp_path, snap, bound=[BOUND, "Extra"]) as w:
        await converge(w)
        extra = next(g for g in w.dump("Groups") if g["displayName"] == "Extra")
        # Unbind it: no delivery, no delete; reconciliation stops minding it.
        w.engine.targets[0].settings.groups = [BOUND]
        w.engine.force_plan = True
        mark = len(w.proxy.log)
        await converge(w)
        assert not [r for r in w.proxy.log[mark:] if "/Groups" in r.path and r.method != "GET"]
        stray = w.raw(
            "POST",
            "/Users",
            {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "x@y.example"},
        )
        w.raw(
            "PATCH",
            f"/Groups/{extra['id']}",
            {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "add", "path": "members", "value": [{"value": stray["id"]}]}],
            },
        )
        await w.target.reconcile()
        after = next(g for g in w.dump("Groups") if g["displayName"] == "Extra")
        assert stray["id"] in {m["value"] for m in after["members"]}


@pytest.mark.parametrize("kind", KINDS)
async def test_the_provisioning_log_names_each_scim_request_and_never_the_token(
    tmp_path: Path, kind: Kind
) -> None:
    token = KIND_INFO[kind].token
    async with world(tmp_path, _org(3), kind=kind) as w:
        await w.engine.cycle()
        store = w.engine.store
        entries = await store.log_entries(target=w.name, limit=100)
        delivered = [e for e in entries if e.outcome == "delivered" and e.key[0] == "user"]
        assert len(delivered) == 3
        for e in delivered:
            assert (e.method, e.status) == ("POST", 201), e
            assert e.path == "/Users" and e.changes == ("user_added",)
        # A change after two server errors: retried, and the entry has the last request.
        w.proxy.script(Fault.SERVER_ERROR, Fault.SERVER_ERROR)
        w.source.set(_org(3, title="Boss"))
        await w.engine.cycle()
        entries = await store.log_entries(target=w.name, limit=100)
        latest = [e for e in entries[:6] if e.outcome == "delivered" and e.key[0] == "user"]
        assert len(latest) == 3
        for e in latest:
            assert e.attributes == ("title",) and e.method in ("PATCH", "PUT"), e
            assert e.status in (200, 204) and (e.path or "").startswith("/Users/")
        assert not [e for e in entries if token in repr(e)]
