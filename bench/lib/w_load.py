"""Many concurrent clients mixing exec, get and put over the TCP protocol: errors and latency."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import random
import resource
import time

from aioferryproto import AConn
from common import TOKEN, Ctx, Row, ferry, log, make_file, percentile

GROUP = "Load"
PUT_SIZE = 64 << 10
# Operation kinds and their weights.
MIX = [("exec", 1), ("get 4 KiB", 1), ("get 1 MiB", 1), ("put 64 KiB", 1)]


def raise_nofile(want: int) -> None:
    """Raises this process's open-file limit towards `want` (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        top = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


class Load:
    """The shared tallies of one load run."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.lat: dict[str, list[float]] = collections.defaultdict(list)
        self.errors: collections.Counter = collections.Counter()
        self.samples: list[str] = []

    def error(self, kind: str, e: BaseException) -> None:
        """Counts an error, keeping the first few messages."""
        self.errors[kind] += 1
        if len(self.samples) < 5:
            self.samples.append(f"{kind}: {type(e).__name__}: {str(e)[:160]}")


async def client(i: int, port: int, load: Load, connects: asyncio.Semaphore,
                 payload: bytes, md5: str) -> None:
    """One client: connects, then runs random operations until the deadline."""
    rnd = random.Random(i)
    kinds = [k for k, w in MIX for _ in range(w)]
    async with connects:
        try:
            c = await AConn.open(port, TOKEN)
        except Exception as e:  # noqa: BLE001 (every failure is a figure)
            load.error("connect", e)
            return
    try:
        while time.monotonic() < load.deadline:
            kind = rnd.choice(kinds)
            t = time.perf_counter()
            try:
                if kind == "exec":
                    end, out = await c.exec({"argv": ["echo", "hello"]})
                    if end.get("exit_code") != 0 or out != 6:
                        raise RuntimeError(f"exec ended {end} with {out} bytes")
                elif kind == "get 4 KiB":
                    await c.get("load/small-4k")
                elif kind == "get 1 MiB":
                    await c.get("load/medium-1m")
                else:
                    await c.put(f"load/up/c{i}.bin", payload, md5)
            except Exception as e:  # noqa: BLE001
                load.error(kind, e)
                if isinstance(e, (ConnectionError, asyncio.IncompleteReadError)):
                    return
                continue
            load.lat[kind].append((time.perf_counter() - t) * 1000)
    finally:
        c.close()


async def drive(port: int, clients: int, seconds: float) -> tuple[Load, float]:
    """Runs `clients` clients for `seconds`; returns the tallies and the wall time."""
    payload = random.Random(0).randbytes(PUT_SIZE)
    md5 = hashlib.md5(payload).hexdigest()
    connects = asyncio.Semaphore(64)
    load = Load(time.monotonic() + seconds)
    started = time.monotonic()
    await asyncio.gather(*(client(i, port, load, connects, payload, md5)
                           for i in range(clients)))
    return load, time.monotonic() - started


def run(ctx: Ctx) -> list[Row]:
    """The load rows."""
    clients = ctx.size(1000, 50)
    seconds = ctx.size(30, 5)
    raise_nofile(clients * 2 + 256)
    root = ctx.work / "load-root"
    make_file(root / "load" / "small-4k", 4 << 10)
    make_file(root / "load" / "medium-1m", 1 << 20)
    (root / "load" / "up").mkdir(parents=True, exist_ok=True)
    flags = ["--max-connections", str(clients + 100)]
    srv, tcp, _ = ferry(ctx, root, *flags, name="ferry-load")
    try:
        log(f"load: {clients} clients for {seconds} s")
        load, wall = asyncio.run(drive(tcp, clients, seconds))
        rss = srv.rss_kib()
    finally:
        srv.stop()
    ops = sum(len(v) for v in load.lat.values())
    errors = sum(load.errors.values())
    detail = ", ".join(f"{k} {len(load.lat[k])}" for k, _ in MIX)
    note = (f"{clients} asyncio clients (one connection each, one Python process) for "
            f"{seconds} s, each running one of {', '.join(k for k, _ in MIX)} at random "
            f"(exec: argv echo hello; put: a new 64 KiB file with its MD5); ferry "
            f"{' '.join(flags)}, other settings default; done: {detail}; errors: "
            f"{dict(load.errors) or 0}; server RSS after {rss // 1024} MiB")
    if load.samples:
        note += "; first errors: " + " | ".join(load.samples)
        log("load errors: " + " | ".join(load.samples))
    rows = [Row(GROUP, f"{clients} clients mixing exec, get, put", "ops/s", ops / wall, {}, [],
                note=note, checks=[(f"errors = 0 (got {errors})", errors == 0)])]
    for kind, _ in MIX:
        lat = load.lat[kind]
        for p in (50, 99):
            rows.append(Row(GROUP, f"{clients} clients: {kind} p{p}", "ms", percentile(lat, p),
                            {}, [], higher_is_better=False,
                            note=f"latency of one {kind} round trip under the load above "
                                 f"({len(lat)} done)"))
    return rows
