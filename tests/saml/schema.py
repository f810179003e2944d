"""Validating the engine's XML against the OASIS SAML 2.0 schemas kept in ./schemas."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from lxml import etree

SCHEMAS = Path(__file__).parent / "schemas"


class _LocalSchemas(etree.Resolver):
    """Serve imported schemas from ./schemas: the tests never touch the network."""

    def resolve(self, system_url, public_id, context):  # type: ignore[no-untyped-def]
        name = (system_url or "").rsplit("/", 1)[-1]
        local = SCHEMAS / name
        if local.is_file():
            return self.resolve_filename(str(local), context)
        raise AssertionError(f"schema import not available locally: {system_url}")


@cache
def schema(name: str) -> etree.XMLSchema:
    # Trusted local files: the W3C schemas need their internal DTD entities.
    parser = etree.XMLParser(no_network=True, load_dtd=False)
    parser.resolvers.add(_LocalSchemas())
    return etree.XMLSchema(etree.parse(str(SCHEMAS / name), parser))


def assert_valid(xml: bytes, name: str) -> None:
    """Fail with the schema's error log unless ``xml`` validates against ``name``."""
    xsd = schema(name)
    document = etree.fromstring(xml)
    assert xsd.validate(document), str(xsd.error_log)
