"""Quick benchmarks: every bench/ script once, small, bounded, and one summary table.

Runs each benchmark as a subprocess with its quick arguments and `--json`, reads the one JSON
line it ends with, and prints a single Markdown table: benchmark, figure, value, unit, the
baseline measured in the same run, and the ratio to it. Each script's own output goes to
bench/results/quick-<UTC time>/<name>.log (gitignored), and each run is bounded by its own
time-out, so the whole takes a few minutes on a 2-core machine. One run of small counts is a
smoke test and a rough figure, not a measurement: compare ratios, and use the scripts' full
defaults (bench/README.md) for numbers worth quoting.

    .venv/bin/python bench/quick.py [--only accept,content_rules,e2e_sms,smpp,scaling,soak]
        [--pg-url postgresql://postgres@127.0.0.1:5432/test]

scaling and soak run on PostgreSQL: scaling creates its own database `amnex_bench_<random>` on
the server of `--pg-url` (default postgresql://postgres@127.0.0.1:5432/test; the database
named there is never written) and drops it at the end; soak starts a PostgreSQL server of its
own (initdb's defaults, autovacuum on) unless `--pg-url` is given; accept uses PostgreSQL only
when `--pg-url` is given. Loopback only. Exits 1 if a benchmark failed, timed out or printed no
summary (the table still shows the others); 2 when wrk, which accept, e2e_sms, scaling and
soak drive the API with, is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


@dataclass(frozen=True)
class Quick:
    name: str
    argv: tuple[str, ...]
    timeout_s: float


# Small counts and one measured run each. accept also runs one discarded warm-up round.
QUICK: tuple[Quick, ...] = (
    Quick("content_rules", ("content_rules.py", "--repeats", "3", "--min-repeat-s", "0.05"), 60),
    Quick(
        "accept",
        (
            "accept.py",
            "--requests",
            "5000",
            "--runs",
            "1",
            "--targets",
            "noop,sqlite",
            "--duration-cap-s",
            "30",
            "--quiet-wait-s",
            "3",
        ),
        150,
    ),
    Quick("smpp", ("smpp.py", "--quick"), 150),
    Quick(
        "e2e_sms",
        ("e2e_sms.py", "--messages", "3000", "--runs", "1", "--cap-s", "60"),
        150,
    ),
    # On PostgreSQL (a database of its own on --pg-url's server, dropped at the end) and the
    # machine's Redis (database 7): 1, 2 and 4 workers, 1 and 2 serve processes, one round.
    Quick("scaling", ("scaling.py", "--quick"), 300),
    # Four 10-s paced steps from 200 msg/s for the maximum, then a minute at 80 % of the
    # highest step held, sampled every 10 s.
    Quick("soak", ("soak.py", "--quick"), 300),
    # One read in a worker's transaction through the ORM, Core and the driver: 3 rounds.
    Quick("statements", ("statements.py", "--quick"), 120),
)
# The benchmarks that take --pg-url for the server they create their databases on.
PG_BENCHMARKS = ("scaling", "soak", "statements")


def parse_summary(stdout: str) -> dict[str, Any] | None:
    """The last line that is a JSON object naming its benchmark."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict) and "benchmark" in parsed:
            return parsed
    return None


def run_one(quick: Quick, extra: list[str], log_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """Runs one benchmark; returns its summary (or None) and a one-line status."""
    argv = [sys.executable, str(BENCH_DIR / quick.argv[0]), *quick.argv[1:], *extra, "--json"]
    log_path = log_dir / f"{quick.name}.log"
    started = time.monotonic()
    # Its own process group: Ctrl-C here reaches this driver only, which then interrupts the
    # benchmark itself below, so that its `finally` blocks stop the servers it started.
    process = subprocess.Popen(
        argv,
        cwd=REPO_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, _ = process.communicate(timeout=quick.timeout_s)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
        # SIGINT: every script stops its servers in `finally`; SIGKILL only if that hangs.
        process.send_signal(signal.SIGINT)
        try:
            stdout, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, _ = process.communicate()
        log_path.write_text(stdout or "")
        if isinstance(exc, KeyboardInterrupt):
            raise
        return None, f"TIMED OUT after {quick.timeout_s:.0f} s (log: {log_path})"
    elapsed = time.monotonic() - started
    log_path.write_text(stdout)
    summary = parse_summary(stdout)
    if summary is None:
        return None, f"FAILED: exit {process.returncode}, no summary (log: {log_path})"
    status = f"{elapsed:.0f} s"
    if process.returncode != 0 or not summary.get("ok", False):
        status += f", FAILED: exit {process.returncode} (log: {log_path})"
    return summary, status


def fmt(value: Any, unit: str = "") -> str:
    if not isinstance(value, int | float):
        return "—"
    if unit == "µs/call" or abs(value) < 100:
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def table(summaries: list[dict[str, Any]]) -> str:
    lines = [
        "| benchmark | figure | value | unit | baseline (same run) | ratio |",
        "|---|---|---:|---|---|---:|",
    ]
    for summary in summaries:
        for row in summary["rows"]:
            unit = str(row.get("unit", ""))
            baseline = "—"
            if row.get("baseline"):
                baseline = f"{row['baseline']}: {fmt(row.get('baseline_value'), unit)}"
            ratio = row.get("ratio")
            ratio_text = f"{ratio:.2f}" if isinstance(ratio, int | float) else "—"
            lines.append(
                f"| {summary['benchmark']} | {row['figure']} | {fmt(row.get('value'), unit)} "
                f"| {unit} | {baseline} | {ratio_text} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    names = [q.name for q in QUICK]
    parser.add_argument("--only", default=",".join(names), help="comma-separated subset")
    parser.add_argument(
        "--pg-url",
        help="also measure accept on PostgreSQL, and the server scaling and soak create their "
        "databases on (each creates and drops its own)",
    )
    args = parser.parse_args(argv)
    wanted = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {', '.join(names)}")
    chosen = [q for q in QUICK if q.name in wanted]
    wrk_users = ("accept", "e2e_sms", "scaling", "soak")
    if any(q.name in wrk_users for q in chosen) and shutil.which("wrk") is None:
        print(
            "wrk is not installed: `apt-get install -y wrk` (Debian), then retry.",
            file=sys.stderr,
        )
        return 2

    log_dir = RESULTS_DIR / f"quick-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    log_dir.mkdir(parents=True, exist_ok=True)
    summaries: list[dict[str, Any]] = []
    failed = False
    started = time.monotonic()
    for quick in chosen:
        extra: list[str] = []
        if quick.name == "accept" and args.pg_url:
            extra = ["--targets", "noop,sqlite,postgres", "--pg-url", args.pg_url]
        elif quick.name in PG_BENCHMARKS and args.pg_url:
            extra = ["--pg-url", args.pg_url]
        print(f"{quick.name} …", end=" ", flush=True)
        summary, status = run_one(quick, extra, log_dir)
        print(status, flush=True)
        if summary is None or "FAILED" in status:
            failed = True
        if summary is not None:
            summaries.append(summary)

    print()
    print(f"Quick benchmarks, one run each, {time.monotonic() - started:.0f} s in all:")
    print()
    print(table(summaries))
    print(f"\nlogs: {log_dir.relative_to(REPO_DIR)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
