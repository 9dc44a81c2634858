"""Chaos (issue 7, d): SMS under load while Redis is away for `--outage-s` seconds.

One `amnex serve`, `--workers` (3) `amnex worker` and the SMSC simulator
(bench/chaos/smsc_process.py) on a fresh PostgreSQL database `amnex_chaos_<random>` created on
the server of `--pg-url` and dropped at the end, with `AMNEX_REDIS_URL` pointing at a
redis-server of the run's own (127.0.0.1 at a free port: never the machine's 6379, nothing
on disk). The connector gets `--binds` (one per worker) SMPP binds and a throughput limit,
`--smpp-throughput` per second (100; 15 in quick mode: below the rate the API achieves here,
so a backlog forms and the limit paces it), which the workers share through Redis; with Redis
away each worker paces alone at its share, rate * its binds / binds
(amnex.channels.smpp.connector). `--messages` SMS go to the API at a
steady `--rate`; once `--stop-at` (40%) of them have been sent, redis-server is stopped
(SIGTERM), left down `--outage-s` (30; 10 in quick mode) seconds and started again (empty).
Sends answered 503 are retried (Idempotency-Key, at most `--retries` times) and counted; none
are expected: Redis holds counters, not records. `/readyz` is polled twice a second.

After the load it waits (at most `--wait-s` plus the time the throughput limit needs for the
whole load) until every message is final, no receipt is owed and every final message's webhook
has arrived, then prints one table (bench/chaos/README.md), including how the API's rate
limiter (fail-open: RateLimit-Remaining equal to the limit means "not counted") and the
shared SMPP throughput budget (submit_sm per second at the simulator, before, during and after
the outage) behaved.

    .venv/bin/python bench/chaos/redis_stop.py [--quick] [--messages 20000] [--rate 300]
        [--stop-at 0.4] [--outage-s 30] [--smpp-throughput 100] [--binds 3] [--retries 60]
        [--workers 3]
        [--pg-url postgresql://postgres@127.0.0.1:5432/test] [--wait-s 120] [--keep-logs]

Exits 1 if a message is lost or not final, a send is still refused after its retries, a
receipt was not applied, any message was submitted twice (nothing here may cause it), or a
final message's webhook never came.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence

import httpx
from common import (
    Cluster,
    Load,
    Receiver,
    TempRedis,
    add_common_options,
    apply_quick,
    attempts_between,
    build_report,
    control,
    count_in_logs,
    create_webhook_endpoint,
    fmt_counts,
    latency_between,
    quiet_cancelled_handlers,
    rng_for,
    send_load,
    wait_until_settled,
)

# The connector's own process-local pacing falls back to this after a failed Redis call, and
# asks Redis again only after _REDIS_RETRY_S (30 s) in amnex.channels.smpp.connector.
BUDGET_DOWN = "shared throughput budget unavailable"
BUDGET_BACK = "shared throughput budget is back"


async def stop_when(
    redis: TempRedis,
    load: Load,
    args: argparse.Namespace,
    done: asyncio.Event,
    outage: list[float],
) -> None:
    """Once `stop_at` of the load has been sent: stop redis-server, wait, start it again."""
    trigger = max(1, int(args.messages * args.stop_at))
    while load.requested < trigger:
        if done.is_set():
            return
        await asyncio.sleep(0.05)
    print(f"stopping Redis after {load.requested:,} sends for {args.outage_s:g}s", flush=True)
    outage.append(time.time())
    await asyncio.to_thread(redis.stop)
    await asyncio.sleep(args.outage_s)
    await asyncio.to_thread(redis.start)
    outage.append(time.time())
    print(f"Redis answers again after {outage[1] - outage[0]:.1f}s", flush=True)


async def poll_ready(cluster: Cluster, done: asyncio.Event, seen: list[tuple[float, int]]) -> None:
    async with httpx.AsyncClient(base_url=cluster.api_url, timeout=5) as client:
        while not done.is_set():
            try:
                status = (await client.get("/readyz")).status_code
            except httpx.HTTPError:
                status = 0
            seen.append((time.time(), status))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=0.5)


def per_second(times: list[float], start: float, end: float) -> str:
    """submit_sm per second in [start, end): the mean, and the busiest whole second."""
    inside = [t for t in times if start <= t < end]
    if not inside or end <= start:
        return "none"
    busiest = max(Counter(int(t) for t in inside).values())
    return f"{len(inside) / (end - start):.0f}/s mean, {busiest}/s busiest ({len(inside):,})"


async def scenario(cluster: Cluster, redis: TempRedis, args: argparse.Namespace) -> bool:
    quiet_cancelled_handlers()
    receiver = Receiver()
    await receiver.start()
    outage: list[float] = []
    ready: list[tuple[float, int]] = []
    try:
        await create_webhook_endpoint(cluster, receiver)
        await asyncio.sleep(3.0)  # the workers import, bind and LISTEN
        load = Load()
        done, polled = asyncio.Event(), asyncio.Event()
        stopper = asyncio.create_task(stop_when(redis, load, args, done, outage))
        poller = asyncio.create_task(poll_ready(cluster, polled, ready))
        try:
            cap_s = args.messages / args.rate * 2 + 60
            await send_load(
                cluster, args.messages, args.rate, cap_s, retries=args.retries, load=load
            )
        finally:
            # An outage that began runs to its end (Redis started again) before the settling.
            done.set()
            await asyncio.wait_for(stopper, timeout=args.outage_s + 120)
            polled.set()
            await asyncio.wait_for(poller, timeout=30)
        print(
            f"load done: {len(load.accepted):,} accepted in {load.elapsed_s:.1f}s, "
            f"{sum(load.retried.values()):,} answers retried; waiting until settled",
            flush=True,
        )
        async with httpx.AsyncClient() as client:
            wait_s = args.wait_s + args.messages / args.smpp_throughput
            waited = await wait_until_settled(cluster, client, receiver, load, wait_s)
            record = await control(client, cluster, "GET", "/record")
            submits = [float(t) for _, _, t in record["submits"]]
            extra: list[tuple[str, object]] = []
            if len(outage) == 2:
                began, back = outage
                opened = [t for t, _, open_, _ in load.attempts if open_]
                opened_in = sum(1 for t in opened if began <= t < back)
                opened_after = [t - back for t in opened if t >= back]
                ready_in = Counter(s for t, s in ready if began <= t < back)
                ready_out = Counter(s for t, s in ready if not began <= t < back)
                last = max(submits) + 1 if submits else back
                extra += [
                    (
                        "Redis outage (s)",
                        f"{back - began:.1f}, from {began - load.started:.1f} s into the load",
                    ),
                    ("answers during the outage", fmt_counts(attempts_between(load, began, back))),
                    (
                        "answer latency p50 / p99: during / outside the outage",
                        f"{latency_between(load, began, back)} / "
                        f"{latency_between(load, began, back, inside=False)}",
                    ),
                    (
                        "answers the API's limiter let through uncounted: during / outside",
                        f"{opened_in:,} / {len(opened) - opened_in:,}"
                        + (
                            f" (the last {max(opened_after):.1f} s after Redis was back)"
                            if opened_after
                            else ""
                        ),
                    ),
                    (
                        "/readyz during the outage / outside (0: no answer)",
                        f"{_statuses(ready_in)} / {_statuses(ready_out)}",
                    ),
                    (
                        f"submit_sm (limit {args.smpp_throughput:g}/s shared): before the outage",
                        per_second(submits, load.started, began),
                    ),
                    ("submit_sm during the outage", per_second(submits, began, back)),
                    ("submit_sm in the 30 s after it", per_second(submits, back, back + 30)),
                    ("submit_sm later", per_second(submits, back + 30, last)),
                ]
            else:
                extra.append(("Redis outage", "none: the load ended before the trigger"))
            extra += [
                ("answers retried (each retry of a send)", fmt_counts(load.retried)),
                ("workers alive at the end", cluster.workers_alive()),
                (
                    "worker log: budget unavailable / back (lines)",
                    f"{count_in_logs(cluster.workdir, 'worker-*.log', BUDGET_DOWN)} / "
                    f"{count_in_logs(cluster.workdir, 'worker-*.log', BUDGET_BACK)}",
                ),
                (
                    "serve log: 'rate limiter storage unavailable' (lines)",
                    count_in_logs(cluster.workdir, "serve.log", "rate limiter storage unavailable"),
                ),
            ]
            report = await build_report(
                cluster,
                client,
                receiver,
                load,
                waited_s=waited,
                fault_times=[],
                fault_kind="worker or SMSC fault (none in this run)",
                extra=extra,
            )
            report.must("sends still refused after their retries", load.gave_up)
            if len(outage) != 2:
                report.must("Redis outages done", 0, expected=1)
    finally:
        await receiver.close()
    report.print(
        f"redis_stop: {args.messages:,} SMS at {args.rate:g}/s, {args.workers} workers, "
        f"Redis stopped at {args.stop_at:.0%} of the load for {args.outage_s:g}s, "
        f"SMPP throughput {args.smpp_throughput:g}/s over {args.binds} binds"
    )
    return report.ok


def _statuses(counts: Counter[int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser)
    parser.add_argument("--stop-at", type=float, default=0.4, help="share of the load sent")
    parser.add_argument("--outage-s", type=float, default=None, help="30 (10 in quick mode)")
    parser.add_argument(
        "--smpp-throughput", type=float, default=None, help="per second: 100 (15 in quick mode)"
    )
    parser.add_argument("--binds", type=int, default=None, help="connector binds (--workers)")
    parser.add_argument("--retries", type=int, default=60, help="retries of one send on 503")
    args = parser.parse_args(argv)
    apply_quick(args, argv)
    if args.outage_s is None:
        args.outage_s = 10.0 if args.quick else 30.0
    if args.smpp_throughput is None:
        args.smpp_throughput = 15.0 if args.quick else 100.0
    if args.binds is None:
        args.binds = args.workers
    _, args.seed = rng_for(args.seed)
    redis = TempRedis()
    cluster = Cluster(args.pg_url, args.workers, args.lease_s, keep_logs=args.keep_logs)
    ok = False
    try:
        redis.start()
        cluster.create_database()
        cluster.start_all(
            extra_env={"AMNEX_REDIS_URL": redis.url},
            connector_config={"throughput_per_s": args.smpp_throughput, "binds": args.binds},
        )
        ok = asyncio.run(scenario(cluster, redis, args))
    finally:
        cluster.failed = not ok
        if cluster.failed or args.keep_logs:
            redis.copy_log(cluster.workdir)
        cluster.close()
        redis.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
