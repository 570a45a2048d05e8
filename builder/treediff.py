"""The changes between two directory trees, written as an overlay-upper-form tree.

Commit packs a container's overlay upper dir directly; that is only right when the overlay
ran without `redirect_dir` and `metacopy` (a renamed directory then lives under its new
name with an xattr pointing at the old one, a chmod'ed file keeps its data in the lower
layer). When the upper dir carries those xattrs, commit mounts the merged view read-only
and diffs it against the lower layers with `diff_trees` instead.

Files count as unchanged when type, mode, owner, size, mtime (ns), link target and xattrs
all match (rsync's quick check): overlay keeps mtimes on copy-up, so an edited file shows.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

OVERLAY_XATTR_PREFIX = "trusted.overlay."
REDIRECT = "trusted.overlay.redirect"
METACOPY = "trusted.overlay.metacopy"
OPAQUE = "trusted.overlay.opaque"


def needs_diff(upper: str) -> str | None:
    """Why `upper` cannot be packed as it is (a redirect or metacopy xattr), or None."""
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            for attr, why in ((REDIRECT, "redirect_dir"), (METACOPY, "metacopy")):
                try:
                    os.getxattr(p, attr, follow_symlinks=False)
                    return f"{why} ({os.path.relpath(p, upper)})"
                except OSError as e:
                    if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                        raise
    return None


@contextlib.contextmanager
def merged_view(layers_top_first: list[str], scratch: str) -> Iterator[str]:
    """A read-only overlay of the given trees (top first), unmounted on exit.

    Short symlinks in `scratch` keep the option string within the kernel's one page."""
    from runtime import syscalls as sc
    if not layers_top_first:
        empty = tempfile.mkdtemp(prefix="empty.", dir=scratch)
        yield empty
        return
    if len(layers_top_first) == 1:          # overlay needs two lower dirs without an upper
        yield layers_top_first[0]
        return
    links = tempfile.mkdtemp(prefix="l.", dir=scratch)
    for i, p in enumerate(layers_top_first):
        os.symlink(os.path.abspath(p), os.path.join(links, str(i)))
    target = tempfile.mkdtemp(prefix="m.", dir=scratch)
    lower = ":".join(str(i) for i in range(len(layers_top_first)))
    old = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir(links)
        last = None
        for extra in (",redirect_dir=on,metacopy=on", ",redirect_dir=follow", ""):
            try:
                sc.mount("overlay", target, "overlay", sc.MS_RDONLY, f"lowerdir={lower}{extra}")
                break
            except OSError as e:
                last = e
        else:
            raise last  # type: ignore[misc]
    finally:
        os.fchdir(old)
        os.close(old)
    try:
        yield target
    finally:
        sc.umount2(target, sc.MNT_DETACH)
        with contextlib.suppress(OSError):
            os.rmdir(target)


def diff_trees(old: str, new: str, out: str) -> bool:
    """Write into the empty dir `out` what turns `old` into `new`: added and changed entries
    (with their parents), deletions as whiteouts (char device 0/0). True if anything differs."""
    links: dict[tuple[int, int], str] = {}
    changed = _diff_dir(old, new, out, links)
    _copy_meta(new, out, os.lstat(new))
    return changed


class _Pair:
    """One directory of the walk: old and new side, where its changes go, what is left."""

    def __init__(self, old: str | None, new: str, out: str,
                 parent: tuple[_Pair, os.stat_result, os.stat_result] | None) -> None:
        self.old, self.new, self.out, self.parent = old, new, out, parent
        self.new_names = set(os.listdir(new))
        self.old_names = set(os.listdir(old)) if old else set()
        self.todo = sorted(self.new_names, reverse=True)
        self.changed = False


def _diff_dir(old: str | None, new: str, out: str, links: dict) -> bool:
    """A loop over a stack of directory pairs, not a recursion: trees from images may be
    deeper than Python's recursion limit."""
    root = _Pair(old, new, out, None)
    stack = [root]
    while stack:
        f = stack[-1]
        if f.todo:
            name = f.todo.pop()
            n, dst = os.path.join(f.new, name), os.path.join(f.out, name)
            o = os.path.join(f.old, name) if f.old else None
            nst = os.lstat(n)
            ost = _lstat(o) if o and name in f.old_names else None
            if ost is not None and stat.S_ISDIR(nst.st_mode) and stat.S_ISDIR(ost.st_mode):
                os.mkdir(dst)
                stack.append(_Pair(o, n, dst, (f, ost, nst)))
            elif ost is None or not _same(ost, nst, o or "", n):
                _copy_any(n, dst, nst, links)
                f.changed = True
            continue
        for name in sorted(f.old_names - f.new_names):
            os.mknod(os.path.join(f.out, name), stat.S_IFCHR | 0o000, os.makedev(0, 0))
            f.changed = True
        stack.pop()
        if f.parent is not None:
            up, ost, nst = f.parent
            if f.changed or not _same(ost, nst, f.old or "", f.new):
                _copy_meta(f.new, f.out, nst)
                up.changed = True
            else:
                os.rmdir(f.out)
    return root.changed


def _lstat(p: str | None) -> os.stat_result | None:
    try:
        return os.lstat(p) if p else None
    except FileNotFoundError:
        return None


def _same(a: os.stat_result, b: os.stat_result, pa: str, pb: str) -> bool:
    if (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid):
        return False
    if not stat.S_ISDIR(a.st_mode):
        if a.st_size != b.st_size or a.st_mtime_ns != b.st_mtime_ns:
            return False
        if (stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode)) and a.st_rdev != b.st_rdev:
            return False
        if stat.S_ISLNK(a.st_mode) and os.readlink(pa) != os.readlink(pb):
            return False
    return _xattrs(pa) == _xattrs(pb)


def _xattrs(p: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        if n.startswith(OVERLAY_XATTR_PREFIX):
            continue
        with contextlib.suppress(OSError):
            out[n] = os.getxattr(p, n, follow_symlinks=False)
    return out


def _copy_any(src: str, dst: str, st: os.stat_result, links: dict) -> None:
    """Copy one entry (a directory with everything below it), iteratively; directory
    metadata is set last, deepest first, so copying into them does not disturb it."""
    dirs: list[tuple[str, str, os.stat_result]] = []
    stack = [(src, dst, st)]
    while stack:
        s, d, sst = stack.pop()
        mode = sst.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(d)
            dirs.append((s, d, sst))
            for name in sorted(os.listdir(s), reverse=True):
                child = os.path.join(s, name)
                stack.append((child, os.path.join(d, name), os.lstat(child)))
            continue
        if stat.S_ISREG(mode):
            key = (sst.st_dev, sst.st_ino)
            if sst.st_nlink > 1 and key in links:
                os.link(links[key], d)
                continue
            shutil.copyfile(s, d, follow_symlinks=False)
            if sst.st_nlink > 1:
                links[key] = d
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            os.mknod(d, mode, sst.st_rdev)
        else:
            continue  # sockets do not belong in an image
        _copy_meta(s, d, sst)
    for s, d, sst in reversed(dirs):
        _copy_meta(s, d, sst)


def _copy_meta(src: str, dst: str, st: os.stat_result) -> None:
    for n, v in _xattrs(src).items():
        with contextlib.suppress(OSError):
            os.setxattr(dst, n, v, follow_symlinks=False)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
