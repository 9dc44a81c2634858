"""Bench (issue 7): soak — a steady 80 % of the measured maximum for ten minutes, watching
memory and latency for drift.

1. **The maximum** (unless `--max-rate` is given): one `amnex serve`, `--workers` (2)
   `amnex worker` (one bind each; `--worker-nice` N starts them at a lower priority than the
   API, as systemd's `Nice=` would) and the SMSC simulator on a fresh database, started as the
   soak's are, sent SMS by the soak's own generator (open loop, below) in steps, after a
   warm-up of `--step-s` at half the first step's rate (not counted, as the soak leaves out
   its first minute): from `--probe-start` (400) msg/s, each `--step-s` (30) s long and 10 %
   above the one before,
   until a step is not held — answered at 95 % of its rate, nothing skipped or refused, p99
   within `PROBE_P99_MS` (500 ms), and delivery keeping up (at most 2 s of the rate not final
   at the step's end) — or `--probe-steps` (24) have run. The highest step held is that
   probe's maximum: the rate the whole pipeline (accept and deliver) sustains for paced
   clients. `--probes` (3; quick 1) probes run one after another, each on a fresh database
   with fresh processes, and the maximum is the median of theirs.
   A closed-loop probe (wrk keeping 64 requests in flight) measures more, because a full
   queue of requests lets the API and the workers write bigger batches: 80 % of wrk's
   771/s was 616/s, and at that rate every core of the machine was busy.
2. **The soak**, on another fresh database and freshly started processes of the same kind,
   with the API's backpressure at its production defaults (so that a queue that grows is
   refused and shows): SMS `POST /v1/messages` at a steady `--fraction` (0.8) of the maximum
   for `--minutes` (10), open loop (bench/_scale.py's `paced_load`: requests leave at their
   scheduled time whatever the answers do, on 64 keep-alive connections; latency counts from
   the scheduled time). Every `--sample-s` (10) s: the RSS (VmRSS) of serve and of each
   worker, the p50/p99 latency of the answers of that window, the API's `amnex_queue_depth`
   (due, not yet claimed), the messages not final yet, and the CPU cores each process used
   (and, on the run's own server, all of PostgreSQL's processes together).
   After the load, at most `--drain-s` for every accepted message to be final.

PostgreSQL: unless `--pg-url` names a server, the run starts one of its own (bench/chaos's
`TempPostgres`: initdb into a temporary directory, PostgreSQL's defaults — autovacuum on — a
free loopback port; `--pg-conf NAME=VALUE` adds a setting) and removes it at the end. A
soak measures drift, and a server tuned for
test suites is not what it should drift on: this machine's shared server runs with
autovacuum off, under which `messages` only grows dead rows. The summary names the server's
`autovacuum` and how often `messages` was vacuumed, the WAL written per SMS, and how the
database fitted in `shared_buffers` (blocks read from outside them, pages backends wrote out
themselves, its size at the end). The run's own
server also logs (`SERVER_LOGGING`) every autovacuum, statements over 500 ms with their plans,
lock waits over a second and checkpoints; what it logged during the soak is summed up and
listed after the summary. Every sample also records CPU stolen by the hypervisor, the
share of time every task waited on I/O and the machine's speed (`CALIBRATION`); the run's own
server loads pg_stat_statements and times its WAL flushes (`track_wal_io_timing`), read every
sample, and every sample reads the workers' /metrics. Three tables after the summary compare
the thirds of the samples the p99 verdict compares: each process's CPU, the machine's and its
speed, and the CPU per SMS also in units of that speed (work done whatever the machine's
speed); the workers' transactions (how many, items and ms each) and PostgreSQL's WAL flushes
(how many, ms each); and the statements that took the most time, with their blocks per call.

Verdicts:

- **RSS**: per process, RSS of the last minute (median of its samples) within ±10 % of
  minute 2's. Runs shorter than 3 minutes compare the last third of the samples with the
  middle third instead.
- **p99 trend**: over the samples after the first minute (after the first sample when the
  run is shorter than 3 minutes), the least-squares slope of p99 against time (ms/minute), and
  "upward beyond noise" when the slope is positive AND the median p99 of the last third of
  those samples exceeds 1.25 x the median of their middle third.
- **load held**: the achieved rate is at least 95 % of the target and no request was skipped
  (the generator bounds its own backlog at 5 s of requests).

    .venv/bin/python bench/soak.py [--quick] [--minutes 10] [--max-rate R] [--fraction 0.8]
        [--workers 2] [--worker-nice 0] [--pg-url postgresql://postgres@127.0.0.1:5432/test]
        [--pg-conf shared_buffers=1GB ...] [--redis-url redis://127.0.0.1:6379/7] [--json]

`--overload`: the same, with the carrier slower than the clients — the connector's
`throughput_per_s` at `--carrier-rate` (100/s) while the API is sent `--fraction` (0.8) of the
maximum — and `max_queue_depth` at `--max-queue-depth` (5,000): more than the carrier takes, so
the due queue fills and the API answers `503 queue_full` instead of growing it. Its verdicts:
RSS as above (memory stays flat while requests are refused), the sampled queue depth never above
1.5 x the limit (a sample is up to `backpressure_sample_s` old, so one interval's accepts can
overshoot), some requests refused, and nothing but 201 and 503 answered; p99 and "load held" are
reported, not judged.

`--quick`: probe steps of 10 s from 200 msg/s (at most 4), then 1 minute (about 2 minutes in
all); its verdicts are indicative only. Exits 1 if a request got anything but 201, an accepted
message did not end `delivered`, the probe held no step, or (not in quick mode) a verdict
fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types
import httpx
from prometheus_client.parser import text_string_to_metric_families

from _scale import (
    DEFAULT_PG_URL,
    DEFAULT_REDIS_URL,
    HOST,
    BenchCluster,
    TempPostgres,
    loopback_only,
    paced_load,
    percentile,
    queue_depth,
    rss_bytes,
    run_uvloop,
    status_field,
    wait_final,
    wait_for_binds,
)
from accept import _raise_exit, machine_busy_s, plain_pg_url, process_cpu_s, server_cpu_s
from scaling import LEASE_S, process_env

MIB = 1024 * 1024
SLOW_STATEMENT_MS = 500
# The server's WAL so far (PostgreSQL 14+; pg_stat_wal counts full-page images, not their
# bytes: at 8 KiB a page, an upper bound of what they took).
WAL_STATS = "SELECT wal_bytes, wal_fpi * 8192::numeric AS fpi_bytes FROM pg_stat_wal"
# The soak database's blocks found in shared buffers and read from outside them, and the
# pages backends had to write out themselves to free a buffer (PostgreSQL up to 16; NULL
# where pg_stat_bgwriter no longer has the column).
BUFFER_STATS = (
    "SELECT d.blks_read, d.blks_hit, (to_jsonb(b) ->> 'buffers_backend')::bigint AS backend "
    "FROM pg_stat_database d, pg_stat_bgwriter b WHERE d.datname = current_database()"
)
# The run's own server logs its maintenance and slow statements (read back by read_server_log).
SERVER_LOGGING = (
    "log_autovacuum_min_duration = 0\n"
    f"log_min_duration_statement = {SLOW_STATEMENT_MS}\n"
    "log_lock_waits = on\n"
    # The plan of every statement over that bound: a plan that changed after an ANALYZE shows.
    "session_preload_libraries = 'auto_explain'\n"
    f"auto_explain.log_min_duration = {SLOW_STATEMENT_MS}\n"
    "log_line_prefix = '%m [%p] [%d] '\n"
    # Each statement's calls, time and blocks, read every sample (`statements_table`).
    "shared_preload_libraries = 'pg_stat_statements'\n"
    # The time of each WAL write and flush (pg_stat_wal): a commit waits for its flush.
    "track_wal_io_timing = on\n"
)
# The WAL flushes so far and their time, and the pages backends wrote out themselves, read
# every sample on the run's own server (`batches_table`).
WAL_TIMING = (
    "SELECT w.wal_sync, w.wal_sync_time, (to_jsonb(b) ->> 'buffers_backend')::bigint AS backend "
    "FROM pg_stat_wal w, pg_stat_bgwriter b"
)
# The machine's speed, measured beside the soak: a child process times (in CPU time, so
# waiting for a core does not count) two fixed pieces of Python work five times a second. At
# a constant rate the soak's own load is constant, so a window whose pieces took longer ran
# on slower CPUs: a neighbour on the same cores, or their clock. The first piece stays in the
# core's own caches; the second follows a random cycle through 4 M list entries (about
# 140 MB of pointers and int objects), so nearly every step misses the caches and waits for
# memory: it slows when something else — on this machine or on the host under it — takes
# the shared cache or the memory's bandwidth, which the first piece does not see.
CALIBRATION = """
import random, time
order = list(range(1 << 22))
random.Random(7).shuffle(order)
cycle = [0] * len(order)
for here, there in zip(order, order[1:] + order[:1]):
    cycle[here] = there
