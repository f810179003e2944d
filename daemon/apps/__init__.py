"""Application kinds built into the core, composed of its engines like any plugin.

``scim`` (:mod:`daemon.apps.scim`) is any SCIM 2.0 application, with its
SAML sign-on, described in configuration alone. A module here uses the
plugin contract and the engines below it (the layer of ``plugins``), never
the engine, the service or the CLI.
"""
