"""Collector benchmark: trades/s the live collector lands, against a bare websocket client.

Run ``python -m benchmarks.collector_bench [--messages 200000] [--repeat 2] [--out FILE]``.

Setup (untimed): ``python -m assets.live.replay --speed 0`` in a child process, replaying one
simulated day of ``--symbols`` symbols (about ``--messages`` trades in all) as fast as the socket
takes them. Both variants connect to it, one after the other, the same number of times
(interleaved, best run reported):

- ``baseline``: a bare ``websockets`` client that receives every message and ``json.loads`` it,
  nothing else: the floor of any Python consumer of this stream on this machine;
- ``collector``: :class:`assets.live.collector.Collector` in this process, default batching except
  ``--flush-messages``, into a fresh local storage root, until every trade is *landed* (the final
  batch committed), so parsing, validation, CSV rows, hashing and atomic commits are all inside.

Timed from the first message received to the last one received (baseline) or landed
(collector), so the connection and the server's simulation of the day are outside. CPU seconds of
this process and of the server over the same window are printed too: when the server's CPU
equals the wall time, the server, not the client, set the pace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from websockets.asyncio.client import connect

from assets.core.storage import Storage
from assets.live.collector import Collector, CollectorConfig
from assets.live.simulator import MarketSimulator, SimulatorConfig, default_symbols

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "collector.json"
DAY = date(2024, 1, 2)
SEED = 7


NOISY_SHARE = 0.10  # above this share of the CPUs used by other processes, wall times are noisy


@dataclass
class Run:
    variant: str
    messages: int
    wall_s: float
    cpu_s: float  # this process
    server_cpu_s: float | None
    others_share: float | None  # share of all CPUs that other processes used meanwhile
    files: int = 0
    bytes: int = 0

    @property
    def rate(self) -> float:
        return self.messages / self.wall_s


def _process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of another process, from /proc (None without /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all CPUs), from /proc/stat."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle, iowait
    if len(ticks) > 9:
        busy -= ticks[8] + ticks[9]  # guest time is already counted in user time
    return busy / os.sysconf("SC_CLK_TCK")


class Window:
    """Wall time, this process's CPU, the server's CPU and other processes' share of the CPUs
    between start() and stop()."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.server = _process_cpu_s(self.server_pid)
        self.machine = _machine_busy_s()

    def stop(self) -> tuple[float, float, float | None, float | None]:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        server, machine = _process_cpu_s(self.server_pid), _machine_busy_s()
        server_s = None if server is None or self.server is None else server - self.server
        others = None
        if server_s is not None and machine is not None and self.machine is not None:
            busy_others = machine - self.machine - cpu - server_s
            others = max(0.0, busy_others / (wall * (os.cpu_count() or 1)))
        return wall, cpu, server_s, others


async def run_baseline(url: str, expected: int, server_pid: int) -> Run:
    window = Window(server_pid)
    received = 0
    # The same connection settings as the collector's (receive queue, no proxy on loopback).
    async with connect(url, max_queue=1024, proxy=None) as ws:
        async for message in ws:
            if received == 0:
                window.start()
            json.loads(message)
            received += 1
            if received == expected:
                break
        wall, cpu, server, others = window.stop()
    return Run("baseline", received, wall, cpu, server, others)


async def run_collector(
    url: str, expected: int, server_pid: int, root: Path, flush_messages: int
) -> Run:
    storage = Storage(str(root))
    config = CollectorConfig(
        url=url, flush_messages=flush_messages, flush_seconds=60.0, stats_interval_s=3600.0
    )
    collector = Collector(storage, config)
    window = Window(server_pid)
    task = asyncio.create_task(collector.run())
    # Poll the counters: a 2 ms tick costs the event loop next to nothing.
    while collector.stats.messages == 0:
        await asyncio.sleep(0.002)
    window.start()
    while collector.stats.accepted < expected and not task.done():
        await asyncio.sleep(0.002)
    collector.stop()  # lands the last batch; run() returns when it is committed
    stats = await task
    wall, cpu, server, others = window.stop()
    if stats.landed_rows != expected:
        raise RuntimeError(f"collector landed {stats.landed_rows} of {expected} trades")
    return Run("collector", stats.landed_rows, wall, cpu, server, others, stats.files, stats.bytes)


