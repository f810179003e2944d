"""The generic SCIM 2.0 target engine: what any SCIM application needs, profiles aside."""
