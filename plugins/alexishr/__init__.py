"""The AlexisHR plugin: AlexisHR's SCIM profile and mapping, and its SAML SP profile.

The engines are the core's (:mod:`daemon.targets.scim`, :mod:`daemon.saml.endpoint`);
this plugin holds only what is AlexisHR's own.
"""

from plugins.alexishr.target import provisiond_target_types

__all__ = ["provisiond_target_types"]
