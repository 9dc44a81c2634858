"""Carriers: bind leases spread a connector's slots over workers, one owner per slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from amnex.carriers import leases as leases_module
from amnex.carriers.leases import (
    BindLease,
    BindLeaseKeeper,
    BindLeaseWorker,
    SlotPlan,
    fair_share,
    is_dead_local_owner,
    lease_owner_id,
    plan_slots,
    try_take_slot,
)
from amnex.channels.smpp.connector import ThroughputLimiter
from amnex.clock import utc_now
from amnex.config import Settings
from amnex.db.engine import Database
from support import add_smpp_route, with_master_key

Keepers = Callable[..., BindLeaseKeeper]


@pytest.mark.parametrize(
    ("binds", "live", "share"),
    [(4, 1, 4), (4, 2, 2), (4, 3, 2), (4, 5, 1), (1, 3, 1), (3, 2, 2), (2, 0, 2)],
)
def test_fair_share_is_the_ceiling_of_binds_over_live_workers(
    binds: int, live: int, share: int
) -> None:
    assert fair_share(binds, live) == share


@pytest.mark.parametrize(
    ("binds", "mine", "others", "live", "plan"),
    [
        (4, set(), set(), 1, SlotPlan(release=(), take=(0, 1, 2, 3))),
        (4, set(), {0, 1, 2, 3}, 2, SlotPlan(release=(), take=())),
        (4, {0, 1, 2, 3}, set(), 2, SlotPlan(release=(2, 3), take=())),
        (4, {0, 1}, {2, 3}, 2, SlotPlan(release=(), take=())),
        (4, {3}, {0}, 2, SlotPlan(release=(), take=(1,))),
        (2, {0, 1, 2, 3}, set(), 1, SlotPlan(release=(2, 3), take=())),  # binds lowered
        (0, {0}, set(), 1, SlotPlan(release=(0,), take=())),  # connector disabled
    ],
)
def test_a_plan_keeps_the_fair_share_and_takes_only_free_slots(
    binds: int, mine: set[int], others: set[int], live: int, plan: SlotPlan
) -> None:
    assert plan_slots(binds, mine, others, live) == plan


@pytest.fixture
async def connector_id(db: Database, settings: Settings) -> str:
    return await add_smpp_route(db, with_master_key(settings), host="127.0.0.1", port=1, binds=4)


@pytest.fixture
async def keepers(db: Database) -> AsyncIterator[Keepers]:
    made: list[BindLeaseKeeper] = []

    def make(owner: str, *, ttl_s: float = 20.0, renew_s: float = 5.0) -> BindLeaseKeeper:
        keeper = BindLeaseKeeper(db, owner=owner, ttl_s=ttl_s, renew_s=renew_s)
        made.append(keeper)
        return keeper

    yield make
    for keeper in made:
        await keeper.close()


async def owners(db: Database, connector_id: str) -> dict[int, str]:
    async with db.read_session() as session:
        rows = await session.execute(
            select(BindLease.slot, BindLease.owner).where(BindLease.connector_id == connector_id)
        )
        return {row.slot: row.owner for row in rows}


async def test_two_workers_end_with_half_the_binds_each(
    db: Database, connector_id: str, keepers: Keepers
) -> None:
    # Given a 4-bind connector and a first worker, which takes every slot
    a, b = keepers("worker-a"), keepers("worker-b")
    await a.renew()
    assert a.held(connector_id) == {0, 1, 2, 3}

    # When a second worker joins and both renew
    await b.renew()  # counted as live, but every slot is taken
    assert b.held(connector_id) == frozenset()
    await a.renew()  # gives back what is beyond its share
    await b.renew()  # takes it

    # Then each holds two, and the table agrees
    assert a.held(connector_id) == {0, 1}
    assert b.held(connector_id) == {2, 3}
    assert await owners(db, connector_id) == {
        0: "worker-a",
        1: "worker-a",
        2: "worker-b",
        3: "worker-b",
    }

    # And further renewals change nothing
    version_a, version_b = a.version, b.version
    await a.renew()
    await b.renew()
    assert (a.version, b.version) == (version_a, version_b)


async def test_a_worker_that_stops_leaves_its_slots_to_the_other_within_a_renewal(
    db: Database, connector_id: str, keepers: Keepers
) -> None:
    # Given two workers holding two slots each
    a, b = keepers("worker-a"), keepers("worker-b")
    for keeper in (a, b, a, b):
        await keeper.renew()
    assert len(a.held(connector_id)) == len(b.held(connector_id)) == 2

    # When one stops gracefully
    await b.close()
    assert b.held(connector_id) == frozenset()

    # Then the other takes all four at its next renewal
    await a.renew()
    assert a.held(connector_id) == {0, 1, 2, 3}
    async with db.read_session() as session:
        assert not list(
            await session.scalars(
                select(BindLeaseWorker).where(BindLeaseWorker.owner == "worker-b")
            )
        )


async def test_an_expired_holder_loses_its_slots_to_the_other(
    db: Database, connector_id: str, keepers: Keepers
) -> None:
    # Given two workers holding two slots each
    a, b = keepers("worker-a"), keepers("worker-b")
    for keeper in (a, b, a, b):
        await keeper.renew()
    held_by_b = b.held(connector_id)
    assert len(held_by_b) == 2

    # When the second stops renewing long enough for its leases to end
    past = utc_now() - timedelta(seconds=1)
    async with db.unit_of_work() as session:
        await session.execute(
            update(BindLease).where(BindLease.owner == "worker-b").values(expires_at=past)
        )
        await session.execute(
            update(BindLeaseWorker)
            .where(BindLeaseWorker.owner == "worker-b")
            .values(expires_at=past)
        )

    # Then the first takes them at its next renewal
    await a.renew()
    assert a.held(connector_id) == {0, 1, 2, 3}
    # And the late one, when it comes back, finds them gone and binds nothing
    await b.renew()
    assert b.held(connector_id) == frozenset()
    assert set((await owners(db, connector_id)).values()) == {"worker-a"}


async def test_a_worker_that_cannot_renew_gives_up_its_slots_before_they_expire(
    db: Database, connector_id: str, keepers: Keepers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker holding every slot on a short lease
    a = keepers("worker-a", ttl_s=2.0, renew_s=0.5)
    for _ in range(20):  # on a busy machine a first take can outlast the 0.5-s renewal bound
        await a.renew()
        if a.held(connector_id):
            break
    assert a.held(connector_id) == {0, 1, 2, 3}
    loop = asyncio.get_running_loop()
    renewed_at = loop.time()

    # When its renewals fail (the database is unreachable)
    async def unreachable(*_args: object, **_kwargs: object) -> dict[str, frozenset[int]]:
        raise OSError("database unreachable")

    monkeypatch.setattr(leases_module, "balance_bind_leases", unreachable)
    await a.renew()
    assert a.held(connector_id) == {0, 1, 2, 3}  # one failure is tolerated
    while a.held(connector_id):
        await asyncio.sleep(0.05)
        await a.renew()

    # Then it gave them up while its lease still ran, so no other worker could hold them yet
    assert loop.time() < renewed_at + 2.0
    async with db.read_session() as session:
        expires = list(await session.scalars(select(BindLease.expires_at)))
    assert all(at > utc_now() for at in expires)


async def test_concurrent_takes_of_one_slot_have_one_winner(
    db: Database, connector_id: str
) -> None:
    # Given a slot whose lease expired
    now = utc_now()
    async with db.unit_of_work() as session:
        assert await try_take_slot(
            session, connector_id=connector_id, slot=0, owner="old", now=now, expires_at=now
        )

    # When ten workers try to take it at once, each in its own transaction
    async def take(owner: str) -> bool:
        async with db.unit_of_work() as session:
            at = utc_now()
            return await try_take_slot(
                session,
                connector_id=connector_id,
                slot=0,
                owner=owner,
                now=at,
                expires_at=at + timedelta(seconds=20),
            )

    results = await asyncio.gather(*(take(f"w{n}") for n in range(10)))

    # Then exactly one did, and the row names it
    assert sum(results) == 1
    winner = f"w{results.index(True)}"
    assert await owners(db, connector_id) == {0: winner}


async def test_a_burst_of_renewals_never_gives_one_slot_two_owners(
    db: Database, connector_id: str, keepers: Keepers
) -> None:
    # Given five workers renewing concurrently, over and over
    workers = [keepers(f"worker-{n}") for n in range(5)]
    for _ in range(6):
        await asyncio.gather(*(keeper.renew() for keeper in workers))

        # Then no slot is held by two workers, at any point, and the table agrees
        held = [slot for keeper in workers for slot in keeper.held(connector_id)]
        assert len(held) == len(set(held))
        assert set(held) <= {0, 1, 2, 3}
        table = await owners(db, connector_id)
        for keeper in workers:
            for slot in keeper.held(connector_id):
                assert table[slot] == keeper.owner
    # And with five workers and four binds, no worker holds more than one
    assert all(len(keeper.held(connector_id)) <= 1 for keeper in workers)
    assert sum(len(keeper.held(connector_id)) for keeper in workers) == 4


def test_a_lease_must_outlast_two_renewals() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        BindLeaseKeeper(None, owner="w", ttl_s=5.0, renew_s=5.0)  # type: ignore[arg-type]


async def test_without_a_shared_budget_a_process_paces_at_its_share_of_the_rate() -> None:
    # Given a 40/s connector of which this worker holds half the binds (no Redis)
    limiter = ThroughputLimiter("con_share", 40.0)
    limiter.set_share(0.5)
    loop = asyncio.get_running_loop()

    # When it sends a burst (2 tokens) and four more
    started = loop.time()
    for _ in range(6):
        await limiter.acquire()

    # Then the four took at least 4 / 20 s, not 4 / 40 s
    assert loop.time() - started >= 0.19


async def test_a_dead_worker_on_this_machine_loses_its_slots_at_once(
    db: Database, connector_id: str, keepers: Keepers
) -> None:
    # Given a worker of this machine holding every slot, whose process then ended (killed)
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()
    own_id = lease_owner_id()
    host, _pid, key, _suffix = own_id.rsplit(":", 3)
    if key == "-":
        pytest.skip("no /proc: this platform cannot tell a dead local process")
    dead = keepers(f"{host}:{gone.pid}:{key}:dead00")
    await dead.renew()
    assert dead.held(connector_id) == {0, 1, 2, 3}
    assert is_dead_local_owner(dead.owner)
    assert not is_dead_local_owner(own_id)  # this process is alive
    assert not is_dead_local_owner(f"elsewhere:{gone.pid}:0123456789ab:dead00")

    # When another worker renews, well before the dead one's leases expire
    survivor = keepers(own_id)
    await survivor.renew()

    # Then it holds every slot already
    assert survivor.held(connector_id) == {0, 1, 2, 3}
    assert set((await owners(db, connector_id)).values()) == {own_id}
