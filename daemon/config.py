"""The configuration file, environment overrides, and validation that names the key at fault.

One YAML file (``--config`` or ``$PROVISIOND_CONFIG``). Any key can be
overridden from the environment as ``PROVISIOND_<SECTION>__<KEY>``, for
example ``PROVISIOND_ENGINE__INTERVAL=30``; the environment wins over the
file. Secrets are never values in this file: settings ending in ``_file``
name files to read them from (see :mod:`daemon.secrets`).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from daemon.plugins import Registry
from daemon.secrets import MIN_SECRET_LENGTH, SECRETS

ENV_PREFIX = "PROVISIOND_"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds one line per fault."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid configuration in {self.source}:\n{lines}"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSettings(_Section):
    """``source``: the directory to poll."""

    kind: str = "file"
    options: dict[str, Any] = Field(default_factory=dict)


class GuardSettings(_Section):
    """``targets[].guard``: the mass-removal safety rail.

    A cycle that would deactivate or remove at least ``min_count`` of a
    target's users *and* more than ``max_share`` of them is held back until
    ``provisiond approve``; everything else in the cycle still goes.
    """

    max_share: float = Field(default=0.10, ge=0.0, le=1.0)
    min_count: int = Field(default=25, ge=1)


class TargetSettings(_Section):
    """``targets[]``: one application instance."""

    name: str
    kind: str
    enabled: bool = True
    groups: list[str] = Field(default_factory=list)
    guard: GuardSettings = Field(default_factory=lambda: GuardSettings())
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                "must start with a lowercase letter and hold only a-z, 0-9, '-' and '_'"
            )
        return v


class EngineSettings(_Section):
    """``engine``: polling and retries (durations in seconds)."""

    interval: float = Field(default=300.0, ge=1.0)
    jitter: float = Field(default=0.1, ge=0.0, le=0.5)
    shutdown_grace: float = Field(default=30.0, ge=0.0)
    retry_base: float = Field(default=30.0, gt=0.0)
    retry_max: float = Field(default=3600.0, gt=0.0)
    batch_size: int = Field(default=2000, ge=1)
    #: After a source announces a change, wait this long for more before the cycle.
    debounce: float = Field(default=0.25, ge=0.0, le=60.0)
    #: Object ids kept while changes wait for their cycle; past it, "everything changed".
    max_pending_keys: int = Field(default=10000, ge=1)


class PostgresSettings(_Section):
    """``state.postgresql``: the PostgreSQL database of ``state.backend: postgresql``.

    ``dsn`` is a ``postgresql://user@host:port/database`` URL. Its password
    belongs in ``password_file`` (a password inside the URL works too, and is
    redacted like every secret). TLS follows libpq's ``sslmode`` and
    ``sslrootcert``, set here rather than in the URL. ``transaction_pooler``
    says the DSN reaches PostgreSQL through a pooler in transaction mode
    (PgBouncer's ``pool_mode = transaction``): no statement cache, no startup
    parameters. Opening the store refuses a transaction pooler it detects
    while this is false.
    """

    dsn: str
    password_file: Path | None = None
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    ssl_root_cert: Path | None = None
    pool_size: int = Field(default=10, ge=1, le=1000)
    connect_timeout: float = Field(default=10.0, gt=0)
    transaction_pooler: bool = False

    @field_validator("dsn")
    @classmethod
    def _postgresql_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(
                "must be a postgresql:// URL, such as "
                "postgresql://provisiond@db.example.com:5432/provisiond"
            )
        query = parse_qs(parts.query)
        for name, setting in (("sslmode", "sslmode"), ("sslrootcert", "ssl_root_cert")):
            if name in query:
                raise ValueError(f"set state.postgresql.{setting} instead of {name} in the URL")
        for password in [parts.password or "", *query.get("password", [])]:
            if not password:
                continue
            if len(unquote(password)) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"the password in the URL is shorter than {MIN_SECRET_LENGTH} characters; "
                    "use a longer, random one (better: state.postgresql.password_file)"
                )
            # Redacted from every log line and error from now on, as written and decoded.
            SECRETS.register(password)
            SECRETS.register(unquote(password))
        return v


class StateSettings(_Section):
    """``state``: where the daemon keeps what it has done.

    ``sqlite`` (the default) keeps it in the file ``path``; ``postgresql``
    in the database ``postgresql`` names, which several replicas can share.
    The directory of ``path`` still holds the daemon's files either way.
    """

    backend: Literal["sqlite", "postgresql"] = "sqlite"
    path: Path = Path("state/provisiond.db")
    postgresql: PostgresSettings | None = None
    #: Days the provisioning log keeps an entry; 0 writes no provisioning log at all.
    log_retention_days: float = Field(default=30, ge=0, le=3650)

    @model_validator(mode="after")
    def _backend_settings(self) -> StateSettings:
        if self.backend == "postgresql" and self.postgresql is None:
            raise ValueError(
                "backend postgresql needs the state.postgresql section (at least its dsn)"
            )
        return self


class HaSettings(_Section):
    """``ha``: several replicas on one store, one leader per target (leases with fencing).

    ``enabled`` defaults to true on PostgreSQL and false on SQLite. A leader
    renews its leases every ``renew_every`` seconds for ``lease_seconds``;
    a replica that stops renewing loses them that long after its last renewal.
    """

    enabled: bool | None = None
    #: This replica's name in the lease table and the status (default: the host name).
    replica_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=100)
    lease_seconds: float = Field(default=8.0, gt=0)
    renew_every: float = Field(default=2.0, gt=0)

    @field_validator("replica_id")
    @classmethod
    def _printable(cls, v: str) -> str:
        if not v.isprintable() or any(ch.isspace() for ch in v):
            raise ValueError("must be printable and hold no spaces")
        return v

    @field_validator("renew_every")
    @classmethod
    def _renewals_per_lease(cls, v: float, info: ValidationInfo) -> float:
        lease = info.data.get("lease_seconds")
        if lease is not None and v * 3 > lease:
            raise ValueError(
                f"must be at most a third of ha.lease_seconds ({lease:g}), so that a leader "
                f"renews at least three times per lease; got {v:g}"
            )
        return v


class OpsListenerSettings(_Section):
    """``http.ops``: /metrics, /healthz, /readyz and the admin API."""

    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)
    admin_token_file: Path | None = None


class PublicListenerSettings(_Section):
    """``http.public``: single sign-on and the portal (plugins add routes)."""

    enabled: bool = False
    #: The URL browsers use to reach this listener (IdP URLs and metadata use it),
    #: e.g. ``https://sso.example.com``. Default: ``http://<host>:<port>``.
    base_url: str | None = None
    #: Trust ``X-Forwarded-Proto``/``-Host``/``-For`` from a TLS-terminating proxy.
    trust_forwarded_headers: bool = False
    #: Session cookie lifetimes, in seconds.
    session_idle_timeout: float = Field(default=30 * 60.0, gt=0)
    session_absolute_timeout: float = Field(default=12 * 3600.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: File holding the key that signs session cookies. Default: a
    #: ``portal-session.key`` an earlier provisiond generated into the state
    #: directory, else a key generated once into the state store.
    session_key_file: Path | None = None
    #: Failed sign-ins allowed per account (a typed name that resolves to
    #: nobody counts as itself), and per client address, within
    #: ``login_failure_window`` seconds before further attempts are refused.
    login_max_failures_per_user: int = Field(default=5, ge=1)
    login_max_failures_per_address: int = Field(default=30, ge=1)
    login_failure_window: float = Field(default=15 * 60.0, gt=0)
    #: File holding the key that encrypts TOTP secrets in the state store.
    #: Default: ``portal-mfa.key``, generated once into the state directory.
    mfa_key_file: Path | None = None
    #: Ask every application's users for a second factor (each application
    #: can also ask on its own: ``sso.require_mfa``).
    require_mfa: bool = False
    #: Wrong second-factor codes allowed per account within
    #: ``login_failure_window`` seconds before further codes are refused.
    mfa_max_failures: int = Field(default=5, ge=1)
    #: The organisation's name, shown on the sign-in page and the portal
    #: (e.g. ``Nordlys``). Default: none (the pages say ``provisiond``).
    organisation: str | None = Field(default=None, min_length=1, max_length=100)
    #: A logo image file (PNG, JPEG, GIF, WebP or SVG, at most 512 KiB) shown
    #: beside the organisation's name; served by the portal at ``/logo``.
    logo: Path | None = None

    @field_validator("organisation")
    @classmethod
    def _organisation_text(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = " ".join(value.split())
        if not value:
            raise ValueError("must not be blank")
        return value
    #: Directory group (its name or id) whose members may use the admin console
    #: at ``/admin``. Unset: the console is off and its URLs answer 404.
    admin_group: str | None = Field(default=None, min_length=1)
    #: Ask console users for a second factor even when ``require_mfa`` is off.
    admin_require_mfa: bool = False


class HttpSettings(_Section):
    ops: OpsListenerSettings = Field(default_factory=lambda: OpsListenerSettings())
    public: PublicListenerSettings = Field(default_factory=lambda: PublicListenerSettings())


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(BaseSettings):
    """The whole configuration file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
    )

    #: Extra plugin modules to load by import path (besides installed entry points).
    plugins: list[str] = Field(default_factory=list)
    source: SourceSettings = Field(default_factory=lambda: SourceSettings())
    targets: list[TargetSettings] = Field(default_factory=list)
    engine: EngineSettings = Field(default_factory=lambda: EngineSettings())
    state: StateSettings = Field(default_factory=lambda: StateSettings())
    ha: HaSettings = Field(default_factory=lambda: HaSettings())
    http: HttpSettings = Field(default_factory=lambda: HttpSettings())
    logging: LogSettings = Field(default_factory=lambda: LogSettings())

    @model_validator(mode="after")
    def _unique_targets(self) -> Settings:
        seen: set[str] = set()
        for i, t in enumerate(self.targets):
            if t.name in seen:
                raise ValueError(f"targets[{i}].name: {t.name!r} is used by another target")
            seen.add(t.name)
        return self

    @model_validator(mode="after")
    def _ha_default(self) -> Settings:
        # Leader election is what several replicas on PostgreSQL need; one
        # process on its own SQLite file has nobody to elect.
        if self.ha.enabled is None:
            self.ha.enabled = self.state.backend != "sqlite"
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (the file arrives as init kwargs).
        return (env_settings, init_settings)


