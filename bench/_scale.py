"""Shared code of bench/scaling.py and bench/soak.py: the processes on a fresh PostgreSQL
database, CPU and memory accounting per process, the worker metrics, wrk for SMS, and a
light rate-paced HTTP/1.1 client for open-loop load.

The processes are bench/chaos/common.py's `Cluster` (one `amnex serve`, N `amnex worker`, the
SMSC simulator with its control API, bench/chaos/smsc_process.py), with two changes: the
database is named `amnex_bench_<random>` and every worker serves its own Prometheus metrics on
a free loopback port (`AMNEX_WORKER_METRICS_PORT`), so that each worker's sends can be counted.
Everything is on loopback; every wait has a deadline; `close()` (always from a `finally`) stops
what was started and drops the database `WITH (FORCE)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR / "chaos") not in sys.path:
    sys.path.insert(0, str(BENCH_DIR / "chaos"))

import asyncpg  # type: ignore[import-untyped]  # noqa: E402  # asyncpg ships no types
import httpx  # noqa: E402
import uvloop  # noqa: E402
from common import FINAL, Cluster  # noqa: E402
from common import TempPostgres as TempPostgres  # noqa: E402  # re-exported for soak.py
from sqlalchemy.engine import make_url  # noqa: E402

from accept import (  # noqa: E402
    LUA_SCRIPT,
    children_cpu_s,
    create_pg_database,
    free_port,
    machine_busy_s,
    plain_pg_url,
    process_cpu_s,
    stop_process,
)
from e2e_sms import start  # noqa: E402

HOST = "127.0.0.1"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
# Database 7, not 0: the tests use 0 on the machine's Redis.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/7"
_SENT_RE = re.compile(r"^amnex_dispatch_outcomes_total\{([^}]*)\}\s+([0-9.eE+]+)$", re.M)
_GAUGE_RE = re.compile(r"^amnex_queue_depth\s+([0-9.eE+]+)$", re.M)
T = TypeVar("T")


def loopback_only(url: str) -> bool:
    """True when the URL's host is loopback (or empty / localhost)."""
    host = urlsplit(url).hostname or "localhost"
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- processes -------------------------------------------------------------------------------


@dataclass
class BenchCluster(Cluster):
    """`Cluster` on `amnex_bench_<random>`, with a metrics port per worker."""

    metrics_ports: dict[int, int] = field(default_factory=dict)
    # Workers' scheduling priority (`nice`), as systemd's `Nice=` would set it: 0 is the
    # API's own; a positive value lets the API and PostgreSQL have the cores first (in the
    # soaks of bench/README.md that changed nothing measurable).
    worker_nice: int = 0

    def create_database(self) -> None:
        self.pg_database = f"amnex_bench_{secrets.token_hex(4)}"
        asyncio.run(create_pg_database(self.pg_admin_url, self.pg_database))
        self.database_url = (
            make_url(plain_pg_url(self.pg_admin_url))
            .set(drivername="postgresql+asyncpg", database=self.pg_database)
            .render_as_string(hide_password=False)
        )

    def start_worker(self, index: int) -> None:
        self.worker_starts += 1
        port = free_port()
        self.metrics_ports[index] = port
        env = {**self.env, "AMNEX_WORKER_METRICS_PORT": str(port)}
        log = self.workdir / f"worker-{index}-{self.worker_starts}.log"
        command = [sys.executable, "-m", "amnex", "worker"]
        if self.worker_nice:
            command = ["nice", "-n", str(self.worker_nice), *command]
        self.workers[index] = start(command, env, log)

    def start_extra_serve(self, name: str) -> str:
        """Another `amnex serve` on the same database (a free port); returns its base URL."""
        port = free_port()
        self.processes[name] = start(
            [sys.executable, "-m", "amnex", "serve", "--host", HOST, "--port", str(port)],
            self.env,
            self.workdir / f"{name}.log",
        )
        return f"http://{HOST}:{port}"

    def close(self) -> None:
        # `Cluster.close` stops serve, smsc and the workers; stop any extra serve first.
        for name, process in self.processes.items():
            if name not in ("serve", "smsc"):
                stop_process(process)
        super().close()

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.workers if p is not None]

    def smsc(self, path: str) -> Any:
        response = httpx.get(self.control_url + path, timeout=60)
        response.raise_for_status()
        return response.json()

    def worker_sends(self) -> list[dict[str, float]]:
        """Each worker's `amnex_dispatch_outcomes_total` for SMS, by outcome (its /metrics)."""
        out: list[dict[str, float]] = []
        for index in range(len(self.workers)):
            port = self.metrics_ports.get(index)
            counts: dict[str, float] = {}
            if port is not None:
                with contextlib.suppress(httpx.HTTPError):
                    text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10).text
                    for labels, value in _SENT_RE.findall(text):
                        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
                        if pairs.get("channel") == "sms":
                            counts[pairs.get("outcome", "?")] = float(value)
            out.append(counts)
        return out


