"""SAML 2.0 HTTP bindings: decode inbound messages, build the outbound POST form.

Everything decoded here is untrusted. Each failure raises
:class:`SamlRequestError` with a short fixed message; nothing of the input is
echoed. Sizes are bounded before decoding (base64) and while inflating
(DEFLATE), so a small request cannot expand into a large allocation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import re
import secrets
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, unquote_plus, urlsplit

from daemon.saml.errors import SamlRequestError
from daemon.saml.names import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from daemon.saml.safexml import MAX_XML_BYTES

#: RelayState is limited to 80 bytes by the bindings spec (§3.4.3); many SPs
#: send more (whole URLs), so accept up to this and refuse beyond.
MAX_RELAY_STATE: Final = 2048
#: A raw query string longer than this is refused before any parsing.
MAX_QUERY_LENGTH: Final = 64 * 1024

_WHITESPACE: Final = re.compile(rb"\s+")


@dataclass(frozen=True, slots=True)
class RedirectSignature:
    """A detached HTTP-Redirect signature (bindings spec §3.4.4.1), not yet verified."""

    sig_alg: str
    signature: bytes
    #: The exact octets that were signed, rebuilt from the raw query string.
    signed_octets: bytes


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A decoded SAML message, still to be parsed and validated."""

    binding: str
    xml: bytes
    relay_state: str | None
    #: Present only for HTTP-Redirect messages that carry SigAlg and Signature.
    redirect_signature: RedirectSignature | None = None


def decode_redirect(
    raw_query: str, *, param: str = "SAMLRequest", max_bytes: int = MAX_XML_BYTES
) -> InboundMessage:
    """Decode an HTTP-Redirect message from the request's raw (still percent-encoded) query.

    The raw query is needed because a Redirect signature covers the
    parameters exactly as the sender encoded them.
    """
    if len(raw_query) > MAX_QUERY_LENGTH:
        raise SamlRequestError("SAML request is too large")
    raw: dict[str, str] = {}
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = unquote_plus(name)
        if name in raw:
            raise SamlRequestError("SAML request repeats a query parameter")
        raw[name] = value
    if param not in raw:
        raise SamlRequestError(f"{param} is missing")
    xml = inflate(_b64decode(unquote(raw[param]), _max_b64(max_bytes)), max_bytes=max_bytes)
    relay_state = _relay_state(unquote_plus(raw["RelayState"]) if "RelayState" in raw else None)

    signature: RedirectSignature | None = None
    if "Signature" in raw or "SigAlg" in raw:
        if "Signature" not in raw or "SigAlg" not in raw:
            raise SamlRequestError("SAML request has SigAlg or Signature without the other")
        # §3.4.4.1: the signed octets are the parameters in this fixed order,
        # with the values exactly as they appeared in the query.
        parts = [f"{param}={raw[param]}"]
        if "RelayState" in raw:
            parts.append(f"RelayState={raw['RelayState']}")
        parts.append(f"SigAlg={raw['SigAlg']}")
        signature = RedirectSignature(
            sig_alg=unquote_plus(raw["SigAlg"]),
            signature=_b64decode(unquote(raw["Signature"]), 4096),
            signed_octets="&".join(parts).encode("utf-8"),
        )
    return InboundMessage(BINDING_HTTP_REDIRECT, xml, relay_state, signature)


def decode_post(
    form: Mapping[str, str], *, param: str = "SAMLRequest", max_bytes: int = MAX_XML_BYTES
) -> InboundMessage:
    """Decode an HTTP-POST message from the submitted form fields."""
    value = form.get(param)
    if value is None:
        raise SamlRequestError(f"{param} is missing")
    xml = _b64decode(value, _max_b64(max_bytes))
    return InboundMessage(BINDING_HTTP_POST, xml, _relay_state(form.get("RelayState")))


