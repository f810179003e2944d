"""The SAML sign-on endpoint: one application's IdP URLs on the public listener.

Any target that describes its service provider with an
:class:`~daemon.saml.profile.SpProfile` (see :class:`ProvidesSpProfile`)
gets these routes, ``<p>`` being ``profile.path``:

- ``GET /saml2/<p>``: IdP-initiated sign-in for the signed-in user (sign-in
  first when needed); with ``SAMLRequest``: an HTTP-Redirect AuthnRequest;
  with ``resume``: a parked request, after sign-in;
- ``POST /saml2/<p>``: an HTTP-POST AuthnRequest;
- ``GET /saml2/<p>/metadata`` and ``GET /saml2/<p>/certificate.pem``;
- ``GET|POST /saml2/<p>/slo``: the sign-out URL.

An SP-initiated request is validated before anyone is asked for a password,
then parked under a single-use handle, bound to the browser that brought it
(its browser cookie, see :meth:`~daemon.portal.site.Portal.browser`), while
the user signs in. Request IDs seen (replay protection) and parked requests
live in the core's state store, the one the
:class:`~daemon.directory.Directory` reads: every replica on a
shared store refuses a request another accepted, and takes up a sign-in
another parked. ForceAuthn asks for a sign-in made after the request;
IsPassive never shows a page and answers NoPassive instead.

An application that requires a second factor (``SpProfile.require_mfa``,
or ``http.public.require_mfa`` for all) gets no Response for a session
that has not passed one: the browser goes to ``/mfa`` and comes back (an
SP-initiated request parked again under a new handle). With ForceAuthn
both the password and the second factor must be newer than the request.
RelayState is
only ever handed back to the SP inside the POST form to its ACS; this module
never redirects to it, and IdP-initiated sign-in sends none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

import anyio.to_thread
import structlog
from aiohttp import web

from daemon.directory import Directory
from daemon.hookspecs import hookimpl
from daemon.portal.applications import Application, launches
from daemon.portal.metrics import (
    SAML_CERTIFICATE_EXPIRY,
    SAML_RESPONSES,
    SAML_SIGN_SECONDS,
    SSO_REFUSALS,
)
from daemon.portal.mfa.flow import challenge_url, needs_second_factor
from daemon.portal.pending import ParkedElsewhere, PendingFull, PendingRequests
from daemon.portal.site import PORTAL, Portal, SignedIn, client_address
from daemon.saml.bindings import InboundMessage, decode_post, decode_redirect, post_form
from daemon.saml.errors import SamlConfigError, SamlRequestError
from daemon.saml.keys import SigningKeys, load_certificate
from daemon.saml.metadata import idp_metadata
from daemon.saml.names import STATUS_NO_PASSIVE, STATUS_RESPONDER
from daemon.saml.parties import IdentityProvider, ServiceProvider
from daemon.saml.profile import SigningFiles, SpProfile
from daemon.saml.replay import StoreRequestIdStore
from daemon.saml.request import AuthnRequest, receive_authn_request
from daemon.saml.response import build_response, build_status_response
from daemon.saml.slo import receive_logout_request

__all__ = [
    "MAX_REQUEST_BYTES",
    "ProvidesSpProfile",
    "SignOnEndpoint",
    "SigningFiles",
    "SpProfile",
    "profiles_of",
    "provisiond_public_routes",
    "sign_on_routes",
]

audit = structlog.get_logger("provisiond.audit")

#: AuthnRequests and LogoutRequests are a few kilobytes; refuse far larger ones.
MAX_REQUEST_BYTES: Final = 64 * 1024
BUSY: Final = "Too many sign-ins are in progress. Try again in a minute."


class ProvidesSpProfile(Protocol):
    """A target that signs users in to its application over SAML.

    Optional on :class:`~daemon.targets.base.Target`: a target without
    ``sso_profile`` has no sign-on endpoint, and one returning ``None`` has
    it switched off (no ``sso`` block, or ``enabled: false``).
    """

    def sso_profile(self) -> SpProfile | None:
        """This target's SP profile, or ``None`` when it offers no single sign-on."""
        ...


def profiles_of(targets: Mapping[str, Any]) -> dict[str, SpProfile]:
    """Target name -> profile, for every target whose ``sso_profile()`` gives one."""
    out: dict[str, SpProfile] = {}
    for name, target in targets.items():
        method = getattr(target, "sso_profile", None)
        profile = method() if callable(method) else None
        if isinstance(profile, SpProfile):
            out[name] = profile
    return out


