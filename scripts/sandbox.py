"""A local AlexisHR-compatible sandbox for the demo: SCIM, and a SAML ACS page, on loopback.

SCIM: scim2-server, serving the attribute set provisiond sends AlexisHR (core
User with the EnterpriseUser extension, and Groups), in memory, accepting only
the bearer token in the given file.

Single sign-on: AlexisHR's Assertion Consumer Service at
``/login/callback?connection=<connection>``. It checks the signed SAML
Response with pysaml2 and xmlsec1 against provisiond's IdP metadata (fetched
from ``--idp-metadata`` for every sign-in, so a new key is picked up), and
shows "signed in to the AlexisHR sandbox as ..." for an employee the SCIM side
holds. A Response that is forged, tampered with or unsigned gets a page that
says so, with status 400. ``/`` is the sandbox's own sign-in page: "Sign in
with SSO" starts an SP-initiated sign-in (an HTTP-Redirect AuthnRequest).
Usage::

    python scripts/sandbox.py --port 8765 --token-file examples/alexishr-sandbox.token \\
        --idp-metadata http://127.0.0.1:8080/saml2/alexishr/metadata

Stop it with Ctrl-C or SIGTERM. Not for production: it is a test server.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import logging
import secrets
import shutil
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs, urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.client import Saml2Client
from saml2.config import SPConfig
from scim2_models import ScimProvider
from scim2_server.memory import InMemoryStorage
from scim2_server.service import ScimService
from scim2_server.testserver.application import BEARER_TOKEN_SCHEME, BearerTokenApplication
from scim2_server.utils import (
    load_default_resource_types,
    load_default_schemas,
    load_default_service_provider_config,
)

NAMEID_EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
#: A SAMLResponse larger than this is refused unread (ours are a few kilobytes).
MAX_FORM_BYTES = 256 * 1024
#: SP-initiated sign-ins waiting for their Response (request id -> True), at most this many.
MAX_OUTSTANDING = 1000

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

log = logging.getLogger("sandbox")


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def scim_app(token: str) -> tuple[BearerTokenApplication, InMemoryStorage]:
    """scim2-server's application with the default schemas, accepting only ``token``."""
    config = load_default_service_provider_config()
    config.authentication_schemes = [*(config.authentication_schemes or []), BEARER_TOKEN_SCHEME]
    provider = ScimProvider.from_discovery(
        load_default_schemas().values(), load_default_resource_types().values(), config=config
    )
    storage = InMemoryStorage()
    service = ScimService(provider, secret=secrets.token_urlsafe(32))
    app = BearerTokenApplication(storage, provider, service=service, bearer_tokens=[token])
    return app, storage


