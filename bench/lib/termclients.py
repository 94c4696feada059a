"""Clients of web terminals (ferry, terminado, wetty) and of a raw PTY, with one interface.

Each client has `send(text)` (keystrokes), `recv() -> bytes` (the next piece of terminal
output, waiting for it) and `close()`, as coroutines so that one driver serves them all. They
block inside: a minimal WebSocket client on a plain blocking socket (RFC 6455, no extensions),
as the raw PTY client reads its PTY. A full asyncio client (`websockets`) measured 0.2 ms more
per keystroke echo than this one, and most of the p99: the client, not the servers.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import signal
import socket
import struct

TIMEOUT = 60  # seconds any read may wait


class Ws:
    """A blocking WebSocket client: one connection, frames in and out, pings answered."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"{extra}\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"no WebSocket upgrade: {head[:200]!r}")

    def _fill(self) -> None:
        b = self.sock.recv(1 << 16)
        if not b:
            raise ConnectionError("the server closed the connection")
        self.buf += b

    def send(self, data: bytes | str) -> None:
        """Sends one message (text for str), masked with a zero key as RFC 6455 allows."""
        op = 0x81 if isinstance(data, str) else 0x82
        data = data.encode() if isinstance(data, str) else data
        n = len(data)
        if n < 126:
            hdr = struct.pack("!BB", op, 0x80 | n)
        elif n < 1 << 16:
            hdr = struct.pack("!BBH", op, 0xFE, n)
        else:
            hdr = struct.pack("!BBQ", op, 0xFF, n)
        self.sock.sendall(hdr + b"\0\0\0\0" + data)

    def _frame(self) -> tuple[bool, int, bytes]:
        """The next frame: (fin, opcode, payload)."""
        while True:
            if len(self.buf) >= 2:
                n, off = self.buf[1] & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, off = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127 and len(self.buf) >= 10:
                    n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
                if (n < 126 or off > 2) and len(self.buf) >= off + n:
                    b0, payload = self.buf[0], self.buf[off:off + n]
                    self.buf = self.buf[off + n:]
                    return bool(b0 & 0x80), b0 & 0x0F, payload
            self._fill()

    def recv(self) -> bytes | str:
        """The next message (str for text); answers pings, fails on a close."""
        parts, op = [], None
        while True:
            fin, code, payload = self._frame()
            if code == 0x9:
                self.sock.sendall(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + b"\0" * 4
                                  + payload)
                continue
            if code == 0x8:
                raise ConnectionError(f"closed by the server: {payload[2:]!r}")
            if code in (0x1, 0x2):
                op = code
            if code in (0x0, 0x1, 0x2):
                parts.append(payload)
                if fin:
                    msg = b"".join(parts)
                    return msg.decode() if op == 0x1 else msg

    def close(self) -> None:
        """Closes the connection."""
        self.sock.close()


class FerryTerm:
    """ferry's `/term/ws`: binary frames both ways, JSON text frames for control."""

    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def open(cls, http_port: int, token: str) -> "FerryTerm":
        """Opens a new shell session with the bearer token (no Origin: not a browser)."""
        ws = Ws(http_port, "/term/ws?cols=80&rows=24", {"Authorization": f"Bearer {token}"})
        hello = json.loads(ws.recv())
        if hello.get("type") != "session":
            raise RuntimeError(f"ferry /term/ws: unexpected first message {hello}")
        return cls(ws)

    async def send(self, text: str) -> None:
        """Types `text`."""
        self.ws.send(text.encode())

    async def recv(self) -> bytes:
        """The next output (control messages other than output are skipped)."""
        while True:
            m = self.ws.recv()
            if isinstance(m, bytes):
                return m
            ctl = json.loads(m)
            if ctl.get("type") in ("exit", "taken", "error"):
                raise RuntimeError(f"ferry /term/ws: {ctl}")

    async def close(self) -> None:
        """Closes the socket (the session then lives on for its grace period)."""
        self.ws.close()


class TerminadoTerm:
    """terminado's TermSocket: JSON text frames, `["stdin", s]` in, `["stdout", s]` out."""

    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def open(cls, port: int) -> "TerminadoTerm":
        """Opens a new terminal (UniqueTermManager: one shell per socket)."""
        return cls(Ws(port, "/websocket"))

    async def send(self, text: str) -> None:
        """Types `text`."""
        self.ws.send(json.dumps(["stdin", text]))

    async def recv(self) -> bytes:
        """The next output."""
        while True:
            kind, *rest = json.loads(self.ws.recv())
            if kind == "stdout":
                return rest[0].encode()
            if kind == "disconnect":
                raise RuntimeError("terminado: the terminal ended")

    async def close(self) -> None:
        """Closes the socket (UniqueTermManager then ends the shell)."""
        self.ws.close()


class WettyTerm:
    """wetty over Socket.IO 4 (Engine.IO 4 on a WebSocket, no polling), spoken by hand."""

    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def open(cls, port: int) -> "WettyTerm":
        """Connects to the default namespace and waits for wetty's `login` (its shell runs).

        A connection in the first moments after wetty listens is dropped (its connection
        handler is registered later): such a connection is retried, a few times.
        """
        for attempt in range(5):
            ws = Ws(port, "/socket.io/?EIO=4&transport=websocket")
            try:
                first = ws.recv()
                if not first.startswith("0"):
                    raise RuntimeError(f"wetty: unexpected Engine.IO open {first!r}")
                ws.send("40")
                while (m := ws.recv()) != '42["login"]':
                    if m == "2":
                        ws.send("3")
                return cls(ws)
            except ConnectionError:
                ws.close()
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    async def send(self, text: str) -> None:
        """Types `text` (an `input` event)."""
        self.ws.send("42" + json.dumps(["input", text]))

    async def recv(self) -> bytes:
        """The next output (a `data` event); answers pings and commits what it got."""
        while True:
            m = self.ws.recv()
            if m == "2":
                self.ws.send("3")
            elif m.startswith("42"):
                ev = json.loads(m[2:])
                if ev[0] == "data":
                    # wetty's flow control pauses the PTY past 2 MB not committed.
                    self.ws.send("42" + json.dumps(["commit", len(ev[1])]))
                    return ev[1].encode()
                if ev[0] == "logout":
                    raise RuntimeError("wetty: the shell ended")

    async def close(self) -> None:
        """Closes the socket (wetty then kills the shell)."""
        self.ws.close()


class RawPty:
    """bash on a PTY read and written directly: the bound of every web terminal."""

    def __init__(self, pid: int, fd: int):
        self.pid = pid
        self.fd = fd

    @classmethod
    async def open(cls, env: dict) -> "RawPty":
        """Starts an interactive bash on a new PTY."""
        pid, fd = pty.fork()
        if pid == 0:
            os.execvpe("bash", ["bash", "-i"], env)
        return cls(pid, fd)

    async def send(self, text: str) -> None:
        """Types `text`."""
        os.write(self.fd, text.encode())

    async def recv(self) -> bytes:
        """The next output (a blocking read)."""
        try:
            b = os.read(self.fd, 65536) if select.select([self.fd], [], [], TIMEOUT)[0] else b""
        except OSError:
            b = b""
        if not b:
            raise RuntimeError("raw PTY: the shell ended")
        return b

    async def close(self) -> None:
        """Ends the shell."""
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except OSError:
            pass
        os.close(self.fd)
