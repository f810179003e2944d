"""The AlexisHR plugin: SCIM 2.0 provisioning and the SAML 2.0 SP profile for AlexisHR."""

from plugins.alexishr.sso import provisiond_public_routes

__all__ = ["provisiond_public_routes"]
