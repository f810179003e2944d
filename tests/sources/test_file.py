"""The built-in ``file`` source: format, bad records, change detection, plugin wiring."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.model import AccountState, SkippedRecord, Snapshot
from daemon.runtime import PluginContext
from daemon.secrets import SecretStore
from daemon.sources import file as file_source
from daemon.sources.base import SourceError
from daemon.sources.file import FileSource, FileSourceOptions, create

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "directory.yaml"
ALICE_PASSWORD = "correct horse battery staple"
HANNA_PASSWORD = "contractor demo password"


def user(uid: str, **fields: Any) -> dict[str, Any]:
    """A valid user record with ``fields`` laid over it."""
    base: dict[str, Any] = {"id": uid, "username": uid, "email": f"{uid}@example.com"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def context(tmp_path: Path) -> PluginContext:
    return PluginContext(config_dir=tmp_path, state_dir=tmp_path / "state", secrets=SecretStore())


def write(path: Path, doc: Any, fmt: str = "yaml") -> Path:
    text = json.dumps(doc) if fmt == "json" else yaml.safe_dump(doc, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def age(path: Path, seconds: int = 60) -> None:
    """Move the file's mtime into the past, so its stat counts as settled (not racy)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 1_000_000_000))


def source_for(path: Path, fmt: str = "auto") -> FileSource:
    opts = FileSourceOptions.model_validate({"path": path.name, "format": fmt})
    return create(opts, context(path.parent))


async def load(tmp_path: Path, doc: Any, name: str = "dir.yaml") -> Snapshot:
    path = write(tmp_path / name, doc, "json" if name.endswith(".json") else "yaml")
    snapshot = await source_for(path).fetch(None)
    assert snapshot is not None
    return snapshot


def only(skipped: list[SkippedRecord]) -> SkippedRecord:
    assert len(skipped) == 1, skipped
    return skipped[0]


# --- bad records --------------------------------------------------------------------------


async def test_missing_id_is_reported_by_index(tmp_path: Path) -> None:
    snap = await load(tmp_path, {"users": [user("a"), user("b", id=...)], "groups": []})
    bad = only(snap.skipped)
    assert (bad.record, bad.field, bad.kind, bad.where) == ("#1", "id", "user", "dir.yaml")
    assert list(snap.users) == ["a"]


async def test_duplicate_id_keeps_the_first(tmp_path: Path) -> None:
    doc = {"users": [user("a"), user("b"), user("a", username="a2", email="a2@x.se")], "groups": []}
    snap = await load(tmp_path, doc)
    bad = only(snap.skipped)
    assert (bad.record, bad.field) == ("a", "id")
    assert "users[0]" in bad.reason
    assert snap.users["a"].username == "a"
    assert set(snap.users) == {"a", "b"}


async def test_duplicate_username_is_skipped(tmp_path: Path) -> None:
    doc = {"users": [user("a", username="sam"), user("b", username="Sam")], "groups": []}
    snap = await load(tmp_path, doc)
    bad = only(snap.skipped)
    assert (bad.record, bad.field) == ("b", "username")
    assert "'a'" in bad.reason
    assert set(snap.users) == {"a"}


async def test_duplicate_email_is_case_insensitive(tmp_path: Path) -> None:
    doc = {
        "users": [user("a", email="Sam@Example.com"), user("b", email="sam@example.COM")],
        "groups": [],
    }
    snap = await load(tmp_path, doc)
    bad = only(snap.skipped)
    assert (bad.record, bad.field) == ("b", "email")
    assert set(snap.users) == {"a"}


@pytest.mark.parametrize(
    "email",
    ["sam", "sam@", "@example.com", "sam@example", "sam@@example.com", "sam @example.com",
     "sam@exa mple.com", "sam@example.", "sam@.example.com", "a@b@c.com", "sam@example..com"],
)  # fmt: skip
async def test_malformed_email_is_skipped(tmp_path: Path, email: str) -> None:
    snap = await load(tmp_path, {"users": [user("a"), user("b", email=email)], "groups": []})
    bad = only(snap.skipped)
    assert (bad.record, bad.field) == ("b", "email")
    assert set(snap.users) == {"a"}


