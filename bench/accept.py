"""Bench: how many `POST /v1/messages` per second Amnex accepts durably, against the ceiling.

For each target — `noop` (bench/noop_app.py: the HTTP stack validating the same body and doing
nothing else), `sqlite` (WAL, synchronous=FULL, the default), `sqlite-normal` (synchronous=NORMAL,
the documented trade-off) and `postgres` — this script prepares a fresh database, migrates it,
creates an account with a verified default email sender and a per-key rate limit far above what
the machine can reach, starts `amnex serve` on a free loopback port (no worker: acceptance only),
and drives it with wrk through bench/post_message.lua: exactly `--requests` POSTs over
`--connections` keep-alive connections from one wrk thread, bounded by `--duration-cap-s`.

After every run on a database it checks that the number of new rows in `messages` equals the
number of 201 responses: a 201 must mean "committed", so no more rows and no fewer.

One warm-up round is discarded (it fills caches, pools and the SQLite page cache). Then the
targets are run in interleaved rounds (noop, sqlite, postgres, noop, …) so that noise on this
shared 2-core machine lands on every target alike, and the MEDIAN of `--runs` is reported with
its ratio to the no-op median of the same invocation. A Markdown table is printed and the full
results are written to bench/results/accept-<UTC time>.json.

    .venv/bin/python bench/accept.py [--requests 20000] [--connections 64] [--runs 3]
        [--targets noop,sqlite,postgres]
        [--pg-url postgresql://postgres@127.0.0.1:5432/test] [--duration-cap-s 120]
        [--quiet-wait-s 60]

Targets: noop, sqlite, sqlite-normal, postgres. Exits non-zero when a run is incomplete, answered
anything but 201, or fails its durability check; 2 when wrk is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import httpx
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from amnex.accounts.service import add_sender, create_account
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.migrate import upgrade_database
from amnex.messages.models import Message

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LUA_SCRIPT = BENCH_DIR / "post_message.lua"
NOOP_APP = BENCH_DIR / "noop_app.py"
RESULTS_DIR = BENCH_DIR / "results"
KNOWN_TARGETS = ("noop", "sqlite", "sqlite-normal", "postgres")
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 60.0
# What the README promises for SQLite (synchronous=FULL) at 64 connections.
TARGET_RATIO = 0.45
TARGET_P99_MS = 50.0


@dataclass
class RunResult:
    """One wrk run against one target. Round 0 is the discarded warm-up."""

    target: str
    round: int
    accepted: int
    accepted_per_s: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    complete: bool
    rows_added: int | None
    durable: bool | None
    cpu: dict[str, float]
    wrk: dict[str, Any]

    @property
    def ok(self) -> bool:
        """Every request answered 201 and, on a database, every 201 is a stored row."""
        return self.complete and self.durable is not False and set(self.statuses) == {"201"}


@dataclass
class Server:
    """A server under test, started as a subprocess and owned by this script."""

    target: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    api_key: str = "none"
    database_url: str | None = None
    pg_database: str | None = None
    pg_admin_url: str = ""
    log_file: IO[bytes] | None = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Bench:
    """Everything to clean up on the way out, whatever happens."""

    workdir: Path
    pg_admin_url: str
    servers: dict[str, Server] = field(default_factory=dict)
    pg_databases: list[str] = field(default_factory=list)

    def close(self) -> None:
        for server in self.servers.values():
            stop_process(server.process)
            if server.log_file is not None:
                server.log_file.close()
        self.servers.clear()
        for name in self.pg_databases:
            try:
                asyncio.run(drop_pg_database(self.pg_admin_url, name))
            except Exception as exc:  # report and keep cleaning up
                print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)
        self.pg_databases.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn then drains and closes its writer), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


def server_env(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without any AMNEX_* setting, plus ours: runs are reproducible.

    Backpressure is off: the accept benchmark queues tens of thousands of messages with no
    worker to send them, which is exactly what it refuses in production.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMNEX_")}
    env.update(
        {
            "AMNEX_MAX_QUEUE_DEPTH": "0",
            "AMNEX_MAX_ACCOUNT_BACKLOG": "0",
            "AMNEX_MAX_CONNECTOR_BACKLOG": "0",
        }
    )
    env.update(extra)
    return env


def wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.target}: the server exited with {server.process.returncode}:\n"
                + server.tail()
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.base_url + "/healthz", timeout=1.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.target}: no /healthz within {STARTUP_TIMEOUT_S}s")
        time.sleep(0.1)


def start_process(
    bench: Bench, target: str, argv: list[str], env: dict[str, str], port: int
) -> Server:
    log_path = bench.workdir / f"{target}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=bench.workdir,
        # Its own session: a Ctrl-C in the terminal reaches only this script, which then stops
        # the servers itself (after wrk has finished), in order.
        start_new_session=True,
    )
    server = Server(target, process, f"http://{HOST}:{port}", log_path, log_file=log_file)
    bench.servers[target] = server
    return server


# --- databases -------------------------------------------------------------------------------


def plain_pg_url(url: str) -> str:
    """asyncpg wants postgresql://…; accept the SQLAlchemy spelling too."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_pg_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(plain_pg_url(admin_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_pg_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(plain_pg_url(admin_url))
    try:
        # FORCE (PostgreSQL 13+) ends any session a crashed server left behind.
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def seed(database_url: str) -> str:
    """Migrate, then an account that can send email at any rate. Returns its API key."""
    db = Database(Settings(database_url=database_url))
    try:
        await upgrade_database(db)
        async with db.unit_of_work() as session:
            account, _, api_key = await create_account(
                session,
                business_name="Bench Ltd",
                contact_name="Bench",
                email="ops@bench.example",
                settings={"rate_limit_per_s": 1_000_000},
                actor="bench",
            )
            await add_sender(
                session,
                account_id=account.id,
                channel="email",
                address="bench@bench.example",
                is_default=True,
                actor="bench",
            )
        return api_key
    finally:
        await db.dispose()


