"""The admin console: who may use it, every page, and the bad input each page gets."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from daemon.directory import Directory
from daemon.model import make_group
from daemon.portal import admin
from daemon.store import LogEntry
from tests.admin.conftest import ADMINS, FILLERS, HOSTILE, Console, console_doc
from tests.sso import stack
from tests.sso.conftest import BOUND
from tests.sso.stack import hidden_fields, sign_in
from tests.sso.test_store_down import FailingAt


def _events(console: Console) -> list[dict[str, Any]]:
    return [json.loads(line) for line in console.world.log.getvalue().splitlines() if line]


def _audit(console: Console, event: str) -> list[dict[str, Any]]:
    return [e for e in _events(console) if e.get("event") == event]


async def _admin_client(serve: Any, user: str = "alice", **public: Any) -> Any:
    client = await serve(**public)
    assert (await sign_in(client, user)).status == 303
    return client


def _forms(page: str) -> list[dict[str, str]]:
    """Every form's hidden fields, in page order."""
    return [hidden_fields(form) for form in re.findall(r"<form .*?</form>", page, re.S)]


async def test_off_without_an_admin_group_every_url_is_404(serve):
    client = await serve(admin_group=None)
    assert (await sign_in(client, "alice")).status == 303
    for path in ("/admin", "/admin/held", "/admin/failures", "/admin/users", "/admin/users/u-x"):
        assert (await client.get(path, allow_redirects=False)).status == 404, path
    response = await client.post("/admin/held", data={"action": "approve"})
    assert response.status == 404


async def test_off_without_a_daemon_behind_the_listener(serve, console):
    app = await stack.build_app(console.world, admin_group=ADMINS)  # no console backend
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/admin", allow_redirects=False)).status == 404