del order
print("ready", flush=True)
at = 0
while True:
    start = time.thread_time_ns()
    sum(i * i for i in range(20_000))
    middle = time.thread_time_ns()
    for _ in range(2_000):
        at = cycle[at]
    end = time.thread_time_ns()
    print((middle - start) / 1000, (end - middle) / 1000, flush=True)
    time.sleep(0.2)
"""
# Every statement of the soak's database so far (pg_stat_statements, the run's own server).
STATEMENTS = (
    "SELECT queryid, calls, total_exec_time, shared_blks_hit + shared_blks_read AS blocks "
    "FROM pg_stat_statements WHERE dbid = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())"
)
PROBE_P99_MS = 500.0  # a probe step whose answers take longer than this is not held
NOT_FINAL = ("scheduled", "queued", "sending", "sent")


@dataclass
class Sample:
    t_s: float  # seconds from the start of the load to the end of the window
    answered: int
    non_201: int
    p50_ms: float
    p99_ms: float
    rss_mib: dict[str, float]
    cores: dict[str, float]
    queue_depth: float | None
    not_final: int
    machine_cores: float  # every CPU's busy time, everyone's (2 = this machine saturated)
    pg_cores: float | None  # the run's own PostgreSQL server, all its processes
    stolen_cores: float  # taken by the hypervisor for other guests: noise from outside
    io_full: float | None  # share of the window every runnable task waited on I/O (PSI)
    calibration_us: float | None  # median CPU µs of CALIBRATION's piece of work in the window
    # The same for its piece that waits on memory (None: no piece timed in the window).
    memory_us: float | None = None
    # The workers' transactions so far, summed over them (their /metrics): kind -> (count,
    # items, seconds), from `amnex_worker_batch_size` and `amnex_worker_batch_seconds`.
    batches: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    # The run's own server, so far: WAL flushes, their ms, pages written out by backends.
    wal_timing: tuple[int, float, int | None] | None = None
    # Each worker's voluntary context switches so far: how often its event loop found nothing
    # to do and slept (`voluntary_ctxt_switches` in /proc/<pid>/status).
    sleeps: dict[str, int] = field(default_factory=dict)


@dataclass
class Soak:
    max_rate: float
    target_rate: float
    duration_s: float
    # Each probe's maximum, in the order run (max_rate is their median); empty: --max-rate.
    probes: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    scheduled: int = 0
    skipped: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    final: dict[str, int] = field(default_factory=dict)
    generator_cpu_us: float = 0.0
    error: str = ""
    # --overload: the queue limit the API enforces; 503 queue_full is then an expected answer.
    overload_depth: int | None = None
    # The PostgreSQL server's `autovacuum` and what it did to `messages` by the end of the run.
    autovacuum: str = ""
    database: str = ""  # the soak's database (for the server log's autovacuum lines)
    server_log: ServerLog | None = None  # the run's own server only
    # WAL the server wrote from the start of the load until every message was final, and
    # how much of it was full-page images (the first change to a page after a checkpoint).
    wal_bytes: int = 0
    wal_fpi_bytes: int = 0
    messages_vacuumed: int = 0
    messages_dead: int = 0
    messages_live: int = 0
    # Over the same span: the soak database's blocks read from outside shared buffers and
    # found in them, the pages backends wrote out themselves, and sizes at the end.
    blocks_read: int = 0
    blocks_hit: int = 0
    backend_writes: int | None = None
    database_bytes: int = 0
    shared_buffers: str = ""
    # The run's own server: pg_stat_statements at the start of the load and after each
    # sample (queryid -> calls, total ms, blocks), and each statement's text.
    statements: list[dict[int, tuple[int, float, int]]] = field(default_factory=list)
    statement_text: dict[int, str] = field(default_factory=dict)

    @property
    def accepted(self) -> int:
        return self.statuses.get(201, 0)

    @property
    def achieved_rate(self) -> float:
        return self.accepted / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def correct(self) -> bool:
        """Every request answered 201 (or, overloaded, 503) and every accepted message
        delivered."""
        allowed = {201} if self.overload_depth is None else {201, 503}
        return (
            not self.error
            and self.scheduled > 0
            and 201 in self.statuses
            and set(self.statuses) <= allowed
            and self.final == {"delivered": self.accepted}
        )

    def queue_bounded(self) -> bool:
        """Overloaded: the queue was refused (some 503s) and never sampled past 1.5 x the
        limit."""
        if self.overload_depth is None:
            return True
        depths = [s.queue_depth for s in self.samples if s.queue_depth is not None]
        return (
            self.statuses.get(503, 0) > 0
            and bool(depths)
            and max(depths) <= 1.5 * self.overload_depth
        )


async def not_final(conn: Any) -> int:
    """Messages of the run's database that are not final yet."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM messages WHERE status = ANY($1::text[])", list(NOT_FINAL)
        )
    )


def io_stalled_s() -> float | None:
    """Seconds since boot in which every non-idle task waited on I/O (the kernel's pressure
    stall information, `full` line of /proc/pressure/io); None where the kernel has none."""
    try:
        text = Path("/proc/pressure/io").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("full "):
            return int(line.rsplit("total=", 1)[1]) / 1e6
    return None


# --- the server's log: autovacuum, checkpoints, slow statements, lock waits --------------------


@dataclass
class Maintenance:
    """One autovacuum or analyze of `messages`, checkpoint, slow statement or lock wait, from
    the server's log."""

    at: str  # the log line's time
    elapsed_s: float
    cpu_s: float = 0.0  # user + system (autovacuum); 0 for a checkpoint
    detail: str = ""


@dataclass
class ServerLog:
    vacuums: list[Maintenance] = field(default_factory=list)
    analyzes: list[Maintenance] = field(default_factory=list)
    checkpoints: list[Maintenance] = field(default_factory=list)
    # Statements of the soak's database that took longer than `log_min_duration_statement`.
    slow: list[Maintenance] = field(default_factory=list)
    # Waits for a lock longer than deadlock_timeout (1 s), `log_lock_waits`.
    lock_waits: list[Maintenance] = field(default_factory=list)


LOG_ENTRY = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)", re.MULTILINE)
USAGE = re.compile(r"CPU: user: ([\d.]+) s, system: ([\d.]+) s, elapsed: ([\d.]+) s")
PAGES = re.compile(r"pages: \d+ removed, (\d+) remain, (\d+) scanned")
INDEX_SCANS = re.compile(r"index scans: (\d+)")
CHECKPOINT = re.compile(
    r"wrote (\d+) buffers .*?write=([\d.]+) s, sync=([\d.]+) s, total=([\d.]+) s.*?"
    r"longest=([\d.]+) s"
)
LOCK_WAIT = re.compile(r"still waiting for (\w+) on .*? after ([\d.]+) ms")
SLOW = re.compile(r"duration: ([\d.]+) ms  (?:statement|execute [^:]*): +(\S+)")