def start_server(symbols: int, trades_per_day: int) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable,
        "-m",
        "assets.live.replay",
        "--speed",
        "0",
        "--port",
        "0",
        "--symbols",
        str(symbols),
        "--trades-per-day",
        str(trades_per_day),
        "--start",
        DAY.isoformat(),
        "--days",
        "1",
        "--seed",
        str(SEED),
        "--log-level",
        "WARNING",
    ]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()  # "listening on ws://127.0.0.1:PORT"
    if not line.startswith("listening on "):
        server.kill()
        raise RuntimeError(f"replay server did not start: {line!r}")
    return server, line.split()[-1]


async def bench(args: argparse.Namespace) -> dict:
    symbols = default_symbols(args.symbols)
    trades_per_day = args.messages // args.symbols
    # The replayed stream, counted here from the same seeded simulation.
    config = SimulatorConfig(symbols=symbols, seed=SEED, trades_per_day=trades_per_day)
    expected = MarketSimulator(config).trades_for_day(DAY).num_rows
    server, url = start_server(args.symbols, trades_per_day)
    workdir = Path(tempfile.mkdtemp(prefix="dd-collector-bench-"))
    runs: list[Run] = []
    try:
        for round_no in range(args.repeat):
            runs.append(await run_baseline(url, expected, server.pid))
            root = workdir / f"root-{round_no}"
            runs.append(await run_collector(url, expected, server.pid, root, args.flush_messages))
            shutil.rmtree(root, ignore_errors=True)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    best = {
        variant: min((r for r in runs if r.variant == variant), key=lambda r: r.wall_s)
        for variant in ("baseline", "collector")
    }
    ratio = best["collector"].rate / best["baseline"].rate
    print(
        f"\n{expected:,} trades ({args.symbols} symbols, one simulated day), replay server at "
        f"--speed 0 in a child process; best of {args.repeat}\n"
    )
    print(
        f"{'variant':<10} {'msg/s':>10} {'wall s':>8} {'CPU s':>7} {'server CPU s':>13} "
        f"{'others':>7} {'files':>6} {'MB':>6}"
    )
    for variant, run in best.items():
        server_cpu = "n/a" if run.server_cpu_s is None else f"{run.server_cpu_s:.2f}"
        others = "n/a" if run.others_share is None else f"{run.others_share:.0%}"
        files, megabytes = (str(run.files), f"{run.bytes / 1e6:.1f}") if run.files else ("", "")
        print(
            f"{variant:<10} {run.rate:>10,.0f} {run.wall_s:>8.2f} {run.cpu_s:>7.2f} "
            f"{server_cpu:>13} {others:>7} {files:>6} {megabytes:>6}"
        )
    all_runs = ", ".join(f"{r.variant} {r.rate:,.0f}" for r in runs)
    print(f"\ncollector / baseline throughput: {ratio:.2f}   (all runs, msg/s: {all_runs})")
    cpu_ratio = (best["collector"].cpu_s / best["collector"].messages) / (
        best["baseline"].cpu_s / best["baseline"].messages
    )
    print(f"collector / baseline CPU time per message: {cpu_ratio:.2f}")
    shares = [r.others_share for r in best.values() if r.others_share is not None]
    if shares and max(shares) > NOISY_SHARE:
        print(
            f"note: other processes used up to {max(shares):.0%} of the CPUs during the timed "
            "runs: wall times are noisy, the CPU columns less so"
        )
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "messages": expected,
        "symbols": args.symbols,
        "flush_messages": args.flush_messages,
        "runs": [{**asdict(r), "rate": r.rate} for r in runs],
        "ratio_collector_over_baseline": ratio,
        "cpu_per_message_ratio": cpu_ratio,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.collector_bench", description=__doc__
    )
    parser.add_argument("--messages", type=int, default=200_000, help="about this many trades")
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2, help="runs per variant, interleaved")
    parser.add_argument("--flush-messages", type=int, default=100_000, help="collector batch")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(bench(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
