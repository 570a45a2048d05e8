"""Durable file writes and advisory locks: tmp -> fsync -> rename, and flock with a timeout."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator

from common.errors import CockerError, LockBusy

LOCK_TIMEOUT = float(os.environ.get("COCKER_LOCK_TIMEOUT", "60"))


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: str, mode: int = 0o777) -> None:
    """os.makedirs with `mode` on every directory it creates, not only the last."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        makedirs(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def atomic_write(path: str, data: bytes, mode: int = 0o644, *, durable: bool = True,
                 dir_mode: int = 0o777) -> None:
    """Replace `path` with `data` so readers see the old or the new content, never a mix.

    `durable=False` skips the fsyncs, for state that describes kernel objects which do not
    survive a power loss either."""
    d = os.path.dirname(path) or "."
    makedirs(d, dir_mode)
    tmp = os.path.join(d, f".tmp.{os.path.basename(path)}.{os.getpid()}.{time.monotonic_ns()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise disk_error(e, path) from e
    if durable:
        fsync_dir(d)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out; a non-blocking fd (a pty, a socket) that is full
    is retried after a millisecond."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        view = view[n:]


def disk_error(e: OSError, path: str) -> CockerError:
    if e.errno == errno.ENOSPC:
        return CockerError(f"no space left on device while writing {path}")
    if e.errno == errno.EDQUOT:
        return CockerError(f"disk quota exceeded while writing {path}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CockerError(f"cannot write {path}: {e.strerror}")
    return CockerError(f"{path}: {e.strerror or e}")


@contextlib.contextmanager
def flock(path: str, *, shared: bool = False, timeout: float | None = None,
          what: str = "the store") -> Iterator[int]:
    """Hold an flock on `path` (created if missing); LockBusy after `timeout` seconds."""
    timeout = LOCK_TIMEOUT if timeout is None else timeout
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # O_RDWR: only the owner could use it anyway
    op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline = time.monotonic() + timeout
    try:
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusy(f"{what} is locked by another cocker process ({path}); "
                                   "try again when it has finished") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        yield fd
    finally:
        os.close(fd)


class EarlyWriteback:
    """A buffered writer on an unbuffered file that starts the kernel's writeback of every
    STEP bytes (sync_file_range WRITE: queues the I/O, does not wait for it). A packer is
    CPU-bound and leaves the disk idle; started early, the fsync that makes the blob durable
    before a ref may name it waits for the last few MB instead of the whole file."""

    STEP = 16 << 20
    CHUNK = 1 << 20

    def __init__(self, raw) -> None:
        self.raw = raw
        self.buf = bytearray()
        self.written = 0          # bytes handed to the kernel
        self.started = 0          # bytes whose writeback was started

    def write(self, data) -> int:
        self.buf += data
        if len(self.buf) >= self.CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        done = 0
        with memoryview(self.buf) as view:
            while done < len(view):
                done += self.raw.write(view[done:])
        self.written += done
        self.buf.clear()
        if self.written - self.started >= self.STEP:
            start_writeback(self.raw.fileno(), self.started, self.written - self.started)
            self.started = self.written


_sync_file_range = None


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """sync_file_range(SYNC_FILE_RANGE_WRITE) through libc (Python has no binding). Only a
    hint: where it fails, the final fsync does all the work, as without it."""
    global _sync_file_range
    if _sync_file_range is None:
        import ctypes
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        _sync_file_range = fn
    _sync_file_range(fd, offset, nbytes, 2)      # 2: SYNC_FILE_RANGE_WRITE