def read_server_log(text: str, database: str) -> ServerLog:
    """Autovacuums and analyzes of `database`'s messages table, its slow statements and lock
    waits, and every checkpoint in `text` (a PostgreSQL stderr log written with
    `SERVER_LOGGING`)."""
    out = ServerLog()
    starts = [m.start() for m in LOG_ENTRY.finditer(text)] + [len(text)]
    table = f'"{database}.public.messages"'
    reason = ""  # what started the checkpoint in progress: time, wal, immediate ...
    for begin, end in itertools.pairwise(starts):
        entry = text[begin:end]
        at = entry[:23]
        usage = USAGE.search(entry)
        if table in entry and usage is not None:
            user, system, elapsed = (float(g) for g in usage.groups())
            record = Maintenance(at, elapsed, user + system)
            if "automatic vacuum of table" in entry:
                pages, scans = PAGES.search(entry), INDEX_SCANS.search(entry)
                if pages is not None:
                    record.detail = f"{pages[2]} of {pages[1]} pages scanned"
                if scans is not None:
                    record.detail += f", {scans[1]} index scan(s)"
                out.vacuums.append(record)
            elif "automatic analyze of table" in entry:
                out.analyzes.append(record)
        elif "checkpoint starting:" in entry:
            reason = entry.split("checkpoint starting:", 1)[1].strip()
        elif "checkpoint complete" in entry:
            found = CHECKPOINT.search(entry)
            if found is not None:
                detail = (
                    f"started by: {reason}; {int(found[1]):,} buffers written; write "
                    f"{found[2]} s, sync {found[3]} s (longest file {found[5]} s)"
                )
                out.checkpoints.append(Maintenance(at, float(found[4]), detail=detail))
        elif f"[{database}]" in entry and (slow := SLOW.search(entry)) is not None:
            out.slow.append(Maintenance(at, float(slow[1]) / 1000, detail=slow[2].upper()))
        elif f"[{database}]" in entry and (wait := LOCK_WAIT.search(entry)) is not None:
            out.lock_waits.append(Maintenance(at, float(wait[2]) / 1000, detail=wait[1]))
    return out


# --- verdicts --------------------------------------------------------------------------------