@pytest.mark.parametrize("email", ["a@b.se", "first.last+tag@mail.example.co.uk", "å@ö.se"])
async def test_reasonable_emails_pass(tmp_path: Path, email: str) -> None:
    snap = await load(tmp_path, {"users": [user("a", email=email)], "groups": []})
    assert snap.skipped == []
    assert snap.users["a"].email == email


async def test_unknown_group_member_is_dropped_and_reported(tmp_path: Path) -> None:
    doc = {"users": [user("a")], "groups": [{"id": "g", "name": "G", "members": ["a", "ghost"]}]}
    snap = await load(tmp_path, doc)
    bad = only(snap.skipped)
    assert (bad.record, bad.field, bad.kind) == ("g", "members", "group")
    assert "'ghost'" in bad.reason
    assert snap.groups["g"].members == ("a",)


async def test_member_that_was_skipped_is_dropped_too(tmp_path: Path) -> None:
    doc = {
        "users": [user("a"), user("b", email="nope")],
        "groups": [{"id": "g", "name": "G", "members": ["a", "b"]}],
    }
    snap = await load(tmp_path, doc)
    assert [(s.kind, s.record, s.field) for s in snap.skipped] == [
        ("user", "b", "email"),
        ("group", "g", "members"),
    ]
    assert "'b' was skipped" in snap.skipped[1].reason
    assert snap.groups["g"].members == ("a",)


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"title": 5}, "title"),
        ({"employee_id": 42}, "employee_id"),
        ({"department": True}, "department"),
        ({"phone": ["1"]}, "phone"),
        ({"username": 7}, "username"),
        ({"username": "two words"}, "username"),
        ({"email": ...}, "email"),
        ({"username": ...}, "username"),
        ({"state": "gone"}, "state"),
        ({"state": "unassigned"}, "state"),
        ({"state": True}, "state"),
        ({"state": ["active"]}, "state"),
        ({"email": {"a": 1}}, "email"),
        ({"manager": 7}, "manager"),
        ({"password_hash": "$2b$12$bcrypt"}, "password_hash"),
        ({"password_hash": 1}, "password_hash"),
        ({"famly_name": "Typo"}, "famly_name"),
    ],
)
async def test_bad_user_field_skips_only_that_user(
    tmp_path: Path, fields: dict[str, Any], bad_field: str
) -> None:
    snap = await load(tmp_path, {"users": [user("a"), user("b", **fields)], "groups": []})
    bad = only(snap.skipped)
    assert (bad.record, bad.field, bad.kind) == ("b", bad_field, "user")
    assert set(snap.users) == {"a"}


async def test_typo_gets_a_suggestion(tmp_path: Path) -> None:
    snap = await load(tmp_path, {"users": [user("b", famly_name="X")], "groups": []})
    assert "'family_name'" in only(snap.skipped).reason


async def test_unassigned_state_is_explained(tmp_path: Path) -> None:
    snap = await load(tmp_path, {"users": [user("b", state="unassigned")], "groups": []})
    assert "group bindings" in only(snap.skipped).reason


async def test_bad_password_hash_is_not_echoed(tmp_path: Path) -> None:
    secret = "$2b$12$thisIsABcryptHashNotArgon"
    snap = await load(tmp_path, {"users": [user("b", password_hash=secret)], "groups": []})
    assert secret not in str(only(snap.skipped))


@pytest.mark.parametrize("raw", ["just-a-string", 5, ["a"], None])
async def test_record_that_is_not_a_mapping(tmp_path: Path, raw: Any) -> None:
    snap = await load(tmp_path, {"users": [user("a"), raw], "groups": []})
    bad = only(snap.skipped)
    assert (bad.record, bad.field) == ("#1", "record")
    assert set(snap.users) == {"a"}


