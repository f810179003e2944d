"""What one SCIM application tells the generic target engine about itself.

The engine (:mod:`daemon.targets.scim.target`) does everything a SCIM 2.0
service provider needs: matching and adoption, minimal PATCHes, chunked
member PATCHes, lost-reply lookups, health and quarantine, token rotation,
reconciliation and metrics. An application supplies a :class:`ScimProfile`
(its name and wording) and a user mapping (:class:`~daemon.targets.scim.schema.UserSchema`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScimProfile:
    """An application's name and operator-facing wording.

    ``app`` is how messages name the application ("AlexisHR"). ``kind`` is
    the target kind (and the first word of ``provisiond check`` lines).
    ``metric_prefix`` names the target's own metric families
    (``provisiond_<prefix>_operations_total`` and so on). ``access_revoked``
    is what an operator reads when the application refuses the token, and
    ``discovery_hint`` what follows a failed discovery in ``check``.
    """

    app: str
    kind: str
    metric_prefix: str
    access_revoked: str
    discovery_hint: str = "Check options.scim.base_url"
    #: How metric help texts name the application (default: ``app``). The families
    #: of one ``metric_prefix`` are registered once, so targets that share a prefix
    #: but not a name (generic SCIM applications) share this instead.
    metric_app: str | None = None
    #: Where a removed user's legacy private state file lived, by target name
    #: (provisiond 0.1 kept one SQLite file per target); ``None``: never had one.
    legacy_state_file: str | None = None


def generic_access_revoked(app: str) -> str:
    return (
        f"{app} refused the access token: it was revoked or lost the rights it needs. Write "
        "a new token to the token file; provisiond picks it up without a restart"
    )