def wait_for_binds(cluster: BenchCluster, binds: int, timeout_s: float = 90.0) -> float:
    """Until the SMSC has `binds` bound sessions and `bind_leases` has one slot per worker
    (each worker has rebalanced to its fair share). Returns the seconds waited."""
    started = time.monotonic()
    workers = len(cluster.workers)

    async def leases() -> tuple[int, int]:
        conn = await asyncpg.connect(plain_pg_url(cluster.database_url))
        try:
            row = await conn.fetchrow(
                "SELECT count(*) AS slots, count(DISTINCT owner) AS owners FROM bind_leases"
            )
            return int(row["slots"]), int(row["owners"])
        finally:
            await conn.close()

    while True:
        if cluster.workers_alive() < workers:
            raise RuntimeError(f"a worker exited during start-up; logs in {cluster.workdir}")
        bound = int(cluster.smsc("/stats")["bound_sessions"])
        slots, owners = asyncio.run(leases())
        if bound == binds and slots == binds and owners == min(binds, workers):
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(
                f"binds not spread within {timeout_s:.0f}s: {bound} bound, {slots} slots, "
                f"{owners} owners"
            )
        time.sleep(0.5)


# --- accounting ------------------------------------------------------------------------------


def status_field(pid: int, name: str) -> int:
    """One number of /proc/<pid>/status (its first word after `name:`), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (VmRSS), 0 if it is gone."""
    return status_field(pid, "VmRSS") * 1024


@dataclass
class CpuSnapshot:
    """CPU seconds per named process, the PostgreSQL backends of the run's database, this
    script's reaped children (wrk), and the machine, at one instant."""

    at: float
    processes: dict[str, float]
    pg_backends: dict[int, float]
    children: float
    machine_busy: float


async def pg_backend_cpu(conn: Any) -> dict[int, float]:
    """CPU seconds of every backend of `conn`'s database except `conn`'s own."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    )
    return {int(r["pid"]): process_cpu_s(int(r["pid"])) for r in rows}


async def snapshot(pids: dict[str, int], conn: Any) -> CpuSnapshot:
    return CpuSnapshot(
        at=time.monotonic(),
        processes={name: process_cpu_s(pid) for name, pid in pids.items()},
        pg_backends=await pg_backend_cpu(conn),
        children=children_cpu_s(),
        machine_busy=machine_busy_s()[0],
    )


def cpu_between(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds spent between two snapshots, per process name, plus `postgres` (backends
    of the run's database: a backend that appeared meanwhile counts whole, one that ended is
    lost), `wrk` (children reaped meanwhile) and `machine` (every CPU, everyone's)."""
    out = {
        name: max(0.0, after.processes[name] - before.processes.get(name, 0.0))
        for name in after.processes
    }
    out["postgres"] = sum(
        max(0.0, cpu - before.pg_backends.get(pid, 0.0)) for pid, cpu in after.pg_backends.items()
    )
    out["postgres_backends_ended"] = float(len(set(before.pg_backends) - set(after.pg_backends)))
    out["wrk"] = max(0.0, after.children - before.children)
    out["machine"] = max(0.0, after.machine_busy - before.machine_busy)
    return out


async def queue_depth(client: httpx.AsyncClient, base_url: str) -> float | None:
    """`amnex_queue_depth` of one API process (due messages not claimed yet, at its last
    backpressure sample), or None when it is not sampled or not answered."""
    with contextlib.suppress(httpx.HTTPError):
        match = _GAUGE_RE.search((await client.get(base_url + "/metrics", timeout=5)).text)
        if match:
            return float(match.group(1))
    return None


async def status_counts(conn: Any) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM messages GROUP BY status")
    return {str(r["status"]): int(r["n"]) for r in rows}


async def wait_final(conn: Any, expected: int, deadline: float) -> dict[str, int]:
    """Poll (every 0.2 s, until `deadline`) until `expected` messages exist and all are final."""
    while True:
        counts = await status_counts(conn)
        if sum(counts.values()) >= expected and set(counts) <= FINAL:
            return counts
        if time.monotonic() >= deadline:
            return counts
        await asyncio.sleep(0.2)


