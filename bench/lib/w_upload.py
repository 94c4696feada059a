"""Uploads of 1 GiB verified by MD5, over TCP and HTTP, to disk and into memory, against
md5sum of the same bytes."""

from __future__ import annotations

import base64
import hashlib
import json
import mmap
import os
import shutil
import socket
import struct
import time
from pathlib import Path

import peers
from common import TOKEN, Ctx, Goal, Row, ferry, log, make_file, median, warm
from common import run as sh
from ferryproto import DATA, END, ERROR, HELLO, REQUEST, WELCOME, WINDOW, frame

CHUNK = 256 * 1024


def md5_of(path) -> str:
    """The file's MD5 hex (computed once, before any timing)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def timed(argv: list[str]) -> float:
    """Wall time of a command, in seconds."""
    start = time.perf_counter()
    sh(argv)
    return time.perf_counter() - start


def read_frame(s: socket.socket, buf: bytearray) -> tuple[int, int, bytes]:
    """The next frame from `s`, with `buf` holding what was read past the previous one."""
    while len(buf) < 9 or len(buf) < 4 + struct.unpack_from(">I", buf)[0]:
        chunk = s.recv(1 << 16)
        if not chunk:
            raise RuntimeError("connection closed during put")
        buf += chunk
    length, kind, stream = struct.unpack_from(">IBI", buf)
    payload = bytes(buf[9 : 4 + length])
    del buf[: 4 + length]
    return kind, stream, payload


def tcp_put(port: int, path, name: str, md5: str) -> float:
    """Uploads a file over the framed protocol with its MD5 known beforehand (as from a
    manifest): the server hashes and verifies while it receives; MB/s up to its End."""
    size = path.stat().st_size
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        data = memoryview(m)
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        s.sendall(frame(HELLO, 0, json.dumps({"version": 1, "token": TOKEN}).encode()))
        kind, _, welcome = read_frame(s, buf)
        if kind != WELCOME:
            raise RuntimeError(welcome.decode())
        limits = json.loads(welcome)["limits"]
        window = limits["window"]
        chunk = min(CHUNK, limits["max_frame"] - 5)
        start = time.perf_counter()
        req = {"op": "put", "path": name, "size": size, "md5": md5}
        s.sendall(frame(REQUEST, 1, json.dumps(req).encode()))
        sent = 0
        head = struct.Struct(">IBI")
        while True:
            while sent < size and window > 0:
                n = min(chunk, window, size - sent)
                s.sendall(head.pack(5 + n, DATA, 1))
                s.sendall(data[sent : sent + n])
                sent += n
                window -= n
            kind, _, payload = read_frame(s, buf)
            if kind == WINDOW:
                window += struct.unpack(">I", payload)[0]
            elif kind == END:
                break
            elif kind == ERROR:
                raise RuntimeError(payload.decode())
        took = time.perf_counter() - start
        del data
        s.close()
    return size / took / 1e6


def tmpfs_root(need: int) -> Path | None:
    """A folder in memory (tmpfs) with room for `need` bytes, for the rows that leave the disk
    out; None when there is none."""
    shm = Path("/dev/shm")
    try:
        fs = next(line.split()[2] for line in open("/proc/mounts")
                  if line.split()[1] == str(shm))
        st = os.statvfs(shm)
    except (OSError, StopIteration):
        return None
    if fs != "tmpfs" or st.f_bavail * st.f_frsize < need:
        return None
    root = shm / f"ferry-bench-upload-{os.getpid()}"
    root.mkdir(exist_ok=True)
    return root


def run(ctx: Ctx) -> list[Row]:
    """The upload rows: to disk as users run it (each file fsynced before it is answered), and
    into memory (tmpfs), where the disk's write-back is out of the figure."""
    root = ctx.work / "upload-root"
    root.mkdir(parents=True, exist_ok=True)
    src = make_file(ctx.work / "upload-src" / "big.bin", ctx.size(1 << 30, 64 << 20))
    size = src.stat().st_size
    warm(src)
    md5 = md5_of(src)
    b64 = base64.b64encode(bytes.fromhex(md5)).decode()
    mem = tmpfs_root(2 * size)
    srv, tcp, http = ferry(ctx, root, name="ferry-upload")
    msrv = ferry(ctx, mem, name="ferry-upload-mem") if mem else None
    (ctx.work / "dufs-upload-root").mkdir(exist_ok=True)
    dufs = peers.start_all(ctx, [("dufs", lambda: peers.dufs(
        ctx, ctx.work / "dufs-upload-root", upload=True))]).get("dufs")
    f: dict[str, list[float]] = {k: [] for k in
                                 ("md5sum", "tcp", "http", "cli", "dufs", "mem tcp",
                                  "mem http")}

    def settled(mb_s: float, stored) -> float:
        """Each upload starts with the disk idle: the one before is removed and every
        written page is on disk first (untimed), so no upload pays for another's write-back."""
        stored.unlink(missing_ok=True)
        os.sync()
        return mb_s

    def curl_put(port: int, name: str) -> float:
        t = timed(["curl", "-sS", "-f", "-o", "/dev/null", "-T", str(src),
                   "-H", f"Authorization: Bearer {TOKEN}", "-H", f"Content-MD5: {b64}",
                   f"http://127.0.0.1:{port}/files/{name}"])
        return size / t / 1e6

    try:
        os.sync()
        for i in range(ctx.runs):
            f["md5sum"].append(size / timed(["md5sum", str(src)]) / 1e6)
            # The two transports take turns at going first: on a VM whose freed memory goes back
            # to its host, the upload that runs right after a 1 GiB file was removed gets
            # recycled pages, and the other fresh ones (a host fault each).
            first_tcp = i % 2 == 0
            disk = {
                "tcp": lambda: settled(tcp_put(tcp, src, f"tcp-{i}.bin", md5),
                                       root / f"tcp-{i}.bin"),
                "http": lambda: settled(curl_put(http, f"http-{i}.bin"), root / f"http-{i}.bin"),
            }
            for k in ("tcp", "http") if first_tcp else ("http", "tcp"):
                f[k].append(disk[k]())
            t = timed([str(ctx.ferry_bin), "put", "--addr", f"127.0.0.1:{tcp}", "--token", TOKEN,
                       str(src), f"cli-{i}.bin"])
            f["cli"].append(settled(size / t / 1e6, root / f"cli-{i}.bin"))
            if dufs:
                t = timed(["curl", "-sS", "-f", "-o", "/dev/null", "-T", str(src),
                           f"http://127.0.0.1:{dufs.port}/dufs-{i}.bin"])
                f["dufs"].append(settled(size / t / 1e6,
                                         ctx.work / "dufs-upload-root" / f"dufs-{i}.bin"))
            if msrv:
                def in_memory(k: str) -> float:
                    mb_s = (tcp_put(msrv[1], src, f"tcp-{i}.bin", md5) if k == "mem tcp"
                            else curl_put(msrv[2], f"http-{i}.bin"))
                    (mem / (f"tcp-{i}.bin" if k == "mem tcp" else f"http-{i}.bin")).unlink()
                    return mb_s

                for k in ("mem tcp", "mem http") if first_tcp else ("mem http", "mem tcp"):
                    f[k].append(in_memory(k))
            log(f"upload run {i + 1}: " + ", ".join(f"{k} {v[-1]:.0f} MB/s"
                                                   for k, v in f.items() if v))
    finally:
        srv.stop()
        if msrv:
            msrv[0].stop()
            shutil.rmtree(mem, ignore_errors=True)
        if dufs:
            dufs.stop()
    for p in list(root.glob("*.bin")) + list((ctx.work / "dufs-upload-root").glob("*.bin")):
        p.unlink()
    label = "1 GiB" if not ctx.quick else f"{size >> 20} MiB"
    disk_peers = lambda: {"md5sum": median(f["md5sum"]),
                          "dufs (verifies nothing)": median(f["dufs"])}
    rows = [
        Row("Upload", f"TCP put {label}, MD5 verified by the server, to disk", "MB/s",
            median(f["tcp"]), disk_peers(), [Goal("md5sum", 0.9)],
            note="MD5 known beforehand; timed from the request to the server's End, which "
                 "comes after the fsync; each upload starts with the disk idle; TCP and HTTP "
                 "take turns at going first"),
        Row("Upload", f"HTTP PUT {label}, Content-MD5 verified, to disk", "MB/s",
            median(f["http"]), disk_peers(), [Goal("md5sum", 0.9)],
            note="curl -T with a Content-MD5 header"),
        Row("Upload", f"`ferry put` {label}, end to end, to disk", "MB/s", median(f["cli"]),
            disk_peers(), [], note="one pass: the CLI hashes the bytes as it sends them, and their "
                                   "MD5 follows them"),
    ]
    if msrv:
        mem_note = ("the served root in memory (tmpfs), so that the disk is out of the figure: "
                    "what is left is receiving, hashing and writing, with the sending client on "
                    "the same two cores; TCP and HTTP take turns at going first")
        rows += [
            Row("Upload", f"TCP put {label}, MD5 verified by the server, into memory", "MB/s",
                median(f["mem tcp"]), {"md5sum": median(f["md5sum"])}, [Goal("md5sum", 0.9)],
                note=mem_note),
            Row("Upload", f"HTTP PUT {label}, Content-MD5 verified, into memory", "MB/s",
                median(f["mem http"]), {"md5sum": median(f["md5sum"])}, [Goal("md5sum", 0.9)],
                note=mem_note),
        ]
    return rows
