"""The container's root, assembled by its first process in its own mount namespace, in this
order: overlay (nodev) and volumes (nodev), /proc, /sys (read-only), a fresh /dev, the masked and
read-only kernel paths, the console, the --init binary; then pivot_root."""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import termios

from runtime import syscalls as sc
from runtime.fs import mounts
from runtime.process import kernel_views, userns
from runtime.process.plan import INIT_PATH, Plan

_TIOCGPTN = 0x80045430
_TIOCSPTLCK = 0x40045431


def assemble(plan: Plan) -> tuple[int, int] | None:
    """Mount everything under the container's rootfs (not yet entered). With a tty, the pty
    pair opened on the container's own devpts: (master, slave)."""
    root = os.path.join(plan.cdir, "rootfs")
    mounts.make_private()
    mapped: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if plan.idmap is not None:
        # --userns auto: the layer trees and the container dir idmapped in this mount namespace;
        # everything made in the rootfs from here on (the overlay's work dirs, mount points of
        # volumes and /etc/hosts) is made as container root's host ids, since host uid 0 does
        # not exist on the idmapped mounts (EOVERFLOW); the upper dir keeps on-disk ids
        userns.idmap_overlay_sources(plan.cdir, plan.lowerdir, plan.userns_fd)
        mapped = userns.as_mapped_root(plan.idmap)
    with mapped:
        pty = _assemble(plan, root)
    return pty


def _assemble(plan: Plan, root: str) -> tuple[int, int] | None:
    mounts.mount_overlay(plan.cdir, plan.lowerdir, root, plan.volatile, sc.MS_NODEV)
    for host, ctr, ro in plan.volumes:
        mounts.bind_volume(root, host, ctr, ro)
    mounts.mount_proc_sys(root, plan.own_netns, sys_writable=plan.privileged)
    dev = mounts.mount_dev(root, tuple(n for n, _, _ in kernel_views.DEV_NODES),
                           tuple((d.host, d.ctr) for d in plan.devices))
    if not plan.privileged:
        kernel_views.mask(root)
        kernel_views.make_readonly(root)
    pty = None
    if plan.tty:
        pty = open_pty(dev)
        mounts.bind_file(f"/proc/self/fd/{pty[1]}", os.path.join(dev, "console"), 0o600)
    if plan.init_binary:
        mounts.bind_file(plan.init_binary, mounts.secure_join(root, INIT_PATH), 0o755, readonly=True)
    if plan.read_only:
        # last: the mount points above may have had to be made in the image's tree
        mounts.make_root_readonly(root)
    return pty


def open_pty(dev: str) -> tuple[int, int]:
    """A pty pair on the container's devpts instance, so that the slave the workload holds is a
    file of its own /dev/pts (as runc's console socket gives it), not one of the host's."""
    master = os.open(os.path.join(dev, "pts", "ptmx"), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    n = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4))[0]
    slave = os.open(os.path.join(dev, "pts", str(n)), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    # a sane default until the client's window size arrives
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    return master, slave


def enter(plan: Plan) -> None:
    mounts.pivot(os.path.join(plan.cdir, "rootfs"))
