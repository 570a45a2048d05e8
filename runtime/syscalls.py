"""Thin ctypes wrappers for the Linux calls Python 3.11's `os` lacks (like mkosi's sandbox.py).

Self-contained on purpose: it is imported in the forked supervisor and workload, where start-up
time matters, so it pulls in nothing but ctypes, fcntl and socket.
"""

from __future__ import annotations

import ctypes
import gc
import os

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15

NS_FLAGS = {"mnt": CLONE_NEWNS, "pid": CLONE_NEWPID, "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC,
            "net": CLONE_NEWNET, "cgroup": CLONE_NEWCGROUP}


def fork() -> int:
    """os.fork() for a caller that may have threads (zstd worker pools, a daemon): the child
    never garbage-collects objects it inherited, whose finalizers could wait for threads that
    do not exist in it (a zstd compressor's dealloc joins its pool: the child hangs for ever)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        pid = os.fork()
    except BaseException:
        if enabled:
            gc.enable()
        raise
    if pid == 0:
        gc.freeze()             # everything inherited: never collected here
    if enabled:
        gc.enable()
    return pid


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}", path)
    return ret


def _b(s: str | bytes | None) -> bytes | None:
    if s is None:
        return None
    return s if isinstance(s, bytes) else os.fsencode(s)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           f"mount {fstype or ''} on {target}".replace("  ", " "), target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), f"umount {target}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    # glibc has no wrapper; SYS_pivot_root is 155 on x86_64, 41 on aarch64
    nr = 41 if os.uname().machine in ("aarch64", "arm64") else 155
    _check(_libc.syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)), "pivot_root", new_root)


def sethostname(name: str) -> None:
    b = name.encode()
    _check(_libc.sethostname(b, ctypes.c_size_t(len(b))), "sethostname")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl")


def set_dumpable(on: bool) -> None:
    """Off: /proc/<pid> of this process belongs to root and refuses ptrace-mode access, so no
    process of a container can reach its host python (exe, fds, environ, mem) before it execs
    (CVE-2016-9962). execve of the workload turns it on again."""
    prctl(PR_SET_DUMPABLE, 1 if on else 0)


CLOSE_RANGE_CLOEXEC = 4
NR_CLOSE_RANGE = 436      # the same number on x86_64 and aarch64


def cloexec_from(first: int) -> None:
    """Mark every fd >= `first` close-on-exec (close_range with CLOSE_RANGE_CLOEXEC, kernel
    5.11): nothing the host opened, whatever its number, survives into the container's
    command (CVE-2024-21626), while the error pipe stays usable until the exec itself."""
    _check(_libc.syscall(ctypes.c_long(NR_CLOSE_RANGE), ctypes.c_uint(first),
                         ctypes.c_uint(0xFFFFFFFF), ctypes.c_uint(CLOSE_RANGE_CLOEXEC)),
           "close_range")


def set_pdeathsig(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_name(name: str) -> None:
    """The process name shown by ps (comm), at most 15 bytes."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _libc.prctl(ctypes.c_int(PR_SET_NAME), buf, 0, 0, 0)


def loopback_up() -> None:
    """Bring `lo` up in the current network namespace (no netlink library needed). The
    socket comes from libc, not the socket module: importing that would be on every boot's
    critical path (this runs in the forked workload)."""
    import fcntl
    import struct
    AF_INET, SOCK_DGRAM, SOCK_CLOEXEC = 2, 2, 0o2000000
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    fd = _check(_libc.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket")
    try:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(fd, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(fd, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    finally:
        os.close(fd)


def set_ctty(fd: int) -> None:
    import fcntl
    import termios
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: tells a live process from a later one reusing its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None
