"""The container's first process, between fork and exec. It is forked by the monitor into a
new PID namespace, where it is PID 1; the monitor itself stays outside.

    unshare(mnt, uts, ipc[, net])      -> "N" to the monitor: the caller may wire the network
    root assembled, pty on its devpts  -> the master to the monitor over the console socket
    pivot_root, hostname               -> waits for "g" (the network is ready)
    stdio, cgroup, user, caps, seccomp -> every other fd close-on-exec, cwd checked, exec

Until the exec the process is not dumpable: a process of the container cannot open its /proc
files (exe is the host's python, environ the host's environment). The exec runs with the
image's environment only.
"""

import os
import signal
from typing import TYPE_CHECKING, NamedTuple, NoReturn

from runtime import syscalls as sc
from runtime.cgroup.join import join_cgroup, open_join_fd
from runtime.process import confinement, rootfs, userns, users
from runtime.process.plan import Plan
from runtime.process.startup import FORWARDED, describe, exec_or_report, say

if TYPE_CHECKING:
    import socket


class ChildPipes(NamedTuple):
    sync_w: int                 # "N" once the namespaces exist
    go_r: int                   # "g" from the monitor: start
    console: "socket.socket | None"   # the pty master goes back to the monitor through it
    err_w: int                  # one line when the start fails; EOF (close-on-exec) when it worked
    stdio: tuple[int, int, int]     # -1: /dev/null of the container


def start_workload(plan: Plan, pipes: ChildPipes) -> NoReturn:
    try:
        sc.set_dumpable(False)
        for sig in FORWARDED + (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)     # python ignores some; exec would keep that
        # the cgroup is joined just before exec: the python set-up below runs neither throttled
        # nor charged to the container's memory limit
        cg_fds = [open_join_fd(d) for d in plan.cgroup_dirs]
        flags = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC
        if plan.own_netns:
            flags |= sc.CLONE_NEWNET
        sc.unshare(flags)
        os.write(pipes.sync_w, b"N")
        os.close(pipes.sync_w)
        os.setsid()
        if plan.own_netns:
            sc.loopback_up()
        if pipes.console is not None:
            from runtime.tty import console  # with a tty only, and before the root changes
        pty = rootfs.assemble(plan)
        if pty is not None and pipes.console is not None:
            console.send_master(pipes.console, pty[0])
            os.close(pty[0])
        if pipes.console is not None:
            pipes.console.close()
        rootfs.enter(plan)
        sc.sethostname(plan.hostname)
        if plan.idmap is not None:
            # after pivot_root (a chrooted process may not join); host uid 0 is unmapped in it
            # until confinement.enter (or switch_to) takes the container user's ids
            userns.join(plan.userns_fd)
        # from here on the root is the image's: no more imports
        if os.read(pipes.go_r, 1) != b"g":
            os._exit(125)
        os.close(pipes.go_r)
        _stdio(pty[1] if pty is not None else None, pipes.stdio)
        env = dict(e.partition("=")[::2] for e in plan.env)
        user = users.resolve_in_root(plan.user)
        env.setdefault("HOME", user.home)
        # joining the cgroup namespace needs the privileges the user switch drops
        join_cgroup(cg_fds)
        _chdir(plan.workdir)
        sc.cloexec_from(3)
        if plan.confinement is not None:
            confinement.enter(plan.confinement, user.uid, user.gid, list(user.groups))
        else:
            users.switch_to(user)
        exec_or_report(plan.argv, env, pipes.err_w, "the image")
    except BaseException as e:                  # noqa: BLE001 - must never return into the caller
        say(pipes.err_w, f"cannot start the container: {describe(e)}")
        os._exit(125)


def _stdio(slave: int | None, stdio: tuple[int, int, int]) -> None:
    if slave is not None:
        for i in range(3):
            os.dup2(slave, i)
        if slave > 2:
            os.close(slave)
        sc.set_ctty(0)
        return
    null = -1
    for i, fd in enumerate(stdio):
        if fd < 0:
            if null < 0:
                null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            fd = null
        if fd != i:
            os.dup2(fd, i)
        else:
            os.set_inheritable(i, True)
    if null > 2:
        os.close(null)


def _chdir(workdir: str) -> None:
    """Into the working directory (made when the image lacks it), and make sure it is one of
    the container's: a cwd outside the root would hand the host's tree to the workload."""
    try:
        os.chdir(workdir or "/")
    except FileNotFoundError:
        os.makedirs(workdir, exist_ok=True)
        os.chdir(workdir)
    cwd = os.getcwd()
    if not cwd.startswith("/"):
        raise OSError(2, f"working directory {workdir} is outside the container")


