"""SSH failures are one line naming the host and what to do: here, a key that needs a
passphrase (paramiko raised a bare TypeError for OpenSSH-format ed25519 keys)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from common.errors import AuthError
from registry.transports.ssh import connect as ssh
from tests.support.sshd import sshd


@pytest.fixture
def encrypted_key(sshd, tmp_path):
    key = str(tmp_path / "id_locked")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", key],
                   check=True, stdin=subprocess.DEVNULL)
    with open(os.path.join(sshd.dir, "authorized_keys"), "a") as out, open(key + ".pub") as f:
        out.write(f.read())
    return key


@pytest.fixture
def agent(tmp_path, monkeypatch):
    sock = str(tmp_path / "agent.sock")
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        yield sock
    finally:
        proc.terminate()
        proc.wait(5)


def _connect(sshd, key):
    return ssh.connect(sshd.host, sshd.port, "root", identity=key,
                       known_hosts=sshd.known_hosts, config_path=None)


def test_passphrase_key_without_agent_or_terminal(sshd, encrypted_key, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(AuthError, match=r"127\.0\.0\.1.*needs its passphrase.*ssh-add"):
        _connect(sshd, encrypted_key)


def test_passphrase_key_held_by_the_agent(sshd, encrypted_key, agent, tmp_path):
    askpass = tmp_path / "askpass"
    askpass.write_text("#!/bin/sh\necho secret\n")
    askpass.chmod(0o700)
    env = dict(os.environ, SSH_AUTH_SOCK=agent, SSH_ASKPASS=str(askpass),
               SSH_ASKPASS_REQUIRE="force", DISPLAY="none")
    subprocess.run(["ssh-add", encrypted_key], env=env, check=True, stdin=subprocess.DEVNULL,
                   capture_output=True)
    conn = _connect(sshd, encrypted_key)
    try:
        assert conn.get_transport().is_authenticated()
    finally:
        conn.close()


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (sshd's per-connection children), deepest last."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


@pytest.mark.parametrize("mode", ["sftp", "smart"])
def test_sshd_killed_mid_push(sshd, tmp_path, mode):
    from registry.repo.store import Store
    from tests.support.sshd import make_test_image, tar_layer
    from tests.test_ssh_repo import mode_url
    home = str(tmp_path / "home")
    make_test_image(Store(home), "big", "1", [tar_layer({"blob": os.urandom(160 << 20)})])
    url = mode_url(sshd, str(tmp_path / "remote"), mode)
    env = dict(sshd.client_env(), COCKER_QUIET="1")
    p = subprocess.Popen([sys.executable, "-m", "cocker.main", "--home", home, "image", "push",
                          "big:1", "--repo", url, "--init"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        uploads = tmp_path / "remote" / "tmp" / "uploads"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            if uploads.is_dir() and any(f.stat().st_size > (1 << 20) for f in uploads.iterdir()):
                break
            time.sleep(0.01)
        assert p.poll() is None, "the push ended before it could be interrupted"
        for pid in _descendants(sshd.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 3, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "127.0.0.1" in err
    assert not (tmp_path / "remote" / "refs" / "big").exists()


@pytest.fixture
def resetting_server():
    """A TCP server that sends an SSH banner, then resets the connection."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            with c:
                c.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
                time.sleep(0.1)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        srv.close()


def test_each_ssh_failure_is_one_line_with_exit_code_3(sshd, tmp_path, resetting_server):
    home = str(tmp_path / "home")
    env = dict(sshd.client_env(), COCKER_QUIET="1")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused_port = closed.getsockname()[1]
        other_key = tmp_path / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)],
                       check=True)
        sshd.write_ssh_config("Host *\n    IdentitiesOnly yes\n")  # only -i: no fallback
        wrong_known = tmp_path / "known_hosts_wrong"
        with open(str(other_key) + ".pub") as f:
            kind, b64 = f.read().split()[:2]
        wrong_known.write_text(f"{sshd.hostport} {kind} {b64}\n")
        cases = [
            ([f"ssh://root@127.0.0.1:{refused_port}/r"], "connection refused"),
            ([f"ssh://root@127.0.0.1:{resetting_server}/r"], "reset"),
            ([sshd.url("/r"), "-i", str(other_key)], "authentication refused"),
        ]
        for extra, expect in cases:
            p = subprocess.run([sys.executable, "-m", "cocker.main", "--home", home, "image",
                                "pull", "x:1", "--repo", *extra], env=env, capture_output=True,
                               text=True, timeout=120)
            assert p.returncode == 3, (extra, p.stderr)
            lines = p.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
            assert "127.0.0.1" in lines[0] and expect in lines[0].lower(), lines[0]
    with open(sshd.known_hosts, "w") as f:
        f.write(wrong_known.read_text())
    p = subprocess.run([sys.executable, "-m", "cocker.main", "--home", home, "image", "pull",
                        "x:1", "--repo", sshd.url("/r")], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 3 and "HOST KEY MISMATCH" in p.stderr and "ssh-keygen -R" in p.stderr
