"""Exec round trips: the CLI against ssh, one open connection against a bare spawn, and HTTP."""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sshd import Sshd
from common import TOKEN, Ctx, Goal, Row, ferry, log, median
from common import run as sh
from ferryproto import Conn

OUT_SIZE = 1_000_000
GROUP = "Exec"


def out_file(root: Path) -> Path:
    """A 1 MB text file (printable, so the HTTP JSON answer is 1 MB too) that `cat` prints."""
    p = root / "out-1mb.txt"
    if not p.exists() or p.stat().st_size != OUT_SIZE:
        p.write_bytes((b"x" * 99 + b"\n") * (OUT_SIZE // 100))
    return p


def hyperfine_ms(ctx: Ctx, argv: list[str], runs: int, env: dict | None = None) -> float | None:
    """The median wall time of `argv` in ms, by `hyperfine -N` (no shell), or None without it."""
    hf = ctx.peer_bin("hyperfine")
    if hf is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = " ".join(argv)
        sh([hf, "-N", "--style", "none", "--warmup", "3", "--runs", str(runs),
             "--export-json", f.name, cmd], env=env)
        return json.load(open(f.name))["results"][0]["median"] * 1000


def conn_ms(port: int, req: dict, n: int, want: int, base: list[str] | None = None):
    """The median round trip of `req` over one open connection, in ms; with `base`, also the
    median of a bare local run of `base`, interleaved with the round trips so that both see
    the machine in the same state: (ferry, base). A command with no output is started with
    posix_spawn and waited for; one with output is run by subprocess.run, which reads its
    stdout through a pipe as ferry's server does."""
    c = Conn(port, TOKEN)
    prog = shutil.which(base[0]) if base else None
    try:
        ts, bs = [], []
        for i in range(n + 3):
            t = time.perf_counter()
            end, out = c.exec(req)
            if i >= 3:
                ts.append((time.perf_counter() - t) * 1000)
            if end.get("exit_code") != 0 or out != want:
                raise RuntimeError(f"exec {req}: {end}, {out} bytes")
            if prog:
                t = time.perf_counter()
                if want:
                    got = subprocess.run(base, stdout=subprocess.PIPE, check=True).stdout
                    assert len(got) == want
                else:
                    pid = os.posix_spawn(prog, base, os.environ)
                    os.waitpid(pid, 0)
                if i >= 3:
                    bs.append((time.perf_counter() - t) * 1000)
        return (median(ts), median(bs)) if prog else median(ts)
    finally:
        c.close()


def http_ms(port: int, req: dict, n: int, want: int) -> float | None:
    """The median round trip of `POST /api/v1/exec` (JSON answer) on one keep-alive connection."""
    c = http.client.HTTPConnection("127.0.0.1", port)
    body = json.dumps(req)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    ts = []
    for i in range(n + 3):
        t = time.perf_counter()
        c.request("POST", "/api/v1/exec", body, headers)
        r = c.getresponse()
        data = r.read()
        if i >= 3:
            ts.append((time.perf_counter() - t) * 1000)
        v = json.loads(data)
        if r.status != 200 or v.get("exit_code") != 0 or len(v.get("stdout", "")) != want:
            raise RuntimeError(f"HTTP exec {req}: {r.status} {str(v)[:200]}")
    c.close()
    return median(ts)


def run(ctx: Ctx) -> list[Row]:
    """The exec rows."""
    return ExecBench(ctx).rows()


class ExecBench:
    """The servers and figures of the exec workload."""

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.root = ctx.work / "exec-root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.file = out_file(self.root)

    def rows(self) -> list[Row]:
        """Starts ferry and sshd, measures every row."""
        ctx = self.ctx
        srv, tcp, http_port = ferry(ctx, self.root, name="ferry-exec")
        sshd = Sshd(ctx)
        try:
            rows = self.cli_rows(tcp, sshd) + self.conn_rows(tcp) + self.http_rows(http_port)
        finally:
            srv.stop()
            sshd.stop()
        return rows + self.unlimited_rows()

    def unlimited_rows(self) -> list[Row]:
        """`true` over one connection with the sandbox's limits off: what they cost."""
        ctx = self.ctx
        conf = ctx.work / "exec-nolimits.toml"
        conf.write_text("[exec]\nmax_processes = 0\nmax_open_files = 0\n")
        srv, tcp, _ = ferry(ctx, self.root, "--config", str(conf), name="ferry-exec-nolimits")
        try:
            n = ctx.size(200, 20)
            log("exec: one connection, limits off")
            t, b = self.pair(conn_ms, tcp, {"argv": ["true"]}, n, 0, ["true"])
        finally:
            srv.stop()
        return [Row(GROUP, "exec `true`, one open connection, sandbox limits off", "ms", t,
                    {"spawn+wait": b}, [Goal("spawn+wait", round(1 / 1.5, 3), "min")],
                    higher_is_better=False,
                    note="as above with `[exec] max_processes = 0, max_open_files = 0` (no "
                         "limit to set in the child); for reference")]

    def repeat(self, f, *args) -> float | None:
        """The median of `ctx.runs` measurements."""
        return median([f(*args) for _ in range(self.ctx.runs)])

    def pair(self, f, *args) -> tuple[float | None, float | None]:
        """The medians of `ctx.runs` measurements that each give a pair (ferry, baseline)."""
        got = [f(*args) for _ in range(self.ctx.runs)]
        return median([g[0] for g in got]), median([g[1] for g in got])

    def cli_rows(self, tcp: int, sshd: Sshd) -> list[Row]:
        """`ferry exec` with a new connection each time against `ssh` with a key."""
        ctx = self.ctx
        rows = []
        cli = [str(ctx.ferry_bin), "exec", "--addr", f"127.0.0.1:{tcp}", "--token", TOKEN, "-n",
               "--"]
        # What no client of a 56 MB binary can beat: its own start, plus the command run here.
        start = self.repeat(lambda: hyperfine_ms(ctx, [str(ctx.ferry_bin), "--version"],
                                                 ctx.size(100, 10)))
        for what, cmd in (("`true`", ["true"]), ("`cat` of 1 MB", ["cat", str(self.file)])):
            log(f"exec: CLI {what}")
            f = self.repeat(lambda: hyperfine_ms(ctx, cli + cmd, ctx.size(100, 10)))
            s = None
            if sshd.ok:
                s = self.repeat(lambda: hyperfine_ms(ctx, sshd.argv + cmd, ctx.size(30, 5)))
            here = ["sh", "-c", shlex.quote(" ".join(cmd))]
            local = self.repeat(lambda: hyperfine_ms(ctx, here, ctx.size(100, 10)))
            floor = start + local if start is not None and local is not None else None
            rows.append(Row(
                GROUP, f"exec {what}, CLI, new connection each time", "ms", f,
                {"ssh": s, "floor": floor},
                [Goal("ssh", 50, "min")], higher_is_better=False,
                note="hyperfine -N median; `ferry exec -n -- CMD` (runs `sh -c`) against "
                     "`ssh -i key user@127.0.0.1 CMD` to a private sshd (ed25519, default "
                     "ciphers; the login shell runs with an empty HOME); output to /dev/null. "
                     "floor: `ferry --version` plus `sh -c CMD` run locally, what the CLI "
                     "costs with no network and no server at all"))
        return rows

    def conn_rows(self, tcp: int) -> list[Row]:
        """Round trips over one open connection against a bare local spawn and wait."""
        ctx = self.ctx
        n = ctx.size(200, 20)
        log("exec: one connection")
        t_true, b_true = self.pair(conn_ms, tcp, {"argv": ["true"]}, n, 0, ["true"])
        cat = ["cat", str(self.file)]
        t_cat, b_cat = self.pair(conn_ms, tcp, {"argv": cat}, n, OUT_SIZE, cat)
        goal = [Goal("spawn+wait", round(1 / 1.5, 3), "min")]
        return [
            Row(GROUP, "exec `true`, one open connection", "ms", t_true,
                {"spawn+wait": b_true}, goal, higher_is_better=False,
                note="median round trip of the TCP protocol's exec (argv, no shell) over one "
                     "connection against a bare spawn and wait of `true` (Python's posix_spawn "
                     "and waitpid), the two interleaved; goal: within 1.5x"),
            Row(GROUP, "exec `cat` of 1 MB, one open connection", "ms", t_cat,
                {"spawn+wait": b_cat}, goal, higher_is_better=False,
                note="the client reads every byte (granting window back); baseline: Python "
                     "subprocess.run(['cat', FILE], stdout=PIPE), which reads the 1 MB through "
                     "a pipe, interleaved with the round trips; goal: within 1.5x"),
        ]

    def http_rows(self, http_port: int) -> list[Row]:
        """`POST /api/v1/exec` on one keep-alive connection, for reference (no peer)."""
        ctx = self.ctx
        n = ctx.size(200, 20)
        log("exec: HTTP")
        t_true = self.repeat(http_ms, http_port, {"argv": ["true"]}, n, 0)
        t_cat = self.repeat(http_ms, http_port, {"argv": ["cat", str(self.file)]}, n, OUT_SIZE)
        note = "median round trip of POST /api/v1/exec (JSON answer) on one keep-alive " \
               "http.client connection"
        return [
            Row(GROUP, "exec `true`, HTTP", "ms", t_true, {}, [], higher_is_better=False,
                note=note),
            Row(GROUP, "exec `cat` of 1 MB, HTTP", "ms", t_cat, {}, [], higher_is_better=False,
                note=note + "; stdout comes back as one 1 MB JSON string"),
        ]


if __name__ == "__main__":
    sys.exit("run through bench/lib/main.py --only exec")
