"""The plugin contract: every hook provisiond calls, in one place.

A plugin is a module (or object) with functions named like the hooks below,
marked with :data:`hookimpl`, and announced under the ``provisiond``
entry-point group::

    [project.entry-points.provisiond]
    myapp = "myapp.provisiond_plugin"

The built-in ``file`` source and ``log`` target are registered exactly this
way; read :mod:`daemon.targets.log` as the reference target.

Hooks are for what is cross-cutting. What the core asks of one source or
target object is a method on its protocol instead, optional where marked
(:class:`daemon.sources.base.Source`, ``authenticate``;
:class:`daemon.targets.base.Target`, ``start``, ``release``, ``status``,
``periodic`` and ``sso_profile``), so no plugin has to filter for "is this
object mine?".

pluggy calls hooks synchronously. A hook documented as *may be async* can
return a value or an awaitable, and the core awaits it when it is awaitable
(see :func:`daemon.plugins.await_me_maybe`). All hooks are called with
keyword arguments; an implementation may accept only the ones it needs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from aiohttp import web

    from daemon.directory import Directory
    from daemon.report import CycleReport
    from daemon.sources.base import SourceType
    from daemon.targets.base import Target, TargetType

hookspec = pluggy.HookspecMarker("provisiond")
hookimpl = pluggy.HookimplMarker("provisiond")


@hookspec
def provisiond_source_types() -> Sequence[SourceType]:
    """Called once at start-up; return the directory source kinds this plugin offers.

    Not firstresult: the lists of all plugins are merged. Two plugins offering
    the same ``kind`` is a start-up error naming both.
    """
    raise NotImplementedError


@hookspec
def provisiond_target_types() -> Sequence[TargetType]:
    """Called once at start-up; return the target kinds this plugin offers.

    Not firstresult: the lists are merged, and a duplicate ``kind`` is a
    start-up error.
    """
    raise NotImplementedError


@hookspec
def provisiond_public_routes(
    targets: dict[str, Target], directory: Directory
) -> Sequence[web.AbstractRouteDef]:
    """Called once when the public listener is built; return aiohttp routes to add.

    ``targets`` maps configured target names to their objects, so a plugin can
    serve per-target pages (SSO, metadata); ``directory`` answers sign-in and
    authorisation questions. Not firstresult: all routes are added; a clash
    in path is a start-up error.
    """
    raise NotImplementedError


@hookspec
def provisiond_startup(targets: dict[str, Target]) -> Awaitable[None] | None:
    """Called after state is open and targets exist, before the first cycle; may be async."""


@hookspec
def provisiond_cycle_finished(report: CycleReport) -> Awaitable[None] | None:
    """Called after every cycle (successful or not) with its report; may be async.

    Exceptions are logged and otherwise ignored.
    """


@hookspec
def provisiond_shutdown() -> Awaitable[None] | None:
    """Called once while the daemon stops, after the last cycle; may be async."""


__all__: list[str] = [
    "hookimpl",
    "hookspec",
    "provisiond_cycle_finished",
    "provisiond_public_routes",
    "provisiond_shutdown",
    "provisiond_source_types",
    "provisiond_startup",
    "provisiond_target_types",
]