async def count_messages(database_url: str) -> int:
    db = Database(Settings(database_url=database_url))
    try:
        async with db.read_session() as session:
            count = await session.scalar(select(func.count()).select_from(Message))
        return int(count or 0)
    finally:
        await db.dispose()


# --- targets ---------------------------------------------------------------------------------


def start_target(bench: Bench, target: str) -> Server:
    port = free_port()
    if target == "noop":
        server = start_process(
            bench,
            target,
            [sys.executable, str(NOOP_APP), "--host", HOST, "--port", str(port)],
            server_env({}),
            port,
        )
        wait_healthy(server)
        return server

    extra: dict[str, str] = {}
    pg_database = None
    if target in ("sqlite", "sqlite-normal"):
        database_url = f"sqlite+aiosqlite:///{bench.workdir / target}.db"
        # Pinned explicitly rather than left to the default, so the table says what it measured.
        extra["AMNEX_SQLITE_SYNCHRONOUS"] = "NORMAL" if target == "sqlite-normal" else "FULL"
    elif target == "postgres":
        pg_database = f"amnex_bench_{secrets.token_hex(4)}"
        asyncio.run(create_pg_database(bench.pg_admin_url, pg_database))
        bench.pg_databases.append(pg_database)
        database_url = (
            make_url(plain_pg_url(bench.pg_admin_url))
            .set(database=pg_database)
            .render_as_string(hide_password=False)
        )
    else:  # argparse already refused it
        raise ValueError(target)
    api_key = asyncio.run(seed(database_url))
    amnex = Path(sys.executable).with_name("amnex")
    env = server_env(
        {
            "AMNEX_DATABASE_URL": database_url,
            # Makes the email channel routable; no worker runs, so nothing is ever sent.
            "AMNEX_SMTP_HOST": HOST,
            **extra,
        }
    )
    server = start_process(
        bench, target, [str(amnex), "serve", "--host", HOST, "--port", str(port)], env, port
    )
    server.api_key = api_key
    server.database_url = database_url
    server.pg_database = pg_database
    server.pg_admin_url = bench.pg_admin_url
    wait_healthy(server)
    return server


