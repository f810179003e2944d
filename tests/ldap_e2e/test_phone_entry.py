"""A phone number the target cannot normalise names the LDAP entry's DN (issue 12, defect 4).

slapd → the ``ldap`` source → the real Engine and SqliteStore → a generic
SCIM target with ``phone_region: SE`` → scim2-server, all configured from a
YAML file as ``provisiond sync`` reads it. The delivery is a permanent
failure whose message (what ``provisiond status`` shows) and log line name
the entry by its DN: its entryUUID (``user:<uuid>``) leads nobody to it.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from daemon.engine import Engine
from daemon.plugins import plugin_manager
from daemon.service import assemble, open_store, read_config
from tests.ldap import seed
from tests.ldap.slapd import READER_DN, READER_PASSWORD, Slapd
from tests.scim.harness import running_scim_server

CONFIG = """
source:
  kind: ldap
  options:
    url: {url}
    start_tls: false
    bind_dn: "{bind_dn}"
    bind_password_file: bind.pw
    user_base: "{people}"
    group_base: "{groups}"
    sync: poll
state:
  path: state/provisiond.db
engine:
  retry_base: 0.05
  retry_max: 0.5
targets:
  - name: wiki
    kind: scim
    groups: [staff]
    options:
      scim:
        base_url: {scim}
        token_file: wiki.token
        rate_limit: 1000
        phone_region: SE
"""

ALICE_DN = f"uid=alice,{seed.PEOPLE}"


async def test_a_phone_number_error_names_the_entrys_dn(tmp_path: Path, slapd: Slapd) -> None:
    slapd.modify(
        f"dn: {ALICE_DN}\nchangetype: modify\nreplace: telephoneNumber\n"
        "telephoneNumber: not a number\n"
    )
    with running_scim_server() as scim:
        (tmp_path / "bind.pw").write_text(READER_PASSWORD + "\n")
        (tmp_path / "wiki.token").write_text("wiki-scim-token-0123456789abcdef")
        path = tmp_path / "provisiond.yaml"
        path.write_text(
            CONFIG.format(
                url=slapd.url,
                bind_dn=READER_DN,
                people=seed.PEOPLE,
                groups=seed.GROUPS,
                scim=scim.url,
            )
        )
        pm = plugin_manager(entry_points=False)
        config = read_config(path, pm)
        parts = assemble(config, pm)
        store = await open_store(config)
        engine = Engine(parts.source, parts.slots, store, pm, config.settings.engine)
        try:
            with structlog.testing.capture_logs() as logged:
                report = await engine.cycle()
            assert report.result == "ok", report.error
            snapshot = await parts.source.fetch(None)
            assert snapshot is not None
            alice = next(u for u in snapshot.users.values() if u.username == "alice")

            problems = await store.problems("wiki", 10)
            (problem,) = [p for p in problems if p.key == ("user", alice.id)]
            assert problem.last_error is not None
            assert problem.last_error.startswith(
                f"user {ALICE_DN}: phone number 'not a number' cannot be read"
            ), problem.last_error
            assert alice.id not in problem.last_error

            (failed,) = [
                e
                for e in logged
                if e["event"] == "delivery failed" and e["object"] == f"user:{alice.id}"
            ]
            assert failed["entry"] == ALICE_DN
            assert failed["error"] == problem.last_error
            # The other users went through; bob's phone was normalised.
            assert report.targets["wiki"].delivered >= 1
        finally:
            await parts.aclose()
            await store.aclose()