async def test_not_signed_in_goes_to_sign_in_and_back(serve):
    client = await serve()
    response = await client.get("/admin/users?q=eve", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/login?next=/admin/users?q%3Deve"
    signed = await sign_in(client, "alice", next_path="/admin/users?q=eve")
    assert signed.headers["Location"] == "/admin/users?q=eve"


async def test_a_non_admin_gets_a_plain_403_and_is_audited(serve, console):
    client = await _admin_client(serve, "bob")
    for path in ("/admin", "/admin/held", "/admin/failures", "/admin/users?q=a"):
        response = await client.get(path)
        assert response.status == 403, path
        text = await response.text()
        assert "No access" in text and "administrators" in text
        assert 'aria-label="Admin console"' not in text  # no console navigation for bob
    csrf = hidden_fields(await (await client.get("/")).text())["csrf"]
    response = await client.post("/admin/held", data={"csrf": csrf, "target": "wiki"})
    assert response.status == 403
    assert not (await console.world.store.hold("wiki")).approved
    refused = _audit(console, "admin console refused: not a member of the admin group")
    assert {e["user_id"] for e in refused} == {"u-bob"} and len(refused) == 5


async def _status_of(serve: Any, **public: Any) -> int:
    client = await _admin_client(serve, **public)
    try:
        return int((await client.get("/admin")).status)
    finally:
        await client.close()


async def another_browser(client: Any) -> Any:
    """A second cookie jar on the same running server."""
    other = TestClient(client.server)
    await other.start_server()
    return other


class TwinAdmins:
    """The real store, plus a second group named like the admin group.

    The file source refuses two groups of one name; LDAP (one cn in two OUs)
    does not. Only ``committed`` and ``records`` are changed; everything else
    is the real store.
    """

    TWIN = ("group", "g-admins-2")

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def committed(self) -> Any:
        real = await self._store.committed()
        return type(real)(real.version, {**real.hashes, self.TWIN: "twin"})

    async def records(self, keys: list[Any]) -> dict[Any, Any]:
        found = await self._store.records([k for k in keys if k != self.TWIN])
        if self.TWIN in keys:
            found[self.TWIN] = make_group("g-admins-2", ADMINS, ["u-bob"])
        return found


async def test_the_admin_group_by_id_by_name_and_ambiguous(serve, console):
    assert await _status_of(serve, admin_group="g-admins") == 200
    assert await _status_of(serve, admin_group="No Such Group") == 403
    events = [e["event"] for e in _events(console)]
    assert any(e.startswith("http.public.admin_group matches no") for e in events)
    # Two groups share the name: nobody, until the setting names one by its id.
    twins = Directory(TwinAdmins(console.world.store), console.world.directory.source)
    for user in ("alice", "bob"):
        client = await serve(directory=twins)
        assert (await sign_in(client, user)).status == 303
        assert (await client.get("/admin")).status == 403
        await client.close()
    events = [e["event"] for e in _events(console)]
    assert any(e.startswith("http.public.admin_group names more") for e in events)
    client = await serve(directory=twins, admin_group="g-admins")
    assert (await sign_in(client, "alice")).status == 303
    assert (await client.get("/admin")).status == 200


async def test_a_second_factor_first_when_required(serve):
    client = await _admin_client(serve, admin_require_mfa=True)
    response = await client.get("/admin/held", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/mfa?next=/admin/held"


async def test_overview_shows_what_status_shows(serve, console):
    client = await _admin_client(serve)
    response = await client.get("/admin")
    assert response.status == 200
    text = await response.text()
    row = re.search(r'<th scope="row">wiki .*?</tr>', text, re.S)
    assert row, text
    cells = re.findall(r"<td>(.*?)</td>", row.group(0), re.S)
    status = (await console.backend().overview())["targets"]["wiki"]
    assert "removals held" in cells[0]
    assert cells[1] == str(status["dirty"])
    assert '>1</a>' in cells[2]  # failed: erin
    assert f'>{status["held_removals"]}</a>' in cells[3]
    assert "expires in" in cells[6] and "days" in cells[6]  # the SAML signing certificate
    assert "file" in text and "Last cycle" in text
    assert "script-src" not in response.headers["Content-Security-Policy"]  # no script at all


async def test_held_approve_all_needs_the_hold_the_page_showed(serve, console):
    client = await _admin_client(serve)
    page = await (await client.get("/admin/held")).text()
    assert "user:u-carol" in page and "user:u-dave" in page
    (form,) = [f for f in _forms(page) if f.get("action") == "approve"]
    # The directory moves on: bob leaves too, so the hold now holds more than was shown.
    console.world.write_directory(console_doc(("alice", "eve", "erin")))
    await console.world.cycle()
    assert ("user", "u-bob") in (await console.world.store.hold("wiki")).keys
    stale = await client.post("/admin/held", data=form)
    assert stale.status == 409
    assert "changed since this page was drawn" in await stale.text()
    assert not (await console.world.store.hold("wiki")).approved
    assert _audit(console, "admin decision on held removals refused: the hold changed since "
                  "the page was drawn")  # fmt: skip
    # A fresh page approves what it shows.
    page = await (await client.get("/admin/held")).text()
    (form,) = [f for f in _forms(page) if f.get("action") == "approve"]
    done = await client.post("/admin/held", data=form, allow_redirects=False)
    assert done.status == 303
    hold = await console.world.store.hold("wiki")
    assert hold.approved
    assert console.syncs  # a cycle was asked for
    (event,) = _audit(console, "held removals approved in the admin console")
    assert event["user_id"] == "u-alice" and event["objects"] == len(hold.keys)
    assert "approved" in await (await client.get(done.headers["Location"])).text()


async def test_per_object_decisions_need_per_object_support(serve, console):
    client = await _admin_client(serve)
    page = await (await client.get("/admin/held")).text()
    assert "not available here" in page and ">Reject<" not in page and "Reject all" not in page
    csrf = hidden_fields(page)["csrf"]
    response = await client.post(
        "/admin/held",
        data={"csrf": csrf, "target": "wiki", "key": "user:u-carol", "action": "approve"},
    )
    assert response.status == 400
    assert not (await console.world.store.hold("wiki")).approved


class PerObject:
    """Per-object decisions recorded, for the seam: what the console asks of them."""

    per_object = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, frozenset[Any]]] = []
        self.actors: list[str] = []

    async def approve(self, target: str, keys: frozenset[Any], actor: str) -> frozenset[Any]:
        self.calls.append(("approve", target, keys))
        self.actors.append(actor)
        return keys

    async def reject(self, target: str, keys: frozenset[Any], actor: str) -> frozenset[Any]:
        self.calls.append(("reject", target, keys))
        self.actors.append(actor)
        return keys


