"""Terminal: ferry's `/term/ws` against terminado and wetty, with a raw PTY read as the bound.

Per run and per terminal: a fresh server, one session with bash, then
- RSS: the server's process tree (server and shell) once the shell answers, and again after
  the throughput run, minus the server alone before the session;
- throughput: `seq 1 N` typed into the shell, output read as fast as the client can until an
  end marker the shell prints after it, in MB/s of terminal output;
- keystroke echo: single keys typed into `cat` (the terminal's own echo), the time from
  sending a key to its echo arriving.
Every shell is bash with an empty HOME (no rc files), so the shells are alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

from common import BENCH_HOME, TOKEN, Ctx, Goal, Row, Server, ferry, free_port, log, median
from common import percentile, rss_kib
from termclients import FerryTerm, RawPty, TerminadoTerm, WettyTerm

GROUP = "Terminal"
# Typed commands echo as typed; only the shell's arithmetic prints the marker itself.
READY_CMD, READY = 'echo "ok$((2+3))ok"', b"ok5ok"
END_CMD, END = 'echo "@@$((6*7))@@"', b"@@42@@"
WAIT = 60  # seconds any one step may take before the terminal counts as failed
PEERS = ["terminado", "wetty", "raw PTY"]

TERMINADO_APP = '''\
"""terminado's demo server: one bash per WebSocket at /websocket."""
import asyncio, sys
import tornado.web
from terminado import TermSocket, UniqueTermManager

async def main():
    tm = UniqueTermManager(shell_command=["bash"])
    app = tornado.web.Application([(r"/websocket", TermSocket, {"term_manager": tm})])
    app.listen(int(sys.argv[1]), "127.0.0.1")
    await asyncio.Event().wait()

