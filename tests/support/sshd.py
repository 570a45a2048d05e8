"""A real OpenSSH sshd for tests: 127.0.0.1, a free port, its own host key and client key.

Usage (any test module):

    from tests.support.sshd import sshd, sshd_factory   # noqa: F401  (fixtures)

    def test_x(sshd):
        url = sshd.url("/some/dir")          # ssh://root@127.0.0.1:PORT/some/dir
        env = sshd.client_env()              # HOME with .ssh/{config,known_hosts,id_ed25519}
        cocker("image", "push", "a:1", "--repo", url, env=env)

The daemon runs as root (tests run as root) with `StrictModes no`, `UsePAM no` and a PATH
in client sessions that finds this Python's console scripts (`srepo-server`), so the smart
protocol is reachable over `ssh host srepo-server --stdio`. It is stopped by pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

from tests.support.tools import tool

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
# internal-sftp: no login shell per session (root's ~/.bashrc may be slow to source).
SFTP_SERVER = "internal-sftp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scripts_dir() -> str:
    """Where this interpreter's console scripts live (real path, not a pyenv shim)."""
    return os.path.dirname(os.path.realpath(sys.executable)) if os.path.exists(
        os.path.join(os.path.dirname(os.path.realpath(sys.executable)), "srepo-server")) \
        else os.path.dirname(sys.executable)


def keygen(path: str, comment: str = "cocker-test") -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
                   check=True, stdin=subprocess.DEVNULL)
    return path


@dataclass
class Sshd:
    dir: str
    port: int
    host: str = "127.0.0.1"
    user: str = "root"
    proc: subprocess.Popen | None = None
    host_key: str = ""
    client_key: str = ""
    known_hosts: str = ""
    client_home: str = ""
    log: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}"

    def url(self, path: str, scheme: str = "ssh") -> str:
        return f"{scheme}://{self.user}@{self.host}:{self.port}{path}"

    def client_env(self) -> dict:
        """Environment for a client process: a private HOME (its ~/.ssh holds the key,
        known_hosts and config), no agent."""
        env = dict(os.environ)
        env["HOME"] = self.client_home
        env.pop("SSH_AUTH_SOCK", None)
        return env

    def connect_kwargs(self) -> dict:
        return {"identity": self.client_key, "known_hosts": self.known_hosts,
                "config_path": None}

    def host_key_line(self) -> str:
        with open(self.host_key + ".pub") as f:
            kind, b64 = f.read().split()[:2]
        return f"{self.hostport} {kind} {b64}\n"

    def write_ssh_config(self, text: str) -> str:
        path = os.path.join(self.client_home, ".ssh", "config")
        with open(path, "w") as f:
            f.write(text)
        return path

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def start_sshd(base: str, *, path_env: str | None = None, extra_config: str = "") -> Sshd:
    """Start sshd in `base` (created); the caller must call .stop()."""
    if os.geteuid() != 0:
        pytest.fail("the test sshd needs root: the suite runs as root (README), as CI does")
    tool("sshd", SSHD)
    os.makedirs(base, exist_ok=True)
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    s = Sshd(dir=base, port=free_port())
    s.host_key = keygen(os.path.join(base, "host_ed25519"), "cocker-test-host")
    s.client_home = os.path.join(base, "client")
    ssh_dir = os.path.join(s.client_home, ".ssh")
    os.makedirs(ssh_dir, mode=0o700)
    s.client_key = keygen(os.path.join(ssh_dir, "id_ed25519"))
    auth_keys = os.path.join(base, "authorized_keys")
    shutil.copy(s.client_key + ".pub", auth_keys)
    s.known_hosts = os.path.join(ssh_dir, "known_hosts")
    with open(s.known_hosts, "w") as f:
        f.write(s.host_key_line())
    path_env = path_env or f"{scripts_dir()}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    config = os.path.join(base, "sshd_config")
    s.log = os.path.join(base, "sshd.log")
    with open(config, "w") as f:
        f.write(f"""Port {s.port}
ListenAddress 127.0.0.1
HostKey {s.host_key}
PidFile {base}/sshd.pid
AuthorizedKeysFile {auth_keys}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
StrictModes no
UsePAM no
MaxStartups 64:30:128
Subsystem sftp {SFTP_SERVER}
SetEnv PATH={path_env}
LogLevel ERROR
{extra_config}
""")
    with open(s.log, "wb") as log:
        s.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdout=log, stderr=log,
                                  stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if s.proc.poll() is not None:
            with open(s.log) as f:
                raise RuntimeError(f"sshd exited: {f.read()}")
        try:
            with socket.create_connection((s.host, s.port), timeout=0.2) as c:
                if c.recv(4).startswith(b"SSH-"):
                    return s
        except OSError:
            time.sleep(0.02)
    s.stop()
    raise RuntimeError("sshd did not start listening")


@pytest.fixture
def sshd(tmp_path):
    s = start_sshd(str(tmp_path / "sshd"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def sshd_module(tmp_path_factory):
    s = start_sshd(str(tmp_path_factory.mktemp("sshd")))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def sshd_factory(tmp_path):
    """Start extra daemons (e.g. a jump host, one with another PATH); all stopped at teardown."""
    started: list[Sshd] = []

    def make(**kw) -> Sshd:
        s = start_sshd(str(tmp_path / f"sshd{len(started)}"), **kw)
        started.append(s)
        return s

    try:
        yield make
    finally:
        for s in started:
            s.stop()


# small images for transfer tests -------------------------------------------------------
def tar_layer(files: dict[str, bytes], *, gzip_it: bool = False) -> bytes:
    """A layer tar (optionally gzip) holding `files` (path -> content), reproducible."""
    import gzip
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in sorted(files.items()):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
            tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gzip_it else raw


def make_test_image(repo, name: str, version: str, layers: list[bytes], *,
                    force: bool = True):
    """Publish name:version in `repo` from layer blobs (plain tar or gzip tar bytes)."""
    import gzip

    from registry.oci import digest as dm
    from registry.oci import manifest as oci
    from registry.repo import image as imagemod
    descs, diffs = [], []
    for data in layers:
        d = dm.of_bytes(data)
        repo.put_blob_bytes(d, data)
        gz = data[:2] == b"\x1f\x8b"
        descs.append(oci.descriptor(oci.LAYER_GZIP if gz else oci.LAYER_TAR, d, len(data)))
        diffs.append(dm.of_bytes(gzip.decompress(data)) if gz else d)
    return imagemod.publish(repo, name, version,
                            oci.new_config(diffs, created="2026-01-01T00:00:00Z"), descs,
                            force=force)
