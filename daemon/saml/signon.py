"""What the core needs to know about a target that signs users in with SAML.

A target kind offers SAML sign-on when its options model has an ``sso`` block
shaped like :class:`SignOnBlock` and names the service provider it serves
(:class:`SignOnOptions`). ``provisiond saml info`` checks that shape, not the
plugin, so any application kind can have its IdP details printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

#: Every sign-on endpoint is served under this prefix on the public listener.
URL_PREFIX = "/saml2/"


@runtime_checkable
class SignOnBlock(Protocol):
    """A target's ``options.sso`` block."""

    @property
    def enabled(self) -> bool: ...

    @property
    def path(self) -> str | None:
        """The endpoint is ``/saml2/<path>``; ``None`` means the target's name."""

    @property
    def key_file(self) -> Path: ...

    @property
    def cert_file(self) -> Path: ...


@runtime_checkable
class SignOnOptions(Protocol):
    """A target's options that can carry an ``sso`` block."""

    @property
    def sso(self) -> SignOnBlock | None: ...

    @property
    def audience(self) -> str:
        """The SP's entity ID (the Audience of assertions)."""

    @property
    def acs_url(self) -> str:
        """The only URL a Response is posted to."""


def endpoint_path(block: SignOnBlock, target: str) -> str:
    """The path of ``target``'s sign-on endpoint on the public listener."""
    return f"{URL_PREFIX}{block.path or target}"
