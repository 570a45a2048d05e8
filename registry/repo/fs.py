"""The small filesystem a repository layout needs, with its local implementation.

The layout's algorithms that must be the same on every backend (gc's mark and sweep, leases,
digest pins) speak this interface; `registry.transports.ssh.sftp_fs` implements it over SFTP.
Paths are relative to the repository root, `/`-separated.
"""

import abc
import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from typing import NamedTuple

from common.fsutil import atomic_write
from registry.repo import layout_paths as lp


class FileStat(NamedTuple):
    size: int
    mtime: float
    is_dir: bool


class Fs(abc.ABC):
    @abc.abstractmethod
    def listdir(self, rel: str) -> list[str]:
        """Entry names of a directory; [] when it does not exist."""

    @abc.abstractmethod
    def stat(self, rel: str) -> FileStat | None: ...

    @abc.abstractmethod
    def read(self, rel: str, limit: int = 1 << 20) -> bytes | None:
        """At most `limit` bytes of a file; None when it does not exist."""

    @abc.abstractmethod
    def write_atomic(self, rel: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def remove(self, rel: str) -> None:
        """Remove a file; one already gone is not an error."""

    @abc.abstractmethod
    def rmdir(self, rel: str) -> bool:
        """Remove an empty directory; False when it is not (or not there)."""

    def scandir(self, rel: str) -> list[tuple[str, FileStat]]:
        """(name, stat) of a directory's entries in one call where the backend can."""
        out = []
        for entry in self.listdir(rel):
            st = self.stat(f"{rel}/{entry}")
            if st is not None:
                out.append((entry, st))
        return out

    def is_locked(self, rel: str) -> bool:
        """Whether a live process holds the file (an upload or a lease being written)."""
        return False

    def now(self) -> float:
        """The clock file mtimes are compared with."""
        return time.time()

    def walk_files(self, rel: str) -> Iterator[str]:
        """Relative paths of every file below `rel`, depth first, sorted."""
        for entry in sorted(self.listdir(rel)):
            sub = f"{rel}/{entry}"
            st = self.stat(sub)
            if st is None:
                continue
            if st.is_dir:
                yield from self.walk_files(sub)
            else:
                yield sub


class LocalFs(Fs):
    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def listdir(self, rel: str) -> list[str]:
        try:
            return os.listdir(self.path(rel))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def stat(self, rel: str) -> FileStat | None:
        try:
            st = os.stat(self.path(rel))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return FileStat(st.st_size, st.st_mtime, os.path.isdir(self.path(rel)))

    def read(self, rel: str, limit: int = 1 << 20) -> bytes | None:
        try:
            with open(self.path(rel), "rb") as f:
                return f.read(limit)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_atomic(self, rel: str, data: bytes) -> None:
        atomic_write(self.path(rel), data, lp.FILE_MODE, dir_mode=lp.DIR_MODE)

    def remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(rel))

    def rmdir(self, rel: str) -> bool:
        try:
            os.rmdir(self.path(rel))
        except OSError:
            return False
        return True

    def scandir(self, rel: str) -> list[tuple[str, FileStat]]:
        out = []
        try:
            with os.scandir(self.path(rel)) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    out.append((e.name, FileStat(st.st_size, st.st_mtime, e.is_dir(
                        follow_symlinks=False))))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return out

    def is_locked(self, rel: str) -> bool:
        try:
            fd = os.open(self.path(rel), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