# --- CPU accounting --------------------------------------------------------------------------
#
# This 2-core machine is shared: other people's test suites run on it at any time. Each run
# therefore records where the CPU went — the server under test, wrk, PostgreSQL, and everything
# else ("other") — and waits, within a bound, for a quiet machine before it starts.

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> tuple[float, float]:
    """CPU seconds, since boot, that all CPUs spent busy (not idle, iowait or stolen), and
    stolen by the hypervisor for other guests (noise that no process here accounts for)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    steal = fields[7] if len(fields) > 7 else 0
    busy = sum(fields[:8]) - fields[3] - fields[4] - steal
    return busy * _TICK_S, steal * _TICK_S


def _stat_fields(path: Path) -> list[str] | None:
    """The fields of a /proc/<pid>/stat after the command name (field 3 onwards), or None
    when the process is gone."""
    try:
        stat = path.read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads included."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return (int(fields[11]) + int(fields[12])) * _TICK_S if fields else 0.0


def server_cpu_s(postmaster: int) -> float:
    """CPU seconds of a whole PostgreSQL server: the postmaster, its living children
    (backends, WAL writer, checkpointer, autovacuum workers) and the children it has reaped."""
    fields = _stat_fields(Path(f"/proc/{postmaster}/stat"))
    if fields is None:
        return 0.0
    # utime stime cutime cstime: its own and its reaped children's.
    total = sum(int(v) for v in fields[11:15]) * _TICK_S
    for entry in Path("/proc").iterdir():
        child = _stat_fields(entry / "stat") if entry.name.isdigit() else None
        if child is not None and int(child[1]) == postmaster:  # field 4, ppid
            total += (int(child[11]) + int(child[12])) * _TICK_S
    return total


def postgres_cpu_s(pids: list[int]) -> dict[int, float]:
    """CPU seconds of the given PostgreSQL backends (the server's pooled connections)."""
    return {pid: process_cpu_s(pid) for pid in pids}


async def pg_backend_pids(admin_url: str, database: str) -> list[int]:
    conn = await asyncpg.connect(plain_pg_url(admin_url))
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await conn.close()
    return [int(row["pid"]) for row in rows]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(max_wait_s: float, *, max_busy_cores: float = 0.15) -> float:
    """Wait until the machine is idle for a 1 s window (our servers idle too). Returns the wait."""
    started = time.monotonic()
    announced = False
    while True:
        busy0 = machine_busy_s()[0]
        time.sleep(1.0)
        busy = machine_busy_s()[0] - busy0
        waited = time.monotonic() - started
        if busy <= max_busy_cores or waited >= max_wait_s:
            if announced:
                print(f"    (waited {waited:.0f}s for a quiet machine; now {busy:.2f} cores busy)")
            return waited
        if not announced:
            print(
                f"    machine busy ({busy:.2f} cores used by others); "
                f"waiting up to {max_wait_s:.0f}s"
            )
            announced = True


# --- load ------------------------------------------------------------------------------------


def run_wrk(
    server: Server, *, requests: int, connections: int, cap_s: int, first_number: int
) -> dict[str, Any]:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{cap_s}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        server.base_url,
        "--",
        str(requests),
        server.api_key,
        str(first_number),
        str(cap_s),
    ]
    # wrk ends by itself at the cap; the extra minute only guards against a wedged wrk.
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=cap_s + 60)
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            parsed: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            return parsed
    raise RuntimeError(
        f"wrk printed no result (exit {completed.returncode}):\n"
        f"{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
    )


