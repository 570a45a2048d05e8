"""The client side of a container's terminal: attach over the supervisor's socket, relay an
exec's pty, follow a log. The terminal is put in raw mode and restored however the session ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import selectors
import signal
import socket
import struct
import sys
import termios
import time
import tty
from collections.abc import Iterator

from common.errors import Conflict
from common.fsutil import write_all
from runtime.tty import detach_keys
from runtime.tty.detach_keys import DETACH_KEYS
from runtime.tty.frames import T_DATA, T_EXIT, T_WINSIZE, FrameReader, connect_unix, frame


def connect(c) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connect_unix(s, os.path.join(c.dir, "attach.sock"))
    except OSError as e:
        s.close()
        raise Conflict(f"cannot attach to {c.name}: {e.strerror or e}") from None
    return s


def send_winsize(sock: socket.socket, fd: int = 0) -> None:
    ws = winsize(fd) if os.isatty(fd) else None
    if ws:
        with contextlib.suppress(OSError):
            sock.sendall(frame(T_WINSIZE, struct.pack(">HH", *ws)))


def winsize(fd: int) -> tuple[int, int] | None:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        return rows, cols
    except OSError:
        return None


def copy_winsize(src: int, dst: int) -> None:
    ws = winsize(src)
    if ws:
        with contextlib.suppress(OSError):
            fcntl.ioctl(dst, termios.TIOCSWINSZ, struct.pack("HHHH", ws[0], ws[1], 0, 0))


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[bool]:
    if not os.isatty(fd):
        yield False
        return
    old = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)   # not TCSAFLUSH: keep what was typed already
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def _write_out(data: bytes) -> None:
    write_all(sys.stdout.fileno(), data)


def session(sock: socket.socket, stdin: int = 0, keys: bytes = DETACH_KEYS) -> int | None:
    """Relay the terminal to the container until it exits (its exit code) or the user detaches
    with the detach keys, ctrl-p ctrl-q by default (None)."""
    reader = FrameReader()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    is_tty = os.isatty(stdin)

    def send_size() -> None:
        ws = winsize(stdin) if is_tty else None
        if ws:
            with contextlib.suppress(OSError):
                sock.sendall(frame(T_WINSIZE, struct.pack(">HH", *ws)))

    old_winch = None
    with contextlib.suppress(ValueError):
        old_winch = signal.signal(signal.SIGWINCH, lambda s, f: os.write(wake_w, b"w"))
    send_size()
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "sock")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    stdin_open = True
    try:
        sel.register(stdin, selectors.EVENT_READ, "stdin")
    except (ValueError, OSError, PermissionError):
        stdin_open = False              # e.g. /dev/null under some runners: nothing to send
    matcher = detach_keys.DetachMatcher(keys)
    code: int | None = None
    try:
        with raw_terminal(stdin):
            done = False
            while not done:
                for key, _ in sel.select():
                    if key.data == "wake":
                        os.read(wake_r, 64)
                        send_size()
                    elif key.data == "stdin":
                        data = os.read(stdin, 4096)
                        if not data:
                            sel.unregister(stdin)
                            stdin_open = False
                            continue
                        if is_tty:
                            data, detach = matcher.feed(data)
                            if detach:
                                if data:
                                    sock.sendall(frame(T_DATA, data))
                                return None
                        if data:
                            sock.sendall(frame(T_DATA, data))
                    else:
                        data = sock.recv(65536)
                        if not data:
                            done = True
                            break
                        for kind, payload in reader.feed(data):
                            if kind == T_DATA:
                                _write_out(payload)
                            elif kind == T_EXIT:
                                code = int(payload or b"255")
                                done = True
    finally:
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)
        sel.close()
        os.close(wake_r)
        os.close(wake_w)
        sock.close()
    del stdin_open
    return 255 if code is None else code


def relay_pty(master: int, stdin: int = 0) -> None:
    """Relay between the caller's terminal and an exec'd command's pty until it closes."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    old_winch = None
    with contextlib.suppress(ValueError):
        old_winch = signal.signal(signal.SIGWINCH, lambda s, f: os.write(wake_w, b"w"))
    sel = selectors.DefaultSelector()
    sel.register(master, selectors.EVENT_READ, "master")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    with contextlib.suppress(ValueError, OSError, PermissionError):
        sel.register(stdin, selectors.EVENT_READ, "stdin")
    try:
        with raw_terminal(stdin):
            while True:
                for key, _ in sel.select():
                    if key.data == "wake":
                        os.read(wake_r, 64)
                        copy_winsize(stdin, master)
                    elif key.data == "stdin":
                        data = os.read(stdin, 4096)
                        if not data:
                            sel.unregister(stdin)
                            continue
                        os.write(master, data)
                    else:
                        try:
                            data = os.read(master, 65536)
                        except OSError:
                            data = b""
                        if not data:
                            return
                        _write_out(data)
    finally:
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)
        sel.close()
        os.close(wake_r)
        os.close(wake_w)


def log_size(c) -> int:
    try:
        return os.path.getsize(os.path.join(c.dir, "log"))
    except OSError:
        return 0


@contextlib.contextmanager
def keys_without_echo(fd: int) -> Iterator[bool]:
    """Keys arrive one by one and are not echoed, output stays as it is (no raw mode: a log's
    newlines still start a line), ctrl-c still interrupts."""
    if not os.isatty(fd):
        yield False
        return
    old = termios.tcgetattr(fd)
    new = termios.tcgetattr(fd)
    new[0] &= ~(termios.IXON | termios.IXOFF)    # ctrl-q must reach us, not flow control
    new[3] &= ~(termios.ICANON | termios.ECHO)
    new[6][termios.VMIN], new[6][termios.VTIME] = 1, 0
    try:
        termios.tcsetattr(fd, termios.TCSANOW, new)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def watch_log(c, keys: bytes = DETACH_KEYS, stdin: int = 0) -> bool:
    """`attach` to a container without a pty: relay its output (stdout and stderr, as logged)
    from now on until it stops (False) or the user types the detach keys (True). There is no
    stdin to give it: other keys are dropped."""
    with keys_without_echo(stdin) as watching:
        if not watching:
            follow_log(c, from_start=False)
            return False
        matcher = detach_keys.DetachMatcher(keys)
        detached = False

        def typed() -> bool:
            nonlocal detached
            while select.select([stdin], [], [], 0)[0]:
                data = os.read(stdin, 1024)
                if not data or matcher.feed(data)[1]:
                    detached = True
                    return True
            return False
        follow_log(c, from_start=False, stop=typed)
        return detached


def follow_log(c, from_start: bool = True, follow: bool = True, offset: int | None = None,
               stop=None) -> None:
    """Print the container's log (from `offset`, else its start or its end); with `follow`,
    keep printing until the container stops (or `stop()` says so)."""
    path = os.path.join(c.dir, "log")
    try:
        f = open(path, "rb")  # noqa: SIM115 - followed across the loop, closed at its end
    except FileNotFoundError:
        if not follow:
            return
        f = None
    try:
        if f is not None and offset is not None:
            f.seek(offset)
        elif f is not None and not from_start:
            f.seek(0, os.SEEK_END)
        while True:
            alive = follow and c.supervisor_alive()
            if f is None and os.path.exists(path):
                f = open(path, "rb")  # noqa: SIM115 - followed across the loop, closed at its end
            if f is not None:
                while True:
                    chunk = f.read(65536)
                    if not chunk:
                        break
                    _write_out(chunk)
            if not alive or (stop is not None and stop()):
                return
            time.sleep(0.05)
    finally:
        if f is not None:
            f.close()
