"""A small client of ferry's framed TCP protocol (docs/protocol.md), written from the spec."""

from __future__ import annotations

import json
import socket
import struct

HELLO, WELCOME, REQUEST, HEADER, END, ERROR = 0x01, 0x02, 0x10, 0x11, 0x12, 0x13
DATA, STDOUT, STDERR, EOF, WINDOW, CANCEL = 0x20, 0x21, 0x22, 0x23, 0x30, 0x31
HEAD = struct.Struct(">IBI")


class ProtocolError(Exception):
    """The server answered with an Error frame, or broke the protocol."""


def frame(kind: int, stream: int, payload: bytes = b"") -> bytes:
    """One frame's bytes."""
    return HEAD.pack(5 + len(payload), kind, stream) + payload


def put_answer(kind: int, payload: bytes) -> tuple[int, dict | None]:
    """What a frame on a put's stream means to the sender: window granted, or the End."""
    if kind == WINDOW:
        return struct.unpack(">I", payload)[0], None
    if kind == END:
        return 0, json.loads(payload)
    if kind == ERROR:
        raise ProtocolError(payload.decode())
    return 0, None


class Conn:
    """One authenticated connection; operations run one at a time on fresh stream ids."""

    def __init__(self, port: int, token: str, host: str = "127.0.0.1", window: int = 4 << 20):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.next_id = 1
        hello = {"version": 1, "token": token, "client": "ferry-bench", "window": window}
        self.sock.sendall(frame(HELLO, 0, json.dumps(hello).encode()))
        kind, _, payload = self.read_frame()
        if kind != WELCOME:
            raise ProtocolError(payload.decode(errors="replace"))
        self.welcome = json.loads(payload)

    def close(self) -> None:
        """Closes the connection."""
        self.sock.close()

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(1 << 20, n - len(self.buf)))
            if not chunk:
                raise ProtocolError("connection closed")
            self.buf += chunk

    def read_frame(self) -> tuple[int, int, bytes]:
        """The next frame: (kind, stream, payload)."""
        self._fill(9)
        length, kind, stream = HEAD.unpack_from(self.buf)
        self._fill(4 + length)
        payload = bytes(self.buf[9 : 4 + length])
        del self.buf[: 4 + length]
        return kind, stream, payload

    def _open(self, req: dict) -> int:
        sid = self.next_id
        self.next_id += 1
        self.sock.sendall(frame(REQUEST, sid, json.dumps(req).encode()))
        return sid

    def exec(self, req: dict) -> tuple[dict, int]:
        """Runs a command; returns its End and the number of output bytes."""
        sid = self._open(dict(req, op="exec"))
        out = 0
        while True:
            kind, stream, payload = self.read_frame()
            if stream != sid:
                continue
            if kind in (STDOUT, STDERR):
                out += len(payload)
                self.sock.sendall(frame(WINDOW, sid, struct.pack(">I", len(payload))))
            elif kind == END:
                return json.loads(payload), out
            elif kind == ERROR:
                raise ProtocolError(payload.decode())

    def get(self, path: str) -> tuple[dict, dict]:
        """Downloads a file, discarding its bytes; returns the Header and the End."""
        sid = self._open({"op": "get", "path": path, "offset": 0})
        header = None
        got = 0
        while True:
            kind, stream, payload = self.read_frame()
            if stream != sid:
                continue
            if kind == HEADER:
                header = json.loads(payload)
            elif kind == DATA:
                got += len(payload)
                self.sock.sendall(frame(WINDOW, sid, struct.pack(">I", len(payload))))
            elif kind == END:
                end = json.loads(payload)
                if header is None or got != header["size"]:
                    raise ProtocolError(f"got {got} bytes of {header}")
                return header, end
            elif kind == ERROR:
                raise ProtocolError(payload.decode())

    def put(self, path: str, data: bytes, md5: str) -> dict:
        """Uploads `data` (small enough to hold in memory) with its MD5; returns the End."""
        sid = self._open({"op": "put", "path": path, "size": len(data), "md5": md5})
        window = self.welcome["limits"]["window"]
        chunk = min(256 * 1024, self.welcome["limits"]["max_frame"] - 5, window)
        sent = 0
        while True:
            while sent < len(data) and window > 0:
                n = min(chunk, window, len(data) - sent)
                self.sock.sendall(frame(DATA, sid, data[sent : sent + n]))
                sent += n
                window -= n
            kind, stream, payload = self.read_frame()
            if stream == sid:
                grant, end = put_answer(kind, payload)
                window += grant
                if end is not None:
                    return end
