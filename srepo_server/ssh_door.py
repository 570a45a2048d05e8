"""The SSH door: srepo-server's own SSH server (paramiko server mode) speaking the smart protocol.

    srepo-server --root /srv/cocker --ssh 127.0.0.1:2222 \\
                 --host-key /srv/cocker-host-key --authorized-keys /srv/cocker-keys

* Public-key authentication only; a key must be in the authorized_keys file (re-read when it
  changes), whose `srepo-perms=` / `srepo-prefixes=` options set what it may do (see
  `srepo_server.access`). The user name is only logged.
* Exec channels run the protocol handler; the repository root is fixed by the server. The
  accepted commands are `srepo [PREFIX]` (what `srepo://host:port/PREFIX` clients send) and,
  for OpenSSH habits, `srepo-server --stdio [--prefix PREFIX]` (`--root` is ignored). PREFIX
  is a namespace: names are read and written below it. Shells, ptys, forwarding: refused.
* One thread per connection (paramiko adds its own transport thread); a connection may carry
  several channels at once, which the client uses to move several blobs in parallel.
* The host key file is generated (ed25519) when missing, and the fact is logged.
* SIGTERM/SIGINT: stop accepting, let running exchanges finish for a few seconds, close.
* Access log lines go to stderr.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import paramiko
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_FAILED_RESOURCE_SHORTAGE,
    OPEN_SUCCEEDED,
)

from common.errors import CockerError, UsageError
from registry.oci import reference as refmod
from registry.repo.layout import LayoutRepo
from srepo_server.access import AuthorizedKey, KeyFile
from srepo_server.handler import serve as serve_handler

WINDOW = 64 << 20          # bytes a peer may send before it waits for us: keeps the pipe full
MAX_PACKET = 1 << 17       # bigger SSH packets: less Python per byte (64-128 KiB measured best)
MAX_CHANNELS = 16          # concurrent exec channels per connection
AUTH_TIMEOUT = 30.0
SHUTDOWN_GRACE = 10.0
# GCM needs no separate MAC pass; clients choose, but ours prefer what is fastest here.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr",
           "aes192-ctr")


def log_line(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} srepo-server: {msg}\n")
    sys.stderr.flush()


def parse_addr(addr: str, default_port: int = 2222) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep:
        host, port = addr, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
        if not 0 <= p < 65536:
            raise ValueError
    except ValueError:
        raise UsageError(f"bad address {addr!r}: use HOST:PORT") from None
    return host, p


def load_host_key(path: str, log: Callable[[str], None] = log_line) -> paramiko.PKey:
    """The server's host key, generated (ed25519, mode 0600) when the file does not exist."""
    if not os.path.exists(path):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                            serialization.PublicFormat.OpenSSH)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        with open(path + ".pub", "wb") as f:
            f.write(pub + b" srepo-server host key\n")
        k = paramiko.PKey.from_path(path)
        log(f"generated a new host key {path} ({k.get_name()} {k.fingerprint}); "
            f"clients must trust it (its public half is in {path}.pub)")
        return k
    try:
        return paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException, ValueError) as e:
        raise UsageError(f"cannot load host key {path}: {e}") from None


def parse_exec(command: str) -> str | None:
    """The namespace an exec command asks for ('' for none); None for a refused command."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if not argv or os.path.basename(argv[0]) not in ("srepo", "srepo-server"):
        return None
    prefix = ""
    it = iter(argv[1:])
    for a in it:
        if a in ("--stdio",):
            continue
        if a in ("--root", "--prefix"):
            v = next(it, None)
            if v is None:
                return None
            if a == "--prefix":
                prefix = v
            continue
        if a.startswith("-") or prefix:
            return None
        prefix = a
    prefix = prefix.strip("/")
    if prefix:
        try:
            refmod.validate_name(prefix)
        except CockerError:
            return None
    return prefix


class _Server(paramiko.ServerInterface):
    """One connection's policy: who the peer is and which channel requests it gets."""

    def __init__(self, door: SshDoor, peer: str) -> None:
        self.door, self.peer = door, peer
        self.key: AuthorizedKey | None = None
        self.user = "?"
        self.channels = 0
        self._lock = threading.Lock()
        self._refused: set[str] = set()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_none(self, username: str) -> int:
        return AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        return AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ak = self.door.keys.lookup(key.asbytes())
        if ak is None:
            fp = key.fingerprint
            if fp not in self._refused:  # paramiko asks twice per key (probe, then signature)
                self._refused.add(fp)
                self.door.log(f"{self.peer} user={username} key {key.get_name()} {fp} refused: "
                              "not in authorized_keys")
            return AUTH_FAILED
        self.key, self.user = ak, username
        return AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session" or self.key is None:
            return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        with self._lock:
            if self.channels >= MAX_CHANNELS:
                return OPEN_FAILED_RESOURCE_SHORTAGE
            self.channels += 1
        return OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        text = command.decode("utf-8", "replace")
        ns = parse_exec(text)
        threading.Thread(target=self._run_channel, args=(channel, text, ns),
                         name=f"srepo-chan-{self.peer}", daemon=True).start()
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        return False

    def check_channel_pty_request(self, *a: Any) -> bool:
        return False

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        return False

    def check_port_forward_request(self, address: str, port: int) -> int | bool:
        return False

    def check_channel_env_request(self, channel: paramiko.Channel, name: bytes,
                                  value: bytes) -> bool:
        return False

    # one exec channel ----------------------------------------------------------------
    def _run_channel(self, chan: paramiko.Channel, command: str, ns: str | None) -> None:
        assert self.key is not None
        who_short = f"{self.peer}#{chan.get_id()}"
        who = f"{who_short} user={self.user} key={self.key.fingerprint}" + (
            f" ({self.key.comment})" if self.key.comment else "")
        status = 0
        try:
            if ns is None:
                self.door.log(f"{who} refused command {command[:200]!r}")
                # paramiko sends the exec request's success reply after this thread started;
                # let it go first so the client sees our message and status, not a closed
                # channel.
                time.sleep(0.2)
                chan.sendall_stderr(b"srepo-server: this server only speaks the smart protocol "
                                    b"(exec `srepo [PREFIX]`)\n")
                status = 127
                return
            self.door.log(f"{who} session{' /' + ns if ns else ''} access={self.key.access}")
            from registry.wire.channel import ChannelStream
            stream = ChannelStream(chan)
            t0 = time.monotonic()
            serve_handler(stream, stream, self.door.repo, self.key.access, namespace=ns or None,
                          log=lambda line: self.door.log(f"{who_short} {line}"),
                          busy=self.door.busy)
            self.door.log(f"{who} session closed after {time.monotonic() - t0:.1f}s")
        except Exception as e:  # noqa: BLE001 (one broken channel must not touch the others)
            status = 1
            self.door.log(f"{who} channel error: {type(e).__name__}: {e}")
        finally:
            with self._lock:
                self.channels -= 1
            try:
                chan.send_exit_status(status)
                chan.shutdown_write()
                chan.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the client is gone already


