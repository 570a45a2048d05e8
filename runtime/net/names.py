"""Names on a bridge network: every container on it finds the others by name and alias.

How: each container's /etc/hosts is a file of its own (containers/<name>/hosts, bind-mounted),
rewritten for every container of a network whenever an endpoint joins or leaves it, under the
network lock that already orders those changes. Why not a small DNS server on the bridge, as
docker has: a resolver is one more process per network that must outlive crashes, be restarted
after a reboot and be reachable through every container's firewall, while /etc/hosts is read by
every libc and by busybox with no configuration and nothing running. What /etc/hosts cannot do
(names of other networks, round-robin over replicas) is not asked here: a service's replicas
are reached through its name, which is its nginx's address.

The file is rewritten in place (same inode), because a bind mount pins the inode: a rename
would leave containers reading the old file.
"""

from __future__ import annotations

import contextlib
import os

BASE = ("127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n")


def hosts_text(owner: str, endpoints: dict[str, dict]) -> str:
    """The /etc/hosts of `owner`: localhost, then itself, then every other endpoint, each
    under its name and its aliases."""
    lines = [BASE]
    ordered = sorted(endpoints.items(), key=lambda kv: (kv[0] != owner, kv[0]))
    for name, ep in ordered:
        ip = ep.get("ip")
        if not ip:
            continue
        names = [n for n in [ep.get("hostname"), name, *(ep.get("aliases") or [])] if n]
        lines.append(f"{ip}\t{' '.join(dict.fromkeys(names))}\n")
    return "".join(lines)


def write_in_place(path: str, text: str) -> None:
    """Replace the content of `path` keeping its inode (containers see it through a bind)."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def prepare(path: str, hostname: str) -> None:
    """The hosts file a container starts with (its own name on loopback until it has an
    address: `hostname -f` and the like must not stall)."""
    write_in_place(path, BASE + f"127.0.1.1\t{hostname}\n")


def sync(hosts_of: dict[str, str], endpoints: dict[str, dict]) -> None:
    """Rewrite the hosts file of every endpoint that has one (`hosts_of`: owner -> path;
    owners without a file, such as a service's nginx, only appear in the others')."""
    for owner, path in hosts_of.items():
        if owner in endpoints:
            with contextlib.suppress(FileNotFoundError):
                if os.path.exists(path):
                    write_in_place(path, hosts_text(owner, endpoints))
