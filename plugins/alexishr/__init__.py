"""The AlexisHR plugin: SCIM 2.0 provisioning and the SAML 2.0 SP profile for AlexisHR."""

from plugins.alexishr.sso import provisiond_public_routes
from plugins.alexishr.target import (
    provisiond_cycle_finished,
    provisiond_objects_released,
    provisiond_target_status,
    provisiond_target_types,
)

__all__ = [
    "provisiond_cycle_finished",
    "provisiond_objects_released",
    "provisiond_public_routes",
    "provisiond_target_status",
    "provisiond_target_types",
]
