"""Shared code of the fault scenarios (bench/chaos/README.md): the processes, the load, the
wait for every message to be final, and the one summary table.

Everything runs on loopback, every loop has a deadline, and `Cluster.close()` (always called
from a `finally`) stops every process this script started and drops the run's database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHAOS_DIR = Path(__file__).resolve().parent
BENCH_DIR = CHAOS_DIR.parent
REPO_DIR = BENCH_DIR.parent
# The benchmarks' helpers (bench/accept.py, bench/e2e_sms.py) and the tests' webhook receiver.
for _path in (str(BENCH_DIR), str(REPO_DIR / "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import asyncpg  # type: ignore[import-untyped]  # noqa: E402  # asyncpg ships no types
import httpx  # noqa: E402
from pydantic import SecretStr  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from accept import (  # noqa: E402
    create_pg_database,
    drop_pg_database,
    free_port,
    plain_pg_url,
    server_env,
    stop_process,
)
from amnex.carriers import service as carriers  # noqa: E402
from amnex.config import Settings  # noqa: E402
from amnex.db.engine import Database  # noqa: E402
from amnex.privacy.crypto import SecretBox, generate_key  # noqa: E402
from e2e_sms import seed, start, wait_healthy  # noqa: E402
from receivers import Receiver as Receiver  # noqa: E402  # re-exported

HOST = "127.0.0.1"
FINAL = frozenset({"delivered", "undelivered", "failed", "rejected", "canceled"})
FINAL_EVENTS = [f"message.{status}" for status in sorted(FINAL)]
BODY = "Chaos test {index:06d}"
BODY_RE = re.compile(r"^Chaos test (\d{6})$")
STARTUP_TIMEOUT_S = 60.0


def add_common_options(parser: argparse.ArgumentParser, *, pg_url: bool = True) -> None:
    """The options every scenario has; `pg_url=False` for one that runs its own server."""
    parser.add_argument("--messages", type=int, default=20_000, help="SMS to send (default 20000)")
    parser.add_argument("--rate", type=float, default=300.0, help="sends per second (default 300)")
    parser.add_argument(
        "--quick", action="store_true", help="2,000 SMS at 150/s (unless given explicitly)"
    )
    parser.add_argument("--workers", type=int, default=3)
    if pg_url:
        parser.add_argument(
            "--pg-url",
            default="postgresql://postgres@127.0.0.1:5432/test",
            help="any database on the server: the run creates and drops amnex_chaos_<random>",
        )
    parser.add_argument("--wait-s", type=float, default=120.0, help="bound on the final wait")
    parser.add_argument("--lease-s", type=float, default=15.0, help="AMNEX_LEASE_S of workers")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the faults")
    parser.add_argument("--keep-logs", action="store_true", help="keep the run directory")


def apply_quick(args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    given = set(argv if argv is not None else sys.argv[1:])
    if args.quick:
        if not any(a.startswith("--messages") for a in given):
            args.messages = 2_000
        if not any(a.startswith("--rate") for a in given):
            args.rate = 150.0


# --- processes -------------------------------------------------------------------------------


@dataclass
class Cluster:
    """One `amnex serve`, N `amnex worker` and the SMSC simulator on a fresh database."""

    pg_admin_url: str
    workers_wanted: int
    lease_s: float
    keep_logs: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="amnex-chaos-")))
    pg_database: str | None = None
    database_url: str = ""
    master_key: str = field(default_factory=generate_key)
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    worker_starts: int = 0
    api_url: str = ""
    api_key: str = ""
    control_url: str = ""
    failed: bool = False

    def create_database(self) -> None:
        self.pg_database = f"amnex_chaos_{secrets.token_hex(4)}"
        asyncio.run(create_pg_database(self.pg_admin_url, self.pg_database))
        self.database_url = (
            make_url(plain_pg_url(self.pg_admin_url))
            .set(drivername="postgresql+asyncpg", database=self.pg_database)
            .render_as_string(hide_password=False)
        )

    def start_all(
        self,
        *,
        receipt_delay_ms: int = 50,
        response_delay_ms: int = 0,
        extra_env: dict[str, str] | None = None,
        connector_config: dict[str, Any] | None = None,
    ) -> None:
        """`extra_env` is added to every process's environment (`AMNEX_REDIS_URL`, say);
        `connector_config` is merged into the seeded connector's settings
        (`{"throughput_per_s": 20}`, say) before any process starts."""
        smsc_port, control_port, api_port = free_port(), free_port(), free_port()
        self.api_key = asyncio.run(seed(self.database_url, self.master_key, smsc_port, route=True))
        if connector_config:
            asyncio.run(update_connectors(self.database_url, self.master_key, connector_config))
        self.env = server_env(
            {
                **(extra_env or {}),
                "AMNEX_DATABASE_URL": self.database_url,
                "AMNEX_MASTER_KEY": self.master_key,
                "AMNEX_LEASE_S": str(self.lease_s),
                # Temporary failures (connection_lost, throttled) come back within 10 s.
                "AMNEX_RETRY_MAX_S": "10",
                # The webhook receiver is plain HTTP on loopback: dev mode lifts only the
                # https requirement of webhook URLs here (and mounts /_dev, unused).
                "AMNEX_WEBHOOK_ALLOW_LOOPBACK": "true",
                "AMNEX_DEV_MODE": "true",
            }
        )
        self.processes["smsc"] = start(
            [
                sys.executable,
                str(CHAOS_DIR / "smsc_process.py"),
                "--smpp-port",
                str(smsc_port),
                "--control-port",
                str(control_port),
                "--receipt-delay-ms",
                str(receipt_delay_ms),
                "--response-delay-ms",
                str(response_delay_ms),
                "--max-stored",
                "1000000",
            ],
            self.env,
            self.workdir / "smsc.log",
        )
        self.control_url = f"http://{HOST}:{control_port}"
        self.processes["serve"] = start(
            [sys.executable, "-m", "amnex", "serve", "--host", HOST, "--port", str(api_port)],
            self.env,
            self.workdir / "serve.log",
        )
        self.api_url = f"http://{HOST}:{api_port}"
        self._wait_control()
        wait_healthy(self.api_url, self.processes["serve"], STARTUP_TIMEOUT_S)
        self.workers = [None] * self.workers_wanted
        for index in range(self.workers_wanted):
            self.start_worker(index)

    def _wait_control(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.processes["smsc"].poll() is not None:
                raise RuntimeError("the SMSC simulator exited; see smsc.log")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.control_url + "/stats", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("the SMSC simulator's control API did not answer")

    def start_worker(self, index: int) -> None:
        self.worker_starts += 1
        log = self.workdir / f"worker-{index}-{self.worker_starts}.log"
        self.workers[index] = start([sys.executable, "-m", "amnex", "worker"], self.env, log)

    def kill_worker(self, index: int) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown code runs."""
        process = self.workers[index]
        if process is None:
            return
        process.kill()
        process.wait(timeout=10)
        self.workers[index] = None

    def workers_alive(self) -> int:
        return sum(1 for p in self.workers if p is not None and p.poll() is None)

    def close(self) -> None:
        for process in [p for p in self.workers if p is not None]:
            stop_process(process)
        for name in ("serve", "smsc"):
            if name in self.processes:
                stop_process(self.processes[name])
        if self.pg_database is not None:
            try:
                asyncio.run(drop_pg_database(self.pg_admin_url, self.pg_database))
            except Exception as exc:  # report and keep cleaning up
                print(f"warning: could not drop {self.pg_database}: {exc}", file=sys.stderr)
        if self.failed or self.keep_logs:
            print(f"logs kept in {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


async def update_connectors(database_url: str, master_key: str, config: dict[str, Any]) -> None:
    """Merge `config` into every connector's settings (the run has one, seeded above)."""
    settings = Settings(database_url=database_url, master_key=SecretStr(master_key))
    db = Database(settings)
    try:
        async with db.unit_of_work() as session:
            box = SecretBox.from_settings(settings)
            for connector in await carriers.list_connectors(session):
                await carriers.update_connector(
                    session, box, connector.id, config=config, actor="bench"
                )
    finally:
        await db.dispose()


# --- servers of the run's own (bench/chaos/pg_restart.py, redis_stop.py) ------------------------


PG_BINDIR = Path("/usr/lib/postgresql/15/bin")


@dataclass
class TempPostgres:
    """A PostgreSQL server of this run only: `initdb` into a temporary directory, trust auth,
    listening on 127.0.0.1 at a free port (never the machine's 5432), its socket in that
    directory. `close()` stops it (immediate) and removes the directory."""

    bindir: Path = PG_BINDIR
    # More postgresql.conf lines (bench/soak.py: log every autovacuum).
    settings: str = ""
    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="amnex-chaos-pg-")))

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _run(self, *argv: str, timeout_s: float = 120) -> None:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr[-2000:]}")

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\n# bench/chaos\nlisten_addresses = '{HOST}'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\nmax_connections = 300\n"
                "shared_buffers = 128MB\n" + self.settings
            )

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def copy_log(self, directory: Path) -> None:
        with contextlib.suppress(OSError):
            shutil.copy(self.log, directory / "postgres.log")

    def close(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        except Exception as exc:  # report and keep cleaning up
            print(f"warning: could not stop the run's PostgreSQL: {exc}", file=sys.stderr)
        shutil.rmtree(self.root, ignore_errors=True)


def redis_pong(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class TempRedis:
    """A redis-server of this run only, on 127.0.0.1 at a free port (never the machine's
    6379), keeping nothing on disk. `stop()` ends the process (SIGTERM), `start()` starts
    a fresh one on the same port; `close()` stops it and removes its directory."""

    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="amnex-chaos-redis-")))
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        self.process = subprocess.Popen(
            [
                "redis-server", "--bind", HOST, "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--dir", str(self.root), "--daemonize", "no",
                "--logfile", str(self.root / f"redis-{self.starts}.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if redis_pong(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def copy_log(self, directory: Path) -> None:
        for log in self.root.glob("redis-*.log"):
            with contextlib.suppress(OSError):
                shutil.copy(log, directory / log.name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# --- the simulator's control API -------------------------------------------------------------


async def control(client: httpx.AsyncClient, cluster: Cluster, method: str, path: str) -> Any:
    response = await client.request(method, cluster.control_url + path, timeout=30)
    response.raise_for_status()
    return response.json()


# --- load ------------------------------------------------------------------------------------


@dataclass
class Load:
    requested: int = 0
    accepted: dict[str, int] = field(default_factory=dict)  # message id -> index
    statuses: Counter[str] = field(default_factory=Counter)  # each send's last answer
    started: float = 0.0
    elapsed_s: float = 0.0
    # With retries (send_load's `retries`): every answer retried, by "503 <code>" or the
    # transport error's name; sends refused after their last retry; 201s that replayed an
    # earlier request's message (Idempotent-Replayed: the first attempt was stored).
    retried: Counter[str] = field(default_factory=Counter)
    sends_retried: int = 0
    gave_up: int = 0
    replayed: int = 0
    # Every attempt: (time.time() of its answer, "201" / "503 database_unavailable" / error
    # name, whether the API's rate limiter let it through uncounted: RateLimit-Remaining equal
    # to RateLimit-Limit, which only its fail-open answer gives, and its latency in seconds).
    attempts: list[tuple[float, str, bool, float]] = field(default_factory=list)


def destination(index: int) -> str:
    """+1 415 2xx xxxx, last two digits below 90: the simulator delivers every one."""
    return f"+1415{2_000_000 + (index // 90) * 100 + index % 90}"


def _answer_label(response: httpx.Response) -> str:
    if response.status_code < 400:
        return str(response.status_code)
    code = ""
    with contextlib.suppress(ValueError, AttributeError):
        code = str(response.json().get("code", ""))
    return f"{response.status_code} {code}".strip()


async def send_load(
    cluster: Cluster,
    messages: int,
    rate: float,
    cap_s: float,
    *,
    retries: int = 0,
    load: Load | None = None,
) -> Load:
    """`messages` POST /v1/messages at a steady `rate`, at most 64 in flight, within cap_s.

    With `retries` > 0 each send carries `Idempotency-Key: chaos-<index>` and a 503 answer
    (or a transport error) is retried up to `retries` times, after its Retry-After (at most
    1 s); the send keeps its slot meanwhile. `load`, if given, is filled in as the load runs
    (its `requested` tells a fault task how far the load is)."""
    load = load if load is not None else Load()
    load.started = time.time()
    loop = asyncio.get_running_loop()
    in_flight = asyncio.Semaphore(64)
    tasks: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {cluster.api_key}"}
    async with httpx.AsyncClient(
        base_url=cluster.api_url, headers=headers, limits=limits, timeout=30
    ) as client:

        async def one(index: int) -> None:
            extra = {"Idempotency-Key": f"chaos-{index:06d}"} if retries else {}
            body = {"channel": "sms", "to": destination(index), "body": BODY.format(index=index)}
            try:
                for attempt in range(retries + 1):
                    last = attempt == retries
                    sent_at = time.time()
                    try:
                        response = await client.post("/v1/messages", json=body, headers=extra)
                    except httpx.HTTPError as exc:
                        label = type(exc).__name__
                        now = time.time()
                        load.attempts.append((now, label, False, now - sent_at))
                        if last or not retries or not isinstance(exc, httpx.TransportError):
                            load.statuses[label] += 1
                            load.gave_up += bool(retries)
                            return
                        load.retried[label] += 1
                        load.sends_retried += attempt == 0
                        await asyncio.sleep(0.5)
                        continue
                    label = _answer_label(response)
                    limit = response.headers.get("ratelimit-limit")
                    open_ = (
                        limit is not None and response.headers.get("ratelimit-remaining") == limit
                    )
                    now = time.time()
                    load.attempts.append((now, label, open_, now - sent_at))
                    if response.status_code == 503 and retries and not last:
                        load.retried[label] += 1
                        load.sends_retried += attempt == 0
                        retry_after = response.headers.get("retry-after", "1")
                        delay = float(retry_after) if retry_after.isdigit() else 1.0
                        await asyncio.sleep(min(1.0, max(0.1, delay)))
                        continue
                    load.statuses[str(response.status_code)] += 1
                    if response.status_code == 201:
                        load.accepted[response.json()["id"]] = index
                        load.replayed += response.headers.get("idempotent-replayed") == "true"
                    elif response.status_code == 503:
                        load.gave_up += bool(retries)
                    return
            finally:
                in_flight.release()

        t0 = loop.time()
        deadline = t0 + cap_s
        for index in range(messages):
            due = t0 + index / rate
            if due > deadline:
                break
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            await in_flight.acquire()
            load.requested += 1
            task = asyncio.create_task(one(index))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(list(tasks), timeout=60 + retries * 1.5)
        load.elapsed_s = loop.time() - t0
    return load


async def create_webhook_endpoint(cluster: Cluster, receiver: Receiver) -> str:
    async with httpx.AsyncClient(base_url=cluster.api_url, timeout=30) as client:
        response = await client.post(
            "/v1/webhook-endpoints",
            headers={"Authorization": f"Bearer {cluster.api_key}"},
            json={"url": receiver.url("/hook"), "event_types": FINAL_EVENTS},
        )
        if response.status_code != 201:
            raise RuntimeError(f"webhook endpoint refused: {response.status_code} {response.text}")
        return str(response.json()["id"])


# --- the database's view -----------------------------------------------------------------------


@dataclass
class DbState:
    messages: dict[str, str]  # id -> status
    parts: dict[str, tuple[str, str]]  # provider id -> (message id, part status)
    pending_receipts: set[str]
    webhook_deliveries: Counter[str]

    @property
    def not_final(self) -> int:
        return sum(1 for status in self.messages.values() if status not in FINAL)


async def read_db(cluster: Cluster) -> DbState:
    url = plain_pg_url(cluster.database_url)
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id, status FROM messages")
        messages = {r["id"]: r["status"] for r in rows}
        parts = {
            r["provider_message_id"]: (r["message_id"], r["status"])
            for r in await conn.fetch(
                "SELECT message_id, provider_message_id, status FROM message_parts"
            )
        }
        pending = {
            r["provider_message_id"]
            for r in await conn.fetch("SELECT provider_message_id FROM pending_receipts")
        }
        deliveries = Counter(
            {
                r["status"]: int(r["n"])
                for r in await conn.fetch(
                    "SELECT status, count(*) AS n FROM webhook_deliveries GROUP BY status"
                )
            }
        )
    finally:
        await conn.close()
    return DbState(messages, parts, pending, deliveries)


def final_webhooks(receiver: Receiver) -> tuple[set[str], set[str], int]:
    """(distinct webhook-ids, message ids with a final event, requests) the receiver got."""
    event_ids: set[str] = set()
    message_ids: set[str] = set()
    for request in receiver.requests:
        event_ids.add(request.headers.get("webhook-id", ""))
        with contextlib.suppress(ValueError, KeyError, TypeError):
            event = json.loads(request.body)
            if event["type"] in FINAL_EVENTS:
                message_ids.add(str(event["data"]["id"]))
    return event_ids, message_ids, len(receiver.requests)


async def wait_until_settled(
    cluster: Cluster, client: httpx.AsyncClient, receiver: Receiver, load: Load, wait_s: float
) -> float:
    """Until every stored message is final, no receipt is owed and every final message's
    webhook arrived — or `wait_s` passed. Returns the seconds waited."""
    started = time.monotonic()
    deadline = started + wait_s
    last = ""
    while True:
        db = await read_db(cluster)
        stats = await control(client, cluster, "GET", "/stats")
        owed = sum(stats["receipts_owed"].values())
        _, hooked, _ = final_webhooks(receiver)
        final_ids = {m for m, s in db.messages.items() if s in FINAL}
        missing_hooks = len(final_ids - hooked)
        lost = len(set(load.accepted) - set(db.messages))
        state = (
            f"not final {db.not_final}, receipts owed {owed}, webhooks missing {missing_hooks}, "
            f"workers alive {cluster.workers_alive()}"
        )
        if state != last:
            print(f"  [{time.monotonic() - started:5.1f}s] {state}", flush=True)
            last = state
        if db.not_final == 0 and owed == 0 and missing_hooks == 0 and lost == 0:
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            print(f"  gave up waiting after {wait_s:.0f}s", flush=True)
            return time.monotonic() - started
        await asyncio.sleep(1.0)


# --- the report --------------------------------------------------------------------------------


@dataclass
class Report:
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    ok: bool = True

    def info(self, what: str, value: object) -> None:
        self.rows.append((what, _fmt(value), ""))

    def must(self, what: str, value: int, expected: int = 0) -> None:
        passed = value == expected
        self.ok &= passed
        self.rows.append((what, _fmt(value), f"must be {expected}: {'ok' if passed else 'FAIL'}"))

    def print(self, title: str) -> None:
        print()
        print(f"### {title}: {'PASS' if self.ok else 'FAIL'}")
        print()
        print("| measure | value | check |")
        print("|---|---:|---|")
        for what, value, check in self.rows:
            print(f"| {what} | {value} | {check} |")


def _fmt(value: object) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def index_of(text: str | None) -> int | None:
    match = BODY_RE.match(text or "")
    return int(match.group(1)) if match else None


async def build_report(
    cluster: Cluster,
    client: httpx.AsyncClient,
    receiver: Receiver,
    load: Load,
    *,
    waited_s: float,
    fault_times: list[float],
    fault_kind: str,
    extra: Sequence[tuple[str, object]] = (),
    fault_spans: Sequence[tuple[float, float]] = (),
) -> Report:
    """Every check of bench/chaos/README.md, from the database, the simulator and the receiver.

    A duplicate submit is "explained" when a fault (`fault_times`: a kill, a disconnect) or
    the end of an SMPP connection (the simulator's record: whoever ended it — a killed
    worker, a disconnect, or the ESME closing a bind whose answers stopped) lies between its
    first and its last submit_sm, or when the span from its first to its last submit_sm
    overlaps a fault that lasts (`fault_spans`: a database outage, start and end): only then
    may the first outcome be unknown.
    """
    db = await read_db(cluster)
    stats = await control(client, cluster, "GET", "/stats")
    record = await control(client, cluster, "GET", "/record")
    report = Report()

    rate = load.requested / load.elapsed_s if load.elapsed_s else 0.0
    report.info(
        "SMS sent to the API (time, rate achieved)",
        f"{load.requested:,} ({load.elapsed_s:.1f} s, {rate:.0f}/s)",
    )
    report.info("answers", ", ".join(f"{k}: {v:,}" for k, v in sorted(load.statuses.items())))
    report.info("accepted (201)", len(load.accepted))
    stored_unacked = set(db.messages) - set(load.accepted)
    report.info("stored without a 201 (client gave up)", len(stored_unacked))
    by_status = Counter(db.messages[m] for m in load.accepted if m in db.messages)
    for status in sorted(FINAL):
        if by_status.get(status) or status == "delivered":
            report.info(f"final: {status}", by_status.get(status, 0))
    report.must("not final (all stored messages)", db.not_final)
    report.must("lost (accepted, not in the database)", len(set(load.accepted) - set(db.messages)))

    # Submits the SMSC took, by message (the body carries the message's index).
    submits: dict[int, list[tuple[str, float]]] = {}
    unknown_submits = 0
    for provider_id, text, received_at in record["submits"]:
        index = index_of(text)
        if index is None:
            unknown_submits += 1
            continue
        submits.setdefault(index, []).append((str(provider_id), float(received_at)))
    report.info("submit_sm accepted by the SMSC", stats["submitted"])
    report.info("messages submitted at least once", len(submits))
    duplicated = {i: s for i, s in submits.items() if len(s) > 1}
    fault_times = [*fault_times, *record.get("session_ends", [])]
    report.info(
        "duplicate submits: messages / extra submit_sm",
        f"{len(duplicated):,} / {sum(len(s) - 1 for s in duplicated.values()):,}",
    )
    unexplained = [
        i
        for i, s in duplicated.items()
        if not any(min(t for _, t in s) <= f <= max(t for _, t in s) for f in fault_times)
        and not any(
            min(t for _, t in s) <= end and start <= max(t for _, t in s)
            for start, end in fault_spans
        )
    ]
    report.must(
        f"duplicates with no {fault_kind} or lost connection between their submits",
        len(unexplained),
    )
    if unknown_submits:
        report.must("submits of no message of this run", unknown_submits)
    delivered_ids = {m for m, s in db.messages.items() if s == "delivered"}
    never_submitted = sum(
        1 for m in delivered_ids if m in load.accepted and load.accepted[m] not in submits
    )
    report.must("delivered but never seen by the SMSC", never_submitted)

    # Receipts: what the SMSC sent, and what the database did with each.
    receipt_ids = set(record["receipt_ids"])
    applied = {p for p in receipt_ids if p in db.parts and db.parts[p][1] in FINAL}
    kept = {p for p in receipt_ids - applied if p in db.pending_receipts}
    missing_receipts = receipt_ids - applied - kept
    duplicate_ids = {p for s in duplicated.values() for p, _ in s}
    report.info(
        "receipts offered by the SMSC / acknowledged (re-offers included)",
        f"{stats['receipts_sent']:,} / {stats['receipts_acknowledged']:,}",
    )
    report.info("distinct receipts sent", len(receipt_ids))
    report.info("applied to their part", len(applied))
    report.info("kept unmatched (pending_receipts)", len(kept))
    report.must("unmatched receipts not of a duplicate submit", len(kept - duplicate_ids))
    report.must("receipts sent but neither applied nor kept", len(missing_receipts))
    report.must("receipts still owed by the SMSC", sum(stats["receipts_owed"].values()))

    event_ids, hooked, requests = final_webhooks(receiver)
    final_ids = {m for m, s in db.messages.items() if s in FINAL}
    owed = sum(n for status, n in db.webhook_deliveries.items() if status != "superseded")
    report.info(
        "webhook deliveries owed / delivered (database)",
        f"{owed:,} / {db.webhook_deliveries.get('delivered', 0):,}",
    )
    report.info("webhook requests received / distinct events", f"{requests:,} / {len(event_ids):,}")
    report.must("final messages without their final webhook", len(final_ids - hooked))
    for what, value in extra:
        report.info(what, value)
    report.info("waited after the load until settled (s)", waited_s)
    if missing_receipts or unexplained or db.not_final:
        details = {
            "receipts_missing": sorted(missing_receipts)[:20],
            "unexplained_duplicates": {i: duplicated[i] for i in unexplained[:20]},
            "not_final": [m for m, s in db.messages.items() if s not in FINAL][:20],
        }
        print("details: " + json.dumps(details), file=sys.stderr)
    return report


def quiet_cancelled_handlers() -> None:
    """Closing the receiver cancels its open keep-alive handlers; asyncio's stream callback then
    logs each CancelledError as an error. They are expected: drop just those."""
    loop = asyncio.get_running_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not isinstance(context.get("exception"), asyncio.CancelledError):
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def count_in_logs(directory: Path, pattern: str, needle: str) -> int:
    """Lines containing `needle` in the run's logs matching `pattern` (serve.log, worker-*)."""
    total = 0
    for log in directory.glob(pattern):
        with log.open(errors="replace") as lines:
            total += sum(1 for line in lines if needle in line)
    return total


def attempts_between(load: Load, start: float, end: float) -> Counter[str]:
    """The load's answers (each attempt, retries included) that arrived in [start, end)."""
    return Counter(label for t, label, _, _ in load.attempts if start <= t < end)


def latency_between(load: Load, start: float, end: float, *, inside: bool = True) -> str:
    """Median and 99th percentile latency (ms) of the answers in [start, end), or outside."""
    latencies = sorted(s for t, _, _, s in load.attempts if (start <= t < end) == inside)
    if not latencies:
        return "none"
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return f"{p50 * 1000:.0f} / {p99 * 1000:.0f} ms"


def fmt_counts(counts: Counter[str]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items())) or "none"


def rng_for(seed: int | None) -> tuple[random.Random, int]:
    seed = seed if seed is not None else secrets.randbelow(1_000_000)
    return random.Random(seed), seed
