"""Finding plugins, calling their hooks, and the registry of source and target kinds."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pluggy

from daemon import hookspecs
from daemon.sources.base import SourceType
from daemon.targets.base import TargetType

T = TypeVar("T")

ENTRY_POINT_GROUP = "provisiond"

# Registered by module path when provisiond runs from a source tree that was
# not installed (so its entry points are unknown). Installed, they come
# through the entry-point group like any third-party plugin.
BUILTIN_PLUGINS = {
    "file": "daemon.sources.file",
    "ldap": "daemon.sources.ldap",
    "jumpcloud": "daemon.sources.jumpcloud",
    "log": "daemon.targets.log",
    "saml": "daemon.saml.endpoint",
    "scim": "daemon.apps.scim",
    "alexishr": "plugins.alexishr",
}


class PluginError(Exception):
    """Plugins disagree (two offer the same kind) or one is broken."""


async def await_me_maybe(value: T | Awaitable[T]) -> T:
    """Await ``value`` if it is awaitable, else return it (Datasette's helper)."""
    if inspect.isawaitable(value):
        return await value
    return value


def plugin_manager(*, entry_points: bool = True, extra: Sequence[Any] = ()) -> pluggy.PluginManager:
    """A plugin manager with the built-ins, installed plugins and ``extra`` registered."""
    pm = pluggy.PluginManager("provisiond")
    pm.add_hookspecs(hookspecs)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for name, module in BUILTIN_PLUGINS.items():
        if pm.get_plugin(name) is None:
            pm.register(importlib.import_module(module), name=name)
    for plugin in extra:
        pm.register(plugin)
    return pm


@dataclass(frozen=True)
class Registry:
    """The source and target kinds all plugins offer, by kind."""

    sources: dict[str, SourceType]
    targets: dict[str, TargetType]

    @classmethod
    def collect(cls, pm: pluggy.PluginManager) -> Registry:
        return cls(
            sources=_merge(pm, "provisiond_source_types", "source"),
            targets=_merge(pm, "provisiond_target_types", "target"),
        )


def _merge(pm: pluggy.PluginManager, hook_name: str, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    owner: dict[str, str] = {}
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
        for item in impl.function() or ():
            if item.kind in out:
                raise PluginError(
                    f"{what} kind {item.kind!r} is offered by both plugin "
                    f"{owner[item.kind]!r} and plugin {plugin_name!r}; uninstall one"
                )
            out[item.kind] = item
            owner[item.kind] = plugin_name
    return out
