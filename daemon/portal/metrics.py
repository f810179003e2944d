"""Metrics of sign-in and single sign-on, on the core registry.

Label values are fixed words and target names, never user data.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from daemon.metrics import REGISTRY

LOGINS = Counter(
    "provisiond_logins",
    "Portal sign-in attempts, by result: success, failure, throttled.",
    ["result"],
    registry=REGISTRY,
)
SAML_RESPONSES = Counter(
    "provisiond_saml_responses",
    "Signed SAML Responses issued, by application (target name).",
    ["application"],
    registry=REGISTRY,
)
SSO_REFUSALS = Counter(
    "provisiond_sso_refusals",
    "Refused sign-in or SSO requests, by reason: invalid_request, not_granted, csrf, "
    "expired, busy, no_passive, no_name_id, unavailable (the state store cannot be reached), "
    "too_long and malformed (the HTTP request could not be read).",
    ["reason"],
    registry=REGISTRY,
)
# Signing an assertion and a response with RSA-2048 takes a few milliseconds.
SAML_SIGN_SECONDS = Histogram(
    "provisiond_saml_sign_seconds",
    "Time to build and sign one SAML Response.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
SAML_CERTIFICATE_EXPIRY = Gauge(
    "provisiond_saml_certificate_expiry_seconds",
    "Seconds until the application's active SAML signing certificate expires.",
    ["application"],
    registry=REGISTRY,
)
MFA_RESULTS = Counter(
    "provisiond_mfa",
    "Second-factor events, by factor (totp, passkey, recovery) and result: success, failure, "
    "replayed, throttled, enrolled, removed, reset.",
    ["factor", "result"],
    registry=REGISTRY,
)
