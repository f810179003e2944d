"""``options.scim`` of every SCIM target: connection, pacing, groups, safety."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ScimOptions(BaseModel):
    """``options.scim``: provisioning over SCIM 2.0 (any application)."""

    model_config = ConfigDict(extra="forbid")

    #: The SCIM base URL (an application preset may supply a default).
    base_url: str | None = None
    #: File holding the bearer token.
    token_file: Path
    ca_bundle: Path | None = None
    manage_groups: bool = True
    #: Seconds after deactivation before a user removed from the directory is
    #: deleted in the application. None (default): never delete, only deactivate.
    hard_delete_after: float | None = Field(default=None, ge=0)
    max_concurrency: int = Field(default=8, ge=1, le=64)
    timeout: float = Field(default=30.0, gt=0)
    #: Seconds between full reconciliation passes (list remote, repair drift);
    #: at least 60. The time of the last pass is kept in the state store.
    reconcile_every: float = Field(default=6 * 3600.0, ge=60)
    #: Most SCIM requests per second; the client slows below this when the
    #: server answers 429/503, and recovers afterwards. The default is cautious.
    rate_limit: float = Field(default=20.0, gt=0, le=10000)
    #: Members per membership PATCH request. Default: the server's
    #: ``bulk.maxOperations`` when it gives one, else 100.
    membership_chunk: int | None = Field(default=None, ge=1, le=1000)
    #: After a 401/403, seconds to wait for the token file to change (a
    #: rotation in progress) before the target is marked unhealthy.
    token_rotation_wait: float = Field(default=10.0, ge=0, le=300)
    #: Seconds between attempts while the application refuses the token (a changed
    #: token file ends the wait at once).
    auth_retry_after: float = Field(default=600.0, ge=1)
    #: Consecutive delivery rounds in which most calls failed before the
    #: target is quarantined (backed off without calling the application).
    quarantine_after: int = Field(default=3, ge=1)
    #: First quarantine, in seconds; doubles per further failed round ...
    quarantine_base: float = Field(default=30.0, gt=0)
    #: ... up to this ceiling.
    quarantine_max: float = Field(default=900.0, gt=0)