asyncio.run(main())
'''


async def until(term, needle: bytes) -> int:
    """Reads output until `needle` appears; returns the bytes read."""
    got, tail = 0, b""
    while True:
        b = await term.recv()  # never suspends: the clients block, with a timeout
        got += len(b)
        tail = tail[-len(needle):] + b
        if needle in tail:
            return got


async def throughput(term, n: int) -> float:
    """MB/s of the output of `seq 1 n`, up to the end marker printed after it."""
    t0 = time.perf_counter()
    await term.send(f"seq 1 {n}; {END_CMD}\r")
    got = await until(term, END)
    return got / (time.perf_counter() - t0) / 1e6


async def echo(term, keys: int) -> list[float]:
    """Milliseconds from typing each of `keys` keys into `cat` to its echo."""
    await term.send(f"{READY_CMD}; cat\r")
    await until(term, READY)  # the shell runs its commands: the terminal echoes again
    times = []
    for i in range(keys):
        key = chr(ord("a") + i % 26)
        t0 = time.perf_counter_ns()
        await term.send(key)
        await until(term, key.encode())
        times.append((time.perf_counter_ns() - t0) / 1e6)
    await term.send("\r\x04")  # ends cat (end of file), so that the shell reads on
    return times


async def session(open_term, server: Server | None, n: int, keys: int) -> dict:
    """One session's figures: rss (KiB), mbps, echo (ms per key)."""
    before = rss_kib(server.pid) if server else None
    term = await asyncio.wait_for(open_term(), WAIT)
    try:
        await term.send(f"{READY_CMD}\r")
        await until(term, READY)
        rss = server.rss_kib() - before if server else None
        mbps = await throughput(term, n)
        used = server.rss_kib() - before if server else None
        times = await echo(term, keys)
    finally:
        with contextlib.suppress(Exception):
            await term.close()
    return {"rss": rss, "used": used, "mbps": mbps, "echo": times}


@contextlib.contextmanager
def empty_home(ctx: Ctx):
    """HOME set to an empty folder while servers start: their shells read no rc files."""
    home = ctx.work / "term-home"
    shutil.rmtree(home, ignore_errors=True)  # the last shells' history, too
    home.mkdir(parents=True)
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        yield dict(os.environ)
    finally:
        if old is not None:
            os.environ["HOME"] = old


def wetty_bin() -> Path | None:
    """wetty as bench/run installs it, if it is there."""
    p = BENCH_HOME / "wetty" / "node_modules" / ".bin" / "wetty"
    return p if p.exists() else None


def terminado_ok() -> bool:
    """Whether this Python has terminado (bench/run's venv does)."""
    try:
        import terminado  # noqa: F401
    except ImportError:
        return False
    return True


def start(ctx: Ctx, name: str, env: dict) -> tuple[Server | None, object]:
    """Starts one terminal's server; returns it and a coroutine function opening a session."""
    if name == "ferry":
        root = ctx.work / "term-root"
        root.mkdir(parents=True, exist_ok=True)
        srv, _, http = ferry(ctx, root, name="ferry-term")
        return srv, lambda: FerryTerm.open(http, TOKEN)
    if name == "terminado":
        app = ctx.work / "terminado_app.py"
        app.write_text(TERMINADO_APP)
        port = free_port()
        srv = Server("terminado", [sys.executable, str(app), str(port)], port, env=env,
                     log_dir=ctx.work)
        return srv, lambda: TerminadoTerm.open(port)
    if name == "wetty":
        port = free_port()
        argv = [str(wetty_bin()), "--host", "127.0.0.1", "--port", str(port), "--command", "bash"]
        srv = Server("wetty", argv, port, env=env, log_dir=ctx.work)
        return srv, lambda: WettyTerm.open(port)
    return None, lambda: RawPty.open(env)


def available(name: str) -> bool:
    """Whether a terminal can run here."""
    if name == "terminado":
        return terminado_ok()
    if name == "wetty":
        return wetty_bin() is not None
    return True


def measure(ctx: Ctx, name: str, n: int, keys: int) -> dict | None:
    """One run of one terminal on a fresh server; None when a peer fails (ferry raises)."""
    srv = None
    try:
        with empty_home(ctx) as env:
            srv, open_term = start(ctx, name, env)
        return asyncio.run(session(open_term, srv, n, keys))
    except Exception as e:
        if name == "ferry":
            raise
        log(f"term: {name} failed: {e!r}")
        return None
    finally:
        if srv is not None:
            srv.stop()


def run(ctx: Ctx) -> list[Row]:
    """The terminal rows: throughput, echo p50 and p99, RSS per session."""
    n = ctx.size(2_000_000, 200_000)
    keys = ctx.size(200, 50)
    names = ["ferry"] + [p for p in PEERS if available(p)]
    missing = [p for p in PEERS if not available(p)]
    results: dict[str, list[dict]] = {name: [] for name in ["ferry"] + PEERS}
    for i in range(ctx.runs):
        for name in names:  # interleaved, so that a noisy moment hits everyone
            log(f"term: {name}, run {i + 1}/{ctx.runs}")
            r = measure(ctx, name, n, keys)
            if r is not None:
                results[name].append(r)
    return rows(results, n, keys, missing)


def figure(rs: list[dict], f) -> float | None:
    """The median over runs of `f(run)`."""
    vals = [f(r) for r in rs]
    return median([v for v in vals if v is not None])


def rows(results: dict[str, list[dict]], n: int, keys: int, missing: list[str]) -> list[Row]:
    """Medians over the runs, as rows."""
    def each(f):
        return figure(results["ferry"], f), {p: figure(results[p], f) for p in PEERS}

    note = f"not installed: {', '.join(missing)}. " if missing else ""
    mbps = lambda r: r["mbps"]  # noqa: E731
    p50 = lambda r: percentile(r["echo"], 50)  # noqa: E731
    p99 = lambda r: percentile(r["echo"], 99)  # noqa: E731

    def mb(key):
        return lambda r: None if r[key] is None else r[key] * 1024 / 1e6

    out = []
    f, peers = each(mbps)
    out.append(Row(GROUP, f"seq 1 {n} through the terminal", "MB/s", f, peers,
                   [Goal("raw PTY", 0.9)], note=note + "raw PTY: bash on a PTY read directly, "
                   "no WebSocket (the bound of every web terminal)"))
    f, peers = each(p50)
    out.append(Row(GROUP, f"keystroke echo p50 ({keys} keys into cat)", "ms", f, peers, [],
                   higher_is_better=False, note="wetty holds output for 2 ms (a timer) before "
                   "it sends it"))
    f, peers = each(p99)
    out.append(Row(GROUP, f"keystroke echo p99 ({keys} keys into cat)", "ms", f, peers, [],
                   higher_is_better=False, checks=[("p99 < 0.4 ms", f is not None and f < 0.4)]))
    p99_raw = peers["raw PTY"]
    out[-1].note = ("keys into cat, whose echo the PTY itself makes: the raw PTY column is the "
                    "bound on this machine" + (f" (its own p99 is {p99_raw:.2f} ms)"
                                               if p99_raw and p99_raw >= 0.4 else ""))
    for key, what in (("rss", "an idle shell"), ("used", f"after seq 1 {n}")):
        f, peers = each(mb(key))
        peers.pop("raw PTY")
        out.append(Row(GROUP, f"RSS per session, server and its shell, {what}", "MB", f, peers,
                       [], higher_is_better=False, note="the server's process tree with the "
                       "session open, minus the server alone before it",
                       checks=[("<= 10 MB", f is not None and f <= 10)]))
    return out
