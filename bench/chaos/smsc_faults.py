"""Chaos (issue 7, b): SMS under load while the SMSC drops every bind and throttles in bursts.

One `amnex serve`, `--workers` (3) `amnex worker` and the SMSC simulator (its own process,
bench/chaos/smsc_process.py, answering each submit_sm after `--response-delay-ms` so that a
dropped connection catches submits in flight) on a fresh PostgreSQL database
`amnex_chaos_<random>` created on the server of `--pg-url` and dropped at the end.
`--messages` SMS go to the API at a steady `--rate`; every `--fault-every` seconds the
simulator either aborts every SMPP connection (`disconnect_all`) or answers every submit_sm
with ESME_RTHROTTLED for `--throttle-ms` (a carrier over its agreed rate throttles for a
time, whatever is sent meanwhile; `--throttle-burst N` throttles the next N submit_sm
instead, whenever they come), at random. After the load
it waits (at most `--wait-s`) until every message is final, no receipt is owed and every final
message's webhook has arrived, then prints one table (bench/chaos/README.md).

    .venv/bin/python bench/chaos/smsc_faults.py [--quick] [--messages 20000] [--rate 300]
        [--fault-every 2] [--throttle-ms 1000 | --throttle-burst N] [--response-delay-ms 200]
        [--workers 3]
        [--pg-url postgresql://postgres@127.0.0.1:5432/test] [--wait-s 120] [--seed N]

Exits 1 if a message is lost or not final, a receipt was not applied, a duplicate submit has
no disconnect or lost connection between its submits, or a final message's webhook never
came.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

import httpx
from common import (
    Cluster,
    Load,
    Receiver,
    add_common_options,
    apply_quick,
    build_report,
    control,
    create_webhook_endpoint,
    quiet_cancelled_handlers,
    rng_for,
    send_load,
    wait_until_settled,
)


async def fault_loop(
    cluster: Cluster,
    client: httpx.AsyncClient,
    args: argparse.Namespace,
    stop: asyncio.Event,
    disconnects: list[float],
    throttles: list[float],
) -> None:
    """Every `fault_every` seconds: drop every bind, or throttle submits for a while (or the
    next burst of them)."""
    rng, _ = rng_for(args.seed)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=args.fault_every)
            return
        except TimeoutError:
            pass
        if rng.random() < 0.5:
            disconnects.append(time.time())
            await control(client, cluster, "POST", "/disconnect")
        else:
            throttles.append(time.time())
            if args.throttle_burst:
                await control(client, cluster, "POST", f"/throttle/{args.throttle_burst}")
            else:
                await control(client, cluster, "POST", f"/throttle-for/{args.throttle_ms}")


async def scenario(cluster: Cluster, args: argparse.Namespace) -> bool:
    quiet_cancelled_handlers()
    receiver = Receiver()
    await receiver.start()
    disconnects: list[float] = []
    throttles: list[float] = []
    try:
        await create_webhook_endpoint(cluster, receiver)
        await asyncio.sleep(3.0)  # the workers import, bind and LISTEN
        async with httpx.AsyncClient() as client:
            stop = asyncio.Event()
            faults = asyncio.create_task(
                fault_loop(cluster, client, args, stop, disconnects, throttles)
            )
            load = Load()
            try:
                cap_s = args.messages / args.rate * 2 + 60
                load = await send_load(cluster, args.messages, args.rate, cap_s)
            finally:
                stop.set()
                await asyncio.wait_for(faults, timeout=30)
            print(
                f"load done: {len(load.accepted):,} accepted in {load.elapsed_s:.1f}s, "
                f"{len(disconnects)} disconnects, {len(throttles)} throttle bursts; "
                "waiting until settled",
                flush=True,
            )
            waited = await wait_until_settled(cluster, client, receiver, load, args.wait_s)
            report = await build_report(
                cluster,
                client,
                receiver,
                load,
                waited_s=waited,
                fault_times=disconnects,
                fault_kind="disconnect",
                extra=[
                    ("SMSC disconnects (every bind aborted)", len(disconnects)),
                    (
                        f"throttle bursts ({args.throttle_burst} submit_sm each)"
                        if args.throttle_burst
                        else f"throttle bursts ({args.throttle_ms:,} ms each)",
                        len(throttles),
                    ),
                    ("workers alive at the end", cluster.workers_alive()),
                ],
            )
    finally:
        await receiver.close()
    report.print(
        f"smsc_faults: {args.messages:,} SMS at {args.rate:g}/s, {args.workers} workers, "
        f"a fault every {args.fault_every:g}s, submit_sm_resp after {args.response_delay_ms} ms, "
        f"seed {args.seed}"
    )
    return report.ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser)
    parser.add_argument("--fault-every", type=float, default=2.0, help="seconds between faults")
    parser.add_argument("--throttle-ms", type=int, default=1000, help="a burst's length")
    parser.add_argument(
        "--throttle-burst", type=int, default=0, help="throttle this many submits instead"
    )
    parser.add_argument("--response-delay-ms", type=int, default=200, help="SMSC answer latency")
    args = parser.parse_args(argv)
    apply_quick(args, argv)
    _, args.seed = rng_for(args.seed)
    cluster = Cluster(args.pg_url, args.workers, args.lease_s, keep_logs=args.keep_logs)
    ok = False
    try:
        cluster.create_database()
        cluster.start_all(response_delay_ms=args.response_delay_ms)
        ok = asyncio.run(scenario(cluster, args))
    finally:
        cluster.failed = not ok
        cluster.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