async def test_per_object_approve_and_reject_through_the_seam(serve, console):
    decisions = PerObject()
    backend = console.backend()
    backend.decisions = decisions
    client = await serve(backend=backend)
    assert (await sign_in(client, "alice")).status == 303
    page = await (await client.get("/admin/held")).text()
    forms = [f for f in _forms(page) if f.get("key")]
    approve = next(f for f in forms if f["key"] == "user:u-carol" and f["action"] == "approve")
    reject = next(f for f in forms if f["key"] == "user:u-dave" and f["action"] == "reject")
    approved = await client.post("/admin/held", data=approve, allow_redirects=False)
    assert approved.headers["Location"] == "/admin/held?target=wiki&done=approved-1"
    rejected = await client.post("/admin/held", data=reject, allow_redirects=False)
    assert rejected.headers["Location"] == "/admin/held?target=wiki&done=rejected-1"
    (event,) = _audit(console, "held removals rejected in the admin console")
    assert event["keys"] == ["user:u-dave"] and event["user_id"] == "u-alice"
    assert decisions.calls == [
        ("approve", "wiki", frozenset({("user", "u-carol")})),
        ("reject", "wiki", frozenset({("user", "u-dave")})),
    ]
    assert decisions.actors == ["admin:alice", "admin:alice"]
    # A key the hold does not hold (any more): refused as stale, the seam is not asked.
    gone = {**approve, "key": "user:u-alice"}
    assert (await client.post("/admin/held", data=gone)).status == 409
    assert len(decisions.calls) == 2


@pytest.mark.parametrize("csrf", [None, "", "forged-token", "x" * 5000])
async def test_actions_without_the_sessions_csrf_token_are_refused(serve, console, csrf):
    client = await _admin_client(serve)
    page = await (await client.get("/admin/held")).text()
    (form,) = [f for f in _forms(page) if f.get("action") == "approve"]
    if csrf is None:
        del form["csrf"]
    else:
        form["csrf"] = csrf
    response = await client.post("/admin/held", data=form)
    assert response.status == 400
    assert "expired" in await response.text()
    assert not (await console.world.store.hold("wiki")).approved
    retry = await client.post("/admin/failures", data={**form, "key": "user:u-erin"})
    assert retry.status == 400
    assert len(_audit(console, "admin action refused: missing or wrong CSRF token")) == 2


async def test_another_sessions_csrf_token_is_refused(serve, console):
    alice = await _admin_client(serve)
    other = await another_browser(alice)  # alice again, in another browser
    assert (await sign_in(other, "alice")).status == 303
    page = await (await other.get("/admin/held")).text()
    (form,) = [f for f in _forms(page) if f.get("action") == "approve"]
    assert (await alice.post("/admin/held", data=form)).status == 400
    assert not (await console.world.store.hold("wiki")).approved


