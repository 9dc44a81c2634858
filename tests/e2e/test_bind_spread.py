"""Two workers share one connector's binds through bind leases, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

import pytest

from amnex.channels.smpp.connector import SmppConnector
from amnex.channels.sms import SmsChannel
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.dispatch.worker import Dispatcher
from amnex.simulators.smsc import SmscSimulator
from amnex.worker_process import WorkerParts, build_dispatcher
from support import (
    AccountHandle,
    StartSmsc,
    add_smpp_route,
    eventually,
    make_account,
    serve_api,
    wait_for_status,
    with_master_key,
)

BINDS = 4


@pytest.fixture
def sms_settings(settings: Settings) -> Settings:
    return with_master_key(
        settings,
        route_cache_ttl_s=0.2,
        bind_lease_ttl_s=4.0,
        bind_lease_renew_s=0.3,
    )


@pytest.fixture
async def smsc(start_smsc: StartSmsc) -> SmscSimulator:
    return await start_smsc()


def connector_of(parts: WorkerParts, connector_id: str) -> SmppConnector | None:
    sms = parts.channels["sms"]
    assert isinstance(sms, SmsChannel)
    return sms.connectors.get(connector_id)


def bound(parts: WorkerParts, connector_id: str) -> int:
    connector = connector_of(parts, connector_id)
    return 0 if connector is None else connector.bound_sessions


@contextlib.asynccontextmanager
async def running(
    settings: Settings, db: Database
) -> AsyncIterator[tuple[WorkerParts, Dispatcher]]:
    """A worker in this process: its parts (channels, bind leases) and its dispatcher."""
    parts = await WorkerParts.start(settings, db)
    dispatcher = build_dispatcher(settings, db, parts.channels, poll_interval_s=0.05)
    task = asyncio.create_task(dispatcher.run())
    try:
        yield parts, dispatcher
    finally:
        dispatcher.stop()
        await task
        await parts.close()


@pytest.mark.parametrize("binds", [4, 1])
async def test_two_workers_open_the_connectors_binds_once_between_them_and_deliver(
    sms_settings: Settings, db: Database, smsc: SmscSimulator, binds: int
) -> None:
    # Given a connector with `binds` binds and two workers (with one bind, one worker holds
    # none: the messages it claims go back to the queue for the one that does)
    connector_id = await add_smpp_route(
        db, sms_settings, host=smsc.host, port=smsc.port, binds=binds, response_timeout_s=1.0
    )
    half = math.ceil(binds / 2)
    account: AccountHandle = await make_account(db, sms_number="+13125550142")
    async with running(sms_settings, db) as (first, _):
        async with running(sms_settings, db) as (second, _):
            # Then, once the leases settle, they share the binds: `binds` at the SMSC, not twice
            await eventually(
                lambda: asyncio.sleep(
                    0, sorted((bound(first, connector_id), bound(second, connector_id)))
                ),
                lambda counts: counts == [binds - half, half],
            )
            assert smsc.bound_sessions == binds

            # When messages are sent through the API
            async with serve_api(sms_settings, db) as api:
                ids = []
                for n in range(20):
                    response = await api.client.post(
                        "/v1/messages",
                        headers=account.headers,
                        json={"channel": "sms", "to": f"+1415555{n:04d}", "body": f"hi {n}"},
                    )
                    assert response.status_code == 201, response.text
                    ids.append(response.json()["id"])

                # Then every one is delivered, and the binds never outnumbered the connector's
                for message_id in ids:
                    await wait_for_status(api.client, account, message_id, {"delivered"})
                    assert smsc.bound_sessions <= binds
            assert len(smsc.messages()) == 20

        # When one worker stops, the other takes over every bind
        await eventually(lambda: asyncio.sleep(0, bound(first, connector_id)), lambda n: n == binds)
        assert smsc.bound_sessions == binds


async def test_a_connector_binds_only_the_slots_it_is_given(
    sms_settings: Settings, smsc: SmscSimulator
) -> None:
    from amnex.channels.smpp.config import SmppConnectorConfig

    async def ignore(*_args: object) -> None:
        return None

    config = SmppConnectorConfig(
        id="con_slots",
        name="slots",
        host=smsc.host,
        port=smsc.port,
        system_id="amnex",
        password="secret",
        binds=BINDS,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )
    connector = SmppConnector(config, on_deliver=ignore)  # type: ignore[arg-type]
    # Given a connector started with two of its four slots
    await connector.start({0, 1})
    try:
        await eventually(lambda: asyncio.sleep(0, smsc.bound_sessions), lambda n: n == 2)
        assert connector.slots == {0, 1}

        # When it is given three others, it unbinds the lost one and binds the new ones
        connector.set_slots({1, 2, 3})
        assert connector.bound_sessions <= 1  # slot 0 takes no submits from now on
        await eventually(lambda: asyncio.sleep(0, smsc.bound_sessions), lambda n: n == 3)
        await eventually(lambda: asyncio.sleep(0, connector.bound_sessions), lambda n: n == 3)

        # And with none, it holds no bind at all
        connector.set_slots(())
        assert not connector.is_up
        await eventually(lambda: asyncio.sleep(0, smsc.bound_sessions), lambda n: n == 0)
    finally:
        await connector.close()
