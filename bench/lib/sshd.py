"""A private sshd for the ssh and scp baselines: own port, host key and client key."""

from __future__ import annotations

import getpass
import os
import shutil
from pathlib import Path

from common import BENCH_HOME, Ctx, Server, free_port, log
from common import run as sh


class Sshd:
    """A private sshd on a free port with its own host key, and a client key that may log in."""

    def __init__(self, ctx: Ctx):
        sshd = ctx.peer_bin("sshd")
        self.ok = sshd is not None and shutil.which("ssh") and shutil.which("ssh-keygen")
        self.server = None
        if not self.ok:
            return
        d = BENCH_HOME / "ssh"
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        for key in ("host_key", "client_key"):
            if not (d / key).exists():
                sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)])
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        # The login shell's rc files would run for every command: an empty HOME keeps a
        # developer's ~/.bashrc (pyenv, cargo...) out of ssh's figure.
        home = d / "home"
        home.mkdir(exist_ok=True)
        self.port = free_port()
        (d / "sshd_config").write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
PrintLastLog no
LogLevel ERROR
SetEnv HOME={home}
Subsystem sftp internal-sftp
""")
        if os.geteuid() == 0:
            # sshd's privilege separation directory (Debian's unit makes it at boot).
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.argv = ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
                     "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "LogLevel=ERROR",
                     "-o", "BatchMode=yes", "-i", str(d / "client_key"), "-p", str(self.port),
                     f"{getpass.getuser()}@127.0.0.1"]
        self.scp_args = ["scp", "-q", "-F", "/dev/null", *self.argv[3:-1]]
        self.scp_args[self.scp_args.index("-p")] = "-P"
        try:
            self.server = Server("sshd", [sshd, "-D", "-e", "-f", str(d / "sshd_config")],
                                 self.port, log_dir=ctx.work)
            sh(self.argv + ["true"])
        except Exception as e:  # noqa: BLE001 (a missing peer is a missing figure)
            log(f"exec: no ssh figures, the private sshd does not work: {e}")
            self.stop()
            self.ok = False

    def remote(self, path: Path) -> str:
        """An scp source or target on this sshd."""
        return f"{getpass.getuser()}@127.0.0.1:{path}"

    def stop(self) -> None:
        """Stops sshd."""
        if self.server:
            self.server.stop()
