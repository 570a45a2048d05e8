"""A container process's stdio without a terminal: pipes between it and whoever started it,
copied by a process outside the container (its monitor, or the helper of an exec), so that no
terminal or file of the caller is ever open inside the container, where it could be reopened
through /proc/N/fd or driven by ioctls. conmon does the same for podman."""

import contextlib
import os
import selectors
import signal
import threading
from typing import NamedTuple

from common.fsutil import write_all

# once the process has exited, how long its pipes may stay quiet before the copy ends (an
# exec'd command's background children may hold them open for ever)
LINGER = 0.05


class StdioRelay(NamedTuple):
    """The caller's stdin and the write end of the process's stdin pipe (None: the process
    reads its own /dev/null); each (read end of an output pipe, caller's fd)."""
    stdin: tuple[int, int] | None
    outputs: list[tuple[int, int]]


def pipes_for(stdio: tuple[int, int, int]) -> tuple[tuple[int, int, int], StdioRelay]:
    """The process's ends (stdin, stdout, stderr; -1 for stdin: its own /dev/null) and the
    relay's, for the caller's `stdio` (stdin -1: none). One output pipe when the caller gives
    one fd for both, so that their order is kept."""
    caller_in, caller_out, caller_err = stdio
    stdin = None
    child_in = -1
    if caller_in >= 0:
        child_in, w = os.pipe()
        stdin = (caller_in, w)
    r, child_out = os.pipe()
    outputs = [(r, caller_out)]
    child_err = child_out
    if caller_err != caller_out:
        r, child_err = os.pipe()
        outputs.append((r, caller_err))
    return (child_in, child_out, child_err), StdioRelay(stdin, outputs)


def run(relay: StdioRelay, pid: int) -> int:
    """Copy until child `pid` exited and its output is drained; its wait status. The stdin copy
    runs in a thread: a process that does not read must not hold up its output."""
    if relay.stdin is not None:
        threading.Thread(target=_copy_stdin, args=relay.stdin, daemon=True).start()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    main = threading.current_thread() is threading.main_thread()
    if main:                            # SIGCHLD wakes the loop; elsewhere it polls
        old_wakeup = signal.set_wakeup_fd(wake_w)
        old_chld = signal.signal(signal.SIGCHLD, lambda s, f: None)
    poll = 1.0 if main else 0.05
    sel = selectors.DefaultSelector()
    sel.register(wake_r, selectors.EVENT_READ, None)
    for src, dst in relay.outputs:
        sel.register(src, selectors.EVENT_READ, dst)
    left = len(relay.outputs)
    status: int | None = None
    try:
        while True:
            if status is None:
                status = _reaped(pid)
            if status is not None and not left:
                break
            events = sel.select(timeout=poll if status is None else LINGER)
            if status is not None and not events:
                break
            for key, _ in events:
                if key.data is None:
                    with contextlib.suppress(OSError):
                        os.read(wake_r, 512)
                    continue
                try:
                    data = os.read(key.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fd)
                    left -= 1
                    continue
                with contextlib.suppress(OSError):      # a caller gone away: drain, discard
                    write_all(key.data, data)
    finally:
        if main:
            signal.set_wakeup_fd(old_wakeup)
            signal.signal(signal.SIGCHLD, old_chld)
        sel.close()
        for fd in (wake_r, wake_w, *(src for src, _ in relay.outputs)):
            with contextlib.suppress(OSError):
                os.close(fd)
    return status


def _reaped(pid: int) -> int | None:
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 255 << 8
    return status if done else None


def _copy_stdin(src: int, dst: int) -> None:
    try:
        while True:
            data = os.read(src, 65536)
            if not data:
                break
            write_all(dst, data)
    except OSError:
        pass
    finally:
        os.close(dst)                   # the process reads EOF