@pytest.mark.parametrize("uid", [5, "", "with space", ["x"]])
async def test_invalid_id_is_reported_by_index(tmp_path: Path, uid: Any) -> None:
    snap = await load(tmp_path, {"users": [user("a"), user("b", id=uid)], "groups": []})
    bad = only(snap.skipped)
    assert (bad.record, bad.field) == ("#1", "id")


@pytest.mark.parametrize(
    ("group", "record", "bad_field"),
    [
        ({"id": "g2", "name": "G2", "members": "a"}, "g2", "members"),
        ({"id": "g2", "name": "G2", "members": ["a", 5]}, "g2", "members"),
        ({"id": "g2", "name": 3}, "g2", "name"),
        ({"id": "g2"}, "g2", "name"),
        ({"name": "G2"}, "#1", "id"),
        ({"id": "g", "name": "Other"}, "g", "id"),
        ({"id": "g2", "name": "g"}, "g2", "name"),  # names clash case-insensitively
        ({"id": "g2", "name": "G2", "owner": "a"}, "g2", "owner"),
    ],
)
async def test_bad_group_skips_only_that_group(
    tmp_path: Path, group: dict[str, Any], record: str, bad_field: str
) -> None:
    doc = {"users": [user("a")], "groups": [{"id": "g", "name": "G", "members": ["a"]}, group]}
    snap = await load(tmp_path, doc)
    bad = only(snap.skipped)
    assert (bad.record, bad.field, bad.kind) == (record, bad_field, "group")
    assert set(snap.groups) == {"g"}
    assert snap.groups["g"].members == ("a",)


async def test_duplicate_group_id_names_the_first(tmp_path: Path) -> None:
    doc = {"users": [], "groups": [{"id": "g", "name": "A"}, {"id": "g", "name": "B"}]}
    snap = await load(tmp_path, doc)
    assert "groups[0]" in only(snap.skipped).reason
    assert snap.groups["g"].name == "A"


async def test_unknown_manager_is_dropped_and_reported(tmp_path: Path) -> None:
    doc = {"users": [user("a", manager="boss"), user("b", manager="a")], "groups": []}
    snap = await load(tmp_path, doc)
    bad = only(snap.skipped)
    assert (bad.record, bad.field) == ("a", "manager")
    assert snap.users["a"].manager is None
    assert snap.users["b"].manager == "a"


async def test_fields_are_normalised(tmp_path: Path) -> None:
    doc = {
        "users": [user("a", title="", given_name=None, state="suspended", division="Core")],
        "groups": [{"id": "g", "name": "G", "members": ["a", "a"]}, {"id": "h", "name": "H"}],
    }
    snap = await load(tmp_path, doc)
    a = snap.users["a"]
    assert (a.title, a.given_name, a.state, a.division) == (
        None,
        "",
        AccountState.SUSPENDED,
        "Core",
    )
    assert snap.groups["g"].members == ("a",)
    assert snap.groups["h"].members == ()


# --- files that cannot be used at all ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("dir.yaml", "users:\n  - id: a\n   bad: [\n", "line 3, column 4"),
        ("dir.yaml", "users: [\ngroups: []\n", "line "),
        ("dir.json", '{"users": [],\n "groups": [,]}', "line 2, column 13"),
        ("dir.json", '{"users": [', "invalid JSON"),
        ("dir.yaml", "users: a\x07\n", "invalid YAML at line 1, column 9"),
    ],
)
async def test_syntax_error_names_file_and_line(
    tmp_path: Path, name: str, text: str, where: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SourceError) as err:
        await source_for(path).fetch(None)
    assert name in str(err.value)
    assert where in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        "",  # an emptied file must never read as an empty directory
        "- a\n- b\n",
        "users: []\n",  # groups missing
        "users: {}\ngroups: []\n",
        "users: []\ngroups: x\n",
        "users: []\ngroups: []\ngrups: []\n",
        "[" * 5000 + "]" * 5000,
    ],
)
async def test_unusable_document_raises(tmp_path: Path, text: str) -> None:
    path = tmp_path / "dir.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SourceError, match=r"directory file dir\.yaml"):
        await source_for(path).fetch(None)


