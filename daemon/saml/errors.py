"""Errors raised by the SAML engine."""

from __future__ import annotations


class SamlError(Exception):
    """Base class of every SAML engine error."""


class SamlRequestError(SamlError):
    """An inbound SAML message was refused.

    The message is short, fixed text chosen by this package: it never echoes
    the input, so it is safe to show on an error page and to log.
    """


class SamlConfigError(SamlError):
    """The IdP or SP configuration (keys, certificates, URLs) is unusable."""
