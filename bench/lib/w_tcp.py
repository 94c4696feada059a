"""TCP workloads: a 1 GiB `get` against a raw loopback copy (socat) and scp from a local sshd."""

from __future__ import annotations

import json
import socket
import struct
import time

from sshd import Sshd
from common import TOKEN, Ctx, Goal, Row, Server, ferry, free_port, log, make_file, median
from common import run as sh
from ferryproto import DATA, END, ERROR, HEADER, HELLO, REQUEST, WELCOME, WINDOW, frame

BUF = 4 << 20
GRANT = 1 << 20


def read_raw(port: int, expect: int) -> float:
    """Reads a plain TCP stream to its end; MB/s."""
    buf = bytearray(BUF)
    mv = memoryview(buf)
    got = 0
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        while True:
            n = s.recv_into(mv)
            if n == 0:
                break
            got += n
    took = time.perf_counter() - start
    if got != expect:
        raise RuntimeError(f"raw copy gave {got} bytes, not {expect}")
    return got / took / 1e6


def ferry_get(port: int, path: str, expect: int) -> tuple[float, str]:
    """Downloads `path` over the framed protocol as fast as Python can take it, discarding the
    bytes (granting the window per MiB); MB/s and the MD5 the server announced and repeated."""
    buf = bytearray(BUF)
    mv = memoryview(buf)
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hello = {"version": 1, "token": TOKEN, "client": "ferry-bench", "window": 64 << 20}
    s.sendall(frame(HELLO, 0, json.dumps(hello).encode()))
    start = time.perf_counter()
    s.sendall(frame(REQUEST, 1, json.dumps({"op": "get", "path": path}).encode()))
    head = bytearray()
    left = 0  # payload bytes of the current frame still to come
    kind = 0
    body = bytearray()
    data = unacked = 0
    header = end = None
    while end is None:
        n = s.recv_into(mv)
        if n == 0:
            raise RuntimeError("connection closed during get")
        i = 0
        while i < n:
            if left == 0 and len(head) < 9:
                take = min(9 - len(head), n - i)
                head += mv[i : i + take]
                i += take
                if len(head) < 9:
                    break
                length, kind, _ = struct.unpack(">IBI", head)
                left = length - 5
                body = bytearray()
                if left > 0:
                    continue
            take = min(left, n - i)
            if kind == DATA:
                data += take
                unacked += take
            else:
                body += mv[i : i + take]
            i += take
            left -= take
            if left == 0:
                head = bytearray()
                if kind == WELCOME:
                    pass
                elif kind == HEADER:
                    header = json.loads(body)
                elif kind == END:
                    end = json.loads(body)
                elif kind == ERROR:
                    raise RuntimeError(body.decode())
        if unacked >= GRANT:
            s.sendall(frame(WINDOW, 1, struct.pack(">I", unacked)))
            unacked = 0
    took = time.perf_counter() - start
    s.close()
    if data != expect or header is None or end["md5"] != header["md5"] or end["changed"]:
        raise RuntimeError(f"ferry get gave {data} bytes of {expect}: {header} {end}")
    return data / took / 1e6, end["md5"]


def timed(argv: list[str]) -> float:
    """Wall time of a command, in seconds."""
    start = time.perf_counter()
    sh(argv)
    return time.perf_counter() - start


def run(ctx: Ctx) -> list[Row]:
    """The TCP rows."""
    root = ctx.work / "tcp-root"
    size = ctx.size(1 << 30, 64 << 20)
    big = make_file(root / "big.bin", size)
    dest = ctx.work / "tcp-dest.bin"
    srv, tcp, _ = ferry(ctx, root, name="ferry-tcp")
    ssh = Sshd(ctx)
    socat = ctx.peer_bin("socat")
    figures: dict[str, list[float]] = {"ferry": [], "socat": [], "scp": [], "cli": []}
    try:
        ferry_get(tcp, "big.bin", size)  # stores the digest: the workload is warm
        for i in range(ctx.runs):
            figures["ferry"].append(ferry_get(tcp, "big.bin", size)[0])
            if socat:
                port = free_port()
                with Server("socat", [socat, "-b131072", "-u", f"OPEN:{big}",
                                      f"TCP-LISTEN:{port},reuseaddr,bind=127.0.0.1"],
                            port, log_dir=ctx.work, probe=False):
                    figures["socat"].append(read_raw(port, size))
            if ssh.ok:
                t = timed([*ssh.scp_args, ssh.remote(big), str(dest)])
                figures["scp"].append(size / t / 1e6)
            t = timed([str(ctx.ferry_bin), "get", "--addr", f"127.0.0.1:{tcp}", "--token", TOKEN,
                       "big.bin", "-o", str(dest)])
            figures["cli"].append(size / t / 1e6)
            log(f"TCP get run {i + 1}: " + ", ".join(f"{k} {v[-1]:.0f} MB/s"
                                                     for k, v in figures.items() if v))
    finally:
        srv.stop()
        ssh.stop()
        dest.unlink(missing_ok=True)
    label = "1 GiB" if not ctx.quick else f"{size >> 20} MiB"
    return [
        Row("TCP", f"get {label} with the MD5 trailer", "MB/s", median(figures["ferry"]),
            {"socat": median(figures["socat"]), "scp": median(figures["scp"])},
            [Goal("socat", 0.8), Goal("scp", 3.0)],
            note="one Python reader for ferry and socat (discards the bytes); socat -b 131072 "
                 "sends; scp from a local sshd (default cipher) to a file"),
        Row("TCP", f"`ferry get` {label} to a file, client verifies MD5", "MB/s",
            median(figures["cli"]), {"scp": median(figures["scp"])}, [],
            note="end to end as a user runs it; the client's MD5 is the bound (one core)"),
    ]