@pytest.mark.parametrize(
    ("name", "text"), [("dir.json", ""), ("dir.yaml", ""), ("dir.json", " \n\n")]
)
async def test_an_empty_file_says_it_is_empty(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SourceError) as err:
        await source_for(path).fetch(None)
    assert str(err.value).startswith(f"directory file {name}: the file is empty")
    assert "truncated" not in str(err.value)


async def test_deep_json_raises(tmp_path: Path) -> None:
    path = tmp_path / "dir.json"
    path.write_text("[" * 5000, encoding="utf-8")
    with pytest.raises(SourceError, match=r"dir\.json"):
        await source_for(path).fetch(None)


async def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"dir\.yaml .*does not exist"):
        await source_for(tmp_path / "dir.yaml").fetch(None)


async def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(SourceError, match="not a regular file"):
        await source_for(tmp_path / "dir.yaml").fetch(None)
    with pytest.raises(SourceError, match="not a regular file"):
        await source_for(tmp_path / "dir.yaml").check()


async def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "dir.yaml")
    with pytest.raises(SourceError, match="not a regular file"):
        await source_for(tmp_path / "dir.yaml").fetch(None)


async def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "dir.yaml", {"users": [], "groups": []})

    def denied(_: Path) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(file_source, "read_bytes", denied)
    with pytest.raises(SourceError, match=r"dir\.yaml .*cannot be read: Permission denied"):
        await source_for(path).fetch(None)


async def test_oversized_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_source, "MAX_FILE_BYTES", 10)
    path = write(tmp_path / "dir.yaml", {"users": [user("a")], "groups": []})
    with pytest.raises(SourceError, match="larger than"):
        await source_for(path).fetch(None)


async def test_broken_file_keeps_failing_until_fixed(tmp_path: Path) -> None:
    path = tmp_path / "dir.yaml"
    path.write_text("users: [\n", encoding="utf-8")
    source = source_for(path)
    for _ in range(2):
        with pytest.raises(SourceError):
            await source.fetch(None)
    write(path, {"users": [user("a")], "groups": []})
    snap = await source.fetch(None)
    assert snap is not None
    assert set(snap.users) == {"a"}


# --- change detection ----------------------------------------------------------------------


def refuse(name: str) -> Callable[..., Any]:
    def fail(*_: Any, **__: Any) -> Any:
        raise AssertionError(f"{name} was called")

    return fail


async def test_unchanged_stat_returns_none_without_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "dir.yaml", {"users": [user("a")], "groups": []})
    age(path)
    source = source_for(path)
    snap = await source.fetch(None)
    assert snap is not None
    monkeypatch.setattr(file_source, "read_bytes", refuse("read_bytes"))
    monkeypatch.setattr(file_source, "parse", refuse("parse"))
    assert await source.fetch(snap.version) is None


async def test_touched_file_with_same_content_is_not_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "dir.yaml", {"users": [user("a")], "groups": []})
    source = source_for(path)
    snap = await source.fetch(None)
    assert snap is not None
    age(path, 120)  # a new mtime, same bytes
    monkeypatch.setattr(file_source, "parse", refuse("parse"))
    assert await source.fetch(snap.version) is None


async def test_unknown_version_gets_a_snapshot(tmp_path: Path) -> None:
    path = write(tmp_path / "dir.yaml", {"users": [user("a")], "groups": []})
    age(path)
    source = source_for(path)
    first = await source.fetch(None)
    assert first is not None
    again = await source.fetch("sha256:something-else")
    assert again is not None
    assert again.version == first.version
    assert again.users == first.users


