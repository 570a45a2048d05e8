"""Helpers for the codec and import/export tests: hand-made tars and tree snapshots."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterable


def entry(name: str, kind: str = "file", data: bytes = b"", link: str = "", mode: int = 0o644,
          major: int = 0, minor: int = 0, size: int | None = None,
          pax: dict | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    """One tar member, described loosely (kind: file, dir, symlink, hardlink, char, block, fifo)."""
    ti = tarfile.TarInfo(name)
    ti.mode = mode
    ti.mtime = 1_600_000_000
    ti.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
               "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
               "fifo": tarfile.FIFOTYPE}[kind]
    ti.linkname = link
    ti.devmajor, ti.devminor = major, minor
    if pax:
        ti.pax_headers = dict(pax)
    if kind == "file":
        ti.size = len(data) if size is None else size
        return ti, data
    return ti, None


def make_tar(entries: Iterable[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar written member by member, with no sanitising at all (tarfile's writer does
    not check names, which is exactly what a hostile archive needs)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def snapshot(root: str) -> dict[str, tuple]:
    """Everything observable about a tree: type, mode, owner, size, content hash, link
    target, device numbers, xattrs, hardlink grouping (mtimes left out unless asked)."""
    out: dict[str, tuple] = {}
    inodes: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            m = st.st_mode
            extra: object = None
            if stat.S_ISREG(m):
                with open(p, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1:
                    extra = (extra, "link-of:" + inodes.setdefault(key, rel))
            elif stat.S_ISLNK(m):
                extra = os.readlink(p)
            elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
                extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
            try:
                xa = tuple(sorted((k, os.getxattr(p, k, follow_symlinks=False))
                                  for k in os.listxattr(p, follow_symlinks=False)
                                  if not k.startswith("security.selinux")))
            except OSError:
                xa = ()
            out[rel] = (stat.S_IFMT(m), stat.S_IMODE(m) if not stat.S_ISLNK(m) else 0,
                        st.st_uid, st.st_gid, st.st_size if stat.S_ISREG(m) else 0, extra, xa)
    return out


def listing(root: str) -> set[str]:
    """Every path under root (for 'nothing was written outside' checks)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out
