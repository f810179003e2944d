"""AlexisHR as a service provider of provisiond's SAML identity provider, and its routes.

The SP profile: audience ``urn:auth0:alexishr:<connection>``, ACS
``https://auth.alexishr.com/login/callback?connection=<connection>`` (both from
:class:`~plugins.alexishr.options.AlexisHROptions`, sandbox variants and
overrides included), NameID emailAddress = the work email, and the attributes
``email``, ``firstName`` and ``lastName``.

Routes, per AlexisHR target with ``sso`` enabled (``<c>`` is ``sso.path`` or
the target name):

- ``GET /saml2/<c>``: IdP-initiated sign-in for the signed-in user (sign-in
  first when needed); with ``SAMLRequest``: an HTTP-Redirect AuthnRequest;
- ``POST /saml2/<c>``: an HTTP-POST AuthnRequest;
- ``GET /saml2/<c>/metadata`` and ``GET /saml2/<c>/certificate.pem``;
- ``GET|POST /saml2/<c>/slo``: the sign-out URL.

RelayState is only ever handed back to AlexisHR inside the POST form; this
module never redirects to it, and IdP-initiated sign-in sends none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import anyio.to_thread
import structlog
from aiohttp import web
from cryptography import x509

from daemon.directory import Directory
from daemon.hookspecs import hookimpl
from daemon.portal.applications import Application, launches
from daemon.portal.metrics import (
    SAML_CERTIFICATE_EXPIRY,
    SAML_RESPONSES,
    SAML_SIGN_SECONDS,
    SSO_REFUSALS,
)
from daemon.portal.pending import PendingFull, PendingRequests
from daemon.portal.site import PORTAL, Portal, SignedIn, client_address
from daemon.runtime import PluginContext
from daemon.saml.bindings import InboundMessage, decode_post, decode_redirect, post_form
from daemon.saml.errors import SamlConfigError, SamlRequestError
from daemon.saml.keys import SigningKey, load_certificate, load_signing_key
from daemon.saml.metadata import idp_metadata
from daemon.saml.names import NAMEID_EMAIL, STATUS_NO_PASSIVE, STATUS_RESPONDER
from daemon.saml.parties import IdentityProvider, ServiceProvider
from daemon.saml.replay import MemoryRequestIdStore
from daemon.saml.request import AuthnRequest, receive_authn_request
from daemon.saml.response import Principal, build_response, build_status_response
from daemon.saml.slo import receive_logout_request
from daemon.secrets import resolve_secret_path
from plugins.alexishr.options import AlexisHROptions

log = structlog.get_logger("provisiond.alexishr.sso")
audit = structlog.get_logger("provisiond.audit")

#: AuthnRequests and LogoutRequests are a few kilobytes; refuse far larger ones.
MAX_REQUEST_BYTES: Final = 64 * 1024
EXPIRED: Final = "This sign-in request has expired or was already used. Start again from AlexisHR."
BUSY: Final = "Too many sign-ins are in progress. Try again in a minute."


class SigningKeys:
    """The IdP key and certificates, re-read when their files change (rotation, no restart).

    A change that does not load (a half-written file, a mismatched pair)
    keeps the previous key and logs why.
    """

    def __init__(
        self, key_file: Path, cert_file: Path, next_cert_file: Path | None, context: PluginContext
    ) -> None:
        self._files = (key_file, cert_file, next_cert_file)
        self._context = context
        self._stamp = self._stat()
        self._key, self._next = self._load()

    def current(self) -> tuple[SigningKey, tuple[x509.Certificate, ...]]:
        """The signing key, and the extra certificates to publish."""
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._key, self._next = self._load()
                log.info("SAML signing key reloaded", key_file=str(self._files[0]))
            except SamlConfigError as exc:
                log.error(
                    "SAML signing key change not loaded; the previous key stays", error=str(exc)
                )
        return self._key, self._next

    def _stat(self) -> tuple[tuple[int, int, int] | None, ...]:
        out: list[tuple[int, int, int] | None] = []
        for path in self._files:
            try:
                st = os.stat(path) if path is not None else None
            except OSError:
                st = None
            out.append((st.st_ino, st.st_size, st.st_mtime_ns) if st else None)
        return tuple(out)

    def _load(self) -> tuple[SigningKey, tuple[x509.Certificate, ...]]:
        key_file, cert_file, next_file = self._files
        key = load_signing_key(key_file, cert_file, secrets=self._context.secrets)
        extra = (load_certificate(next_file),) if next_file is not None else ()
        return key, extra


class AlexisHRSignOn:
    """Single sign-on into one AlexisHR target."""

    def __init__(
        self, name: str, options: AlexisHROptions, directory: Directory, context: PluginContext
    ) -> None:
        sso = options.sso
        if sso is None:
            raise SamlConfigError(f"target {name}: options.sso is not configured")
        self.name = name
        self.options = options
        self.directory = directory
        self.custom_value = sso.path or name
        self.path = f"/saml2/{self.custom_value}"
        self.title = "AlexisHR (sandbox)" if options.sandbox else "AlexisHR"

        def resolve(p: Path) -> Path:
            return p if p.is_absolute() else context.config_dir / p

        self.keys = SigningKeys(
            resolve_secret_path(sso.key_file, context.config_dir),
            resolve(sso.cert_file),
            resolve(sso.next_cert_file) if sso.next_cert_file else None,
            context,
        )
        request_certs = (load_certificate(resolve(sso.sp_cert_file)),) if sso.sp_cert_file else ()
        self.sp = ServiceProvider(
            entity_id=options.audience,
            acs_url=options.acs_url,
            name_id_format=NAMEID_EMAIL,
            sign_assertion=sso.sign_assertion,
            sign_response=sso.sign_response,
            want_requests_signed=sso.want_requests_signed,
            request_certificates=request_certs,
        )
        self.replay = MemoryRequestIdStore()
        #: AuthnRequests accepted before the user had a session.
        self.pending: PendingRequests[AuthnRequest] = PendingRequests()
        SAML_CERTIFICATE_EXPIRY.labels(application=name).set_function(
            lambda: self.keys.current()[0].seconds_until_expiry()
        )

    # -- parties -------------------------------------------------------------------

    def idp(self, base_url: str) -> IdentityProvider:
        """This IdP as AlexisHR sees it; the entity ID is the IdP URL."""
        key, extra = self.keys.current()
        url = f"{base_url}{self.path}"
        return IdentityProvider(
            entity_id=url,
            sso_url=url,
            slo_url=f"{url}/slo",
            signing_key=key,
            extra_certificates=extra,
        )

    @staticmethod
    def principal(signed_in: SignedIn) -> Principal:
        """NameID = the work email; ``email``, ``firstName``, ``lastName`` (when known)."""
        user = signed_in.user
        attributes: dict[str, list[str]] = {"email": [user.email]}
        if user.given_name:
            attributes["firstName"] = [user.given_name]
        if user.family_name:
            attributes["lastName"] = [user.family_name]
        return Principal(
            name_id=user.email,
            attributes=attributes,
            session_index=signed_in.session.session_index,
            # When the password was checked, not when this Response is issued:
            # an SP that asked for ForceAuthn, or limits the age of a sign-in,
            # judges by it.
            authn_instant=datetime.fromtimestamp(signed_in.session.authenticated_at, UTC),
        )

    # -- routes --------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        """The four URLs of this application."""
        launch = launches(Application(target=self.name, title=self.title, path=self.path))
        return [
            web.get(self.path, launch(self.sso_get), allow_head=False),
            web.post(self.path, self.sso_post),
            web.get(f"{self.path}/metadata", self.metadata),
            web.get(f"{self.path}/certificate.pem", self.certificate),
            web.get(f"{self.path}/slo", self.slo, allow_head=False),
            web.post(f"{self.path}/slo", self.slo),
        ]

    async def sso_get(self, request: web.Request) -> web.StreamResponse:
        """IdP-initiated sign-in, an HTTP-Redirect AuthnRequest, or the return from login."""
        portal = request.app[PORTAL]
        try:
            if "SAMLRequest" in request.query:
                message = decode_redirect(
                    request.rel_url.raw_query_string, max_bytes=MAX_REQUEST_BYTES
                )
                authn = await self._receive(message, portal)
                return await self._handle(request, portal, authn, portal.clock())
            if "resume" in request.query:
                parked = self.pending.take(request.query["resume"])
                if parked is None:
                    return portal.refused(request, EXPIRED, reason="expired")
                return await self._handle(request, portal, parked.value, parked.parked_at)
        except SamlRequestError as exc:
            return portal.refused(request, str(exc), reason="invalid_request")
        # IdP-initiated: any RelayState in the query is ignored, never forwarded.
        signed_in = await portal.signed_in(request)
        if signed_in is None:
            raise portal.login_redirect(self.path)
        return await self._answer(request, portal, signed_in, None)

    async def sso_post(self, request: web.Request) -> web.StreamResponse:
        """An HTTP-POST AuthnRequest.

        The POST comes from AlexisHR's site, so the browser does not send the
        SameSite=Lax session cookie with it: the request is validated and
        parked, and the browser continues with a same-site GET that does.
        """
        portal = request.app[PORTAL]
        try:
            message = decode_post(await _form(request), max_bytes=MAX_REQUEST_BYTES)
            authn = await self._receive(message, portal)
            handle = self.pending.park(authn, portal.clock())
        except SamlRequestError as exc:
            return portal.refused(request, str(exc), reason="invalid_request")
        except PendingFull:
            return portal.refused(request, BUSY, reason="busy", status=503)
        raise web.HTTPSeeOther(f"{self.path}?resume={handle}")

    async def _receive(self, message: InboundMessage, portal: Portal) -> AuthnRequest:
        return await receive_authn_request(
            message, self.sp, self.replay, destination=self.idp(portal.base_url).sso_url
        )

    async def _handle(
        self, request: web.Request, portal: Portal, authn: AuthnRequest, received_at: float
    ) -> web.StreamResponse:
        signed_in = await portal.signed_in(request)
        # ForceAuthn: only a sign-in made after the request counts.
        if signed_in is not None and (
            not authn.force_authn or signed_in.session.authenticated_at >= received_at
        ):
            return await self._answer(request, portal, signed_in, authn)
        if authn.is_passive:
            SSO_REFUSALS.labels(reason="no_passive").inc()
            return await self._status(request, portal, authn, STATUS_NO_PASSIVE)
        try:
            handle = self.pending.park(authn, received_at)
        except PendingFull:
            return portal.refused(request, BUSY, reason="busy", status=503)
        raise portal.login_redirect(f"{self.path}?resume={handle}", force=authn.force_authn)

    async def _answer(
        self,
        request: web.Request,
        portal: Portal,
        signed_in: SignedIn,
        authn: AuthnRequest | None,
    ) -> web.StreamResponse:
        if not await self.directory.granted(self.name, signed_in.user):
            return portal.forbidden(request, signed_in, target=self.name, title=self.title)
        idp = self.idp(portal.base_url)
        principal = self.principal(signed_in)
        in_response_to = authn.id if authn else None

        def sign() -> bytes:
            with SAML_SIGN_SECONDS.time():
                return build_response(idp, self.sp, principal, in_response_to=in_response_to)

        xml = await anyio.to_thread.run_sync(sign)
        SAML_RESPONSES.labels(application=self.name).inc()
        audit.info(
            "saml response issued",
            application=self.name,
            user_id=signed_in.user.id,
            flow="sp-initiated" if authn else "idp-initiated",
            client=client_address(request),
        )
        return _post_page(self.sp.acs_url, xml, authn.relay_state if authn else None)

    async def _status(
        self, request: web.Request, portal: Portal, authn: AuthnRequest, sub_status: str
    ) -> web.StreamResponse:
        xml = build_status_response(
            self.idp(portal.base_url),
            self.sp,
            STATUS_RESPONDER,
            sub_status=sub_status,
            in_response_to=authn.id,
        )
        return _post_page(self.sp.acs_url, xml, authn.relay_state)

    async def metadata(self, request: web.Request) -> web.StreamResponse:
        """The IdP metadata for this application (current and next certificate)."""
        xml = idp_metadata(
            self.idp(request.app[PORTAL].base_url),
            want_authn_requests_signed=False,
            name_id_formats=(NAMEID_EMAIL,),
        )
        return web.Response(body=xml, content_type="application/samlmetadata+xml")

    async def certificate(self, request: web.Request) -> web.StreamResponse:
        """The signing certificate as PEM, line breaks kept, as AlexisHR's form wants it."""
        key, _ = self.keys.current()
        return web.Response(
            text=key.certificate_pem,
            content_type="application/x-pem-file",
            headers={
                "Content-Disposition": f'attachment; filename="{self.custom_value}-certificate.pem"'
            },
        )

    async def slo(self, request: web.Request) -> web.StreamResponse:
        """The sign-out URL: a LogoutRequest ends the IdP session it names; a plain visit
        offers to sign out of provisiond as well."""
        portal = request.app[PORTAL]
        form = await _form(request) if request.method == "POST" else {}
        has_message = "SAMLRequest" in (form if request.method == "POST" else request.query)
        if not has_message:
            signed_in = await portal.signed_in(request)
            return portal.render(
                request,
                "message.html",
                title=f"Signed out of {self.title}",
                message=f"You have signed out of {self.title}."
                + (" You are still signed in to this portal." if signed_in else ""),
                signed_in=signed_in,
                csrf=portal.csrf_token(signed_in.session.id) if signed_in else "",
            )
        try:
            message = (
                decode_post(form, max_bytes=MAX_REQUEST_BYTES)
                if request.method == "POST"
                else decode_redirect(request.rel_url.raw_query_string, max_bytes=MAX_REQUEST_BYTES)
            )
            logout = await receive_logout_request(
                message, self.sp, self.replay, destination=self.idp(portal.base_url).slo_url
            )
        except SamlRequestError as exc:
            return portal.refused(request, str(exc), reason="invalid_request")
        # Only sessions the request proves it knows: by SessionIndex (a secret
        # the SP got in our assertion), or this browser's own session for
        # that NameID. A bare NameID could be forged by anyone.
        ended = 0
        for index in logout.session_indexes:
            ended += await portal.sessions.delete_by_index(index)
        response = portal.render(
            request,
            "message.html",
            title="Signed out",
            message="You are signed out.",
            link=("/login", "Sign in again"),
        )
        signed_in = await portal.signed_in(request)
        if signed_in is not None and signed_in.user.email.casefold() == logout.name_id.casefold():
            await portal.end_session(request, response)
            ended += 1
        audit.info("saml logout", application=self.name, sessions_ended=ended)
        return response


async def _form(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}


def _post_page(acs_url: str, xml: bytes, relay_state: str | None) -> web.Response:
    form = post_form(acs_url, xml, relay_state=relay_state)
    return web.Response(
        text=form.html,
        content_type="text/html",
        headers={"Content-Security-Policy": form.content_security_policy},
    )


def sign_ons(targets: Mapping[str, Any], directory: Directory) -> list[AlexisHRSignOn]:
    """One :class:`AlexisHRSignOn` per AlexisHR target with SSO enabled."""
    out = []
    for name, target in targets.items():
        if getattr(target, "kind", None) != "alexishr":
            continue
        options = target.options
        if not isinstance(options, AlexisHROptions) or options.sso is None:
            continue
        if not options.sso.enabled:
            continue
        out.append(AlexisHRSignOn(name, options, directory, target.context))
    return out


@hookimpl
def provisiond_public_routes(
    targets: Mapping[str, Any], directory: Directory
) -> Sequence[web.AbstractRouteDef]:
    """The SAML routes of every AlexisHR target with ``sso`` enabled."""
    return [route for sign_on in sign_ons(targets, directory) for route in sign_on.routes()]
