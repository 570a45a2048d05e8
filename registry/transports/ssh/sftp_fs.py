"""The layout's filesystem (registry.repo.fs.Fs) over an SFTP session."""

from __future__ import annotations

import contextlib
import errno
import posixpath
import secrets
import stat
from collections.abc import Callable

import paramiko

from registry.repo import layout_paths as lp
from registry.repo.fs import FileStat, Fs


def _absent(e: OSError) -> bool:
    return isinstance(e, FileNotFoundError) or e.errno == errno.ENOENT


class SftpFs(Fs):
    """`session()` gives the calling thread's SFTP session; `clock()` the remote time."""

    def __init__(self, root: str, session: Callable[[], paramiko.SFTPClient],
                 clock: Callable[[], float]) -> None:
        self.root, self.session, self.clock = root, session, clock

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def listdir(self, rel: str) -> list[str]:
        try:
            return self.session().listdir(self.path(rel))
        except OSError as e:
            if _absent(e):
                return []
            raise

    def stat(self, rel: str) -> FileStat | None:
        try:
            a = self.session().stat(self.path(rel))
        except OSError as e:
            if _absent(e):
                return None
            raise
        return FileStat(int(a.st_size or 0), float(a.st_mtime or 0),
                        stat.S_ISDIR(a.st_mode or 0))

    def scandir(self, rel: str) -> list[tuple[str, FileStat]]:
        try:
            attrs = self.session().listdir_attr(self.path(rel))
        except OSError as e:
            if _absent(e):
                return []
            raise
        return [(a.filename, FileStat(int(a.st_size or 0), float(a.st_mtime or 0),
                                      stat.S_ISDIR(a.st_mode or 0))) for a in attrs]

    def read(self, rel: str, limit: int = 1 << 20) -> bytes | None:
        try:
            with self.session().open(self.path(rel), "rb") as f:
                return f.read(limit)
        except OSError as e:
            if _absent(e):
                return None
            raise

    def write_atomic(self, rel: str, data: bytes) -> None:
        path = self.path(rel)
        d, base = posixpath.split(path)
        tmp = posixpath.join(d, f".tmp.{base}.{secrets.token_hex(6)}")
        s = self.session()
        try:
            try:
                f = s.open(tmp, "wb")
            except OSError as e:
                if not _absent(e):
                    raise
                self.makedirs(d)
                f = s.open(tmp, "wb")
            with f:
                f.chmod(lp.FILE_MODE)
                f.write(data)
            s.posix_rename(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                s.remove(tmp)
            raise

    def remove(self, rel: str) -> None:
        try:
            self.session().remove(self.path(rel))
        except OSError as e:
            if not _absent(e):
                raise

    def rmdir(self, rel: str) -> bool:
        try:
            self.session().rmdir(self.path(rel))
        except OSError:
            return False
        return True

    def makedirs(self, path: str) -> None:
        """Every missing directory of an absolute remote path, owner-only."""
        s = self.session()
        try:
            s.stat(path)
            return
        except OSError as e:
            if not _absent(e):
                raise
        parent = posixpath.dirname(path)
        if parent and parent != path:
            self.makedirs(parent)
        try:
            s.mkdir(path, lp.DIR_MODE)
        except OSError:
            s.stat(path)  # made by someone else meanwhile, or the real error

    def now(self) -> float:
        return self.clock()