class Config:
    """A validated configuration: the settings plus each plugin's typed options."""

    def __init__(
        self,
        settings: Settings,
        path: Path | None,
        source_options: BaseModel,
        target_options: dict[str, BaseModel],
    ) -> None:
        self.settings = settings
        self.path = path
        self.source_options = source_options
        self.target_options = target_options
        #: The plugin manager the configuration was validated against.
        self.plugins: Any = None

    @property
    def config_dir(self) -> Path:
        return self.path.parent.resolve() if self.path else Path.cwd()

    def resolve(self, path: Path) -> Path:
        """A path from the configuration, relative to the configuration file."""
        return path if path.is_absolute() else self.config_dir / path

    @property
    def state_path(self) -> Path:
        return self.resolve(self.settings.state.path)


def _loc(loc: tuple[int | str, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def format_validation_error(exc: ValidationError, prefix: str = "") -> list[str]:
    """One line per fault: ``key.path[0].name: what is wrong``."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{_loc(tuple(err['loc']), prefix)}: {msg}")
    return lines


def read_file(path: Path) -> dict[str, Any]:
    """Parse the YAML file; an unreadable or malformed file is a :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"not valid YAML{where}: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["the top level must be a mapping of sections"])
    return data


def load(path: Path | None, registry: Registry) -> Config:
    """Read, override from the environment, and validate the whole configuration."""
    where = str(path) if path else "(defaults and environment)"
    data = read_file(path) if path else {}
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(where, format_validation_error(exc)) from None
    problems: list[str] = []

    source_options: BaseModel | None = None
    stype = registry.sources.get(settings.source.kind)
    if stype is None:
        problems.append(
            f"source.kind: unknown source {settings.source.kind!r}; "
            f"installed: {', '.join(sorted(registry.sources)) or 'none'}"
        )
    else:
        try:
            source_options = stype.options.model_validate(settings.source.options)
        except ValidationError as exc:
            problems += format_validation_error(exc, "source.options")

    target_options: dict[str, BaseModel] = {}
    for i, t in enumerate(settings.targets):
        ttype = registry.targets.get(t.kind)
        if ttype is None:
            problems.append(
                f"targets[{i}].kind: unknown target {t.kind!r}; "
                f"installed: {', '.join(sorted(registry.targets)) or 'none'}"
            )
            continue
        try:
            target_options[t.name] = ttype.options.model_validate(t.options)
        except ValidationError as exc:
            problems += format_validation_error(exc, f"targets[{i}].options")

    if problems or source_options is None:
        raise ConfigError(where, problems)
    return Config(settings, path, source_options, target_options)