def measure(
    server: Server,
    round_no: int,
    *,
    requests: int,
    connections: int,
    cap_s: int,
    first_number: int,
) -> RunResult:
    before = asyncio.run(count_messages(server.database_url)) if server.database_url else None
    pids = (
        asyncio.run(pg_backend_pids(server.pg_admin_url, server.pg_database))
        if server.pg_database
        else []
    )
    wall0, (busy0, steal0) = time.monotonic(), machine_busy_s()
    server0, wrk0, pg0 = process_cpu_s(server.process.pid), children_cpu_s(), postgres_cpu_s(pids)
    out = run_wrk(
        server,
        requests=requests,
        connections=connections,
        cap_s=cap_s,
        first_number=first_number,
    )
    wall = time.monotonic() - wall0
    busy1, steal1 = machine_busy_s()
    pg1 = postgres_cpu_s(pids)
    cpu = {
        "wall_s": wall,
        "server_cores": (process_cpu_s(server.process.pid) - server0) / wall,
        "wrk_cores": (children_cpu_s() - wrk0) / wall,
        # A backend that ended during the run reads 0 afterwards: count only what it gained.
        "postgres_cores": sum(max(0.0, pg1[p] - pg0[p]) for p in pids) / wall,
        "machine_cores": (busy1 - busy0) / wall,
        "steal_cores": (steal1 - steal0) / wall,
    }
    # Whatever else the machine did: other people's processes, and kernel threads working for
    # us that no process is charged for (loopback softirq, the ext4 journal, PostgreSQL's WAL
    # writer and checkpointer).
    cpu["other_cores"] = max(
        0.0,
        cpu["machine_cores"] - cpu["server_cores"] - cpu["wrk_cores"] - cpu["postgres_cores"],
    )
    # The server's CPU time per accepted message: the number that bounds throughput here.
    statuses_so_far = {str(k): int(v) for k, v in out["statuses"].items()}
    answered = sum(statuses_so_far.values())
    cpu["server_cpu_us_per_request"] = (
        (cpu["server_cores"] * wall / answered * 1e6) if answered else 0.0
    )
    if server.process.poll() is not None:
        raise RuntimeError(f"{server.target}: the server died during the run:\n{server.tail()}")
    statuses = {str(k): int(v) for k, v in out["statuses"].items()}
    accepted = statuses.get("201", 0)
    elapsed_s = out["elapsed_us"] / 1e6 if out["complete"] else out["wrk_duration_us"] / 1e6
    rows_added = durable = None
    if server.database_url is not None and before is not None:
        # Every response has arrived, and a 201 is sent only after its commit, so the count
        # is final: more rows than 201s would be messages stored but never acknowledged.
        rows_added = asyncio.run(count_messages(server.database_url)) - before
        durable = rows_added == accepted
    return RunResult(
        target=server.target,
        round=round_no,
        accepted=accepted,
        accepted_per_s=accepted / elapsed_s if elapsed_s > 0 else 0.0,
        p50_ms=out["latency_us"]["p50"] / 1000,
        p99_ms=out["latency_us"]["p99"] / 1000,
        statuses=statuses,
        complete=bool(out["complete"]),
        rows_added=rows_added,
        durable=durable,
        cpu=cpu,
        wrk=out,
    )


def describe(result: RunResult) -> str:
    label = "warm-up" if result.round == 0 else f"run {result.round}"
    others = {k: v for k, v in result.statuses.items() if k != "201"}
    text = (
        f"  {result.target:<13} {label:<8} {result.accepted_per_s:>8,.0f} accepted/s  "
        f"p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms  201s {result.accepted}"
    )
    if others:
        text += f"  other statuses {others}"
    if not result.complete:
        text += "  INCOMPLETE (time cap reached)"
    if result.rows_added is not None:
        verdict = "ok" if result.durable else "MISMATCH"
        text += f"  rows +{result.rows_added} ({verdict})"
    cpu = result.cpu
    text += (
        f"\n{'':<24}server {cpu['server_cores']:.2f} cores "
        f"({cpu['server_cpu_us_per_request']:.0f} us/request), wrk {cpu['wrk_cores']:.2f}, "
        f"postgres backends {cpu['postgres_cores']:.2f}, rest {cpu['other_cores']:.2f}, "
        f"stolen {cpu['steal_cores']:.2f}"
    )
    return text


# --- report ----------------------------------------------------------------------------------


