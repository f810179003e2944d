"""The ``jumpcloud`` directory source: JumpCloud's REST API (v1 users, v2 user groups).

Reads ``GET /api/systemusers`` (v1, ``limit``/``skip`` paging, at most 100 a
page), ``GET /api/v2/usergroups`` and ``GET /api/v2/usergroups/{id}/members``
(v2, same paging) with the ``x-api-key`` header (and ``x-org-id`` for a
multi-tenant administrator).

Changes between polls: :meth:`JumpCloudSource.watch` polls the Directory
Insights events API every ``events_interval`` seconds (a short request that
is empty when nothing happened; see :mod:`daemon.sources.jumpcloud.events`)
and announces the users and groups the new events name. The next ``fetch``
then re-reads only those objects (``GET /api/systemusers/{id}``,
``GET /api/v2/usergroups/{id}`` and its members) into the last snapshot and
says so in ``Snapshot.base`` and ``Snapshot.changed``. It reads everything
instead when it has no snapshot yet, when the watch is not running or its
feed is refused (401/403: the key may not read Directory Insights) or late,
after a flood or an event it cannot map, when more than
``events_max_changes`` objects changed at once, and at least every
``full_read_after`` seconds (events JumpCloud does not log are found then).

Account state: ``suspended: true`` or ``state: SUSPENDED`` is suspended.
``state: STAGED`` (an account created ahead of its activation, typically a
hire before the first day) is provisioned as *suspended*: the target learns
the person exists but the account cannot be used until JumpCloud activates
it. An unknown ``state`` is also treated as suspended, the safe side.
``account_locked`` (a temporary lock after failed logins) is not a suspension.

Bad input: a user without ``_id``, ``username`` or a valid ``email`` is a
:class:`SkippedRecord`; an optional field of the wrong type is left empty; a
response of the wrong shape, a refused key (401/403) or an API that stays
down raises :class:`SourceError`, whose text never holds the API key. An
event for an object that is gone (404) removes it; a malformed events answer
is logged and the feed is asked again later.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from daemon.hookspecs import hookimpl
from daemon.runtime import PluginContext
from daemon.sources.base import Source, SourceType
from daemon.sources.jumpcloud.records import user_from_record
from daemon.sources.jumpcloud.settings import DEFAULT_BASE_URL, JumpCloudOptions
from daemon.sources.jumpcloud.source import JumpCloudSource

__all__ = [
    "DEFAULT_BASE_URL",
    "JumpCloudOptions",
    "JumpCloudSource",
    "provisiond_source_types",
    "user_from_record",
]


def _create(options: BaseModel, context: PluginContext) -> Source:
    assert isinstance(options, JumpCloudOptions)
    return JumpCloudSource(options, context)


@hookimpl
def provisiond_source_types() -> Sequence[SourceType]:
    """The ``jumpcloud`` source kind."""
    return [
        SourceType(
            kind="jumpcloud",
            options=JumpCloudOptions,
            create=_create,
            description="JumpCloud directory over its REST API (API key)",
        )
    ]