class SshDoor:
    """The listening SSH server; `run()` serves until `stop()` (or SIGTERM via `serve`)."""

    def __init__(self, root: str, addr: str, host_key: str, authorized_keys: str, *,
                 log: Callable[[str], None] = log_line) -> None:
        self.log = log
        self.repo = LayoutRepo(root, create=True, url="this repository")
        self.keys = KeyFile(authorized_keys, warn=lambda m: log("authorized_keys: " + m))
        host, port = parse_addr(addr)
        self.host_key = load_host_key(host_key, log)
        try:
            self.sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host
                                             else socket.AF_INET, backlog=128, reuse_port=False)
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.address = self.sock.getsockname()[:2]
        self._stop = threading.Event()
        self._transports: set[paramiko.Transport] = set()
        self._lock = threading.Lock()
        self._busy = 0

    def busy(self, on: bool) -> None:
        """Counts exchanges in progress, which a shutdown lets finish."""
        with self._lock:
            self._busy += 1 if on else -1

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self.log(f"serving {self.repo.root} over SSH on {self.address[0]}:{self.address[1]} "
                 f"(host key {self.host_key.get_name()} {self.host_key.fingerprint})")
        self.sock.settimeout(0.5)
        try:
            while not self._stop.is_set():
                try:
                    conn, peer = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError as e:
                    if self._stop.is_set():
                        break
                    self.log(f"accept failed: {e}")
                    time.sleep(0.1)
                    continue
                threading.Thread(target=self._connection, args=(conn, f"{peer[0]}:{peer[1]}"),
                                 name=f"srepo-conn-{peer[1]}", daemon=True).start()
        finally:
            self.sock.close()
            self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            busy = self._busy
        if busy:
            self.log(f"shutting down: waiting up to {SHUTDOWN_GRACE:.0f}s for "
                     f"{busy} exchange(s) in progress")
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while time.monotonic() < deadline:
            with self._lock:
                if not self._busy:
                    break
            time.sleep(0.05)
        with self._lock:
            live = list(self._transports)
        for t in live:
            t.close()
        self.log("stopped")

    def _connection(self, conn: socket.socket, peer: str) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = paramiko.Transport(conn, default_window_size=WINDOW,
                               default_max_packet_size=MAX_PACKET)
        t.add_server_key(self.host_key)
        opts = t.get_security_options()
        opts.ciphers = tuple(c for c in CIPHERS if c in opts.ciphers)
        t.auth_timeout = AUTH_TIMEOUT
        t.banner_timeout = AUTH_TIMEOUT
        t.set_keepalive(60)
        server = _Server(self, peer)
        with self._lock:
            self._transports.add(t)
        try:
            try:
                t.start_server(server=server)
            except (paramiko.SSHException, EOFError, OSError) as e:
                self.log(f"{peer} handshake failed: {e}")
                return
            # Take accepted channels off paramiko's queue until the client disconnects or we
            # stop; a reference is kept while they are open, because paramiko closes a
            # Channel that is garbage-collected.
            held: list[paramiko.Channel] = []
            while t.is_active() and not self._stop.is_set():
                ch = t.accept(timeout=1.0)
                held = [c for c in held if not c.closed]
                if ch is not None:
                    held.append(ch)
        finally:
            if not self._stop.is_set():  # when stopping, _shutdown closes it after the grace
                with self._lock:
                    self._transports.discard(t)
                t.close()


def serve(root: str, addr: str, host_key: str, authorized_keys: str, *,
          log: Callable[[str], None] = log_line, ready: Callable[[tuple], None] | None = None
          ) -> None:
    """Run the SSH door until SIGTERM/SIGINT."""
    # paramiko reports every dropped handshake with a traceback; our own log says it once.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    from registry.wire.channel import tune_allocator
    tune_allocator()
    door = SshDoor(root, addr, host_key, authorized_keys, log=log)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: door.stop())
    if ready:
        ready(door.address)
    door.run()
