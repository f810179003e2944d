"""The jumpcloud source's event-driven reads through the engine, against the FAKE JumpCloud.

fake_jumpcloud.py is a fake built from JumpCloud's documented wire format, not
JumpCloud. The engine here is main's: it compares whole snapshots, so this
shows the re-read snapshots (with their versions, ``base`` and ``changed``)
are whole and true, and that a quiet poll costs no JumpCloud request.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from daemon.sources.jumpcloud import JumpCloudSource
from tests.core.support import RecordingTarget, engine, slot
from tests.jumpcloud.fake_jumpcloud import FakeJumpCloud
from tests.jumpcloud.test_jumpcloud_events import Steps, directory, uid, watching

MakeSource = Callable[..., JumpCloudSource]


async def test_a_watched_change_reaches_the_target_alone(
    fake: FakeJumpCloud, make_source: MakeSource, tmp_path: Path
) -> None:
    directory(fake)
    steps = Steps()
    source = make_source(sleep=steps)
    target = RecordingTarget()
    eng = await engine(tmp_path, source, [slot(target, ["Engineering"])])  # type: ignore[arg-type]
    try:
        report = await eng.cycle()
        assert report.result == "ok" and len(target.holding) == 11  # 10 users and the group
        async with watching(source, steps):
            fake.requests.clear()
            assert (await eng.cycle()).result == "quiet"
            assert fake.api_paths() == []  # a quiet poll reads nothing from JumpCloud
            fake.update_user(uid(3), department="Platform")
            fake.remove_member("g1", uid(4))
            await steps.poll()
            target.calls.clear()
            report = await eng.cycle()
        assert report.result == "ok"
        assert sorted(fake.api_paths()) == [
            f"/api/systemusers/{uid(3)}",
            "/api/v2/usergroups/g1",
            "/api/v2/usergroups/g1/members",
        ]
        sent = {d.object_id for call in target.calls for d in call}
        assert sent == {uid(3), uid(4), "g1"}  # uid(4) left the bound group: suspended
        assert target.holding[("user", uid(3))].department == "Platform"  # type: ignore[union-attr]
    finally:
        await eng.store.aclose()  # type: ignore[attr-defined]
