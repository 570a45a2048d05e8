"""The attach protocol between a container's monitor and its clients, and the unix-socket
helpers both sides use.

A frame is type (1 byte) + length (4, big endian) + payload, in both directions.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

T_DATA, T_WINSIZE, T_EXIT = b"d", b"w", b"x"


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + struct.pack(">I", len(payload)) + payload


class FrameReader:
    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= 5:
            n = struct.unpack(">I", self.buf[1:5])[0]
            if len(self.buf) < 5 + n:
                break
            out.append((self.buf[:1], self.buf[5:5 + n]))
            self.buf = self.buf[5 + n:]
        return out


def _short_unix_path(path: str) -> tuple[str, int | None]:
    # sun_path holds 108 bytes: a long store path is reached through its directory's fd
    if len(path.encode()) < 100:
        return path, None
    fd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{os.path.basename(path)}", fd


def bind_unix(sock: socket.socket, path: str) -> None:
    p, fd = _short_unix_path(path)
    try:
        sock.bind(p)
    finally:
        if fd is not None:
            os.close(fd)


def connect_unix(sock: socket.socket, path: str) -> None:
    p, fd = _short_unix_path(path)
    try:
        sock.connect(p)
    finally:
        if fd is not None:
            os.close(fd)