async def test_changed_content_with_same_size_is_seen(tmp_path: Path) -> None:
    path = write(tmp_path / "dir.yaml", {"users": [user("a", title="aaa")], "groups": []})
    age(path)
    source = source_for(path)
    first = await source.fetch(None)
    assert first is not None
    size = path.stat().st_size
    write(path, {"users": [user("a", title="bbb")], "groups": []})
    age(path, 30)  # a different mtime, in the past, as an editor a minute later would leave
    assert path.stat().st_size == size
    second = await source.fetch(first.version)
    assert second is not None
    assert second.version != first.version
    assert second.users["a"].title == "bbb"


async def test_fresh_mtime_is_not_trusted(tmp_path: Path) -> None:
    """Two writes within one mtime tick leave the stat unchanged; the content still counts."""
    path = write(tmp_path / "dir.yaml", {"users": [user("a", title="aaa")], "groups": []})
    source = source_for(path)
    first = await source.fetch(None)
    assert first is not None
    st = path.stat()
    write(path, {"users": [user("a", title="bbb")], "groups": []})
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same inode, size and mtime
    second = await source.fetch(first.version)
    assert second is not None
    assert second.users["a"].title == "bbb"


async def test_first_fetch_with_known_version_loads_password_hashes(tmp_path: Path) -> None:
    """After a restart the store already holds the version; the hashes must still load."""
    path = write(tmp_path / "dir.yaml", {"users": [user("a", password_hash="$argon2id$x")],
                                          "groups": []})  # fmt: skip
    version = (await source_for(path).fetch(None) or Snapshot.of()).version
    restarted = source_for(path)
    assert await restarted.fetch(version) is None
    assert restarted.password_hash("a") == "$argon2id$x"


# --- formats, the example, check() and password hashes ---------------------------------------


async def test_json_and_yaml_are_equivalent(tmp_path: Path) -> None:
    doc = {
        "users": [user("a", title="T", state="suspended", manager="b"), user("b"), user("c", id=5)],
        "groups": [{"id": "g", "name": "G", "members": ["b", "a", "x"]}],
    }
    from_yaml = await load(tmp_path, doc, "dir.yaml")
    from_json = await load(tmp_path, doc, "dir.json")
    assert from_yaml.users == from_json.users
    assert from_yaml.groups == from_json.groups
    assert [(s.record, s.field) for s in from_yaml.skipped] == [
        (s.record, s.field) for s in from_json.skipped
    ]


async def test_format_option_overrides_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "directory.txt", {"users": [user("a")], "groups": []}, "json")
    for fmt in ("auto", "yaml", "json"):
        snap = await source_for(path, fmt).fetch(None)
        assert snap is not None
        assert set(snap.users) == {"a"}
    (tmp_path / "dir.json").write_text("users: []\ngroups: []\n", encoding="utf-8")
    with pytest.raises(SourceError, match="invalid JSON"):
        await source_for(tmp_path / "dir.json").fetch(None)


def test_options_are_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        FileSourceOptions.model_validate({"path": "x.yaml", "pth": "y"})
    with pytest.raises(ValueError, match="format"):
        FileSourceOptions.model_validate({"path": "x.yaml", "format": "toml"})


def test_relative_path_resolves_against_config_dir(tmp_path: Path) -> None:
    opts = FileSourceOptions.model_validate({"path": "sub/dir.json"})
    source = create(opts, context(tmp_path))
    assert source.path == tmp_path / "sub" / "dir.json"
    assert (source.where, source.format) == ("sub/dir.json", "json")
    absolute = create(FileSourceOptions(path=tmp_path / "d.yml"), context(Path("/nowhere")))
    assert absolute.path == tmp_path / "d.yml"


