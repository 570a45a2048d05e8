"""Joining a container's cgroups from a forked child, as late as possible before exec."""

from __future__ import annotations

import os

from runtime import syscalls as sc


def open_join_fd(cgroup_dir: str) -> int:
    """An fd on which writing "0" moves the writer into `cgroup_dir`. On v1 that is `tasks`:
    it moves only the writing thread, which for our single-threaded forks is the whole process,
    and unlike `cgroup.procs` it skips the global threadgroup lock, whose RCU grace period
    costs 5-15 ms of every start. v2 has no `tasks`: `cgroup.procs` there."""
    try:
        return os.open(os.path.join(cgroup_dir, "tasks"), os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return os.open(os.path.join(cgroup_dir, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)


def join_cgroup(fds: list[int]) -> None:
    """Move the caller into the cgroup(s) open as `fds`, then root a cgroup namespace there."""
    for fd in fds:
        os.write(fd, b"0")
        os.close(fd)
    if fds:
        sc.unshare(sc.CLONE_NEWCGROUP)
