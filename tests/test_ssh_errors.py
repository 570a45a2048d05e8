"""SSH failures are one line naming the host and what to do: here, a key that needs a
passphrase (paramiko raised a bare TypeError for OpenSSH-format ed25519 keys)."""

from __future__ import annotations

import os
import subprocess
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
