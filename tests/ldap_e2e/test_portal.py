"""Portal sign-in with a slapd user's LDAP password, through the real routes."""

from __future__ import annotations

import re

import pytest

from daemon.portal.views import LOGIN_FAILED
from tests.alexishr_sso.conftest import sign_in
from tests.ldap import seed
from tests.ldap.slapd import Slapd
from tests.ldap_e2e.conftest import Portal

_ERROR = re.compile(r'<p class="error" role="alert" id="login-error">([^<]*)</p>')

ALICE = seed.PASSWORDS["alice"]


async def test_ldap_password_signs_in_to_the_portal(portal: Portal) -> None:
    done = await sign_in(portal.client, "alice", ALICE)
    assert done.status == 303
    assert done.headers["Location"] == "/"
    page = await portal.client.get("/", allow_redirects=False)
    assert page.status == 200
    assert 'href="/saml2/alexishr">Open AlexisHR</a>' in await page.text()
    assert ALICE not in portal.log.getvalue()


async def test_the_email_address_works_as_the_login(portal: Portal) -> None:
    done = await sign_in(portal.client, "alice@example.org", ALICE)
    assert done.status == 303


@pytest.mark.parametrize(
    ("login", "password"),
    [
        ("alice", "not-alices-password"),  # wrong password
        ("alice", ""),  # empty: an unauthenticated bind would "succeed"
        ("nobody", ALICE),  # unknown user
        ("bob", ALICE),  # someone else's password
        ("carol", "anything-at-all"),  # locked in the directory
        ("*", ALICE),  # a filter wildcard is not a user
    ],
)
async def test_refusals_say_the_same_thing(portal: Portal, login: str, password: str) -> None:
    refused = await sign_in(portal.client, login, password)
    assert refused.status == 401
    assert _ERROR.findall(await refused.text()) == [LOGIN_FAILED]
    assert (await portal.client.get("/", allow_redirects=False)).status == 303
    assert ALICE not in portal.log.getvalue()


async def test_a_user_locked_after_the_sync_is_refused(portal: Portal, slapd: Slapd) -> None:
    # The store still says active until the next cycle; the bind check itself refuses.
    slapd.modify(
        f"dn: uid=alice,{seed.PEOPLE}\nchangetype: modify\nadd: pwdAccountLockedTime\n"
        "pwdAccountLockedTime: 000001010000Z\n"
    )
    refused = await sign_in(portal.client, "alice", ALICE)
    assert refused.status == 401
    assert _ERROR.findall(await refused.text()) == [LOGIN_FAILED]


async def test_directory_down_refuses_without_leaking(portal: Portal, slapd: Slapd) -> None:
    slapd.stop()
    refused = await sign_in(portal.client, "alice", ALICE)
    # Fails closed: the portal's generic error page, no session, nothing leaked.
    assert refused.status == 500
    body = await refused.text()
    assert "Something went wrong" in body
    assert ALICE not in body and "reader-secret" not in body
    assert (await portal.client.get("/", allow_redirects=False)).status == 303