def summarise(results: list[RunResult], targets: list[str]) -> list[dict[str, Any]]:
    measured = [r for r in results if r.round > 0]
    medians: dict[str, dict[str, Any]] = {}
    for target in targets:
        runs = [r for r in measured if r.target == target]
        medians[target] = {
            "target": target,
            "runs": len(runs),
            "accepted_per_s": [round(r.accepted_per_s) for r in runs],
            "median_accepted_per_s": statistics.median(r.accepted_per_s for r in runs),
            "median_p50_ms": statistics.median(r.p50_ms for r in runs),
            "median_p99_ms": statistics.median(r.p99_ms for r in runs),
            "median_server_cpu_us_per_request": statistics.median(
                r.cpu["server_cpu_us_per_request"] for r in runs
            ),
            "max_other_cores": max(r.cpu["other_cores"] for r in runs),
            "all_durable": all(r.durable is not False for r in runs),
            "all_complete": all(r.complete for r in runs),
        }
    ceiling = medians.get("noop", {}).get("median_accepted_per_s")
    for row in medians.values():
        row["ratio_to_noop"] = row["median_accepted_per_s"] / ceiling if ceiling else None
    return list(medians.values())


def markdown_table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| target | median accepted/s | p50 ms | p99 ms | vs no-op | runs (accepted/s) | "
        "rows = 201s | server CPU µs/request | rest of machine (max, cores) |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for row in summary:
        ratio = f"{row['ratio_to_noop']:.2f}" if row["ratio_to_noop"] is not None else "n/a"
        durable = "n/a" if row["target"] == "noop" else ("yes" if row["all_durable"] else "NO")
        runs = ", ".join(f"{v:,}" for v in row["accepted_per_s"])
        lines.append(
            f"| {row['target']} | {row['median_accepted_per_s']:,.0f} | "
            f"{row['median_p50_ms']:.1f} | {row['median_p99_ms']:.1f} | {ratio} | {runs} | "
            f"{durable} | {row['median_server_cpu_us_per_request']:.0f} | "
            f"{row['max_other_cores']:.2f} |"
        )
    return "\n".join(lines)