def inflate(data: bytes, *, max_bytes: int = MAX_XML_BYTES) -> bytes:
    """Inflate raw DEFLATE (no zlib header), stopping once ``max_bytes`` is exceeded."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error:
        raise SamlRequestError("SAML request is not valid DEFLATE data") from None
    if len(out) > max_bytes:
        raise SamlRequestError("SAML request is too large once inflated")
    if not inflater.eof:
        raise SamlRequestError("SAML request is truncated DEFLATE data")
    return out


def deflate(data: bytes) -> bytes:
    """Raw DEFLATE, as the HTTP-Redirect binding carries messages."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _max_b64(max_bytes: int) -> int:
    return (max_bytes + 2) // 3 * 4


def _b64decode(value: str | bytes, max_encoded: int) -> bytes:
    raw = value.encode("ascii", "replace") if isinstance(value, str) else value
    # Line breaks inside base64 are common in POST bodies; the cap applies to
    # what remains once they are gone, but the input is bounded first.
    if len(raw) > 2 * max_encoded + 1024:
        raise SamlRequestError("SAML message is too large")
    raw = _WHITESPACE.sub(b"", raw)
    if len(raw) > max_encoded:
        raise SamlRequestError("SAML message is too large")
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise SamlRequestError("SAML message is not valid base64") from None
    if not decoded:
        raise SamlRequestError("SAML message is empty")
    return decoded


def _relay_state(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > MAX_RELAY_STATE:
        raise SamlRequestError("RelayState is too long")
    return value


# The form's only script. Its text is fixed, so its CSP hash is a constant.
_AUTOSUBMIT_JS: Final = 'document.getElementById("saml-post").submit();'
#: The CSP source expression that allows the auto-submit script.
POST_FORM_SCRIPT_HASH: Final = (
    "'sha256-"
    + base64.b64encode(hashlib.sha256(_AUTOSUBMIT_JS.encode("utf-8")).digest()).decode("ascii")
    + "'"
)


@dataclass(frozen=True, slots=True)
class PostForm:
    """An HTML page that posts a SAML message to the SP, and the CSP it needs."""

    html: str
    #: CSP source for ``script-src``: the nonce when one was given, else the hash.
    script_src: str
    #: A complete, strict ``Content-Security-Policy`` value for this page.
    content_security_policy: str


def encode_post(xml: bytes) -> str:
    """Base64 of a message for the HTTP-POST binding."""
    return base64.b64encode(xml).decode("ascii")


def post_form(
    action: str,
    xml: bytes,
    *,
    relay_state: str | None = None,
    param: str = "SAMLResponse",
    nonce: str | None = None,
) -> PostForm:
    """The auto-submitting HTTP-POST page carrying ``xml`` to ``action``.

    The page works without JavaScript (a Continue button in ``<noscript>``)
    and under a CSP that forbids inline script except this one, allowed by
    its hash or by ``nonce`` (pass :func:`new_nonce` output if the caller
    prefers nonces). ``action`` must be the SP's configured ACS URL.
    """
    url = urlsplit(action)
    if url.scheme not in ("https", "http") or not url.netloc:
        raise SamlRequestError("the SP's ACS URL is not an absolute http(s) URL")
    fields = [(param, encode_post(xml))]
    if relay_state:
        fields.append(("RelayState", relay_state))
    inputs = "\n".join(
        f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
        for name, value in fields
    )
    nonce_attr = f' nonce="{html.escape(nonce)}"' if nonce else ""
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="referrer" content="no-referrer">'
        "<title>Signing in</title></head>\n<body>\n"
        f'<form id="saml-post" method="post" action="{html.escape(action)}">\n'
        f"{inputs}\n"
        "<noscript><p>JavaScript is off. Press Continue to finish signing in.</p>"
        '<button type="submit">Continue</button></noscript>\n'
        "</form>\n"
        f"<script{nonce_attr}>{_AUTOSUBMIT_JS}</script>\n"
        "</body></html>\n"
    )
    script_src = f"'nonce-{nonce}'" if nonce else POST_FORM_SCRIPT_HASH
    form_action = f"{url.scheme}://{url.netloc}"
    csp = (
        f"default-src 'none'; script-src {script_src}; form-action {form_action}; "
        "base-uri 'none'; frame-ancestors 'none'"
    )
    return PostForm(html=page, script_src=script_src, content_security_policy=csp)


def new_nonce() -> str:
    """A fresh CSP nonce (128 random bits, base64url)."""
    return secrets.token_urlsafe(16)
