"""A reusable SAML 2.0 identity-provider engine.

Nothing here knows about a particular service provider: an application
plugin describes its SP with :class:`~daemon.saml.parties.ServiceProvider`
and drives the flow through these modules, in the order a login takes:

- :mod:`daemon.saml.bindings` decodes an inbound message and builds the
  HTTP-POST form that carries the answer;
- :mod:`daemon.saml.request` validates an AuthnRequest against the SP;
- :mod:`daemon.saml.response` builds and signs the Response;
- :mod:`daemon.saml.metadata` publishes the IdP's metadata;
- :mod:`daemon.saml.slo` answers a LogoutRequest;
- :mod:`daemon.saml.keys` makes and loads the signing key and certificate;
- :mod:`daemon.saml.safexml` parses untrusted XML.
"""
