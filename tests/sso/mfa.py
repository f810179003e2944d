"""Driving the second-factor pages as a browser would: their forms, codes from the shown key.

Codes are computed with pyotp from the key the enrolment page shows, at the
portal's clock (``World.clock``), so a test can move time across TOTP steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.sso.stack import World, sign_in

Client = TestClient[web.Request, web.Application]


@dataclass
class Form:
    action: str
    fields: dict[str, str] = field(default_factory=dict)


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._open: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self._open = Form(str(a.get("action")))
            self.forms.append(self._open)
        elif tag == "input" and self._open is not None and a.get("name"):
            self._open.fields[str(a["name"])] = a.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = None


def forms(page: str, action: str) -> list[Form]:
    """The forms of ``page`` that post to ``action``, with their fields' values."""
    parser = _Forms()
    parser.feed(page)
    return [f for f in parser.forms if f.action == action]


def form(page: str, action: str, **match: str) -> Form:
    """The one form posting to ``action`` whose fields include ``match``."""
    found = [f for f in forms(page, action) if all(f.fields.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{len(found)} forms to {action} with {match} in the page"
    return found[0]


_KEY = re.compile(r'<code class="key" id="totp-key">([A-Z2-7 ]+)</code>')
_CODES = re.compile(r"<li><code>([a-z2-7-]+)</code></li>")


def shown_key(page: str) -> str:
    """The TOTP key the enrolment page shows as text, without its spaces."""
    match = _KEY.search(page)
    assert match, "no TOTP key in the page"
    return match.group(1).replace(" ", "")


def recovery_codes(page: str) -> list[str]:
    return _CODES.findall(page)


def totp_code(world: World, key: str, offset: float = 0.0) -> str:
    """The code of ``key`` at the portal's clock (plus ``offset`` seconds)."""
    return pyotp.TOTP(key).at(world.clock() + offset)


def next_of(location: str) -> str:
    """The ``next`` query parameter of a redirect."""
    return parse_qs(urlsplit(location).query)["next"][0]


def path_of(location: str) -> str:
    return urlsplit(location).path


async def post(client: Client, f: Form, **fields: str) -> Any:
    return await client.post(f.action, data={**f.fields, **fields}, allow_redirects=False)


async def enrol(client: Client, world: World, next_path: str = "") -> tuple[str, list[str], Any]:
    """On a fresh session: enrol TOTP on ``/account/security``; the key, the recovery codes,
    and the answer to the confirming POST (the recovery codes page)."""
    query = {"next": next_path} if next_path else {}
    page = await (await client.get("/account/security", params=query)).text()
    key = shown_key(page)
    confirm = form(page, "/account/security/totp")
    answer = await post(client, confirm, code=totp_code(world, key))
    assert answer.status == 200, await answer.text()
    codes = recovery_codes(await answer.text())
    assert len(codes) == 10
    return key, codes, answer


async def signed_in_with_totp(client: Client, world: World, username: str = "alice") -> str:
    """``username`` signed in and enrolled (then signed out of the second factor: a new
    password-only session); returns the TOTP key."""
    assert (await sign_in(client, username)).status == 303
    key, _, _ = await enrol(client, world)
    # A new TOTP step for the next code, and a new password-only session.
    world.clock.offset += 30
    assert (await sign_in(client, username)).status == 303
    return key


async def pass_mfa(client: Client, world: World, key: str, next_path: str = "/") -> Any:
    """Pass ``/mfa`` with a TOTP code; the (unfollowed) answer."""
    page = await (await client.get("/mfa", params={"next": next_path})).text()
    return await post(client, form(page, "/mfa", factor="totp"), code=totp_code(world, key))
