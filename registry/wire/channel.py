"""Fast byte streams over SSH channels and sockets, and the allocator tuning for bulk transfers."""

from __future__ import annotations

import collections
from typing import Any


# a fast stream over a socket-like object (paramiko Channel, socket) ---------------------
class ChannelStream:
    """read/readline/write over anything with recv/sendall (a paramiko Channel, a socket).

    paramiko's own `makefile` grows its read buffer by concatenation, and reading a little
    from paramiko's channel buffer moves everything behind it; when the reader lags, that
    buffer holds up to a whole window (tens of MiB) and each 1 MiB read would move it all.
    So this drains the channel buffer whole into a queue of chunks and hands out slices.
    """

    def __init__(self, chan: Any, recv_size: int = 1 << 28) -> None:
        self.chan = chan
        self.recv_size = recv_size
        self._chunks: collections.deque[bytes] = collections.deque()
        self._off = 0        # read position in the first chunk
        self._avail = 0      # bytes queued, counted from _off

    def _fill(self) -> bool:
        d = self.chan.recv(self.recv_size)
        if not d:
            return False
        self._chunks.append(d)
        self._avail += len(d)
        return True

    def _take(self, n: int) -> bytes:
        parts: list[Any] = []
        while n:
            c = self._chunks[0]
            left = len(c) - self._off
            if left <= n:
                parts.append(c if self._off == 0 else memoryview(c)[self._off:])
                self._chunks.popleft()
                self._off = 0
                n -= left
                self._avail -= left
            else:
                parts.append(memoryview(c)[self._off:self._off + n])
                self._off += n
                self._avail -= n
                n = 0
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            while self._fill():
                pass
            return self._take(self._avail)
        while self._avail < n and self._fill():
            pass
        return self._take(min(n, self._avail))

    def readline(self, limit: int = -1) -> bytes:
        limit = limit if limit and limit > 0 else 1 << 62
        scanned = 0  # bytes already searched for a newline
        while True:
            pos = 0      # offset of chunk i's first unread byte from the read position
            for i, c in enumerate(self._chunks):
                start = self._off if i == 0 else 0
                size = len(c) - start
                if pos + size > scanned:
                    j = c.find(b"\n", start + max(0, scanned - pos), start + size)
                    if j >= 0:
                        return self._take(min(pos + j - start + 1, limit))
                pos += size
            scanned = self._avail
            if self._avail >= limit:
                return self._take(limit)
            if not self._fill():
                return self._take(self._avail)

    def write(self, data: bytes) -> int:
        # A memoryview: paramiko's sendall re-slices what is left after each packet, which
        # copies the rest of a bytes object every time (quadratic in the chunk size).
        self.chan.sendall(memoryview(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.chan.close()


def tune_allocator() -> None:
    """Let glibc serve MiB-sized buffers from its heap instead of fresh mmaps.

    By default every bytes object over ~128 KiB (a 1 MiB chunk, a 128 KiB SSH packet) is a
    new mmap that page-faults on first touch and is unmapped when freed: measured here, that
    makes AES-GCM on 256 KiB buffers 3.5x dearer than on 64 KiB ones. Raising the mmap and
    trim thresholds keeps those pages in the heap for reuse. Called by processes that move
    bulk data (the server doors, srepo:// clients); a no-op where glibc's mallopt is absent.
    """
    global _TUNED
    if _TUNED:
        return
    _TUNED = True
    try:
        import ctypes
        # This process's own C library; ctypes.util would import subprocess at start-up.
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 16 << 20)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_TUNED = False
