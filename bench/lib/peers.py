"""Peer servers started for the file workloads: nginx, dufs, miniserve (each skipped if missing)."""

from __future__ import annotations

import os
from pathlib import Path

from common import Ctx, Server, free_port, log


def nginx(ctx: Ctx, root: Path) -> Server | None:
    """nginx serving `root` the way PEERS.md measured it: sendfile on, tcp_nopush, no access log."""
    binary = ctx.peer_bin("nginx")
    if binary is None:
        return None
    port = free_port()
    d = ctx.work / "nginx"
    d.mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""
    temps = " ".join(f"{k}_temp_path {d / k};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (d / "nginx.conf").write_text(f"""
{user}
worker_processes 1;
daemon off;
pid {d / 'nginx.pid'};
error_log {d / 'error.log'};
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  {temps}
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
    return Server("nginx", [binary, "-c", str(d / "nginx.conf"), "-p", str(d)], port,
                  log_dir=ctx.work)


def dufs(ctx: Ctx, root: Path, upload: bool = False) -> Server | None:
    """dufs serving `root` (with uploads allowed when asked)."""
    binary = ctx.peer_bin("dufs")
    if binary is None:
        return None
    port = free_port()
    argv = [binary, str(root), "-b", "127.0.0.1", "-p", str(port)]
    if upload:
        argv.append("-A")
    return Server("dufs", argv, port, log_dir=ctx.work)


def miniserve(ctx: Ctx, root: Path) -> Server | None:
    """miniserve serving `root`."""
    binary = ctx.peer_bin("miniserve")
    if binary is None:
        return None
    port = free_port()
    return Server("miniserve", [binary, "-i", "127.0.0.1", "-p", str(port), str(root)], port,
                  log_dir=ctx.work)


def start_all(ctx: Ctx, starters) -> dict[str, Server]:
    """Starts the peers that are installed; logs the ones that are not."""
    out = {}
    for name, start in starters:
        try:
            srv = start()
        except RuntimeError as e:  # a peer that will not start leaves a gap, not a failed run
            log(f"{name} did not start ({e}): its figures are left out")
            continue
        if srv is None:
            log(f"{name} is not installed: its figures are left out")
        else:
            out[name] = srv
    return out