async def test_failures_and_retry_now(serve, console):
    store = console.world.store
    client = await _admin_client(serve)
    page = await (await client.get("/admin/failures")).text()
    assert "user:u-erin" in page
    assert "&lt;b&gt;boom&lt;/b&gt;" in page and "<b>boom</b>" not in page
    (before,) = await store.problems("wiki", 10)
    assert before.next_attempt_at > console.world.clock()
    form = next(f for f in _forms(page) if f.get("key") == "user:u-erin")
    response = await client.post("/admin/failures", data=form, allow_redirects=False)
    assert response.status == 303
    (after,) = await store.problems("wiki", 10)
    assert after.next_attempt_at <= console.world.clock()
    assert after.attempts == before.attempts and after.last_error == before.last_error
    (event,) = _audit(console, "failed deliveries retried now from the admin console")
    assert event["keys"] == ["user:u-erin"] and event["objects"] == 1
    assert console.syncs
    assert "retried 1" in await (await client.get(response.headers["Location"])).text()
    # An object that is not failing, a bad key, no key, an unknown target.
    csrf = form["csrf"]
    ok = await client.post(
        "/admin/failures", data={"csrf": csrf, "target": "wiki", "key": "user:u-alice"},
        allow_redirects=False,
    )  # fmt: skip
    assert ok.status == 303 and ok.headers["Location"].endswith("retried-0")
    for data in ({"key": "nonsense"}, {}):
        data = {"csrf": csrf, "target": "wiki", **data}
        response = await client.post("/admin/failures", data=data)
        assert response.status == 400
    response = await client.post(
        "/admin/failures", data={"csrf": csrf, "target": "<nope>", "key": "user:u-erin"}
    )
    assert response.status == 404


async def test_search_by_username_email_and_name_paged(serve):
    client = await _admin_client(serve)
    for query in ("alice", "ALICE@nordlys", "lindqvist", "Alice Lindqvist"):
        page = await (await client.get("/admin/users", params={"q": query})).text()
        assert "/admin/users/u-alice" in page, query
    nothing = await (await client.get("/admin/users", params={"q": "%_!"})).text()
    assert "No user matches" in nothing
    # Not a match on other fields: eve's title holds "CFO".
    assert "/admin/users/u-eve" not in await (await client.get("/admin/users?q=cfo")).text()
    first = await (await client.get("/admin/users", params={"q": "filler"})).text()
    assert f"{FILLERS} user(s) match" in first
    assert len(re.findall(r'href="/admin/users/u-person-', first)) == admin.PAGE_SIZE
    assert "Page 1 of 3" in first and 'rel="next"' in first and 'rel="prev"' not in first
    last = await (await client.get("/admin/users", params={"q": "filler", "page": "3"})).text()
    assert len(re.findall(r'href="/admin/users/u-person-', last)) == FILLERS - 2 * admin.PAGE_SIZE
    assert "u-person-119" in last and 'rel="next"' not in last
    for bad in ("0", "-4", "abc", "99999999999999999999", "7"):
        page = await (await client.get("/admin/users", params={"q": "filler", "page": bad})).text()
        assert 'href="/admin/users/u-person-' in page, bad
    long = await client.get("/admin/users", params={"q": "a" * 100_000})
    assert long.status in (200, 400, 414, 431)


async def test_html_in_directory_data_is_escaped_everywhere(serve, console):
    # eve's removal is held too, so her names reach the held list as well.
    console.world.write_directory(console_doc(("alice", "bob", "erin")))
    await console.world.cycle()
    client = await _admin_client(serve)
    pages = [
        await (await client.get("/admin/users", params={"q": "eve"})).text(),
        await (await client.get("/admin/users/u-eve")).text(),
        await (await client.get("/admin/held")).text(),
    ]
    for page in pages:
        assert HOSTILE not in page and "<b>Eve</b>" not in page and "<i>CFO</i>" not in page
        assert "&lt;script&gt;" in page
    assert "O&#39;Hara &amp; Co" in pages[1]
    # A hostile id in the URL is escaped too (and simply not found).
    response = await client.get("/admin/users/%3Cscript%3E")
    assert response.status == 404 and "<script>" not in await response.text()


