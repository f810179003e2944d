"""The HTTP-POST form: escaped, works without JavaScript, allowed by a strict CSP."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from daemon.saml.bindings import POST_FORM_SCRIPT_HASH, new_nonce, post_form
from daemon.saml.errors import SamlRequestError
from tests.saml.conftest import ACS


def test_form_carries_message_and_escapes_relay_state():
    form = post_form(ACS, b"<Response/>", relay_state='"><script>alert(1)</script>')
    assert 'action="https://auth.alexishr.com/login/callback?connection=test-conn"' in form.html
    value = base64.b64encode(b"<Response/>").decode()
    assert f'name="SAMLResponse" value="{value}"' in form.html
    assert "<script>alert(1)" not in form.html
    assert "&quot;&gt;&lt;script&gt;" in form.html


def test_form_works_without_javascript():
    page = post_form(ACS, b"<Response/>").html
    noscript = re.search(r"<noscript>(.*?)</noscript>", page, re.S)
    assert noscript and '<button type="submit">' in noscript.group(1)
    assert noscript.group(0) in page.split("</form>")[0]  # the button is inside the form


def test_script_hash_matches_the_inline_script():
    form = post_form(ACS, b"<Response/>")
    scripts = re.findall(r"<script>(.*?)</script>", form.html, re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" == POST_FORM_SCRIPT_HASH
    assert form.script_src == POST_FORM_SCRIPT_HASH
    assert f"script-src {POST_FORM_SCRIPT_HASH};" in form.content_security_policy
    assert "form-action https://auth.alexishr.com;" in form.content_security_policy
    assert "default-src 'none'" in form.content_security_policy
    assert "style=" not in form.html  # nothing that a strict style-src would block


def test_nonce_variant():
    nonce = new_nonce()
    form = post_form(ACS, b"<Response/>", nonce=nonce)
    assert f'<script nonce="{nonce}">' in form.html
    assert form.script_src == f"'nonce-{nonce}'"


def test_relative_action_is_refused():
    with pytest.raises(SamlRequestError, match="absolute"):
        post_form("javascript:alert(1)", b"<Response/>")
