"""SAML 2.0 and XML-DSig names: namespaces, bindings, formats, statuses."""

from __future__ import annotations

from typing import Final

NS_SAML: Final = "urn:oasis:names:tc:SAML:2.0:assertion"
NS_SAMLP: Final = "urn:oasis:names:tc:SAML:2.0:protocol"
NS_MD: Final = "urn:oasis:names:tc:SAML:2.0:metadata"
NS_DS: Final = "http://www.w3.org/2000/09/xmldsig#"
NS_XSI: Final = "http://www.w3.org/2001/XMLSchema-instance"
NS_XS: Final = "http://www.w3.org/2001/XMLSchema"

BINDING_HTTP_POST: Final = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
BINDING_HTTP_REDIRECT: Final = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"

NAMEID_EMAIL: Final = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
NAMEID_UNSPECIFIED: Final = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
NAMEID_PERSISTENT: Final = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
NAMEID_TRANSIENT: Final = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"

ATTRNAME_BASIC: Final = "urn:oasis:names:tc:SAML:2.0:attrname-format:basic"
ATTRNAME_UNSPECIFIED: Final = "urn:oasis:names:tc:SAML:2.0:attrname-format:unspecified"
ATTRNAME_URI: Final = "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"

# A URN, not a password (ruff's S105 keys on the name).
AUTHN_PASSWORD_PROTECTED_TRANSPORT: Final = (
    "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"  # noqa: S105
)
#: The REFEDS Multi-Factor Authentication profile: the user passed a second
#: factor besides the password (https://refeds.org/profile/mfa). SAML's own
#: classes name one particular combination each; this one says "MFA" as
#: service providers check for it.
AUTHN_REFEDS_MFA: Final = "https://refeds.org/profile/mfa"
CONFIRMATION_BEARER: Final = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
ENTITY_FORMAT: Final = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity"

STATUS_SUCCESS: Final = "urn:oasis:names:tc:SAML:2.0:status:Success"
STATUS_REQUESTER: Final = "urn:oasis:names:tc:SAML:2.0:status:Requester"
STATUS_RESPONDER: Final = "urn:oasis:names:tc:SAML:2.0:status:Responder"
STATUS_REQUEST_DENIED: Final = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"
STATUS_AUTHN_FAILED: Final = "urn:oasis:names:tc:SAML:2.0:status:AuthnFailed"
STATUS_NO_PASSIVE: Final = "urn:oasis:names:tc:SAML:2.0:status:NoPassive"

SIG_RSA_SHA256: Final = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