async def test_the_user_page_and_its_seams(serve, console):
    client = await _admin_client(serve)
    page = await (await client.get("/admin/users/u-erin")).text()
    row = re.search(r'<th scope="row">wiki</th>(.*?)</tr>', page, re.S)
    assert row
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    assert cells[0] == "yes" and cells[1] == "yes" and ">1</a>" in cells[3], cells
    assert 'id="explain-unavailable"' in page and 'id="log-unavailable"' in page
    carol = await (await client.get("/admin/users/u-carol")).text()
    assert ">held</a>" in carol

    backend = console.backend()

    async def explain(user: Any) -> dict[str, Any]:
        target = {"target": "wiki", "in_scope": True, "scope": f"yes, through {BOUND!r}",
                  "state": "active", "sign_in": user.username, "may_sign_in": True}  # fmt: skip
        return {"groups": [BOUND], "targets": [target]}

    async def user_log(user: Any, before: int | None, limit: int) -> list[LogEntry]:
        return [LogEntry(0.0, "wiki", ("user", user.id), "<failed>", "c-1")]

    backend.explain, backend.user_log = explain, user_log
    await client.close()
    client = await serve(backend=backend)
    assert (await sign_in(client, "alice")).status == 303
    page = await (await client.get("/admin/users/u-erin")).text()
    assert 'id="explain"' in page and "through &#39;Wiki Users&#39;" in page
    assert 'id="provisioning-log"' in page and "&lt;failed&gt;" in page


async def test_an_unreachable_store_gets_a_503_page_and_nothing_else_stops(serve, console):
    failing = FailingAt(console.world.store)
    directory = Directory(failing, console.world.directory.source)  # type: ignore[arg-type]
    client = await serve(directory=directory)
    assert (await sign_in(client, "alice")).status == 303
    failing.failing = {"counts", "hold", "search_users", "records", "get_meta"}
    for path in ("/admin", "/admin/held", "/admin/failures", "/admin/users?q=eve"):
        response = await client.get(path)
        assert response.status == 503, path
        assert response.headers["Retry-After"] == "30"
        text = await response.text()
        assert "cannot reach the state store" in text and "keeps running" in text
        assert "injected" not in text and "Traceback" not in text
    # The store comes back: so does the console; the engine ran a cycle meanwhile.
    await console.world.cycle()
    failing.failing = set()
    assert (await client.get("/admin")).status == 200
    assert "Traceback" not in console.world.log.getvalue()


async def test_a_closed_store_mid_session(serve, console):
    client = await _admin_client(serve)
    await console.world.store.aclose()
    response = await client.get("/admin")
    assert response.status == 503
    assert "cannot reach the state store" in await response.text()


async def test_held_and_failures_are_paged_and_past_the_end_is_the_last_page(
    serve, console, monkeypatch
):
    monkeypatch.setattr(admin, "PAGE_SIZE", 1)
    client = await _admin_client(serve)
    pages = [await (await client.get(f"/admin/held?page={n}")).text() for n in (1, 2, 3, 9)]
    shown = [re.findall(r"<code>((?:user|group):[^<]+)</code>", p) for p in pages]
    assert shown == [["group:g-bound"], ["user:u-carol"], ["user:u-dave"], ["user:u-dave"]]
    assert "Page 3 of 3" in pages[3] and 'rel="prev" ' not in pages[3]
    assert 'href="?target=wiki&amp;page=2" rel="prev"' in pages[3]
    # "Approve all" still means the whole hold, whatever page it is clicked on.
    (form,) = [f for f in _forms(pages[1]) if f.get("action") == "approve"]
    assert (await client.post("/admin/held", data=form, allow_redirects=False)).status == 303
    assert (await console.world.store.hold("wiki")).approved
    failures = await (await client.get("/admin/failures?page=9")).text()
    assert "user:u-erin" in failures and "Page" not in failures


async def test_a_crafted_done_link_puts_no_words_on_the_page(serve):
    client = await _admin_client(serve)
    for path in ("/admin/held", "/admin/failures"):
        crafted = await (await client.get(path, params={"done": "call-helpdesk-now"})).text()
        assert 'class="notice"' not in crafted and "helpdesk" not in crafted
        shown = await (await client.get(path, params={"done": "retried-2"})).text()
        assert "Done: retried 2" in shown
