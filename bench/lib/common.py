"""Shared parts of the benchmark: the run's settings, servers started for a workload, figures."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH_HOME = Path(os.environ.get("FERRY_BENCH_HOME", Path.home() / ".cache" / "ferry-bench"))
TOKEN = "bench-token-0123456789abcdef"


@dataclasses.dataclass
class Ctx:
    """What one run of bench/run was asked for, and where it works."""

    quick: bool
    runs: int
    work: Path
    ferry_bin: Path
    only: set[str]

    def size(self, full: int, quick: int) -> int:
        """A workload size: the full one, or the smoke mode's."""
        return quick if self.quick else full

    def peer_bin(self, name: str) -> str | None:
        """The path of a peer's program (installed by bench/run), or None if it is missing."""
        local = BENCH_HOME / "bin" / name
        if local.exists():
            return str(local)
        for d in ("/usr/sbin", "/usr/bin", "/usr/local/bin"):
            p = Path(d) / name
            if p.exists():
                return str(p)
        return shutil.which(name)


@dataclasses.dataclass
class Goal:
    """A goal of one row: ferry's figure against a peer's, as a ratio (ferry / peer)."""

    peer: str
    ratio: float
    # "min": ferry/peer must be at least `ratio` (higher is better), "max": at most.
    kind: str = "min"


@dataclasses.dataclass
class Row:
    """One workload's figures: ferry's, each peer's, and the goals that compare them."""

    group: str
    workload: str
    unit: str
    ferry: float | None
    peers: dict[str, float | None]
    goals: list[Goal]
    higher_is_better: bool = True
    note: str = ""
    # Absolute goals on ferry's own figure: (text, met).
    checks: list[tuple[str, bool]] = dataclasses.field(default_factory=list)

    def ratio(self, peer: str) -> float | None:
        """ferry's figure over the peer's (for times and sizes, the peer's over ferry's)."""
        p = self.peers.get(peer)
        if self.ferry in (None, 0) or p in (None, 0):
            return None
        return self.ferry / p if self.higher_is_better else p / self.ferry

    def met(self) -> list[tuple[str, bool | None]]:
        """Each goal as text with whether it was met (None: a figure is missing)."""
        out: list[tuple[str, bool | None]] = []
        for g in self.goals:
            r = self.ratio(g.peer)
            if g.kind == "min":
                out.append((f">= {g.ratio:g}x {g.peer}", None if r is None else r >= g.ratio))
            else:
                out.append((f"<= {g.ratio:g}x {g.peer}", None if r is None else r <= g.ratio))
        out.extend((t, m) for t, m in self.checks)
        return out


def median(xs: list[float]) -> float | None:
    """The median, or None for no figures."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def percentile(xs: list[float], p: float) -> float | None:
    """The p-th percentile (0..100) by nearest rank."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def log(msg: str) -> None:
    """Progress on stderr, so the table on stdout stays clean."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Waits until something accepts connections on 127.0.0.1:port."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Waits until a socket listens on `port`, without connecting (for one-shot servers)."""
    end = time.monotonic() + timeout
    hexport = f":{port:04X} "
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening")
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[1].endswith(hexport.strip()) and cols[3] == "0A":
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants, in KiB."""
    total = rss_kib(pid)
    for child in children(pid):
        total += tree_rss_kib(child)
    return total


def children(pid: int) -> list[int]:
    """Direct children of a process."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


class Server:
    """A server process started for a workload, stopped (with its process group) on exit."""

    def __init__(self, name: str, argv: list[str], port: int, env: dict | None = None,
                 cwd: Path | None = None, log_dir: Path | None = None, probe: bool = True):
        self.name = name
        self.port = port
        out = open((log_dir or Path("/tmp")) / f"{name}.log", "ab")
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=out,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_port(port, self.proc) if probe else wait_listening(port, self.proc)
        except Exception:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def rss_kib(self) -> int:
        """The server's resident memory, children included (a worker, a shell)."""
        return tree_rss_kib(self.proc.pid)

    def stop(self) -> None:
        """Stops the server and everything it started."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def ferry(ctx: Ctx, root: Path, *extra: str, name: str = "ferry") -> tuple[Server, int, int]:
    """Starts ferry serving `root`; returns the server and its TCP and HTTP ports."""
    tcp, http = free_port(), free_port()
    # A fresh audit store each run: one left by earlier runs (gigabytes after a few) would make
    # a run's figures depend on the runs before it.
    data = ctx.work / f"{name}-data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    argv = [str(ctx.ferry_bin), "serve", "--root", str(root), "--data-dir", str(data),
            "--token", TOKEN, "--tcp-addr", f"127.0.0.1:{tcp}",
            "--http-addr", f"127.0.0.1:{http}", *extra]
    # Default logging: a line per session and transfer, as a user runs it.
    srv = Server(name, argv, http, log_dir=ctx.work)
    wait_port(tcp, srv.proc)
    return srv, tcp, http


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    """Runs a command, failing loudly with its output when it fails."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    p = subprocess.run(argv, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({p.returncode}): {p.stderr}")
    return p


def make_file(path: Path, size: int) -> Path:
    """A file of `size` random bytes (kept between runs when its size is right)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.stat().st_size != size:
        with open("/dev/urandom", "rb") as src, open(path, "wb") as dst:
            left = size
            while left:
                b = src.read(min(left, 1 << 20))
                dst.write(b)
                left -= len(b)
    return path


def warm(path: Path) -> None:
    """Reads a file once so that the page cache holds it."""
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
