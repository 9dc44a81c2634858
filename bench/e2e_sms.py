"""Bench (issue 3, c): SMS end to end on SQLite — API accept → dispatch → submit_sm → receipt.

Three processes on this machine, as a small deployment would run them: `amnex serve` (the
API), `amnex worker` (dispatcher, SMPP connector, receipts; `--worker-concurrency` sends in
flight, claims of up to 1,000) and `amnex simulate smsc` (the SMSC simulator, receipts after
50 ms), on one SQLite file (WAL, synchronous=FULL, the
default). wrk sends exactly `--messages` `POST /v1/messages` for SMS (bench/post_message.lua)
to numbers the simulator delivers; the clock runs from the first request until the database
holds every message `delivered`. Every run uses a fresh database.

The baseline of the same run is acceptance alone: the same API process and database with no
worker, so that the ratio says how much of the accept ceiling survives the whole pipeline.
Each round runs the baseline and then the full pipeline; the MEDIAN of `--runs` rounds is
reported, with CPU µs per message for each process.

    .venv/bin/python bench/e2e_sms.py [--messages 20000] [--runs 3] [--connections 64]
        [--cap-s 180] [--worker-concurrency 500]

Exits non-zero if a run does not finish, a request is answered with anything but 201, or a
message ends in any status other than `delivered`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import SecretStr
from sqlalchemy import func, select

from accept import (
    LUA_SCRIPT,
    free_port,
    machine_busy_s,
    process_cpu_s,
    server_env,
    stop_process,
)
from amnex.accounts.service import add_sender, create_account
from amnex.carriers import service as carriers
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.db.migrate import upgrade_database
from amnex.messages.models import Message
from amnex.privacy.crypto import SecretBox, generate_key

HOST = "127.0.0.1"
SMS_NUMBER = "+15005550006"
TARGET_PER_S = 2000.0


@dataclass
class Run:
    kind: str  # "accept" or "e2e"
    messages: int
    elapsed_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    final: dict[str, int] = field(default_factory=dict)
    cpu_us_per_message: dict[str, float] = field(default_factory=dict)
    machine_busy_cores: float = 0.0
    p99_accept_ms: float = 0.0

    @property
    def per_s(self) -> float:
        return self.messages / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def ok(self) -> bool:
        if self.statuses != {"201": self.messages}:
            return False
        return self.kind == "accept" or self.final == {"delivered": self.messages}


async def seed(database_url: str, master_key: str, smsc_port: int, *, route: bool) -> str:
    settings = Settings(database_url=database_url, master_key=SecretStr(master_key))
    db = Database(settings)
    try:
        await upgrade_database(db)
        async with db.unit_of_work() as session:
            account, _, key = await create_account(
                session,
                business_name="Bench",
                contact_name="Bench",
                email="bench@example.com",
                settings={"rate_limit_per_s": 1_000_000},
                actor="bench",
            )
            await add_sender(
                session,
                account_id=account.id,
                channel="sms",
                address=SMS_NUMBER,
                is_default=True,
                actor="bench",
            )
            connector = await carriers.create_connector(
                session,
                SecretBox.from_settings(settings),
                name="bench-smsc",
                config={"host": HOST, "port": smsc_port, "system_id": "amnex", "window": 50},
                password="secret",  # noqa: S106 - the simulator's documented credential
                actor="bench",
            )
            if route:
                await carriers.create_route(
                    session, channel="sms", connector_ids=[connector.id], actor="bench"
                )
        return str(key)
    finally:
        await db.dispose()


async def final_statuses(database_url: str) -> dict[str, int]:
    db = Database(Settings(database_url=database_url))
    try:
        async with db.read_session() as session:
            rows = await session.execute(
                select(Message.status, func.count()).group_by(Message.status)
            )
            return {str(row[0]): int(row[1]) for row in rows}
    finally:
        await db.dispose()


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def wait_healthy(base_url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with {process.returncode}")
        try:
            if httpx.get(base_url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("no /healthz")


def one_run(
    kind: str, messages: int, connections: int, cap_s: int, workdir: Path, concurrency: int
) -> Run:
    run = Run(kind, messages)
    rundir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir))
    database_url = f"sqlite+aiosqlite:///{rundir / 'amnex.db'}"
    master_key = generate_key()
    smsc_port, api_port = free_port(), free_port()
    api_key = asyncio.run(seed(database_url, master_key, smsc_port, route=True))
    env = server_env(
        {
            "AMNEX_DATABASE_URL": database_url,
            "AMNEX_MASTER_KEY": master_key,
            "AMNEX_WORKER_CONCURRENCY": str(concurrency),
            "AMNEX_CLAIM_BATCH_SIZE": str(min(concurrency, 1000)),
        }
    )
    amnex = [sys.executable, "-m", "amnex"]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        processes["smsc"] = start(
            [*amnex, "simulate", "smsc", "--port", str(smsc_port), "--receipt-delay-ms", "50"],
            env,
            rundir / "smsc.log",
        )
        processes["serve"] = start(
            [*amnex, "serve", "--port", str(api_port)], env, rundir / "serve.log"
        )
        base_url = f"http://{HOST}:{api_port}"
        wait_healthy(base_url, processes["serve"])
        if kind == "e2e":
            processes["worker"] = start([*amnex, "worker"], env, rundir / "worker.log")
            time.sleep(3.0)  # imports, bind
        cpu_before = {name: process_cpu_s(p.pid) for name, p in processes.items()}
        busy_before = machine_busy_s()[0]
        started = time.monotonic()
        wrk = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{cap_s}s",
                "--latency",
                "-s",
                str(LUA_SCRIPT),
                base_url,
                "--",
                str(messages),
                api_key,
                "1",
                str(cap_s),
                "sms",
            ],
            capture_output=True,
            text=True,
            timeout=cap_s + 60,
        )
        result = next(
            json.loads(line.removeprefix("BENCH_JSON "))
            for line in wrk.stdout.splitlines()
            if line.startswith("BENCH_JSON ")
        )
        run.statuses = {k: int(v) for k, v in result["statuses"].items()}
        run.p99_accept_ms = float(result["latency_us"]["p99"]) / 1000
        if kind == "accept":
            run.elapsed_s = float(result["elapsed_us"]) / 1e6
        else:
            deadline = started + cap_s
            while time.monotonic() < deadline:
                run.final = asyncio.run(final_statuses(database_url))
                if sum(run.final.values()) >= messages and set(run.final) <= {
                    "delivered",
                    "undelivered",
                    "failed",
                    "rejected",
                    "canceled",
                }:
                    break
                time.sleep(0.2)
            run.elapsed_s = time.monotonic() - started
        busy = machine_busy_s()[0] - busy_before
        run.machine_busy_cores = busy / run.elapsed_s if run.elapsed_s else 0.0
        run.cpu_us_per_message = {
            name: (process_cpu_s(p.pid) - cpu_before[name]) / messages * 1e6
            for name, p in processes.items()
        }
    finally:
        for process in processes.values():
            stop_process(process)
        if run.ok:
            shutil.rmtree(rundir, ignore_errors=True)
        else:
            print(f"    run failed; logs kept in {rundir}", file=sys.stderr)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--cap-s", type=int, default=180)
    parser.add_argument(
        "--worker-concurrency", type=int, default=500, help="sends in flight per worker"
    )
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON line of the summary (bench/quick.py)"
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="amnex-bench-e2e-"))
    runs: list[Run] = []
    try:
        for round_no in range(1, args.runs + 1):
            for kind in ("accept", "e2e"):
                run = one_run(
                    kind,
                    args.messages,
                    args.connections,
                    args.cap_s,
                    workdir,
                    args.worker_concurrency,
                )
                runs.append(run)
                print(
                    f"round {round_no} {kind:6}: {run.per_s:8.0f} msg/s  "
                    f"({run.elapsed_s:.1f} s, ok={run.ok}, final={run.final or '-'}, "
                    f"cpu µs/msg={ {k: round(v) for k, v in run.cpu_us_per_message.items()} })",
                    flush=True,
                )
    finally:
        if all(r.ok for r in runs):
            shutil.rmtree(workdir, ignore_errors=True)
    accept = statistics.median(r.per_s for r in runs if r.kind == "accept")
    e2e_runs = [r for r in runs if r.kind == "e2e"]
    e2e = statistics.median(r.per_s for r in e2e_runs)
    cpu = {
        name: statistics.median(r.cpu_us_per_message.get(name, 0.0) for r in e2e_runs)
        for name in ("serve", "worker", "smsc")
    }
    print()
    print(f"Python {platform.python_version()}, {args.messages} SMS per run, median of {args.runs}")
    print()
    print("| measure | messages/s | ratio to accept-only | CPU µs/msg serve / worker / smsc |")
    print("|---|---:|---:|---|")
    print(f"| accept only (baseline) | {accept:,.0f} | 1.00 | |")
    print(
        f"| end to end, delivered | {e2e:,.0f} | {e2e / accept:.2f} | "
        f"{cpu['serve']:.0f} / {cpu['worker']:.0f} / {cpu['smsc']:.0f} |"
    )
    print(
        f"\ntarget ≥ {TARGET_PER_S:,.0f}/s end to end: {'met' if e2e >= TARGET_PER_S else 'MISSED'}"
    )
    ok = all(r.ok for r in runs)
    if args.json:
        row = {
            "figure": "e2e sms delivered",
            "value": e2e,
            "unit": "msg/s",
            "baseline": "accept only",
            "baseline_value": accept,
            "ratio": e2e / accept if accept else None,
            "cpu_us_per_message": cpu,
        }
        print(json.dumps({"benchmark": "e2e_sms", "ok": ok, "rows": [row]}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