class SignOnEndpoint:
    """Single sign-on into the application of one target."""

    def __init__(self, target: str, profile: SpProfile, directory: Directory) -> None:
        self.target = target
        self.profile = profile
        self.directory = directory
        self.path = f"/saml2/{profile.path}"
        self.expired = (
            "This sign-in request has expired or was already used. "
            f"Start again from {profile.title}."
        )
        files = profile.signing
        try:
            self.keys = SigningKeys(
                files.key_file, files.cert_file, files.next_cert_file, secrets=profile.secrets
            )
            request_certs = (
                (load_certificate(profile.sp_cert_file),) if profile.sp_cert_file else ()
            )
            self.sp = ServiceProvider(
                entity_id=profile.entity_id,
                acs_url=profile.acs_url,
                name_id_format=profile.name_id_format,
                sign_assertion=profile.sign_assertion,
                sign_response=profile.sign_response,
                want_requests_signed=profile.want_requests_signed,
                request_certificates=request_certs,
            )
        except SamlConfigError as exc:
            raise SamlConfigError(f"target {target}: sso: {exc}") from None
        self.replay = StoreRequestIdStore(directory.store)
        #: AuthnRequests accepted before the user had a session.
        self.pending: PendingRequests[AuthnRequest] = PendingRequests(
            directory.store,
            f"saml {self.path}",
            encode=AuthnRequest.to_json,
            decode=AuthnRequest.from_json,
        )
        SAML_CERTIFICATE_EXPIRY.labels(application=target).set_function(
            lambda: self.keys.current()[0].seconds_until_expiry()
        )

    def idp(self, base_url: str) -> IdentityProvider:
        """This IdP as the application sees it; the entity ID is the IdP URL."""
        key, extra = self.keys.current()
        url = f"{base_url}{self.path}"
        return IdentityProvider(
            entity_id=url,
            sso_url=url,
            slo_url=f"{url}/slo",
            signing_key=key,
            extra_certificates=extra,
        )

    # -- routes --------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        """The URLs of this application; the GET of ``path`` is its launch link on the portal."""
        launch = launches(Application(target=self.target, title=self.profile.title, path=self.path))
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
                try:
                    parked = await self.pending.take(
                        request.query["resume"], binding=portal.browser_of(request)
                    )
                except ParkedElsewhere:
                    # Another browser's handle (sent a link, perhaps): left for that one.
                    return portal.refused(request, self.expired, reason="wrong_browser")
                if parked is None:
                    return portal.refused(request, self.expired, reason="expired")
                return await self._handle(request, portal, parked.value, parked.parked_at)
        except SamlRequestError as exc:
            return self._bad_request(request, portal, exc)
        # IdP-initiated: any RelayState in the query is ignored, never forwarded.
        signed_in = await portal.signed_in(request)
        if signed_in is None:
            raise portal.login_redirect(self.path)
        return await self._answer(request, portal, signed_in, None, None)

    async def sso_post(self, request: web.Request) -> web.StreamResponse:
        """An HTTP-POST AuthnRequest.

        The POST comes from the SP's site, so the browser does not send the
        SameSite=Lax session cookie with it: the request is validated and
        parked, and the browser continues with a same-site GET that does.
        """
        portal = request.app[PORTAL]
        browser, fresh = portal.browser(request)
        try:
            message = decode_post(await _form(request), max_bytes=MAX_REQUEST_BYTES)
            authn = await self._receive(message, portal)
            handle = await self.pending.park(authn, portal.clock(), binding=browser)
        except SamlRequestError as exc:
            return self._bad_request(request, portal, exc)
        except PendingFull:
            return portal.refused(request, BUSY, reason="busy", status=503)
        # The browser cookie may be new: a top-level navigation may set it, even cross-site.
        redirect = web.HTTPSeeOther(f"{self.path}?resume={handle}")
        if fresh:
            portal.keep_browser(redirect, browser)
        raise redirect

    def _bad_request(
        self, request: web.Request, portal: Portal, exc: SamlRequestError, *, logout: bool = False
    ) -> web.Response:
        """The page for a SAML message that was refused: plain words first, the cause after."""
        title = self.profile.title
        if logout:
            message = f"The sign-out request {title} sent could not be accepted."
            heading = f"{title} could not sign you out"
        else:
            message = (
                f"The request {title} sent could not be accepted, so you are not signed in. "
                f"Start again from {title}, or open it from your applications."
            )
            heading = f"{title} could not sign you in"
        return portal.refused(
            request, message, reason="invalid_request", title=heading, detail=str(exc)
        )

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
            return await self._answer(request, portal, signed_in, authn, received_at)
        if authn.is_passive:
            SSO_REFUSALS.labels(reason="no_passive").inc()
            return await self._status(request, portal, authn, STATUS_NO_PASSIVE)
        browser, fresh = portal.browser(request)
        try:
            handle = await self.pending.park(authn, received_at, binding=browser)
        except PendingFull:
            return portal.refused(request, BUSY, reason="busy", status=503)
        redirect = portal.login_redirect(f"{self.path}?resume={handle}", force=authn.force_authn)
        if fresh:
            portal.keep_browser(redirect, browser)
        raise redirect

    async def _answer(
        self,
        request: web.Request,
        portal: Portal,
        signed_in: SignedIn,
        authn: AuthnRequest | None,
        received_at: float | None,
    ) -> web.StreamResponse:
        """The Response for ``signed_in``, or the page that stands in the way of one.

        ``received_at`` is when an SP-initiated request arrived (``None`` for
        IdP-initiated sign-in).
        """
        title = self.profile.title
        if not await self.directory.granted(self.target, signed_in.user):
            return portal.forbidden(request, signed_in, target=self.target, title=title)
        if not self.profile.name_id(signed_in.user):
            return portal.refused(
                request,
                f"Your account has no {self.profile.name_id_field.replace('_', ' ')}, which "
                f"{title} needs to know who you are. Ask your administrator to add it.",
                reason="no_name_id",
                status=403,
            )
        session = signed_in.session
        if self.profile.require_mfa or portal.settings.require_mfa:
            since = received_at if authn is not None and authn.force_authn else None
            if needs_second_factor(session, since=since):
                return await self._second_factor(request, portal, authn, received_at)
        idp = self.idp(portal.base_url)
        principal = self.profile.principal(
            signed_in.user,
            session_index=session.session_index,
            authenticated_at=session.authenticated_at,
            second_factor_at=session.mfa_at,
        )
        in_response_to = authn.id if authn else None

        def sign() -> bytes:
            with SAML_SIGN_SECONDS.time():
                return build_response(idp, self.sp, principal, in_response_to=in_response_to)

        xml = await anyio.to_thread.run_sync(sign)
        SAML_RESPONSES.labels(application=self.target).inc()
        audit.info(
            "saml response issued",
            application=self.target,
            user_id=signed_in.user.id,
            flow="sp-initiated" if authn else "idp-initiated",
            mfa=principal.multi_factor,
            client=client_address(request),
        )
        return _post_page(self.sp.acs_url, xml, authn.relay_state if authn else None)

    async def _second_factor(
        self,
        request: web.Request,
        portal: Portal,
        authn: AuthnRequest | None,
        received_at: float | None,
    ) -> web.StreamResponse:
        """No Response yet: the browser passes a second factor on ``/mfa`` and comes back.

        An SP-initiated request is parked again (its handle was used up to get
        here) with the time it first arrived, so ForceAuthn still judges by it,
        and for the same browser.
        """
        if authn is None:
            raise web.HTTPSeeOther(challenge_url(self.path))
        if authn.is_passive:
            SSO_REFUSALS.labels(reason="no_passive").inc()
            return await self._status(request, portal, authn, STATUS_NO_PASSIVE)
        browser, fresh = portal.browser(request)
        try:
            handle = await self.pending.park(authn, received_at, binding=browser)
        except PendingFull:
            return portal.refused(request, BUSY, reason="busy", status=503)
        redirect = web.HTTPSeeOther(challenge_url(f"{self.path}?resume={handle}"))
        if fresh:
            portal.keep_browser(redirect, browser)
        raise redirect

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
            want_authn_requests_signed=self.profile.want_requests_signed,
            name_id_formats=(self.profile.name_id_format,),
        )
        return web.Response(body=xml, content_type="application/samlmetadata+xml")

    async def certificate(self, request: web.Request) -> web.StreamResponse:
        """The signing certificate as PEM, line breaks kept, for SPs that take a pasted one."""
        key, _ = self.keys.current()
        return web.Response(
            text=key.certificate_pem,
            content_type="application/x-pem-file",
            headers={
                "Content-Disposition": f'attachment; filename="{self.profile.path}-certificate.pem"'
            },
        )

    async def slo(self, request: web.Request) -> web.StreamResponse:
        """The sign-out URL: a LogoutRequest ends the IdP session it names; a plain visit
        offers to sign out of provisiond as well."""
        portal = request.app[PORTAL]
        title = self.profile.title
        form = await _form(request) if request.method == "POST" else {}
        has_message = "SAMLRequest" in (form if request.method == "POST" else request.query)
        if not has_message:
            signed_in = await portal.signed_in(request)
            return portal.render(
                request,
                "message.html",
                title=f"Signed out of {title}",
                message=f"You have signed out of {title}."
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
            return self._bad_request(request, portal, exc, logout=True)
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
        if signed_in is not None and self.profile.same_subject(signed_in.user, logout.name_id):
            await portal.end_session(request, response)
            ended += 1
        audit.info("saml logout", application=self.target, sessions_ended=ended)
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


def sign_on_routes(profiles: Mapping[str, SpProfile], directory: Directory) -> list[web.RouteDef]:
    """The routes of one :class:`SignOnEndpoint` per target name -> profile."""
    return [
        route
        for name, profile in profiles.items()
        for route in SignOnEndpoint(name, profile, directory).routes()
    ]


@hookimpl
def provisiond_public_routes(
    targets: Mapping[str, Any], directory: Directory
) -> Sequence[web.AbstractRouteDef]:
    """The sign-on routes of every target that gives an SP profile (``sso_profile()``)."""
    return sign_on_routes(profiles_of(targets), directory)
