"""An asyncio client of ferry's framed TCP protocol (docs/protocol.md), for many clients at once."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

from ferryproto import (put_answer, DATA, END, EOF, ERROR, HEAD, HEADER, HELLO, REQUEST, STDERR, STDOUT,
                        WELCOME, WINDOW, ProtocolError, frame)


class AConn:
    """One authenticated connection; operations run one at a time on fresh stream ids."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.r, self.w = reader, writer
        self.next_id = 1
        self.welcome: dict = {}

    @classmethod
    async def open(cls, port: int, token: str, host: str = "127.0.0.1",
                   window: int = 4 << 20) -> "AConn":
        """Connects and says hello."""
        r, w = await asyncio.open_connection(host, port, limit=1 << 20)
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = cls(r, w)
        hello = {"version": 1, "token": token, "client": "ferry-bench", "window": window}
        w.write(frame(HELLO, 0, json.dumps(hello).encode()))
        kind, _, payload = await c.read_frame()
        if kind != WELCOME:
            w.close()
            raise ProtocolError(payload.decode(errors="replace"))
        c.welcome = json.loads(payload)
        return c

    def close(self) -> None:
        """Closes the connection."""
        self.w.close()

    async def read_frame(self) -> tuple[int, int, bytes]:
        """The next frame: (kind, stream, payload)."""
        head = await self.r.readexactly(9)
        length, kind, stream = HEAD.unpack(head)
        payload = await self.r.readexactly(length - 5) if length > 5 else b""
        return kind, stream, payload

    def _open(self, req: dict) -> int:
        sid = self.next_id
        self.next_id += 1
        self.w.write(frame(REQUEST, sid, json.dumps(req).encode()))
        return sid

    def _grant(self, sid: int, n: int) -> None:
        self.w.write(frame(WINDOW, sid, struct.pack(">I", n)))

    async def exec(self, req: dict) -> tuple[dict, int]:
        """Runs a command; returns its End and the number of output bytes."""
        sid = self._open(dict(req, op="exec"))
        out = 0
        while True:
            kind, stream, payload = await self.read_frame()
            if stream != sid:
                continue
            if kind in (STDOUT, STDERR):
                out += len(payload)
                self._grant(sid, len(payload))
            elif kind == END:
                return json.loads(payload), out
            elif kind == ERROR:
                raise ProtocolError(payload.decode())

    async def get(self, path: str) -> int:
        """Downloads a file, discarding its bytes; returns its size."""
        sid = self._open({"op": "get", "path": path, "offset": 0})
        size, got = None, 0
        while True:
            kind, stream, payload = await self.read_frame()
            if stream != sid:
                continue
            if kind == HEADER:
                size = json.loads(payload)["size"]
            elif kind == DATA:
                got += len(payload)
                self._grant(sid, len(payload))
            elif kind == END:
                if got != size:
                    raise ProtocolError(f"got {got} bytes of {size}")
                return got
            elif kind == ERROR:
                raise ProtocolError(payload.decode())

    async def put(self, path: str, data: bytes, md5: str) -> dict:
        """Uploads `data` with its MD5; returns the End."""
        sid = self._open({"op": "put", "path": path, "size": len(data), "md5": md5})
        window = self.welcome["limits"]["window"]
        chunk = min(256 * 1024, self.welcome["limits"]["max_frame"] - 5)
        sent = 0
        while True:
            while sent < len(data) and window > 0:
                n = min(chunk, window, len(data) - sent)
                self.w.write(frame(DATA, sid, data[sent:sent + n]))
                sent += n
                window -= n
            await self.w.drain()
            kind, stream, payload = await self.read_frame()
            if stream == sid:
                grant, end = put_answer(kind, payload)
                window += grant
                if end is not None:
                    return end


__all__ = ["AConn", "ProtocolError", "EOF"]