# --- wrk -------------------------------------------------------------------------------------


def wrk_sms(
    base_url: str, api_key: str, *, requests: int, connections: int, cap_s: int, first: int
) -> dict[str, Any]:
    """Exactly `requests` SMS POSTs with bench/post_message.lua (one wrk thread); its JSON."""
    argv = [
        "wrk", "-t1", f"-c{connections}", f"-d{cap_s}s", "--latency", "-s", str(LUA_SCRIPT),
        base_url, "--", str(requests), api_key, str(first), str(cap_s), "sms",
    ]  # fmt: skip
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=cap_s + 60)
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            parsed: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            return parsed
    raise RuntimeError(f"wrk printed no result (exit {completed.returncode}): {completed.stderr}")


# --- open-loop load --------------------------------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection that sends a request and reads its answer; far
    lighter than a general client, so the load generator leaves the cores to the servers."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        if self._reader is not None and self._reader.at_eof():
            # The server closed it while it was idle (its keep-alive timeout, 5 s for
            # uvicorn): a slow rate on many connections leaves each idle that long.
            await self.close()
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        try:
            writer.write(head + body)
            status_head = await reader.readuntil(b"\r\n\r\n")
            lines = status_head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length, chunked, close = 0, False, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and b"close" in value.lower():
                    close = True
            if chunked:
                data = b""
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                    data += await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                data = await reader.readexactly(length)
            if close:
                await self.close()
            return status, data
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def sms_request(host: str, port: int, api_key: str, index: int) -> tuple[bytes, bytes]:
    """The head and body of one `POST /v1/messages` SMS; every message distinct (its index)
    and to a number the simulator delivers (as post_message.lua and the chaos load)."""
    subscriber = 2_000_000 + (index // 90) * 100 + index % 90
    body = (
        f'{{"channel":"sms","to":"+1415{subscriber}","body":"Soak message {index:07d}"}}'
    ).encode()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head, body


@dataclass
class PacedLoad:
    """What `paced_load` did. `on_answer(at, latency_s, status)` sees every answer as it comes:
    latency is from the request's *scheduled* time (an open loop: a late answer also delays
    nothing else, and time spent waiting for a free connection counts), status 0 for a
    transport error."""

    scheduled: int = 0
    answered: int = 0
    skipped: int = 0  # scheduled but dropped: the backlog was over its bound
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


async def paced_load(
    base_urls: list[str],
    api_key: str,
    *,
    rate: float,
    duration_s: float,
    connections: int,
    on_answer: Callable[[float, float, int], None],
    first_index: int = 0,
    max_backlog_s: float = 5.0,
    stop: asyncio.Event | None = None,
) -> PacedLoad:
    """SMS POSTs at a steady `rate` for `duration_s` (bounded by count: rate * duration),
    spread round-robin over `base_urls`, on `connections` keep-alive connections. A request
    waits for a free connection; when more than `rate * max_backlog_s` wait, new ones are
    skipped (counted) rather than queued without bound."""
    result = PacedLoad()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    targets = []
    for url in base_urls:
        parts = urlsplit(url)
        targets.append((parts.hostname or HOST, parts.port or 80))
    max_backlog = max(connections, int(rate * max_backlog_s))
    total = int(rate * duration_s)

    async def sender(slot: int) -> None:
        host, port = targets[slot % len(targets)]
        conn = HttpConnection(host, port)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                index, due = item
                head, body = sms_request(host, port, api_key, index)
                try:
                    status, _ = await asyncio.wait_for(conn.request(head, body), timeout=30)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                    status = 0
                now = loop.time()
                result.answered += 1
                result.statuses[status] = result.statuses.get(status, 0) + 1
                on_answer(time.time(), now - due, status)
        finally:
            await conn.close()

    senders = [asyncio.create_task(sender(i)) for i in range(connections)]
    t0 = loop.time()
    try:
        for n in range(total):
            if stop is not None and stop.is_set():
                break
            due = t0 + n / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if queue.qsize() >= max_backlog:
                result.skipped += 1
                continue
            result.scheduled += 1
            queue.put_nowait((first_index + n, due))
        for _ in senders:
            queue.put_nowait(None)
        await asyncio.wait_for(asyncio.gather(*senders), timeout=max_backlog_s + 60)
    finally:
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
    result.elapsed_s = loop.time() - t0
    return result


def run_uvloop(coro: Coroutine[Any, Any, T]) -> T:
    """Runs `coro` on uvloop, the event loop `amnex serve` and `amnex worker` use."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
