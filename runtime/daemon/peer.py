"""Who is on the other end of a daemon connection.

A unix socket tells it directly (SO_PEERCRED). A loopback TCP connection does not, but both ends
live in this host's network namespace, so the kernel's socket table (/proc/net/tcp, tcp6) lists
the client's end — local address = the peer's, remote address = ours — with the uid that owns it.
That is how identd-style checks work, and what lets the TCP door refuse every local user but root
when no token is configured.
"""

from __future__ import annotations

import socket
import struct

TABLES = {socket.AF_INET: "/proc/net/tcp", socket.AF_INET6: "/proc/net/tcp6"}


def unix_peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _hex_address(family: int, ip: str, port: int) -> str:
    """An address as /proc/net/tcp* prints it: 32-bit words in host byte order, in hex."""
    raw = socket.inet_pton(family, ip)
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def tcp_peer_uid(sock: socket.socket) -> int | None:
    """The uid owning the client end of an accepted loopback TCP connection, or None when the
    kernel's table has no such socket (the client is already gone)."""
    family = sock.family
    peer = sock.getpeername()
    mine = sock.getsockname()
    want_local = _hex_address(family, peer[0], peer[1])
    want_remote = _hex_address(family, mine[0], mine[1])
    try:
        with open(TABLES[family]) as f:
            next(f, None)                  # the header line
            for line in f:
                fields = line.split()
                # sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
                if len(fields) > 7 and fields[1] == want_local and fields[2] == want_remote:
                    return int(fields[7])
    except (OSError, KeyError, ValueError):
        return None
    return None
