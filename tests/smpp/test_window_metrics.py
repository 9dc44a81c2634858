"""SMPP window metrics: `amnex_smpp_window_in_use` follows the submits awaiting their
response, and `amnex_smpp_window_size` the bound sessions, read at scrape time, over real
sockets to the SMSC simulator."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

from amnex.channels.base import TemporaryDeliveryError
from amnex.channels.smpp import pdu
from amnex.channels.smpp.connector import SmppConnector, SmppConnectorConfig, SubmittedParts
from amnex.simulators.smsc import SmscSimulator
from support import StartSmsc, eventually

MakeConnector = Callable[..., Awaitable[SmppConnector]]
WINDOW = 5


async def acknowledge(_received: pdu.DeliverSm | pdu.DataSm) -> pdu.CommandStatus:
    return pdu.CommandStatus.ESME_ROK


@pytest.fixture
async def make_connector() -> AsyncIterator[MakeConnector]:
    """Bound connectors with a small window and fast reconnects; all closed afterwards."""
    connectors: list[SmppConnector] = []

    async def make(smsc: SmscSimulator, **overrides: Any) -> SmppConnector:
        options: dict[str, Any] = {
            "id": "conn_" + secrets.token_hex(4),  # fresh metric labels per test
            "name": "Window test",
            "host": smsc.host,
            "port": smsc.port,
            "system_id": "amnex",
            "password": "secret",
            "window": WINDOW,
            "response_timeout_s": 10.0,
            "reconnect_min_s": 0.01,
            "reconnect_max_s": 0.05,
        } | overrides
        connector = SmppConnector(
            SmppConnectorConfig(**options), on_deliver=acknowledge, rng=random.Random(7)
        )
        connectors.append(connector)
        await connector.start()
        assert await connector.wait_up(5.0)
        return connector

    yield make
    for connector in connectors:
        await connector.close()


def window(name: str, connector: SmppConnector) -> float | None:
    """The sample a scrape shows (None: no series for this connector)."""
    return REGISTRY.get_sample_value(name, {"connector": connector.config.id})


def in_use(connector: SmppConnector) -> Callable[[], Awaitable[float | None]]:
    async def probe() -> float | None:
        return window("amnex_smpp_window_in_use", connector)

    return probe


def send(connector: SmppConnector, n: int) -> list[asyncio.Task[SubmittedParts]]:
    return [
        asyncio.create_task(
            connector.submit_text(source="Amnex", destination=f"4915112345{i:03d}", text="hi")
        )
        for i in range(n)
    ]


async def test_window_in_use_rises_while_responses_are_held_and_is_zero_after_them(
    start_smsc: StartSmsc, make_connector: MakeConnector
) -> None:
    # Given a connector with two bound sessions of window 5
    smsc = await start_smsc()
    connector = await make_connector(smsc, binds=2)
    await eventually(
        lambda: asyncio.sleep(0, window("amnex_smpp_window_size", connector)),
        lambda size: size == 2 * WINDOW,
    )
    assert window("amnex_smpp_window_in_use", connector) == 0
    # When the SMSC holds its submit_sm_resp back and seven submits go out
    smsc.response_delay_s = 1.5
    tasks = send(connector, 7)
    # Then the gauge counts the seven awaiting their response, over both sessions
    await eventually(in_use(connector), lambda n: n == 7)
    assert f'amnex_smpp_window_in_use{{connector="{connector.config.id}"}} 7.0' in (
        generate_latest().decode()
    )
    # And once the responses arrive, nothing is in use and the window is unchanged
    results = await asyncio.gather(*tasks)
    assert all(len(result.provider_message_ids) == 1 for result in results)
    assert window("amnex_smpp_window_in_use", connector) == 0
    assert window("amnex_smpp_window_size", connector) == 2 * WINDOW


async def test_submits_that_die_with_their_session_leave_the_window(
    start_smsc: StartSmsc, make_connector: MakeConnector
) -> None:
    # Given four submits awaiting responses the SMSC holds back for longer than the test
    smsc = await start_smsc(response_delay_s=30.0)
    connector = await make_connector(smsc)
    tasks = send(connector, 4)
    await eventually(in_use(connector), lambda n: n == 4)
    # When the SMSC drops the connection
    smsc.disconnect_all()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    # Then every submit fails retryably, and none is still counted in the window
    assert all(isinstance(o, TemporaryDeliveryError) for o in outcomes), outcomes
    assert {o.code for o in outcomes if isinstance(o, TemporaryDeliveryError)} == {
        "connection_lost"
    }
    assert window("amnex_smpp_window_in_use", connector) == 0
    # And the window comes back with the bind, empty
    await eventually(
        lambda: asyncio.sleep(0, window("amnex_smpp_window_size", connector)),
        lambda size: size == WINDOW,
    )
    assert window("amnex_smpp_window_in_use", connector) == 0


async def test_window_size_is_zero_while_unbound_and_the_series_ends_with_the_connector(
    start_smsc: StartSmsc, make_connector: MakeConnector
) -> None:
    # Given a bound connector
    smsc = await start_smsc()
    connector = await make_connector(smsc, binds=3)
    await eventually(
        lambda: asyncio.sleep(0, window("amnex_smpp_window_size", connector)),
        lambda size: size == 3 * WINDOW,
    )
    # When the SMSC goes away, the connector may use no window at all
    await smsc.stop()
    await eventually(
        lambda: asyncio.sleep(0, window("amnex_smpp_window_size", connector)),
        lambda size: size == 0,
    )
    assert window("amnex_smpp_window_in_use", connector) == 0
    # And a closed connector is no longer reported
    await connector.close()
    assert window("amnex_smpp_window_size", connector) is None
    assert window("amnex_smpp_window_in_use", connector) is None
