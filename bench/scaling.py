"""Bench (issue 7): what scale-out needs, on PostgreSQL — CPU per message per process kind,
correct claiming with 1, 2 and 4 workers, and accept throughput with 1 and 2 `serve` processes.

This machine has 2 cores, so more processes cannot show a speed-up; what they can show is
whether scaling out is *sound* and what each message costs where:

- **pipeline runs** (`--workers`, default 1,2,4): one `amnex serve`, W `amnex worker` and the
  SMSC simulator (bench/chaos/smsc_process.py: receipts after 50 ms, a record of every
  submit_sm) on a fresh database `amnex_bench_<random>` of `--pg-url`'s server (dropped at the
  end), with `AMNEX_REDIS_URL=--redis-url` for every process. The connector gets W binds
  (window 50 each), so that every worker holds one (bind leases: with fewer binds than
  workers, a worker without one gives its messages back and only the others send). Once each
  worker holds its bind, wrk sends exactly `--messages` SMS (bench/post_message.lua, 64
  connections); the clock runs until every message is final. Per run: messages/s, delivered,
  duplicates (submit_sm the SMSC took beyond one per message: SMSC record vs `message_parts`),
  each worker's share of the sends (its own /metrics, `amnex_dispatch_outcomes_total`
  {channel="sms",outcome="sent"}), and the CPU time of each process kind per message
  (`/proc/<pid>/stat` user+sys before and after: serve, the workers, the simulator, wrk, and
  the PostgreSQL backends connected to the run's database, from `pg_stat_activity`).
- **accept runs** (`--serves`, default 1,2): one or two `amnex serve` on one fresh database,
  no worker, backpressure off (as bench/accept.py); one wrk per serve process running at the
  same time, together `--accept-requests` SMS over 64 connections. accepted/s = all 201s / the
  longest wrk's first-send-to-last-answer time.

Every run uses a fresh database. Rounds interleave the configurations; the table gives the
MEDIAN of `--runs` and each median's ratio to the baseline of the same invocation (1 serve
for accept, 1 worker for the pipeline; the 1-worker pipeline is also compared with 1-serve
acceptance).

    .venv/bin/python bench/scaling.py [--quick] [--messages 20000] [--accept-requests 20000]
        [--runs 3] [--workers 1,2,4] [--serves 1,2] [--pg-url postgresql://postgres@127.0.0.1:5432/test]
        [--redis-url redis://127.0.0.1:6379/7] [--json]

`--quick`: 2,000 SMS per pipeline run, 4,000 requests per accept run, one round (about two
minutes). Exits 1 if a request got anything but 201, a message did not end `delivered`, a
message was submitted twice, or wrk hit its time cap; 2 without wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types

import _scale
from _scale import (
    DEFAULT_PG_URL,
    DEFAULT_REDIS_URL,
    BenchCluster,
    cpu_between,
    loopback_only,
    run_uvloop,
    snapshot,
    wait_final,
    wrk_sms,
)
from accept import _raise_exit, plain_pg_url
from e2e_sms import wait_healthy

LEASE_S = 15.0
KINDS = ("serve", "worker", "postgres", "smsc", "wrk")


@dataclass
class Run:
    kind: str  # "e2e" (pipeline) or "accept"
    processes: int  # workers (e2e) or serve processes (accept)
    messages: int
    elapsed_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    complete: bool = False
    final: dict[str, int] = field(default_factory=dict)
    submits: int = 0
    duplicates: int = 0  # submit_sm beyond one per message
    unattributed: int = 0  # submit_sm whose id is in no message_parts row
    sent_by_worker: list[float] = field(default_factory=list)
    cpu_us: dict[str, float] = field(default_factory=dict)  # per message, by kind
    other_cores: float = 0.0  # the machine's busy cores not ours
    idle_cores: dict[str, float] = field(default_factory=dict)  # by kind, before the load
    p99_accept_ms: float = 0.0
    bind_wait_s: float = 0.0
    error: str = ""

    @property
    def accepted(self) -> int:
        return self.statuses.get("201", 0)

    @property
    def per_s(self) -> float:
        return self.accepted / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def shares(self) -> list[float]:
        total = sum(self.sent_by_worker)
        return [s / total for s in self.sent_by_worker] if total else []

    @property
    def spread(self) -> float:
        """min share / max share: 1.0 is an even spread, 0 a worker that sent nothing."""
        shares = self.shares
        if not shares:
            return 0.0
        high: float = max(shares)
        low: float = min(shares)
        return low / high if high else 0.0

    @property
    def ok(self) -> bool:
        if self.error or not self.complete or self.statuses != {"201": self.messages}:
            return False
        if self.kind == "accept":
            return True
        return self.final == {"delivered": self.messages} and self.duplicates == 0


def process_env(args: argparse.Namespace) -> dict[str, str]:
    env = {
        "AMNEX_WORKER_CONCURRENCY": str(args.worker_concurrency),
        "AMNEX_CLAIM_BATCH_SIZE": str(min(args.worker_concurrency, 1000)),
        # 4 workers and a serve with the default 10 (+10 overflow) each would take most of a
        # shared server's 100 connections.
        "AMNEX_DATABASE_POOL_SIZE": str(args.pool_size),
    }
    if args.redis_url:
        env["AMNEX_REDIS_URL"] = args.redis_url
    return env


def per_message_cpu(run: Run, spent: dict[str, float], names: dict[str, str]) -> None:
    """`spent` (CPU seconds by process name) as µs per message by kind (`names`: name → kind)."""
    by_kind: dict[str, float] = {}
    for name, kind in names.items():
        by_kind[kind] = by_kind.get(kind, 0.0) + spent.get(name, 0.0)
    by_kind["postgres"] = spent["postgres"]
    by_kind["wrk"] = spent["wrk"]
    run.cpu_us = {kind: cpu / run.messages * 1e6 for kind, cpu in by_kind.items()}
    ours = sum(by_kind.values())
    run.other_cores = max(0.0, spent["machine"] - ours) / run.elapsed_s if run.elapsed_s else 0.0


async def drive_pipeline(
    cluster: BenchCluster, run: Run, args: argparse.Namespace, *, cap_s: int
) -> dict[str, tuple[str, str]]:
    """wrk's `run.messages` SMS into the running cluster, until all are final; fills `run`.
    Returns the message_parts (provider id → (message id, status)) for the duplicate check."""
    conn = await asyncpg.connect(plain_pg_url(cluster.database_url))
    try:
        names = {"serve": "serve", "smsc": "smsc"}
        names.update({f"worker-{i}": "worker" for i in range(len(cluster.workers))})
        pids = {"serve": cluster.processes["serve"].pid, "smsc": cluster.processes["smsc"].pid}
        pids.update({f"worker-{i}": pid for i, pid in enumerate(cluster.worker_pids())})
        # What the processes cost doing nothing (polling, leases, housekeeping): the part of
        # each kind's CPU per message that does not depend on the load.
        idle_before = await snapshot(pids, conn)
        await asyncio.sleep(args.idle_s)
        idle = cpu_between(idle_before, await snapshot(pids, conn))
        run.idle_cores = {
            kind: sum(idle.get(n, 0.0) for n, k in names.items() if k == kind) / args.idle_s
            for kind in ("serve", "worker", "smsc")
        }
        run.idle_cores["postgres"] = idle["postgres"] / args.idle_s
        before = await snapshot(pids, conn)
        started = time.monotonic()
        result = await asyncio.to_thread(
            wrk_sms,
            cluster.api_url,
            cluster.api_key,
            requests=run.messages,
            connections=args.connections,
            cap_s=cap_s,
            first=0,
        )
        run.statuses = {str(k): int(v) for k, v in result["statuses"].items()}
        run.complete = bool(result["complete"])
        run.p99_accept_ms = float(result["latency_us"]["p99"]) / 1000
        run.final = await wait_final(conn, run.messages, started + cap_s)
        run.elapsed_s = time.monotonic() - started
        after = await snapshot(pids, conn)
        per_message_cpu(run, cpu_between(before, after), names)
        rows = await conn.fetch(
            "SELECT provider_message_id, message_id, status FROM message_parts "
            "WHERE provider_message_id IS NOT NULL"
        )
        return {str(r[0]): (str(r[1]), str(r[2])) for r in rows}
    finally:
        await conn.close()


def pipeline_run(args: argparse.Namespace, workers: int) -> Run:
    run = Run("e2e", workers, args.messages)
    cluster = BenchCluster(args.pg_url, workers, LEASE_S, keep_logs=args.keep_logs)
    try:
        cluster.create_database()
        cluster.start_all(extra_env=process_env(args), connector_config={"binds": workers})
        run.bind_wait_s = _scale.wait_for_binds(cluster, workers)
        parts = run_uvloop(drive_pipeline(cluster, run, args, cap_s=args.cap_s))
        record = cluster.smsc("/record")
        submitted_ids = [str(s[0]) for s in record["submits"]]
        run.submits = len(submitted_ids)
        messages = {parts[p][0] for p in submitted_ids if p in parts}
        run.unattributed = sum(1 for p in submitted_ids if p not in parts)
        run.duplicates = run.submits - len(messages)
        run.sent_by_worker = [sends.get("sent", 0.0) for sends in cluster.worker_sends()]
    except Exception as exc:  # reported in the table; the next run goes on
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        cluster.failed = not run.ok
        cluster.close()
    return run


def accept_run(args: argparse.Namespace, serves: int) -> Run:
    run = Run("accept", serves, args.accept_requests)
    cluster = BenchCluster(args.pg_url, 0, LEASE_S, keep_logs=args.keep_logs)
    try:
        cluster.create_database()
        cluster.start_all(extra_env=process_env(args))
        urls = [cluster.api_url]
        for index in range(2, serves + 1):
            url = cluster.start_extra_serve(f"serve-{index}")
            wait_healthy(url, cluster.processes[f"serve-{index}"])
            urls.append(url)
        serve_names = [n for n in cluster.processes if n.startswith("serve")]
        run_uvloop(drive_accept(cluster, run, args, urls, serve_names))
    except Exception as exc:  # reported in the table; the next run goes on
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        cluster.failed = not run.ok
        cluster.close()
    return run


async def drive_accept(
    cluster: BenchCluster,
    run: Run,
    args: argparse.Namespace,
    urls: list[str],
    serve_names: list[str],
) -> None:
    def wrk_all(requests: int, first: int) -> list[dict[str, Any]]:
        share, connections = requests // len(urls), max(1, args.connections // len(urls))
        with ThreadPoolExecutor(len(urls)) as pool:
            futures = [
                pool.submit(
                    wrk_sms,
                    url,
                    cluster.api_key,
                    requests=share,
                    connections=connections,
                    cap_s=args.cap_s,
                    first=first + i * share,
                )
                for i, url in enumerate(urls)
            ]
            return [f.result() for f in futures]

    # Warm-up (discarded): connections, caches and pools of every serve process.
    await asyncio.to_thread(wrk_all, min(2000, run.messages) // len(urls) * len(urls), 1_000_000)
    run.messages = run.messages // len(urls) * len(urls)
    conn = await asyncpg.connect(plain_pg_url(cluster.database_url))
    try:
        pids = {name: cluster.processes[name].pid for name in serve_names}
        before = await snapshot(pids, conn)
        results = await asyncio.to_thread(wrk_all, run.messages, 0)
        after = await snapshot(pids, conn)
    finally:
        await conn.close()
    run.statuses = {}
    for result in results:
        for status, n in result["statuses"].items():
            run.statuses[str(status)] = run.statuses.get(str(status), 0) + int(n)
    run.complete = all(bool(r["complete"]) for r in results)
    run.elapsed_s = max(float(r["elapsed_us"]) for r in results) / 1e6
    run.p99_accept_ms = max(float(r["latency_us"]["p99"]) for r in results) / 1000
    per_message_cpu(run, cpu_between(before, after), dict.fromkeys(serve_names, "serve"))


# --- report ----------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    kind: str
    processes: int
    runs: list[Run]
    baseline: str = ""
    baseline_value: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(r.per_s for r in self.runs)

    @property
    def ratio(self) -> float | None:
        return self.median / self.baseline_value if self.baseline_value else None

    def cpu(self, kind: str) -> float | None:
        values = [r.cpu_us[kind] for r in self.runs if kind in r.cpu_us]
        return statistics.median(values) if values else None


def build_rows(runs: list[Run], args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    for serves in args.serve_list:
        mine = [r for r in runs if r.kind == "accept" and r.processes == serves]
        rows.append(Row(f"accept, {plural(serves, 'serve')}", "accept", serves, mine))
    for workers in args.worker_list:
        mine = [r for r in runs if r.kind == "e2e" and r.processes == workers]
        rows.append(Row(f"end to end, {plural(workers, 'worker')}", "e2e", workers, mine))
    by_label = {(r.kind, r.processes): r for r in rows}
    for row in rows:
        base = by_label.get((row.kind, 1))
        if row.kind == "e2e" and row.processes == 1:
            base = by_label.get(("accept", 1))
        if base is not None and base is not row and base.runs:
            row.baseline, row.baseline_value = base.label, base.median
    return rows


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("s" if n != 1 else "")


def fmt_cpu(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| run | msg/s (median) | vs baseline | runs (msg/s) | delivered / sent | "
        "duplicates | worker shares (min/max) | CPU µs/msg serve / worker / postgres / "
        "smsc / wrk | idle cores workers / postgres | other load (cores) |",
        "|---|---:|---|---|---|---:|---|---|---|---:|",
    ]
    for row in rows:
        if not row.runs:
            continue
        ratio = f"{row.ratio:.2f} of {row.baseline}" if row.ratio is not None else "baseline"
        per_run = ", ".join(f"{r.per_s:,.0f}" for r in row.runs)
        if row.kind == "e2e":
            delivered = ", ".join(
                f"{r.final.get('delivered', 0):,} / {r.messages:,}" for r in row.runs
            )
            duplicates = str(sum(r.duplicates for r in row.runs))
            shares = "; ".join(
                "/".join(f"{s:.2f}" for s in r.shares) + f" ({r.spread:.2f})" for r in row.runs
            )
        else:
            delivered = "accept only: " + ", ".join(f"{r.accepted:,} 201s" for r in row.runs)
            duplicates, shares = "—", "—"
        cpu = " / ".join(fmt_cpu(row.cpu(kind)) for kind in KINDS)
        other = statistics.median(r.other_cores for r in row.runs)
        idle = "—"
        if row.kind == "e2e":
            idle = " / ".join(
                f"{statistics.median(r.idle_cores.get(k, 0.0) for r in row.runs):.3f}"
                for k in ("worker", "postgres")
            )
        lines.append(
            f"| {row.label} | {row.median:,.0f} | {ratio} | {per_run} | {delivered} | "
            f"{duplicates} | {shares} | {cpu} | {idle} | {other:.2f} |"
        )
    return "\n".join(lines)


def json_rows(rows: list[Row]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for row in rows:
        if not row.runs:
            continue
        out.append(
            {
                "figure": row.label,
                "value": row.median,
                "unit": "msg/s",
                "baseline": row.baseline or None,
                "baseline_value": row.baseline_value,
                "ratio": row.ratio,
                "runs": [r.per_s for r in row.runs],
                "cpu_us_per_message": {k: row.cpu(k) for k in KINDS if row.cpu(k) is not None},
                "idle_cores": [r.idle_cores for r in row.runs],
            }
        )
        if row.kind == "e2e":
            out.append(
                {
                    "figure": f"duplicates, {plural(row.processes, 'worker')}",
                    "value": sum(r.duplicates for r in row.runs),
                    "unit": "extra submit_sm",
                }
            )
            if row.processes > 1:
                out.append(
                    {
                        "figure": f"spread min/max share, {plural(row.processes, 'worker')}",
                        "value": statistics.median(r.spread for r in row.runs),
                        "unit": "ratio",
                        "shares": [r.shares for r in row.runs],
                    }
                )
            if row.processes == 1:
                for kind in KINDS:
                    out.append(
                        {
                            "figure": f"CPU {kind}, 1 worker",
                            "value": row.cpu(kind),
                            "unit": "µs/msg",
                        }
                    )
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one round")
    parser.add_argument("--messages", type=int, default=None, help="SMS per pipeline run (20000)")
    parser.add_argument(
        "--accept-requests", type=int, default=None, help="requests per accept run (20000)"
    )
    parser.add_argument("--runs", type=int, default=None, help="rounds (3; quick 1)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts of the pipeline runs")
    parser.add_argument("--serves", default="1,2", help="serve counts of the accept runs")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--cap-s", type=int, default=None, help="bound on each run (180; quick 60)")
    parser.add_argument("--worker-concurrency", type=int, default=500, help="sends in flight")
    parser.add_argument("--pool-size", type=int, default=5, help="AMNEX_DATABASE_POOL_SIZE")
    parser.add_argument(
        "--idle-s", type=float, default=3.0, help="idle CPU measured this long before the load"
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="server to create databases on")
    parser.add_argument(
        "--redis-url", default=DEFAULT_REDIS_URL, help="AMNEX_REDIS_URL ('' for none)"
    )
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    args = parser.parse_args(argv)
    quick = args.quick
    args.messages = args.messages or (2_000 if quick else 20_000)
    args.accept_requests = args.accept_requests or (4_000 if quick else 20_000)
    args.runs = args.runs or (1 if quick else 3)
    args.cap_s = args.cap_s or (60 if quick else 180)
    try:
        args.worker_list = sorted({int(w) for w in args.workers.split(",") if w.strip()})
        args.serve_list = sorted({int(s) for s in args.serves.split(",") if s.strip()})
    except ValueError:
        parser.error("--workers and --serves are comma-separated numbers")
    if any(n < 1 for n in args.worker_list + args.serve_list):
        parser.error("--workers and --serves must be positive")
    if args.messages < args.connections or args.accept_requests < args.connections:
        parser.error("--messages and --accept-requests must be at least --connections")
    for url in (args.pg_url, args.redis_url):
        if url and not loopback_only(url):
            parser.error(f"{url}: this benchmark runs on loopback only")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install -y wrk`, then retry.", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    runs: list[Run] = []
    started = time.monotonic()
    try:
        for round_no in range(1, args.runs + 1):
            # Alternate the order from round to round, so that a drift lands on all alike.
            serves = args.serve_list if round_no % 2 else args.serve_list[::-1]
            workers = args.worker_list if round_no % 2 else args.worker_list[::-1]
            for count in serves:
                run = accept_run(args, count)
                runs.append(run)
                report_run(round_no, run)
            for count in workers:
                run = pipeline_run(args, count)
                runs.append(run)
                report_run(round_no, run)
    finally:
        signal.signal(signal.SIGTERM, previous)
    rows = build_rows(runs, args)
    ok = all(r.ok for r in runs)
    print()
    print(
        f"Scaling on PostgreSQL, {args.messages:,} SMS per pipeline run, "
        f"{args.accept_requests:,} per accept run, median of {args.runs}, "
        f"{time.monotonic() - started:.0f} s in all — {'PASS' if ok else 'FAIL'}"
    )
    print()
    print(table(rows))
    print(
        "\nduplicates: submit_sm the SMSC took beyond one per message (must be 0). worker "
        "shares: each worker's fraction of the sends, (min/max). postgres: the backends of the "
        "run's database only (WAL writer, checkpointer and other databases' sessions are not "
        "counted). idle cores: what the workers and the database's backends used with no "
        "load, in the seconds before it. other load: the machine's busy cores not spent by "
        "these processes."
    )
    if args.json:
        print(json.dumps({"benchmark": "scaling", "ok": ok, "rows": json_rows(rows)}))
    return 0 if ok else 1


def report_run(round_no: int, run: Run) -> None:
    what = plural(run.processes, "serve" if run.kind == "accept" else "worker")
    text = (
        f"round {round_no} {run.kind:6} {what:9}: {run.per_s:7,.0f} msg/s "
        f"({run.elapsed_s:.1f} s, ok={run.ok}, answers={run.statuses}"
    )
    if run.kind == "e2e":
        text += (
            f", final={run.final}, submits={run.submits}, duplicates={run.duplicates}, "
            f"sent by worker={[round(s) for s in run.sent_by_worker]}, "
            f"binds spread after {run.bind_wait_s:.1f} s, idle cores="
            f"{ {k: round(v, 3) for k, v in run.idle_cores.items()} }"
        )
    text += f", cpu µs/msg={ {k: round(v) for k, v in run.cpu_us.items()} })"
    if run.error:
        text += f"\n    ERROR {run.error}"
    print(text, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
