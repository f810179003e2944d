"""The IdP's SAML metadata for one application."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from lxml import etree

from daemon.saml.keys import certificate_base64
from daemon.saml.names import (
    BINDING_HTTP_POST,
    BINDING_HTTP_REDIRECT,
    NAMEID_EMAIL,
    NS_DS,
    NS_MD,
    NS_SAMLP,
)
from daemon.saml.parties import IdentityProvider
from daemon.saml.timefmt import format_instant

_MD = f"{{{NS_MD}}}"
_DS = f"{{{NS_DS}}}"


def idp_metadata(
    idp: IdentityProvider,
    *,
    want_authn_requests_signed: bool = False,
    name_id_formats: Sequence[str] = (NAMEID_EMAIL,),
    valid_until: datetime | None = None,
) -> bytes:
    """EntityDescriptor with one IDPSSODescriptor, serialized.

    Every certificate in ``idp.published_certificates`` gets its own
    ``KeyDescriptor use="signing"``: publishing the next certificate before
    switching keys lets SPs that refresh metadata follow a rotation without
    a failed sign-in. Metadata is not signed; SPs fetch it over HTTPS or
    have it pasted in by an admin.
    """
    root = etree.Element(f"{_MD}EntityDescriptor", nsmap={"md": NS_MD, "ds": NS_DS})
    root.set("entityID", idp.entity_id)
    if valid_until is not None:
        root.set("validUntil", format_instant(valid_until))
    descriptor = etree.SubElement(
        root,
        f"{_MD}IDPSSODescriptor",
        protocolSupportEnumeration=NS_SAMLP,
        WantAuthnRequestsSigned="true" if want_authn_requests_signed else "false",
    )
    for cert in idp.published_certificates:
        key_descriptor = etree.SubElement(descriptor, f"{_MD}KeyDescriptor", use="signing")
        key_info = etree.SubElement(key_descriptor, f"{_DS}KeyInfo")
        x509_data = etree.SubElement(key_info, f"{_DS}X509Data")
        etree.SubElement(x509_data, f"{_DS}X509Certificate").text = certificate_base64(cert)
    for binding in (BINDING_HTTP_REDIRECT, BINDING_HTTP_POST):
        etree.SubElement(
            descriptor, f"{_MD}SingleLogoutService", Binding=binding, Location=idp.slo_url
        )
    for name_id_format in name_id_formats:
        etree.SubElement(descriptor, f"{_MD}NameIDFormat").text = name_id_format
    for binding in (BINDING_HTTP_REDIRECT, BINDING_HTTP_POST):
        etree.SubElement(
            descriptor, f"{_MD}SingleSignOnService", Binding=binding, Location=idp.sso_url
        )
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
