"""srepo-server's doors for the demo, each a child process on a free loopback port that is
stopped when its block ends."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from builder.demo.sshd import SshClient, free_port, keygen, stop, wait_for_banner
from common.errors import CockerError


def _start(argv: list[str], log: str) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "srepo_server.main", *argv],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)


@contextlib.contextmanager
def ssh_door(base: str, client: SshClient) -> Iterator[tuple[int, list[str]]]:
    """srepo-server's own SSH door (srepo://); yields its port and the argv it runs."""
    os.makedirs(base, exist_ok=True)
    host_key = keygen(os.path.join(base, "host_ed25519"), "srepo-demo-host")
    auth_keys = os.path.join(base, "authorized_keys")
    with open(client.key + ".pub") as f, open(auth_keys, "w") as out:
        out.write(f'srepo-perms="all" {f.read()}')
    port = free_port()
    argv = ["--root", os.path.join(base, "repo"), "--ssh", f"127.0.0.1:{port}",
            "--host-key", host_key, "--authorized-keys", auth_keys]
    log = os.path.join(base, "srepo-server.log")
    proc = _start(argv, log)
    try:
        wait_for_banner(port, proc, log, "srepo-server --ssh")
        client.trust(port, host_key)
        yield port, argv
    finally:
        stop(proc)


@contextlib.contextmanager
def http_door(base: str) -> Iterator[tuple[str, str, list[str]]]:
    """srepo-server's HTTP door (OCI Distribution and the web page); yields its URL, a token
    with every permission, and the argv it runs."""
    os.makedirs(base, exist_ok=True)
    token = secrets.token_hex(16)
    tokens = os.path.join(base, "tokens")
    with open(tokens, "w") as f:
        f.write(f"{token} all\n")
    port = free_port()
    argv = ["--root", os.path.join(base, "repo"), "--http", f"127.0.0.1:{port}",
            "--token-file", tokens]
    log = os.path.join(base, "srepo-server.log")
    proc = _start(argv, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise CockerError(f"srepo-server --http did not start (log: {log})") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", token, argv
    finally:
        stop(proc)
