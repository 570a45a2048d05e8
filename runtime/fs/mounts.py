"""The container's filesystem: overlay over the layer trees, volumes, /proc, /sys, /dev, pivot_root.

Everything here except `lower_links`/`secure_join`/`parse_volume` runs in the container's first
process after it unshared its mount namespace, so nothing it mounts is visible on the host and
nothing has to be unmounted when the container ends (the namespace dies with its last process).
The rootfs and volumes are nodev: a device node an image or a volume carries opens nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from runtime import syscalls as sc

LINKS = "L"          # containers/<name>/L/<n> -> layer tree: keeps the mount options short
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
_ST_FLAGS = ((os.ST_RDONLY, sc.MS_RDONLY), (os.ST_NOSUID, sc.MS_NOSUID), (os.ST_NODEV, sc.MS_NODEV),
             (os.ST_NOEXEC, sc.MS_NOEXEC))


# host side ----------------------------------------------------------------------------
MAX_OPTIONS = 3900       # the kernel takes one page of mount options; keep room for the rest


def lower_links(cdir: str, layer_paths: list[str]) -> str:
    """The lowerdir option value (top first, as overlay wants it) for the layers (bottom -> top),
    relative to `cdir` (the overlay is mounted from there). Paths like ../../layers/<hex> when
    they fit in a page; else short links containers/<name>/L/<n>, so 50+ layers still fit."""
    if not layer_paths:                       # an image without layers: one empty lower dir
        empty = os.path.join(cdir, "empty")
        os.makedirs(empty, exist_ok=True)
        layer_paths = [empty]
    direct = ":".join(os.path.relpath(p, cdir) for p in reversed(layer_paths))
    if len(direct) < MAX_OPTIONS - 100:
        return direct
    ldir = os.path.join(cdir, LINKS)
    os.makedirs(ldir, exist_ok=True)
    for i, p in enumerate(layer_paths):
        link = os.path.join(ldir, str(i))
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(link) == p:
                continue
            os.unlink(link)
        os.symlink(p, link)
    return ":".join(f"{LINKS}/{i}" for i in reversed(range(len(layer_paths))))


def overlay_options(lowerdir: str) -> str:
    # redirect_dir/metacopy off: the upper dir must stay a plain diff that commit can pack
    return f"lowerdir={lowerdir},upperdir=upper,workdir=work,redirect_dir=off,metacopy=off"


def mount_overlay(cdir: str, lowerdir: str, target: str, volatile: bool = False,
                  flags: int = 0) -> None:
    """Mount the overlay on `target`, resolving the short relative layer names from `cdir`.
    `volatile` (throw-away containers): no syncs of the upper dir, above all not the syncfs at
    unmount, which costs tens of milliseconds at every exit on a busy disk."""
    old = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir(cdir)
        # a volatile mount leaves work/work/incompat/volatile behind, which blocks any remount
        if os.path.isdir("work/work/incompat"):
            import shutil
            shutil.rmtree("work/work/incompat", ignore_errors=True)
        opts = overlay_options(lowerdir)
        try:
            if volatile:
                try:
                    sc.mount("overlay", target, "overlay", flags, opts + ",volatile")
                    return
                except OSError as e:
                    if e.errno != errno.EINVAL:      # kernels before 5.10: no volatile
                        raise
            sc.mount("overlay", target, "overlay", flags, opts)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            # kernels without redirect_dir/metacopy options
            sc.mount("overlay", target, "overlay", flags,
                     f"lowerdir={lowerdir},upperdir=upper,workdir=work")
    finally:
        os.fchdir(old)
        os.close(old)


def parse_volume(spec: str) -> tuple[str, str, bool]:
    """'HOST:CTR[:ro|rw]' -> (host, ctr, readonly); the host path must exist."""
    from common.errors import NotFound, UsageError
    parts = spec.split(":")
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        host, ctr, ro = parts[0], parts[1], parts[2] == "ro"
    elif len(parts) == 2:
        host, ctr, ro = parts[0], parts[1], False
    else:
        raise UsageError(f"volume {spec!r}: expected HOST:CONTAINER[:ro]")
    if not host or not ctr or not os.path.isabs(ctr):
        raise UsageError(f"volume {spec!r}: both paths are needed, the container path absolute")
    host = os.path.abspath(host)
    if not os.path.exists(host):
        raise NotFound(f"volume source {host} does not exist")
    if os.path.normpath(ctr) == "/":
        raise UsageError(f"volume {spec!r}: cannot mount over the container's root")
    return host, os.path.normpath(ctr), ro


def secure_join(root: str, path: str, *, follow_last: bool = True) -> str:
    """`path` inside the tree at `root`, symlinks resolved as if `root` were `/`, so the result
    never leaves `root` (like runc's securejoin). Missing components are kept as they are."""
    root = os.path.abspath(root)
    todo = [p for p in path.split("/") if p]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        cand = os.path.join(root, *done, part)
        if not todo and not follow_last:
            done.append(part)
            break
        try:
            st = os.lstat(cand)
        except FileNotFoundError:
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 40:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            target = os.readlink(cand)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p] + todo
            continue
        done.append(part)
    return os.path.join(root, *done)


