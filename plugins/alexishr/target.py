"""The ``alexishr`` target: the core's SCIM target with AlexisHR's profile and mapping."""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel

from daemon.hookspecs import hookimpl
from daemon.runtime import PluginContext
from daemon.saml.profile import SpProfile
from daemon.scim import RetryPolicy
from daemon.targets.base import TargetType
from daemon.targets.scim import metrics
from daemon.targets.scim.profile import ScimProfile
from daemon.targets.scim.target import ScimTarget
from plugins.alexishr.mapping import UserSchema
from plugins.alexishr.options import AlexisHROptions
from plugins.alexishr.sso import sso_profile

ACCESS_REVOKED = (
    "AlexisHR refused the access token: it was revoked, or the AlexisHR user who created it "
    "lost the rights it needs. Create a new token (Settings -> Access tokens) and write it to "
    "the token file; provisiond picks it up without a restart"
)

PROFILE = ScimProfile(
    app="AlexisHR",
    kind="alexishr",
    metric_prefix="alexishr",
    access_revoked=ACCESS_REVOKED,
    discovery_hint=(
        "Check options.scim.base_url: AlexisHR's SCIM path is not published, the default "
        "is a guess"
    ),
    # provisiond 0.1 kept each AlexisHR target's links in a file of its own.
    legacy_state_file="alexishr-{name}.db",
)
# Registered with the plugin, so /metrics lists the families before a target exists.
metrics.for_prefix(PROFILE.metric_prefix, PROFILE.app)


class AlexisHRTarget(ScimTarget):
    """Provisions one AlexisHR tenant over SCIM, and is its SAML IdP when ``sso`` is on."""

    def __init__(
        self,
        name: str,
        options: AlexisHROptions,
        context: PluginContext,
        *,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
    ) -> None:
        scim = options.scim
        schema = UserSchema(
            phone_region=scim.phone_region,
            extra_mappings=scim.extra_mappings,
            alexis_extension=scim.alexis_extension,
        )
        super().__init__(
            name,
            scim,
            context,
            profile=PROFILE,
            schema=schema,
            base_url=options.scim_url,
            clock=clock,
            retry=retry,
        )
        self.options = options

    def sso_profile(self) -> SpProfile | None:
        return sso_profile(self.name, self.options, self.context)


def _create(name: str, options: BaseModel, context: PluginContext) -> AlexisHRTarget:
    assert isinstance(options, AlexisHROptions)
    return AlexisHRTarget(name, options, context)


@hookimpl
def provisiond_target_types() -> list[TargetType]:
    return [
        TargetType(
            kind="alexishr",
            options=AlexisHROptions,
            create=_create,
            description="AlexisHR: SCIM 2.0 provisioning of users and groups (and SAML SSO)",
        )
    ]
