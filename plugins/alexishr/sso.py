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

from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from daemon.directory import Directory
from daemon.hookspecs import hookimpl
from daemon.runtime import PluginContext
from daemon.saml.endpoint import SpProfile, sign_on_routes
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


def profiles(targets: Mapping[str, Any]) -> dict[str, SpProfile]:
    """Target name -> profile, for every AlexisHR target with ``sso`` enabled.

    A target that answers ``sso_profile()`` itself is left to the core's
    endpoint hook, so that no route is added twice.
    """
    out: dict[str, SpProfile] = {}
    for name, target in targets.items():
        if getattr(target, "kind", None) != "alexishr" or hasattr(target, "sso_profile"):
            continue
        options = target.options
        if isinstance(options, AlexisHROptions):
            profile = sso_profile(name, options, target.context)
            if profile is not None:
                out[name] = profile
    return out


@hookimpl
def provisiond_public_routes(
    targets: Mapping[str, Any], directory: Directory
) -> Sequence[web.AbstractRouteDef]:
    """The SAML routes of every AlexisHR target with ``sso`` enabled."""
    return sign_on_routes(profiles(targets), directory)
