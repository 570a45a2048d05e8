"""`exec`: run a command inside a running container by joining its namespaces with setns.

    caller ── fork ── helper: setns(ipc, uts, net, pid, mnt), chroot to the
                      container root ── fork ── command (now inside the PID namespace): exec
The helper waits for the command and exits with its code; the caller relays a pty if asked.
The command runs as the container's PID 1 does: same capabilities, seccomp filter and
no_new_privs setting, the container's user unless `exec -u` names another; helper and command
stay non-dumpable until the exec, and no fd of the host survives it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import stat
import struct

from common.errors import Conflict
from runtime import syscalls as sc
from runtime.cgroup.join import open_join_fd
from runtime.process import confinement, users
from runtime.process.confinement import Confinement
from runtime.process.startup import (
    FORWARDED,
    StartFailed,
    describe,
    exec_or_report,
    exit_code,
    say,
)
from runtime.tty import stdio_relay
from runtime.tty.attach import copy_winsize, relay_pty

NAMESPACES = ("cgroup", "ipc", "uts", "net", "pid", "mnt")
TIOCGPTPEER = 0x5441        # open the slave of a master without a path (Linux 4.13)
TIOCSPTLCK = 0x40045431     # (un)lock a pty slave (unlockpt)


def run_in(wpid: int, argv: list[str], *, env: list[str], workdir: str, tty: bool = False,
           interactive: bool = False, cgroup_dirs: list[str] | None = None,
           user: str = "", confine: Confinement | None = None) -> int:
    nsfds = []
    try:
        for ns in NAMESPACES:
            try:
                nsfds.append((ns, os.open(f"/proc/{wpid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)))
            except FileNotFoundError:
                if ns == "cgroup":
                    continue
                raise
        if os.stat(f"/proc/{wpid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino:
            # --userns auto: joined last, once the mount namespace gave us the container's root
            nsfds.append(("user", os.open(f"/proc/{wpid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)))
        rootfd = os.open(f"/proc/{wpid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        for _, fd in nsfds:
            os.close(fd)
        raise Conflict(f"the container stopped ({describe(e)})") from None
    # opened here, written by the command just before exec (its root is the container's by then)
    cg_fds = []
    for d in cgroup_dirs or []:
        try:
            cg_fds.append(open_join_fd(d))
        except FileNotFoundError:
            pass
    err_r, err_w = os.pipe()
    master = -1
    # with a tty, the helper opens the pty on the container's own devpts (so `tty` inside
    # names it) and hands the master back over this socket
    pty_parent, pty_child = socket.socketpair() if tty else (None, None)
    relay = None
    stdio = (-1, -1, -1)
    if not tty:
        # the command writes into pipes this process copies to its own fds (it cannot be the
        # helper: a process that joined a PID namespace may not start threads): no terminal
        # or file of the caller is open inside the container
        stdio, relay = stdio_relay.pipes_for((0 if interactive else -1, 1, 2))
    pid = sc.fork()
    if pid == 0:
        _helper(nsfds, rootfd, argv, env, workdir, tty, stdio, cg_fds, user,
                pty_child, err_w, confine)
    os.close(err_w)
    for fd in {*stdio} - {-1}:
        os.close(fd)
    for fd in cg_fds:
        os.close(fd)
    for _, fd in nsfds:
        os.close(fd)
    os.close(rootfd)
    if pty_parent is not None and pty_child is not None:
        pty_child.close()
        with pty_parent:
            _, fds, _, _ = socket.recv_fds(pty_parent, 16, 1)
        if fds:
            master = fds[0]
            if os.isatty(0):
                copy_winsize(0, master)
    with os.fdopen(err_r, "rb") as f:
        msg = f.read().decode(errors="replace").strip()
    if master >= 0 and not msg:
        relay_pty(master)
    if master >= 0:
        os.close(master)
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            old[sig] = signal.signal(sig, lambda s, f: _kill(pid, s))
        except ValueError:
            pass
    try:
        code = exit_code(stdio_relay.run(relay, pid)) if relay is not None else _waitpid(pid)
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    if msg:
        raise StartFailed(msg, code if code in (125, 126, 127) else 126)
    return code


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _waitpid(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 255
        return exit_code(status)


def _open_container_pty(pty_sock: socket.socket) -> int:
    """A pty on the devpts mounted at /dev/pts of the root we are in (the container's): the
    master goes to the caller over `pty_sock`, the slave is returned."""
    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(master)
        if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != (5, 2):
            raise OSError(errno.ENOTTY, "the container's /dev/pts/ptmx is not a pty multiplexer")
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
        socket.send_fds(pty_sock, [b"m"], [master])
    finally:
        os.close(master)
        pty_sock.close()
    return slave


def _helper(nsfds, rootfd, argv, env, workdir, tty, stdio, cg_fds, user, pty_sock,
            err_w, confine) -> None:
    try:
        sc.set_dumpable(False)
        cg_ns = -1
        for ns, fd in nsfds:
            if ns == "cgroup":
                cg_ns = fd          # joined by the command once it is in the cgroup (v2 rule)
                continue
            sc.setns(fd, sc.CLONE_NEWUSER if ns == "user" else sc.NS_FLAGS[ns])
        mapped = any(ns == "user" for ns, _ in nsfds)
        os.fchdir(rootfd)
        os.chroot(".")
        slave = _open_container_pty(pty_sock) if pty_sock is not None else -1
        child = sc.fork()
        if child == 0:
            _command(argv, env, workdir, tty, slave, stdio, user, err_w, cg_fds, cg_ns,
                     mapped, confine)
        os.close(err_w)
        for fd in cg_fds:
            os.close(fd)
        if slave >= 0:
            os.close(slave)
        for fd in {*stdio} - {-1}:
            os.close(fd)
        for sig in FORWARDED:
            signal.signal(sig, lambda s, f: _kill(child, s))
        os._exit(_waitpid(child))
    except BaseException as e:          # noqa: BLE001
        say(err_w, f"exec: {describe(e)}")
        os._exit(126)


def _command(argv, env, workdir, tty, slave, stdio, user, err_w, cg_fds, cg_ns,
             mapped: bool, confine: Confinement | None) -> None:
    try:
        sc.set_dumpable(False)
        for sig in FORWARDED + (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        if tty:
            os.setsid()
            for i in range(3):
                os.dup2(slave, i)
            sc.set_ctty(0)
        else:
            for i, fd in enumerate(stdio):
                if fd < 0:              # the container's own /dev/null (we are in its root)
                    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                os.dup2(fd, i)
        envd = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        who = users.resolve_in_root(user)
        envd.setdefault("HOME", who.home)
        for fd in cg_fds:
            os.write(fd, b"0")
            os.close(fd)
        if cg_ns >= 0:
            sc.setns(cg_ns, sc.CLONE_NEWCGROUP)
        try:
            os.chdir(workdir or "/")
        except OSError:
            os.chdir("/")
        sc.cloexec_from(3)
        # after the cgroup: joining its namespace needs the privileges the user switch drops;
        # in a user namespace host uid 0 is unmapped, so even root is switched to
        if confine is not None:
            confinement.enter(confine, who.uid, who.gid, list(who.groups))
        elif user or mapped:
            users.switch_to(who)
        exec_or_report(argv, envd, err_w, "the container")
    except BaseException as e:          # noqa: BLE001
        say(err_w, f"exec: {describe(e)}")
        os._exit(126)