def windows(soak: Soak) -> tuple[list[Sample], list[Sample], str]:
    """(reference samples, last samples, what they are) for the RSS verdict."""
    samples = soak.samples
    if soak.duration_s >= 180:
        ref = [s for s in samples if 60 < s.t_s <= 120]
        last_start = soak.duration_s - 60
        last = [s for s in samples if s.t_s > last_start]
        return ref, last, f"minute {soak.duration_s / 60:.0f} vs minute 2"
    third = max(1, len(samples) // 3)
    return samples[third : 2 * third], samples[-third:], "last third vs middle third"


def rss_verdicts(soak: Soak) -> list[dict[str, Any]]:
    ref, last, what = windows(soak)
    out = []
    names = soak.samples[0].rss_mib.keys() if soak.samples else []
    for name in names:
        ref_mib = statistics.median(s.rss_mib[name] for s in ref) if ref else 0.0
        last_mib = statistics.median(s.rss_mib[name] for s in last) if last else 0.0
        ratio = last_mib / ref_mib if ref_mib else None
        out.append(
            {
                "process": name,
                "reference_mib": ref_mib,
                "last_mib": last_mib,
                "ratio": ratio,
                "compared": what,
                "ok": ratio is not None and abs(ratio - 1) <= 0.10,
            }
        )
    return out


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y against x (seconds), per minute."""
    if len(points) < 2:
        return 0.0
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return sxy / sxx * 60 if sxx else 0.0


def thirds(soak: Soak) -> tuple[float, list[int], list[list[int]]]:
    """The warm-up the p99 verdict leaves out (s), the indices in `soak.samples` of the
    samples after it, and of their first, middle and last thirds."""
    warm_s = 60.0 if soak.duration_s >= 180 else (soak.samples[0].t_s if soak.samples else 0.0)
    kept = [i for i, s in enumerate(soak.samples) if s.t_s > warm_s and s.answered]
    third = max(1, len(kept) // 3)
    return warm_s, kept, [kept[:third], kept[third : 2 * third], kept[-third:]]


def p99_verdict(soak: Soak) -> dict[str, Any]:
    warm_s, kept_at, parts = thirds(soak)
    kept = [soak.samples[i] for i in kept_at]
    slope = slope_per_min([(s.t_s, s.p99_ms) for s in kept])
    middle = [soak.samples[i].p99_ms for i in parts[1]]
    last = [soak.samples[i].p99_ms for i in parts[2]]
    middle_median = statistics.median(middle) if middle else 0.0
    last_median = statistics.median(last) if last else 0.0
    upward = slope > 0 and bool(middle) and last_median > 1.25 * middle_median
    return {
        "samples": len(kept),
        "after_s": warm_s,
        "slope_ms_per_min": slope,
        "middle_third_median_ms": middle_median,
        "last_third_median_ms": last_median,
        "ratio": last_median / middle_median if middle_median else None,
        "upward": upward,
        "ok": bool(kept) and not upward,
    }


# --- the runs --------------------------------------------------------------------------------


@dataclass
class Step:
    """One step of the probe: `rate` msg/s, paced, for `--step-s`."""

    rate: float
    achieved: float = 0.0
    skipped: int = 0
    non_201: int = 0
    p99_ms: float = 0.0
    not_final: int = 0
    machine_cores: float = 0.0  # every CPU's busy time over the step, everyone's
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def held(self) -> bool:
        """Answered at the rate (95 %), nothing skipped or refused, p99 within
        `PROBE_P99_MS`, and delivery keeping up (at most 2 s of the rate not final at the
        step's end)."""
        return (
            self.achieved >= 0.95 * self.rate
            and self.skipped == 0
            and self.non_201 == 0
            and self.p99_ms <= PROBE_P99_MS
            and self.not_final <= 2 * self.rate
        )


async def probe_steps(cluster: BenchCluster, args: argparse.Namespace) -> list[Step]:
    """Paced steps from `--probe-start` msg/s, each `--step-s` long and 10 % above the one
    before, until one is not held (at most `--probe-steps`), after a warm-up step at half
    the first one's rate."""
    steps: list[Step] = []
    conn = await asyncpg.connect(plain_pg_url(cluster.database_url))
    try:
        # A warm-up at half the first step's rate, not counted: the first seconds on empty
        # tables (connections opening, caches filling, the first plans and ANALYZE) are the
        # soak's warm-up too, which its p99 verdict leaves out.
        warm = await paced_load(
            [cluster.api_url],
            cluster.api_key,
            rate=args.probe_start / 2,
            duration_s=args.step_s,
            connections=args.connections,
            on_answer=lambda _at, _latency_s, _status: None,
        )
        first_index = warm.scheduled + warm.skipped
        rate = args.probe_start
        print(
            "| step msg/s | achieved | skipped | non-201 | p99 ms | not final | machine busy "
            "cores | |",
            flush=True,
        )
        for _ in range(args.probe_steps):
            step = Step(rate)

            def on_answer(_at: float, latency_s: float, status: int, step: Step = step) -> None:
                step.latencies.append(latency_s)
                step.non_201 += status != 201

            busy_before, t_before = machine_busy_s()[0], time.monotonic()
            result = await paced_load(
                [cluster.api_url],
                cluster.api_key,
                rate=rate,
                duration_s=args.step_s,
                connections=args.connections,
                on_answer=on_answer,
                first_index=first_index,
            )
            first_index += result.scheduled + result.skipped
            step.machine_cores = (machine_busy_s()[0] - busy_before) / (time.monotonic() - t_before)
            step.achieved = result.answered / result.elapsed_s if result.elapsed_s else 0.0
            step.skipped = result.skipped
            step.p99_ms = percentile(step.latencies, 0.99) * 1000
            step.latencies.clear()
            step.not_final = await not_final(conn)
            steps.append(step)
            print(
                f"| {step.rate:,.0f} | {step.achieved:,.0f} | {step.skipped:,} | "
                f"{step.non_201:,} | {step.p99_ms:.1f} | {step.not_final:,} | "
                f"{step.machine_cores:.2f} | {'held' if step.held else 'NOT held'} |",
                flush=True,
            )
            if not step.held:
                break
            rate *= 1.1
    finally:
        await conn.close()
    return steps


def measured_max(args: argparse.Namespace) -> list[float]:
    """`--probes` maxima, one after another, each on a fresh database with fresh processes.

    One probe is one reading of a shared machine whose speed wanders: three probes within an
    hour on one machine held 709, 644 and 857 msg/s (bench/README.md), and a soak at 80 % of
    the highest of them ran with every core busy. The soak runs at its fraction of their
    median, as the project reports any speed (the lower middle one of an even count: a rate
    some probe held)."""
    maxima = []
    for n in range(args.probes):
        if args.probes > 1:
            print(f"probe {n + 1} of {args.probes}", flush=True)
        maxima.append(probe_max(args))
    return maxima


def probe_max(args: argparse.Namespace) -> float:
    """The highest rate `probe_steps` held, on a fresh database with processes started as the
    soak's are (without --overload's limits: the maximum is of the unthrottled pipeline)."""
    cluster = start_cluster(args, overload=False)
    try:
        steps = run_uvloop(probe_steps(cluster, args))
    finally:
        cluster.close()
    held = [s.rate for s in steps if s.held]
    if not held:
        raise RuntimeError(
            f"the probe held not even its first step ({args.probe_start:g} msg/s): "
            "try a lower --probe-start"
        )
    bound = " (every step held: a lower bound)" if steps[-1].held else ""
    print(f"maximum: {held[-1]:,.0f} msg/s held, paced, accepted and delivered{bound}")
    return held[-1]


def start_cluster(args: argparse.Namespace, *, overload: bool) -> BenchCluster:
    """serve, `--workers` workers (one bind each), the simulator and Redis on a fresh
    database, the API's backpressure at its production defaults — or, `overload`, the
    queue limit the run asks for and a carrier slower than the load."""
    cluster = BenchCluster(
        args.pg_url, args.workers, LEASE_S, keep_logs=args.keep_logs, worker_nice=args.worker_nice
    )
    try:
        cluster.create_database()
        env = {
            **process_env(args),
            # Backpressure as in production (bench/accept.py's environment turns it off).
            "AMNEX_MAX_QUEUE_DEPTH": str(args.max_queue_depth if overload else 200_000),
            "AMNEX_MAX_ACCOUNT_BACKLOG": "50000",
            "AMNEX_MAX_CONNECTOR_BACKLOG": "1000000" if overload else "100000",
        }
        connector: dict[str, Any] = {"binds": args.workers}
        if overload:  # the carrier is the bottleneck: the queue in front of it grows
            connector["throughput_per_s"] = args.carrier_rate
        cluster.start_all(extra_env=env, connector_config=connector)
        wait_for_binds(cluster, args.workers)
    except BaseException:
        cluster.failed = True
        cluster.close()
        raise
    return cluster


async def soak_load(cluster: BenchCluster, soak: Soak, args: argparse.Namespace) -> None:
    names = {"serve": cluster.processes["serve"].pid}
    names.update({f"worker-{i}": pid for i, pid in enumerate(cluster.worker_pids())})
    latencies: list[float] = []
    non_201 = 0

    def on_answer(_at: float, latency_s: float, status: int) -> None:
        nonlocal non_201
        latencies.append(latency_s)
        non_201 += status != 201

    conn = await asyncpg.connect(plain_pg_url(cluster.database_url))
    client = httpx.AsyncClient()
    cpu_start = time.process_time()
    pieces: list[tuple[float, float]] = []  # CALIBRATION's timings since the last sample
    calibration = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CALIBRATION, stdout=asyncio.subprocess.PIPE
    )

    assert calibration.stdout is not None
    try:  # its cycle is built before the load starts (a few seconds of one core)
        ready = await asyncio.wait_for(calibration.stdout.readline(), timeout=120)
        if ready != b"ready\n":
            raise RuntimeError(f"the calibration process did not start: {ready!r}")
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            calibration.kill()
        await calibration.wait()
        raise

    async def read_calibration() -> None:
        assert calibration.stdout is not None
        async for line in calibration.stdout:
            compute, memory = line.split()
            pieces.append((float(compute), float(memory)))

    reader = asyncio.create_task(read_calibration())
    own_server = args.postmaster_pid is not None
    try:
        if own_server:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            soak.statements.append(await statement_counts(conn))
        wal_before = await conn.fetchrow(WAL_STATS)
        buffers_before = await conn.fetchrow(BUFFER_STATS)
        stop = asyncio.Event()
        load = asyncio.create_task(
            paced_load(
                [cluster.api_url],
                cluster.api_key,
                rate=soak.target_rate,
                duration_s=soak.duration_s,
                connections=args.connections,
                on_answer=on_answer,
                stop=stop,
            )
        )
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        cpu_before = {name: process_cpu_s(pid) for name, pid in names.items()}
        busy_before, stolen_before = machine_busy_s()
        postmaster = args.postmaster_pid
        pg_before = server_cpu_s(postmaster) if postmaster else None
        io_before = io_stalled_s()
        n_samples = int(soak.duration_s // args.sample_s)
        print(
            "| t (s) | answers | non-201 | p50 ms | p99 ms | RSS MiB "
            + " / ".join(names)
            + " | cores "
            + " / ".join(names)
            + " | queue depth | not final | machine busy cores | PostgreSQL cores | stolen "
            "| I/O full | calibration µs: cached; memory |",
            flush=True,
        )
        for k in range(1, n_samples + 1):
            await asyncio.sleep(max(0.0, t0 + k * args.sample_s - loop.time()))
            if load.done():
                break
            window, latencies[:] = list(latencies), []
            errors, non_201 = non_201, 0
            cpu_now = {name: process_cpu_s(pid) for name, pid in names.items()}
            cores = {n: (cpu_now[n] - cpu_before[n]) / args.sample_s for n in names}
            cpu_before = cpu_now
            busy_now, stolen_now = machine_busy_s()
            machine_cores, busy_before = (busy_now - busy_before) / args.sample_s, busy_now
            stolen_cores, stolen_before = (stolen_now - stolen_before) / args.sample_s, stolen_now
            pg_cores = None
            if pg_before is not None:
                pg_now = server_cpu_s(postmaster)
                pg_cores, pg_before = (pg_now - pg_before) / args.sample_s, pg_now
            io_now = io_stalled_s()
            io_full = (
                (io_now - io_before) / args.sample_s
                if io_now is not None and io_before is not None
                else None
            )
            io_before = io_now
            calibration_us = statistics.median(p[0] for p in pieces) if pieces else None
            memory_us = statistics.median(p[1] for p in pieces) if pieces else None
            pieces.clear()
            wal_timing = None
            if own_server:
                soak.statements.append(await statement_counts(conn))
                row = await conn.fetchrow(WAL_TIMING)
                wal_timing = (int(row["wal_sync"]), float(row["wal_sync_time"]), row["backend"])
            sample = Sample(
                t_s=loop.time() - t0,
                answered=len(window),
                non_201=errors,
                p50_ms=percentile(window, 0.50) * 1000,
                p99_ms=percentile(window, 0.99) * 1000,
                rss_mib={n: rss_bytes(pid) / MIB for n, pid in names.items()},
                cores=cores,
                queue_depth=await queue_depth(client, cluster.api_url),
                not_final=await not_final(conn),
                machine_cores=machine_cores,
                pg_cores=pg_cores,
                stolen_cores=stolen_cores,
                io_full=io_full,
                calibration_us=calibration_us,
                memory_us=memory_us,
                batches=await worker_batches(client, list(cluster.metrics_ports.values())),
                wal_timing=wal_timing,
                sleeps={
                    n: status_field(pid, "voluntary_ctxt_switches")
                    for n, pid in names.items()
                    if n.startswith("worker")
                },
            )
            soak.samples.append(sample)
            depth = "—" if sample.queue_depth is None else f"{sample.queue_depth:,.0f}"
            print(
                f"| {sample.t_s:5.0f} | {sample.answered:,} | {sample.non_201} | "
                f"{sample.p50_ms:.1f} | {sample.p99_ms:.1f} | "
                + " / ".join(f"{v:.0f}" for v in sample.rss_mib.values())
                + " | "
                + " / ".join(f"{v:.2f}" for v in sample.cores.values())
                + f" | {depth} | {sample.not_final:,} | {sample.machine_cores:.2f} | "
                + ("—" if sample.pg_cores is None else f"{sample.pg_cores:.2f}")
                + f" | {sample.stolen_cores:.2f} | "
                + ("—" if sample.io_full is None else f"{sample.io_full:.0%}")
                + " | "
                + ("—" if sample.calibration_us is None else f"{sample.calibration_us:.0f}")
                + ("" if sample.memory_us is None else f"; {sample.memory_us:.0f}")
                + " |",
                flush=True,
            )
        result = await load
        soak.scheduled, soak.skipped = result.scheduled, result.skipped
        soak.statuses, soak.elapsed_s = result.statuses, result.elapsed_s
        soak.generator_cpu_us = (
            (time.process_time() - cpu_start) / result.answered * 1e6 if result.answered else 0.0
        )
        soak.final = await wait_final(conn, soak.accepted, time.monotonic() + args.drain_s)
        wal_after = await conn.fetchrow(WAL_STATS)
        soak.wal_bytes = int(wal_after["wal_bytes"] - wal_before["wal_bytes"])
        soak.wal_fpi_bytes = int(wal_after["fpi_bytes"] - wal_before["fpi_bytes"])
        buffers_after = await conn.fetchrow(BUFFER_STATS)
        soak.blocks_read = int(buffers_after["blks_read"] - buffers_before["blks_read"])
        soak.blocks_hit = int(buffers_after["blks_hit"] - buffers_before["blks_hit"])
        if buffers_after["backend"] is not None and buffers_before["backend"] is not None:
            soak.backend_writes = int(buffers_after["backend"] - buffers_before["backend"])
        size = await conn.fetchval("SELECT pg_database_size(current_database())")
        soak.database_bytes = int(size)
        soak.shared_buffers = str(await conn.fetchval("SHOW shared_buffers"))
        soak.autovacuum = str(await conn.fetchval("SHOW autovacuum"))
        table = await conn.fetchrow(
            "SELECT autovacuum_count + vacuum_count AS vacuumed, n_dead_tup, n_live_tup "
            "FROM pg_stat_user_tables WHERE relname = 'messages'"
        )
        if table is not None:
            soak.messages_vacuumed = int(table["vacuumed"])
            soak.messages_dead, soak.messages_live = (
                int(table["n_dead_tup"]),
                int(table["n_live_tup"]),
            )
        if own_server:  # the texts of the statements counted
            rows = await conn.fetch(
                "SELECT queryid, query FROM pg_stat_statements WHERE queryid = ANY($1::bigint[])",
                list(soak.statements[-1]),
            )
            soak.statement_text = {int(r["queryid"]): str(r["query"]) for r in rows}
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone (a signal to the group)
            calibration.kill()
        await calibration.wait()
        reader.cancel()
        await client.aclose()
        await conn.close()


async def statement_counts(conn: Any) -> dict[int, tuple[int, float, int]]:
    """pg_stat_statements for the soak's database: queryid -> (calls, total ms, blocks)."""
    return {
        int(r["queryid"]): (int(r["calls"]), float(r["total_exec_time"]), int(r["blocks"]))
        for r in await conn.fetch(STATEMENTS)
    }


BATCH_KINDS = ("claim", "outcome", "receipt")


async def worker_batches(
    client: httpx.AsyncClient, ports: Sequence[int]
) -> dict[str, tuple[float, float, float]]:
    """The workers' transactions so far, summed over `ports` (each worker's /metrics):
    kind -> (transactions, items, seconds). A worker that does not answer counts nothing."""
    totals = {kind: [0.0, 0.0, 0.0] for kind in BATCH_KINDS}
    where = {
        "amnex_worker_batch_size_count": 0,
        "amnex_worker_batch_size_sum": 1,
        "amnex_worker_batch_seconds_sum": 2,
    }
    for port in ports:
        try:
            text = (await client.get(f"http://{HOST}:{port}/metrics", timeout=5)).text
        except httpx.HTTPError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                slot = where.get(sample.name)
                kind = sample.labels.get("kind", "")
                if slot is not None and kind in totals:
                    totals[kind][slot] += sample.value
    return {kind: (c, n, t) for kind, (c, n, t) in totals.items()}


def run_soak(args: argparse.Namespace, probes: list[float]) -> Soak:
    """The soak at `--fraction` of `--max-rate`, or of the median of the probes' maxima."""
    max_rate = args.max_rate if args.max_rate is not None else statistics.median_low(probes)
    soak = Soak(max_rate, max_rate * args.fraction, args.minutes * 60, probes=probes)
    if args.overload:
        soak.overload_depth = args.max_queue_depth
    cluster: BenchCluster | None = None
    try:
        cluster = start_cluster(args, overload=args.overload)
        soak.database = urlsplit(cluster.database_url).path.lstrip("/")
        print(
            f"soak: {soak.target_rate:,.0f} msg/s ({args.fraction:.0%} of {max_rate:,.0f}) for "
            f"{soak.duration_s:.0f} s, a sample every {args.sample_s:g} s",
            flush=True,
        )
        run_uvloop(soak_load(cluster, soak, args))
    except Exception as exc:  # reported; the processes are stopped below
        soak.error = f"{type(exc).__name__}: {exc}"
    finally:
        if cluster is not None:
            cluster.failed = not soak.correct
            cluster.close()
    return soak


# --- report ----------------------------------------------------------------------------------


def _probed(soak: Soak) -> str:
    """How the maximum was found: a probe, the median of several, or given."""
    if not soak.probes:
        return "given: --max-rate"
    return "probe" if len(soak.probes) == 1 else f"median of {len(soak.probes)} probes"


def summary_table(soak: Soak, rss: list[dict[str, Any]], p99: dict[str, Any]) -> str:
    held = soak.achieved_rate >= 0.95 * soak.target_rate and soak.skipped == 0
    allowed = {201} if soak.overload_depth is None else {201, 503}
    lines = [
        "| measure | value | verdict |",
        "|---|---|---|",
        f"| maximum (accept + deliver, {_probed(soak)}) | {soak.max_rate:,.0f} msg/s"
        + (f" (of {', '.join(f'{m:,.0f}' for m in soak.probes)})" if len(soak.probes) > 1 else "")
        + " | |",
        f"| target / achieved rate | {soak.target_rate:,.0f} / {soak.achieved_rate:,.0f} msg/s "
        f"({soak.achieved_rate / soak.target_rate:.2f}; {soak.skipped:,} skipped) "
        f"| {'held' if held else 'NOT held'} |",
        f"| answers | {', '.join(f'{k}: {v:,}' for k, v in sorted(soak.statuses.items()))} "
        f"| {'ok' if set(soak.statuses) <= allowed else 'FAIL'} |",
        f"| final statuses after the drain | {soak.final} "
        f"| {'ok' if soak.final == {'delivered': soak.accepted} else 'FAIL'} |",
    ]
    for row in rss:
        ratio = f"{row['ratio']:.3f}" if row["ratio"] is not None else "—"
        lines.append(
            f"| RSS {row['process']} ({row['compared']}) | {row['last_mib']:.1f} / "
            f"{row['reference_mib']:.1f} MiB = {ratio} | "
            f"{'within 10 %' if row['ok'] else 'OUTSIDE 10 %'} |"
        )
    ratio = f"{p99['ratio']:.2f}" if p99["ratio"] is not None else "—"
    lines.append(
        f"| p99 after {p99['after_s']:.0f} s ({p99['samples']} samples): slope; last third / "
        f"middle third median | {p99['slope_ms_per_min']:+.2f} ms/min; "
        f"{p99['last_third_median_ms']:.1f} / {p99['middle_third_median_ms']:.1f} ms = {ratio} "
        f"| {'upward beyond noise' if p99['upward'] else 'no upward trend'} |"
    )
    if soak.samples:
        lines.append(
            "| p50 / p99 over all samples (median) | "
            f"{statistics.median(s.p50_ms for s in soak.samples):.1f} / "
            f"{statistics.median(s.p99_ms for s in soak.samples):.1f} ms | |"
        )
        lines.append(
            "| machine busy, median of samples (everyone's; serve + workers) | "
            f"{statistics.median(s.machine_cores for s in soak.samples):.2f} cores "
            f"({statistics.median(sum(s.cores.values()) for s in soak.samples):.2f}) | |"
        )
        pg = [s.pg_cores for s in soak.samples if s.pg_cores is not None]
        if pg:
            lines.append(
                "| PostgreSQL, all its processes: median / highest sample | "
                f"{statistics.median(pg):.2f} / {max(pg):.2f} cores | |"
            )
    if soak.overload_depth is not None:
        depths = [s.queue_depth for s in soak.samples if s.queue_depth is not None]
        lines.append(
            f"| overload: refused 503 / queue depth max (limit {soak.overload_depth:,}) | "
            f"{soak.statuses.get(503, 0):,} / {max(depths, default=0):,.0f} | "
            f"{'bounded' if soak.queue_bounded() else 'NOT bounded'} |"
        )
    lines.append(f"| load generator CPU | {soak.generator_cpu_us:.0f} µs/request | |")
    lines.append(
        f"| PostgreSQL autovacuum; `messages` vacuumed, dead / live rows at the end | "
        f"{soak.autovacuum or '?'}; {soak.messages_vacuumed} times, "
        f"{soak.messages_dead:,} / {soak.messages_live:,} | |"
    )
    if soak.wal_bytes and soak.accepted:
        lines.append(
            "| WAL written, load start to all final: per SMS; full-page images (at most) | "
            f"{soak.wal_bytes / soak.accepted / 1024:.1f} KiB; "
            f"{min(1.0, soak.wal_fpi_bytes / soak.wal_bytes):.0%} | |"
        )
    if soak.shared_buffers:
        blocks = soak.blocks_read + soak.blocks_hit
        written = "—" if soak.backend_writes is None else f"{soak.backend_writes:,}"
        lines.append(
            "| PostgreSQL buffers: `shared_buffers`; database at the end; blocks read from "
            "outside shared buffers; pages written out by backends themselves | "
            f"{soak.shared_buffers}; {soak.database_bytes / MIB:,.0f} MiB; "
            f"{soak.blocks_read:,} of {blocks:,} ({soak.blocks_read / max(blocks, 1):.2%}); "
            f"{written} | |"
        )
    if soak.server_log is not None:
        log = soak.server_log
        for name, runs in (("autovacuum", log.vacuums), ("autoanalyze", log.analyzes)):
            if runs:
                lines.append(
                    f"| {name} of `messages` in the soak: runs; CPU s first / last / total; "
                    f"elapsed s first / last | {len(runs)}; {runs[0].cpu_s:.2f} / "
                    f"{runs[-1].cpu_s:.2f} / {sum(r.cpu_s for r in runs):.2f}; "
                    f"{runs[0].elapsed_s:.1f} / {runs[-1].elapsed_s:.1f} | |"
                )
        kinds: dict[str, int] = {}
        for statement in log.slow:
            kinds[statement.detail] = kinds.get(statement.detail, 0) + 1
        lines.append(
            f"| statements over {SLOW_STATEMENT_MS} ms in the soak: by kind; longest | "
            + (", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items())) or "none")
            + (f"; {max(m.elapsed_s for m in log.slow):.1f} s" if log.slow else "")
            + " | |"
        )
        lines.append(
            "| lock waits over 1 s in the soak: count; longest | "
            + (
                f"{len(log.lock_waits)}; {max(m.elapsed_s for m in log.lock_waits):.1f} s "
                f"({log.lock_waits[0].detail} first)"
                if log.lock_waits
                else "none"
            )
            + " | |"
        )
        lines.append(
            "| checkpoints in the soak: count; total s each (written over "
            "`checkpoint_completion_target`) | "
            f"{len(log.checkpoints)}; "
            + (", ".join(f"{c.elapsed_s:.0f}" for c in log.checkpoints) or "—")
            + " | |"
        )
    return "\n".join(lines)


def thirds_table(soak: Soak) -> str:
    """Medians of each third of the samples the p99 verdict compares: what rose with p99 —
    one process's CPU, all of them, PostgreSQL's, or the machine's speed (CALIBRATION)."""
    _, _, parts = thirds(soak)
    names = list(soak.samples[0].cores) if soak.samples else []

    def median(values: list[float | None], digits: int) -> str:
        known = [v for v in values if v is not None]
        return f"{statistics.median(known):.{digits}f}" if known else "—"

    def work_per_sms(i: int) -> tuple[float | None, float | None]:
        """Sample i's CPU per SMS of serve, the workers and PostgreSQL together (µs), and the
        same in units of CALIBRATION's piece of work (meant to take the machine's speed out;
        bench/README.md: on one machine the calibration swung more than the work did)."""
        sample = soak.samples[i]
        window_s = sample.t_s - (soak.samples[i - 1].t_s if i else 0.0)
        if not sample.answered or window_s <= 0:
            return None, None
        cores = sum(sample.cores.values()) + (sample.pg_cores or 0.0)
        us = cores * window_s / sample.answered * 1e6
        return us, (us / sample.calibration_us if sample.calibration_us else None)

    lines = [
        "| third | t (s) | p50 / p99 ms | cores "
        + " / ".join(names)
        + " | PostgreSQL cores | machine busy | stolen | calibration µs: cached; memory "
        "| CPU per SMS, all of Amnex and PostgreSQL: µs; in calibration pieces |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, part in zip(("first", "middle", "last"), parts, strict=True):
        picked = [soak.samples[i] for i in part]
        if not picked:
            continue
        work = [work_per_sms(i) for i in part]
        lines.append(
            f"| {label} | {picked[0].t_s:.0f} to {picked[-1].t_s:.0f} | "
            f"{median([s.p50_ms for s in picked], 1)} / {median([s.p99_ms for s in picked], 1)} | "
            + " / ".join(median([s.cores[n] for s in picked], 3) for n in names)
            + f" | {median([s.pg_cores for s in picked], 3)} "
            f"| {median([s.machine_cores for s in picked], 2)} "
            f"| {median([s.stolen_cores for s in picked], 3)} "
            f"| {median([s.calibration_us for s in picked], 0)}; "
            f"{median([s.memory_us for s in picked], 0)} "
            f"| {median([w[0] for w in work], 0)}; {median([w[1] for w in work], 2)} |"
        )
    return "\n".join(lines)


def batches_table(soak: Soak) -> str:
    """The workers' transactions in each third (their /metrics, summed over them): per kind,
    transactions a second, items per transaction and ms per transaction — whether their
    batches shrank, or PostgreSQL answered them more slowly, where their CPU rose — and, on
    the run's own server, its WAL flushes (what every commit waits for) and the pages its
    backends had to write out themselves; last, the workers' CPU per SMS and how often their
    event loops slept."""
    _, _, parts = thirds(soak)
    if not soak.samples or not soak.samples[-1].batches.get("claim", (0.0,))[0]:
        return ""
    lines = [
        "| third | "
        + " | ".join(f"{kind}: per s, items each, ms each" for kind in BATCH_KINDS)
        + " | PostgreSQL's WAL flushes: per s, ms each | pages backends wrote out, per s "
        "| the workers: CPU µs per SMS; sleeps per s |",
        "|---|" + "---:|" * (len(BATCH_KINDS) + 3),
    ]
    for label, part in zip(("first", "middle", "last"), parts, strict=True):
        if not part:
            continue
        start = soak.samples[part[0] - 1] if part[0] else None
        end = soak.samples[part[-1]]
        span_s = end.t_s - (start.t_s if start is not None else 0.0)
        cells = []
        for kind in BATCH_KINDS:
            was = start.batches.get(kind, (0.0, 0.0, 0.0)) if start is not None else (0.0,) * 3
            now = end.batches.get(kind, (0.0, 0.0, 0.0))
            count, items, seconds = (b - a for a, b in zip(was, now, strict=True))
            cells.append(
                f"{count / span_s:,.1f}, {items / count:.1f}, {seconds / count * 1000:.2f}"
                if count and span_s
                else "—"
            )
        cells.extend(_wal_cells(start, end, span_s))
        cells.append(_worker_cells(soak, part, start, end, span_s))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _worker_cells(
    soak: Soak, part: list[int], start: Sample | None, end: Sample, span_s: float
) -> str:
    """The workers' CPU per SMS answered in the samples `part` (all workers together) and how
    often they slept: at a constant rate, a worker whose event loop sleeps less is busier for
    the same messages (CPU per SMS up) or waits less between them."""
    samples = [soak.samples[i] for i in part]
    answered = sum(s.answered for s in samples)
    worker_s = sum(
        sum(v for n, v in s.cores.items() if n.startswith("worker")) for s in samples
    ) * (span_s / len(samples) if samples else 0.0)
    cpu = f"{worker_s / answered * 1e6:,.0f}" if answered else "—"
    if start is None or not start.sleeps or not end.sleeps or span_s <= 0:
        return f"{cpu}; —"
    slept = sum(end.sleeps.get(n, 0) - start.sleeps.get(n, 0) for n in end.sleeps)
    return f"{cpu}; {slept / span_s:,.0f}"


def _wal_cells(start: Sample | None, end: Sample, span_s: float) -> list[str]:
    """WAL flushes a second and ms each, and pages backends wrote out a second, between two
    samples of the run's own server (a commit waits for its flush)."""
    if start is None or start.wal_timing is None or end.wal_timing is None or span_s <= 0:
        return ["—", "—"]
    (syncs_was, ms_was, backend_was), (syncs, ms, backend) = start.wal_timing, end.wal_timing
    flushes = syncs - syncs_was
    cells = [f"{flushes / span_s:,.0f}, {(ms - ms_was) / flushes:.2f}" if flushes else "0"]
    written = None if backend is None or backend_was is None else backend - backend_was
    cells.append("—" if written is None else f"{written / span_s:,.0f}")
    return cells


def statement_deltas(
    soak: Soak, part: list[int]
) -> tuple[float, dict[int, tuple[int, float, int]]]:
    """Seconds spanned by the samples `part` and each statement's (calls, ms, blocks) in them."""
    if not part or len(soak.statements) != len(soak.samples) + 1:
        return 0.0, {}
    first, last = part[0], part[-1]
    before, after = soak.statements[first], soak.statements[last + 1]
    start_s = soak.samples[first - 1].t_s if first else 0.0
    out = {}
    for queryid, (calls, ms, blocks) in after.items():
        was = before.get(queryid, (0, 0.0, 0))
        if calls > was[0]:
            out[queryid] = (calls - was[0], ms - was[1], blocks - was[2])
    return soak.samples[last].t_s - start_s, out


def statements_table(soak: Soak, top: int = 10) -> str:
    """The statements that took the most time in the middle and last thirds: calls per second,
    ms and shared blocks per call in each. Blocks per call is work done whatever the machine's
    speed; ms per call includes waiting for a core."""
    _, _, parts = thirds(soak)
    middle_s, middle = statement_deltas(soak, parts[1])
    last_s, last = statement_deltas(soak, parts[2])
    if not middle_s or not last_s:
        return ""
    ranked = sorted(
        set(middle) | set(last),
        key=lambda q: middle.get(q, (0, 0.0, 0))[1] + last.get(q, (0, 0.0, 0))[1],
        reverse=True,
    )
    lines = [
        "| statement | calls/s middle → last | ms/call middle → last | blocks/call middle → last |",
        "|---|---|---|---|",
    ]

    def per_call(stats: tuple[int, float, int] | None) -> tuple[float, float, float]:
        return (stats[1] / stats[0], stats[2] / stats[0], stats[0]) if stats else (0, 0, 0)

    for queryid in ranked[:top]:
        text = " ".join(soak.statement_text.get(queryid, str(queryid)).split())
        m_ms, m_blocks, m_calls = per_call(middle.get(queryid))
        l_ms, l_blocks, l_calls = per_call(last.get(queryid))
        lines.append(
            f"| `{text[:70]}` | {m_calls / middle_s:.1f} → {l_calls / last_s:.1f} "
            f"| {m_ms:.3f} → {l_ms:.3f} | {m_blocks:.1f} → {l_blocks:.1f} |"
        )
    total_m = sum(v[1] for v in middle.values()) / middle_s / 1000
    total_l = sum(v[1] for v in last.values()) / last_s / 1000
    lines.append(f"| all statements: executing, s per s | {total_m:.3f} → {total_l:.3f} | | |")
    return "\n".join(lines)


def maintenance_table(log: ServerLog) -> str:
    """Every autovacuum and analyze of `messages` and every checkpoint, in time order."""
    rows = [("autovacuum", m) for m in log.vacuums]
    rows += [("autoanalyze", m) for m in log.analyzes]
    rows += [("checkpoint", m) for m in log.checkpoints]
    rows.sort(key=lambda row: row[1].at)
    lines = ["| at | what | elapsed s | CPU s | detail |", "|---|---|---:|---:|---|"]
    for what, m in rows:
        cpu = f"{m.cpu_s:.2f}" if what != "checkpoint" else "—"
        lines.append(f"| {m.at[11:19]} | {what} | {m.elapsed_s:.1f} | {cpu} | {m.detail} |")
    return "\n".join(lines)


def json_rows(soak: Soak, rss: list[dict[str, Any]], p99: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {
            "figure": f"soak rate ({soak.duration_s / 60:g} min)",
            "value": soak.achieved_rate,
            "unit": "msg/s",
            "baseline": f"max ({_probed(soak)})",
            "baseline_value": soak.max_rate,
            "ratio": soak.achieved_rate / soak.max_rate if soak.max_rate else None,
        }
    ]
    for row in rss:
        rows.append(
            {
                "figure": f"RSS {row['process']}",
                "value": row["last_mib"],
                "unit": "MiB",
                "baseline": row["compared"].split(" vs ")[1],
                "baseline_value": row["reference_mib"],
                "ratio": row["ratio"],
            }
        )
    rows.append(
        {
            "figure": "p99 last third",
            "value": p99["last_third_median_ms"],
            "unit": "ms",
            "baseline": "middle third",
            "baseline_value": p99["middle_third_median_ms"],
            "ratio": p99["ratio"],
        }
    )
    rows.append({"figure": "p99 slope", "value": p99["slope_ms_per_min"], "unit": "ms/min"})
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 minute after a short probe")
    parser.add_argument("--minutes", type=float, default=None, help="soak length (10; quick 1)")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--max-rate", type=float, default=None, help="skip the probe")
    parser.add_argument(
        "--probe-start", type=float, default=None, help="the probe's first rate (400; quick 200)"
    )
    parser.add_argument(
        "--step-s", type=float, default=None, help="each probe step's length (30; quick 10)"
    )
    parser.add_argument("--probe-steps", type=int, default=None, help="at most (24; quick 4)")
    parser.add_argument(
        "--probes", type=int, default=None, help="probes, their median the maximum (3; quick 1)"
    )
    parser.add_argument("--fraction", type=float, default=None, help="of the maximum (0.8)")
    parser.add_argument(
        "--overload", action="store_true", help="past the maximum, with a low queue limit"
    )
    parser.add_argument(
        "--max-queue-depth", type=int, default=5_000, help="the API's limit with --overload"
    )
    parser.add_argument(
        "--carrier-rate", type=float, default=100.0, help="the connector's msg/s with --overload"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--drain-s", type=float, default=120.0, help="bound on the final wait")
    parser.add_argument("--worker-concurrency", type=int, default=500, help="sends in flight")
    parser.add_argument("--pool-size", type=int, default=5, help="AMNEX_DATABASE_POOL_SIZE")
    parser.add_argument(
        "--worker-nice", type=int, default=0, help="the workers' nice value (systemd's Nice=)"
    )
    parser.add_argument(
        "--pg-url",
        default=None,
        help="server to create databases on (default: one of the run's own, PostgreSQL's "
        f"defaults; `--pg-url {DEFAULT_PG_URL}` for the machine's)",
    )
    parser.add_argument(
        "--pg-conf",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a postgresql.conf setting for the run's own server (repeatable), e.g. "
        "shared_buffers=1GB",
    )
    parser.add_argument(
        "--redis-url", default=DEFAULT_REDIS_URL, help="AMNEX_REDIS_URL ('' for none)"
    )
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    args = parser.parse_args(argv)
    args.minutes = args.minutes or (1.0 if args.quick else 10.0)
    args.postmaster_pid = None  # set when the run starts a server of its own
    args.fraction = args.fraction or 0.8
    args.probe_start = args.probe_start or (200.0 if args.quick else 400.0)
    args.step_s = args.step_s or (10.0 if args.quick else 30.0)
    args.probe_steps = args.probe_steps or (4 if args.quick else 24)
    args.probes = args.probes or (1 if args.quick else 3)
    if not 0 < args.fraction <= (3 if args.overload else 1):
        parser.error("--fraction in (0, 1], or (0, 3] with --overload")
    if args.minutes <= 0 or args.sample_s <= 0 or args.max_queue_depth < 1:
        parser.error("--minutes, --sample-s and --max-queue-depth positive")
    if args.minutes > 120:
        parser.error("--minutes: at most 120")
    if args.workers < 1 or args.probe_start <= 0 or args.step_s <= 0 or args.probe_steps < 1:
        parser.error("--workers, --probe-start, --step-s and --probe-steps positive")
    if args.probe_steps > 30 or args.step_s > 300:
        parser.error("--probe-steps: at most 30; --step-s: at most 300")
    if not 1 <= args.probes <= 7:
        parser.error("--probes: 1 to 7")
    for setting in args.pg_conf:
        if not re.fullmatch(r"[a-z_.]+=[A-Za-z0-9_.]+", setting):
            parser.error(f"--pg-conf {setting!r}: NAME=VALUE, e.g. shared_buffers=1GB")
    if args.pg_conf and args.pg_url is not None:
        parser.error("--pg-conf sets up the run's own server; not with --pg-url")
    for url in (args.pg_url or "", args.redis_url):
        if url and not loopback_only(url):
            parser.error(f"{url}: this benchmark runs on loopback only")
    return args


def _settings(pg_conf: Sequence[str]) -> list[tuple[str, str]]:
    return [(name, value) for name, _, value in (s.partition("=") for s in pg_conf)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    server: TempPostgres | None = None
    try:
        if args.pg_url is None:
            # A server of this run's own, as PostgreSQL ships (autovacuum on): the machine's
            # shared one may be tuned for test suites (this machine's runs with autovacuum off).
            tuned = "".join(f"{name} = '{value}'\n" for name, value in _settings(args.pg_conf))
            server = TempPostgres(settings=SERVER_LOGGING + tuned)
            server.init()
            server.start()
            args.pg_url = server.admin_url
            args.postmaster_pid = server.postmaster_pid()
            print(
                f"PostgreSQL of this run: {server.admin_url} (initdb defaults"
                + "".join(f", {setting}" for setting in args.pg_conf)
                + ")",
                flush=True,
            )
        probes = measured_max(args) if args.max_rate is None else []
        log_from = server.log.stat().st_size if server is not None else 0
        soak = run_soak(args, probes)
        if server is not None:
            with server.log.open(errors="replace") as text:
                text.seek(log_from)
                soak.server_log = read_server_log(text.read(), soak.database)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server is not None:
            if args.keep_logs:
                kept = Path(tempfile.mkdtemp(prefix="amnex-soak-pg-"))
                server.copy_log(kept)
                print(f"PostgreSQL's log kept in {kept}", file=sys.stderr)
            server.close()
    rss = rss_verdicts(soak)
    p99 = p99_verdict(soak)
    held = soak.achieved_rate >= 0.95 * soak.target_rate and soak.skipped == 0
    if args.overload:  # refusing is the point: judge memory and the queue's bound only
        verdicts_ok = all(r["ok"] for r in rss) and soak.queue_bounded()
    else:
        verdicts_ok = held and all(r["ok"] for r in rss) and p99["ok"]
    ok = soak.correct and (args.quick or verdicts_ok)
    print()
    print(
        f"Soak on PostgreSQL, {args.workers} workers"
        + (f" (nice {args.worker_nice})" if args.worker_nice else "")
        + f", {soak.duration_s / 60:g} min at "
        f"{args.fraction:.0%} of the maximum"
        + (f", max_queue_depth {args.max_queue_depth:,}" if args.overload else "")
        + f" — correctness {'PASS' if soak.correct else 'FAIL'}, "
        f"verdicts {'PASS' if verdicts_ok else 'FAIL'}"
        + (" (quick mode: indicative only)" if args.quick else "")
    )
    if soak.error:
        print(f"ERROR {soak.error}")
    print()
    print(summary_table(soak, rss, p99))
    if soak.samples:
        print()
        print("The thirds of the samples after the warm-up (medians):")
        print(thirds_table(soak))
        if batches := batches_table(soak):
            print()
            print(
                "The workers' transactions (their /metrics) and PostgreSQL's WAL flushes in "
                "the same thirds:"
            )
            print(batches)
    if statements := statements_table(soak):
        print()
        print("PostgreSQL's statements, middle third → last third (pg_stat_statements):")
        print(statements)
    if soak.server_log is not None:
        print()
        print("PostgreSQL's maintenance during the soak (its log):")
        print(maintenance_table(soak.server_log))
    if args.json:
        print(
            json.dumps(
                {
                    "benchmark": "soak",
                    "ok": ok,
                    "rows": json_rows(soak, rss, p99),
                    "samples": [s.__dict__ for s in soak.samples],
                }
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
