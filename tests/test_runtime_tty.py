"""Terminals: `run -it`, attach/detach in turn, window size changes, `exec -it` — driven through
a real pty by a test client running the real CLI."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import sys
import termios
import time

import pytest

from tests.support.runtime import cname, rt, rt_home

pytestmark = pytest.mark.root


class PtyClient:
    def __init__(self, *args: str, rows: int = 24, cols: int = 80) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execv(sys.executable, [sys.executable, "-m", "cocker.main", *args])
        self.resize(rows, cols)
        self.out = b""

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.kill(self.pid, signal.SIGWINCH)

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def expect(self, needle: bytes, timeout: float = 15.0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen; got {self.out[-500:]!r}")
            r, _, _ = select.select([self.fd], [], [], min(left, 0.2))
            if r:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError(f"EOF before {needle!r}; got {self.out[-500:]!r}")
                self.out += data
        return self.out

    def wait(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.fd], [], [], 0.1)
            if r:
                try:
                    self.out += os.read(self.fd, 4096)
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"client did not exit; got {self.out[-500:]!r}")


def test_run_it_with_window_size(rt, cname):
    store, _ = rt
    c = PtyClient("container", "run", "-it", "--rm", "--name", cname, "--net", "none",
                  "busybox:1.0", "sh", rows=33, cols=101)
    c.send(b"stty size\n")            # the size is there from the start
    c.expect(b"33 101")
    c.send(b"echo $((6*7))\n")
    c.expect(b"42")
    c.resize(40, 120)                 # forwarded to the container's pty as it changes
    time.sleep(0.3)
    c.send(b"stty size\n")
    c.expect(b"40 120")
    c.send(b"exit 5\n")
    code = c.wait()
    assert code == 5, c.out[-800:]
    assert not os.path.exists(os.path.join(store.containers_dir, cname))


def test_attach_detach_in_turn(rt, cname):
    store, cli = rt
    cli("container", "run", "-d", "-t", "--name", cname, "--net", "none", "busybox:1.0", "sh")
    a = PtyClient("container", "attach", cname)
    time.sleep(0.3)
    a.send(b"echo first-$((1+1))\n")
    a.expect(b"first-2")
    a.send(b"\x10\x11")                # ctrl-p ctrl-q: detach, the container keeps running
    assert a.wait() == 0
    assert json.loads(cli("container", "inspect", cname, "--json").stdout)["status"] == "running"
    b = PtyClient("container", "attach", cname)
    time.sleep(0.3)
    b.send(b"echo second-$((2+2))\n")
    b.expect(b"second-4")
    b.send(b"exit 3\n")
    assert b.wait() == 3
    i = json.loads(cli("container", "inspect", cname, "--json").stdout)
    assert i["status"] == "exited" and i["exit_code"] == 3
    assert "first-2" in cli("container", "logs", cname).stdout       # the pty output is logged


def test_exec_it(rt, cname):
    _, cli = rt
    cli("container", "run", "-d", "--name", cname, "--net", "none", "busybox:1.0",
        "sleep", "100")
    c = PtyClient("container", "exec", "-it", cname, "sh", rows=20, cols=70)
    c.expect(b"# ")
    c.send(b"stty size; test -t 0 && echo is-a-tty\n")
    c.expect(b"20 70")
    c.expect(b"is-a-tty")
    c.send(b"exit 4\n")
    assert c.wait() == 4
    cli("container", "stop", "-t", "1", cname)
