"""The host side of cocker's networks: which network namespace the bridges live in, and a way
back into it for a process that sits elsewhere (a container's supervisor runs in the container's
namespace, yet must delete its veth, rules and — for the last one — the bridge)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from runtime import syscalls

HOST_NS_PIN = "/run/cocker/host-net"


def ns_id(path: str) -> str:
    """A namespace's identity (device:inode of its nsfs file)."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def self_ns() -> str | None:
    try:
        return ns_id("/proc/thread-self/ns/net")
    except OSError:
        return None


def pin() -> None:
    """Bind-mount the namespace our bridges live in at HOST_NS_PIN (like `ip netns add`), so
    a process elsewhere — a container's supervisor tearing down its network from inside the
    container's namespace — can find its way back. Removed with cocker's last rule."""
    me = self_ns()
    with contextlib.suppress(OSError):
        if ns_id(HOST_NS_PIN) == me:
            return
    with contextlib.suppress(OSError):
        with open("/proc/self/mountinfo") as f:
            if any(line.split()[4] == HOST_NS_PIN for line in f):
                return                      # pinned by a cocker in another namespace: leave it
        os.makedirs(os.path.dirname(HOST_NS_PIN), exist_ok=True)
        open(HOST_NS_PIN, "a").close()
        syscalls.mount("/proc/thread-self/ns/net", HOST_NS_PIN, None, syscalls.MS_BIND)


def unpin() -> None:
    """Called once nothing of cocker's is left in iptables (so no bridge needs finding)."""
    with contextlib.suppress(OSError):
        if ns_id(HOST_NS_PIN) == self_ns():
            syscalls.umount2(HOST_NS_PIN, syscalls.MNT_DETACH)
    with contextlib.suppress(OSError):
        os.unlink(HOST_NS_PIN)


@contextlib.contextmanager
def entered(want: str | None) -> Iterator[None]:
    """Run the block in the namespace where a network's bridge lives (`want`, recorded when
    the bridge was made), even when the caller sits elsewhere — e.g. a container's
    supervisor, which tears down its network from inside the container's namespace."""
    if not want or self_ns() in (None, want):
        yield
        return
    target = None
    for cand in (HOST_NS_PIN, "/proc/1/ns/net"):
        with contextlib.suppress(OSError):
            fd = os.open(cand, os.O_RDONLY | os.O_CLOEXEC)
            st = os.fstat(fd)
            if f"{st.st_dev}:{st.st_ino}" == want:
                target = fd
                break
            os.close(fd)
    if target is None:
        yield                               # nowhere better to go: do what we can here
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.setns(target, syscalls.CLONE_NEWNET)   # this thread only; children inherit it
        try:
            yield
        finally:
            syscalls.setns(own, syscalls.CLONE_NEWNET)
    finally:
        os.close(own)
        os.close(target)


@contextlib.contextmanager
def inside(path: str) -> Iterator[None]:
    """This thread in the network namespace at `path` for the block, then back. Sockets made
    inside stay bound to that namespace: the cheap way to get a netlink socket there (no
    child process, unlike pyroute2's netns= option)."""
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(target, syscalls.CLONE_NEWNET)
            try:
                yield
            finally:
                syscalls.setns(own, syscalls.CLONE_NEWNET)
        finally:
            os.close(own)
    finally:
        os.close(target)
