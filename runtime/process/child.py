"""The container's first process between fork and exec: namespaces, root, user, then exec."""

from __future__ import annotations

import os
import signal
from typing import NoReturn

from runtime import syscalls as sc
from runtime.cgroup.join import join_cgroup, open_join_fd
from runtime.fs import mounts
from runtime.process import userns, users
from runtime.process.plan import Plan
from runtime.process.startup import FORWARDED, describe, say


def start_workload(plan: Plan, fds: tuple[int, int, int], err_w: int) -> NoReturn:
    try:
        for sig in FORWARDED + (signal.SIGCHLD,):
            signal.signal(sig, signal.SIG_DFL)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)     # python ignores these; exec would keep that
        # the cgroup is joined just before exec: the python set-up below runs neither throttled
        # nor charged to the container's memory limit
        cg_fds = [open_join_fd(d) for d in plan.cgroup_dirs]
        sc.unshare(sc.CLONE_NEWNS)
        os.setsid()
        for i, fd in enumerate(fds):
            if fd != i:
                os.dup2(fd, i)
            else:
                os.set_inheritable(i, True)
        console = None
        if plan.tty:
            sc.set_ctty(0)
            console = os.ttyname(0)
        if plan.own_netns:
            sc.loopback_up()        # before pivot_root: it imports modules from the host's python
        if plan.idmap is not None:
            _mapped_rootfs(plan, console)
        else:
            mounts.setup_rootfs(plan.cdir, plan.lowerdir, plan.volumes, plan.own_netns, console,
                                plan.volatile)
        sc.sethostname(plan.hostname)
        if plan.idmap is not None:
            userns.join(plan.userns_fd)
            if not plan.user:           # host uid 0 is not mapped: become container root
                users.switch_to(users.resolve_in_root(""))
        # from here on the root is the image's: no more imports
        env = dict(e.partition("=")[::2] for e in plan.env)
        user = users.resolve_in_root(plan.user)
        env.setdefault("HOME", user.home)
        # joining the cgroup namespace needs the privileges the user switch drops
        join_cgroup(cg_fds)
        if plan.user:
            users.switch_to(user)
        try:
            os.chdir(plan.workdir or "/")
        except FileNotFoundError:
            os.makedirs(plan.workdir, exist_ok=True)
            os.chdir(plan.workdir)
        try:
            os.execvpe(plan.argv[0], plan.argv, env)
        except FileNotFoundError:
            say(err_w, f"{plan.argv[0]}: command not found in the image")
            os._exit(127)
        except PermissionError:
            say(err_w, f"{plan.argv[0]}: permission denied (not executable?)")
            os._exit(126)
    except BaseException as e:                  # noqa: BLE001 - must never return into the caller
        say(err_w, f"cannot start the container: {describe(e)}")
        os._exit(125)
    os._exit(125)


def _mapped_rootfs(plan: Plan, console: str | None) -> None:
    """--userns auto: the layer trees and the container dir idmapped in this mount namespace,
    then the overlay mounted as container root's host ids (its upper dir keeps on-disk ids)."""
    assert plan.idmap is not None
    root = os.path.join(plan.cdir, "rootfs")
    mounts.make_private()
    userns.idmap_overlay_sources(plan.cdir, plan.lowerdir, plan.userns_fd)
    with userns.as_mapped_root(plan.idmap):
        mounts.mount_overlay(plan.cdir, plan.lowerdir, root, plan.volatile)
    mounts.finish_rootfs(root, plan.volumes, plan.own_netns, console)
