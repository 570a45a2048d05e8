"""srepo-server's SSH door for tests: a real server process on 127.0.0.1 with its own keys.

    from tests.support.srepo import SrepoDoor, start_door

    door = start_door(str(tmp_path / "door"), keys={"rw": 'srepo-perms="read,write"'})
    try:
        repo = door.open("rw")                    # a SmartRepo through the door, as key "rw"
        env = door.client_env("rw")              # HOME whose ~/.ssh/id_ed25519 is key "rw"
    finally:
        door.stop()

Each key gets its own client HOME (~/.ssh/id_ed25519 and a known_hosts that trusts the door),
so the CLI in a subprocess picks it up without flags. The process is stopped by pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tests.support.sshd import free_port, keygen


@dataclass
class SrepoDoor:
    dir: str
    root: str
    port: int
    host_key: str
    authorized_keys: str
    keys: dict[str, str] = field(default_factory=dict)      # key name -> private key path
    homes: dict[str, str] = field(default_factory=dict)     # key name -> client HOME
    proc: subprocess.Popen | None = None
    log: str = ""
    host: str = "127.0.0.1"

    def url(self, prefix: str = "", user: str = "cocker") -> str:
        return f"srepo://{user}@{self.host}:{self.port}" + (f"/{prefix}" if prefix else "")

    @property
    def known_hosts(self) -> str:
        return os.path.join(self.dir, "known_hosts")

    def client_env(self, key: str) -> dict:
        env = dict(os.environ)
        env["HOME"] = self.homes[key]
        env.pop("SSH_AUTH_SOCK", None)
        return env

    def open(self, key: str, prefix: str = "", **kw):
        from registry.transports.srepo.transport import open_srepo
        return open_srepo(self.url(prefix), identity=self.keys[key],
                          known_hosts=self.known_hosts, config_path=None, **kw)

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "srepo_server.main", "--root", self.root,
                 "--ssh", f"{self.host}:{self.port}", "--host-key", self.host_key,
                 "--authorized-keys", self.authorized_keys],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"srepo-server exited: {self.read_log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as c:
                    if c.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("srepo-server did not start listening")
        if not os.path.exists(self.known_hosts):
            with open(self.host_key + ".pub") as f:
                kind, b64 = f.read().split()[:2]
            with open(self.known_hosts, "w") as f:
                f.write(f"[{self.host}]:{self.port} {kind} {b64}\n")
            for home in self.homes.values():
                with open(os.path.join(home, ".ssh", "known_hosts"), "w") as f:
                    f.write(f"[{self.host}]:{self.port} {kind} {b64}\n")

    def read_log(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> int | None:
        rc = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        elif self.proc:
            rc = self.proc.returncode
        self.proc = None
        return rc


def start_door(base: str, keys: dict[str, str], *, root: str | None = None) -> SrepoDoor:
    """A door serving `root` (created) with one client key per entry of `keys`
    (name -> authorized_keys options, e.g. 'srepo-perms="all"'). The caller stops it."""
    from registry.repo.layout import LayoutRepo
    os.makedirs(base, exist_ok=True)
    root = root or os.path.join(base, "repo")
    LayoutRepo(root, create=True)
    door = SrepoDoor(dir=base, root=root, port=free_port(),
                     host_key=os.path.join(base, "host_key"),
                     authorized_keys=os.path.join(base, "authorized_keys"),
                     log=os.path.join(base, "server.log"))
    lines = []
    for name, opts in keys.items():
        home = os.path.join(base, "clients", name)
        os.makedirs(os.path.join(home, ".ssh"), mode=0o700)
        door.keys[name] = keygen(os.path.join(home, ".ssh", "id_ed25519"), f"{name}@test")
        door.homes[name] = home
        with open(door.keys[name] + ".pub") as f:
            lines.append(f"{opts} {f.read().strip()}\n" if opts else f.read())
    with open(door.authorized_keys, "w") as f:
        f.writelines(lines)
    door.start()
    return door
