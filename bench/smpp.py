"""Bench: SMPP throughput over loopback — our ESME, our SMSC simulator, and the framing ceiling.

Issue 3 asks for (a) our ESME alone, (b) our simulator alone and (d) one bind against an SMSC
that answers every submit_sm after 20 ms. Each figure is one bind, window 50, client and server
in SEPARATE processes (so the two cores are used as in a real deployment), loopback only:

    ceiling   minimal raw client  -> minimal raw server (header-only parsing)   both sides
    a         SmppSession         -> SmscSimulator, registered_delivery=0         the ESME
    a+r       SmppSession (trx)   -> SmscSimulator, receipts sent and answered    the ESME
    b         minimal raw client  -> SmscSimulator, receipts scheduled (60 s)     the simulator
    b+r       raw client (trx)    -> SmscSimulator, receipts sent and answered    the simulator
    d         SmppSession         -> SmscSimulator(response_delay_s=0.020)        the ESME
    d-raw     minimal raw client  -> SmscSimulator(response_delay_s=0.020)        (control)

The raw peers live in `smpp_client_raw.py`. The ESME keeps its window full with `window`
worker coroutines, each looping over submit() (a bounded number of tasks, not one per message).
A run sends `--warmup` submit_sm first, then times `--messages` of them: from the last warm-up
response to the last measured response (and receipt, for the +r rows). CPU per message is
measured inside the client (`time.process_time`) and, for the server, from
/proc/<pid>/stat (utime + stime, 10 ms ticks) sampled by the client at the same two instants.

Rounds interleave every figure and event loop (ceiling, a, b, d, ceiling, ...) so noise on this
shared 2-core machine lands on all of them; the table gives medians and each median's ratio to
the ceiling median of the same invocation. Results also go to bench/results/smpp-<time>.json.

    .venv/bin/python bench/smpp.py [--quick] [--runs 3] [--messages 20000]
        [--figures ceiling,a,a+r,b,b+r,d] [--loops uvloop,asyncio]

Exits non-zero if a run failed, timed out or got a non-zero submit_sm_resp status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import selectors
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import smpp_client_raw as raw

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"
WINDOW = 50
STARTUP_TIMEOUT_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
ALL_FIGURES = ("ceiling", "a", "a+r", "b", "b+r", "d", "d-raw")
# The targets, in messages per second.
TARGETS: dict[str, float] = {"a": 15_000, "b": 50_000, "d": 0.9 * WINDOW / 0.020}
# (d)'s bound: window / latency, reached only if the ESME costs nothing.
D_BOUND = WINDOW / 0.020
# The ceiling is ~5x faster than anything else: time more messages so a run lasts long enough
# for 10 ms CPU ticks to be meaningful.
CEILING_FACTOR = 5

T = TypeVar("T")


@dataclass(frozen=True)
class Figure:
    name: str
    server: str  # "raw" or "smsc"
    client: str  # "raw" or "esme"
    measured: str  # "client", "server" or "both"
    registered_delivery: int = 0
    wait_receipts: bool = False
    response_delay_s: float = 0.0
    receipt_delay_s: float = 0.05


FIGURES: dict[str, Figure] = {
    "ceiling": Figure("ceiling", "raw", "raw", "both"),
    "a": Figure("a", "smsc", "esme", "client"),
    "a+r": Figure("a+r", "smsc", "esme", "client", 1, wait_receipts=True, receipt_delay_s=0.005),
    # Receipts are scheduled for every message but fall due after the run: (b) is "acked,
    # receipts scheduled"; b+r adds building, sending and matching the receipts.
    "b": Figure("b", "smsc", "raw", "server", registered_delivery=1, receipt_delay_s=60.0),
    "b+r": Figure("b+r", "smsc", "raw", "server", 1, wait_receipts=True, receipt_delay_s=0.005),
    "d": Figure("d", "smsc", "esme", "client", response_delay_s=0.020),
    # The same latency with the raw client: how close the simulator's delay is to 20 ms.
    "d-raw": Figure("d-raw", "smsc", "raw", "server", response_delay_s=0.020),
}


@dataclass
class Run:
    figure: str
    loop: str
    round: int
    messages: int
    elapsed_s: float
    per_s: float
    client_cpu_us: float
    server_cpu_us: float
    errors: int
    receipts: int
    server_stats: dict[str, Any]


# --- helpers shared by the roles -----------------------------------------------------------


def run_loop(main: Coroutine[Any, Any, T], loop_name: str) -> T:
    if loop_name == "uvloop":
        import uvloop  # only the processes that use it pay for the import

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    with asyncio.Runner() as runner:
        return runner.run(main)


def proc_cpu_s(pid: int) -> float:
    """utime + stime of `pid` in seconds (10 ms resolution)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- server role -----------------------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if args.server == "raw":
        server = await loop.create_server(raw.RawServer, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        await stop.wait()
        server.close()
        print(json.dumps({"submitted": raw.RawServer.count}), flush=True)
        return
    from amnex.simulators.smsc import SmscSimulator  # the smsc role only

    smsc = SmscSimulator(
        HOST,
        0,
        receipt_delay_s=args.receipt_delay_s,
        response_delay_s=args.response_delay_s,
    )
    await smsc.start()
    print(f"PORT {smsc.port}", flush=True)
    await stop.wait()
    stats = {
        "submitted_count": smsc.submitted_count,
        "receipts_sent": smsc.receipts_sent,
        "receipts_acknowledged": smsc.receipts_acknowledged,
    }
    print(json.dumps(stats), flush=True)
    await smsc.stop()


# --- client roles ----------------------------------------------------------------------------


class Meter:
    """CPU of this process and of the server, sampled at the start and end of the timed part."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.cpu0 = self.server0 = self.cpu1 = self.server1 = 0.0

    def start(self) -> None:
        self.cpu0 = time.process_time()
        self.server0 = proc_cpu_s(self.server_pid)

    def stop(self) -> None:
        self.cpu1 = time.process_time()
        self.server1 = proc_cpu_s(self.server_pid)


async def raw_client(args: argparse.Namespace, meter: Meter) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    client = raw.RawClient(
        warmup=args.warmup,
        measured=args.messages,
        window=args.window,
        registered_delivery=args.registered_delivery,
        wait_receipts=args.wait_receipts,
        on_measure_start=meter.start,
        bind_cid=raw.BIND_TRANSCEIVER if args.wait_receipts else raw.BIND_TRANSMITTER,
    )
    async with asyncio.timeout(args.timeout_s):
        transport, _ = await loop.create_connection(lambda: client, HOST, args.port)
        await client.done
    meter.stop()
    transport.close()
    return {
        "elapsed_s": client.finished_at - client.started_at,
        "errors": client.errors,
        "receipts": client.receipts,
    }


async def esme_client(args: argparse.Namespace, meter: Meter) -> dict[str, Any]:
    from amnex.channels.smpp.pdu import CommandStatus, DataSm, DeliverSm, SubmitSm
    from amnex.channels.smpp.session import SmppSession

    total = args.warmup + args.messages
    receipts = 0
    all_receipts = asyncio.Event()
    if not args.wait_receipts:
        all_receipts.set()

    async def on_deliver(deliver: DeliverSm | DataSm) -> CommandStatus:
        nonlocal receipts
        receipts += 1
        if receipts >= total:
            all_receipts.set()
        return CommandStatus.ESME_ROK

    session = SmppSession(
        HOST,
        args.port,
        system_id="amnex",
        password="secret",  # noqa: S106 - the simulator's documented credential
        bind="transceiver" if args.wait_receipts else "transmitter",
        window=args.window,
        on_deliver=on_deliver,
    )
    next_index = 0
    errors = 0
    started_at = 0.0

    async def worker() -> None:
        nonlocal next_index, errors, started_at
        while next_index < total:
            i = next_index
            next_index += 1
            if i == args.warmup:
                started_at = time.perf_counter()
                meter.start()
            resp = await session.submit(
                SubmitSm(
                    source_addr_ton=5,
                    source_addr="Amnex",
                    dest_addr_ton=1,
                    dest_addr_npi=1,
                    destination_addr=raw.DESTINATIONS[i % len(raw.DESTINATIONS)],
                    registered_delivery=args.registered_delivery,
                    short_message=raw.TEXT,
                )
            )
            if resp.command_status:
                errors += 1

    async with asyncio.timeout(args.timeout_s):
        await session.connect()
        await asyncio.gather(*(worker() for _ in range(args.window)))
        await all_receipts.wait()
        finished_at = time.perf_counter()
        meter.stop()
        await session.unbind()
    return {"elapsed_s": finished_at - started_at, "errors": errors, "receipts": receipts}


def client_main(args: argparse.Namespace) -> None:
    meter = Meter(args.server_pid)
    run: Callable[[argparse.Namespace, Meter], Awaitable[dict[str, Any]]]
    run = raw_client if args.client == "raw" else esme_client
    result = run_loop(run(args, meter), args.loop)
    result["client_cpu_s"] = meter.cpu1 - meter.cpu0
    result["server_cpu_s"] = meter.server1 - meter.server0
    print(json.dumps(result), flush=True)


# --- orchestration ---------------------------------------------------------------------------


def role_argv(role: str, options: dict[str, object], *flags: str) -> list[str]:
    """The command line of one of this script's roles: `--name value` for every option."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", role]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv + list(flags)


def start_server(figure: Figure, loop_name: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        role_argv(
            "server",
            {
                "server": figure.server,
                "loop": loop_name,
                "response_delay_s": figure.response_delay_s,
                "receipt_delay_s": figure.receipt_delay_s,
            },
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None  # stdout=PIPE
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(STARTUP_TIMEOUT_S):
            stop_process(process)
            raise RuntimeError(f"{figure.name}: the server printed no port in time")
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        stop_process(process)
        raise RuntimeError(f"{figure.name}: the server said {line!r}")
    return process, int(line.split()[1])


def stop_process(process: subprocess.Popen[str]) -> str:
    """SIGTERM, then SIGKILL if it lingers; returns what it printed after the port."""
    if process.poll() is None:
        process.terminate()
    try:
        out, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate(timeout=15)
    return out or ""


def measure(figure: Figure, loop_name: str, round_no: int, messages: int, warmup: int) -> Run:
    if figure.name == "ceiling":
        messages *= CEILING_FACTOR
    server, port = start_server(figure, loop_name)
    try:
        # A closed loop at the slowest target rate, plus start-up, with a wide margin.
        timeout_s = 30.0 + (warmup + messages) / 500
        client = subprocess.run(
            role_argv(
                "client",
                {
                    "client": figure.client,
                    "loop": loop_name,
                    "port": port,
                    "server_pid": server.pid,
                    "messages": messages,
                    "warmup": warmup,
                    "window": WINDOW,
                    "registered_delivery": figure.registered_delivery,
                    "timeout_s": timeout_s,
                },
                *(["--wait-receipts"] if figure.wait_receipts else []),
            ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s + 30,
            check=False,
        )
    finally:
        tail = stop_process(server)
    if client.returncode != 0:
        raise RuntimeError(f"{figure.name}/{loop_name}: client failed:\n{client.stderr[-3000:]}")
    result = json.loads(client.stdout.strip().splitlines()[-1])
    stats_lines = [line for line in tail.splitlines() if line.startswith("{")]
    elapsed = float(result["elapsed_s"])
    return Run(
        figure=figure.name,
        loop=loop_name,
        round=round_no,
        messages=messages,
        elapsed_s=elapsed,
        per_s=messages / elapsed,
        client_cpu_us=result["client_cpu_s"] / messages * 1e6,
        server_cpu_us=result["server_cpu_s"] / messages * 1e6,
        errors=int(result["errors"]),
        receipts=int(result["receipts"]),
        server_stats=json.loads(stats_lines[-1]) if stats_lines else {},
    )


def table(runs: list[Run], figures: list[str], loops: list[str]) -> str:
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    lines = [
        "| figure | loop | median msg/s | vs ceiling | target | runs (msg/s) "
        "| client CPU µs/msg | server CPU µs/msg |",
        "|---|---|---:|---:|---|---|---:|---:|",
    ]
    for loop_name in loops:
        ceiling = med([r.per_s for r in runs if r.figure == "ceiling" and r.loop == loop_name])
        for name in figures:
            mine = [r for r in runs if r.figure == name and r.loop == loop_name]
            if not mine:
                continue
            rate = med([r.per_s for r in mine])
            target = TARGETS.get(name)
            target_text = "—" if target is None else f"≥ {target:,.0f}"
            if target is not None:
                target_text += " met" if rate >= target else " **missed**"
            if name.startswith("d"):
                target_text += f" ({rate / D_BOUND:.2f} of window/latency)"
            measured = FIGURES[name].measured
            client_cpu = f"{med([r.client_cpu_us for r in mine]):.1f}"
            server_cpu = f"{med([r.server_cpu_us for r in mine]):.1f}"
            if measured == "client":
                client_cpu = f"**{client_cpu}**"
            elif measured == "server":
                server_cpu = f"**{server_cpu}**"
            lines.append(
                f"| {name} | {loop_name} | {rate:,.0f} | {rate / ceiling:.2f} | {target_text} "
                f"| {', '.join(f'{r.per_s:,.0f}' for r in mine)} | {client_cpu} | {server_cpu} |"
            )
    return "\n".join(lines)


def orchestrate(args: argparse.Namespace) -> int:
    figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    unknown = set(figures) - set(FIGURES)
    if unknown:
        print(f"unknown figures: {sorted(unknown)}", file=sys.stderr)
        return 2
    if "ceiling" not in figures:
        figures.insert(0, "ceiling")
    loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    runs_wanted = 1 if args.quick else args.runs
    messages = 3_000 if args.quick else args.messages
    warmup = min(2_000, max(messages // 10, 200))
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{os.cpu_count()} CPUs, {runs_wanted} run(s) x {messages} messages "
        f"(+{warmup} warm-up; ceiling x{CEILING_FACTOR}), window {WINDOW}, loops {loops}",
        flush=True,
    )
    runs: list[Run] = []
    failed = False
    for round_no in range(1, runs_wanted + 1):
        for loop_name in loops:
            for name in figures:
                try:
                    run = measure(FIGURES[name], loop_name, round_no, messages, warmup)
                except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
                    print(f"round {round_no} {name}/{loop_name}: FAILED: {exc}", flush=True)
                    failed = True
                    continue
                runs.append(run)
                failed = failed or run.errors > 0
                print(
                    f"round {round_no} {name:>7}/{loop_name:<7} {run.per_s:>10,.0f} msg/s  "
                    f"client {run.client_cpu_us:6.1f} µs/msg  server {run.server_cpu_us:6.1f} "
                    f"µs/msg  errors {run.errors}  receipts {run.receipts}  {run.server_stats}",
                    flush=True,
                )
    print()
    print(table(runs, figures, loops))
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"smpp-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "argv": sys.argv,
                "messages": messages,
                "warmup": warmup,
                "runs": [asdict(r) for r in runs],
            },
            indent=2,
        )
    )
    print(f"\nresults: {path}")
    if args.json:
        print(json.dumps({"benchmark": "smpp", "ok": not failed, "rows": json_rows(runs, loops)}))
    return 1 if failed else 0


def json_rows(runs: list[Run], loops: list[str]) -> list[dict[str, Any]]:
    """Each figure's median per loop against the ceiling of the same loop (bench/quick.py)."""
    rows: list[dict[str, Any]] = []
    for loop_name in loops:
        mine = [r for r in runs if r.loop == loop_name]
        ceilings = [r.per_s for r in mine if r.figure == "ceiling"]
        ceiling = statistics.median(ceilings) if ceilings else None
        for name in dict.fromkeys(r.figure for r in mine):
            rate = statistics.median(r.per_s for r in mine if r.figure == name)
            rows.append(
                {
                    "figure": f"smpp {name} ({loop_name})",
                    "value": rate,
                    "unit": "msg/s",
                    "baseline": f"ceiling ({loop_name})" if ceiling else None,
                    "baseline_value": ceiling,
                    "ratio": rate / ceiling if ceiling else None,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 run of 3,000 messages")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--figures", default=",".join(ALL_FIGURES))
    parser.add_argument("--loops", default="uvloop,asyncio")
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON line of the summary (bench/quick.py)"
    )
    # Internal: the roles this script starts in its subprocesses.
    parser.add_argument("--role", choices=("server", "client"), help=argparse.SUPPRESS)
    parser.add_argument("--server", choices=("raw", "smsc"), help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=("raw", "esme"), help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="uvloop", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=2_000, help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, default=WINDOW, help=argparse.SUPPRESS)
    parser.add_argument("--registered-delivery", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--wait-receipts", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--response-delay-s", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--receipt-delay-s", type=float, default=0.05, help=argparse.SUPPRESS)
    parser.add_argument("--timeout-s", type=float, default=120.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "server":
        run_loop(serve(args), args.loop)
        return 0
    if args.role == "client":
        client_main(args)
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        return orchestrate(args)
    return 130


if __name__ == "__main__":
    sys.exit(main())
