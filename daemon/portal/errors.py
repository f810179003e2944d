"""Errors of the portal's configuration, in a module of their own so that every part of
the portal (the site, the second-factor package) can raise them without importing the other."""

from __future__ import annotations


class PortalConfigError(Exception):
    """``http.public`` cannot be served safely as configured; the message says why."""
