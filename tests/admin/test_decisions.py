"""Per-object decisions, ``explain`` and the provisioning log in the console, as the daemon
wires them (``daemon.service.console_backend``), on the real store: SQLite and PostgreSQL.

A decision made in the console is the one ``provisiond approve`` / ``reject`` make
(``daemon.holds``): in the store's decisions and provisioning log with the actor
``admin:<username>``, in the audit log, and used by the next real engine cycle.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from daemon import explain as explaining
from daemon import holds
from daemon.directory import Directory
from daemon.portal import admin
from daemon.service import console_backend
from tests.admin.conftest import HOSTILE, Console, console_doc
from tests.admin.test_console import _admin_client, _audit, _forms, another_browser
from tests.sso.conftest import BOUND
from tests.sso.stack import hidden_fields, sign_in
from tests.sso.test_store_down import FailingAt

CAROL = ("user", "u-carol")
DAVE = ("user", "u-dave")
GROUP = ("group", "g-bound")


def _form(page: str, key: str, action: str) -> dict[str, str]:
    return next(f for f in _forms(page) if f.get("key") == key and f.get("action") == action)


def _all_form(page: str, action: str) -> dict[str, str]:
    (form,) = [f for f in _forms(page) if f.get("digest") and f.get("action") == action]
    return form


async def test_one_removal_approved_and_another_rejected_then_the_cycle(
    serve_daemon, daemon_console: Console
):
    c = daemon_console
    w, store = c.world, c.world.store
    client = await _admin_client(serve_daemon)
    page = await (await client.get("/admin/held")).text()
    assert "Reject all 3" in page and "not available" not in page
    assert "left every group bound to the target: would be deactivated" in page  # daemon.holds
    approve = _form(page, "user:u-carol", "approve")
    reject = _form(page, "user:u-dave", "reject")

    approved = await client.post("/admin/held", data=approve, allow_redirects=False)
    assert approved.status == 303
    assert approved.headers["Location"] == "/admin/held?target=wiki&done=approved-1"
    rejected = await client.post("/admin/held", data=reject, allow_redirects=False)
    assert rejected.headers["Location"] == "/admin/held?target=wiki&done=rejected-1"
    assert len(c.syncs) == 2  # a cycle asked for after each

    decisions = await store.decisions("wiki")
    assert set(decisions) == {CAROL, DAVE}  # the group's removal stays undecided
    assert decisions[CAROL].decision == "approved" and decisions[CAROL].actor == "admin:alice"
    assert decisions[DAVE].decision == "rejected" and decisions[DAVE].actor == "admin:alice"
    for key, outcome in ((CAROL, "approved"), (DAVE, "rejected")):
        (entry,) = await store.log_entries(key=key, limit=1)
        assert (entry.outcome, entry.actor) == (outcome, "admin:alice")
    (by_holds,) = _audit(c, "held removals approved")
    assert by_holds["actor"] == "admin:alice" and by_holds["objects"] == ["user:u-carol"]
    (by_console,) = _audit(c, "held removals approved in the admin console")
    assert by_console["user_id"] == "u-alice" and by_console["keys"] == ["user:u-carol"]
    assert by_console["actor"] == "admin:alice"
    (by_console,) = _audit(c, "held removals rejected in the admin console")
    assert by_console["keys"] == ["user:u-dave"] and by_console["objects"] == 1
    assert [e for e in _audit_prefix(c, "held removals rejected: ") if e["actor"] == "admin:alice"]

    # Before the cycle: the page and `provisiond held` show both decisions.
    page = await (await client.get(approved.headers["Location"])).text()
    assert "Done: approved 1 removal(s). They are sent in the next cycle" in page
    assert "<strong>Approved</strong> by admin:alice" in page
    assert "<strong>Rejected</strong> by admin:alice" in page
    # ... and when, as UTC text of the time the store recorded.
    for key, word in ((CAROL, "Approved"), (DAVE, "Rejected")):
        at = datetime.fromtimestamp(decisions[key].decided_at, UTC)
        assert f"<strong>{word}</strong> by admin:alice on {at:%Y-%m-%d %H:%M:%S} UTC" in page
    # Each row offers the other decision only.
    offered = {(f["key"], f["action"]) for f in _forms(page) if f.get("key")}
    assert ("user:u-carol", "reject") in offered and ("user:u-carol", "approve") not in offered
    assert ("user:u-dave", "approve") in offered and ("user:u-dave", "reject") not in offered
    shown = {o.key: o for o in await holds.held(store, "wiki")}
    assert shown[CAROL].decision == "approved" and shown[DAVE].decision == "rejected"
    assert shown[DAVE].actor == "admin:alice"
    assert shown[DAVE].decided_at == decisions[DAVE].decided_at

    # The next cycle: carol's deactivation goes out; dave stays active, his decision kept.
    before = len(w.target.delivered)
    await w.cycle()
    sent = {(d.kind, d.object_id) for d in w.target.delivered[before:]}
    assert CAROL in sent and DAVE not in sent
    carol = await store.target_object("wiki", CAROL)
    dave = await store.target_object("wiki", DAVE)
    assert carol is not None and carol.active is False and not carol.dirty
    assert dave is not None and dave.active is True
    hold = await store.hold("wiki")
    assert hold is not None and hold.keys == {GROUP}, hold  # only the group's removal is left
    kept = await store.decisions("wiki")
    assert set(kept) == {DAVE} and kept[DAVE].decision == "rejected" and kept[DAVE].applied
    page = await (await client.get("/admin/held")).text()
    assert "user:u-carol" not in page and "user:u-dave" not in page and "group:g-bound" in page


def _audit_prefix(console: Console, prefix: str) -> list[dict[str, Any]]:
    from tests.admin.test_console import _events

    return [e for e in _events(console) if str(e.get("event", "")).startswith(prefix)]


async def test_approve_all_and_reject_all_decide_the_hold_the_page_showed(
    serve_daemon, daemon_console: Console
):
    c = daemon_console
    w, store = c.world, c.world.store
    client = await _admin_client(serve_daemon)
    page = await (await client.get("/admin/held")).text()
    reject_all = _all_form(page, "reject")
    # bob leaves too: the hold holds more than the page showed, so nothing is decided.
    w.write_directory(console_doc(("alice", "eve", "erin")))
    await w.cycle()
    assert ("user", "u-bob") in (await store.hold("wiki")).keys
    stale = await client.post("/admin/held", data=reject_all)
    assert stale.status == 409 and "nothing was decided" in await stale.text()
    assert await store.decisions("wiki") == {}
    page = await (await client.get("/admin/held")).text()
    done = await client.post("/admin/held", data=_all_form(page, "approve"), allow_redirects=False)
    assert done.headers["Location"] == "/admin/held?target=wiki&done=approved-4"
    decided = await store.decisions("wiki")
    assert set(decided) == {CAROL, DAVE, GROUP, ("user", "u-bob")}
    assert {d.actor for d in decided.values()} == {"admin:alice"}
    await w.cycle()
    assert await store.hold("wiki") is None
    sent = {(d.kind, d.object_id) for d in w.target.delivered}
    assert {CAROL, DAVE, ("user", "u-bob")} <= sent


async def test_a_stale_form_decides_only_keys_still_held_and_reports_the_rest(
    serve_daemon, daemon_console: Console
):
    c = daemon_console
    w, store = c.world, c.world.store
    client = await _admin_client(serve_daemon)
    page = await (await client.get("/admin/held")).text()
    approve_carol = _form(page, "user:u-carol", "approve")
    reject_dave = _form(page, "user:u-dave", "reject")
    # carol is back in the bound group: her removal is no longer held.
    w.write_directory(console_doc(("alice", "bob", "carol", "eve", "erin")))
    await w.cycle()
    hold = await store.hold("wiki")
    assert hold is not None and CAROL not in hold.keys and DAVE in hold.keys

    stale = await client.post("/admin/held", data=approve_carol)
    assert stale.status == 409
    text = await stale.text()
    assert "no longer held" in text and "nothing was decided" in text
    assert "<code>user:u-carol</code>" in text
    assert await store.decisions("wiki") == {}
    assert [e.outcome for e in await store.log_entries(key=CAROL, limit=50)].count("approved") == 0
    (refused,) = _audit(c, "admin decision on held removals refused: the hold changed since "
                        "the page was drawn")  # fmt: skip
    assert refused["keys"] == ["user:u-carol"]

    # A form naming both: only dave's is decided, carol's is reported.
    both = [(k, v) for k, v in reject_dave.items() if k != "key"]
    both += [("key", "user:u-carol"), ("key", "user:u-dave")]
    done = await client.post("/admin/held", data=both, allow_redirects=False)
    assert done.headers["Location"] == "/admin/held?target=wiki&done=rejected-1-left-1"
    decided = await store.decisions("wiki")
    assert set(decided) == {DAVE} and decided[DAVE].decision == "rejected"
    notice = await (await client.get(done.headers["Location"])).text()
    assert "Done: rejected 1 removal(s)." in notice
    assert "1 that the page showed was no longer held and was left alone." in notice
    (left,) = _audit(c, "admin decision on held removals: keys no longer held were left alone")
    assert left["keys"] == ["user:u-carol"]
    # A key that is not a key, or too many keys: refused, nothing decided.
    for keys in (["nonsense"], [f"user:u-{n}" for n in range(admin.PAGE_SIZE + 1)]):
        data = [(k, v) for k, v in both if k != "key"] + [("key", k) for k in keys]
        assert (await client.post("/admin/held", data=data)).status == 400
    assert set(await store.decisions("wiki")) == {DAVE}


async def test_csrf_missing_or_forged_and_a_non_admin_decide_nothing(
    serve_daemon, daemon_console: Console
):
    c = daemon_console
    store = c.world.store
    client = await _admin_client(serve_daemon)
    page = await (await client.get("/admin/held")).text()
    for action in ("approve", "reject"):
        form = _form(page, "user:u-carol", action)
        missing = {k: v for k, v in form.items() if k != "csrf"}
        for data in (missing, {**form, "csrf": "forged-token"}):
            response = await client.post("/admin/held", data=data)
            assert response.status == 400 and "expired" in await response.text()
    assert await store.decisions("wiki") == {}
    assert len(_audit(c, "admin action refused: missing or wrong CSRF token")) == 4

    bob = await another_browser(client)
    assert (await sign_in(bob, "bob")).status == 303
    csrf = hidden_fields(await (await bob.get("/")).text())["csrf"]
    for action in ("approve", "reject"):
        response = await bob.post(
            "/admin/held",
            data={"csrf": csrf, "target": "wiki", "key": "user:u-carol", "action": action},
        )
        assert response.status == 403 and "No access" in await response.text()
    assert await store.decisions("wiki") == {}
    assert (await bob.get("/admin/users/u-erin")).status == 403
    await bob.close()


async def test_the_user_page_explains_and_shows_the_provisioning_log(
    serve_daemon, daemon_console: Console, monkeypatch
):
    client = await _admin_client(serve_daemon)
    page = await (await client.get("/admin/users/u-erin")).text()
    assert 'id="explain"' in page and "explain-unavailable" not in page
    assert f"yes: granted by {BOUND}" in page and "may sign in" in page
    assert "HTTP 500 from the application: &lt;b&gt;boom&lt;/b&gt;" in page  # last error
    assert "<b>boom</b>" not in page
    assert "Next retry" in page and "(retry)" in page
    assert 'id="provisioning-log"' in page and "log-unavailable" not in page
    log = page[page.index('id="provisioning-log"') :]
    assert ">failed<" in log and ">planned<" in log and ">provisiond<" in log

    # carol's removal is held; rejected in the console, the log and explain say who.
    held = await (await client.get("/admin/held")).text()
    await client.post("/admin/held", data=_form(held, "user:u-carol", "reject"))
    carol = await (await client.get("/admin/users/u-carol")).text()
    assert "no: in none of the groups bound to wiki" in carol
    assert "Operator&#39;s decision" in carol and "(held)" in carol
    decided = (await daemon_console.world.store.decisions("wiki"))[CAROL]
    at = datetime.fromtimestamp(decided.decided_at, UTC)
    assert f"rejected by admin:alice on {at:%Y-%m-%d %H:%M:%S} UTC" in carol  # as on /admin/held
    log = carol[carol.index('id="provisioning-log"') :]
    assert ">rejected<" in log and ">admin:alice<" in log and ">held<" in log

    # HTML in directory data stays text in every section.
    eve = await (await client.get("/admin/users/u-eve")).text()
    assert HOSTILE not in eve and "&lt;script&gt;" in eve and 'id="explain"' in eve

    # A long log is paged, newest first.
    monkeypatch.setattr(admin, "PAGE_SIZE", 1)
    first = await (await client.get("/admin/users/u-carol")).text()
    rows = first[first.index('id="provisioning-log"') :].count("<tr>\n<td")
    assert rows == 1 and ">rejected<" in first and "Older entries" in first
    older = first.split('href="?before=')[1].split('"')[0]
    second = await (await client.get(f"/admin/users/u-carol?before={older}")).text()
    assert ">rejected<" not in second[second.index('id="provisioning-log"') :]
    assert "Newest entries" in second
    for bad in ("abc", "-1", "0", "9" * 40):
        assert (await client.get(f"/admin/users/u-carol?before={bad}")).status == 200


async def test_a_change_elsewhere_keeps_the_held_removals_and_the_rejection(
    serve_daemon, daemon_console: Console
):
    """A proportional cycle (only bob changed) must not drop carol's held removal from the
    hold, nor let dave's rejection lapse: both were lost, silently, before the engine's fix."""
    c = daemon_console
    w, store = c.world, c.world.store
    client = await _admin_client(serve_daemon)
    page = await (await client.get("/admin/held")).text()
    await client.post("/admin/held", data=_form(page, "user:u-dave", "reject"))
    await w.cycle()  # the rejection is used (applied); dave leaves the hold
    assert (await store.decisions("wiki"))[DAVE].applied
    before = len(w.target.delivered)
    w.write_directory(console_doc(("alice", "eve", "erin")))  # bob leaves the group too
    await w.cycle()
    hold = await store.hold("wiki")
    assert hold is not None and {CAROL, ("user", "u-bob")} <= hold.keys, hold
    kept = await store.decisions("wiki")
    assert DAVE in kept and kept[DAVE].decision == "rejected"
    await w.cycle()
    assert DAVE in await store.decisions("wiki")
    sent = {(d.kind, d.object_id) for d in w.target.delivered[before:]}
    assert not sent & {CAROL, DAVE, ("user", "u-bob")}
    dave = await store.target_object("wiki", DAVE)
    assert dave is not None and dave.active


async def test_an_unreachable_store_during_a_decision_or_explain_is_a_503(serve, console: Console):
    """The store fails at the decision's transaction (or explain's, the log's read): the
    console says so, nothing is decided, and cycles go on."""
    w = console.world
    failing = FailingAt(w.store)
    backend = console_backend(
        failing,  # type: ignore[arg-type]
        overview=console.overview,
        target_names=lambda: [s.name for s in w.engine.targets],
        trigger_sync=lambda: None,
        targets=lambda: [s.settings for s in w.engine.targets],
        rules=lambda: explaining.SignInRules(True),
    )
    directory = Directory(failing, w.directory.source)  # type: ignore[arg-type]
    client = await serve(backend=backend, directory=directory)
    assert (await sign_in(client, "alice")).status == 303
    page = await (await client.get("/admin/held")).text()
    failing.failing = {"decide"}
    response = await client.post("/admin/held", data=_form(page, "user:u-carol", "approve"))
    assert response.status == 503 and "cannot reach the state store" in await response.text()
    for method in ("log_entries", "target_object"):
        failing.failing = {method}
        response = await client.get("/admin/users/u-erin")
        assert response.status == 503, method
    failing.failing = set()
    assert await w.store.decisions("wiki") == {}
    await w.cycle()
    assert (await client.get("/admin/users/u-erin")).status == 200
    assert "Traceback" not in w.log.getvalue()