async def test_example_parses_cleanly() -> None:
    source = create(FileSourceOptions(path=Path("examples/directory.yaml")), context(REPO))
    snap = await source.fetch(None)
    assert snap is not None
    assert snap.skipped == []
    assert len(snap.users) == 12
    assert {g.name for g in snap.groups.values()} >= {"AlexisHR Users", "Engineering", "Sales"}
    bound = {m for g in snap.groups.values() if g.name == "AlexisHR Users" for m in g.members}
    assert set(snap.users) - bound, "one user must be outside the bound group"
    assert any(u.state is AccountState.SUSPENDED for u in snap.users.values())
    assert any(u.manager and u.division for u in snap.users.values())
    assert source.password_hash("alice") is not None
    # The demo's second sign-in user (outside the bound group) has one too.
    assert source.password_hash("hanna.kowalski") is not None
    assert source.password_hash("johanna.berg") is None


async def test_example_alice_hash_verifies() -> None:
    argon2 = pytest.importorskip("argon2")
    source = create(FileSourceOptions(path=EXAMPLE), context(REPO))
    await source.fetch(None)
    hashed = source.password_hash("alice")
    assert hashed is not None
    assert argon2.PasswordHasher().verify(hashed, ALICE_PASSWORD)
    hanna = source.password_hash("hanna.kowalski")
    assert hanna is not None
    assert argon2.PasswordHasher().verify(hanna, HANNA_PASSWORD)


async def test_password_hash_stays_out_of_the_record(tmp_path: Path) -> None:
    doc = {"users": [user("a", password_hash="$argon2id$v=19$abc"), user("b")], "groups": []}
    path = write(tmp_path / "dir.yaml", doc)
    source = source_for(path)
    snap = await source.fetch(None)
    assert snap is not None
    assert "argon2" not in repr(snap.users["a"])
    assert source.password_hash("a") == "$argon2id$v=19$abc"
    assert source.password_hash("b") is None
    assert source.password_hash("nobody") is None
    write(path, {"users": [user("b")], "groups": []})
    age(path)
    await source.fetch(snap.version)
    assert source.password_hash("a") is None


async def test_hash_of_a_skipped_user_is_not_exposed(tmp_path: Path) -> None:
    doc = {"users": [user("a", password_hash="$argon2id$x", title=5)], "groups": []}
    path = write(tmp_path / "dir.yaml", doc)
    source = source_for(path)
    await source.fetch(None)
    assert source.password_hash("a") is None


async def test_check_summarises(tmp_path: Path) -> None:
    doc = {"users": [user("a"), user("b", state="x")], "groups": [{"id": "g", "name": "G"}]}
    source = source_for(write(tmp_path / "dir.yaml", doc))
    lines = await source.check()
    assert lines[0] == "file dir.yaml: 1 user, 1 group, 1 record skipped"
    assert "user b" in lines[1]
    await source.aclose()


async def test_check_on_broken_file_raises(tmp_path: Path) -> None:
    (tmp_path / "dir.yaml").write_text("users: [\n", encoding="utf-8")
    with pytest.raises(SourceError, match="line"):
        await source_for(tmp_path / "dir.yaml").check()


async def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    path = tmp_path / "dir.yaml"
    path.write_text(
        "users:\n"
        "  - &a {id: a, username: a, email: a@x.se, department: Engineering, company: N}\n"
        "  - {<<: *a, id: b, username: b, email: b@x.se}\n"
        "groups: []\n",
        encoding="utf-8",
    )
    snap = await source_for(path).fetch(None)
    assert snap is not None
    assert snap.skipped == []
    assert (snap.users["b"].department, snap.users["b"].company) == ("Engineering", "N")


async def test_json_error_column_counts_characters(tmp_path: Path) -> None:
    path = tmp_path / "dir.json"
    path.write_text('{"users": [{"id": "åäö", ]}', encoding="utf-8")
    with pytest.raises(SourceError, match="line 1, column 26"):
        await source_for(path).fetch(None)
