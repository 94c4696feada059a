"""Clients of web terminals (ferry, terminado, wetty) and of a raw PTY, with one interface.

Each client has `send(text)` (keystrokes), `recv() -> bytes` (the next piece of terminal
output, waiting for it) and `close()`. The web clients run on asyncio with `websockets`; the raw
PTY client reads its PTY directly (blocking reads inside the coroutines: nothing else runs).
"""

from __future__ import annotations

import json
import os
import pty
import signal

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

# No compression anywhere: ferry does not offer it and the others then compress nothing.
WS_OPTS = dict(compression=None, max_size=None, open_timeout=20, ping_interval=None)


class FerryTerm:
    """ferry's `/term/ws`: binary frames both ways, JSON text frames for control."""

    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def open(cls, http_port: int, token: str) -> "FerryTerm":
        """Opens a new shell session with the bearer token (no Origin: not a browser)."""
        url = f"ws://127.0.0.1:{http_port}/term/ws?cols=80&rows=24"
        ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"}, **WS_OPTS)
        hello = json.loads(await ws.recv())
        if hello.get("type") != "session":
            raise RuntimeError(f"ferry /term/ws: unexpected first message {hello}")
        return cls(ws)

    async def send(self, text: str) -> None:
        """Types `text`."""
        await self.ws.send(text.encode())

    async def recv(self) -> bytes:
        """The next output (control messages other than output are skipped)."""
        while True:
            m = await self.ws.recv()
            if isinstance(m, bytes):
                return m
            ctl = json.loads(m)
            if ctl.get("type") in ("exit", "taken", "error"):
                raise RuntimeError(f"ferry /term/ws: {ctl}")

    async def close(self) -> None:
        """Closes the socket (the session then lives on for its grace period)."""
        await self.ws.close()


class TerminadoTerm:
    """terminado's TermSocket: JSON text frames, `["stdin", s]` in, `["stdout", s]` out."""

    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def open(cls, port: int) -> "TerminadoTerm":
        """Opens a new terminal (UniqueTermManager: one shell per socket)."""
        ws = await connect(f"ws://127.0.0.1:{port}/websocket", **WS_OPTS)
        return cls(ws)

    async def send(self, text: str) -> None:
        """Types `text`."""
        await self.ws.send(json.dumps(["stdin", text]))

    async def recv(self) -> bytes:
        """The next output."""
        while True:
            kind, *rest = json.loads(await self.ws.recv())
            if kind == "stdout":
                return rest[0].encode()
            if kind == "disconnect":
                raise RuntimeError("terminado: the terminal ended")

    async def close(self) -> None:
        """Closes the socket (UniqueTermManager then ends the shell)."""
        await self.ws.close()


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
            url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
            ws = await connect(url, **WS_OPTS)
            try:
                first = await ws.recv()
                if not first.startswith("0"):
                    raise RuntimeError(f"wetty: unexpected Engine.IO open {first!r}")
                await ws.send("40")
                while (m := await ws.recv()) != '42["login"]':
                    if m == "2":
                        await ws.send("3")
                return cls(ws)
            except ConnectionClosed:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    async def send(self, text: str) -> None:
        """Types `text` (an `input` event)."""
        await self.ws.send("42" + json.dumps(["input", text]))

    async def recv(self) -> bytes:
        """The next output (a `data` event); answers pings and commits what it got."""
        while True:
            m = await self.ws.recv()
            if m == "2":
                await self.ws.send("3")
            elif m.startswith("42"):
                ev = json.loads(m[2:])
                if ev[0] == "data":
                    # wetty's flow control pauses the PTY past 2 MB not committed.
                    await self.ws.send("42" + json.dumps(["commit", len(ev[1])]))
                    return ev[1].encode()
                if ev[0] == "logout":
                    raise RuntimeError("wetty: the shell ended")

    async def close(self) -> None:
        """Closes the socket (wetty then kills the shell)."""
        await self.ws.close()


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
            b = os.read(self.fd, 65536)
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
