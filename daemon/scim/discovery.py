"""What a SCIM service provider says it can do (RFC 7644 §4)."""

from __future__ import annotations

from dataclasses import dataclass, field

from scim2_models import ResourceType, Schema, ServiceProviderConfig


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The discovered features of a SCIM service provider.

    A feature the provider does not mention counts as unsupported, the safe
    reading for a client that must then fall back (PUT instead of PATCH, paged
    listing instead of filters).
    """

    patch: bool = False
    filter: bool = False
    #: Largest page the provider returns for a query, when it says.
    filter_max_results: int | None = None
    bulk: bool = False
    bulk_max_operations: int | None = None
    bulk_max_payload_size: int | None = None
    etag: bool = False
    sort: bool = False
    change_password: bool = False
    #: Resource type name (``"User"``) → endpoint path (``"/Users"``).
    endpoints: dict[str, str] = field(default_factory=dict)
    #: Base schema URN → endpoint path, which is how the client finds the endpoint
    #: of a scim2-models resource class.
    endpoints_by_schema: dict[str, str] = field(default_factory=dict)
    #: Schema extension URNs per resource type name.
    extensions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: URNs of every schema the provider published on ``/Schemas``.
    schemas: tuple[str, ...] = ()
    config: ServiceProviderConfig | None = None
    resource_types: tuple[ResourceType, ...] = ()
    schema_definitions: tuple[Schema, ...] = ()

    @classmethod
    def from_discovery(
        cls,
        config: ServiceProviderConfig,
        resource_types: list[ResourceType],
        schemas: list[Schema],
    ) -> Capabilities:
        """Summarise the three discovery documents."""
        endpoints: dict[str, str] = {}
        by_schema: dict[str, str] = {}
        extensions: dict[str, tuple[str, ...]] = {}
        for rtype in resource_types:
            if not rtype.name or not rtype.endpoint:
                continue
            endpoint = "/" + str(rtype.endpoint).lstrip("/")
            endpoints[str(rtype.name)] = endpoint
            if rtype.schema_:
                by_schema[str(rtype.schema_).casefold()] = endpoint
            extensions[str(rtype.name)] = tuple(
                str(ext.schema_) for ext in rtype.schema_extensions or () if ext.schema_
            )
        return cls(
            patch=bool(config.patch and config.patch.supported),
            filter=bool(config.filter and config.filter.supported),
            filter_max_results=config.filter.max_results if config.filter else None,
            bulk=bool(config.bulk and config.bulk.supported),
            bulk_max_operations=config.bulk.max_operations if config.bulk else None,
            bulk_max_payload_size=config.bulk.max_payload_size if config.bulk else None,
            etag=bool(config.etag and config.etag.supported),
            sort=bool(config.sort and config.sort.supported),
            change_password=bool(config.change_password and config.change_password.supported),
            endpoints=endpoints,
            endpoints_by_schema=by_schema,
            extensions=extensions,
            schemas=tuple(str(s.id) for s in schemas if s.id),
            config=config,
            resource_types=tuple(resource_types),
            schema_definitions=tuple(schemas),
        )
