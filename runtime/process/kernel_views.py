"""What a container may see of the kernel through /proc, /sys and /dev, as data, and the mounts
that enforce it inside the container's mount namespace (docker's defaults, see the table in the
README's runtime section):

- masked: a file becomes /dev/null bound over it, a directory an empty read-only tmpfs;
- read-only: bound onto itself and remounted read-only;
- the device cgroup (v1 `devices` controller): deny everything, allow the standard char devices.

Self-contained (ctypes only): it runs in the forked child between unshare and exec.
"""

from __future__ import annotations

import ctypes
import glob
import os
import stat

MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
    "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
)
# one entry per CPU, found when the container starts
MASKED_GLOBS: tuple[str, ...] = ("/sys/devices/system/cpu/cpu[0-9]*/thermal_throttle",)

READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)

# the nodes of a container's /dev, bound from the host's (name, major, minor)
DEV_NODES: tuple[tuple[str, int, int], ...] = (
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
    ("tty", 5, 0),
)

# devices cgroup v1 rules after "a" is denied: mknod of any node stays possible (images
# carry device files), opening one only for the standard set, ptys and tun
DEVICE_ALLOW: tuple[str, ...] = (
    "c *:* m", "b *:* m",
    *(f"c {major}:{minor} rwm" for _, major, minor in DEV_NODES),
    "c 5:1 rwm",        # /dev/console
    "c 5:2 rwm",        # /dev/ptmx
    "c 136:* rwm",      # /dev/pts/N
    "c 10:200 rwm",     # /dev/net/tun
)

_libc = ctypes.CDLL(None, use_errno=True)
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC = 32, 4096, 16384


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    enc = [None if s is None else os.fsencode(s) for s in (source, target, fstype, data)]
    if _libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount on {target}: {os.strerror(e)}", target)


def _open_path(path: str) -> int | None:
    """An O_PATH fd on `path` itself (never through a symlink a container planted), or None
    when it does not exist."""
    try:
        return os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _verified_null(root: str) -> int:
    """/dev/null of the container as an O_PATH fd, refused unless it is the real char device
    1:3 (CVE-2025-31133: a symlink or other node there made the mask mount hit its target)."""
    fd = os.open(os.path.join(root, "dev/null"), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != (1, 3):
        os.close(fd)
        raise OSError(1, "the container's /dev/null is not the null device")
    return fd


def masked_paths() -> list[str]:
    paths = list(MASKED_PATHS)
    for pattern in MASKED_GLOBS:
        paths.extend(sorted(glob.glob(pattern)))
    return paths


def mask(root: str = "/", paths: list[str] | None = None) -> None:
    """Hide each path (absolute inside the container whose root is `root`) that exists."""
    null = _verified_null(root)
    try:
        for path in masked_paths() if paths is None else paths:
            fd = _open_path(os.path.join(root, path.lstrip("/")))
            if fd is None:
                continue
            try:
                target = f"/proc/self/fd/{fd}"
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    _mount("tmpfs", target, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                           "size=0,mode=0555")
                else:
                    _mount(f"/proc/self/fd/{null}", target, None, _MS_BIND)
            finally:
                os.close(fd)
    finally:
        os.close(null)


def make_readonly(root: str = "/", paths: tuple[str, ...] = READONLY_PATHS) -> None:
    """Bind each existing path onto itself, then make that bind read-only."""
    for path in paths:
        fd = _open_path(os.path.join(root, path.lstrip("/")))
        if fd is None:
            continue
        try:
            target = f"/proc/self/fd/{fd}"
            _mount(target, target, None, _MS_BIND | _MS_REC)
        finally:
            os.close(fd)
        # reopened: the fd above still names the mount underneath the new bind
        fd = _open_path(os.path.join(root, path.lstrip("/")))
        if fd is None:
            continue
        try:
            target = f"/proc/self/fd/{fd}"
            _mount(None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_REC | _MS_NOSUID
                   | _MS_NODEV | _MS_NOEXEC)
        finally:
            os.close(fd)


def restrict_devices_v1(cgroup_dir: str, extra: tuple[str, ...] = ()) -> None:
    """Deny every device to the v1 `devices` cgroup at `cgroup_dir` but the standard ones and
    `extra` (rules for --device nodes, e.g. "c 10:229 rwm"). Done from the host before the
    container's first process joins."""
    with open(os.path.join(cgroup_dir, "devices.deny"), "w") as f:
        f.write("a")
    for rule in (*DEVICE_ALLOW, *extra):
        with open(os.path.join(cgroup_dir, "devices.allow"), "w") as f:
            f.write(rule)
