"""Deleting a container's directory: quickly in line, or in a detached process."""

from __future__ import annotations

import os

from runtime import syscalls as sc


def rmtree(path: str) -> None:
    """A plain walk first: shutil.rmtree's fd-based walk costs more on the small trees of
    throw-away containers, which `run --rm` deletes on its exit path."""
    try:
        for root, dirs, files in os.walk(path, topdown=False):
            for f in files:
                os.unlink(os.path.join(root, f))
            for d in dirs:
                p = os.path.join(root, d)
                if os.path.islink(p):
                    os.unlink(p)
                else:
                    os.rmdir(p)
        os.rmdir(path)
    except OSError:
        import shutil  # only here: it pulls in bz2/lzma, which `run --rm` should not pay for
        shutil.rmtree(path, ignore_errors=True)


def rmtree_detached(path: str) -> bool:
    """Delete `path` in a detached grandchild; False when it could not be forked."""
    try:
        pid = sc.fork()
    except OSError:
        return False
    if pid == 0:
        try:
            os.setsid()
            if sc.fork() == 0:
                # hold none of the caller's pipes open: its reader must see EOF now
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(3, 65536)
                rmtree(path)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return True
