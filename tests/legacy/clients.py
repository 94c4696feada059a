#!/usr/bin/env python3
"""Classic socket clients of the kind written before framing, as their users wrote them: a
command client and a file client. tests/legacy.rs runs them against `ferry serve --legacy`.

Usage:
  clients.py commands PORT ACK CMD...   one connection; ACK is the acknowledgement to send, or
                                        "-" for an old client that sends none
  clients.py joined PORT CMD1 CMD2 CMD3 one connection; from the second command on, the
                                        acknowledgement and the next command go in one send
  clients.py get PORT DEST NAME...      one connection; each file is saved to DEST/NAME
  clients.py hangup PORT CMD            sends a command, then closes without reading

Prints one JSON object per answer on stdout: {"len": n, "md5": hex, "text": first 200 chars}
for commands, {"size": n, "md5": hex, "sent_md5": hex, "ok": bool} for files.
"""

import hashlib
import json
import os
import socket
import sys

# A protocol bug must fail the test, not hang it.
TIMEOUT = 60


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return s


def read_length(s):
    """The length arrives alone: digits only, and nothing more waiting behind them (data stuck
    to the length is the sticky-packet bug)."""
    head = s.recv(1024)
    if not head:
        raise SystemExit("server closed the connection")
    if not head.isdigit():
        raise SystemExit(f"the length is not digits alone: {head[:40]!r}")
    s.setblocking(False)
    try:
        extra = s.recv(1)
    except BlockingIOError:
        extra = b""
    s.settimeout(TIMEOUT)
    if extra:
        raise SystemExit(f"data arrived with the length {head!r}")
    return int(head.decode())


def read_exactly(s, n):
    data = bytearray()
    while len(data) < n:
        chunk = s.recv(min(65536, n - len(data)))
        if not chunk:
            raise SystemExit("server closed the connection")
        data += chunk
    return bytes(data)


def report_output(out):
    print(json.dumps({"len": len(out), "md5": hashlib.md5(out).hexdigest(),
                      "text": out[:200].decode("utf-8", "replace")}), flush=True)


def commands(port, ack, cmds):
    s = connect(port)
    for cmd in cmds:
        s.send(cmd.encode("utf-8"))
        length = read_length(s)
        if ack != "-":
            s.send(ack.encode())
        report_output(read_exactly(s, length))
    s.close()


def joined(port, cmds):
    s = connect(port)
    s.send(cmds[0].encode())
    length = read_length(s)
    s.send(b"ack")
    report_output(read_exactly(s, length))
    s.send(cmds[1].encode())
    for i in range(1, len(cmds)):
        length = read_length(s)
        following = cmds[i + 1] if i + 1 < len(cmds) else None
        # The acknowledgement and the next command leave together.
        s.send(b"ack" + (following.encode() if following else b""))
        report_output(read_exactly(s, length))
    s.close()


def get(port, dest, names):
    s = connect(port)
    for name in names:
        s.send(f"get {name}".encode())
        size = read_length(s)
        s.send(b"ok")
        data = read_exactly(s, size)
        with open(os.path.join(dest, os.path.basename(name)), "wb") as f:
            f.write(data)
        sent = read_exactly(s, 32).decode()
        mine = hashlib.md5(data).hexdigest()
        print(json.dumps({"size": size, "md5": mine, "sent_md5": sent, "ok": sent == mine,
                          "text": data[:200].decode("utf-8", "replace")}), flush=True)
    s.close()


def hangup(port, cmd):
    s = connect(port)
    s.send(cmd.encode())
    # Wait for the server's sign that the command started, then leave without answering.
    sys.stdin.readline()
    s.close()


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "commands":
        commands(port, sys.argv[3], sys.argv[4:])
    elif mode == "joined":
        joined(port, sys.argv[3:])
    elif mode == "get":
        get(port, sys.argv[3], sys.argv[4:])
    elif mode == "hangup":
        hangup(port, sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
