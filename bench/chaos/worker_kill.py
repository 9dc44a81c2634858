"""Chaos (issue 7, a): SMS under load while workers are SIGKILLed and restarted.

One `amnex serve`, `--workers` (3) `amnex worker` and the SMSC simulator (its own process,
bench/chaos/smsc_process.py) on a fresh PostgreSQL database `amnex_chaos_<random>` created on
the server of `--pg-url` and dropped at the end. `--messages` SMS go to the API at a steady
`--rate`; every `--kill-every` seconds a random worker is SIGKILLed and started again at once.
After the load, it waits (at most `--wait-s`) until every message is final, no receipt is owed
and every final message's webhook has arrived, then prints one table (bench/chaos/README.md).

    .venv/bin/python bench/chaos/worker_kill.py [--quick] [--messages 20000] [--rate 300]
        [--kill-every 3] [--workers 3] [--pg-url postgresql://postgres@127.0.0.1:5432/test]
        [--wait-s 120] [--lease-s 15] [--seed N] [--keep-logs]

Exits 1 if a message is lost or not final, a receipt was not applied, a duplicate submit has
no kill between its submits, or a final message's webhook never came.
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
    create_webhook_endpoint,
    quiet_cancelled_handlers,
    rng_for,
    send_load,
    wait_until_settled,
)


async def kill_loop(
    cluster: Cluster, every_s: float, stop: asyncio.Event, seed: int | None, kills: list[float]
) -> None:
    """Every `every_s`: SIGKILL a random worker and start a new one in its place."""
    rng, _ = rng_for(seed)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=every_s)
            return
        except TimeoutError:
            pass
        index = rng.randrange(len(cluster.workers))
        kills.append(time.time())
        cluster.kill_worker(index)
        cluster.start_worker(index)


async def scenario(cluster: Cluster, args: argparse.Namespace) -> bool:
    quiet_cancelled_handlers()
    receiver = Receiver()
    await receiver.start()
    kills: list[float] = []
    try:
        await create_webhook_endpoint(cluster, receiver)
        await asyncio.sleep(3.0)  # the workers import, bind and LISTEN
        stop = asyncio.Event()
        killer = asyncio.create_task(kill_loop(cluster, args.kill_every, stop, args.seed, kills))
        load = Load()
        try:
            cap_s = args.messages / args.rate * 2 + 60
            load = await send_load(cluster, args.messages, args.rate, cap_s)
        finally:
            stop.set()
            await asyncio.wait_for(killer, timeout=30)
        print(
            f"load done: {len(load.accepted):,} accepted in {load.elapsed_s:.1f}s, "
            f"{len(kills)} kills; waiting until settled",
            flush=True,
        )
        async with httpx.AsyncClient() as client:
            waited = await wait_until_settled(cluster, client, receiver, load, args.wait_s)
            report = await build_report(
                cluster,
                client,
                receiver,
                load,
                waited_s=waited,
                fault_times=kills,
                fault_kind="kill",
                extra=[
                    ("workers SIGKILLed and restarted", len(kills)),
                    ("worker processes started", cluster.worker_starts),
                ],
            )
    finally:
        await receiver.close()
    report.print(
        f"worker_kill: {args.messages:,} SMS at {args.rate:g}/s, {args.workers} workers, "
        f"a SIGKILL every {args.kill_every:g}s, lease {args.lease_s:g}s, seed {args.seed}"
    )
    return report.ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills")
    args = parser.parse_args(argv)
    apply_quick(args, argv)
    _, args.seed = rng_for(args.seed)
    cluster = Cluster(args.pg_url, args.workers, args.lease_s, keep_logs=args.keep_logs)
    ok = False
    try:
        cluster.create_database()
        cluster.start_all()
        ok = asyncio.run(scenario(cluster, args))
    finally:
        cluster.failed = not ok
        cluster.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
