"""Many idle TCP connections, each past its hello: the server's memory per connection."""

from __future__ import annotations

import asyncio
import time

from aioferryproto import AConn
from common import TOKEN, Ctx, Row, ferry, log
from w_load import raise_nofile

GROUP = "Memory"
GOAL_KIB = 64


async def hold(port: int, n: int) -> list[AConn]:
    """Opens `n` connections (64 handshakes at a time) and returns them, each past its hello."""
    sem = asyncio.Semaphore(64)

    async def one() -> AConn:
        async with sem:
            return await AConn.open(port, TOKEN)

    return await asyncio.gather(*(one() for _ in range(n)))


def settle(srv, seconds: float = 1.0) -> int:
    """The server's RSS once it stops moving (or after a few seconds), in KiB."""
    last = srv.rss_kib()
    end = time.monotonic() + 5
    while time.monotonic() < end:
        time.sleep(seconds / 4)
        now = srv.rss_kib()
        if abs(now - last) < 64:
            return now
        last = now
    return last


def measure(ctx: Ctx, n: int) -> tuple[float, int, int]:
    """KiB per connection, and the RSS before and after, for one fresh server."""
    root = ctx.work / "idle-root"
    root.mkdir(parents=True, exist_ok=True)
    srv, tcp, _ = ferry(ctx, root, "--max-connections", str(n + 100), name="ferry-idle")
    try:
        # A few connections first, so that lazily built state is in the baseline, not per connection.
        loop = asyncio.new_event_loop()
        warm = loop.run_until_complete(hold(tcp, 16))
        before = settle(srv)
        conns = loop.run_until_complete(hold(tcp, n))
        after = settle(srv)
        for c in conns + warm:
            c.close()
        loop.run_until_complete(asyncio.sleep(0.1))
        loop.close()
    finally:
        srv.stop()
    return (after - before) / n, before, after


def run(ctx: Ctx) -> list[Row]:
    """The idle-connections row."""
    n = ctx.size(10_000, 500)
    raise_nofile(n + 512)
    log(f"idle: {n} connections")
    runs = [measure(ctx, n) for _ in range(ctx.runs)]
    runs.sort()
    per, before, after = runs[len(runs) // 2]
    return [Row(
        GROUP, f"{n:,} idle TCP connections: server RSS per connection", "KiB", per, {}, [],
        higher_is_better=False,
        note=f"each connection past its hello, then idle; RSS (VmRSS) {before // 1024} MiB "
             f"before, {after // 1024} MiB after (median of {len(runs)} fresh servers); ferry "
             f"--max-connections {n + 100}",
        checks=[(f"<= {GOAL_KIB} KiB per connection", per <= GOAL_KIB)])]
