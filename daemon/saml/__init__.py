"""A reusable SAML 2.0 identity-provider engine, and the sign-on endpoint built on it.

Nothing here knows about a particular service provider. An application
describes its SP with an :class:`~daemon.saml.profile.SpProfile` (built from
its ``sso`` block, :mod:`daemon.saml.options`), and
:mod:`daemon.saml.endpoint` serves it on the public listener. The endpoint
drives the flow through these modules, in the order a login takes:

- :mod:`daemon.saml.bindings` decodes an inbound message and builds the
  HTTP-POST form that carries the answer;
- :mod:`daemon.saml.request` validates an AuthnRequest against the SP;
- :mod:`daemon.saml.response` builds and signs the Response;
- :mod:`daemon.saml.metadata` publishes the IdP's metadata;
- :mod:`daemon.saml.slo` answers a LogoutRequest;
- :mod:`daemon.saml.keys` makes and loads the signing key and certificate,
  and follows their rotation;
- :mod:`daemon.saml.safexml` parses untrusted XML.
"""
