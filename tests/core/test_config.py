from __future__ import annotations

import socket
from pathlib import Path

import pytest

from daemon.config import ConfigError
from daemon.plugins import plugin_manager
from daemon.secrets import SecretError, SecretStore, resolve_secret_path
from daemon.service import read_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "provisiond.yaml"
    path.write_text(text)
    return path


BASE = """
source: {kind: file, options: {path: dir.yaml}}
targets:
  - {name: audit, kind: log, groups: [Staff]}
"""


def load(path: Path):  # type: ignore[no-untyped-def]
    return read_config(path, plugin_manager())


def test_a_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, BASE))
    assert config.settings.engine.interval == 300
    assert config.settings.targets[0].guard.min_count == 25
    assert config.state_path == tmp_path / "state/provisiond.db"


def test_leader_election_is_off_on_sqlite_unless_enabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ha = load(write(tmp_path, BASE)).settings.ha
    assert ha.enabled is False
    assert (ha.lease_seconds, ha.renew_every) == (8.0, 2.0)
    assert ha.replica_id == socket.gethostname()
    ha = load(write(tmp_path, BASE + "ha: {enabled: true, lease_seconds: 6}\n")).settings.ha
    assert ha.enabled is True and ha.lease_seconds == 6
    monkeypatch.setenv("PROVISIOND_HA__REPLICA_ID", "replica-b")
    assert load(write(tmp_path, BASE)).settings.ha.replica_id == "replica-b"


def test_the_environment_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIOND_ENGINE__INTERVAL", "30")
    monkeypatch.setenv("PROVISIOND_HTTP__OPS__PORT", "9500")
    config = load(write(tmp_path, BASE + "engine: {interval: 90}\n"))
    assert config.settings.engine.interval == 30
    assert config.settings.http.ops.port == 9500


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            BASE + "engine: {interval: 0}\n",
            "engine.interval: Input should be greater than or equal to 1",
        ),
        (BASE + "engine: {intervall: 5}\n", "engine.intervall: Extra inputs are not permitted"),
        (
            BASE.replace("groups: [Staff]", "groups: [Staff], guard: {max_share: 2}"),
            "targets[0].guard.max_share",
        ),
        (BASE.replace("kind: log", "kind: nope"), "targets[0].kind: unknown target 'nope'"),
        (
            BASE.replace("name: audit", "name: Audit Log"),
            "targets[0].name: must start with a lowercase",
        ),
        (BASE.replace("{path: dir.yaml}", "{pth: dir.yaml}"), "source.options.pth: Extra inputs"),
        (
            BASE + "targets: [{name: a, kind: log}, {name: a, kind: log}]\n",
            "is used by another target",
        ),
        (
            BASE + "ha: {lease_seconds: 5, renew_every: 2}\n",
            "ha.renew_every: must be at most a third of ha.lease_seconds (5)",
        ),
        (BASE + "ha: {replica_id: 'two words'}\n", "ha.replica_id: must be printable"),
        (BASE + "http: {public: {admin_group: ''}}\n", "http.public.admin_group"),
        (BASE + "http: {public: {admin_group: [a, b]}}\n", "http.public.admin_group"),
        ("source: [\n", "not valid YAML at line 2"),
        ("- just a list\n", "the top level must be a mapping"),
    ],
)
def test_errors_name_the_key_path(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    assert expected in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_secret_files_are_read_redacted_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SecretStore()
    (tmp_path / "token").write_text("s3cret-value-123\n")
    secret = store.file(tmp_path / "token")
    assert secret.value() == "s3cret-value-123"
    assert store.redact("Bearer s3cret-value-123!") == "Bearer [REDACTED]!"
    (tmp_path / "short").write_text("abc")
    with pytest.raises(SecretError, match="fewer than 8"):
        store.file(tmp_path / "short")
    with pytest.raises(SecretError, match="does not exist"):
        store.file(tmp_path / "missing")
    # systemd credentials win over the config directory.
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "token").write_text("from-credentials-dir")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert resolve_secret_path("token", tmp_path) == creds / "token"


def test_a_rotated_secret_file_is_read_again(tmp_path: Path) -> None:
    store = SecretStore()
    path = tmp_path / "token"
    path.write_text("first-token-value")
    secret = store.file(path)
    new = tmp_path / "token.new"
    new.write_text("second-token-value!")
    new.replace(path)
    assert secret.value() == "second-token-value!"
    assert store.redact("first-token-value second-token-value!") == "[REDACTED] [REDACTED]"


def test_the_postgresql_backend_and_its_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load(write(tmp_path, BASE))
    assert config.settings.state.backend == "sqlite"
    assert config.settings.state.postgresql is None
    monkeypatch.setenv("PROVISIOND_STATE__BACKEND", "postgresql")
    monkeypatch.setenv("PROVISIOND_STATE__POSTGRESQL__DSN", "postgresql://p@db.internal/state")
    pg = load(write(tmp_path, BASE)).settings.state.postgresql
    assert pg is not None
    assert (pg.dsn, pg.sslmode, pg.pool_size, pg.connect_timeout) == (
        "postgresql://p@db.internal/state",
        "prefer",
        10,
        10.0,
    )
    assert (pg.password_file, pg.ssl_root_cert) == (None, None)


def test_a_password_inside_the_dsn_is_redacted(tmp_path: Path) -> None:
    from daemon.secrets import SECRETS

    dsn = "postgresql://p:s3cret%2Fdsn-pass@db.internal:6432/state"
    load(write(tmp_path, BASE + f"state: {{backend: postgresql, postgresql: {{dsn: '{dsn}'}}}}\n"))
    assert SECRETS.redact(f"connecting to {dsn}") == (
        "connecting to postgresql://p:[REDACTED]@db.internal:6432/state"
    )
    assert "s3cret/dsn-pass" not in SECRETS.redact("the password is s3cret/dsn-pass")
