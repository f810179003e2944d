"""Parsing XML that came from the network.

SAML messages arrive from anyone who can reach the SSO URL, so the parser
refuses everything XML can do beyond plain elements: no DTD (and so no
entity, internal or external), no network, no file access, no huge trees.
The size is checked before libxml2 sees a byte.
"""

from __future__ import annotations

from typing import Final

from lxml import etree

from daemon.saml.errors import SamlRequestError

#: Largest XML document accepted. An AuthnRequest or LogoutRequest is a few
#: kilobytes even when signed; 256 KiB leaves room and bounds the work.
MAX_XML_BYTES: Final = 256 * 1024

_PARSER: Final = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
    collect_ids=False,
)


def parse_untrusted(data: bytes, *, max_bytes: int = MAX_XML_BYTES) -> etree._Element:
    """Parse ``data`` into its root element, or raise :class:`SamlRequestError`.

    Refused: more than ``max_bytes`` bytes, malformed XML, any DOCTYPE
    (which is how entity expansion and XXE get in), and entity references
    left in the tree.
    """
    if len(data) > max_bytes:
        raise SamlRequestError("SAML message is too large")
    # Cheap early refusal; the docinfo check below is the authoritative one.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise SamlRequestError("SAML message contains a DTD, which is not allowed")
    try:
        root = etree.fromstring(data, parser=_PARSER)
    except etree.XMLSyntaxError:
        raise SamlRequestError("SAML message is not well-formed XML") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise SamlRequestError("SAML message contains a DTD, which is not allowed")
    for _ in root.iter(etree.Entity):
        raise SamlRequestError("SAML message contains an entity reference, which is not allowed")
    return root
