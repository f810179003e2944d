"""Async SCIM 2.0 client: resources in and out as scim2-models objects.

Knows nothing about any particular service provider: attribute mapping,
matching and group policy belong to the plugin that uses it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

from pydantic import ValidationError
from scim2_models import (
    Context,
    ListResponse,
    PatchOp,
    PatchOperation,
    Resource,
    ResourceType,
    Schema,
    ScimPolicy,
    ServiceProviderConfig,
)

from .discovery import Capabilities
from .errors import ScimError, ScimInvalidResponseError
from .events import ScimObserver
from .ratelimit import AdaptiveRateLimiter, Sleep
from .retry import RetryPolicy
from .transport import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    ScimResponse,
    ScimTransport,
    Timeouts,
    TokenProvider,
)

R = TypeVar("R", bound=Resource[Any])

#: How responses are read by default: attributes and extensions the models do not
#: declare (a provider's own extension) are dropped instead of failing the call.
TOLERANT = ScimPolicy(unknown=ScimPolicy.Unknown.ignore)


def _validation_summary(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    shown = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errors[:3]
    )
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"the body breaks the SCIM schema: {shown}{more}"


class ScimClient:
    """A SCIM 2.0 service provider, seen from the client side.

    One pooled HTTP session per instance: use ``async with ScimClient(...)`` or
    call :meth:`aclose`. ``token`` is called before every attempt, so a token
    rotated in its secret file is used without a restart. ``ca_file`` adds a
    private CA; TLS verification is always on. Resource classes are scim2-models
    classes, extensions included (``User[EnterpriseUser]``); their endpoint comes
    from discovery when :meth:`discover` ran, else from the class name (``/Users``).
    """

    def __init__(
        self,
        base_url: str,
        token: TokenProvider,
        *,
        ca_file: str | Path | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_concurrency: int = 4,
        retry: RetryPolicy = DEFAULT_RETRY,
        rate_limiter: AdaptiveRateLimiter | None = None,
        observer: ScimObserver | None = None,
        response_policy: ScimPolicy = TOLERANT,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.transport = ScimTransport(
            base_url,
            token,
            ca_file=ca_file,
            timeouts=timeouts,
            max_concurrency=max_concurrency,
            retry=retry,
            rate_limiter=rate_limiter,
            observer=observer,
            sleep=sleep,
            wall_clock=wall_clock,
            rng=rng,
        )
        self.response_policy = response_policy
        #: Set by :meth:`discover`.
        self.capabilities: Capabilities | None = None

    @property
    def rate_limiter(self) -> AdaptiveRateLimiter:
        """The adaptive limiter pacing this client (read ``.rate`` for its current pace)."""
        return self.transport.limiter

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.transport.aclose()

    # -- parsing ---------------------------------------------------------------

    def _parse(self, model: type[Any], response: ScimResponse, context: Context) -> Any:
        data = response.json()
        if not isinstance(data, dict):
            raise ScimInvalidResponseError(
                f"expected a JSON object, got {type(data).__name__}",
                status=response.status,
                method=response.method,
                endpoint=response.endpoint,
            )
        try:
            return model.model_validate(data, scim_ctx=context, scim_policy=self.response_policy)
        except (ValidationError, ValueError, TypeError) as exc:
            detail = (
                _validation_summary(exc)
                if isinstance(exc, ValidationError)
                else f"the body breaks the SCIM schema: {exc}"
            )
            raise ScimInvalidResponseError(
                detail,
                status=response.status,
                method=response.method,
                endpoint=response.endpoint,
            ) from None

    # -- discovery -------------------------------------------------------------

    async def discover(self) -> Capabilities:
        """Read ``/ServiceProviderConfig``, ``/ResourceTypes`` and ``/Schemas``.

        The configuration is required; a provider that does not publish resource
        types or schemas (404/501, or a body that does not parse) yields empty
        lists there rather than failing, since only the configuration decides
        how the client behaves.
        """
        response = await self.transport.request("GET", "/ServiceProviderConfig")
        config: ServiceProviderConfig = self._parse(
            ServiceProviderConfig, response, Context.RESOURCE_QUERY_RESPONSE
        )
        resource_types: list[ResourceType] = await self._discovery_list(
            "/ResourceTypes", ResourceType
        )
        schemas: list[Schema] = await self._discovery_list("/Schemas", Schema)
        self.capabilities = Capabilities.from_discovery(config, resource_types, schemas)
        return self.capabilities

    async def _discovery_list(self, path: str, model: type[Any]) -> list[Any]:
        try:
            response = await self.transport.request("GET", path)
            data = response.json()
            # Some providers answer a bare JSON array instead of a ListResponse.
            items = data if isinstance(data, list) else data.get("Resources", [])
            return [
                model.model_validate(
                    item, scim_ctx=Context.RESOURCE_QUERY_RESPONSE, scim_policy=self.response_policy
                )
                for item in items
            ]
        except (ScimError, ValidationError, AttributeError, TypeError, ValueError) as exc:
            if isinstance(exc, ScimError) and exc.transient:
                raise
            return []

    # -- endpoints -------------------------------------------------------------

    def endpoint_for(self, resource_type: type[Resource[Any]]) -> str:
        """The endpoint path of a resource class (``"/Users"``)."""
        schema = str(getattr(resource_type, "__schema__", "") or "").casefold()
        if self.capabilities is not None and schema in self.capabilities.endpoints_by_schema:
            return self.capabilities.endpoints_by_schema[schema]
        return "/" + str(ResourceType.from_resource(resource_type).endpoint).lstrip("/")

    def _item_path(self, resource_type: type[Resource[Any]], resource_id: str) -> str:
        if not resource_id:
            raise ValueError("a SCIM resource id must not be empty")
        # The id comes from the server; escaping keeps "../x" or "a?b" inside one segment.
        return f"{self.endpoint_for(resource_type)}/{quote(resource_id, safe='')}"

    # -- operations ------------------------------------------------------------

    async def get(self, resource_type: type[R], resource_id: str) -> R:
        """``GET /<endpoint>/<id>``; :class:`ScimNotFoundError` when it is gone."""
        response = await self.transport.request("GET", self._item_path(resource_type, resource_id))
        result: R = self._parse(resource_type, response, Context.RESOURCE_QUERY_RESPONSE)
        return result

    async def query(
        self,
        resource_type: type[R],
        *,
        filter: str | None = None,
        start_index: int = 1,
        count: int | None = None,
    ) -> ListResponse[R]:
        """One page of ``GET /<endpoint>?filter=...&startIndex=...&count=...``.

        Build ``filter`` with :func:`daemon.scim.filters.eq_filter` so values are
        escaped.
        """
        params: dict[str, str] = {"startIndex": str(max(start_index, 1))}
        if filter is not None:
            params["filter"] = filter
        if count is not None:
            params["count"] = str(max(count, 0))
        response = await self.transport.request(
            "GET", self.endpoint_for(resource_type), params=params
        )
        page: ListResponse[R] = self._parse(
            ListResponse[resource_type],  # type: ignore[valid-type]
            response,
            Context.RESOURCE_QUERY_RESPONSE,
        )
        return page

    async def find(self, resource_type: type[R], filter: str, *, limit: int = 2) -> list[R]:
        """Resources matching ``filter``, at most ``limit`` (2 lets a caller detect ambiguity)."""
        page = await self.query(resource_type, filter=filter, count=limit)
        return list(page.resources or [])[:limit]

    async def iter_resources(
        self,
        resource_type: type[R],
        *,
        filter: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[R]:
        """Every resource (matching ``filter``), fetched page by page with startIndex/count.

        The page size is capped by the provider's ``filter.maxResults`` when
        discovery saw one. Stops on an empty page or once ``totalResults`` are
        read, so a provider that ignores paging cannot loop it forever.
        """
        size = max(page_size, 1)
        if self.capabilities is not None and self.capabilities.filter_max_results:
            size = min(size, self.capabilities.filter_max_results)
        start = 1
        pages = 0
        while True:
            page = await self.query(resource_type, filter=filter, start_index=start, count=size)
            items = list(page.resources or [])
            for item in items:
                yield item
            pages += 1
            total = page.total_results or 0
            start += len(items)
            # A provider that ignores startIndex would return the same page again.
            if not items or start > total or pages > total:
                return

    async def create(self, resource: R) -> R:
        """``POST /<endpoint>``; returns the created resource (with its ``id``).

        A 409 raises :class:`ScimConflictError`: the caller decides to adopt. A
        POST retried after a lost answer may meet its own earlier success as 409.
        """
        body = resource.model_dump(scim_ctx=Context.RESOURCE_CREATION_REQUEST)
        response = await self.transport.request(
            "POST", self.endpoint_for(type(resource)), body=body
        )
        created: R = self._parse(type(resource), response, Context.RESOURCE_CREATION_RESPONSE)
        return created

    async def create_json(
        self, resource_type: type[Resource[Any]], body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``POST /<endpoint>`` with SCIM JSON the caller built and checked; returns the
        created resource as JSON, with a non-empty string ``id``.

        The bulk-provisioning path: building, dumping and re-reading scim2-models
        objects costs more CPU per user than the HTTP exchange itself. Conflicts are
        :class:`ScimConflictError` as with :meth:`create`; an answer that is not a
        JSON object with an ``id`` is :class:`ScimInvalidResponseError`.
        """
        response = await self.transport.request("POST", self.endpoint_for(resource_type), body=body)
        data = response.json()
        resource_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(resource_id, str) or not resource_id:
            raise ScimInvalidResponseError(
                "the created resource has no id (expected a JSON object with a string id)",
                status=response.status,
                method=response.method,
                endpoint=response.endpoint,
            )
        created: dict[str, Any] = data
        return created

    async def replace(self, resource: R) -> R:
        """``PUT /<endpoint>/<resource.id>`` with the full resource (when PATCH is unsupported)."""
        if not resource.id:
            raise ValueError("replace() needs a resource with its id")
        body = resource.model_dump(scim_ctx=Context.RESOURCE_REPLACEMENT_REQUEST)
        response = await self.transport.request(
            "PUT", self._item_path(type(resource), resource.id), body=body
        )
        replaced: R = self._parse(type(resource), response, Context.RESOURCE_REPLACEMENT_RESPONSE)
        return replaced

    async def patch(
        self,
        resource_type: type[R],
        resource_id: str,
        operations: Sequence[PatchOperation[Any] | Mapping[str, Any]],
    ) -> R | None:
        """``PATCH /<endpoint>/<id>`` with ``operations`` (see :func:`diff_operations`).

        Operations are validated against ``resource_type`` before sending (paths
        must exist, read-only attributes are refused: :class:`ValueError`).
        Returns the patched resource, or ``None`` when the provider answers 204.
        """
        if not operations:
            raise ValueError("patch() needs at least one operation")
        raw = [
            op.model_dump(scim_ctx=Context.RESOURCE_PATCH_REQUEST)
            if isinstance(op, PatchOperation)
            else dict(op)
            for op in operations
        ]
        message = PatchOp[resource_type].model_validate(  # type: ignore[valid-type]
            {"schemas": [PatchOp.__schema__], "Operations": raw},
            scim_ctx=Context.RESOURCE_PATCH_REQUEST,
        )
        body = message.model_dump(scim_ctx=Context.RESOURCE_PATCH_REQUEST)
        response = await self.transport.request(
            "PATCH", self._item_path(resource_type, resource_id), body=body
        )
        if response.status == 204 or not response.body.strip():
            return None
        patched: R = self._parse(resource_type, response, Context.RESOURCE_PATCH_RESPONSE)
        return patched

    async def delete(self, resource_type: type[Resource[Any]], resource_id: str) -> None:
        """``DELETE /<endpoint>/<id>``; :class:`ScimNotFoundError` when already gone."""
        await self.transport.request("DELETE", self._item_path(resource_type, resource_id))
