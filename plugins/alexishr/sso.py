"""AlexisHR as a service provider of provisiond's SAML identity provider.

The SP profile: audience ``urn:auth0:alexishr:<connection>``, ACS
``https://auth.alexishr.com/login/callback?connection=<connection>`` (both from
:class:`~plugins.alexishr.options.AlexisHROptions`, sandbox variants and
overrides included), NameID emailAddress = the work email, and the attributes
``email``, ``firstName`` and ``lastName`` (the defaults of
:class:`~plugins.alexishr.options.AlexisHRSsoOptions`). The core's sign-on
endpoint (:mod:`daemon.saml.endpoint`) serves it at ``/saml2/<sso.path or
target name>``.
"""

from __future__ import annotations

from daemon.runtime import PluginContext
from daemon.saml.endpoint import SpProfile
from plugins.alexishr.options import AlexisHROptions


def title(options: AlexisHROptions) -> str:
    """What the portal calls AlexisHR."""
    return "AlexisHR (sandbox)" if options.sandbox else "AlexisHR"


def sso_profile(name: str, options: AlexisHROptions, context: PluginContext) -> SpProfile | None:
    """Target ``name``'s AlexisHR SP profile, or ``None`` when its ``sso`` is absent or off."""
    sso = options.sso
    if sso is None or not sso.enabled:
        return None
    return sso.profile(
        name, context, entity_id=options.audience, acs_url=options.acs_url, title=title(options)
    )
