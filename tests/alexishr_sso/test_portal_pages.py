"""The portal as a first-time user sees it: the organisation, tiles, "continue to", names,
refusal pages with a way back, and directory data that holds HTML."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from saml2 import BINDING_HTTP_REDIRECT

from daemon.config import PublicListenerSettings
from daemon.portal.branding import MAX_LOGO_BYTES, full_name, load_branding
from daemon.portal.errors import PortalConfigError
from tests.alexishr_sso.conftest import directory_doc, hidden_fields, make_sp, sign_in

IDP_PATH = "/saml2/alexishr"
SCRIPT = "<script>alert(1)</script>"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


async def test_organisation_and_logo_on_the_sign_in_page_and_the_portal(serve, world):
    (world.tmp / "logo.png").write_bytes(PNG)
    client = await serve(organisation="Nordlys", logo=Path("logo.png"))
    login = await (await client.get("/login")).text()
    assert '<span class="org">Nordlys</span>' in login
    assert '<img src="/logo" alt="">' in login
    assert "<title>Sign in · Nordlys</title>" in login
    assert "Use your Nordlys account." in login
    logo = await client.get("/logo")
    assert logo.status == 200
    assert logo.headers["Content-Type"] == "image/png"
    assert await logo.read() == PNG

    await sign_in(client, "alice")
    portal = await (await client.get("/")).text()
    assert '<span class="org">Nordlys</span>' in portal
    # A tile per application, its link named "Open <title>".
    assert '<li class="tile"><span class="mark" aria-hidden="true">A</span>' in portal
    assert '<span class="name" aria-hidden="true">AlexisHR</span>' in portal
    assert 'href="/saml2/alexishr">Open AlexisHR</a>' in portal


async def test_without_an_organisation_the_pages_say_provisiond(client):
    login = await (await client.get("/login")).text()
    assert "<title>Sign in · provisiond</title>" in login
    assert 'class="brand"' not in login
    assert (await client.get("/logo")).status == 404


@pytest.mark.parametrize(
    ("logo", "content", "fault"),
    [
        ("logo.bmp", b"BM", "the file must end in one of"),
        ("missing.png", None, "cannot read the file"),
        ("empty.png", b"", "the file is empty"),
        ("huge.png", b"x" * (MAX_LOGO_BYTES + 1), "the file is larger than 512 KiB"),
    ],
)
def test_a_logo_that_cannot_be_served_names_the_setting(tmp_path, logo, content, fault):
    if content is not None:
        (tmp_path / logo).write_bytes(content)
    settings = PublicListenerSettings(enabled=True, logo=Path(logo))
    with pytest.raises(PortalConfigError, match=rf"http\.public\.logo '{logo}': {fault}"):
        load_branding(settings, tmp_path)


def test_organisation_must_not_be_blank():
    with pytest.raises(ValueError, match="organisation"):
        PublicListenerSettings(organisation="   ")
    assert PublicListenerSettings(organisation="  Nordlys \n AB ").organisation == "Nordlys AB"


async def test_sp_initiated_sign_in_says_which_application_it_continues_to(
    client, world, sp_key
):
    sp = make_sp(world.tmp, sp_key, await (await client.get(f"{IDP_PATH}/metadata")).text())
    _, info = sp.prepare_for_authenticate(binding=BINDING_HTTP_REDIRECT)
    location = urlsplit(dict(info["headers"])["Location"])
    parked = await client.get(f"{location.path}?{location.query}", allow_redirects=False)
    login = await (await client.get(parked.headers["Location"])).text()
    assert "<h1>Sign in to continue to AlexisHR</h1>" in login
    # After a wrong password, the form still says where it goes.
    fields = hidden_fields(login)
    wrong = await client.post(
        "/login",
        data={**fields, "username": "alice", "password": "not it"},
        allow_redirects=False,
    )
    assert wrong.status == 401
    assert "<h1>Sign in to continue to AlexisHR</h1>" in await wrong.text()
    # A plain sign-in (or a next path that launches nothing) just says "Sign in".
    assert "<h1>Sign in</h1>" in await (await client.get("/login?next=/elsewhere")).text()


async def test_people_are_shown_by_their_full_name(client):
    await sign_in(client, "alice")
    assert "Signed in as Alice Lindqvist." in await (await client.get("/")).text()
    await sign_in(client, "bob")
    refused = await client.get(IDP_PATH)
    assert refused.status == 403
    text = await refused.text()
    assert "You have no access to AlexisHR. You are signed in as Bob Berg;" in text
    assert '<a href="/">Back to your applications</a>' in text


def test_full_name_falls_back_to_the_username():
    from daemon.model import User

    assert full_name(User(id="1", username="u", email="e", display_name=" Dr. Ek ")) == "Dr. Ek"
    assert full_name(User(id="1", username="u", email="e", given_name="Ann")) == "Ann"
    assert full_name(User(id="1", username="u", email="e", display_name=" ")) == "u"


async def test_html_in_directory_data_and_settings_is_escaped_everywhere(serve, world):
    world.write_directory(
        directory_doc(
            extra={
                "alice": {"display_name": SCRIPT, "given_name": SCRIPT},
                "bob": {"given_name": SCRIPT, "family_name": '"><img src=x>'},
            }
        )
    )
    await world.cycle()
    world.target.options = world.target.options.model_copy(
        update={"sso": world.target.options.sso.model_copy(update={"title": SCRIPT})}
    )
    client = await serve(organisation=SCRIPT)
    pages = [await (await client.get("/login?next=" + IDP_PATH)).text()]
    await sign_in(client, "alice")
    pages.append(await (await client.get("/")).text())
    pages.append(await (await client.get("/account/security")).text())
    await sign_in(client, "bob")
    pages.append(await (await client.get(IDP_PATH)).text())
    pages.append(await (await client.get(f"{IDP_PATH}?resume=nope")).text())
    for page in pages:
        assert "<script>" not in page
        assert "<img src=x>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1]
    assert "Sign in to continue to &lt;script&gt;" in pages[0]
    assert "&#34;&gt;&lt;img src=x&gt;" in pages[3]


async def test_refusal_pages_are_plain_and_lead_back_to_the_portal(client):
    expired = await client.get(f"{IDP_PATH}?resume=unknown")
    assert expired.status == 400
    text = await expired.text()
    assert "This sign-in request has expired or was already used" in text
    assert '<a href="/">Back to the portal</a>' in text

    broken = await client.get(f"{IDP_PATH}?SAMLRequest=not-deflate")
    assert broken.status == 400
    text = await broken.text()
    assert "<h1>AlexisHR could not sign you in</h1>" in text
    assert "The request AlexisHR sent could not be accepted, so you are not signed in." in text
    assert '<p class="detail">For your administrator: SAML message is not valid base64.</p>' in text
    assert '<a href="/">Back to the portal</a>' in text
