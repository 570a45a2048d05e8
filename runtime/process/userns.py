"""`--userns auto`: container root becomes an unprivileged range of host ids.

- The ids come from a pool that /etc/subuid and /etc/subgid give to `cocker` (an entry is added
  when there is none, after every range already handed out); each container takes a free slice
  of it, recorded under the store (Home.userns_allocations) and given back on rm.
- A user namespace with that mapping is made by a short-lived helper process; its fd is what
  the container's first process joins (setns) once its root is in place, and what the idmapped
  mounts refer to.
- The shared read-only layer trees (and the container's upper/work dirs) are idmapped into the
  container's mount namespace (open_tree OPEN_TREE_CLONE -> mount_setattr MOUNT_ATTR_IDMAP ->
  move_mount), so files owned by 0 on disk are owned by container root, the layers stay shared
  with unmapped containers, and a commit of the upper dir sees the ids it always saw.

Self-contained (ctypes only) for the part that runs in the forked child.
"""

import contextlib
import ctypes
import json
import os
from collections.abc import Iterator
from typing import NamedTuple

from common.errors import RuntimeFailure, UsageError
from common.fsutil import atomic_write, flock
from common.home import Home
from runtime.process import capabilities

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
OWNER = "cocker"
SLICE = 65536                 # ids per container, like podman's default ceiling
POOL = SLICE * 64             # ids of the `cocker` entry created when there is none
FIRST_FREE = 100000           # where Debian's useradd starts handing out subordinate ids
MIN_KERNEL = (5, 19)          # overlayfs over idmapped layers

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWUSER = 0x10000000
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = 0o2000000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x100000
# the same numbers in the unified syscall table of x86_64, aarch64, riscv64, s390x, ppc64le
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442


class IdRange(NamedTuple):
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


class IdMap(NamedTuple):
    """Container ids 0..size-1 are host uids uid_start.. and gids gid_start.."""
    uid_start: int
    gid_start: int
    size: int

    def uid_map(self) -> str:
        return f"0 {self.uid_start} {self.size}\n"

    def gid_map(self) -> str:
        return f"0 {self.gid_start} {self.size}\n"


def from_record(record: dict) -> IdMap | None:
    """The id map a container record keeps under "userns" (--userns auto), or None."""
    u = record.get("userns") or {}
    if u.get("mode") != "auto":
        return None
    return IdMap(int(u["uid"]), int(u["gid"]), int(u["size"]))


def check_kernel(release: str | None = None) -> None:
    release = release or os.uname().release
    parts = release.split(".")
    try:
        version = (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0))
    except (IndexError, ValueError):
        version = (0, 0)
    if version < MIN_KERNEL:
        raise RuntimeFailure(f"--userns auto needs Linux {MIN_KERNEL[0]}.{MIN_KERNEL[1]} or newer "
                             f"(overlay over idmapped layers); this kernel is {release}")


# /etc/subuid and /etc/subgid ------------------------------------------------------------
def read_subids(path: str) -> list[tuple[str, IdRange]]:
    """The `name_or_uid:start:count` lines of a subid file (a missing file has none)."""
    entries = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        entries.append((parts[0], IdRange(int(parts[1]), int(parts[2]))))
    return entries


def ensure_pool(subuid: str = SUBUID, subgid: str = SUBGID, owner: str = OWNER,
                pool: int = POOL) -> tuple[IdRange, IdRange]:
    """The (uid, gid) ranges that the subid files give `owner`, adding an entry of `pool` ids
    after every range already handed out in either file when `owner` has none."""
    found = []
    for path in (subuid, subgid):
        mine = [r for name, r in read_subids(path) if name == owner]
        found.append(mine[0] if mine else None)
    if found[0] is not None and found[1] is not None:
        return found[0], found[1]
    taken = [r.end for p in (subuid, subgid) for _, r in read_subids(p)]
    start = max([FIRST_FREE, *taken])
    fresh = IdRange(start, pool)
    for i, path in enumerate((subuid, subgid)):
        if found[i] is None:
            try:
                with open(path, "rb") as f:
                    old = f.read()
            except FileNotFoundError:
                old = b""
            if old and not old.endswith(b"\n"):
                old += b"\n"
            atomic_write(path, old + f"{owner}:{fresh.start}:{fresh.length}\n".encode(), 0o644)
            found[i] = fresh
    assert found[0] is not None and found[1] is not None
    return found[0], found[1]


# slices of the pool, one per container -------------------------------------------------------
def _read_allocations(path: str) -> dict[str, list[int]]:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError:
        raise RuntimeFailure(f"{path}: not valid JSON; remove it once no --userns auto "
                             f"container runs") from None
    return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 2}