class SignOn:
    """AlexisHR's side of single sign-on: the ACS page, and SP-initiated sign-in."""

    def __init__(self, base_url: str, connection: str, metadata_url: str, storage: Any) -> None:
        self.entity_id = f"urn:auth0:alexishr:{connection}"
        self.acs_url = f"{base_url}/login/callback?{urlencode({'connection': connection})}"
        self.metadata_url = metadata_url
        self.storage = storage
        self.outstanding: OrderedDict[str, bool] = OrderedDict()
        self.lock = threading.Lock()
        xmlsec = shutil.which("xmlsec1")
        if xmlsec is None:
            sys.exit("the sandbox needs xmlsec1 to check signatures: apt-get install xmlsec1")
        self.xmlsec = xmlsec

    def client(self) -> Saml2Client:
        """pysaml2 as AlexisHR, trusting the IdP metadata as it is now."""
        with urllib.request.urlopen(self.metadata_url, timeout=5) as answer:  # noqa: S310 (loopback)
            metadata = answer.read().decode("utf-8")
        config = SPConfig()
        config.load(
            {
                "entityid": self.entity_id,
                "xmlsec_binary": self.xmlsec,
                "metadata": {"inline": [metadata]},
                "service": {
                    "sp": {
                        "endpoints": {
                            "assertion_consumer_service": [(self.acs_url, BINDING_HTTP_POST)]
                        },
                        # The portal's AlexisHR tile is IdP-initiated: no request came first.
                        "allow_unsolicited": True,
                        "want_response_signed": True,
                        "want_assertions_signed": True,
                        "authn_requests_signed": False,
                        "name_id_format": NAMEID_EMAIL,
                    }
                },
                "accepted_time_diff": 60,
                "allow_unknown_attributes": True,
            }
        )
        return Saml2Client(config=config)

    # -- pages -----------------------------------------------------------------------

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/login/callback":
            if method != "POST":
                return page(start_response, "405 Method Not Allowed", "Not here",
                            "<p>The ACS takes the SAML Response as a POST from the sign-in "
                            "page. <a href=\"/\">Start at the sandbox</a>.</p>")  # fmt: skip
            return self.consume(environ, start_response)
        if path == "/sso/login":
            return self.start(start_response)
        return page(
            start_response,
            "200 OK",
            "AlexisHR sandbox",
            "<p>This is the local AlexisHR sandbox of the provisiond demo.</p>"
            '<p><a class="button" href="/sso/login">Sign in with SSO</a></p>',
        )

    def start(self, start_response: StartResponse) -> Iterable[bytes]:
        """SP-initiated sign-in: an AuthnRequest to the IdP over HTTP-Redirect."""
        try:
            client = self.client()
        except (OSError, urllib.error.URLError) as exc:
            return unreachable(start_response, self.metadata_url, exc)
        request_id, info = client.prepare_for_authenticate(
            binding=BINDING_HTTP_REDIRECT, nameid_format=NAMEID_EMAIL
        )
        with self.lock:
            self.outstanding[request_id] = True
            while len(self.outstanding) > MAX_OUTSTANDING:
                self.outstanding.popitem(last=False)
        location = dict(info["headers"])["Location"]
        start_response("303 See Other", [("Location", location), ("Cache-Control", "no-store")])
        return [b""]

    def consume(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """The ACS: check the Response, then show who signed in (or why nobody did)."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if not 0 < length <= MAX_FORM_BYTES:
            return refused(start_response, "The sign-in form was empty or too large.")
        form = parse_qs(environ["wsgi.input"].read(length).decode("latin-1"))
        saml_response = (form.get("SAMLResponse") or [""])[0]
        if not saml_response:
            return refused(start_response, "The sign-in form carried no SAML Response.")
        try:
            client = self.client()
        except (OSError, urllib.error.URLError) as exc:
            return unreachable(start_response, self.metadata_url, exc)
        with self.lock:
            outstanding = dict.fromkeys(self.outstanding, "/")
        try:
            answer = client.parse_authn_request_response(
                saml_response, BINDING_HTTP_POST, outstanding=outstanding
            )
        except Exception as exc:  # pysaml2 raises many kinds; each one is a refusal
            log.warning("SAML Response refused: %s: %s", type(exc).__name__, exc)
            return refused(
                start_response,
                "The SAML Response did not pass the check against provisiond's metadata "
                "(a forged, tampered with, unsigned or expired Response), so nobody is "
                "signed in.",
                f"{type(exc).__name__}: {exc}",
            )
        if answer is None or answer.assertion is None:
            return refused(start_response, "The SAML Response held no assertion.")
        with self.lock:
            self.outstanding.pop(answer.in_response_to or "", None)
        email = answer.name_id.text.strip()
        attributes = answer.get_identity()
        first = " ".join(attributes.get("firstName", []))
        last = " ".join(attributes.get("lastName", []))
        name = " ".join(part for part in (first, last) if part) or email
        employee = self.employee(email)
        if employee is None:
            return page(
                start_response,
                "403 Forbidden",
                "Not an employee here",
                f"<p>The sign-in of <strong>{html.escape(email)}</strong> checked out, but "
                "the AlexisHR sandbox has no such employee: provisiond has not provisioned "
                "this person (yet). Wait for the next cycle and try again.</p>",
            )
        context = answer.assertion.authn_statement[0].authn_context
        how = context.authn_context_class_ref.text if context.authn_context_class_ref else ""
        log.info("signed in: %s", email)
        return page(
            start_response,
            "200 OK",
            "Welcome",
            f'<p class="ok" id="signed-in">You are signed in to the AlexisHR sandbox as '
            f"<strong>{html.escape(name)}</strong>.</p>"
            "<dl>"
            f'<dt>NameID</dt><dd id="nameid">{html.escape(email)}</dd>'
            f'<dt>Employee</dt><dd id="employee">{html.escape(employee)}</dd>'
            f'<dt>Authentication</dt><dd id="context">{html.escape(how)}</dd>'
            "</dl>"
            "<p>The SAML Response was signed by provisiond and checked with pysaml2 "
            "against its metadata.</p>",
        )

    def employee(self, email: str) -> str | None:
        """How the SCIM side knows the person with work email ``email``, or ``None``."""
        want = email.casefold()
        with self.storage.operation():  # SCIM writes run on other threads
            resources = list(self.storage.resources)
        for resource in resources:
            data = resource.model_dump()
            emails = [str(e.get("value", "")) for e in data.get("emails") or []]
            names = [str(data.get("userName", "")), *emails]
            if data.get("active", True) is not False and want in (n.casefold() for n in names):
                shown = data.get("displayName") or data.get("userName")
                return f"{shown} (SCIM id {data.get('id')})"
        return None


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;"
    "color:#1b1b1b;line-height:1.5}"
    "header{display:flex;align-items:center;gap:.6rem;border-bottom:3px solid #6d28d9;"
    "padding-bottom:.75rem;margin-bottom:1.5rem;font-weight:700;font-size:1.2rem}"
    "header span.mark{background:#6d28d9;color:#fff;border-radius:8px;width:2.2rem;height:2.2rem;"
    "display:flex;align-items:center;justify-content:center}"
    ".ok{border-left:4px solid #15803d;background:#f0fdf4;padding:.5rem 1rem;font-size:1.1rem}"
    ".error{border-left:4px solid #b91c1c;background:#fef2f2;padding:.5rem 1rem}"
    ".detail{font-size:.9rem;color:#4b5563;overflow-wrap:anywhere}"
    "dt{font-weight:600}dd{margin:0 0 .5rem 0;overflow-wrap:anywhere}"
    "a.button{display:inline-block;padding:.6rem 1.2rem;background:#6d28d9;color:#fff;"
    "border-radius:4px;text-decoration:none}"
)


def page(start_response: StartResponse, status: str, title: str, body: str) -> list[bytes]:
    """A sandbox page; ``body`` is HTML the caller escaped."""
    text = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} · AlexisHR sandbox</title><style>{STYLE}</style></head>"
        '<body><header><span class="mark" aria-hidden="true">A</span>AlexisHR sandbox</header>'
        f"<main><h1>{html.escape(title)}</h1>{body}</main></body></html>"
    )
    data = text.encode("utf-8")
    start_response(
        status,
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
        ],
    )
    return [data]


def refused(start_response: StartResponse, message: str, detail: str = "") -> list[bytes]:
    extra = f'<p class="detail" id="detail">{html.escape(detail)}</p>' if detail else ""
    return page(
        start_response,
        "400 Bad Request",
        "Sign-in refused",
        f'<p class="error" id="refused">{html.escape(message)}</p>{extra}'
        '<p><a href="/">Back to the sandbox</a></p>',
    )


def unreachable(start_response: StartResponse, url: str, exc: Exception) -> list[bytes]:
    return page(
        start_response,
        "503 Service Unavailable",
        "provisiond is not reachable",
        f"<p class=\"error\">The sandbox could not read provisiond's IdP metadata at "
        f"{html.escape(url)}: {html.escape(str(exc))}. Is the daemon running?</p>",
    )


def dispatch(scim: Any, sign_on: SignOn) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """The sign-on pages at ``/``, ``/sso/...`` and ``/login/callback``; SCIM everywhere else."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("", "/", "/login/callback") or path.startswith("/sso/"):
            return sign_on(environ, start_response)
        result: Iterable[bytes] = scim(environ, start_response)
        return result

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument(
        "--idp-metadata",
        default="http://127.0.0.1:8080/saml2/alexishr/metadata",
        help="provisiond's IdP metadata URL for the AlexisHR target",
    )
    parser.add_argument("--connection", default="nordlys", help="AlexisHR's SSO connection name")
    args = parser.parse_args()
    token = args.token_file.read_text(encoding="utf-8").strip()
    if len(token) < 8:
        sys.exit(f"{args.token_file}: the token must hold at least 8 characters")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    scim, storage = scim_app(token)
    base_url = f"http://127.0.0.1:{args.port}"
    sign_on = SignOn(base_url, args.connection, args.idp_metadata, storage)
    # Loopback only: this is a demo server.
    with make_server(
        "127.0.0.1",
        args.port,
        dispatch(scim, sign_on),
        server_class=ThreadingWSGIServer,
        handler_class=QuietHandler,
    ) as server:
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        print(f"AlexisHR sandbox: SCIM and sign-in on {base_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


if __name__ == "__main__":
    main()
