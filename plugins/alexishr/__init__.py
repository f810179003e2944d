"""The AlexisHR plugin: SCIM 2.0 provisioning and the SAML 2.0 SP profile for AlexisHR."""
