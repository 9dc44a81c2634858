"""End to end: the metrics an operator watches move as one SMS goes from accept through
dispatch (the worker's claim and outcome transactions), its receipt and the purge (the API
and worker share this process's registry)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from amnex.config import Settings
from amnex.db.engine import Database
from amnex.privacy.retention import purge_once
from amnex.simulators.smsc import SmscSimulator
from support import (
    StartSmsc,
    add_smpp_route,
    make_account,
    serve_system,
    wait_for_status,
    with_master_key,
)

SMS_NUMBER = "+13125550143"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_one_sms_moves_the_accept_dispatch_receipt_and_purge_metrics(
    settings: Settings, db: Database, start_smsc: StartSmsc
) -> None:
    smsc: SmscSimulator = await start_smsc(receipt_delay_s=0.05)
    sms_settings = with_master_key(settings, receipt_grace_s=0.0, route_cache_ttl_s=0.2)
    account = await make_account(db, sms_number=SMS_NUMBER)
    await add_smpp_route(db, sms_settings, host=smsc.host, port=smsc.port)
    watched = {
        "accepted": ("amnex_messages_accepted_total", {"channel": "sms"}),
        "sent": ("amnex_dispatch_outcomes_total", {"channel": "sms", "outcome": "sent"}),
        "delivered": ("amnex_messages_delivered_total", {"channel": "sms"}),
        "receipt_lag": ("amnex_receipt_lag_seconds_count", {}),
        "purged": ("amnex_purged_total", {"step": "content"}),
        **{
            f"{kind}_{what}": (f"amnex_worker_batch_{what}", {"kind": kind})
            for kind in ("claim", "outcome", "receipt")
            for what in ("size_sum", "seconds_count")
        },
    }

    def snapshot() -> dict[str, float]:
        return {key: value(name, **labels) for key, (name, labels) in watched.items()}

    def submits() -> float:
        """Accepted submit_sm over every connector (the connector id is made per test)."""
        return sum(
            sample.value
            for metric in REGISTRY.collect()
            if metric.name == "amnex_smpp_submits"
            for sample in metric.samples
            if sample.name == "amnex_smpp_submits_total"
            and sample.labels.get("outcome") == "accepted"
        )

    before, submits_before = snapshot(), submits()
    async with serve_system(sms_settings, db) as api:
        # Given an SMS accepted, submitted and receipted
        response = await api.client.post(
            "/v1/messages",
            headers=account.headers,
            json={"channel": "sms", "to": "+14155550100", "body": "Your code is 123456"},
        )
        assert response.status_code == 201, response.text
        await wait_for_status(api.client, account, response.json()["id"], {"delivered"})
        # When the purge runs too (it finds nothing: the write that made the message
        # delivered emptied its content, and counted that as the purge's content step)
        await purge_once(db, sms_settings)
        page = (await api.client.get("/metrics")).text
    after, submits_after = snapshot(), submits()

    # Then every stage counted it once
    assert {key: after[key] - before[key] for key in watched} == {
        "accepted": 1,
        "sent": 1,
        "delivered": 1,
        "receipt_lag": 1,
        "purged": 1,
        # one transaction of each kind in the worker, each writing this one SMS
        **{
            f"{kind}_{what}": 1
            for kind in ("claim", "outcome", "receipt")
            for what in ("size_sum", "seconds_count")
        },
    }
    assert submits_after - submits_before == 1
    assert value("amnex_receipt_lag_seconds_sum") >= 0
    # And the queue is empty at the scrape
    assert "amnex_queue_depth 0.0" in page
    assert "amnex_queue_oldest_due_age_seconds 0.0" in page
