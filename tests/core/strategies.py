"""Hypothesis strategies for directory records and snapshots."""

from __future__ import annotations

from hypothesis import strategies as st

from daemon.model import AccountState, Group, Snapshot, User, make_group

IDS = [f"u{i}" for i in range(12)]
GIDS = [f"g{i}" for i in range(5)]
text = st.sampled_from(["a", "b", "Åsa", "x y", ""])
opt = st.none() | st.sampled_from(["Engineer", "Sales", "+46701234567", "Δ"])


@st.composite
def users(draw: st.DrawFn, uid: str) -> User:
    return User(
        id=uid,
        username=f"{uid}-{draw(st.sampled_from(['a', 'b']))}",
        email=f"{uid}@{draw(st.sampled_from(['x.example', 'y.example']))}",
        given_name=draw(text),
        family_name=draw(text),
        display_name=draw(opt),
        title=draw(opt),
        phone=draw(opt),
        department=draw(opt),
        manager=draw(st.none() | st.sampled_from(IDS)),
        state=draw(st.sampled_from([AccountState.ACTIVE, AccountState.SUSPENDED])),
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    uids = draw(st.lists(st.sampled_from(IDS), unique=True))
    us = [draw(users(uid)) for uid in uids]
    gids = draw(st.lists(st.sampled_from(GIDS), unique=True))
    groups: list[Group] = []
    for gid in gids:
        members = draw(st.lists(st.sampled_from(uids), unique=True)) if uids else []
        groups.append(make_group(gid, draw(st.sampled_from(["Eng", "Sales", gid])), members))
    return Snapshot.of(us, groups)
