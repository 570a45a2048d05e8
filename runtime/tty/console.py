"""The console of a container that has a tty: PID 1 opens the pty on the container's own devpts
and hands the master to the monitor over a socket pair; the monitor serves attach clients on a
unix socket in the container's directory.

Only containers with a tty import this module (the socket module is a cost on every start).
"""

from __future__ import annotations

import os
import socket

from runtime.tty.frames import bind_unix


def pair() -> tuple[socket.socket, socket.socket]:
    """(the monitor's end, PID 1's end)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def send_master(sock: socket.socket, master: int) -> None:
    socket.send_fds(sock, [b"m"], [master])


def receive_master(sock: socket.socket) -> int:
    """The pty master PID 1 opened on the container's devpts; -1 when it failed before."""
    try:
        _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    except OSError:
        return -1
    if not fds:
        return -1
    os.set_inheritable(fds[0], False)
    return fds[0]


def listen(path: str) -> socket.socket:
    """The attach socket at `path`, owner-only, replacing a stale one."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bind_unix(listener, path)
    os.chmod(path, 0o600)
    listener.listen(8)
    return listener
