"""A scim2-server holding the resources another one served, with their original ids.

scim2-server keeps its data in memory and has no option to start with data
(its ``--dump-resources`` only writes them out on exit). Its storage does take
resources, ids, ``meta`` and all (``InMemoryStorage.resources``), so this
builds the same application as the ``scim2-server`` command (default schemas,
resource types and configuration, no authentication) around a storage filled
from a dump: the resources as the server returned them (``GET /Users``,
``GET /Groups``). It runs in this process, in a thread, on a free port of
127.0.0.1, and stops when the block ends.

What a server returns is what it stores plus its URLs: ``meta.location``, and
references (``$ref``) it turned into URLs. :func:`stored_form` undoes exactly
that, so the loaded server answers with the dump again (modulo its address),
which the tests check rather than assume.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from scim2_models import Resource, ScimProvider
from scim2_server.applications.wsgi import ForwardedHeaders
from scim2_server.memory import InMemoryStorage
from scim2_server.service import ScimService
from scim2_server.testserver.application import BearerTokenApplication
from scim2_server.testserver.cli import ThreadingWSGIServer
from scim2_server.utils import (
    load_default_resource_types,
    load_default_schemas,
    load_default_service_provider_config,
)

RESOURCES = ("Users", "Groups")


@dataclass(frozen=True)
class LoadedServer:
    """A running scim2-server: ``url`` is its SCIM base URL (no trailing slash)."""

    url: str
    storage: InMemoryStorage


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


def stored_form(resource: dict[str, Any], base_url: str) -> dict[str, Any]:
    """``resource`` as the server that returned it from ``base_url`` had stored it."""
    data = copy.deepcopy(resource)
    data.get("meta", {}).pop("location", None)
    prefix = re.compile(rf"^{re.escape(base_url.rstrip('/'))}(/v2)?/")
    for member in data.get("members") or ():
        if isinstance(member.get("$ref"), str):
            member["$ref"] = prefix.sub("", member["$ref"])
    return data


def _version(resource: Resource[Any]) -> int:
    version = resource.meta.version if resource.meta else None
    found = re.search(r"\d+", version or "")
    return int(found.group()) if found else 0


@contextlib.contextmanager
def running_loaded_scim_server(dump: dict[str, Any]) -> Iterator[LoadedServer]:
    """Serve ``dump`` (``base_url``, ``Users`` and ``Groups`` lists) until the block ends."""
    provider = ScimProvider.from_discovery(
        load_default_schemas().values(),
        load_default_resource_types().values(),
        config=load_default_service_provider_config(),
    )
    service = ScimService(provider, secret=secrets.token_urlsafe(32))
    loaded: list[Resource[Any]] = []
    for name in RESOURCES:
        for resource in dump[name]:
            data = stored_form(resource, dump["base_url"])
            model = service.get_model(service.get_resource_type(data["meta"]["resourceType"]))
            loaded.append(model.model_validate(data))
    storage = InMemoryStorage()
    storage.resources = loaded
    # Writes after the load get versions the dump has not used.
    storage.versions = itertools.count(max(map(_version, loaded), default=0) + 1)
    app = ForwardedHeaders(BearerTokenApplication(storage, provider, service=service))
    server = make_server(
        "127.0.0.1", 0, app, server_class=ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="scim2-server", daemon=True)
    thread.start()
    try:
        yield LoadedServer(f"http://127.0.0.1:{server.server_port}", storage)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