# inside the workload's mount namespace ------------------------------------------------------
def make_private() -> None:
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)


def bind_volume(root: str, host: str, ctr: str, ro: bool) -> None:
    target = secure_join(root, ctr)
    if os.path.isdir(host):
        os.makedirs(target, exist_ok=True)
    elif not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
    sc.mount(host, target, None, sc.MS_BIND | sc.MS_REC)
    remount_bind(target, sc.MS_NODEV | (sc.MS_RDONLY if ro else 0))


def remount_bind(target: str, add: int) -> None:
    """Add mount flags to the bind mount on `target`, keeping those it has (a bind remount
    replaces them all)."""
    have = os.statvfs(target).f_flag
    flags = add | sum(ms for st, ms in _ST_FLAGS if have & st)
    sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | flags)


def _mkdir(path: str, mode: int = 0o755) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)


def mount_proc_sys(root: str, own_netns: bool, sys_writable: bool = False) -> None:
    proc = secure_join(root, "/proc")
    _mkdir(proc, 0o555)
    sc.mount("proc", proc, "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    sysd = secure_join(root, "/sys")
    _mkdir(sysd, 0o555)
    flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | (0 if sys_writable else sc.MS_RDONLY)
    try:
        sc.mount("sysfs", sysd, "sysfs", flags)
    except OSError:
        if own_netns:
            raise
        # host network: sysfs may refuse a fresh instance; show the host's, read-only
        sc.mount("/sys", sysd, None, sc.MS_BIND | sc.MS_REC)
        if not sys_writable:
            sc.mount(None, sysd, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC)


def mount_dev(root: str, nodes: tuple[str, ...] = DEV_NODES,
              devices: tuple[tuple[str, str], ...] = ()) -> str:
    """A small tmpfs /dev with `nodes` bound from the host's, `devices` (host node, path inside)
    too, its own devpts instance and shm. Returns the /dev path under `root`."""
    dev = secure_join(root, "/dev")
    _mkdir(dev)
    sc.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    for n in nodes:
        bind_file(f"/dev/{n}", os.path.join(dev, n), 0o666)
    for host, ctr in devices:
        target = secure_join(root, ctr)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        bind_file(host, target, 0o600)
    pts = os.path.join(dev, "pts")
    _mkdir(pts)
    sc.mount("devpts", pts, "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=0620,gid=5")
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    shm = os.path.join(dev, "shm")
    _mkdir(shm, 0o1777)
    sc.mount("shm", shm, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=1777,size=65536k")
    mqueue = os.path.join(dev, "mqueue")
    _mkdir(mqueue)
    sc.mount("mqueue", mqueue, "mqueue", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("core", "/proc/kcore")):
        os.symlink(target, os.path.join(dev, name))
    return dev


def bind_file(source: str, target: str, mode: int = 0o644, readonly: bool = False) -> None:
    """Bind the file `source` onto a new empty file `target` (never through a symlink there)."""
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode))
    sc.mount(source, target, None, sc.MS_BIND)
    if readonly:
        remount_bind(target, sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV)


def pivot(root: str) -> None:
    """pivot_root into `root` (a mount point) and drop the old root (runc's '.' '.' trick)."""
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def make_root_readonly(root: str) -> None:
    """--read-only: the container's root (the overlay) read-only; volumes and /dev, /proc, /sys,
    mounted on it, keep their own flags."""
    remount_bind(root, sc.MS_RDONLY)


# host side again: the merged tree of a stopped container (cp, builds) ------------------------------
def is_mounted(path: str) -> bool:
    """Whether something is mounted on `path` here (an overlay: another device than its parent;
    two stats instead of reading the whole mount table)."""
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def unmount_all(path: str) -> None:
    """Lazily unmount whatever is stacked on `path` (leftovers of a temporary mount)."""
    for _ in range(16):
        if not is_mounted(path):
            return
        try:
            sc.umount2(path, sc.MNT_DETACH)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):
                return
            raise
