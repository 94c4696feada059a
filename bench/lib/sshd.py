"""A local sshd for the scp and ssh baselines: own host key, own client key, own port."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from common import BENCH_HOME, Ctx, Server, free_port, log, run


class Sshd:
    """sshd on 127.0.0.1 with a key for the current user; `ssh_args` reach it."""

    def __init__(self, ctx: Ctx):
        d = BENCH_HOME / "ssh"
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        for name in ("host_key", "client_key"):
            if not (d / name).exists():
                run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)])
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        os.chmod(d / "authorized_keys", 0o600)
        Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None
        self.port = free_port()
        (d / "sshd_config").write_text(f"""
Port {self.port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
AuthorizedKeysFile {d / 'authorized_keys'}
PidFile {d / 'sshd.pid'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
""")
        sshd = ctx.peer_bin("sshd") or "/usr/sbin/sshd"
        self.server = Server("sshd", [sshd, "-D", "-e", "-f", str(d / "sshd_config")],
                             self.port, log_dir=ctx.work)
        self.user = getpass.getuser()
        opts = ["-i", str(d / "client_key"), "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR"]
        self.ssh_args = ["ssh", "-p", str(self.port), *opts, f"{self.user}@127.0.0.1"]
        self.scp_args = ["scp", "-q", "-P", str(self.port), *opts]

    def remote(self, path: Path) -> str:
        """An scp source or target on this sshd."""
        return f"{self.user}@127.0.0.1:{path}"

    def stop(self) -> None:
        """Stops sshd."""
        self.server.stop()


def start(ctx: Ctx) -> Sshd | None:
    """A local sshd, or None when openssh-server is not installed or will not start."""
    if ctx.peer_bin("sshd") is None:
        log("sshd is not installed: the ssh and scp figures are left out")
        return None
    try:
        return Sshd(ctx)
    except RuntimeError as e:
        log(f"sshd did not start ({e}): the ssh and scp figures are left out")
        return None
