"""A throwaway OpenSSH sshd on 127.0.0.1 for the demo: its own host key, client key and
known_hosts in one temporary directory, so the demo trusts nothing of the machine's ~/.ssh.

The client side is a private HOME whose ~/.ssh holds the key and known_hosts: every cocker
command of the demo that reaches the server runs with that HOME.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from common.errors import CockerError

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def keygen(path: str, comment: str) -> str:
    """An ed25519 key pair at path and path.pub (no passphrase)."""
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
                       check=True, stdin=subprocess.DEVNULL, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise CockerError(f"ssh-keygen failed (is openssh-client installed?): {e}") from None
    return path


def known_hosts_line(port: int, host_key: str) -> str:
    with open(host_key + ".pub") as f:
        kind, b64 = f.read().split()[:2]
    return f"[127.0.0.1]:{port} {kind} {b64}\n"


@dataclass(frozen=True)
class SshClient:
    """The demo's SSH identity: HOME/.ssh/{id_ed25519, known_hosts}."""

    home: str

    @property
    def key(self) -> str:
        return os.path.join(self.home, ".ssh", "id_ed25519")

    @property
    def known_hosts(self) -> str:
        return os.path.join(self.home, ".ssh", "known_hosts")

    def trust(self, port: int, host_key: str) -> None:
        with open(self.known_hosts, "a") as f:
            f.write(known_hosts_line(port, host_key))

    def env(self) -> dict[str, str]:
        # No agent: the demo's key is the only identity offered.
        env = dict(os.environ, HOME=self.home)
        env.pop("SSH_AUTH_SOCK", None)
        return env


def new_client(base: str) -> SshClient:
    client = SshClient(os.path.join(base, "client"))
    os.makedirs(os.path.join(client.home, ".ssh"), mode=0o700)
    keygen(client.key, "cocker-demo")
    return client


def wait_for_banner(port: int, proc: subprocess.Popen, log: str, what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log, errors="replace") as f:
                tail = f.read().strip().splitlines()[-1:]
            raise CockerError(f"{what} exited at start: {' '.join(tail) or 'no message'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.3) as c:
                if c.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise CockerError(f"{what} did not start listening on 127.0.0.1:{port}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def openssh_server(base: str, client: SshClient, path_env: str) -> Iterator[int]:
    """Run sshd on a free loopback port while the block runs; yields the port. Root logs in
    with the client's key only; sessions get path_env as PATH so `srepo-server --stdio` is
    found (the smart protocol) when it is installed next to this cocker."""
    if not os.path.exists(SSHD):
        raise CockerError("the demo needs OpenSSH's sshd (Debian: openssh-server)")
    os.makedirs(base, exist_ok=True)
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    host_key = keygen(os.path.join(base, "host_ed25519"), "cocker-demo-host")
    auth_keys = os.path.join(base, "authorized_keys")
    shutil.copy(client.key + ".pub", auth_keys)
    port = free_port()
    config = os.path.join(base, "sshd_config")
    with open(config, "w") as f:
        f.write(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {base}/sshd.pid
AuthorizedKeysFile {auth_keys}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
SetEnv PATH={path_env}
LogLevel ERROR
""")
    log = os.path.join(base, "sshd.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL)
    try:
        wait_for_banner(port, proc, log, "sshd")
        client.trust(port, host_key)
        yield port
    finally:
        stop(proc)