def filesystem_of(path: Path) -> str:
    """The mount type under `path`: fsync on tmpfs costs nothing and would flatter SQLite."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


def git_state() -> dict[str, Any]:
    """Which code was measured (read-only git; the tree may carry uncommitted edits)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD"),
        # Uncommitted changes under src/ would be measured too; bench/ itself does not count.
        "src_dirty": bool(git("status", "--porcelain", "--", "src")),
    }


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    wrk_version = subprocess.run(
        ["wrk", "-v"], capture_output=True, text=True, timeout=10
    ).stdout.splitlines()
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version[0] if wrk_version else "unknown",
    }


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark POST /v1/messages against the no-op ceiling."
    )
    parser.add_argument("--requests", type=int, default=20_000, help="POSTs per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3, help="measured runs per target")
    parser.add_argument(
        "--targets",
        default="noop,sqlite,postgres",
        help=f"comma-separated, from {','.join(KNOWN_TARGETS)}",
    )
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--duration-cap-s", type=int, default=120, help="time cap per run")
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=60.0,
        help="before each run, wait up to this long for other work on the machine to stop",
    )
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON line of the summary (bench/quick.py)"
    )
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(KNOWN_TARGETS))
    if not targets or unknown or len(set(targets)) != len(targets):
        parser.error(f"--targets: a list of distinct names from {', '.join(KNOWN_TARGETS)}")
    if args.requests < 1 or args.connections < 1 or args.runs < 1 or args.duration_cap_s < 1:
        parser.error("--requests, --connections, --runs and --duration-cap-s must be positive")
    if args.requests < args.connections:
        parser.error("--requests must be at least --connections")
    if "postgres" in targets:
        host = make_url(plain_pg_url(args.pg_url)).host or "localhost"
        if host != "localhost" and not _is_loopback(host):
            parser.error("--pg-url: this benchmark runs on loopback only")
    args.target_list = targets
    return args


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM becomes an exception, so the `finally` below still stops every server.
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def bench_session(pg_admin_url: str) -> Iterator[Bench]:
    bench = Bench(Path(tempfile.mkdtemp(prefix="amnex-bench-")), pg_admin_url)
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield bench
    finally:
        bench.close()
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: run `apt-get install -y wrk` (Debian package), then retry.",
            file=sys.stderr,
        )
        return 2
    targets: list[str] = args.target_list
    started = datetime.now(UTC)
    results: list[RunResult] = []
    # The servers import src/ when they start, and other people commit to this tree: record
    # the code as it is now, and say so if it changed before the end.
    code = git_state()
    with bench_session(args.pg_url) as bench:
        data_fs = filesystem_of(bench.workdir)
        dirty = " + uncommitted src/ changes" if code["src_dirty"] else ""
        print(f"code {code['commit'][:10]}{dirty}; work dir {bench.workdir} ({data_fs})")
        for target in targets:
            server = start_target(bench, target)
            print(f"  started {target} at {server.base_url} (pid {server.process.pid})")
        for round_no in range(args.runs + 1):
            print("warm-up round (discarded)" if round_no == 0 else f"round {round_no}")
            for target in targets:
                waited = wait_for_quiet(args.quiet_wait_s)
                result = measure(
                    bench.servers[target],
                    round_no,
                    requests=args.requests,
                    connections=args.connections,
                    cap_s=args.duration_cap_s,
                    # Distinct recipients in every run, for realism; nothing depends on it.
                    first_number=(round_no * len(targets) + targets.index(target)) * args.requests,
                )
                result.cpu["waited_for_quiet_s"] = waited
                results.append(result)
                print(describe(result), flush=True)

    summary = summarise(results, targets)
    table = markdown_table(summary)
    print()
    print(
        f"POST /v1/messages, {args.requests:,} requests x {args.runs} runs, "
        f"{args.connections} connections, median of runs:"
    )
    print(table)
    verdicts = []
    for row in summary:
        if row["target"] == "sqlite" and row["ratio_to_noop"] is not None:
            met = row["ratio_to_noop"] >= TARGET_RATIO and row["median_p99_ms"] < TARGET_P99_MS
            verdicts.append(
                f"target (sqlite >= {TARGET_RATIO} of no-op, p99 < {TARGET_P99_MS:.0f} ms): "
                + ("met" if met else "NOT met")
            )
    for verdict in verdicts:
        print(verdict)

    RESULTS_DIR.mkdir(exist_ok=True)
    out_path = RESULTS_DIR / f"accept-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    report = {
        "benchmark": "accept",
        "started_at": started.isoformat(),
        "config": {
            "requests": args.requests,
            "connections": args.connections,
            "runs": args.runs,
            "targets": targets,
            "duration_cap_s": args.duration_cap_s,
            "wrk_threads": 1,
        },
        "machine": {**machine(), "data_filesystem": data_fs},
        "code": {**code, "changed_during_run": git_state() != code},
        "summary": summary,
        "verdicts": verdicts,
        "runs": [asdict(r) for r in results],
    }
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {out_path.relative_to(REPO_DIR)}")
    ok = all(r.ok for r in results)
    if args.json:
        print(json.dumps(json_summary(summary, ok)))
    return 0 if ok else 1


def json_summary(summary: list[dict[str, Any]], ok: bool) -> dict[str, Any]:
    """One line for bench/quick.py: each target's median against the no-op of the same run."""
    ceiling = next((r for r in summary if r["target"] == "noop"), None)
    rows = [
        {
            "figure": f"accept {row['target']}",
            "value": row["median_accepted_per_s"],
            "unit": "msg/s",
            "baseline": "noop" if ceiling else None,
            "baseline_value": ceiling["median_accepted_per_s"] if ceiling else None,
            "ratio": row["ratio_to_noop"],
            "p99_ms": row["median_p99_ms"],
        }
        for row in summary
    ]
    return {"benchmark": "accept", "ok": ok, "rows": rows}


if __name__ == "__main__":
    sys.exit(main())