def allocate(home: Home, name: str, size: int = SLICE, *, subuid: str = SUBUID,
             subgid: str = SUBGID) -> IdMap:
    """The id map of container `name`: its recorded slice, or the first free one of the pool."""
    if size < 1:
        raise UsageError("a user namespace needs at least one id")
    path = home.userns_allocations
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with flock(path + ".lock"):
        # under the lock: two first containers must not both add a cocker entry
        uids, gids = ensure_pool(subuid, subgid)
        table = _read_allocations(path)
        # a container removed without release (its monitor deleted it after `run -d --rm`)
        # holds nothing: create makes the container's directory before it allocates
        table = {n: v for n, v in table.items()
                 if n == name or os.path.isdir(home.container(n))}
        if name in table:
            offset, count = table[name]
            return IdMap(uids.start + offset, gids.start + offset, count)
        offset = 0
        for start, count in sorted(table.values()):
            if offset + size <= start:
                break
            offset = max(offset, start + count)
        if offset + size > min(uids.length, gids.length):
            raise RuntimeFailure(f"no {size} free ids left in the {OWNER} entries of {subuid} and "
                                 f"{subgid}; remove --userns auto containers or widen them")
        table[name] = [offset, size]
        atomic_write(path, json.dumps(table, sort_keys=True).encode(), 0o600, durable=False)
    return IdMap(uids.start + offset, gids.start + offset, size)


def release(home: Home, name: str) -> None:
    """Give container `name`'s slice back (rm); nothing when it had none."""
    path = home.userns_allocations
    if not os.path.exists(path):
        return
    with flock(path + ".lock"):
        table = _read_allocations(path)
        if table.pop(name, None) is not None:
            atomic_write(path, json.dumps(table, sort_keys=True).encode(), 0o600, durable=False)


# the namespace and its mounts --------------------------------------------------------------
def write_maps(pid: int, idmap: IdMap) -> None:
    """As host root no newuidmap is needed: the kernel takes any mapping from the parent ns."""
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(idmap.uid_map())
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(idmap.gid_map())


def make_userns(idmap: IdMap) -> int:
    """An fd on a new user namespace with `idmap`, made by a helper that unshares and waits
    until the map is written and the fd taken."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(done_w)
            ok = _libc.unshare(ctypes.c_int(_CLONE_NEWUSER)) == 0
            os.write(ready_w, b"1" if ok else b"0")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise RuntimeFailure("cannot create a user namespace (unshare CLONE_NEWUSER refused)")
        write_maps(pid, idmap)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _sys(nr: int, *args: object, what: str) -> int:
    ret = _libc.syscall(ctypes.c_long(nr), *args)
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return int(ret)


def idmap_mount(path: str, userns_fd: int, target: str | None = None) -> None:
    """Mount `path` idmapped through `userns_fd` on `target` (default: over itself) in the
    caller's mount namespace: ids on disk are shown shifted by the namespace's map. Needs
    CAP_SYS_ADMIN in the initial user namespace."""
    fd = _sys(_SYS_OPEN_TREE, ctypes.c_int(_AT_FDCWD), os.fsencode(path),
              ctypes.c_uint(_OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE),
              what=f"open_tree {path}")
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        _sys(_SYS_MOUNT_SETATTR, ctypes.c_int(fd), b"", ctypes.c_uint(_AT_EMPTY_PATH | _AT_RECURSIVE),
             ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
             what=f"idmapped mount of {path}")
        _sys(_SYS_MOVE_MOUNT, ctypes.c_int(fd), b"", ctypes.c_int(_AT_FDCWD),
             os.fsencode(target or path), ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
             what=f"move_mount to {target or path}")
    finally:
        os.close(fd)


def overlay_sources(cdir: str, lowerdir: str) -> list[str]:
    """The directories an overlay mounted from `cdir` with `lowerdir` (relative names, ':'
    separated, as runtime's mounts make them) reads and writes: each layer tree, and `cdir`
    itself, which holds upper/ and work/ (overlayfs wants both on one mount)."""
    layers = [os.path.realpath(os.path.join(cdir, part)) for part in lowerdir.split(":") if part]
    return [*dict.fromkeys(layers), os.path.realpath(cdir)]


def idmap_overlay_sources(cdir: str, lowerdir: str, userns_fd: int) -> None:
    """In the container's (private) mount namespace, before its overlay is mounted: every
    source directory idmapped over itself, so the overlay, mounted inside as_mapped_root,
    shows on-disk owner 0 as container root. The host's view of the trees is unchanged."""
    for path in overlay_sources(cdir, lowerdir):
        idmap_mount(path, userns_fd)


@contextlib.contextmanager
def as_mapped_root(idmap: IdMap) -> Iterator[None]:
    """Act on files as container root's host ids (fsuid/fsgid), capabilities kept: overlayfs
    does its work in the upper dir with its mounter's credentials, and host uid 0 does not
    exist in an idmapped upper (EOVERFLOW), so the overlay is mounted inside this block."""
    _libc.setfsgid(ctypes.c_uint(idmap.gid_start))
    _libc.setfsuid(ctypes.c_uint(idmap.uid_start))
    capabilities.raise_effective()        # setfsuid away from 0 cleared the fs capabilities
    try:
        yield
    finally:
        _libc.setfsuid(ctypes.c_uint(0))
        _libc.setfsgid(ctypes.c_uint(0))
        capabilities.raise_effective()


def join(userns_fd: int) -> None:
    """Enter the user namespace (after pivot_root: a chrooted caller is refused). The caller
    gains every capability inside it but keeps host uid 0, which the namespace does not map:
    confinement.enter's setuid to container root (or the image's user) and its capability
    trim must follow."""
    if _libc.setns(ctypes.c_int(userns_fd), ctypes.c_int(_CLONE_NEWUSER)) < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns(user): {os.strerror(e)}")
    with contextlib.suppress(OSError):
        os.close(userns_fd)
