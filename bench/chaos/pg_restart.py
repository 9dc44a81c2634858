"""Chaos (issue 7, c): SMS under load while PostgreSQL restarts.

A PostgreSQL server of the run's own (`initdb` into a temporary directory, trust auth,
127.0.0.1 at a free port: never the machine's 5432), one `amnex serve`, `--workers` (3)
`amnex worker` and the SMSC simulator (bench/chaos/smsc_process.py). `--messages` SMS go to
the API at a steady `--rate`; once `--restart-at` (40%) of them have been sent, the server is
stopped (`pg_ctl stop -m fast`, or `--stop-mode immediate`: a crash, recovery at start), left
down `--down-s` (5) seconds and started again, and the load goes on. Meanwhile the API may
answer `503 database_unavailable`: each send carries an Idempotency-Key and a 503 is retried
(at most `--retries` times, after its Retry-After), every retry counted. After the load it
waits (at most `--wait-s`) until every message is final, no receipt is owed and every final
message's webhook has arrived, then prints one table (bench/chaos/README.md).

    .venv/bin/python bench/chaos/pg_restart.py [--quick] [--messages 20000] [--rate 300]
        [--restart-at 0.4] [--down-s 5] [--stop-mode fast|immediate] [--retries 60]
        [--workers 3] [--wait-s 120] [--lease-s 15] [--seed N] [--keep-logs]

Exits 1 if a message is lost or not final, a send is still refused after its retries, a
receipt was not applied, a duplicate submit does not overlap the outage, or a final message's
webhook never came. The server's data directory is removed at the end, whatever happened.
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
    TempPostgres,
    add_common_options,
    apply_quick,
    attempts_between,
    build_report,
    count_in_logs,
    create_webhook_endpoint,
    fmt_counts,
    latency_between,
    quiet_cancelled_handlers,
    rng_for,
    send_load,
    wait_until_settled,
)


async def restart_when(
    pg: TempPostgres,
    load: Load,
    args: argparse.Namespace,
    done: asyncio.Event,
    outage: list[float],
) -> None:
    """Once `restart_at` of the load has been sent: stop, wait `down_s`, start again.
    `outage` gets the times the stop began, the server was down, and it accepted again."""
    trigger = max(1, int(args.messages * args.restart_at))
    while load.requested < trigger:
        if done.is_set():
            return
        await asyncio.sleep(0.05)
    print(f"restarting PostgreSQL after {load.requested:,} sends ({args.stop_mode})", flush=True)
    outage.append(time.time())
    await asyncio.to_thread(pg.stop, args.stop_mode)
    outage.append(time.time())
    await asyncio.sleep(args.down_s)
    await asyncio.to_thread(pg.start)
    outage.append(time.time())
    print(f"PostgreSQL accepts connections again after {outage[2] - outage[0]:.1f}s", flush=True)


async def scenario(cluster: Cluster, pg: TempPostgres, args: argparse.Namespace) -> bool:
    quiet_cancelled_handlers()
    receiver = Receiver()
    await receiver.start()
    outage: list[float] = []
    try:
        await create_webhook_endpoint(cluster, receiver)
        await asyncio.sleep(3.0)  # the workers import, bind and LISTEN
        load = Load()
        done = asyncio.Event()
        restarter = asyncio.create_task(restart_when(pg, load, args, done, outage))
        try:
            cap_s = args.messages / args.rate * 2 + 60
            await send_load(
                cluster, args.messages, args.rate, cap_s, retries=args.retries, load=load
            )
        finally:
            done.set()
            await asyncio.wait_for(restarter, timeout=180)
        print(
            f"load done: {len(load.accepted):,} accepted in {load.elapsed_s:.1f}s, "
            f"{sum(load.retried.values()):,} answers retried; waiting until settled",
            flush=True,
        )
        async with httpx.AsyncClient() as client:
            waited = await wait_until_settled(cluster, client, receiver, load, args.wait_s)
            extra: list[tuple[str, object]] = []
            spans: list[tuple[float, float]] = []
            if len(outage) == 3:
                began, down, back = outage
                spans.append((began, back))
                refused = [t for t, label, _, _ in load.attempts if not label.startswith("2")]
                extra += [
                    (
                        "PostgreSQL outage: stop / down / start (s)",
                        f"{down - began:.1f} / {args.down_s:g} / {back - down - args.down_s:.1f}"
                        f" = {back - began:.1f} s, after {args.restart_at:.0%} of the load",
                    ),
                    (
                        "answers while it was down (retries included)",
                        fmt_counts(attempts_between(load, began, back)),
                    ),
                    (
                        "answer latency p50 / p99: while down / otherwise",
                        f"{latency_between(load, began, back)} / "
                        f"{latency_between(load, began, back, inside=False)}",
                    ),
                    (
                        "API refusing: first to last non-2xx answer (s)",
                        f"{max(refused) - min(refused):.1f}" if refused else "none",
                    ),
                ]
            else:
                extra.append(("PostgreSQL outage", "none: the load ended before the trigger"))
            extra += [
                ("answers retried (each retry of a send)", fmt_counts(load.retried)),
                ("sends retried at least once / replayed by Idempotency-Key", _retried(load)),
                ("workers alive at the end (none restarted)", cluster.workers_alive()),
                (
                    "log lines 'Traceback' (serve / workers)",
                    f"{count_in_logs(cluster.workdir, 'serve.log', 'Traceback'):,} / "
                    f"{count_in_logs(cluster.workdir, 'worker-*.log', 'Traceback'):,}",
                ),
            ]
            report = await build_report(
                cluster,
                client,
                receiver,
                load,
                waited_s=waited,
                fault_times=[],
                fault_kind="outage overlapping",
                fault_spans=spans,
                extra=extra,
            )
            report.must("sends still refused after their retries", load.gave_up)
            if len(outage) != 3:
                report.must("restarts of PostgreSQL done", 0, expected=1)
    finally:
        await receiver.close()
    report.print(
        f"pg_restart: {args.messages:,} SMS at {args.rate:g}/s, {args.workers} workers, "
        f"PostgreSQL stopped ({args.stop_mode}) at {args.restart_at:.0%} of the load for "
        f"{args.down_s:g}s, lease {args.lease_s:g}s"
    )
    return report.ok


def _retried(load: Load) -> str:
    return f"{load.sends_retried:,} / {load.replayed:,}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser, pg_url=False)
    parser.add_argument("--restart-at", type=float, default=0.4, help="share of the load sent")
    parser.add_argument("--down-s", type=float, default=5.0, help="seconds between stop and start")
    parser.add_argument("--stop-mode", choices=["fast", "immediate"], default="fast")
    parser.add_argument("--retries", type=int, default=60, help="retries of one send on 503")
    args = parser.parse_args(argv)
    apply_quick(args, argv)
    _, args.seed = rng_for(args.seed)
    pg = TempPostgres()
    cluster: Cluster | None = None
    ok = False
    try:
        pg.init()
        pg.start()
        cluster = Cluster(pg.admin_url, args.workers, args.lease_s, keep_logs=args.keep_logs)
        cluster.create_database()
        cluster.start_all()
        ok = asyncio.run(scenario(cluster, pg, args))
    finally:
        if cluster is not None:
            cluster.failed = not ok
            if cluster.failed or args.keep_logs:
                pg.copy_log(cluster.workdir)
            cluster.close()
        pg.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
