"""Files in and out of a container (cocker's putfile/getfile), through its merged tree."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator

from common.errors import CockerError, NotFound, UsageError
from registry.repo.store import Store
from runtime import syscalls as sc
from runtime.container.lifecycle import plan_for
from runtime.container.record import load, locked, require_root
from runtime.fs import mounts
from runtime.process import userns


@contextlib.contextmanager
def mounted_rootfs(store: Store, name: str) -> Iterator[str]:
    """The container's merged tree: its live root while it runs, else the overlay mounted for
    the duration of the block."""
    c = load(store, name)
    if c.state() == "running":
        wpid = c.workload_pid()
        if wpid is not None:
            yield f"/proc/{wpid}/root"
            return
    require_root()
    with locked(c.dir):
        plan, _ = plan_for(c, True)
        mounts.unmount_all(c.rootfs)
        mounts.mount_overlay(c.dir, plan.lowerdir, c.rootfs)
        try:
            yield c.rootfs
        finally:
            with contextlib.suppress(OSError):
                sc.umount2(c.rootfs, sc.MNT_DETACH)


def split_container_path(arg: str) -> tuple[str | None, str]:
    """`NAME:/PATH` -> (NAME, /PATH); anything else is a host path -> (None, arg)."""
    head, sep, tail = arg.partition(":")
    if sep and head and "/" not in head and tail.startswith("/"):
        return head, tail
    return None, arg


def copy(store: Store, src: str, dest: str) -> None:
    """`cocker container cp`: in (`HOSTPATH NAME:/PATH`, cocker's putfile) or out
    (`NAME:/PATH HOSTPATH`, getfile); exactly one side names a container."""
    sname, spath = split_container_path(src)
    dname, dpath = split_container_path(dest)
    if bool(sname) == bool(dname):
        raise UsageError("cp copies between the host and ONE container: "
                         "cp SRC NAME:/PATH or cp NAME:/PATH DEST")
    if dname:
        copy_in(store, dname, spath, dpath)
    elif sname:
        copy_out(store, sname, spath, dpath)


def copy_in(store: Store, name: str, src: str, dest: str) -> None:
    """cocker's putfile: host `src` (file or directory) to `dest` inside the container."""
    if not os.path.lexists(src):
        raise NotFound(f"{src} does not exist")
    with mounted_rootfs(store, name) as root:
        target = mounts.secure_join(root, dest)
        if os.path.isdir(target):
            target = mounts.secure_join(root, os.path.join(dest, os.path.basename(src.rstrip("/"))))
        parent = os.path.dirname(target)
        if not os.path.isdir(parent):
            raise NotFound(f"{name}:{os.path.dirname(dest) or '/'}: no such directory")
        idmap = userns.from_record(load(store, name).record)
        # a running --userns auto container's tree is idmapped: host uid 0 cannot own a file
        # there (EOVERFLOW), container root's host ids can (and are 0 on disk)
        with userns.as_mapped_root(idmap) if idmap is not None else contextlib.nullcontext():
            _copy(src, target)


def copy_out(store: Store, name: str, src: str, dest: str) -> None:
    """cocker's getfile: `src` inside the container to host `dest`."""
    with mounted_rootfs(store, name) as root:
        source = mounts.secure_join(root, src)
        if not os.path.lexists(source):
            raise NotFound(f"{name}:{src}: no such file or directory")
        target = dest
        if os.path.isdir(dest):
            target = os.path.join(dest, os.path.basename(source.rstrip("/")) or "root")
        _copy(source, target)


def _copy(src: str, dst: str) -> None:
    try:
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
        elif os.path.islink(src):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
            os.symlink(os.readlink(src), dst)
        else:
            if os.path.islink(dst):
                os.unlink(dst)            # never write through a link planted in the container
            shutil.copy2(src, dst)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CockerError(f"no space left on device while copying to {dst}") from e
        raise
